import shutil
import subprocess
import sys
import textwrap

import peewee
import pytest

from tests.helpers import make_user
from within_db import migrate
from within_db.errors import ArgumentError, MigrationError, NotMigratedError, ValidationError
from within_db.fields import BooleanField
from within_db.models import ALL_MODELS
from within_db.models.campaigns import Campaign
from within_db.models.users import User
from within_db.schema import drift, introspect

SHIPPED = sorted(p.stem for p in migrate.migrations_dir().glob("[0-9]*.py"))


def test_up_status_down_up_again(fresh_db):
    assert [m.applied for m in migrate.status(fresh_db)] == [False] * len(SHIPPED)
    assert migrate.upgrade(fresh_db) == SHIPPED
    assert migrate.upgrade(fresh_db) == []
    assert migrate.head(fresh_db) == SHIPPED[-1]
    assert migrate.pending(fresh_db) == []
    reverted = migrate.downgrade(fresh_db, target=SHIPPED[0])
    assert reverted == list(reversed(SHIPPED))
    with fresh_db.connection_context():
        assert introspect.table_names(fresh_db) == [migrate.HISTORY_TABLE]
    assert migrate.upgrade(fresh_db) == SHIPPED
    with fresh_db.connection_context():
        tables = set(introspect.table_names(fresh_db))
    with fresh_db.scratch() as scratch:  # the models' tables, guard tables included
        expected = set(drift.models_schema(scratch, ALL_MODELS))
    assert expected | {migrate.HISTORY_TABLE} == tables


def test_fake_records_without_running(fresh_db):
    assert migrate.upgrade(fresh_db, target=SHIPPED[0], fake=True) == [SHIPPED[0]]
    with fresh_db.connection_context():
        assert "users" not in introspect.table_names(fresh_db)


def test_unknown_target_and_unapplied_down_target(fresh_db):
    with pytest.raises(MigrationError, match="unknown migration"):
        migrate.upgrade(fresh_db, target="9999_nope")
    with pytest.raises(MigrationError, match="migrate status"):
        migrate.downgrade_plan(fresh_db, target="0001_initial")
    assert migrate.downgrade_plan(fresh_db) == []


def test_require_migrated_says_what_to_run(fresh_db):
    with pytest.raises(NotMigratedError, match="within-db migrate up"):
        migrate.require_migrated(fresh_db)
    migrate.upgrade(fresh_db)
    migrate.require_migrated(fresh_db)


def test_migrations_build_the_same_schema_as_the_models(session_db):
    assert drift.check(session_db) == []


def test_check_reports_model_changes(session_db):
    field = peewee.CharField(null=True)
    User._meta.add_field("nickname", field)
    Campaign._meta.constraints.append(peewee.Check("length(name) < 500",
                                                   name="campaigns_name_length_check"))
    name_field = Campaign._meta.fields["name"]
    name_field.null = True
    try:
        diffs = drift.check(session_db)
    finally:
        User._meta.remove_field("nickname")
        Campaign._meta.constraints.pop()
        name_field.null = False
    text = "\n".join(diffs)
    assert "users: column nickname in models, missing from migrations" in text
    assert "campaigns: check campaigns_name_length_check in models" in text
    assert "campaigns: column name differs" in text
    assert drift.check(session_db) == []


def _copy_migrations(tmp_path, extra: dict[str, str]):
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in migrate.migrations_dir().glob("[0-9]*.py"):
        shutil.copy(path, folder / path.name)
    for name, body in extra.items():
        (folder / name).write_text(textwrap.dedent(body))
    return folder


BROKEN = """
    '''Create a table, add a column, then fail.'''
    from peewee import *


    def up(migrator, db):
        class Scratch(Model):
            label = CharField()

            class Meta:
                database = db
                table_name = 'scratch'

        db.create_tables([Scratch])
        migrator.migrate(migrator.add_column('users', 'nickname', CharField(null=True)))
        raise RuntimeError('boom')


    def down(migrator, db):
        pass
"""


def test_a_failing_migration_leaves_nothing_behind(fresh_db, tmp_path):
    folder = _copy_migrations(tmp_path, {"0900_broken.py": BROKEN})
    with pytest.raises(MigrationError, match="0900_broken .up. failed with RuntimeError"):
        migrate.upgrade(fresh_db, directory=folder)
    states = {m.name: m.applied for m in migrate.status(fresh_db, directory=folder)}
    assert states.pop("0900_broken") is False
    assert all(states.values())  # the earlier migrations stay applied
    with fresh_db.connection_context():
        assert "scratch" not in introspect.table_names(fresh_db)
        assert "nickname" not in introspect.describe(fresh_db, ["users"])["users"].columns


REBUILD = """
    '''Add a NOT NULL column with a default and an index to campaigns.'''
    from peewee import *


    def up(migrator, db):
        migrator.migrate(
            migrator.add_column('campaigns', 'priority', IntegerField(default=5)),
            migrator.add_index('campaigns', ('priority',), False),
        )


    def down(migrator, db):
        migrator.migrate(
            migrator.drop_index('campaigns', 'campaigns_priority'),
            migrator.drop_column('campaigns', 'priority'),
        )
"""


def test_alter_keeps_rows_and_foreign_keys(fresh_db, tmp_path):
    from tests.helpers import make_ad, make_campaign

    migrate.upgrade(fresh_db)
    with fresh_db.connection_context():
        campaign = make_campaign()
        make_ad(campaign)
        make_ad(campaign)
    folder = _copy_migrations(tmp_path, {"0900_priority.py": REBUILD})
    assert migrate.upgrade(fresh_db, directory=folder) == ["0900_priority"]
    with fresh_db.connection_context():
        described = introspect.describe(fresh_db, ["campaigns", "ads"])
        assert described["campaigns"].columns["priority"].nullable is False
        assert "campaigns_priority" in described["campaigns"].indexes
        assert described["ads"].foreign_keys["campaign_id"].on_delete == "CASCADE"
        priority = fresh_db.execute_sql("SELECT priority FROM campaigns").fetchall()
        assert priority == [(5,)]
        assert fresh_db.execute_sql("SELECT count(*) FROM ads").fetchone()[0] == 2
        with fresh_db.atomic():
            Campaign.delete().execute()  # the cascade still works after the rebuild
        assert fresh_db.execute_sql("SELECT count(*) FROM ads").fetchone()[0] == 0
    assert migrate.downgrade(fresh_db, directory=folder) == ["0900_priority"]
    assert drift.check(fresh_db) == []


def test_missing_file_for_an_applied_migration(fresh_db, tmp_path):
    folder = _copy_migrations(tmp_path, {"0900_priority.py": REBUILD})
    migrate.upgrade(fresh_db, directory=folder)
    (folder / "0900_priority.py").unlink()
    states = migrate.status(fresh_db, directory=folder)
    assert states[-1].name == "0900_priority" and states[-1].file_missing
    with pytest.raises(MigrationError, match="0900_priority.py is missing from"):
        migrate.downgrade(fresh_db, directory=folder)


def test_two_concurrent_upgrades_apply_each_migration_once(fresh_url):
    code = ("import sys, within_db; from within_db import migrate;"
            "db = within_db.connect(sys.argv[1]); print(len(migrate.upgrade(db)))")
    procs = [subprocess.Popen([sys.executable, "-c", code, fresh_url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sorted(int(out) for out, _ in results) == [0, len(SHIPPED)]
    import within_db

    db = within_db.db.make_database(fresh_url)
    with db.connection_context():
        count = db.execute_sql(f"SELECT count(*) FROM {migrate.HISTORY_TABLE}").fetchone()[0]
    assert count == len(SHIPPED)


def test_generate_writes_a_migration_that_closes_the_drift(fresh_db, tmp_path):
    from within_db.base import BaseModel, check

    folder = _copy_migrations(tmp_path, {})
    migrate.upgrade(fresh_db, directory=folder)

    class Note(BaseModel):
        user = peewee.ForeignKeyField(User, on_delete="CASCADE", backref="+")
        body = peewee.TextField()
        is_pinned = BooleanField(default=False)

        class Meta:
            table_name = "notes"
            constraints = [check("notes", "body_not_empty", "length(body) > 0")]

    models = [*ALL_MODELS, Note]
    User._meta.add_field("nickname", peewee.CharField(null=True))
    try:
        assert drift.check(fresh_db, models=models, directory=folder)
        path = drift.generate("add notes", fresh_db, models=models, directory=folder).path
        added = f"{len(SHIPPED) + 1:04d}_add_notes"
        assert path.endswith(f"{added}.py")
        source = open(path).read()
        assert "notes_body_not_empty_check" in source and "nickname" in source
        assert migrate.upgrade(fresh_db, directory=folder) == [added]
        assert drift.check(fresh_db, models=models, directory=folder) == []
        # the database keeps the new boolean 0 or 1: a CHECK on SQLite, the type on PostgreSQL
        owner = make_user()
        sql = f"INSERT INTO notes (user_id, body, is_pinned) VALUES ({fresh_db.param}, 'x', 2)"
        with pytest.raises(peewee.DatabaseError) as info, fresh_db.atomic():
            fresh_db.execute_sql(sql, (User.id.db_value(owner.id),))
        assert "notes_is_pinned_boolean_check" in str(info.value) \
            or "is of type boolean" in str(info.value)
        with pytest.raises(MigrationError, match="nothing to generate"):
            drift.generate("again", fresh_db, models=models, directory=folder)
        assert migrate.downgrade(fresh_db, directory=folder) == [added]
    finally:
        User._meta.remove_field("nickname")


def test_every_table_survives_an_alter_that_rebuilds_it(migrated_fresh_db):
    # On SQLite, playhouse rebuilds the table and re-parses its CREATE TABLE text; CHECK
    # expressions it cannot split (a comma after a nested call) would break every future
    # migration of that table. On PostgreSQL this is a plain ALTER TABLE.
    from playhouse.migrate import SchemaMigrator

    db = migrated_fresh_db
    migrator = SchemaMigrator.from_database(db)
    with db.connection_context():
        for model in ALL_MODELS:
            table = model._meta.table_name
            before = introspect.describe(db, [table])[table]
            with db.atomic() as txn:
                migrator.add_column(table, "probe", peewee.IntegerField(default=7)).run()
                after = introspect.describe(db, [table])[table]
                assert after.columns["probe"].nullable is False, table
                assert after.checks == before.checks, table
                assert after.foreign_keys == before.foreign_keys, table
                assert after.indexes == before.indexes, table  # partial ones included
                txn.rollback()


def test_migrating_an_in_memory_database_keeps_the_schema_for_the_caller():
    import within_db
    from within_db.db import database

    db = within_db.connect("sqlite:///:memory:")
    try:
        assert migrate.upgrade() == SHIPPED
        assert User.select().count() == 0  # the schema is still there
        assert migrate.pending() == []
        assert {m._meta.table_name for m in ALL_MODELS} <= set(db.table_names())
    finally:
        db.close()
        database.initialize(None)


def test_a_scope_leaves_the_callers_open_connection_open(fresh_db):
    fresh_db.connect()
    migrate.upgrade(fresh_db)
    assert not fresh_db.is_closed()
    with fresh_db.atomic():  # still usable, in the caller's own transaction
        assert migrate.status(fresh_db)[0].applied
    fresh_db.close()
    migrate.status(fresh_db)
    assert fresh_db.is_closed()  # a connection it opened itself is closed again


def test_migrations_rebuild_tables_keeping_strict_types_and_triggers(migrated_fresh_db, backend):
    # What migrations get: playhouse's migrator, which on SQLite keeps STRICT and triggers
    # through its table rebuild (plain playhouse would drop both).
    db = migrated_fresh_db
    migrator = migrate.Runner(db).migrator
    with db.connection_context():
        for model in ALL_MODELS:
            table = model._meta.table_name
            before = introspect.describe(db, [table])[table]
            with db.atomic() as txn:
                migrator.migrate(
                    migrator.add_column(table, "probe", peewee.CharField(default="p")),
                    migrator.add_not_null(table, "probe"),
                    migrator.drop_column(table, "probe"),
                )
                after = introspect.describe(db, [table])[table]
                assert after.strict is before.strict is (backend == "sqlite"), table
                assert after.triggers.keys() == before.triggers.keys(), table
                assert after.columns == before.columns and after.checks == before.checks
                txn.rollback()


def test_strict_migration_keeps_rows_triggers_and_indexes(fresh_db, backend):
    from within_db.services import audit, users

    strict = next(name for name in SHIPPED if name.endswith("_strict_tables"))
    before_strict = SHIPPED[SHIPPED.index(strict) - 1]
    migrate.upgrade(fresh_db, target=before_strict)
    with fresh_db.connection_context():
        user = users.create_user("keep@example.com", "correct horse battery staple",
                                 is_superuser=True)
        audit.record_event(user, "login")
        old = {t.name: t for t in introspect.describe(fresh_db).values()}
    migrate.upgrade(fresh_db, target=strict)  # later migrations may add indexes of their own
    with fresh_db.connection_context():
        new = introspect.describe(fresh_db)
        kept = User.get(User.email == "keep@example.com")
        assert kept.id == user.id and kept.is_superuser is True and kept.is_active is True
        for name, table in old.items():
            assert new[name].indexes == table.indexes, name
            assert new[name].triggers.keys() == table.triggers.keys(), name
            assert new[name].strict is (backend == "sqlite" and name != migrate.HISTORY_TABLE)
        assert "audit_logs_no_update" in new["audit_logs"].triggers or backend == "postgres"
        with pytest.raises(peewee.DatabaseError, match="append-only"):
            with fresh_db.atomic():
                fresh_db.execute_sql("UPDATE audit_logs SET action = 'x'")
    assert migrate.downgrade(fresh_db, target=strict)[-1] == strict
    with fresh_db.connection_context():
        assert not any(t.strict for t in introspect.describe(fresh_db).values())
        assert User.get(User.email == "keep@example.com").is_superuser is True


def test_applied_is_an_aware_utc_instant_and_older_rows_are_converted(fresh_db):
    import datetime as dt

    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    migrate.upgrade(fresh_db)
    states = migrate.status(fresh_db)
    assert all(s.applied_at.utcoffset() == dt.timedelta(0) for s in states)
    assert all(started <= s.applied_at <= dt.datetime.now(dt.UTC) for s in states)
    before = {s.name: s.applied_at for s in states}
    # reverting 0004 stores the history as playhouse did (naive local time); applying it
    # again converts those rows back
    history = next(n for n in SHIPPED if n.endswith("_migration_history_in_utc"))
    earlier = SHIPPED[:SHIPPED.index(history)]
    assert migrate.downgrade(fresh_db, target=history)[-1] == history  # and any after it
    migrate.upgrade(fresh_db)
    after = {s.name: s.applied_at for s in migrate.status(fresh_db)}
    assert {n: after[n] for n in earlier} == {n: before[n] for n in earlier}
    assert after[history].tzinfo is not None


# -- the API boundary: bad arguments are refused with WithinDBError subclasses ----------------

@pytest.mark.parametrize("call,error,message", [
    (lambda db, tmp: migrate.status("sqlite:///x.db"), ValidationError,
     "db must be a database from within_db.connect(url), not str"),
    (lambda db, tmp: migrate.status(db, 5), ArgumentError,
     "directory must be a folder path (str or Path), not int"),
    (lambda db, tmp: migrate.upgrade(db, directory=["migrations"]), ArgumentError,
     "directory must be a folder path (str or Path), not list"),
    (lambda db, tmp: migrate.project_migrations(5), ArgumentError,
     "directory must be a folder path (str or Path), not int"),
    (lambda db, tmp: migrate.create(None, tmp), ValidationError,
     "the migration name must be text, not NoneType"),
    (lambda db, tmp: migrate.create(5, tmp), ValidationError,
     "the migration name must be text, not int"),
    (lambda db, tmp: migrate.create("a\x00b", tmp), ValidationError,
     "the migration name contains a control or invisible character (U+0000)"),
    (lambda db, tmp: migrate.create("add_priority", 5), ArgumentError,
     "directory must be a folder path (str or Path), not int"),
    (lambda db, tmp: migrate.rows_at_risk(db, []), ArgumentError, "plan must be"),
    (lambda db, tmp: migrate.rows_at_risk(db, None), ArgumentError, "plan must be"),
    (lambda db, tmp: migrate.rows_at_risk(db, ["9999_nope"]), ArgumentError, "plan must be"),
])
def test_migrate_refuses_bad_arguments_and_writes_nothing(fresh_db, tmp_path, call, error,
                                                          message):
    with pytest.raises(error) as info:
        call(fresh_db, tmp_path)
    assert message in str(info.value)
    assert fresh_db.get_tables() == [] and list(tmp_path.iterdir()) == []
