"""Make audit_logs append-only: triggers refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL)."""
from peewee import PostgresqlDatabase

MESSAGE = "audit_logs is append-only"


def up(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql(f"""
            CREATE FUNCTION audit_logs_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'integrity_constraint_violation';
            END
            $$ LANGUAGE plpgsql""")
        db.execute_sql("CREATE TRIGGER audit_logs_no_change BEFORE UPDATE OR DELETE "
                       "ON audit_logs FOR EACH ROW EXECUTE FUNCTION audit_logs_append_only()")
        db.execute_sql("CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE "
                       "ON audit_logs FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_append_only()")
        return
    for event in ("UPDATE", "DELETE"):
        db.execute_sql(f"CREATE TRIGGER audit_logs_no_{event.lower()} BEFORE {event} "
                       f"ON audit_logs BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")


def down(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql("DROP TRIGGER audit_logs_no_change ON audit_logs")
        db.execute_sql("DROP TRIGGER audit_logs_no_truncate ON audit_logs")
        db.execute_sql("DROP FUNCTION audit_logs_append_only()")
        return
    db.execute_sql("DROP TRIGGER audit_logs_no_update")
    db.execute_sql("DROP TRIGGER audit_logs_no_delete")
