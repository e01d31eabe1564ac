"""The public API's boundary: ``@public_api`` translates driver errors, the checks refuse bad
arguments before any write.

Every public function of ``within_db.services`` and ``within_db.batch`` wears ``@public_api``
and starts with these checks, so only WithinDBError subclasses leave it and no message carries
driver text, PostgreSQL's DETAIL or a row value.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import sqlite3
import unicodedata
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any, ParamSpec, TypeVar

import peewee
import psycopg2

from within_db.db import database
from within_db.errors import (
    ConflictError,
    DatabaseBusyError,
    DatabaseUnavailableError,
    NotFoundError,
    NotMigratedError,
    QueryFailedError,
    ValidationError,
    WithinDBError,
)
from within_db.integrity import violation

__all__ = [
    "MAX_DURATION", "MAX_JSON_BYTES", "MAX_LIST", "MAX_TEXT", "choice", "day", "duration",
    "flag", "instance", "instant", "integer", "is_saved", "json_object", "json_value", "number",
    "optional_instance", "optional_instant", "optional_integer", "optional_text", "public_api",
    "text", "text_list", "translate", "uuid_value",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=peewee.Model)

MAX_TEXT = 10_000  # descriptions and other free text without a column limit
MAX_JSON_BYTES = 64 * 1024  # a JSON argument (parameters, metadata, options) serialised
MAX_LIST = 1_000
MAX_DURATION = dt.timedelta(days=3660)  # ten years: lifetimes and timeouts
_DRIVER_ERRORS = (peewee.PeeweeException, psycopg2.Error, sqlite3.Error)
# SQLSTATEs: lock not available, deadlock, serialization failure, query canceled (timeouts)
_BUSY_STATES = {"55P03", "40P01", "40001", "57014"}
_MISSING_STATES = {"42P01", "42703"}  # undefined table, undefined column


# -- the decorator -----------------------------------------------------------------------------


def public_api(func: Callable[P, R]) -> Callable[P, R]:
    """Mark ``func`` as public: driver errors escaping it become WithinDBError subclasses.

    A function that returns a generator validates its arguments before returning it (write it
    as a plain function around an inner generator); errors raised while iterating are
    translated too.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = func(*args, **kwargs)
        except _DRIVER_ERRORS as exc:
            raise translate(exc) from None
        if isinstance(result, Generator):
            return _guarded(result)  # type: ignore[return-value]
        return result

    wrapper.__within_db_public__ = True  # type: ignore[attr-defined]
    return wrapper


def _guarded(gen: Generator[Any, Any, Any]) -> Iterator[Any]:
    try:
        yield from gen
    except _DRIVER_ERRORS as exc:
        raise translate(exc) from None


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None) or (exc.args[0] if exc.args else None)
    for candidate in (exc, orig):
        code = getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def _is(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is the DB-API error ``name`` (peewee's wrapper or a driver's own)."""
    orig = getattr(exc, "orig", None) or (exc.args[0] if exc.args else None)
    return any(isinstance(e, BaseException) and
               any(c.__name__ == name for c in type(e).__mro__) for e in (exc, orig))


def translate(exc: BaseException) -> WithinDBError:
    """Return the WithinDBError for a driver error; its text is classified, never echoed."""
    state = _sqlstate(exc)
    text = str(exc).lower()
    log.debug("driver error %s (sqlstate %s) at the API boundary", type(exc).__name__, state)
    if _is(exc, "IntegrityError"):
        integrity = exc if isinstance(exc, peewee.IntegrityError) else peewee.IntegrityError(exc)
        try:
            found = violation(integrity, database.obj) if database.obj is not None else None
        except _DRIVER_ERRORS:
            found = None
        return _integrity_error(found.kind if found else None, found.name if found else None)
    if _is(exc, "DataError"):
        return ValidationError("a value does not fit its column (wrong type, out of range or "
                               "too long)")
    if state in _BUSY_STATES or "database is locked" in text or "database table is locked" \
            in text:
        return DatabaseBusyError(
            "the database stayed busy (locked by another writer or timed out); nothing was "
            "written: retry the operation")
    if state in _MISSING_STATES or "no such table" in text or "no such column" in text:
        return NotMigratedError("the schema is missing a table or column; run "
                                "`within-db migrate up`")
    if _is(exc, "InterfaceError") or ("connection" in text and _is(exc, "OperationalError")):
        return DatabaseUnavailableError("the connection to the database failed; retry once it "
                                        "is reachable")
    return QueryFailedError(f"the database refused the operation ({type(exc).__name__}); "
                            "run with --debug and report it")


def _integrity_error(kind: str | None, name: str | None) -> WithinDBError:
    if kind == "unique":
        return ConflictError(f"the write conflicts with an existing row ({name})")
    if kind == "foreign_key":
        return NotFoundError("the write refers to a row that does not exist"
                             + (f" ({name})" if name else ""))
    if kind == "not_null":
        return ValidationError(f"a required value is missing ({name})")
    if kind == "check":
        return ValidationError(f"a value breaks the rule {name}")
    return ConflictError("the database refused the write (an integrity rule)")


# -- argument checks ---------------------------------------------------------------------------


def _kind(value: object) -> str:
    return type(value).__name__


def text(value: object, name: str, *, max_length: int = MAX_TEXT, empty: bool = False,
         multiline: bool = False) -> str:
    """Return ``value`` if it is text within ``max_length`` characters, else ValidationError.

    Refused: non-strings, NUL, control and invisible format characters (line breaks and tabs
    too unless ``multiline``), and the empty or blank string unless ``empty``.
    """
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be text, not {_kind(value)}")
    if len(value) > max_length:
        raise ValidationError(f"{name} is longer than {max_length} characters")
    if not empty and not value.strip():
        raise ValidationError(f"{name} is empty")
    allowed = "\n\r\t" if multiline else ""
    for ch in value:
        if (ch < " " or "\x7f" <= ch <= "\x9f" or unicodedata.category(ch) == "Cf") \
                and ch not in allowed:
            raise ValidationError(f"{name} contains a control or invisible character "
                                  f"(U+{ord(ch):04X})")
    return value


def optional_text(value: object, name: str, **kw: Any) -> str | None:
    """``text()`` that also accepts None."""
    return None if value is None else text(value, name, **kw)


def choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else ValidationError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValidationError(f"{name} must be one of {', '.join(choices)}")
    return value


def flag(value: object, name: str) -> bool:
    """Return ``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise ValidationError(f"{name}: expected a bool, got {_kind(value)}")
    return value


def integer(value: object, name: str, *, low: int = -(2**63), high: int = 2**63 - 1) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[low, high]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{name} must be an integer, not {_kind(value)}")
    if not low <= value <= high:
        raise ValidationError(f"{name} must be from {low} to {high}")
    return value


def optional_integer(value: object, name: str, **kw: Any) -> int | None:
    return None if value is None else integer(value, name, **kw)


def number(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite int or float (not a bool)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValidationError(f"{name} must be a number, not {_kind(value)}")
    try:
        result = float(value)
    except OverflowError:
        raise ValidationError(f"{name} is out of range") from None
    if not math.isfinite(result):
        raise ValidationError(f"{name} must be a finite number")
    return result


def instant(value: object, name: str) -> dt.datetime:
    """Return ``value`` if it is a timezone-aware datetime."""
    if not isinstance(value, dt.datetime):
        raise ValidationError(f"{name} must be a datetime, not {_kind(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{name}: naive datetime refused: pass a timezone-aware "
                              "datetime, e.g. datetime.now(timezone.utc)")
    return value


def optional_instant(value: object, name: str) -> dt.datetime | None:
    return None if value is None else instant(value, name)


def day(value: object, name: str) -> dt.date:
    """Return ``value`` if it is a date (a datetime is refused: it carries a time)."""
    if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
        raise ValidationError(f"{name} must be a date, not {_kind(value)}")
    return value


def duration(value: object, name: str, *, maximum: dt.timedelta = MAX_DURATION
             ) -> dt.timedelta:
    """Return ``value`` if it is a positive timedelta of at most ``maximum``."""
    if not isinstance(value, dt.timedelta):
        raise ValidationError(f"{name} must be a timedelta, not {_kind(value)}")
    if value <= dt.timedelta(0) or value > maximum:
        raise ValidationError(f"{name} must be positive and at most {maximum.days} days")
    return value


def uuid_value(value: object, name: str) -> uuid.UUID:
    """Return ``value`` as a UUID (a UUID or its text form); ValidationError otherwise."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and len(value) <= 64:
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ValidationError(f"{name} must be a UUID")


def is_saved(value: peewee.Model) -> bool:
    """Whether ``value`` came from (or was written to) the database."""
    pk = value._meta.primary_key
    dirty: set[str] = getattr(value, "_dirty", set())
    return value.get_id() is not None and (pk is False or pk.name not in dirty)


def instance(value: object, cls: type[M] | tuple[type[peewee.Model], ...], name: str) -> M:
    """Return ``value`` if it is a saved instance of ``cls`` (a class or a tuple of them)."""
    classes = cls if isinstance(cls, tuple) else (cls,)
    names = " or ".join(c.__name__ for c in classes)
    if not isinstance(value, classes):
        raise ValidationError(f"{name} must be a saved {names}, not {_kind(value)}")
    if not is_saved(value):
        raise ValidationError(f"{name} is an unsaved {_kind(value)}: save it first")
    return value  # type: ignore[return-value]


def optional_instance(value: object, cls: type[M], name: str) -> M | None:
    return None if value is None else instance(value, cls, name)


def _nul_free(value: Any, name: str) -> None:
    # PostgreSQL's jsonb refuses \u0000, SQLite would keep it: refuse it on both
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationError(f"{name} contains a NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            _nul_free(key, name)
            _nul_free(item, name)
    elif isinstance(value, list):
        for item in value:
            _nul_free(item, name)


def json_value(value: object, name: str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Return ``value`` as it will read back from a JSON column, if it is plain JSON.

    Refused: objects JSON cannot hold, non-text keys, NaN and infinities, NUL characters,
    nesting too deep to encode, and more than ``max_bytes`` once serialised.
    """
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        raise ValidationError(f"{name} must hold only JSON values (text, numbers, booleans, "
                              "null, lists and objects with text keys; no NaN)") from None
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{name} contains an unpaired surrogate, which UTF-8 cannot "
                              "encode") from None
    if size > max_bytes:
        raise ValidationError(f"{name} is larger than {max_bytes // 1024} KiB as JSON")
    result = json.loads(encoded)
    _nul_free(result, name)
    return result


def json_object(value: object, name: str, *, max_bytes: int = MAX_JSON_BYTES
                ) -> dict[str, Any]:
    """``json_value()`` for a JSON object (a dict with text keys); None gives ``{}``."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValidationError(f"{name} must be a dict with text keys, not {_kind(value)}")
    result: dict[str, Any] = json_value(value, name, max_bytes=max_bytes)
    return result


def text_list(value: object, name: str, *, max_items: int = MAX_LIST,
              item: Callable[[object, str], str] | None = None) -> list[str]:
    """Return ``value`` as a list of text items (a list or tuple; each checked by ``item``)."""
    if not isinstance(value, (list, tuple)):
        raise ValidationError(f"{name} must be a list, not {_kind(value)}")
    if len(value) > max_items:
        raise ValidationError(f"{name} has more than {max_items} items")
    check = item or (lambda v, n: text(v, n, max_length=200))
    return [check(v, f"{name}[{i}]") for i, v in enumerate(value)]
