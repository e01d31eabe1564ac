"""Least-privilege roles on the real PostgreSQL server: the owner migrates, the app runs the
services and a seed, and cannot change the audit log by any statement.

The cluster is shared: roles get random names and are dropped with their database at the end.
"""

import datetime as dt
import json
import uuid

import peewee
import psycopg2
import pytest
from click.testing import CliRunner

import within_db
from within_db import migrate, partitions
from within_db.cli import cli
from within_db.db import database, make_database
from within_db.errors import ConfigurationError, ValidationError
from within_db.roles import role_setup_sql, setup_roles

from .conftest import _admin, _pg_url

PASSWORD = "correct horse battery staple"


@pytest.fixture
def cluster(postgres_available):
    """A fresh database and two new non-superuser LOGIN roles: (admin url, owner, app, names)."""
    tag = uuid.uuid4().hex[:10]
    owner, app, name = f"within_owner_{tag}", f"within_app_{tag}", f"within_roles_{tag}"
    admin = _admin()
    try:
        for role in (owner, app):
            admin.execute_sql(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
        admin.execute_sql(f'CREATE DATABASE "{name}"')
        yield _pg_url(name), owner, app
    finally:
        admin.execute_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for role in (app, owner):
            admin.execute_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()
        database.initialize(None)


def _as(url, role):
    """The same database URL, connecting as ``role`` (trust authentication on localhost)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{role}@{rest.split('@', 1)[1]}"


def _cli(url, *args):
    result = CliRunner().invoke(cli, ["--database-url", url, *args])
    if database.obj is not None:
        database.obj.close()
    return result


FORBIDDEN = [
    "ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_no_change",
    "ALTER TABLE audit_logs DISABLE TRIGGER ALL",
    "DROP TRIGGER audit_logs_no_change ON audit_logs",
    "CREATE OR REPLACE FUNCTION audit_logs_append_only() RETURNS trigger AS $$ BEGIN "
    "RETURN NEW; END $$ LANGUAGE plpgsql",
    "SET session_replication_role = replica",
    "UPDATE audit_logs SET action = 'forged'",
    "DELETE FROM audit_logs",
    "TRUNCATE audit_logs",
    "INSERT INTO audit_logs (id, action, metadata, created_at, prev_hash, row_hash) "
    "SELECT id, 'forged', metadata, created_at, prev_hash, row_hash FROM audit_logs "
    "ON CONFLICT (id) DO UPDATE SET action = 'forged'",
    "ALTER TABLE audit_logs RENAME TO audit_logs_old",
    "DROP TABLE audit_logs",
    "TRUNCATE campaigns CASCADE",
    "ALTER TABLE users ADD COLUMN note text",
    "CREATE TABLE notes (id int)",
    "UPDATE schema_migrations SET name = 'x'",
    "SELECT setval('audit_logs_id_seq', 1)",
]


def test_the_app_role_runs_the_services_and_cannot_rewrite_the_log(cluster):
    from within_db.services import audit, campaigns, users

    url, owner, app = cluster
    admin_db = make_database(url)  # root, a superuser: the DBA running `roles setup`
    setup_roles(owner, app, admin_db)  # before the first migration: the owner may create
    owner_db = make_database(_as(url, owner))
    migrate.upgrade(owner_db)
    # the months the seed writes: creating partitions is the owner's job (cron), not the app's
    partitions.ensure(since="2025-12", db=owner_db)
    owner_db.close()
    result = _cli(url, "roles", "setup", "--owner", owner, "--app", app)
    assert result.exit_code == 0, result.output
    assert f'GRANT SELECT, INSERT ON "public"."audit_logs" TO "{app}"' in result.stdout

    app_url = _as(url, app)
    result = _cli(app_url, "seed", "--scale", "tiny", "--format", "json")
    assert result.exit_code == 0, result.output
    db = within_db.connect(app_url)
    try:
        migrate.require_migrated(db)
        user = users.create_user("least@example.com", PASSWORD)
        assert users.authenticate("least@example.com", PASSWORD).id == user.id
        raw, _ = users.issue_token(user)
        users.verify_token(raw)
        assert campaigns.get_user_campaigns(user.id) == []
        audit.record_event(user, "app.event", metadata={"v": 1e16})
    finally:
        db.close()
        database.initialize(None)
    result = _cli(app_url, "seed", "--scale", "tiny", "--append", "--format", "json")
    assert result.exit_code == 0, result.output
    added = {t["table"]: t["added"] for t in json.loads(result.stdout)["tables"]}
    assert added["audit_logs"] > 0 and added["users"] > 0

    db = within_db.connect(app_url)
    try:
        before = list(db.execute_sql("SELECT * FROM audit_logs ORDER BY id").fetchall())
        for sql in FORBIDDEN:
            with pytest.raises(peewee.DatabaseError) as info:
                with db.atomic():
                    db.execute_sql(sql)
                    pytest.fail(f"the app role could run: {sql}")
            assert isinstance(info.value.__cause__ or info.value.orig,
                              psycopg2.errors.InsufficientPrivilege) or \
                getattr(info.value.orig, "pgcode", None) == "42501", (sql, info.value)
        db.execute_sql("GRANT UPDATE ON audit_logs TO PUBLIC")  # only a warning: not its to give
        for privilege in ("UPDATE", "DELETE", "TRUNCATE", "TRIGGER", "REFERENCES"):
            for who in (app, "public"):
                granted, = db.execute_sql("SELECT has_table_privilege(%s, 'audit_logs', %s)",
                                          (who, privilege)).fetchone()
                assert granted is False, (who, privilege)
        assert list(db.execute_sql("SELECT * FROM audit_logs ORDER BY id").fetchall()) == before
        assert audit.verify_audit_chain().ok
    finally:
        db.close()
        database.initialize(None)
    # the owner can: which is why its credentials stay with the migration job
    owner_db = make_database(_as(url, owner))
    with owner_db.connection_context(), owner_db.atomic() as txn:
        owner_db.execute_sql("ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_no_change")
        txn.rollback()


def test_role_setup_refuses_misconfigured_roles(cluster):
    url, owner, app = cluster
    db = make_database(url)
    with db.connection_context():
        for bad_owner, bad_app, message in [
            (owner, owner, "must differ"), ("Robert'); --", app, "lower-case"),
            (owner, "no_such_role_x", "does not exist"), (owner, "root", "superuser"),
        ]:
            with pytest.raises(ValidationError, match=message):
                role_setup_sql(bad_owner, bad_app, db)
        db.execute_sql(f'GRANT "{owner}" TO "{app}"')
        with pytest.raises(ValidationError, match="owner role"):
            role_setup_sql(owner, app, db)
        db.execute_sql(f'REVOKE "{owner}" FROM "{app}"')
    result = _cli(url, "roles", "sql", "--owner", owner, "--app", owner)
    assert result.exit_code == 1 and result.stderr.startswith("Error: the owner and app")


def test_roles_need_postgresql(tmp_path):
    db = make_database(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ConfigurationError, match="need PostgreSQL"):
        role_setup_sql("within_owner", "within_app", db)
    result = _cli(f"sqlite:///{tmp_path / 'x.db'}", "roles", "sql", "--owner", "a", "--app", "b")
    assert result.exit_code == 2 and result.stderr.startswith("Error: roles need PostgreSQL")


def test_months_made_by_ensure_belong_to_the_owner_and_the_app_writes_them(cluster):
    """`partitions ensure` is a maintenance job: whoever runs it (the owner, or a DBA), a new
    month belongs to prediction_logs' owner, and the app writes and reads it through the
    parent's grants, without `roles setup` running again."""
    from within_db.models.ml_system import PredictionLog
    from within_db.services import ml_system as ml

    url, owner, app = cluster
    admin_db = make_database(url)
    setup_roles(owner, app, admin_db)
    owner_db = make_database(_as(url, owner))
    migrate.upgrade(owner_db)
    owner_db.close()
    setup_roles(owner, app, admin_db)  # the app's grants on what the migrations made
    # after it, the owner (cron) makes one month and a superuser the next
    owner_db = make_database(_as(url, owner))
    assert partitions.ensure(ahead=0, since="2031-01", today=dt.date(2031, 1, 1),
                             db=owner_db) == ["prediction_logs_2031_01"]
    owner_db.close()
    with admin_db.connection_context():
        assert partitions.ensure(ahead=0, since="2031-02", today=dt.date(2031, 2, 1),
                                 db=admin_db) == ["prediction_logs_2031_02"]
        owners = dict(admin_db.execute_sql(
            "SELECT relname, pg_get_userbyid(relowner) FROM pg_class "
            "WHERE relkind = 'r' AND relname LIKE 'prediction_logs_2031_%%'").fetchall())
    assert owners == {"prediction_logs_2031_01": owner, "prediction_logs_2031_02": owner}

    db = within_db.connect(_as(url, app))
    try:
        from within_db.models.ml_system import MLModel, ModelVersion

        model = MLModel.create(name="least-months", task="classification")
        version = ModelVersion.create(model=model, version=1, artifact_uri="s3://m")
        when = [dt.datetime(2031, 1, 5, tzinfo=dt.UTC), dt.datetime(2031, 2, 5, tzinfo=dt.UTC)]
        assert ml.log_predictions(version, [{"request_id": f"m{i}", "score": 0.5,
                                             "created_at": w} for i, w in enumerate(when)]) == 2
        assert PredictionLog.select().count() == 2
        with pytest.raises(peewee.DatabaseError):  # dropping months stays the owner's
            with db.atomic():
                db.execute_sql("DROP TABLE prediction_logs_2031_01")
    finally:
        db.close()
        database.initialize(None)
    owner_db = make_database(_as(url, owner))  # and the owner can drop both, retention
    with owner_db.connection_context():
        dropped = partitions.drop("2031-03", today=dt.date(2031, 3, 1), db=owner_db)
    assert dropped[dt.date(2031, 1, 1)] == dropped[dt.date(2031, 2, 1)] == 1
