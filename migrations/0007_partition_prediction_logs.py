"""Range-partition prediction_logs by month on PostgreSQL, keeping every row; SQLite unchanged.

request_id stays unique across months through the prediction_request_ids guard table (its
primary key keeps the unique index's name) that a BEFORE row trigger fills. Frozen SQL: the
library's within_db.db.guard_sql builds the same objects for the drift check's model side.
"""
import datetime as dt
import re

from peewee import PostgresqlDatabase

TABLE = "prediction_logs"
OLD = "prediction_logs_unpartitioned"
GUARD = "prediction_request_ids"
AHEAD = 3  # months after the current one created now; `within-db partitions ensure` adds more

GUARD_DDL = """
CREATE FUNCTION prediction_logs_request_id_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO prediction_request_ids (request_id) VALUES (NEW.request_id);
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.request_id IS DISTINCT FROM OLD.request_id
                AND date_trunc('month', NEW.created_at, 'UTC')
                    = date_trunc('month', OLD.created_at, 'UTC') THEN
            DELETE FROM prediction_request_ids WHERE request_id = OLD.request_id;
            INSERT INTO prediction_request_ids (request_id) VALUES (NEW.request_id);
        END IF;
        RETURN NEW;
    END IF;
    DELETE FROM prediction_request_ids WHERE request_id = OLD.request_id;
    RETURN OLD;
END
$$;
CREATE TRIGGER prediction_logs_request_id_guard BEFORE INSERT OR UPDATE OF request_id OR DELETE
    ON prediction_logs FOR EACH ROW EXECUTE FUNCTION prediction_logs_request_id_guard();
CREATE FUNCTION prediction_logs_request_id_guard_truncate() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE prediction_request_ids;
    RETURN NULL;
END
$$;
CREATE TRIGGER prediction_logs_request_id_guard_truncate AFTER TRUNCATE ON prediction_logs
    FOR EACH STATEMENT EXECUTE FUNCTION prediction_logs_request_id_guard_truncate();
"""


def _month(value):
    return dt.date(value.year, value.month, 1)


def _next(month):
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _move_aside(db, table, aside):
    """Rename ``table`` to ``aside``; return (index definitions, foreign keys) to recreate.

    Indexes are dropped (their names are schema-wide); definitions come from the catalogue,
    so whatever earlier migrations created is carried over.
    """
    indexes = db.execute_sql(
        "SELECT i.relname, ix.indisunique, pg_get_indexdef(ix.indexrelid) FROM pg_index ix "
        "JOIN pg_class i ON i.oid = ix.indexrelid WHERE ix.indrelid = %s::regclass "
        "AND NOT ix.indisprimary ORDER BY i.relname", (table,)).fetchall()
    fkeys = db.execute_sql(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname", (table,)).fetchall()
    db.execute_sql(f"ALTER TABLE {table} RENAME TO {aside}")
    db.execute_sql(f"ALTER TABLE {aside} RENAME CONSTRAINT {table}_pkey TO {aside}_pkey")
    for name, _unique, _definition in indexes:
        db.execute_sql(f'DROP INDEX "{name}"')
    return indexes, fkeys


def _recreate(db, aside, indexes, fkeys, skip=()):
    for name, definition in fkeys:
        db.execute_sql(f'ALTER TABLE {TABLE} ADD CONSTRAINT "{name}" {definition}')
    for name, _unique, definition in indexes:
        if name not in skip:
            db.execute_sql(re.sub(rf" ON (ONLY )?\S*{aside} ", f" ON {TABLE} ", definition, count=1))


def up(migrator, db):
    if not isinstance(db, PostgresqlDatabase):
        return  # SQLite keeps one plain table with UNIQUE(request_id)
    indexes, fkeys = _move_aside(db, TABLE, OLD)
    db.execute_sql(f"CREATE TABLE {TABLE} (LIKE {OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                   "INCLUDING STORAGE, PRIMARY KEY (id, created_at)) "
                   "PARTITION BY RANGE (created_at)")
    # the unique index on request_id alone cannot exist on a partitioned table: the guard
    _recreate(db, OLD, indexes, fkeys, skip={f"{TABLE}_request_id"})
    bounds = f"SELECT min(created_at), max(created_at) FROM {OLD}"  # noqa: S608 - constants
    low, high = db.execute_sql(bounds).fetchone()
    today = dt.datetime.now(dt.UTC).date()
    month = _month(min(low.astimezone(dt.UTC).date(), today) if low else today)
    last = _month(today)
    for _ in range(AHEAD):
        last = _next(last)
    last = max(last, _month(high.astimezone(dt.UTC).date())) if high else last
    while month <= last:
        db.execute_sql(f"CREATE TABLE {TABLE}_{month:%Y_%m} PARTITION OF {TABLE} FOR VALUES "
                       f"FROM ('{month} 00:00:00+00') TO ('{_next(month)} 00:00:00+00')")
        month = _next(month)
    db.execute_sql(f"INSERT INTO {TABLE} SELECT * FROM {OLD}")  # noqa: S608 - constants
    db.execute_sql(f"CREATE TABLE {GUARD} (request_id character varying(64) "
                   f"CONSTRAINT {TABLE}_request_id PRIMARY KEY)")
    db.execute_sql(f"INSERT INTO {GUARD} SELECT request_id FROM {OLD}")  # noqa: S608
    db.execute_sql(GUARD_DDL)  # after the copy, so the copy does not pay the trigger per row
    db.execute_sql(f"ALTER SEQUENCE {TABLE}_id_seq OWNED BY {TABLE}.id")
    db.execute_sql(f"DROP TABLE {OLD}")


def down(migrator, db):
    if not isinstance(db, PostgresqlDatabase):
        return
    aside = "prediction_logs_partitioned"
    db.execute_sql(f"DROP TRIGGER prediction_logs_request_id_guard ON {TABLE}")
    db.execute_sql(f"DROP TRIGGER prediction_logs_request_id_guard_truncate ON {TABLE}")
    db.execute_sql("DROP FUNCTION prediction_logs_request_id_guard()")
    db.execute_sql("DROP FUNCTION prediction_logs_request_id_guard_truncate()")
    db.execute_sql(f"DROP TABLE {GUARD}")
    indexes, fkeys = _move_aside(db, TABLE, aside)
    db.execute_sql(f"CREATE TABLE {TABLE} (LIKE {aside} INCLUDING DEFAULTS "
                   "INCLUDING CONSTRAINTS INCLUDING STORAGE, PRIMARY KEY (id))")
    db.execute_sql(f"INSERT INTO {TABLE} SELECT * FROM {aside}")  # noqa: S608 - constants
    db.execute_sql(f"CREATE UNIQUE INDEX {TABLE}_request_id ON {TABLE} (request_id)")
    _recreate(db, aside, indexes, fkeys)
    db.execute_sql(f"ALTER SEQUENCE {TABLE}_id_seq OWNED BY {TABLE}.id")
    db.execute_sql(f"DROP TABLE {aside}")  # and its partitions
