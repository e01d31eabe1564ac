"""The tamper-evident audit log: append events to a hash chain and verify it.

Appends are serialised (a PostgreSQL advisory transaction lock, an SQLite IMMEDIATE
transaction) so concurrent writers keep one chain; triggers from migration 0002 refuse
UPDATE and DELETE on the table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import peewee

from within_db import boundary as check
from within_db.boundary import public_api
from within_db.db import bound
from within_db.errors import ValidationError
from within_db.fields import format_utc, utcnow
from within_db.models.users import AuditLog, User

__all__ = ["ChainReport", "GENESIS", "record_event", "row_digest", "verify_audit_chain"]

GENESIS = "0" * 64
AUDIT_LOCK_KEY = 0x61756469  # "audi"


def _target(target: Any) -> tuple[str | None, str | None]:
    if target is None:
        return None, None
    if isinstance(target, peewee.Model):
        check.instance(target, peewee.Model, "target")
        return target._meta.table_name, str(target.get_id())
    if isinstance(target, tuple) and len(target) == 2:
        kind, key = target
        if isinstance(key, (int, uuid.UUID)) and not isinstance(key, bool):
            key = str(key)
        return (check.text(kind, "target type", max_length=64),
                check.text(key, "target id", max_length=64))
    raise ValidationError("target must be a saved model instance or a (type, id) pair")


def _actor(actor: object) -> str | None:
    if actor is None:
        return None
    if isinstance(actor, User):
        return str(check.instance(actor, User, "actor").id)
    return str(check.uuid_value(actor, "actor"))


@public_api
def row_digest(prev_hash: str, actor_id: str | None, action: str, target_type: str | None,
               target_id: str | None, metadata: dict, ip: str | None,
               created_at: dt.datetime) -> str:
    """Return the SHA-256 hex digest chaining one audit row to the previous one."""
    check.text(prev_hash, "prev_hash", max_length=64)
    for value, name in ((actor_id, "actor_id"), (target_type, "target_type"),
                        (target_id, "target_id"), (ip, "ip")):
        check.optional_text(value, name, max_length=64)
    check.text(action, "action", max_length=AuditLog.action.max_length)
    metadata = check.json_object(metadata, "metadata")
    check.instant(created_at, "created_at")
    return _digest(prev_hash, actor_id, action, target_type, target_id, metadata, ip,
                   created_at)


def _digest(prev_hash: str, actor_id: str | None, action: str, target_type: str | None,
            target_id: str | None, metadata: dict, ip: str | None,
            created_at: dt.datetime) -> str:
    payload = json.dumps(
        [prev_hash, actor_id, action, target_type, target_id, metadata, ip,
         format_utc(created_at)],
        sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@public_api
def record_event(actor: User | uuid.UUID | str | None, action: str, target: Any = None,
                 metadata: dict | None = None, ip: str | None = None,
                 created_at: dt.datetime | None = None) -> AuditLog:
    """Append one event to the audit chain and return it.

    ``target`` is a model instance or a ``(type, id)`` pair. Joins the caller's transaction
    if there is one; the append is serialised against other writers either way.
    """
    actor_id = _actor(actor)
    check.text(action, "action", max_length=AuditLog.action.max_length)
    target_type, target_id = _target(target)
    metadata = check.json_object(metadata, "metadata")  # exactly what will read back
    if ip is not None:
        check.text(ip, "ip", max_length=AuditLog.ip.max_length)
    created_at = check.optional_instant(created_at, "created_at") or utcnow()
    with bound().serialised(AUDIT_LOCK_KEY):
        last = (AuditLog.select(AuditLog.row_hash).order_by(AuditLog.id.desc()).limit(1)
                .scalar())
        prev = last or GENESIS
        digest = _digest(prev, actor_id, action, target_type, target_id, metadata, ip,
                            created_at)
        return AuditLog.create(actor=actor_id, action=action, target_type=target_type,
                               target_id=target_id, metadata=metadata, ip=ip,
                               created_at=created_at, prev_hash=prev, row_hash=digest)


@dataclass(frozen=True)
class ChainReport:
    """The outcome of ``verify_audit_chain``: ``broken_id`` is None when the chain holds."""

    checked: int
    broken_id: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_id is None


@public_api
def verify_audit_chain(chunk_size: int = 2000) -> ChainReport:
    """Recompute the chain in id order and report the first row that does not fit."""
    check.integer(chunk_size, "chunk_size", low=1, high=1_000_000)
    prev = GENESIS
    checked = 0
    query = AuditLog.select().order_by(AuditLog.id)
    for row in query.iterator():
        checked += 1
        if row.prev_hash != prev:
            return ChainReport(checked, row.id, "previous hash does not match: a row before "
                                                "it was deleted, inserted or reordered")
        actor_id = str(row.actor_id) if row.actor_id is not None else None
        expected = _digest(row.prev_hash, actor_id, row.action, row.target_type,
                              row.target_id, row.metadata, row.ip, row.created_at)
        if row.row_hash != expected:
            return ChainReport(checked, row.id, "row content does not match its hash")
        prev = row.row_hash
    return ChainReport(checked)
