"""PostgreSQL: COPY bulk loads, server-side cursors, JSON casters, replicas, and connection
errors classified without echoing the server (month partitions: pg_partitions)."""

from __future__ import annotations

import contextlib
import itertools
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import peewee
import psycopg2
import psycopg2.errors
from playhouse.migrate import PostgresqlMigrator, SchemaMigrator
from playhouse.postgres_ext import PooledPostgresqlExtDatabase, PostgresqlExtDatabase

from within_db.db.common import (
    CONNECT_TIMEOUT,
    BulkLoadFailed,
    _driver_error,
    _Fetch,
    _quote,
    _Select,
    _Shared,
    json_loads,
)
from within_db.db.pg_partitions import _Partitioned
from within_db.db.replica import (
    _MARKS,
    _READ_ONLY_SQL,
    _REPLICA_CONNECT_TIMEOUT,
    _WRITTEN_LSN_SQL,
    MAX_REPLICA_LAG,
    REPLICA_WAIT,
    Replica,
    _lsn_number,
    _lsn_text,
    _pgcode,
    _Reads,
)
from within_db.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    ReadOnlyError,
)
from within_db.url import SCHEMES, redact_url

__all__ = ["PooledPostgresDatabase", "PostgresDatabase"]

if TYPE_CHECKING:
    from within_db.db.connection import Backend


_COPY_LINE = re.compile(r"COPY \S+, line (\d+)")


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


class _PostgresBackend(_Partitioned, _Reads, peewee.PostgresqlDatabase):
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
        from within_db.db.connection import make_database
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
        from within_db.db.connection import make_database

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
