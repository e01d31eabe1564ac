"""The tamper-evident audit log: append events to a hash chain, sign its head, verify both.

Appends are serialised (a PostgreSQL advisory transaction lock, an SQLite IMMEDIATE
transaction) so concurrent writers keep one chain; triggers refuse every statement that would
change or remove a row. Values are normalised before they are stored and each row's hash
covers the RFC 8785 text of what is stored (``within_db.canonical``), so reading a row back
from either database reproduces its hash. A checkpoint is the head signed with HMAC-SHA256
under ``WITHIN_DB_AUDIT_KEY``; kept where the database's users cannot write, it anchors the
chain against truncation and re-hashing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import peewee

from within_db import boundary as check
from within_db.boundary import public_api
from within_db.canonical import (
    canonical_json,
    canonical_with_document,
    check_text,
    normalise_json,
)
from within_db.db import bound
from within_db.errors import ConfigurationError, ValidationError
from within_db.fields import format_utc, utcnow
from within_db.models.users import AuditLog, User

__all__ = ["AUDIT_KEY_ENV", "AUDIT_LOCK_KEY", "GENESIS", "ChainReport", "audit_key",
           "checkpoint", "record_event", "row_digest", "verify_audit_chain"]

GENESIS = "0" * 64
AUDIT_LOCK_KEY = 0x61756469  # "audi"
AUDIT_KEY_ENV = "WITHIN_DB_AUDIT_KEY"
MIN_KEY_LENGTH = 32
CHECKPOINT_VERSION = 1
TEXT_LIMIT = 64  # action, target_type, target_id: VARCHAR(64)
IP_LIMIT = 45
_UUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")


# -- normalising what is stored --------------------------------------------------------------

def _text(value: Any, name: str) -> str:
    return check_text(check.text(value, name, max_length=TEXT_LIMIT), name)


def _actor(actor: Any) -> str | None:
    if actor is None:
        return None
    if isinstance(actor, User):
        return str(check.instance(actor, User, "actor").id)
    if isinstance(actor, str) and _UUID.match(actor):
        return actor.lower()
    if isinstance(actor, uuid.UUID):
        return str(actor)
    raise ValidationError("actor must be a saved User, a UUID or a UUID string like "
                          "12345678-1234-1234-1234-123456789abc")


def _target(target: Any) -> tuple[str | None, str | None]:
    if target is None:
        return None, None
    if isinstance(target, peewee.Model):
        check.instance(target, peewee.Model, "target")
        return (_text(target._meta.table_name, "target type"),
                _text(str(target.get_id()), "target id"))
    if isinstance(target, tuple) and len(target) == 2:
        kind, key = target
        if isinstance(key, (int, uuid.UUID)) and not isinstance(key, bool):
            key = str(key)
        return _text(kind, "target type"), _text(key, "target id")
    raise ValidationError("target must be a saved model instance or a (type, id) pair")


def _ip(ip: Any) -> str | None:
    if ip is None:
        return None
    if not isinstance(ip, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        raise ValidationError(f"ip: expected an address string, got {type(ip).__name__}")
    try:
        text = str(ipaddress.ip_address(ip if not isinstance(ip, str) else ip.strip()))
    except ValueError:
        raise ValidationError("ip: not an IPv4 or IPv6 address") from None
    if len(text) > IP_LIMIT:
        raise ValidationError(f"ip: longer than {IP_LIMIT} characters")
    return text


def _metadata(metadata: Any) -> dict:
    result: dict = normalise_json(check.json_object(metadata, "metadata"), "metadata")
    return result


# -- the hash --------------------------------------------------------------------------------

@public_api
def row_digest(prev_hash: str, actor_id: str | None, action: str, target_type: str | None,
               target_id: str | None, metadata: dict, ip: str | None,
               created_at: dt.datetime | str) -> str:
    """Return the SHA-256 hex digest chaining one audit row to the previous one.

    It covers the RFC 8785 text of ``[prev_hash, actor_id, action, target_type, target_id,
    ip, created_at, metadata]`` with ``created_at`` as fixed-width UTC text
    (``2026-01-31 12:00:00.000000+00:00``) and ``actor_id`` as a lower-case UUID string.
    """
    check.text(prev_hash, "prev_hash", max_length=64)
    for value, name in ((actor_id, "actor_id"), (target_type, "target_type"),
                        (target_id, "target_id"), (ip, "ip")):
        check.optional_text(value, name, max_length=TEXT_LIMIT)
    check.text(action, "action", max_length=TEXT_LIMIT)
    metadata = check.json_object(metadata, "metadata")
    created = check.text(created_at, "created_at", max_length=40) \
        if isinstance(created_at, str) else format_utc(check.instant(created_at, "created_at"))
    return _digest(canonical_json([prev_hash, actor_id, action, target_type, target_id, ip,
                                   created, metadata]))


def _digest(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()


@public_api
def record_event(actor: User | uuid.UUID | str | None, action: str, target: Any = None,
                 metadata: dict | None = None, ip: str | None = None,
                 created_at: dt.datetime | None = None) -> AuditLog:
    """Append one event to the audit chain and return it.

    ``actor`` is a User, a UUID or a UUID string; ``target`` a model instance or a
    ``(type, id)`` pair; ``metadata`` a JSON object (normalised: integral floats become
    integers); ``ip`` an IPv4 or IPv6 address string, stored in its canonical form. Raises
    ValidationError for anything else, before any write. Joins the caller's transaction if
    there is one; the append is serialised against other writers either way.
    """
    actor_id = _actor(actor)
    action = _text(action, "action")
    target_type, target_id = _target(target)
    metadata = _metadata(metadata)
    ip = _ip(ip)
    created_at = check.optional_instant(created_at, "created_at") or utcnow()
    created = format_utc(created_at)
    with bound().serialised(AUDIT_LOCK_KEY):
        last = (AuditLog.select(AuditLog.row_hash).order_by(AuditLog.id.desc()).limit(1)
                .scalar())
        prev = last or GENESIS
        digest = _digest(canonical_json([prev, actor_id, action, target_type, target_id, ip,
                                         created, metadata]))
        return AuditLog.create(actor=actor_id, action=action, target_type=target_type,
                               target_id=target_id, metadata=metadata, ip=ip,
                               created_at=created_at, prev_hash=prev, row_hash=digest)


# -- checkpoints -----------------------------------------------------------------------------

@public_api
def audit_key(key: str | bytes | None = None) -> bytes:
    """Return the checkpoint key: ``key``, else ``$WITHIN_DB_AUDIT_KEY``.

    Raises ConfigurationError when it is missing or shorter than 32 characters. The key is
    never part of a message.
    """
    if key is not None and not isinstance(key, (str, bytes)):
        raise ValidationError(f"key must be text or bytes, not {type(key).__name__}")
    if key is None:
        key = os.environ.get(AUDIT_KEY_ENV) or None
        if key is None:
            raise ConfigurationError(
                f"{AUDIT_KEY_ENV} is not set: checkpoints are signed with a secret of at "
                f"least {MIN_KEY_LENGTH} characters (e.g. `openssl rand -hex 32`)")
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_LENGTH:
        raise ConfigurationError(
            f"{AUDIT_KEY_ENV} is shorter than {MIN_KEY_LENGTH} characters; use a random "
            "secret such as the output of `openssl rand -hex 32`")
    return raw


_SIGNED = ("v", "last_id", "row_hash", "rows", "at")


def _signature(fields: dict, key: bytes) -> str:
    message = canonical_json({k: fields[k] for k in _SIGNED}).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@public_api
def checkpoint(key: str | bytes | None = None) -> str:
    """Sign the chain's head and return it as one JSON line.

    The line holds ``last_id``, its ``row_hash`` (the genesis hash for an empty log),
    ``rows`` (the row count), ``at`` (UTC time) and an HMAC-SHA256 ``signature`` under
    ``key`` (default ``$WITHIN_DB_AUDIT_KEY``; ConfigurationError if missing or short).
    Taken under the append lock, so head and count agree. Two queries. Store the line where
    the database's users cannot write; ``verify_audit_chain(checkpoints=...)`` checks it.
    """
    secret = audit_key(key)
    with bound().serialised(AUDIT_LOCK_KEY):
        head = (AuditLog.select(AuditLog.id, AuditLog.row_hash).order_by(AuditLog.id.desc())
                .limit(1).tuples().first())
        rows = AuditLog.select().count()
    last_id, row_hash = head if head else (None, GENESIS)
    fields = {"v": CHECKPOINT_VERSION, "last_id": last_id, "row_hash": row_hash, "rows": rows,
              "at": utcnow().isoformat(timespec="seconds")}
    fields["signature"] = _signature(fields, secret)
    return json.dumps(fields, separators=(",", ":"))


def _parse_checkpoint(item: Any, number: int, key: bytes) -> dict:
    where = f"checkpoint {number}"
    if isinstance(item, (str, bytes)):
        try:
            item = json.loads(item)
        except ValueError:
            raise ValidationError(f"{where} is not JSON; expected one line of "
                                  "`within-db audit checkpoint`") from None
    if not isinstance(item, dict) or set(item) != {*_SIGNED, "signature"} \
            or item["v"] != CHECKPOINT_VERSION \
            or not (item["last_id"] is None or type(item["last_id"]) is int) \
            or type(item["rows"]) is not int or not isinstance(item["row_hash"], str) \
            or not isinstance(item["at"], str) or not isinstance(item["signature"], str):
        raise ValidationError(f"{where} is malformed; expected the fields "
                              f"{', '.join(_SIGNED)}, signature")
    if not hmac.compare_digest(item["signature"], _signature(item, key)):
        raise ValidationError(f"{where} (signed at {item['at']}) has an invalid signature: "
                              f"it was altered or signed with another {AUDIT_KEY_ENV}")
    return item


# -- verification ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ChainReport:
    """The outcome of ``verify_audit_chain``: ``broken_id`` is None when the chain holds.

    ``checkpoints`` counts the signed heads that were found intact.
    """

    checked: int
    broken_id: int | None = None
    reason: str | None = None
    checkpoints: int = 0

    @property
    def ok(self) -> bool:
        return self.broken_id is None


def _uuid_text(raw: str) -> str:
    # SQLite keeps a UUID as 32 hex digits, PostgreSQL's text is the hyphenated form.
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


@public_api
def verify_audit_chain(checkpoints: Iterable[str | dict] | None = None,
                       key: str | bytes | None = None, chunk_size: int = 2000) -> ChainReport:
    """Recompute the chain in id order and report the first row that does not fit.

    With ``checkpoints`` (lines of ``checkpoint()`` or their dicts) each signed head must
    still be in the chain with its hash and row count; the first missing or changed head is
    reported. Raises ValidationError for a malformed checkpoint or a bad signature and
    ConfigurationError without a key. Streams ``chunk_size`` raw rows at a time (a
    server-side cursor on PostgreSQL): memory stays flat however long the log is.
    """
    check.integer(chunk_size, "chunk_size", low=1, high=1_000_000)
    if checkpoints is not None and (isinstance(checkpoints, (str, bytes, dict))
                                    or not isinstance(checkpoints, Iterable)):
        raise ValidationError("checkpoints must be a list of checkpoint lines or dicts")
    secret = audit_key(key) if checkpoints is not None else b""
    heads = [_parse_checkpoint(cp, n, secret) for n, cp in enumerate(checkpoints or (), 1)]
    pending = sorted((cp for cp in heads if cp["last_id"] is not None),
                     key=lambda cp: cp["last_id"])
    found = len(heads) - len(pending)  # a checkpoint of the empty log holds trivially
    db = bound()
    # Raw columns, JSON, UUID and instant as text on both backends: the hot loop decodes
    # only what the hash needs.
    fields = (AuditLog.id, AuditLog.actor.cast("text"), AuditLog.action, AuditLog.target_type,
              AuditLog.target_id, AuditLog.metadata.cast("text"), AuditLog.ip,
              db.instant_text(AuditLog.created_at), AuditLog.prev_hash, AuditLog.row_hash)
    sql, params = AuditLog.select(*fields).order_by(AuditLog.id).sql()
    sha256 = hashlib.sha256
    prev = GENESIS
    checked = 0
    at = 0  # the next checkpoint to meet: pending[at]
    nxt = pending[0]["last_id"] if pending else None
    with db.streaming_cursor(sql, params) as (_, fetch):
        while rows := fetch(chunk_size):
            for (row_id, actor, action, target_type, target_id, metadata, ip, created,
                 prev_hash, row_hash) in rows:
                if nxt is not None and row_id > nxt:
                    return ChainReport(checked, nxt, _missing(pending[at]), found)
                checked += 1
                if prev_hash != prev:
                    return ChainReport(checked, row_id, "previous hash does not match: a row "
                                       "before it was deleted, inserted or reordered", found)
                if actor is not None and len(actor) == 32:
                    actor = _uuid_text(actor)
                try:
                    expected = sha256(canonical_with_document(
                        [prev_hash, actor, action, target_type, target_id, ip, created],
                        metadata).encode()).hexdigest()
                except ValidationError:  # metadata that record_event cannot have written
                    expected = None
                if row_hash != expected:
                    return ChainReport(checked, row_id, "row content does not match its hash",
                                       found)
                prev = row_hash
                while nxt == row_id:
                    cp = pending[at]
                    if cp["row_hash"] != row_hash or cp["rows"] != checked:
                        return ChainReport(checked, row_id, "differs from the checkpoint "
                                           f"signed at {cp['at']}: the log was rewritten up "
                                           "to it", found)
                    found += 1
                    at += 1
                    nxt = pending[at]["last_id"] if at < len(pending) else None
    if nxt is not None:
        return ChainReport(checked, nxt, _missing(pending[at]), found)
    return ChainReport(checked, checkpoints=found)


def _missing(cp: dict) -> str:
    return (f"is missing but the checkpoint signed at {cp['at']} names it as the head: rows "
            "were deleted from the end or the log was rewritten")
