"""What every part of within_db.db shares: the proxy models use, the secret-free logging
filter, the bulk-load signals, and month partitions' names and bounds."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import peewee

from within_db.errors import NotConnectedError, ValidationError
from within_db.url import SCHEMES, redact_url

__all__ = [
    "BUSY_TIMEOUT", "BrokenForeignKeys", "BulkLoadFailed", "CONNECT_TIMEOUT", "Partition",
    "SECRET_COLUMNS", "bound", "database", "json_loads", "log", "month_start", "next_month",
    "partition_meta", "partition_name", "partition_parent",
]

if TYPE_CHECKING:
    from within_db.db.connection import Backend

log = logging.getLogger("within_db.db")  # one logger for the package, as before the split

CONNECT_TIMEOUT = 10
BUSY_TIMEOUT = 30.0


SECRET_COLUMNS = ("password_hash", "token_hash")


class _RedactSecretParams(logging.Filter):
    """peewee logs every query with its parameters at DEBUG; hide those of secret columns."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[0], str) and msg[1] \
                and any(col in msg[0] for col in SECRET_COLUMNS):
            record.msg = (msg[0], "<parameters redacted: secret columns>")
        return True


# A filter, not a handler: the library still leaves logging configuration to the application.
logging.getLogger("peewee").addFilter(_RedactSecretParams())


class _Proxy(peewee.DatabaseProxy):
    """A DatabaseProxy whose misuse before ``connect()`` says what to do.

    Inside ``db.reading()`` it forwards this thread's model queries to the read target.
    """

    def __getattr__(self, attr: str) -> Any:
        routed = getattr(_ROUTE, "db", None)
        return getattr(routed if routed is not None else bound(self.obj), attr)

    def __reduce__(self) -> str:
        # Queries shipped to other processes (Dask tasks) carry the proxy by name, never the
        # bound database with its connection and URL.
        return "database"

    def __enter__(self) -> Any:
        return self.__getattr__("__enter__")()

    def __exit__(self, *exc: object) -> Any:
        return self.__getattr__("__exit__")(*exc)


database = _Proxy()


class _Shared:
    """Mixin of every database class: a secret-free repr, and connection scopes that leave
    an open connection (and an in-memory database) open."""

    url = ""
    read_only = False
    #: an in-memory database lives as long as its connection, so scopes never close it
    keeps_connection = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)}>"

    def connection_context(self) -> peewee.ConnectionContext:
        """Open a connection for the block and close it after, unless one was already open."""
        return _Scope(self)


class _Scope(peewee.ConnectionContext):
    """peewee's ConnectionContext closes even a connection it did not open (and with it an
    in-memory database); this one closes only what it opened."""

    __slots__ = ("opened",)

    def __enter__(self) -> None:
        self.opened = self.db.connect(reuse_if_open=True)

    def __exit__(self, *exc: object) -> None:
        if self.opened and not self.db.keeps_connection and not self.db.is_closed():
            self.db.close()


class BulkLoadFailed(Exception):
    """Raised by ``bulk_load``: row ``position`` (0-based, -1 unknown) was refused.

    ``integrity`` holds the IntegrityError when a constraint refused the row; ``cause`` the
    exception the rows iterator raised producing it; with neither, a value did not fit its
    column. ``within_db.batch`` turns it into BulkInsertError.
    """

    def __init__(self, position: int, integrity: peewee.IntegrityError | None = None,
                 cause: Exception | None = None):
        super().__init__(position)
        self.position = position
        self.integrity = integrity
        self.cause = cause


class BrokenForeignKeys(Exception):
    """A migration step left rows whose foreign keys point nowhere (checked on SQLite)."""

    def __init__(self, tables: list[str]):
        super().__init__(tables)
        self.tables = tables


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_ROUTE = threading.local()   # .db: where this thread's model queries go inside reading()


def _driver_error(exc: BaseException) -> BaseException:
    """Return the driver's exception behind peewee's wrapper (peewee passes it as args[0])."""
    if isinstance(exc, peewee.PeeweeException) and exc.args \
            and isinstance(exc.args[0], BaseException):
        return exc.args[0]
    return exc


_Select = TypeVar("_Select", bound=peewee.Select)
#: ``fetch(n)`` of a streaming cursor: the next ``n`` rows, empty at the end
_Fetch: TypeAlias = Callable[[int], list[Any]]


@dataclass(frozen=True)
class Partition:
    """One month of a table partitioned by month: ``[start, end)`` of its partition column.

    On PostgreSQL ``name`` is the partition table and ``bytes`` its size on disk; on SQLite,
    which keeps one plain table, a "partition" is the rows of one month (``bytes`` is None).
    ``rows`` is exact or PostgreSQL's planner estimate, as the caller asked.
    """

    name: str
    start: dt.date
    end: dt.date
    rows: int
    bytes: int | None


def _changed(table: str, month: dt.date, rows: int, expected: int | None,
             done: dict[dt.date, int]) -> str:
    what = "was not verified" if expected is None else f"was verified with {expected:,} rows"
    kept = (f"; dropped before it: {', '.join(f'{m:%Y-%m}' for m in done)}" if done
            else "; nothing was dropped")
    return (f"{table} {month:%Y-%m} now holds {rows:,} rows but {what}; it was kept "
            f"(archive it again){kept}")


def month_start(value: dt.date) -> dt.date:
    """Return the first day of ``value``'s month."""
    return dt.date(value.year, value.month, 1)


def next_month(value: dt.date) -> dt.date:
    """Return the first day of the month after ``value``'s."""
    return dt.date(value.year + value.month // 12, value.month % 12 + 1, 1)


def partition_name(table: str, month: dt.date) -> str:
    """Return the name of ``table``'s partition for ``month``: ``<table>_YYYY_MM``."""
    return f"{table}_{month:%Y_%m}"


_PARTITION_NAME = re.compile(r"(.+)_\d{4}_\d{2}")


def partition_parent(table: str) -> str:
    """Return the table a monthly partition belongs to (by name), or ``table`` itself.

    Errors on a partitioned table name the partition; this names the table the user wrote to
    without a catalogue query (the transaction may have failed).
    """
    match = _PARTITION_NAME.fullmatch(table)
    return match.group(1) if match else table


def partition_meta(model: Any) -> tuple[str | None, dict[str, str]]:
    """Return a model's (partition column, {guarded unique column: guard table})."""
    meta = model._meta
    key = getattr(meta, "partition_by", None)
    column = meta.fields[key].column_name if key else None
    guards = {meta.fields[name].column_name: guard
              for name, guard in (getattr(meta, "unique_guards", None) or {}).items()}
    return column, guards


_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # the C scanner


def json_loads(text: str) -> Any:
    """Decode JSON as ``json.loads`` does, through the C scanner alone for the common case.

    Database JSON has no surrounding whitespace, so the scanner's one call replaces
    ``json.loads``' regex and wrapper calls; anything else takes ``json.loads`` (and its
    errors).
    """
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def bound(db: Backend | None = None) -> Backend:
    """Return ``db``, else the database the proxy is bound to; NotConnectedError if neither."""
    db = db if db is not None else database.obj
    if db is None:
        raise NotConnectedError(
            "no database is bound: call within_db.connect(url) first "
            f"(accepted schemes: {', '.join(SCHEMES)})"
        )
    if not isinstance(db, peewee.Database):
        raise ValidationError("db must be a database from within_db.connect(url), not "
                              f"{type(db).__name__}")
    return db
