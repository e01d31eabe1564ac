"""schema_migrations.applied becomes an aware UTC instant (TIMESTAMPTZ; UTC text on SQLite)."""
import datetime as dt

from peewee import PostgresqlDatabase

HISTORY_TABLE = "schema_migrations"


def local_offset_seconds():
    # playhouse wrote datetime.now(): the local time of the machine that migrated. This
    # machine's zone is the best guess there is.
    return int(dt.datetime.now().astimezone().utcoffset().total_seconds())


def column_type(db):
    (kind,) = db.execute_sql(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = %s AND column_name = 'applied'",
        (HISTORY_TABLE,)).fetchone()
    return kind


def up(migrator, db):
    offset = local_offset_seconds()
    if isinstance(db, PostgresqlDatabase):
        if column_type(db) == "timestamp without time zone":
            db.execute_sql(
                f'ALTER TABLE "{HISTORY_TABLE}" ALTER COLUMN applied TYPE timestamptz '
                "USING (applied - %s * interval '1 second') AT TIME ZONE 'UTC'", (offset,))
        return
    rows = db.execute_sql(f'SELECT name, applied FROM "{HISTORY_TABLE}"').fetchall()  # noqa: S608
    for name, applied in rows:
        value = dt.datetime.fromisoformat(str(applied))
        if value.tzinfo is not None:
            continue  # written in UTC already
        utc = (value - dt.timedelta(seconds=offset)).replace(tzinfo=dt.UTC)
        db.execute_sql(f'UPDATE "{HISTORY_TABLE}" SET applied = ? WHERE name = ?',  # noqa: S608
                       (utc.strftime("%Y-%m-%d %H:%M:%S.%f+00:00"), name))


def down(migrator, db):
    offset = local_offset_seconds()
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql(
            f'ALTER TABLE "{HISTORY_TABLE}" ALTER COLUMN applied TYPE timestamp '
            "USING (applied AT TIME ZONE 'UTC') + %s * interval '1 second'", (offset,))
        return
    rows = db.execute_sql(f'SELECT name, applied FROM "{HISTORY_TABLE}"').fetchall()  # noqa: S608
    for name, applied in rows:
        value = dt.datetime.fromisoformat(str(applied))
        if value.tzinfo is None:
            continue
        local = value.astimezone(dt.UTC).replace(tzinfo=None) + \
            dt.timedelta(seconds=offset)
        db.execute_sql(f'UPDATE "{HISTORY_TABLE}" SET applied = ? WHERE name = ?',  # noqa: S608
                       (local.isoformat(" "), name))
