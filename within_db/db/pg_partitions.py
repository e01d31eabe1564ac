"""PostgreSQL's monthly partitions: creating partitioned tables with their guard tables,
listing, ensuring (LIKE + CHECK + ATTACH), dropping (DETACH CONCURRENTLY) and pruning guards."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import peewee

from within_db.db.common import (
    Partition,
    _changed,
    _quote,
    next_month,
    partition_meta,
    partition_name,
)
from within_db.errors import VerificationError

__all__ = ["GUARD_FUNCTION", "LOCK_TIMEOUT", "PARTITION_LOCK_KEY", "guard_sql"]

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


class _Partitioned(peewee.PostgresqlDatabase):
    """The partition operations of the PostgreSQL classes (listed first in their bases)."""

    if TYPE_CHECKING:
        def serialised(self, key: int) -> AbstractContextManager[None]: ...  # _PostgresBackend

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
