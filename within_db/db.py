"""The database proxy every model uses, and how it gets bound.

``connect()`` turns a URL into a configured peewee database (SQLite with its pragmas, or
PostgreSQL with server-side cursors, UTC sessions and a connect timeout) and binds the proxy.
URL redaction lives here too; nothing in this module ever prints a password.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeAlias, TypeVar
from urllib.parse import quote

import peewee
import psycopg2
import psycopg2.errors
from playhouse.migrate import PostgresqlMigrator, SchemaMigrator, SqliteMigrator, operation
from playhouse.postgres_ext import PooledPostgresqlExtDatabase, PostgresqlExtDatabase

from within_db.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    NotConnectedError,
    ReadOnlyError,
    VerificationError,
    WithinDBError,
)
from within_db.url import DEFAULT_URL, SCHEMES, DatabaseURL, parse_url, redact_url

__all__ = [
    "BUSY_TIMEOUT", "Backend", "BrokenForeignKeys", "BulkLoadFailed", "CONNECT_TIMEOUT",
    "DEFAULT_URL", "MAX_REPLICA_LAG", "PooledPostgresDatabase", "PostgresDatabase",
    "REPLICA_WAIT", "Replica", "SCHEMES", "SqliteDatabase", "backend", "bound", "connect",
    "database", "get_db", "json_loads", "make_database", "read_your_writes", "reading",
    "redact_url", "replica_read", "write_transaction",
]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10
BUSY_TIMEOUT = 30.0

# SQLite tables are STRICT, which knows only INTEGER, REAL, TEXT, BLOB and ANY: every peewee
# column type maps to one of them. Aware datetimes are fixed-width UTC text (see
# fields.InstantCodec), dates ISO text, booleans 0/1 with a CHECK (fields.BooleanField).
SQLITE_FIELD_TYPES = {
    "AUTO": "INTEGER", "BIGAUTO": "INTEGER", "INT": "INTEGER", "BIGINT": "INTEGER",
    "SMALLINT": "INTEGER", "BOOL": "INTEGER", "FLOAT": "REAL", "DOUBLE": "REAL",
    "DECIMAL": "TEXT", "CHAR": "TEXT", "VARCHAR": "TEXT", "TEXT": "TEXT", "UUID": "TEXT",
    "JSON": "TEXT", "DATE": "TEXT", "TIME": "TEXT", "DATETIME": "TEXT", "TIMESTAMPTZ": "TEXT",
    "BLOB": "BLOB", "UUIDB": "BLOB",
}
#: STRICT tables need SQLite 3.37 (2021-11-27)
SQLITE_MIN_VERSION = (3, 37, 0)


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


# SQLite's fixed text for each result code (never a value from a row), and what to do next.
_SQLITE_REASONS = {
    "SQLITE_CANTOPEN": ("unable to open database file",
                        "the file cannot be opened or created; check the path and permissions"),
    "SQLITE_READONLY": ("attempt to write a readonly database",
                        "the file or its directory is read-only; make both writable, or use "
                        "a read-only command"),
    "SQLITE_PERM": ("access permission denied", "access was denied; check the permissions"),
    "SQLITE_BUSY": ("database is locked",
                    "another process holds the write lock; retry when it has finished"),
    "SQLITE_LOCKED": ("database table is locked",
                      "another connection holds a lock; retry when it has finished"),
    "SQLITE_NOTADB": ("file is not a database",
                      "the file is not an SQLite database; check --database-url"),
    "SQLITE_CORRUPT": ("database disk image is malformed",
                       "the file is damaged; restore it from a backup"),
    "SQLITE_FULL": ("database or disk is full", "the disk is full; free space and retry"),
    "SQLITE_IOERR": ("disk I/O error", "reading or writing the file failed; check the disk"),
}


def _driver_error(exc: BaseException) -> BaseException:
    """Return the driver's exception behind peewee's wrapper (peewee passes it as args[0])."""
    if isinstance(exc, peewee.PeeweeException) and exc.args \
            and isinstance(exc.args[0], BaseException):
        return exc.args[0]
    return exc


_Select = TypeVar("_Select", bound=peewee.Select)
#: ``fetch(n)`` of a streaming cursor: the next ``n`` rows, empty at the end
_Fetch: TypeAlias = Callable[[int], list[Any]]
_STRICT_RE = re.compile(r"\)\s*(WITHOUT\s+ROWID\s*,\s*)?STRICT\s*$", re.IGNORECASE)


_MODIFIED_TYPE = re.compile(r"(INTEGER|INT|REAL|TEXT|BLOB|ANY)\(\s*\d+(?:\s*,\s*\d+)?\s*\)")


class _StrictTypesContext(peewee.Context):
    """SQL context that renders a column type as STRICT tables want it: TEXT, never TEXT(200).

    SQLite ignores length modifiers anyway (the field codecs enforce lengths); this catches
    every field, within_db's and the plain ones of frozen migrations alike.
    """

    def sql(self, obj: Any) -> Any:
        if isinstance(obj, peewee.SQL) and not obj.params:
            match = _MODIFIED_TYPE.fullmatch(obj.sql)
            if match:
                obj = peewee.SQL(match.group(1))
        return super().sql(obj)


class StrictSqliteMigrator(SqliteMigrator):
    """playhouse's SQLite migrator, keeping what its table rebuild would drop.

    A rebuild (``add_not_null``, ``drop_column``, ``rename_column``...) re-parses the CREATE
    TABLE text and loses the STRICT option and every trigger; both are restored here.
    """

    @operation
    def _update_column(self, table: str, column_to_update: str, fn: Callable) -> list:
        _, create = self._get_create_table(table)
        triggers = [sql for (sql,) in self.database.execute_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
            "ORDER BY name", (table,))]
        queries = SqliteMigrator._update_column.__wrapped__(self, table, column_to_update, fn)
        if _STRICT_RE.search(create):
            queries = [peewee.SQL(q.sql + " STRICT") if isinstance(q, peewee.SQL)
                       and q.sql.startswith("CREATE TABLE") else q for q in queries]
        return [*queries, *(peewee.SQL(sql) for sql in triggers)]


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


# -- read replicas ----------------------------------------------------------------------------
# A primary may carry a streaming replica (``use_replica``). Read paths ask ``for_reads()`` for
# the database to read from: the replica when this thread has no transaction open on the
# primary, the replica answers in recovery and lags at most ``max_lag`` seconds, and (inside
# ``read_your_writes()``) it has replayed the primary's WAL position as of the caller's last
# write; otherwise the primary. SQLite keeps one file and never has a replica.

#: seconds a replica may lag before reads skip it for the primary
MAX_REPLICA_LAG = 10.0
#: seconds ``read_your_writes()`` waits for the replica before reading from the primary
REPLICA_WAIT = 1.0
#: seconds a health verdict is reused: a healthy one briefly, an unhealthy one longer
_HEALTHY_FOR, _UNHEALTHY_FOR = 1.0, 5.0
#: connect timeout of a replica unless its URL says otherwise: a dead one must not stall reads
_REPLICA_CONNECT_TIMEOUT = 3

# Lag: zero when the replica replays, within _CATCH_UP seconds, the WAL position the primary had
# written when the probe began; else the age of the last transaction it replayed (an upper
# bound). Measuring against the primary matters: after an idle spell any WAL record in flight
# would make that age look like lag. Without an answer from the primary the replica judges
# alone: zero while its WAL receiver runs and it has replayed all it received.
# clock_timestamp(), not now(): the probe may run inside a long read transaction.
_CATCH_UP = 0.05
_PRIMARY_LSN_SQL = "SELECT pg_current_wal_lsn()::text"
_HEALTH_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
                 AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN 0
            ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())
       END::float8,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
"""
_REPLAYED_SQL = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
# Where the caller's commits end at the latest: a synchronous commit is flushed before it
# returns, so the flush position covers it; an asynchronous one (synchronous_commit = off) may
# not be, so then the insert position. The insert position always would be safe too, but it
# runs ahead of the flush with other sessions' unflushed WAL, and replicas only receive
# flushed WAL: waits for it took up to wal_writer_delay (p99 230 ms here against 4 ms).
_WRITTEN_LSN_SQL = ("SELECT (CASE WHEN current_setting('synchronous_commit') = 'off' "
                    "THEN pg_current_wal_insert_lsn() ELSE pg_current_wal_flush_lsn() END)::text")
_READ_ONLY_SQL = re.compile(r"\s*(SELECT|SHOW|EXPLAIN|FETCH)\b", re.IGNORECASE)
# 08: connection exceptions; 57P01-03: server shutting down or starting; 40001: on a replica,
# a query cancelled by a recovery conflict (DDL or vacuum replayed from the primary).
_REPLICA_FAILURES = ("08", "57P01", "57P02", "57P03", "40001")
_MARKS = itertools.count(1)  # next() is atomic: every write gets a fresh mark
_ROUTE = threading.local()   # .db: where this thread's model queries go inside reading()

P = ParamSpec("P")
T = TypeVar("T")


def _lsn_number(text: str) -> int:
    """Return a WAL position ``"16/B374D848"`` as an integer (comparable)."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _lsn_text(number: int) -> str:
    """Return the ``"16/B374D848"`` form of an integer WAL position."""
    return f"{number >> 32:X}/{number & 0xFFFFFFFF:X}"


def _pgcode(exc: BaseException) -> str | None:
    """The SQLSTATE of the driver error behind ``exc`` (peewee keeps it as ``.orig``)."""
    driver = getattr(exc, "orig", None) or exc
    return getattr(driver, "pgcode", None)


def _is_replica_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a read on the replica, means "read it from the primary"."""
    if isinstance(exc, DatabaseUnavailableError | peewee.InterfaceError):
        return True
    if not isinstance(exc, peewee.OperationalError):
        return False
    code = _pgcode(exc)
    return code is None or code.startswith(_REPLICA_FAILURES)


@contextlib.contextmanager
def _routed(db: peewee.Database) -> Iterator[None]:
    previous = getattr(_ROUTE, "db", None)
    _ROUTE.db = db
    try:
        yield
    finally:
        _ROUTE.db = previous


class Replica:
    """A streaming replica of a primary: its database, its lag bound and its health verdict.

    The verdict is cached (1 s when healthy, 5 s when not) and logged only when it changes:
    a replica that is down, not in recovery or lagging is skipped with one warning.
    """

    def __init__(self, db: Any, max_lag: float, wait: float):
        self.db = db
        self.max_lag = max_lag
        self.wait = wait
        self._lock = threading.Lock()
        self._ok = False
        self._until = 0.0      # monotonic time the verdict holds until
        self._said: bool | None = None

    def __repr__(self) -> str:
        return f"<Replica {redact_url(self.db.url)} max_lag={self.max_lag}s>"

    def usable(self, primary: peewee.Database) -> bool:
        """Return whether reads may go to the replica now (one probe per verdict period)."""
        if time.monotonic() < self._until or not self._lock.acquire(blocking=False):
            return self._ok  # fresh, or another thread is probing: use the last verdict
        try:
            ok, why = self._probe(primary)
            self._judge(ok, why)
        finally:
            self._lock.release()
        return ok

    def _probe(self, primary: peewee.Database) -> tuple[bool, str]:
        try:
            written: int | None = _lsn_number(primary.execute_sql(_PRIMARY_LSN_SQL).fetchone()[0])
        except (peewee.OperationalError, peewee.InterfaceError, DatabaseUnavailableError):
            written = None  # the primary cannot say; its own reads will tell the caller
        try:
            in_recovery, lag, age = self.db.execute_sql(_HEALTH_SQL).fetchone()
            if in_recovery and written is not None:
                lag = 0.0 if self.replayed(written, min(_CATCH_UP, self.max_lag)) else age
        except DatabaseUnavailableError as exc:
            self.discard()
            return False, str(exc)
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            self.discard()
            return False, f"the health check failed ({type(exc).__name__})"
        if not in_recovery:
            return False, "it is not in recovery (a primary, or promoted)"
        if lag is None or lag > self.max_lag:
            shown = "an unknown time" if lag is None else f"{lag:.1f}s"
            return False, f"it lags {shown} behind the primary (bound: {self.max_lag:g}s)"
        return True, f"lag {lag:.3f}s"

    def _judge(self, ok: bool, why: str) -> None:
        self._ok = ok
        self._until = time.monotonic() + (_HEALTHY_FOR if ok else _UNHEALTHY_FOR)
        if ok != self._said:
            if ok:
                log.info("reads go to the replica %s (%s)", redact_url(self.db.url), why)
            else:
                log.warning("reads go to the primary: replica %s skipped: %s",
                            redact_url(self.db.url), why)
            self._said = ok

    def failed(self, exc: BaseException) -> None:
        """Mark the replica unhealthy after a read on it failed with ``exc``."""
        self.discard()
        self._judge(False, f"a read on it failed ({type(exc).__name__})")

    def discard(self) -> None:
        """Close this thread's replica connection (it may be broken) without raising."""
        with contextlib.suppress(peewee.PeeweeException, psycopg2.Error):
            self.db.close()

    def replayed(self, lsn: int, timeout: float) -> bool:
        """Wait until the replica has replayed WAL position ``lsn``; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        pause = 0.0002
        text = _lsn_text(lsn)
        while True:
            if self.db.execute_sql(_REPLAYED_SQL, (text,)).fetchone()[0]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 0.01)


class _Reads(peewee.Database):
    """Mixin of every database class: where reads go (the replica, when one is usable)."""

    replica: Replica | None = None
    _write_mark = 0                      # changes on every write committed through this object
    _lsn_seen: tuple[int, int] = (0, 0)  # (write mark, primary WAL position read after it)

    def _reads_local(self) -> threading.local:
        state = self.__dict__.get("_reads_state")
        if state is None:
            state = self.__dict__.setdefault("_reads_state", threading.local())
        return state

    def use_replica(self, url: str, max_lag: float = MAX_REPLICA_LAG,
                    wait: float = REPLICA_WAIT, **options: Any) -> None:
        """Send eligible reads to the streaming replica at ``url`` (see ``connect``)."""
        raise NotImplementedError

    def for_reads(self) -> Any:
        """Return the database to read from now: the replica when allowed, else this one.

        Never raises for the replica's sake: one that is down, lagging or (inside
        ``read_your_writes()``) not caught up within its wait is skipped with a warning.
        """
        replica = self.replica
        if replica is None or self.in_transaction() or not replica.usable(self):
            return self
        state = self._reads_local()
        if getattr(state, "ryw", 0):
            lsn = max(self._last_write_lsn(), getattr(state, "after", 0))
            try:
                caught_up = lsn == 0 or replica.replayed(lsn, state.wait)
            except (peewee.OperationalError, peewee.InterfaceError,
                    DatabaseUnavailableError) as exc:
                replica.failed(exc)
                return self
            if not caught_up:
                log.warning("read from the primary: replica %s had not replayed %s after %gs",
                            redact_url(replica.db.url), _lsn_text(lsn), state.wait)
                return self
        return replica.db

    def _last_write_lsn(self) -> int:
        """The primary's WAL position as of the last write made through this object (0: none)."""
        return 0

    def write_position(self) -> str | None:
        """Return the WAL position replica reads in ``read_your_writes()`` wait for, as text.

        Hand it to another process's ``read_your_writes(after=...)`` so its replica reads see
        this process's writes. None on SQLite or without a replica.
        """
        return None

    def read_position(self) -> str | None:
        """Return what this thread's replica reads wait for now: ``write_position()`` inside
        ``read_your_writes()``, else None (hand it to readers in other processes)."""
        return self.write_position() if getattr(self._reads_local(), "ryw", 0) else None

    def portable_url(self) -> str:
        """Return the URL another process opens to reach this same database."""
        raise NotImplementedError

    @contextlib.contextmanager
    def read_your_writes(self, timeout: float | None = None,
                         after: str | None = None) -> Iterator[None]:
        """Make replica reads in the block (this thread) see the writes made before them.

        Each read waits until the replica has replayed the primary's WAL position as of the
        last write committed through this database (and ``after``, a ``write_position()`` of
        another process), at most ``timeout`` seconds (default: the replica's wait), then reads
        from the primary with a warning. A no-op on SQLite or without a replica.
        """
        state = self._reads_local()
        saved = (getattr(state, "ryw", 0), getattr(state, "after", 0), getattr(state, "wait", 0))
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
            raise ConfigurationError(
                f"read_your_writes timeout must be >= 0 seconds, got {timeout!r}")
        try:
            floor = _lsn_number(after) if after else 0
        except ValueError:
            raise ConfigurationError(f'after must be a WAL position like "16/B374D848", '
                                     f"got {after!r}") from None
        state.ryw = saved[0] + 1
        state.after = max(saved[1], floor)
        state.wait = timeout if timeout is not None else (
            self.replica.wait if self.replica is not None else 0)
        try:
            yield
        finally:
            state.ryw, state.after, state.wait = saved

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """Route this thread's model queries in the block to ``for_reads()``; yield that database.

        For read-only code: a write inside the block on a replica raises ReadOnlyError. A
        replica that fails inside the block raises; ``read(fn)`` retries on the primary instead.
        """
        target = self.for_reads()
        with _routed(target):
            yield target

    def read(self, fn: Callable[[Any], T]) -> T:
        """Return ``fn(db)``, with model queries routed to ``db`` when it is the replica.

        ``fn`` must only read: when the replica fails under it (connection lost, query
        cancelled by a recovery conflict), it runs again on the primary.
        """
        target = self.for_reads()
        if target is not self:
            try:
                with _routed(target):
                    return fn(target)
            except (peewee.PeeweeException, WithinDBError) as exc:
                if self.replica is None or not _is_replica_failure(exc):
                    raise
                self.replica.failed(exc)
        return fn(self)

    @contextlib.contextmanager
    def reading_cursor(self, sql: str, params: Any,
                       chunk_size: int) -> Iterator[tuple[Any, Callable[[int], list]]]:
        """``streaming_cursor`` on ``for_reads()``; yields ``(cursor, fetch)``.

        The first chunk is fetched here, so a replica that fails before delivering a row is
        replaced by the primary; a failure after rows were delivered raises.
        """
        target = self.for_reads()
        if target is not self:
            stack = contextlib.ExitStack()
            try:
                cursor, fetch = stack.enter_context(target.streaming_cursor(sql, params))
                first = fetch(chunk_size)
            except (peewee.PeeweeException, WithinDBError, psycopg2.Error) as exc:
                with contextlib.suppress(peewee.PeeweeException, psycopg2.Error):
                    stack.close()
                if self.replica is None or not _is_replica_failure(_peewee_error(exc)):
                    raise
                self.replica.failed(exc)
            else:
                with stack:
                    yield cursor, _prefetched(first, fetch)
                return
        with self.streaming_cursor(sql, params) as pair:
            yield pair

    def streaming_cursor(self, sql: str, params: Any) -> AbstractContextManager[
            tuple[Any, _Fetch]]:
        """Yield ``(cursor, fetch)`` over the query's rows (each backend defines it)."""
        raise NotImplementedError


def _peewee_error(exc: BaseException) -> BaseException:
    # The streaming cursor talks to psycopg2 directly: classify its errors as peewee would.
    if isinstance(exc, psycopg2.OperationalError):
        return peewee.OperationalError(exc, *exc.args)
    if isinstance(exc, psycopg2.InterfaceError):
        return peewee.InterfaceError(exc, *exc.args)
    return exc


def _prefetched(first: list, fetch: Callable[[int], list]) -> Callable[[int], list]:
    pending = [first]

    def fetch_next(n: int) -> list:
        return pending.pop() if pending else fetch(n)

    return fetch_next


def replica_read(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorate a read-only function: its queries go to the replica when one is usable.

    Through ``bound().read()``: inside a transaction on the primary, without a replica or on
    SQLite it runs on the primary as before; a replica failing under it means a rerun there.
    """
    @functools.wraps(fn)
    def routed(*args: P.args, **kwargs: P.kwargs) -> T:
        return bound().read(lambda _db: fn(*args, **kwargs))

    return routed


class SqliteDatabase(_Shared, _Reads, peewee.SqliteDatabase):
    """peewee's SqliteDatabase with within_db's column types and a race-free WAL switch.

    Every operation that differs between the backends is a method here and on the PostgreSQL
    classes (the way playhouse picks a SchemaMigrator once); callers never ask the backend.
    """

    kind = "sqlite"
    #: no roles or privileges: whoever can open the file can do anything
    has_roles = False
    context_class = _StrictTypesContext
    #: the driver returns JSON, instants and dates as text, booleans as 0/1
    native_json = False
    native_datetimes = False
    # peewee internals read by _set_pragmas (absent from peewee's stubs)
    _pragmas: list[tuple[str, Any]]
    _timeout: float
    native_dates = False
    native_booleans = False
    native_uuids = False
    #: bulk_load takes storage tuples (executemany)
    bulk_text = False
    #: models create STRICT tables here (see base.BaseModel's metadata)
    strict_tables = True

    def begin(self, lock_type: str | None = None) -> None:
        """Begin a transaction; a top-level one of a writable database begins IMMEDIATE.

        It takes the write lock at BEGIN (waiting up to the busy timeout): a deferred one
        that read first could not upgrade while another process writes, and would fail with
        "database is locked" at its first write. ``atomic("DEFERRED")`` opts out.
        """
        if lock_type is None and not self.read_only:
            lock_type = "IMMEDIATE"
        super().begin(lock_type)

    def _connect(self) -> sqlite3.Connection:
        target, params = self.database, dict(self.connect_params)
        if self.read_only and not self.keeps_connection:
            # mode=ro never creates the file; a missing one is named instead
            if not os.path.isfile(self.database):
                raise DatabaseUnavailableError(
                    f"no SQLite database at {os.path.abspath(self.database)}; check "
                    "--database-url (DATABASE_URL), or create it with `within-db migrate up`")
            target = f"file:{quote(os.path.abspath(self.database))}?mode=ro"
            params["uri"] = True
        try:
            conn = sqlite3.connect(target, timeout=self._timeout, isolation_level=None, **params)
            try:
                self._add_conn_hooks(conn)  # type: ignore[attr-defined]  # absent from stubs
            except Exception:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise DatabaseUnavailableError(self.explain_error(exc) or "") from exc
        return conn

    def explain_error(self, exc: BaseException) -> str | None:
        """Say in one line why SQLite refused, with the next step; None if it is not known."""
        exc = _driver_error(exc)
        code = getattr(exc, "sqlite_errorname", "")
        path = os.path.abspath(self.database) if not self.keeps_connection else ":memory:"
        folder = os.path.dirname(path)
        prefix = next((p for p in _SQLITE_REASONS if code.startswith(p)), None)
        if prefix is None:
            return None
        said, reason = _SQLITE_REASONS[prefix]
        if prefix == "SQLITE_CANTOPEN":
            if not os.path.isdir(folder):
                reason = f"the directory {folder} does not exist; create it or fix the path"
            elif not os.access(folder, os.W_OK | os.X_OK):
                reason = (f"the directory {folder} is not writable, and SQLite creates its "
                          "journal files there; make it writable or use another path")
        return f"cannot use the SQLite database {path}: {reason} (SQLite: {said})"

    def _set_pragmas(self, conn: sqlite3.Connection) -> None:
        cursor = conn.cursor()
        try:
            for pragma, value in self._pragmas:
                if pragma == "journal_mode":
                    self._set_journal_mode(cursor, str(value))
                else:
                    cursor.execute(f"PRAGMA {pragma} = {value}")
        finally:
            cursor.close()

    def _set_journal_mode(self, cursor: sqlite3.Cursor, mode: str) -> None:
        # WAL persists in the file, so only a new file needs the switch; the switch wants an
        # exclusive lock and SQLite does not wait for it, so retry while another process
        # (say, a concurrent `migrate up`) holds the file.
        deadline = time.monotonic() + self._timeout
        while True:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == mode.lower():
                return
            try:
                cursor.execute(f"PRAGMA journal_mode = {mode}")
                return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def portable_url(self) -> str:
        """Return this file's URL with an absolute path; ConfigurationError when in memory."""
        if self.keeps_connection:
            raise ConfigurationError(
                "an in-memory SQLite database lives in this process only; other processes "
                "(Dask workers) need a file: use sqlite:////absolute/path/within.db")
        query = self.url.partition("?")[2]
        return f"sqlite:///{os.path.abspath(self.database)}" + (f"?{query}" if query else "")

    def use_replica(self, url: str, max_lag: float = MAX_REPLICA_LAG,
                    wait: float = REPLICA_WAIT, **options: Any) -> None:
        """Ignore the replica: one SQLite file is read and written by every process."""
        log.debug("SQLite has no replicas; ignoring the replica URL %s", redact_url(url))

    # -- transactions and locks ----------------------------------------------------------------

    def write_transaction(self) -> AbstractContextManager[Any]:
        """Return a transaction that holds the write lock from its first statement.

        A top-level transaction starts IMMEDIATE, so a read-then-write sequence never fails on
        lock upgrade; a nested call joins the caller's transaction.
        """
        return self.atomic() if self.in_transaction() else self.atomic("IMMEDIATE")

    def lock_rows(self, query: _Select) -> _Select:
        """Return ``query`` unchanged: a write transaction already excludes other writers."""
        return query

    @contextlib.contextmanager
    def serialised(self, key: int) -> Iterator[None]:
        """Run the block in a write transaction, which excludes every other writer."""
        with self.write_transaction():
            yield

    # -- migrations ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def migration_lock(self, key: int) -> Iterator[None]:
        """Hold the file's write lock while a migration runner works."""
        # SQLite ignores this pragma inside a transaction, and a table rebuild with foreign
        # keys on would cascade: switch it off first, check the keys before each commit.
        self.pragma("foreign_keys", 0)
        try:
            with self.atomic("IMMEDIATE") as txn:
                try:
                    yield
                except BaseException:
                    txn.commit()  # keep the migrations that succeeded before the failure
                    raise
        finally:
            self.pragma("foreign_keys", 1)

    @contextlib.contextmanager
    def migration_step(self) -> Iterator[None]:
        """Run one migration in a savepoint; BrokenForeignKeys (rolled back) if it broke keys."""
        with self.atomic():
            yield
            broken = self.execute_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise BrokenForeignKeys(sorted({row[0] for row in broken}))

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Backend]:
        """Yield an empty in-memory database for the drift check."""
        scratch = make_database("sqlite:///:memory:")
        with scratch.connection_context():
            yield scratch

    def schema_migrator(self) -> SchemaMigrator:
        """Return the migrator migrations get: playhouse's, keeping STRICT and triggers."""
        return StrictSqliteMigrator(self)

    def table_names(self) -> list[str]:
        """Return the names of the tables, sorted (SQLite's own left out)."""
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        return sorted(row[0] for row in self.execute_sql(sql).fetchall())

    def for_asyncio(self) -> peewee.Database:
        """Return this database's asyncio twin (``within_db.aio``, aiosqlite), not connected."""
        from within_db.aio import AsyncSqliteDatabase

        twin = AsyncSqliteDatabase(self.database, pragmas=dict(self._pragmas),
                                   timeout=self._timeout, field_types=SQLITE_FIELD_TYPES,
                                   **self.connect_params)
        twin.url = self.url
        return twin

    def create_schema(self, models: Sequence[type[peewee.Model]]) -> None:
        """Create the models' tables and indexes; SQLite partitions nothing."""
        self.create_tables(models)

    # -- monthly partitions: SQLite keeps one table; a "partition" is a month of rows --------

    def partitioning(self, table: str) -> str | None:
        """Return the partition key definition of ``table``; always None on SQLite."""
        return None

    def partitions(self, table: str, column: str, exact: bool = True) -> list[Partition]:
        """Return the months of ``table`` holding rows (counted exactly), oldest first."""
        sql = (f"SELECT substr({_quote(column)}, 1, 7), count(*) FROM {_quote(table)} "  # noqa: S608 - model names, quoted
               f"GROUP BY 1 ORDER BY 1")
        out = []
        for month_text, rows in self.execute_sql(sql).fetchall():
            start = dt.date.fromisoformat(f"{month_text}-01")
            out.append(Partition(table, start, next_month(start), rows, None))
        return out

    def ensure_partitions(self, table: str, column: str, months: list[dt.date]) -> list[str]:
        """Create nothing and return []: one SQLite table holds every month."""
        return []

    def drop_partitions(self, table: str, column: str, months: list[dt.date],
                        guards: dict[str, str], batch_size: int = 50_000,
                        expected: dict[dt.date, int] | None = None) -> dict[dt.date, int]:
        """Delete the rows of ``months`` in batches, each batch its own transaction.

        Returns {month: rows deleted}. Batches keep each write lock short, so readers in other
        processes (WAL) and other writers get turns. With ``expected`` ({month: rows}), each
        month is counted in its first batch's transaction and VerificationError raised, with
        nothing of that month deleted, if the count differs.
        """
        done: dict[dt.date, int] = {}
        for month in months:
            low, high = f"{month:%Y-%m}-01", f"{next_month(month):%Y-%m}-01"
            sql = (f"DELETE FROM {_quote(table)} WHERE rowid IN (SELECT rowid FROM "  # noqa: S608
                   f"{_quote(table)} WHERE {_quote(column)} >= ? AND {_quote(column)} < ? "
                   f"LIMIT {int(batch_size)})")
            count = (f"SELECT count(*) FROM {_quote(table)} WHERE {_quote(column)} >= ? "  # noqa: S608
                     f"AND {_quote(column)} < ?")
            total = 0
            while True:
                with self.write_transaction():
                    if expected is not None and total == 0:
                        rows = self.execute_sql(count, (low, high)).fetchone()[0]
                        if rows != expected.get(month):
                            raise VerificationError(
                                _changed(table, month, rows, expected.get(month), done))
                    deleted = self.execute_sql(sql, (low, high)).rowcount
                total += deleted
                if deleted < batch_size:
                    break
            done[month] = total
        return done

    # -- bulk and streaming paths --------------------------------------------------------------

    def bulk_load(self, table: str, columns: list[str], rows: Iterable[tuple[Any, ...]],
                  batch_size: int) -> int:
        """Insert storage-ready tuples in one transaction with ``executemany``; return the count.

        ``batch_size`` serves COPY and is unused here. Raises BulkLoadFailed naming the refused
        row (or the row the iterator failed to produce); nothing is then written.
        """
        names = ", ".join(_quote(c) for c in columns)
        sql = f"INSERT INTO {_quote(table)} ({names}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608 - model names, quoted
        with self.atomic():
            conn = self.connection()
            cursor = conn.cursor()
            # Rows are inserted one by one in order, so the rows inserted so far (no INSERT
            # trigger adds to the count) are the index of the row that failed: no counting
            # wrapper in the hot loop.
            before = conn.total_changes
            try:
                cursor.executemany(sql, rows)
            except sqlite3.IntegrityError as exc:
                raise BulkLoadFailed(conn.total_changes - before,
                                     peewee.IntegrityError(*exc.args)) from None
            except sqlite3.Error:
                raise
            except Exception as exc:  # raised by the rows iterator; the transaction rolls back
                raise BulkLoadFailed(conn.total_changes - before, cause=exc) from None
            finally:
                cursor.close()
            return conn.total_changes - before

    @contextlib.contextmanager
    def streaming_cursor(self, sql: str, params: Any) -> Iterator[tuple[Any, _Fetch]]:
        """Yield ``(cursor, fetchmany)`` over the query's rows; SQLite's cursor is lazy."""
        cursor = self.execute_sql(sql, params)
        try:
            yield cursor, cursor.fetchmany
        finally:
            cursor.close()

    def instant_text(self, column: Any) -> Any:
        """Return a timestamp column as the fixed-width UTC text ``fields.format_utc`` writes."""
        return column  # stored that way

    def date_text(self, column: Any, grain: str) -> Any:
        """Return ``column`` truncated to ``grain`` (day, week, month) as ``YYYY-MM-DD`` text."""
        if grain == "day":
            return peewee.fn.date(column)
        if grain == "week":
            return peewee.fn.date(column, "weekday 0", "-6 days")
        return peewee.fn.strftime("%Y-%m-01", column)


_COPY_LINE = re.compile(r"COPY \S+, line (\d+)")


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


def _cast_json(value: str | bytes | None, cursor: Any) -> Any:
    return None if value is None else json_loads(str(value))


_JSON_CASTERS = [psycopg2.extensions.new_type((oid,), name, _cast_json)
                 for oid, name in ((3802, "WITHIN_JSONB"), (114, "WITHIN_JSON"))]


class _CopySource:
    """A file-like object reading COPY text lines, ``batch_size`` lines per ``read()``.

    psycopg2 sends whatever ``read()`` returns as one CopyData message, whatever size it
    asked for, so each call hands over a whole batch: no re-slicing of a large buffer, and
    the server parses one batch while the next is being built.
    """

    def __init__(self, lines: Iterable[str], batch_size: int) -> None:
        self.rows = iter(lines)
        self.batch_size = batch_size
        self.count = 0
        self.error: Exception | None = None
        self.failed_at = -1

    def read(self, size: int = -1) -> str:
        chunk: list[str] = []
        try:
            chunk.extend(itertools.islice(self.rows, self.batch_size))
        except Exception as exc:
            # psycopg2 replaces it with QueryCanceled; bulk_load restores it
            self.error, self.failed_at = exc, self.count + len(chunk)
            raise
        self.count += len(chunk)
        return "".join(chunk)

    readline = read


_RANGE_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
PARTITION_LOCK_KEY = 0x70617274  # "part": serialises `partitions ensure` runs
LOCK_TIMEOUT = "10s"


def _ts(month: dt.date) -> str:
    return f"{month:%Y-%m-%d} 00:00:00+00"


# Keeps a unique column unique across the partitions of a table: every row's value is also
# the primary key of a narrow guard table, in the same transaction. A BEFORE row trigger (not
# AFTER) so a COPY fails at the offending line and reports it; it fires for INSERT, COPY,
# UPDATE and DELETE, and for a row an UPDATE moves to another month PostgreSQL fires DELETE
# then INSERT, so the UPDATE branch leaves those rows alone.
GUARD_FUNCTION = """
CREATE FUNCTION {table}_{column}_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {guard} ({column}) VALUES (NEW.{column});
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.{column} IS DISTINCT FROM OLD.{column}
                AND date_trunc('month', NEW.{key}, 'UTC')
                    = date_trunc('month', OLD.{key}, 'UTC') THEN
            DELETE FROM {guard} WHERE {column} = OLD.{column};
            INSERT INTO {guard} ({column}) VALUES (NEW.{column});
        END IF;
        RETURN NEW;
    END IF;
    DELETE FROM {guard} WHERE {column} = OLD.{column};
    RETURN OLD;
END
$$;
CREATE TRIGGER {table}_{column}_guard BEFORE INSERT OR UPDATE OF {column} OR DELETE
    ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_{column}_guard();
CREATE FUNCTION {table}_{column}_guard_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE {guard};
    RETURN NULL;
END
$$;
CREATE TRIGGER {table}_{column}_guard_truncate AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_{column}_guard_truncate();
"""


def guard_sql(table: str, column: str, guard: str, column_type: str, key: str = "created_at") \
        -> str:
    """Return the DDL of ``guard`` (primary key ``<table>_<column>``) and its triggers.

    The primary key carries the name the unique index has on an unpartitioned table, so a
    duplicate is reported as the same constraint on every backend.
    """
    return (f"CREATE TABLE {guard} ({column} {column_type} "
            f"CONSTRAINT {table}_{column} PRIMARY KEY);"
            + GUARD_FUNCTION.format(table=table, column=column, guard=guard, key=key))


class _PostgresBackend(_Reads, peewee.PostgresqlDatabase):
    """What PostgreSQL does differently, shared by the plain and the pooled class.

    Listed before playhouse's classes in their bases, so its methods come first.
    """

    kind = "postgres"
    has_roles = True
    #: psycopg2 decodes jsonb and returns aware datetimes, dates and booleans
    native_json = True
    native_datetimes = True
    url: str
    read_only: bool
    native_dates = True
    native_booleans = True
    native_uuids = True  # peewee registers psycopg2's UUID adapter
    #: bulk_load takes COPY text lines
    bulk_text = True
    strict_tables = False  # PostgreSQL enforces column types on every table

    def _connect(self) -> Any:
        try:
            conn = super()._connect()  # type: ignore[misc]  # private, absent from the stubs
        except psycopg2.OperationalError as exc:
            raise _unavailable(self, exc) from exc
        for caster in _JSON_CASTERS:  # json.loads without its Python wrapper: every read
            psycopg2.extensions.register_type(caster, conn)
        return conn

    def explain_error(self, exc: BaseException) -> str | None:
        """Say in one line why the server refused, with the next step; None if not known."""
        exc = _driver_error(exc)
        if isinstance(exc, psycopg2.errors.ReadOnlySqlTransaction):
            return "this command opened the database read-only and cannot write"
        if isinstance(exc, psycopg2.OperationalError) and getattr(exc, "pgcode", None) is None:
            return "the connection to PostgreSQL was lost; check the server and retry"
        return None

    # -- replicas: see _Reads; here what needs PostgreSQL -------------------------------------

    def use_replica(self, url: str, max_lag: float = MAX_REPLICA_LAG,
                    wait: float = REPLICA_WAIT, **options: Any) -> None:
        """Send eligible reads to the streaming replica at ``url`` (see ``connect``)."""
        for name, value in (("max_replica_lag", max_lag), ("replica_wait", wait)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(f"{name} must be a number of seconds >= 0, "
                                         f"got {value!r}")
        scheme = url.split("://", 1)[0].lower() if isinstance(url, str) and "://" in url else ""
        if scheme not in SCHEMES or scheme == "sqlite":
            raise ConfigurationError(
                f"the replica URL {redact_url(str(url))} is not a PostgreSQL URL; expected "
                "postgresql://user@replica-host:5432/dbname")
        options.setdefault("connect_timeout", _REPLICA_CONNECT_TIMEOUT)
        self.replica = Replica(make_database(url, **options), float(max_lag), float(wait))

    def portable_url(self) -> str:
        """Return the URL another process opens to reach this same database: its own."""
        return self.url

    def commit(self) -> Any:
        result = super().commit()
        if self.replica is not None:
            self._write_mark = next(_MARKS)
        return result

    def execute_sql(self, sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        try:
            cursor = super().execute_sql(sql, params, *args, **kwargs)
        except peewee.InternalError as exc:
            if _pgcode(exc) == "25006":  # read_only_sql_transaction
                raise ReadOnlyError(self.explain_error(exc) if self.read_only
                                    else _read_only(self)) from None
            raise
        # A statement outside a transaction commits on its own (peewee runs in autocommit).
        if self.replica is not None and not self.in_transaction() \
                and not _READ_ONLY_SQL.match(sql):
            self._write_mark = next(_MARKS)
        return cursor

    def _last_write_lsn(self) -> int:
        mark = self._write_mark
        if mark == 0:
            return 0
        seen, lsn = self._lsn_seen
        if seen != mark:
            text = self.execute_sql(_WRITTEN_LSN_SQL).fetchone()[0]
            lsn = _lsn_number(text)
            self._lsn_seen = (mark, lsn)
        return lsn

    def write_position(self) -> str | None:
        """Return the WAL position replica reads in ``read_your_writes()`` wait for, as text.

        Hand it to another process's ``read_your_writes(after=...)`` so its replica reads see
        this process's writes. None without a replica.
        """
        if self.replica is None:
            return None
        state = self._reads_local()
        return _lsn_text(max(self._last_write_lsn(), getattr(state, "after", 0)))

    def close(self) -> bool:
        """Close this thread's connection, and its replica connection."""
        try:
            return super().close()
        finally:
            if self.replica is not None:
                self.replica.discard()

    def write_transaction(self) -> AbstractContextManager[Any]:
        """Return a plain transaction (row locks do the rest); a nested call joins the caller's."""
        return self.atomic()

    def lock_rows(self, query: _Select) -> _Select:
        """Return ``query`` with FOR UPDATE: its rows stay locked until the transaction ends."""
        return query.for_update()

    @contextlib.contextmanager
    def serialised(self, key: int) -> Iterator[None]:
        """Run the block in a transaction holding advisory lock ``key`` until it ends."""
        with self.atomic():
            self.execute_sql("SELECT pg_advisory_xact_lock(%s)", (key,))
            yield

    @contextlib.contextmanager
    def migration_lock(self, key: int) -> Iterator[None]:
        """Hold session advisory lock ``key`` while a migration runner works."""
        self.execute_sql("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            self.execute_sql("SELECT pg_advisory_unlock(%s)", (key,))

    @contextlib.contextmanager
    def migration_step(self) -> Iterator[None]:
        """Nothing to add: PostgreSQL checks foreign keys as each statement runs."""
        yield

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Backend]:
        """Yield an empty database of the same server: a temporary schema, dropped after."""
        schema = f"within_scratch_{uuid.uuid4().hex[:12]}"
        admin = make_database(self.url)  # writable even when this one is read-only
        with admin.connection_context():
            admin.execute_sql(f'CREATE SCHEMA "{schema}"')
        try:
            scratch = make_database(self.url, options=f"-c search_path={schema}")
            with scratch.connection_context():
                yield scratch
        finally:
            with admin.connection_context():
                admin.execute_sql(f'DROP SCHEMA "{schema}" CASCADE')

    def schema_migrator(self) -> SchemaMigrator:
        """Return the migrator migrations get (playhouse's PostgreSQL one)."""
        return PostgresqlMigrator(self)

    def table_names(self) -> list[str]:
        """Return the names of the tables in the current schema, sorted."""
        # pg_class, not information_schema: partitions are listed under their parent
        sql = ("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
               "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
               "AND NOT c.relispartition")
        return sorted(row[0] for row in self.execute_sql(sql).fetchall())

    def for_asyncio(self) -> peewee.Database:
        """Return this database's asyncio twin (``within_db.aio``, an asyncpg pool).

        psycopg2's connect options become asyncpg's: ``-c`` options and application_name
        server settings, connect_timeout the timeout, sslmode ssl, max_connections the pool
        size. Anything else is refused with ConfigurationError.
        """
        from within_db.aio import AsyncPostgresDatabase

        params = dict(self.connect_params)
        settings = {"application_name": str(params.pop("application_name", "within_db"))}
        settings.update(re.findall(r"-c\s*([\w.]+)=(\S+)", str(params.pop("options", ""))))
        kwargs: dict[str, Any] = {k: params.pop(k) for k in ("host", "port", "user",
                                                              "password") if k in params}
        if "connect_timeout" in params:
            kwargs["timeout"] = float(params.pop("connect_timeout"))
        if "sslmode" in params:
            kwargs["ssl"] = params.pop("sslmode")
        if params:
            raise ConfigurationError(f"option(s) {', '.join(sorted(params))} are not supported "
                                     "by the asyncio driver (asyncpg)")
        pool_size = getattr(self, "_max_connections", None) or 10
        twin = AsyncPostgresDatabase(self.database, server_settings=settings,
                                     pool_size=pool_size, **kwargs)
        twin.url = self.url
        return twin

    def get_indexes(self, table: str, schema: str | None = None) -> list:
        """peewee's index list, seeing partitioned tables and their guard tables too.

        peewee reads relkind 'r' only, so playhouse's schema diff would otherwise re-add every
        index of a partitioned table; a guard's primary key (named ``<table>_<column>``) is
        reported as the unique index it stands for.
        """
        sql = """
            SELECT i.relname, pg_get_indexdef(i.oid), ix.indisunique,
                   array(SELECT pg_get_indexdef(ix.indexrelid, k + 1, TRUE)
                         FROM generate_subscripts(ix.indkey, 1) AS k ORDER BY k)
            FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
            JOIN pg_index ix ON ix.indrelid = t.oid JOIN pg_class i ON i.oid = ix.indexrelid
            WHERE t.relname = %s AND t.relkind IN ('r', 'p')
              AND n.nspname = COALESCE(%s, current_schema())
            UNION ALL
            SELECT con.conname, pg_get_constraintdef(con.oid), TRUE, array[a.attname::text]
            FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
            JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
            WHERE con.contype = 'p' AND con.conname = %s || '_' || a.attname
              AND n.nspname = COALESCE(%s, current_schema())
            ORDER BY 3 DESC, 1"""
        rows = self.execute_sql(sql, (table, schema, table, schema)).fetchall()
        return [peewee.IndexMetadata(name, definition, [c.strip('"') for c in cols], unique,
                                     table) for name, definition, unique, cols in rows]

    def create_schema(self, models: Sequence[type[peewee.Model]]) -> None:
        """Create the models' tables and indexes, partitioned ones as migrations build them.

        A model whose Meta names ``partition_by`` becomes a table range-partitioned on that
        column (no partitions yet) with ``(pk, column)`` as primary key, and each of its
        ``unique_guards`` a guard table kept by a trigger (see GUARD_FUNCTION).
        """
        for model in peewee.sort_models(models):  # type: ignore[attr-defined]  # no stub
            column, guards = partition_meta(model)
            if column is None:
                model.create_table(safe=False)
            else:
                self._create_partitioned(model, column, guards)

    def _create_partitioned(self, model: Any, column: str, guards: dict[str, str]) -> None:
        table, pk = model._meta.table_name, model._meta.primary_key.column_name
        sql, params = self.get_sql_context().sql(model._schema._create_table(safe=False)).query()
        # a partitioned table's primary key must include the partition column
        sql, found = re.subn(rf"({re.escape(_quote(pk))} [^,]*?) PRIMARY KEY", r"\1", sql, count=1)
        if not found or not sql.endswith(")"):
            raise ValueError(f"cannot partition {table}: unexpected DDL from peewee")
        sql = (f"{sql[:-1]}, PRIMARY KEY ({_quote(pk)}, {_quote(column)})) "
               f"PARTITION BY RANGE ({_quote(column)})")
        self.execute_sql(sql, params)
        for index in model._meta.fields_to_index():
            columns = [f.column_name for f in index._expressions if isinstance(f, peewee.Field)]
            if index._unique and len(columns) == 1 and columns[0] in guards:
                continue  # enforced by the guard table instead
            self.execute(model._schema._create_index(index, safe=False))
        for guarded, guard in guards.items():
            self.execute_sql(guard_sql(table, guarded, guard, self._column_type(table, guarded),
                                       key=column))

    def _column_type(self, table: str, column: str) -> str:
        sql = ("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
               "WHERE attrelid = %s::regclass AND attname = %s")
        return self.execute_sql(sql, (_quote(table), column)).fetchone()[0]

    # -- monthly partitions -------------------------------------------------------------------

    def partitioning(self, table: str) -> str | None:
        """Return ``table``'s partition key (``RANGE (created_at)``), None if unpartitioned."""
        sql = ("SELECT pg_get_partkeydef(c.oid) FROM pg_class c JOIN pg_namespace n "
               "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relname = %s")
        row = self.execute_sql(sql, (table,)).fetchone()
        return row[0] if row else None

    def partitions(self, table: str, column: str, exact: bool = True) -> list[Partition]:
        """Return the monthly partitions of ``table``, oldest first.

        ``exact=False`` reports the planner's row estimate (free; 0 before the first ANALYZE)
        instead of counting each partition.
        """
        out = []
        for name, bound, estimate, size, _pending in self._partition_rows(table):
            match = _RANGE_BOUND.search(bound or "")
            if match is None:
                continue  # not a range partition; nothing of ours
            start, end = (dt.date.fromisoformat(v[:10]) for v in match.groups())
            rows = self._count(name) if exact else max(int(estimate), 0)
            out.append(Partition(name, start, end, rows, size))
        return sorted(out, key=lambda p: p.start)

    def _partition_rows(self, table: str) -> list[tuple]:
        sql = ("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples, "
               "pg_total_relation_size(c.oid), i.inhdetachpending FROM pg_inherits i "
               "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass")
        return self.execute_sql(sql, (_quote(table),)).fetchall()

    def _exists(self, table: str) -> bool:
        sql = "SELECT to_regclass(%s) IS NOT NULL"
        return self.execute_sql(sql, (_quote(table),)).fetchone()[0]

    def _count(self, table: str) -> int:
        return self.execute_sql(f"SELECT count(*) FROM {_quote(table)}").fetchone()[0]  # noqa: S608

    def ensure_partitions(self, table: str, column: str, months: list[dt.date]) -> list[str]:
        """Create and attach the partitions of ``months`` that are missing; return their names.

        Writers are not blocked: each partition is built as a plain table (LIKE the parent, a
        CHECK matching its range) and then ATTACHed, which takes SHARE UPDATE EXCLUSIVE on
        the parent (``PARTITION OF`` would take ACCESS EXCLUSIVE). One short transaction per
        month, serialised with other ``ensure`` runs by an advisory lock, with a lock timeout.
        A new partition is owned by the table's owner, whoever created it; the app role needs
        no grant on it (privileges are checked on the table a query names, the parent).
        """
        created = []
        for month in months:
            name = partition_name(table, month)
            low, high = _ts(month), _ts(next_month(month))
            with self.serialised(PARTITION_LOCK_KEY):
                self.execute_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                if any(p.start == month for p in self.partitions(table, column, exact=False)):
                    continue
                check = _quote(f"{name}_bound_check")
                self.execute_sql(f"CREATE TABLE {_quote(name)} (LIKE {_quote(table)} "
                                 "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)")
                # a month belongs to the table's owner, whoever ran ensure (a DBA, say), so
                # the owner's retention job can detach and drop it
                owner, me = self.execute_sql(
                    "SELECT pg_get_userbyid(relowner), current_user FROM pg_class "
                    "WHERE oid = %s::regclass", (_quote(table),)).fetchone()
                if owner != me:
                    self.execute_sql(f"ALTER TABLE {_quote(name)} OWNER TO {_quote(owner)}")
                self.execute_sql(f"ALTER TABLE {_quote(name)} ADD CONSTRAINT {check} CHECK "
                                 f"({_quote(column)} >= '{low}' AND {_quote(column)} < '{high}')")
                self.execute_sql(f"ALTER TABLE {_quote(table)} ATTACH PARTITION {_quote(name)} "
                                 f"FOR VALUES FROM ('{low}') TO ('{high}')")
                # the partition bound now says the same; keep no redundant CHECK
                self.execute_sql(f"ALTER TABLE {_quote(name)} DROP CONSTRAINT {check}")
            created.append(name)
        return created

    def drop_partitions(self, table: str, column: str, months: list[dt.date],
                        guards: dict[str, str], batch_size: int = 50_000,
                        expected: dict[dt.date, int] | None = None) -> dict[dt.date, int]:
        """Detach the partitions of ``months`` concurrently, then drop them; {month: rows}.

        Must run outside a transaction (DETACH ... CONCURRENTLY). Guard rows of the dropped
        rows are deleted after the detach, so a request id stays taken until its month is
        gone. A detach interrupted earlier (still pending) is finalised. With ``expected``
        ({month: rows}, say verified in an archive), a detached month is counted (no write can
        reach it any more) and, if it differs, attached again and VerificationError raised.
        """
        attached = {}
        for name, bound, _est, _size, pending in self._partition_rows(table):
            match = _RANGE_BOUND.search(bound or "")
            if match:
                attached[dt.date.fromisoformat(match.group(1)[:10])] = (name, pending)
        done = {}
        for month in months:
            name, pending = attached.get(month, (partition_name(table, month), None))
            if pending is None and not self._exists(name):
                done[month] = 0
                continue
            if pending is not None:
                mode = "FINALIZE" if pending else "CONCURRENTLY"
                self.execute_sql(f"ALTER TABLE {_quote(table)} DETACH PARTITION {_quote(name)} "
                                 f"{mode}")
            rows = self._count(name)
            if expected is not None and rows != expected.get(month):
                high = _ts(next_month(month))
                self.execute_sql(f"ALTER TABLE {_quote(table)} ATTACH PARTITION {_quote(name)} "
                                 f"FOR VALUES FROM ('{_ts(month)}') TO ('{high}')")
                raise VerificationError(_changed(table, month, rows, expected.get(month), done))
            for guarded, guard in guards.items():
                self.execute_sql(f"DELETE FROM {_quote(guard)} g USING {_quote(name)} d "  # noqa: S608
                                 f"WHERE g.{_quote(guarded)} = d.{_quote(guarded)}")
            self.execute_sql(f"DROP TABLE {_quote(name)}")
            done[month] = rows
        return done

    def bulk_load(self, table: str, columns: list[str], rows: Iterable[str],
                  batch_size: int) -> int:
        """Stream COPY text lines through ``COPY ... FROM STDIN`` in one transaction.

        ``rows`` are complete lines (escaped, tab-separated, newline-terminated);
        ``batch_size`` lines go per buffer. Returns the count. Raises BulkLoadFailed naming the
        refused row; nothing is then written.
        """
        sql = f"COPY {_quote(table)} ({', '.join(_quote(c) for c in columns)}) FROM STDIN"
        source = _CopySource(rows, batch_size)
        try:
            with self.atomic():
                with self.connection().cursor() as cursor:
                    cursor.copy_expert(sql, source, size=1 << 16)
        except psycopg2.Error as exc:
            if source.error is not None:
                raise BulkLoadFailed(source.failed_at, cause=source.error) from None
            context = getattr(exc.diag, "context", None) or ""
            match = _COPY_LINE.search(context)
            position = int(match.group(1)) - 1 if match else -1
            if isinstance(exc, psycopg2.IntegrityError):
                raise BulkLoadFailed(position, peewee.IntegrityError(exc)) from None
            if isinstance(exc, psycopg2.DataError):
                raise BulkLoadFailed(position) from None
            raise
        return source.count

    @contextlib.contextmanager
    def streaming_cursor(self, sql: str, params: Any) -> Iterator[tuple[Any, _Fetch]]:
        """Yield ``(cursor, fetch)`` over a server-side cursor declared in a transaction.

        psycopg2's named cursors would need WITH HOLD outside a transaction, which builds the
        whole result first; a DECLAREd cursor inside one streams rows as they are produced.
        """
        name = f"within_stream_{uuid.uuid4().hex}"
        with self.atomic():
            cursor = self.connection().cursor()
            cursor.execute(f'DECLARE "{name}" NO SCROLL CURSOR FOR {sql}', params)

            def fetch(n: int) -> list[tuple[Any, ...]]:
                cursor.execute(f'FETCH FORWARD {int(n)} FROM "{name}"')
                return cursor.fetchall()

            try:
                yield cursor, fetch
            finally:
                if not cursor.closed and self.connection().get_transaction_status() == \
                        psycopg2.extensions.TRANSACTION_STATUS_INTRANS:
                    cursor.execute(f'CLOSE "{name}"')
                cursor.close()

    def instant_text(self, column: Any) -> Any:
        """Return a timestamp column as the fixed-width UTC text ``fields.format_utc`` writes."""
        return peewee.fn.to_char(peewee.fn.timezone("UTC", column),
                                 'YYYY-MM-DD HH24:MI:SS.US"+00:00"')

    def date_text(self, column: Any, grain: str) -> Any:
        """Return ``column`` truncated to ``grain`` (day, week, month) as ``YYYY-MM-DD`` text."""
        return peewee.fn.to_char(peewee.fn.date_trunc(grain, column), "YYYY-MM-DD")


class PostgresDatabase(_Shared, _PostgresBackend, PostgresqlExtDatabase):
    """PostgreSQL through psycopg2 with real server-side cursors and a clear connect error."""


class PooledPostgresDatabase(_Shared, _PostgresBackend, PooledPostgresqlExtDatabase):
    """The pooled variant of :class:`PostgresDatabase`."""


def _read_only(db: peewee.Database) -> str:
    params = db.connect_params
    where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"
    return (f"the PostgreSQL server at {where} refused a write: it is read-only (a replica, or "
            "a read-only transaction); write outside db.reading() so it goes to the primary")


def _unavailable(db: peewee.Database, exc: Exception) -> DatabaseUnavailableError:
    # The driver's text is classified, never echoed: it may name users or hosts we redact.
    params = db.connect_params
    host = params.get("host", "localhost")
    where = f"{host}:{params.get('port', 5432)}"
    user = params.get("user") or "(default)"
    text = str(exc).lower()
    if "does not exist" in text and "database" in text:
        reason = f'database "{db.database}" does not exist; create it first (createdb)'
    elif "role" in text and "does not exist" in text:
        reason = (f'role "{user}" does not exist on the server; create it (createuser) '
                  "or put another user name in the URL")
    elif "not permitted to log in" in text:
        reason = f'role "{user}" may not log in; grant it LOGIN or use another user'
    elif "authentication failed" in text or "password" in text:
        reason = (f'authentication failed for user "{user}"; check the password in the URL '
                  "(percent-encoded)")
    elif "translate host name" in text or "name or service not known" in text:
        reason = f'unknown host "{host}"; check the host name in the URL'
    elif "connection refused" in text:
        reason = ("connection refused; is the server running and accepting TCP/IP "
                  "connections on that port?")
    elif "timeout" in text or "timed out" in text:
        reason = f"no answer within {params.get('connect_timeout', CONNECT_TIMEOUT)}s"
    elif "invalid" in text and "connection option" in text:
        reason = "a connection option in the URL's query string has an invalid value"
    else:
        reason = "the server could not be reached or refused the connection"
    return DatabaseUnavailableError(f"cannot connect to PostgreSQL at {where}: {reason}")


def _resolve_url(url: str | None) -> str:
    if url is None:
        url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"empty database URL; expected one of the schemes {', '.join(SCHEMES)}, "
            f"e.g. {DEFAULT_URL}"
        )
    return url.strip()


#: the databases ``make_database`` builds; each implements every backend-specific operation
Backend: TypeAlias = SqliteDatabase | PostgresDatabase | PooledPostgresDatabase


def make_database(url: str | None = None, read_only: bool = False,
                  **options: Any) -> Backend:
    """Build (without binding or opening) the database a URL describes.

    ``read_only``: SQLite opens the file with ``mode=ro`` (a missing file is an error, never
    created); PostgreSQL sessions default to read-only transactions. Keyword options override
    what the URL's query string says. Raises ConfigurationError for a malformed URL.
    """
    url = _resolve_url(url)
    parsed = parse_url(url)
    db: Backend
    if parsed.kind == "sqlite":
        db = _make_sqlite(parsed, read_only, options)
    else:
        db = _make_postgres(parsed, read_only, options)
    db.url = url
    db.read_only = read_only
    return db


def _make_sqlite(parsed: DatabaseURL, read_only: bool, options: dict[str, Any]) -> SqliteDatabase:
    kwargs = {**parsed.options, **options}
    name = parsed.database
    if sqlite3.sqlite_version_info < SQLITE_MIN_VERSION:
        need = ".".join(map(str, SQLITE_MIN_VERSION))
        raise ConfigurationError(
            f"SQLite {sqlite3.sqlite_version} is too old: within_db needs SQLite {need} or "
            "newer for STRICT tables (upgrade Python's sqlite3 library or use PostgreSQL)")
    timeout = float(kwargs.pop("timeout", BUSY_TIMEOUT))
    pragmas: dict[str, Any] = {"foreign_keys": 1}
    in_memory = name == ":memory:" or name.startswith("file::memory:")
    if read_only:
        pragmas["query_only"] = 1
    elif not in_memory:
        # WAL lets readers in other processes work during a write; NORMAL is durable under WAL.
        pragmas.update(journal_mode="wal", synchronous="normal")
    pragmas.update(kwargs.pop("pragmas", {}))
    field_types = {**SQLITE_FIELD_TYPES, **kwargs.pop("field_types", {})}
    db = SqliteDatabase(
        name, pragmas=pragmas, timeout=timeout, field_types=field_types, **kwargs
    )
    db.keeps_connection = in_memory
    return db


def _make_postgres(parsed: DatabaseURL, read_only: bool,
                   options: dict[str, Any]) -> PostgresDatabase | PooledPostgresDatabase:
    kwargs = {**parsed.connect_kwargs(), **options}
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
    kwargs.setdefault("application_name", "within_db")
    settings = "-c TimeZone=UTC" + (" -c default_transaction_read_only=on" if read_only else "")
    kwargs["options"] = f"{settings} {kwargs.pop('options', '') or ''}".strip()
    if parsed.pooled:
        kwargs.setdefault("max_connections", 20)
        kwargs.setdefault("stale_timeout", 300)
        return PooledPostgresDatabase(parsed.database, **kwargs)
    return PostgresDatabase(parsed.database, **kwargs)


def connect(url: str | None = None, read_only: bool = False, *, replica: str | None = None,
            max_replica_lag: float = MAX_REPLICA_LAG, replica_wait: float = REPLICA_WAIT,
            **options: Any) -> Backend:
    """Bind the proxy to the database ``url`` describes and return that database.

    ``url`` falls back to ``$DATABASE_URL``, then ``sqlite:///within.db``. Calling it again
    closes the previously bound database and rebinds. The connection itself opens lazily.
    Raises ConfigurationError for a malformed URL (see ``make_database``).

    ``replica`` is a streaming replica of a PostgreSQL primary (``$DATABASE_REPLICA_URL`` when
    ``url`` also comes from the environment): the read paths (``batch.stream``,
    ``to_dataframe``, ``training_rows``, ``run_saved_query``, ``get_user_campaigns``,
    ``within-db inspect``) read from it unless this thread is in a transaction on the primary,
    it is unreachable or not in recovery, or it lags more than ``max_replica_lag`` seconds;
    ``replica_wait`` bounds the wait of ``read_your_writes()``. SQLite ignores it.
    """
    if url is None and replica is None:
        replica = os.environ.get("DATABASE_REPLICA_URL") or None
    db = make_database(url, read_only=read_only, **options)
    if replica:
        db.use_replica(replica, max_lag=max_replica_lag, wait=replica_wait)
    previous = database.obj
    if previous is not None and previous is not db and not previous.is_closed():
        previous.close()
    database.initialize(db)
    log.info("bound within_db to %s", redact_url(db.url))
    return db


def get_db() -> Iterator[Backend]:
    """Yield the bound database with an open connection (binding the default if unbound).

    Supports the original design's ``db = next(get_db())``; a connection opened here closes
    when the generator is closed or collected.
    """
    db = database.obj if database.obj is not None else connect()
    opened = db.connect(reuse_if_open=True)
    try:
        yield db
    finally:
        # A connection the caller already had open (perhaps in a transaction) stays open.
        if opened and not db.is_closed():
            db.close()


def bound(db: Backend | None = None) -> Backend:
    """Return ``db``, else the database the proxy is bound to; NotConnectedError if neither."""
    db = db if db is not None else database.obj
    if db is None:
        raise NotConnectedError(
            "no database is bound: call within_db.connect(url) first "
            f"(accepted schemes: {', '.join(SCHEMES)})"
        )
    return db


def write_transaction(db: Backend | None = None) -> AbstractContextManager[Any]:
    """Return a transaction that holds the write lock from its first statement.

    On SQLite a top-level transaction starts IMMEDIATE, so a read-then-write sequence never
    fails on lock upgrade; nested calls (and PostgreSQL) get a plain ``atomic()``.
    """
    return bound(db).write_transaction()


def reading() -> Any:
    """Return ``bound().reading()``: route the block's model queries to the read target."""
    return bound().reading()


def read_your_writes(timeout: float | None = None, after: str | None = None) -> Any:
    """Return ``bound().read_your_writes(...)``: replica reads in the block see prior writes."""
    return bound().read_your_writes(timeout=timeout, after=after)


def backend(db: Backend | None = None) -> str:
    """Return ``"sqlite"`` or ``"postgres"`` for ``db`` (default: the bound database)."""
    return bound(db).kind
