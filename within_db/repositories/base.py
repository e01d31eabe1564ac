"""What every repository shares: signed keyset cursors, allow-listed filters, pages,
permission checks cached per repository, and integrity errors turned into within_db errors.

A cursor is the last row's order keys, HMAC-signed together with the repository, order,
filters and acting user it was made for: it cannot be edited, nor replayed on another query.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import peewee
import pydantic

from within_db.base import jsonable
from within_db.db import bound
from within_db.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from within_db.integrity import violation
from within_db.models.users import User
from within_db.schemas import input_adapter
from within_db.services.users import has_permission

T = TypeVar("T")

CURSOR_SECRET_ENV = "WITHIN_DB_CURSOR_SECRET"
MAX_CURSOR_LENGTH = 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 500

_process_secret = secrets.token_bytes(32)


def cursor_secret() -> bytes:
    """Return the cursor signing key: ``$WITHIN_DB_CURSOR_SECRET``, else one per process.

    Set the variable when several processes serve the same clients, or their cursors will
    not verify on each other.
    """
    value = os.environ.get(CURSOR_SECRET_ENV)
    return value.encode() if value else _process_secret


class Page(pydantic.BaseModel, Generic[T]):
    """One page of a list: the items and the cursor of the next page (None on the last)."""

    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True)
class Order:
    """A keyset order: fields compared left to right, all ascending or all descending.

    The last field must be unique (the primary key) so every row has one place.
    """

    fields: tuple[peewee.Field, ...]
    descending: bool = False

    def clauses(self) -> list[Any]:
        return [f.desc() if self.descending else f.asc() for f in self.fields]

    def after(self, keys: list[Any]) -> Any:
        """Return the condition for rows strictly after ``keys``.

        Written as ``a <= x AND (a < x OR (a = x AND b < y))``: the redundant first bound
        lets both databases seek the index instead of scanning from the start.
        """
        less = (lambda f, v: f < v) if self.descending else (lambda f, v: f > v)
        upto = (lambda f, v: f <= v) if self.descending else (lambda f, v: f >= v)
        tail = less(self.fields[-1], keys[-1])
        for field, key in zip(reversed(self.fields[:-1]), reversed(keys[:-1]), strict=True):
            tail = less(field, key) | ((field == key) & tail)
        if len(self.fields) > 1:
            return upto(self.fields[0], keys[0]) & tail
        return tail


@dataclass(frozen=True)
class Filter:
    """An allow-listed filter: a field and how it compares (eq, gte, lt)."""

    field: peewee.Field
    op: str = "eq"

    def expression(self, value: Any) -> Any:
        f = self.field
        return {"eq": lambda: f == value, "gte": lambda: f >= value,
                "lt": lambda: f < value}[self.op]()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Repository:
    """Base of the repositories: an acting user, cached permission checks, keyset pages."""

    orders: ClassVar[dict[str, Order]] = {}
    filters: ClassVar[dict[str, Filter]] = {}
    default_order: ClassVar[str] = ""

    def __init__(self, actor: User):
        if not isinstance(actor, User) or actor.id is None:
            raise ValidationError("a repository needs the acting user (a saved User)")
        self.actor = actor
        self._granted: dict[str, bool] = {}

    # -- permissions -----------------------------------------------------------------------

    def can(self, codename: str) -> bool:
        """Whether the actor holds ``codename``: one query the first time, then cached."""
        if codename not in self._granted:
            self._granted[codename] = has_permission(self.actor, codename)
        return self._granted[codename]

    def require(self, codename: str, doing: str) -> None:
        """Raise PermissionDeniedError unless the actor holds ``codename``."""
        if not self.can(codename):
            raise PermissionDeniedError(f"{doing} needs the {codename} permission")

    def is_actor(self, user_id: Any) -> bool:
        return str(user_id) == str(self.actor.id)

    # -- filters and cursors ---------------------------------------------------------------

    def clean_filters(self, filters: dict[str, Any] | None) -> dict[str, Any]:
        """Validate filter names against the allow-list and values with the fields' rules."""
        if filters is not None and not isinstance(filters, dict):
            raise ValidationError(f"filters must be a dict of name to value, not "
                                  f"{type(filters).__name__}")
        out: dict[str, Any] = {}
        for name, value in (filters or {}).items():
            spec = self.filters.get(name)
            if spec is None:
                raise ValidationError(f"unknown filter {str(name)[:64]!r}; allowed: "
                                      f"{', '.join(sorted(self.filters)) or 'none'}")
            if value is None:
                continue
            out[name] = _validate(spec.field, value, f"filter {name}")
        return out

    def _order(self, order: str | None, orders: dict[str, Order]) -> tuple[str, Order]:
        name = order or self.default_order
        if not isinstance(name, str) or name not in orders:
            raise ValidationError(f"unknown order {str(name)[:64]!r}; allowed: "
                                  f"{', '.join(sorted(orders))}")
        return name, orders[name]

    def _binding(self, order_name: str, filters: dict[str, Any], scope: Any) -> bytes:
        # What a cursor is valid for: this repository, order, filters, scope and actor.
        text = json.dumps([type(self).__name__, order_name, jsonable(filters), jsonable(scope),
                           str(self.actor.id)], sort_keys=True, separators=(",", ":"))
        return text.encode()

    def _encode(self, binding: bytes, keys: list[Any]) -> str:
        payload = json.dumps(jsonable(keys), separators=(",", ":")).encode()
        mac = hmac.new(cursor_secret(), binding + b"\0" + payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac[:18])}"

    def _decode(self, binding: bytes, order: Order, token: str) -> list[Any]:
        invalid = ValidationError("invalid cursor: pass the next_cursor of the same query "
                                  "unchanged, or omit it for the first page")
        if not isinstance(token, str) or len(token) > MAX_CURSOR_LENGTH or token.count(".") != 1:
            raise invalid
        body, sig = token.split(".")
        try:
            payload, mac = _unb64(body), _unb64(sig)
        except (ValueError, TypeError):
            raise invalid from None
        if _b64(payload) != body or _b64(mac) != sig:  # one spelling per cursor
            raise invalid
        expected = hmac.new(cursor_secret(), binding + b"\0" + payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected[:18]):
            raise invalid
        try:
            keys = json.loads(payload)
        except ValueError:
            raise invalid from None
        if not isinstance(keys, list) or len(keys) != len(order.fields):
            raise invalid
        return [_validate(f, k, "cursor") for f, k in zip(order.fields, keys, strict=True)]

    def page(self, query: peewee.SelectQuery, read: type[pydantic.BaseModel], *,
             order: str | None, filters: dict[str, Any], cursor: str | None, limit: int | None,
             scope: Any = None, orders: dict[str, Order] | None = None) -> Page:
        """Run one keyset page of ``query`` (already scoped): one query.

        ``filters`` must come from ``clean_filters``; ``scope`` is whatever else narrowed the
        query (an owner id), bound into the cursor like the filters; ``orders`` replaces
        the class's for a second list of the same repository.
        """
        limit = _limit(limit)
        order_name, spec = self._order(order, self.orders if orders is None else orders)
        for name, value in filters.items():
            query = query.where(self.filters[name].expression(value))
        binding = self._binding(order_name, filters, scope)
        if cursor:
            query = query.where(spec.after(self._decode(binding, spec, cursor)))
        rows = list(query.order_by(*spec.clauses()).limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        token = None
        if more:
            last = rows[-1]
            token = self._encode(binding, [getattr(last, f.name) if not isinstance(
                f, peewee.ForeignKeyField) else getattr(last, f.column_name)
                for f in spec.fields])
        return Page[read](items=[read.model_validate(r) for r in rows],  # type: ignore[valid-type]
                          next_cursor=token)


def _limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return limit


def _validate(field: peewee.Field, value: Any, what: str) -> Any:
    try:
        return input_adapter(field).validate_python(value)
    except pydantic.ValidationError as exc:
        reason = exc.errors()[0]["msg"] if exc.errors() else "invalid value"
        raise ValidationError(f"{what}: {reason}") from None


def parse_input(schema: type[pydantic.BaseModel], data: Any) -> Any:
    """Return ``data`` as ``schema``: an instance passes, a dict is validated.

    Raises ValidationError naming the first few bad fields (never their values).
    """
    if isinstance(data, schema):
        return data
    try:
        return schema.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise ValidationError(f"invalid {schema.__name__}: {problems}") from None


def as_uuid(value: Any, what: str) -> uuid.UUID:
    """Return ``value`` as a UUID; NotFoundError("no <what> with that id") if it is not one."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFoundError(f"no {what} with that id") from None


def as_int_id(value: Any, what: str) -> int:
    """Return ``value`` as a positive BIGINT id; NotFoundError if it cannot be one."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value), 10)
        except ValueError:
            raise NotFoundError(f"no {what} with that id") from None
    if not 1 <= value < 2**63:
        raise NotFoundError(f"no {what} with that id")
    return value


@contextlib.contextmanager
def refused_writes() -> Iterator[None]:
    """Turn a constraint violation inside the block into ConflictError or ValidationError.

    The message names the constraint, never a value. Put the block's transaction inside
    this context, so it has rolled back first.
    """
    try:
        yield
    except peewee.IntegrityError as exc:
        found = violation(exc, bound())
        name = found.name if found is not None and found.name else "a constraint"
        if found is not None and found.kind == "unique":
            raise ConflictError(f"the write conflicts with an existing row ({name})") from None
        if found is not None and found.kind == "foreign_key":
            raise ValidationError("the write refers to a row that does not exist") from None
        raise ValidationError(f"the database refused the values ({name})") from None


__all__ = [
    "CURSOR_SECRET_ENV",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Filter",
    "Order",
    "Page",
    "Repository",
    "as_int_id",
    "as_uuid",
    "cursor_secret",
    "parse_input",
    "refused_writes",
]
