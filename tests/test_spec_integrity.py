"""integrity.py pinned: every kind of violation gets PostgreSQL's constraint name on both
backends, and conflict_on converts only the constraint it names."""

import datetime as dt

import peewee
import pytest

from within_db.errors import ConflictError
from within_db.integrity import Violation, conflict_on, violation
from within_db.models.analytics import ReportExport, ShareLink
from within_db.models.campaigns import Ad, AdMetric, Campaign
from within_db.models.ml_system import ModelVersion, PredictionLog
from within_db.models.users import AuditLog, Credential, Role, User

from .helpers import raises_violation
from .test_constraints import valid

# a uuid, an integer id, a text-keyed audit log (SQLite triggers refuse REPLACE), and a table
# that is partitioned on PostgreSQL (its key holds the partition column there)
PRIMARY_KEYS = [User, Campaign, Ad, AdMetric, Credential, Role, ModelVersion, ShareLink,
                ReportExport, AuditLog, PredictionLog]


@pytest.mark.parametrize("model", PRIMARY_KEYS, ids=lambda m: m._meta.table_name)
def test_a_repeated_primary_key_is_named_table_pkey(db, model):
    row = model.create(**valid(model))
    key = row.get_id()
    again = valid(model)
    again[model._meta.primary_key.name] = key
    if model is PredictionLog:
        again["created_at"] = row.created_at  # PostgreSQL's key is (id, created_at)
    before = model.select().count()
    with raises_violation(db, "unique", f"{model._meta.table_name}_pkey"):
        model.insert(**again).execute()
    assert model.select().count() == before


def _scratch(db, sql):
    # DDL inside the test's transaction: rolled back with it on both backends
    db.execute_sql(sql)


def test_a_table_unique_constraint_is_named_table_columns_key(db):
    _scratch(db, "CREATE TABLE spec_pairs (id INTEGER PRIMARY KEY, a INTEGER, b INTEGER, "
                 "c INTEGER, UNIQUE (a, b))")
    # a plain index on the same columns and a unique one on others must not be taken for it
    _scratch(db, "CREATE INDEX spec_pairs_a_b ON spec_pairs (a, b)")
    _scratch(db, "CREATE UNIQUE INDEX spec_pairs_c ON spec_pairs (c)")
    db.execute_sql("INSERT INTO spec_pairs (id, a, b, c) VALUES (1, 1, 2, 1)")
    with raises_violation(db, "unique", "spec_pairs_a_b_key"):
        db.execute_sql("INSERT INTO spec_pairs (id, a, b, c) VALUES (2, 1, 2, 2)")
    with raises_violation(db, "unique", "spec_pairs_c"):
        db.execute_sql("INSERT INTO spec_pairs (id, a, b, c) VALUES (3, 5, 5, 1)")
    with raises_violation(db, "unique", "spec_pairs_pkey"):
        db.execute_sql("INSERT INTO spec_pairs (id, a, b, c) VALUES (1, 7, 7, 7)")
    assert db.execute_sql("SELECT COUNT(*) FROM spec_pairs").fetchone()[0] == 1


def test_a_composite_primary_key_is_named_table_pkey_whatever_its_column_order(db):
    _scratch(db, "CREATE TABLE spec_keys (a INTEGER NOT NULL, b INTEGER NOT NULL, "
                 "PRIMARY KEY (b, a))")
    db.execute_sql("INSERT INTO spec_keys (a, b) VALUES (1, 2)")
    with raises_violation(db, "unique", "spec_keys_pkey"):
        db.execute_sql("INSERT INTO spec_keys (a, b) VALUES (1, 2)")


def test_a_unique_index_is_found_by_its_columns_in_order(db):
    _scratch(db, "CREATE TABLE spec_order (a INTEGER, b INTEGER)")
    _scratch(db, "CREATE UNIQUE INDEX spec_order_b_a ON spec_order (b, a)")
    _scratch(db, "CREATE UNIQUE INDEX spec_order_b ON spec_order (b)")
    db.execute_sql("INSERT INTO spec_order (a, b) VALUES (1, 2)")
    with raises_violation(db, "unique", "spec_order_b"):
        db.execute_sql("INSERT INTO spec_order (a, b) VALUES (3, 2)")


def test_a_sqlite_unique_failure_without_an_index_falls_back_to_table_and_columns():
    # a trigger may raise SQLite's own message (migration 0006 does) for columns no unique
    # index covers: the name is then made of the table and the columns
    from within_db.db import make_database

    db = make_database("sqlite:///:memory:")
    db.execute_sql("CREATE TABLE t (a INTEGER, b INTEGER)")
    db.execute_sql("CREATE TRIGGER t_once BEFORE INSERT ON t WHEN EXISTS (SELECT 1 FROM t) "
                   "BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: t.a, t.b'); END")
    db.execute_sql("INSERT INTO t VALUES (1, 2)")
    with pytest.raises(peewee.IntegrityError) as info:
        db.execute_sql("INSERT INTO t VALUES (1, 2)")
    assert violation(info.value, db) == Violation("unique", "t_a_b")
    db.close()


def test_violation_of_an_error_it_cannot_read_is_none(db):
    assert violation(peewee.IntegrityError(), db) is None
    assert violation(peewee.IntegrityError("something else entirely"), db) is None


def test_a_deleted_restricted_parent_is_a_foreign_key_violation(db):
    campaign = Campaign.create(**valid(Campaign))
    with raises_violation(db, "foreign_key", "campaigns_owner_id_fkey"):
        User.delete().where(User.id == campaign.owner_id).execute()
    assert User.select().where(User.id == campaign.owner_id).exists()


# -- conflict_on ----------------------------------------------------------------------------


def _duplicate_role(db):
    Role.create(name="twice")
    with db.atomic():
        Role.insert(name="twice").execute()


def test_conflict_on_turns_its_constraint_into_a_conflict_without_the_driver_error(db):
    with pytest.raises(ConflictError) as info:
        with conflict_on("roles_name", "that role exists"):
            _duplicate_role(db)
    assert str(info.value) == "that role exists"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert Role.select().count() == 1


@pytest.mark.parametrize("named", ["users_email", "roles_name_check", "roles", ""])
def test_conflict_on_lets_every_other_constraint_through_unchanged(db, named):
    with pytest.raises(peewee.IntegrityError) as info:
        with conflict_on(named, "never"):
            _duplicate_role(db)
    assert violation(info.value, db) == Violation("unique", "roles_name")


def test_conflict_on_passes_other_errors_and_quiet_blocks(db):
    with conflict_on("roles_name", "never"):
        Role.create(name="once")
    with pytest.raises(KeyError):
        with conflict_on("roles_name", "never"):
            raise KeyError("x")


def test_a_row_outside_every_partition_names_the_partitioned_table(db, backend):
    values = valid(PredictionLog)
    values["created_at"] = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
    if backend == "postgres":
        with raises_violation(db, "no_partition", "prediction_logs"):
            PredictionLog.insert(**values).execute()
        assert PredictionLog.select().count() == 0
    else:  # one plain table on SQLite: any instant is stored
        PredictionLog.insert(**values).execute()
        assert PredictionLog.select().count() == 1
