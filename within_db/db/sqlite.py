"""SQLite: STRICT tables with within_db's column types, error classification, and every
operation the PostgreSQL class implements differently."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import peewee
from playhouse.migrate import SchemaMigrator, SqliteMigrator, operation

from within_db.db.common import (
    BrokenForeignKeys,
    BulkLoadFailed,
    Partition,
    _changed,
    _driver_error,
    _Fetch,
    _quote,
    _Select,
    _Shared,
    log,
    next_month,
)
from within_db.db.replica import MAX_REPLICA_LAG, REPLICA_WAIT, _Reads
from within_db.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    VerificationError,
)
from within_db.url import redact_url

__all__ = [
    "SQLITE_FIELD_TYPES", "SQLITE_MIN_VERSION", "SqliteDatabase", "StrictSqliteMigrator",
]

if TYPE_CHECKING:
    from within_db.db.connection import Backend


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
        from within_db.db.connection import make_database
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

    def ensure_partitions(self, table: str, column: str, months: list[dt.date],
                          guards: dict[str, str] | None = None) -> list[str]:
        """Create nothing and return []: one SQLite table holds every month."""
        return []

    def prune_guards(self, table: str, guards: dict[str, str], months: list[dt.date] | None = None,
                     batch_size: int = 50_000) -> dict[dt.date, int]:
        """Delete nothing and return {}: SQLite's UNIQUE index needs no guard table."""
        return {}

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
