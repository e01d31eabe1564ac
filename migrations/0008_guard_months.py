"""Record each request id's month in the guard, so dropping a month no longer waits on it.

PostgreSQL only. prediction_request_ids gains ``month`` (the log's UTC month, BRIN-indexed)
and prediction_request_ids_dropped_months lists dropped months whose ids are still to be
pruned; the trigger fills ``month``. Frozen SQL: within_db.db.guard_sql builds the same
objects for the drift check's model side.
"""
from peewee import PostgresqlDatabase

TABLE = "prediction_logs"
GUARD = "prediction_request_ids"
DROPPED = "prediction_request_ids_dropped_months"
MONTH = "date_trunc('month', NEW.created_at AT TIME ZONE 'UTC')::date"

FUNCTION = """
CREATE OR REPLACE FUNCTION prediction_logs_request_id_guard() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO prediction_request_ids (request_id{month_column})
            VALUES (NEW.request_id{month_value});
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.request_id IS DISTINCT FROM OLD.request_id
                AND date_trunc('month', NEW.created_at, 'UTC')
                    = date_trunc('month', OLD.created_at, 'UTC') THEN
            DELETE FROM prediction_request_ids WHERE request_id = OLD.request_id;
            INSERT INTO prediction_request_ids (request_id{month_column})
                VALUES (NEW.request_id{month_value});
        END IF;
        RETURN NEW;
    END IF;
    DELETE FROM prediction_request_ids WHERE request_id = OLD.request_id;
    RETURN OLD;
END
$$;
"""


def up(migrator, db):
    if not isinstance(db, PostgresqlDatabase):
        return  # SQLite keeps one plain table with UNIQUE(request_id)
    # no write may add a guard row between the fill below and the new trigger
    db.execute_sql(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE")
    db.execute_sql(f"ALTER TABLE {GUARD} ADD COLUMN month date")
    db.execute_sql(f"UPDATE {GUARD} g SET month = date_trunc('month', l.created_at "  # noqa: S608
                   f"AT TIME ZONE 'UTC')::date FROM {TABLE} l WHERE l.request_id = g.request_id")
    # a guard row without its log (a partition truncated by hand) only blocked its id
    db.execute_sql(f"DELETE FROM {GUARD} WHERE month IS NULL")  # noqa: S608 - constants
    db.execute_sql(f"ALTER TABLE {GUARD} ALTER COLUMN month SET NOT NULL")
    db.execute_sql(f"CREATE INDEX {GUARD}_month ON {GUARD} USING brin (month) "
                   "WITH (autosummarize = on)")
    db.execute_sql(f"CREATE TABLE {DROPPED} (month date PRIMARY KEY)")
    db.execute_sql(FUNCTION.format(month_column=", month", month_value=f", {MONTH}"))


def down(migrator, db):
    if not isinstance(db, PostgresqlDatabase):
        return
    db.execute_sql(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE")
    # the old design deleted a month's ids when it dropped the month: do what is pending
    db.execute_sql(f"DELETE FROM {GUARD} g USING {DROPPED} d "  # noqa: S608 - constants
                   "WHERE g.month = d.month")
    db.execute_sql(FUNCTION.format(month_column="", month_value=""))
    db.execute_sql(f"DROP TABLE {DROPPED}")
    db.execute_sql(f"DROP INDEX {GUARD}_month")
    db.execute_sql(f"ALTER TABLE {GUARD} DROP COLUMN month")
