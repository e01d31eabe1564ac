"""Value rules: every write path refuses the same values on both backends, and SQLite enforces
column types in the database (STRICT tables) as PostgreSQL does."""

import datetime as dt
import math
import sqlite3
import uuid
from decimal import Decimal

import peewee
import pytest

import within_db
from within_db import batch
from within_db.errors import BulkInsertError, ConfigurationError, ValidationError
from within_db.fields import TEXT_MAX_LENGTH, codec_of
from within_db.models import ALL_MODELS
from within_db.models.campaigns import Campaign
from within_db.models.ml_system import PredictionLog
from within_db.models.users import Credential, Permission, User
from within_db.services import ml_system as ml
from within_db.services import users

from .helpers import make_user, make_version

UTC = dt.UTC
PASSWORD = "correct horse battery staple"


# -- the cases that motivated the rules ----------------------------------------------------


@pytest.mark.parametrize("flag", ["is_superuser", "is_active"])
@pytest.mark.parametrize("value", ["false", "no", "true", 0, 1])
def test_booleans_accept_only_bool(db, flag, value):
    with pytest.raises(ValidationError, match=f"User.{flag}: expected a bool, got"):
        users.create_user("x@example.com", PASSWORD, **{flag: value})
    assert User.select().count() == 0


def test_text_in_a_score_is_refused_on_every_write_path(db):
    version = make_version()
    with pytest.raises(ValidationError, match="PredictionLog.score: expected a finite float"):
        PredictionLog.create(model_version=version, request_id="r1", score="high")
    with pytest.raises(BulkInsertError, match="row 0: PredictionLog.score: expected a finite"):
        ml.log_predictions(version, [{"request_id": "r2", "score": "high"}])
    with pytest.raises(ValidationError, match="PredictionLog.score"):
        PredictionLog.insert(model_version=version.id, request_id="r3", score="high").execute()
    with pytest.raises(ValidationError, match="PredictionLog.score"):
        PredictionLog.insert_many([{"model_version": version.id, "request_id": "r4",
                                    "score": "0.5"}]).execute()
    PredictionLog.create(model_version=version, request_id="ok", score=0.5)
    with pytest.raises(ValidationError, match="PredictionLog.score"):
        PredictionLog.update(score="high").execute()
    assert [p.score for p in PredictionLog.select()] == [0.5]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinite_scores_are_refused(db, bad):
    version = make_version()
    with pytest.raises(ValidationError, match="NaN and infinities are refused"):
        PredictionLog.create(model_version=version, request_id="r", score=bad)
    with pytest.raises(BulkInsertError, match="NaN and infinities are refused"):
        ml.log_predictions(version, [{"request_id": "r", "score": bad}])
    assert PredictionLog.select().count() == 0


def test_overlong_and_nul_text_is_refused_before_the_database(db):
    owner = make_user()
    base = dict(owner=owner, objective="sales", platform="meta", start_date=dt.date(2026, 1, 1))
    for name, message in [("x" * 1_000_000, "at most 200 characters, got 1,000,000"),
                          ("a\x00b", "without NUL characters"),
                          ("\ud800", "without lone surrogates")]:
        with pytest.raises(ValidationError, match=f"Campaign.name: expected .*{message}"):
            Campaign.create(name=name, **base)
        with pytest.raises(BulkInsertError, match="Campaign.name"):
            batch.bulk_insert(Campaign, [{"name": name, **base, "owner": owner.id}])
    assert Campaign.select().count() == 0


def test_text_fields_have_one_limit_on_both_backends(db):
    version = make_version()
    PredictionLog.create(model_version=version, request_id="x" * 64, score=0.1)
    with pytest.raises(ValidationError, match="at most 64 characters"):
        PredictionLog.create(model_version=version, request_id="x" * 65, score=0.1)
    job = ml.queue_training_job(version.model)
    job.error = "e" * TEXT_MAX_LENGTH
    job.save()
    job.error += "e"
    with pytest.raises(ValidationError, match="TrainingJob.error: expected a str of at most "
                                              "1,048,576 characters"):
        job.save()


def test_secret_values_never_appear_in_refusals(db):
    user = make_user()
    secret = b"$argon2id$v=19$m=19456,t=2,p=1$secret"
    with pytest.raises(ValidationError) as info:
        Credential.create(user=user, password_hash=secret)
    assert "Credential.password_hash: expected a str" in str(info.value)
    assert "argon2" not in str(info.value)
    with pytest.raises(BulkInsertError) as info:
        batch.bulk_insert(Credential, [{"user": user.id, "password_hash": "s3cret\x00"}])
    assert "s3cret" not in str(info.value)


def test_integers_refuse_bool_float_text_and_out_of_range(db):
    version = make_version()
    for bad in [True, 1.0, "1", 2**31]:
        with pytest.raises(ValidationError, match="ModelVersion.version: expected an int"):
            make_version(model=version.model, version=bad)
    with pytest.raises(ValidationError, match=r"out of range \[-2147483648, 2147483647\]"):
        make_version(model=version.model, version=2**31)


def test_the_copy_injection_payload_is_a_refused_value(db):
    version = make_version()
    payload = f"{version.id}\t9\t\\N\t0.5\t{{}}\t\\N\t2026-01-01 00:00:00+00\n{version.id}"
    with pytest.raises(BulkInsertError, match="PredictionLog.model_version: expected an int"):
        batch.bulk_insert(PredictionLog, [{"model_version": payload, "request_id": "real",
                                           "score": 0.1}])
    assert PredictionLog.select().count() == 0


# -- COPY text: every value escaped, whatever the column ---------------------------------------

PAYLOADS = ["1\tforged\t\\N\n2", "back\\slash", "\\N", "cr\rlf", "line\u2028para\u2029end",
            "\\.\n", "tab\t"]


def _prediction_row(version, i):
    return {"model_version": version.id, "request_id": f"req-{i}", "score": 0.5,
            "features": {"k": 1}, "latency_ms": 1.0,
            "created_at": dt.datetime(2026, 1, 1, tzinfo=UTC), "ad": None}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_copy_payloads_in_every_column_give_the_intended_rows_or_nothing(db, payload):
    version = make_version()
    owner = make_user()
    fields = ["model_version", "request_id", "score", "features", "latency_ms", "created_at",
              "ad"]
    campaign_fields = ["id", "owner", "name", "objective", "platform", "status", "start_date",
                       "end_date", "total_budget_micros", "currency", "metadata", "created_at"]
    for model, names, make in [
        (PredictionLog, fields, lambda: _prediction_row(version, uuid.uuid4().hex)),
        (Campaign, campaign_fields, lambda: {
            "id": uuid.uuid4(), "owner": owner.id, "name": "c", "objective": "sales",
            "platform": "meta", "status": "draft", "start_date": dt.date(2026, 1, 1),
            "end_date": None, "total_budget_micros": Decimal(1), "currency": "USD",
            "metadata": {"a": 1}, "created_at": dt.datetime(2026, 1, 1, tzinfo=UTC)}),
    ]:
        for name in names:
            for value in (payload, {"nested": [payload]}):
                rows = [make(), {**make(), name: value}, make()]
                before = model.select().count()
                try:
                    batch.bulk_insert(model, rows)
                except BulkInsertError as exc:
                    assert exc.position == 1, (name, exc)
                    assert model.select().count() == before, name
                    continue
                assert model.select().count() == before + 3, name
                key = model._meta.primary_key
                stored = model.get(key == rows[1][key.name]) if key.name in rows[1] else \
                    model.get(model.request_id == rows[1]["request_id"])
                assert getattr(stored, name) == value, name


# -- bulk_insert keys -----------------------------------------------------------------------


def test_every_rows_keys_are_checked(db):
    version = make_version()
    good = [{"model_version": version.id, "request_id": f"r{i}", "score": 0.1} for i in range(5)]
    rows = [*good[:2], {**good[2], "scroe": 0.5}, *good[3:]]
    with pytest.raises(BulkInsertError, match="row 2: unknown fields scroe") as info:
        batch.bulk_insert(PredictionLog, rows)
    assert info.value.position == 2
    rows = [*good[:3], {"model_version": version.id, "score": 0.1}]  # request_id missing
    with pytest.raises(BulkInsertError, match="row 3: missing required field 'request_id'"):
        batch.bulk_insert(PredictionLog, rows)
    rows = [good[0], {**good[1], "model_version_id": version.id}]
    with pytest.raises(BulkInsertError, match="row 1: 'model_version' given twice"):
        batch.bulk_insert(PredictionLog, rows)
    assert PredictionLog.select().count() == 0


def test_rows_keyed_by_column_name_and_mixed_key_sets_work(db):
    version = make_version()
    rows = [{"model_version_id": version.id, "request_id": "a", "score": 0.1},
            {"model_version": version.id, "request_id": "b", "score": 0.2, "latency_ms": 3.0},
            {"model_version_id": version.id, "request_id": "c", "score": 0.3},
            (version.id, "d", 0.4)]
    assert batch.bulk_insert(PredictionLog, rows[:3]) == 3
    assert batch.bulk_insert(PredictionLog, rows[3:],
                             fields=["model_version", "request_id", "score"]) == 1
    got = {p.request_id: (p.score, p.latency_ms) for p in PredictionLog.select()}
    assert got == {"a": (0.1, None), "b": (0.2, 3.0), "c": (0.3, None), "d": (0.4, None)}
    with pytest.raises(BulkInsertError, match="row 1: expected 3 values, got 2"):
        batch.bulk_insert(PredictionLog, [(version.id, "e", 0.1), (version.id, "f")],
                          fields=["model_version", "request_id", "score"])
    with pytest.raises(BulkInsertError, match="row 0: expected a dict or a tuple"):
        batch.bulk_insert(PredictionLog, [42])


def test_model_instances_stand_for_their_keys_in_bulk_rows(db):
    version = make_version()
    batch.bulk_insert(PredictionLog, [{"model_version": version, "request_id": "m",
                                       "score": 1}])
    assert PredictionLog.get().model_version_id == version.id
    assert PredictionLog.get().score == 1.0 and isinstance(PredictionLog.get().score, float)


# -- streaming every model ------------------------------------------------------------------


def _data(rows):
    return [r.__data__ for r in rows]


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_stream_matches_list_for_every_model(seeded_db, model):
    query = model.select().order_by(*model._meta.get_primary_keys())
    assert query.count() > 0, "the tiny seed fills every table"
    assert list(batch.stream(query.dicts(), chunk_size=7)) == list(query.dicts())
    assert list(batch.stream(query.tuples(), chunk_size=7)) == list(query.tuples())
    assert _data(batch.stream(query, chunk_size=7)) == _data(query)


def test_dataframes_of_uuid_keyed_tables(seeded_db):
    pd = pytest.importorskip("pandas")
    frame = batch.to_dataframe(Campaign.select())
    assert len(frame) == Campaign.select().count()
    assert str(frame["id"].dtype) == "string" and str(frame["start_date"].dtype).startswith(
        "datetime64")
    assert set(frame["id"]) == {str(c.id) for c in Campaign.select()}
    users_frame = batch.to_dataframe(User.select())
    assert str(users_frame["is_active"].dtype) == "boolean"
    assert isinstance(users_frame, pd.DataFrame)


# -- the database enforces types too -------------------------------------------------------


def _raw_insert(db, **values):
    with db.atomic():
        peewee.Table("prediction_logs").bind(db).insert(**values).execute()


def test_outside_writers_cannot_put_text_in_a_number_column(db, backend):
    version = make_version()
    base = {"model_version_id": version.id, "request_id": "raw", "features": "{}",
            "created_at": "2026-01-01 00:00:00.000000+00:00"}
    refused = peewee.IntegrityError if backend == "sqlite" else peewee.DataError
    for column, value in [("score", "high"), ("model_version_id", "one")]:
        with pytest.raises(refused):
            _raw_insert(db, **{**base, "score": 0.5, column: value})
    assert PredictionLog.select().count() == 0


def test_outside_writers_cannot_store_other_booleans(db, backend):
    table = peewee.Table("users").bind(db)
    refused = peewee.IntegrityError if backend == "sqlite" else peewee.DataError
    with pytest.raises(refused):
        with db.atomic():
            table.insert(id=uuid.uuid4().hex, email="b@example.com", full_name="",
                         is_active="2", is_superuser=False, created_at="2026-01-01",
                         updated_at="2026-01-01").execute()
    assert User.select().count() == 0


def test_every_sqlite_table_is_strict(migrated_fresh_db, backend):
    from within_db.schema import introspect

    with migrated_fresh_db.connection_context():
        described = introspect.describe(migrated_fresh_db, [m._meta.table_name
                                                            for m in ALL_MODELS])
    assert {t.strict for t in described.values()} == {backend == "sqlite"}


def test_connect_names_the_sqlite_version_it_needs(monkeypatch):
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(ConfigurationError, match="SQLite 3.31.1 is too old: within_db needs "
                                                 "SQLite 3.37.0 or newer"):
        within_db.connect("sqlite:///:memory:")


# -- the codecs on their own -----------------------------------------------------------------


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_every_field_of_every_model_has_a_codec(model):
    for field in model._meta.sorted_fields:
        codec = codec_of(field)
        assert codec.python_type is not object, f"{model.__name__}.{field.name}"


@pytest.mark.parametrize(("field", "text", "value"), [
    (User.is_active, "yes", True), (User.is_active, "F", False),
    (PredictionLog.score, "0.25", 0.25), (PredictionLog.id, "12", 12),
    (User.id, "12345678-1234-5678-1234-567812345678",
     uuid.UUID("12345678-1234-5678-1234-567812345678")),
    (Campaign.start_date, "2026-02-03", dt.date(2026, 2, 3)),
    (User.created_at, "2026-02-03T04:05:06", dt.datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)),
    (Campaign.total_budget_micros, "1.5", Decimal("1.5")),
    (User.email, " A@B.C ", "a@b.c"),
])
def test_codecs_parse_cli_text(field, text, value):
    assert codec_of(field).parse(text) == value


@pytest.mark.parametrize(("field", "text"), [
    (User.is_active, "maybe"), (PredictionLog.score, "nan"), (PredictionLog.id, "1.5"),
    (User.id, "12345678123456781234567812345678"), (Campaign.start_date, "2026-02-30"),
    (Campaign.total_budget_micros, "1e400"), (Campaign.metadata, "{}"),
])
def test_codecs_refuse_bad_cli_text(field, text):
    with pytest.raises(ValidationError):
        codec_of(field).parse(text)


def test_a_model_instance_is_refused_outside_foreign_keys(db):
    # peewee renders an instance as its primary key and skips db_value for it
    permission = Permission.create(codename="reports.view")
    user = User.create(email="owner@example.com")
    for write in (lambda: User.create(email="x@example.com", is_superuser=permission),
                  lambda: User.insert(email="y@example.com", full_name=permission).execute(),
                  lambda: User.update(is_active=permission).execute()):
        with pytest.raises(ValidationError, match="expected a value, got a Permission"):
            write()
    user.is_superuser = permission
    with pytest.raises(ValidationError, match="User.is_superuser"):
        user.save()
    assert User.select().count() == 1
    assert User.get_by_id(user.id).is_superuser is False and User.get_by_id(user.id).is_active
