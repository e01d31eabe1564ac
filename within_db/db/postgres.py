"""PostgreSQL: COPY bulk loads, server-side cursors, JSON casters, month partitions with
their guard tables, replicas, and connection errors classified without echoing the server."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
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
    Partition,
    _changed,
    _driver_error,
    _Fetch,
    _quote,
    _Select,
    _Shared,
    json_loads,
    next_month,
    partition_meta,
    partition_name,
)
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
    VerificationError,
)
from within_db.url import SCHEMES, redact_url

__all__ = [
    "GUARD_FUNCTION", "LOCK_TIMEOUT", "PARTITION_LOCK_KEY", "PooledPostgresDatabase",
    "PostgresDatabase", "guard_sql",
]

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


_RANGE_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
PARTITION_LOCK_KEY = 0x70617274  # "part": serialises `partitions ensure` runs
LOCK_TIMEOUT = "10s"


def _ts(month: dt.date) -> str:
    return f"{month:%Y-%m-%d} 00:00:00+00"


# Keeps a unique column unique across the partitions of a table: every row's value is also
# the primary key of a narrow guard table, in the same transaction, with the UTC month of the
# row. A BEFORE row trigger (not AFTER) so a COPY fails at the offending line and reports it;
# it fires for INSERT, COPY, UPDATE and DELETE, and for a row an UPDATE moves to another month
# PostgreSQL fires DELETE then INSERT, so the UPDATE branch leaves those rows alone. Dropping a
# month leaves its guard rows behind (deleting them made most of a drop's time): the drop
# records the month in <guard>_dropped_months and ``prune_guards`` deletes them later, in
# batches found through the BRIN index on month. Until then the month's values stay taken,
# which is stricter, never looser.
GUARD_FUNCTION = """
CREATE FUNCTION {table}_{column}_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {guard} ({column}, month)
            VALUES (NEW.{column}, date_trunc('month', NEW.{key} AT TIME ZONE 'UTC')::date);
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.{column} IS DISTINCT FROM OLD.{column}
                AND date_trunc('month', NEW.{key}, 'UTC')
                    = date_trunc('month', OLD.{key}, 'UTC') THEN
            DELETE FROM {guard} WHERE {column} = OLD.{column};
            INSERT INTO {guard} ({column}, month)
                VALUES (NEW.{column}, date_trunc('month', NEW.{key} AT TIME ZONE 'UTC')::date);
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
    duplicate is reported as the same constraint on every backend. ``month`` (the row's UTC
    month, first day) has a BRIN index: nearly free to keep for rows arriving in time order,
    and it finds a dropped month's rows for ``prune_guards``.
    """
    return (f"CREATE TABLE {guard} ({column} {column_type} "
            f"CONSTRAINT {table}_{column} PRIMARY KEY, month date NOT NULL);"
            f"CREATE INDEX {guard}_month ON {guard} USING brin (month) "
            "WITH (autosummarize = on);"
            f"CREATE TABLE {guard}_dropped_months (month date PRIMARY KEY);"
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

    def ensure_partitions(self, table: str, column: str, months: list[dt.date],
                          guards: dict[str, str] | None = None) -> list[str]:
        """Create and attach the partitions of ``months`` that are missing; return their names.

        Writers are not blocked: each partition is built as a plain table (LIKE the parent, a
        CHECK matching its range) and then ATTACHed, which takes SHARE UPDATE EXCLUSIVE on
        the parent (``PARTITION OF`` would take ACCESS EXCLUSIVE). One short transaction per
        month, serialised with other ``ensure`` runs by an advisory lock, with a lock timeout.
        A new partition is owned by the table's owner, whoever created it; the app role needs
        no grant on it (privileges are checked on the table a query names, the parent).
        """
        created = []
        attached = {p.start for p in self.partitions(table, column, exact=False)}
        for month in months:
            name = partition_name(table, month)
            low, high = _ts(month), _ts(next_month(month))
            if guards and month not in attached:
                # a month dropped earlier and not yet pruned: its old values must go first
                self.prune_guards(table, guards, months=[month])
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

        Must run outside a transaction (DETACH ... CONCURRENTLY). The guard rows of a dropped
        month stay until ``prune_guards`` deletes them: the DROP records the month in each
        guard's ``_dropped_months`` table in its own transaction, so a month is either still a
        table or listed for pruning. A detach interrupted earlier (still pending) is finalised.
        With ``expected`` ({month: rows}, say verified in an archive), a detached month is
        counted (no write can reach it any more) and, if it differs, attached again and
        VerificationError raised.
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
            with self.atomic():
                self.execute_sql(f"DROP TABLE {_quote(name)}")
                for guard in guards.values():
                    self.execute_sql(f"INSERT INTO {_quote(guard + '_dropped_months')} "  # noqa: S608
                                     "(month) VALUES (%s) ON CONFLICT DO NOTHING", (month,))
            done[month] = rows
        return done

    def prune_guards(self, table: str, guards: dict[str, str], months: list[dt.date] | None = None,
                     batch_size: int = 50_000) -> dict[dt.date, int]:
        """Delete the guard rows of dropped months in batches; return {month: rows deleted}.

        ``months`` limits the work to those (default: every month listed as dropped). Each
        batch is its own short transaction, serialised with ``ensure_partitions`` (which
        prunes a dropped month before creating it again); a month leaves the dropped list in
        its last batch. Safe to interrupt and rerun; no lock blocks writers.
        """
        done: dict[dt.date, int] = {}
        for guard in guards.values():
            dropped = _quote(guard + "_dropped_months")
            listed = [m for (m,) in self.execute_sql(
                f"SELECT month FROM {dropped} ORDER BY month").fetchall()]  # noqa: S608
            batch = (f"DELETE FROM {_quote(guard)} WHERE ctid = ANY(ARRAY("  # noqa: S608
                     f"SELECT ctid FROM {_quote(guard)} WHERE month = %s LIMIT {int(batch_size)}"
                     ")) AND month = %s")
            for month in listed:
                if months is not None and month not in months:
                    continue
                while True:
                    with self.serialised(PARTITION_LOCK_KEY):
                        deleted = self.execute_sql(batch, (month, month)).rowcount
                        if deleted < batch_size:
                            self.execute_sql(f"DELETE FROM {dropped} WHERE month = %s",  # noqa: S608
                                             (month,))
                    done[month] = done.get(month, 0) + deleted
                    if deleted < batch_size:
                        break
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
