"""The fields pinned on both backends: limit values stored and read back unchanged on every
write path, the refusals named model.field, and what each column type reads back as."""

import datetime as dt
import uuid
from decimal import Decimal

import peewee
import pytest

from within_db import batch
from within_db.errors import BulkInsertError, ValidationError
from within_db.fields import (
    MAX_MICROS,
    BooleanField,
    CharField,
    Codec,
    DoubleField,
    EmailField,
    IntegerField,
    JSONField,
    MoneyField,
    TextCodec,
    UTCDateTimeField,
    codec_of,
    storage_field,
)
from within_db.models.analytics import DashboardWidget, ReportExport, SavedQuery
from within_db.models.campaigns import Budget, Campaign
from within_db.models.ml_system import ModelMetric, PredictionLog
from within_db.models.users import User

from .helpers import make_campaign, make_saved_query, make_user, make_version
from .test_constraints import valid

UTC = dt.UTC
TOP = Decimal(MAX_MICROS).scaleb(-6)


def _write_every_way(model, values):
    """Write ``values`` by create, insert and bulk_insert (COPY on PostgreSQL)."""
    model.create(**values)
    model.insert(**values).execute()
    batch.bulk_insert(model, [values])
    assert model.select().count() == 3


def test_literal_backslash_u0000_text_in_json_is_stored_on_every_path(db):
    definition = {"note": "\\u0000", "list": ["a\\u0000b", "\\\\u0000"], "\\u0000": 1}
    owner = make_user()
    names = iter(range(10))

    def values():
        return {"owner": owner, "name": f"q{next(names)}", "definition": definition}

    SavedQuery.create(**values())
    SavedQuery.insert(**values()).execute()
    batch.bulk_insert(SavedQuery, [values(), values()])
    stored = [q.definition for q in SavedQuery.select().where(SavedQuery.owner == owner)]
    assert stored == [definition] * 4


def test_a_nul_in_json_is_still_refused_on_every_path(db):
    owner = make_user()
    with pytest.raises(ValidationError, match="SavedQuery.definition: expected a JSON"):
        SavedQuery.create(owner=owner, name="a", definition={"x": "\x00"})
    with pytest.raises(BulkInsertError, match="row 0: SavedQuery.definition"):
        batch.bulk_insert(SavedQuery, [{"owner": owner, "name": "b", "definition": ["\x00"]}])
    assert SavedQuery.select().count() == 0


@pytest.mark.parametrize("text", ["2026-W01-1", "20260101", "2026-1-1"])
def test_dates_are_refused_unless_canonical_on_every_path(db, text):
    values = valid(Campaign)
    values["start_date"] = text
    with pytest.raises(ValidationError, match="Campaign.start_date: expected a date or "):
        Campaign.create(**values)
    with pytest.raises(ValidationError, match="Campaign.start_date"):
        Campaign.insert(**values).execute()
    with pytest.raises(BulkInsertError, match="row 0: Campaign.start_date"):
        batch.bulk_insert(Campaign, [values])
    assert Campaign.select().count() == 0


def test_canonical_date_text_is_stored_as_the_date(db):
    values = valid(Campaign)
    values.update(start_date="2026-02-28", end_date="2026-03-01")
    _write_every_way(Campaign, values)
    assert {(c.start_date, c.end_date) for c in Campaign.select()} == {
        (dt.date(2026, 2, 28), dt.date(2026, 3, 1))}


def test_the_largest_32_bit_integer_is_stored_and_the_next_refused(db):
    values = valid(ModelMetric)
    values["step"] = 2**31 - 1
    _write_every_way(ModelMetric, values)
    assert {m.step for m in ModelMetric.select()} == {2**31 - 1}
    values["step"] = 2**31
    with pytest.raises(ValidationError, match=r"ModelMetric.step: expected an int \(32-bit\)"):
        ModelMetric.create(**values)
    with pytest.raises(BulkInsertError, match="row 0: ModelMetric.step"):
        batch.bulk_insert(ModelMetric, [values])
    assert ModelMetric.select().count() == 3


def test_the_largest_64_bit_integer_is_stored_and_the_next_refused(db):
    values = valid(ReportExport)
    values["row_count"] = 2**63 - 1
    _write_every_way(ReportExport, values)
    assert {r.row_count for r in ReportExport.select()} == {2**63 - 1}
    values["row_count"] = 2**63
    with pytest.raises(ValidationError, match=r"ReportExport.row_count: expected an int \(64"):
        ReportExport.insert(**values).execute()
    assert ReportExport.select().count() == 3


def test_the_largest_amount_is_stored_exactly_and_one_micro_more_refused(db):
    values = valid(Budget)
    values["amount_micros"] = TOP
    _write_every_way(Budget, values)
    assert {b.amount_micros for b in Budget.select()} == {TOP}
    raw = Budget.select(Budget.amount_micros).tuples()
    assert {r[0] for r in raw} == {TOP}
    values["amount_micros"] = TOP + Decimal("0.000001")
    with pytest.raises(ValidationError, match="Budget.amount_micros: out of range"):
        Budget.create(**values)
    assert Budget.select().count() == 3


def test_text_of_exactly_the_column_length_is_stored_and_one_more_refused(db):
    campaign = make_campaign(name="n" * 200)
    assert Campaign.get_by_id(campaign.id).name == "n" * 200
    with pytest.raises(ValidationError, match="Campaign.name: expected a str of at most 200 "
                                              "characters, got 201"):
        make_campaign(name="n" * 201)


def test_instants_read_back_as_utc_on_both_backends(db):
    plus9 = dt.timezone(dt.timedelta(hours=9))
    user = make_user(last_login_at=dt.datetime(2026, 5, 1, 9, 0, tzinfo=plus9))
    back = User.get_by_id(user.id).last_login_at
    assert back == dt.datetime(2026, 5, 1, 0, 0, tzinfo=UTC) and back.utcoffset() == dt.timedelta(0)
    field = UTCDateTimeField()
    assert field.python_value(None) is None
    assert field.python_value("2026-01-01 00:00:00.000000+00:00") == dt.datetime(
        2026, 1, 1, tzinfo=UTC)
    moved = field.python_value(dt.datetime(2026, 1, 1, 9, 0, tzinfo=plus9))
    assert moved.tzinfo is UTC and moved.hour == 0


def test_money_reads_back_as_decimal_units_and_null_as_none():
    field = MoneyField()
    assert field.python_value(None) is None
    assert field.python_value(1_500_000) == Decimal("1.5")
    assert field.python_value(-1) == Decimal("-0.000001")


def test_refusals_name_the_model_and_field_or_the_bare_field():
    unbound = IntegerField()
    unbound.name = "n"
    assert unbound.label == "n"
    bare = JSONField()
    bare.name = "options"
    with pytest.raises(ValidationError, match=r"^options: expected a JSON-serialisable value"):
        bare.db_value({1, 2})
    with pytest.raises(ValidationError, match=r"^DashboardWidget.x: expected an int"):
        DashboardWidget.x.db_value("1")
    with pytest.raises(ValidationError, match=r"^Campaign.total_budget_micros: not a number"):
        Campaign.total_budget_micros.db_value("lots")


def test_null_and_sql_expressions_pass_every_field_untouched():
    expression = peewee.SQL("1")
    for field in (DashboardWidget.x, SavedQuery.definition, Campaign.start_date,
                  Campaign.total_budget_micros, Campaign.owner):
        assert field.db_value(None) is None
        assert field.db_value(expression) is expression


def test_json_fields_store_text_peewee_can_read(db):
    query = make_saved_query(definition={"b": [1, 2.5], "a": "é"})
    assert SavedQuery.get_by_id(query.id).definition == {"b": [1, 2.5], "a": "é"}


def test_foreign_keys_take_a_model_instance_or_its_key_through_the_target_codec(db):
    user = make_user()
    field = Campaign.owner
    assert field.db_value(user) == field.db_value(user.id) == field.db_value(str(user.id))
    assert codec_of(field) is codec_of(User.id)
    assert storage_field(field) is User.id and storage_field(User.email) is User.email
    with pytest.raises(ValidationError, match="Campaign.owner: expected a UUID"):
        field.db_value("not-a-uuid")
    version = make_version()
    row = PredictionLog.create(model_version=version, request_id=uuid.uuid4().hex, score=0.1)
    assert PredictionLog.model_version.db_value(version) == version.id
    assert row.model_version_id == version.id


def test_a_foreign_key_to_a_plain_peewee_field_uses_that_fields_conversion():
    class Parent(peewee.Model):
        code = peewee.CharField(primary_key=True)

    from within_db.fields import ForeignKeyField

    class Child(peewee.Model):
        parent = ForeignKeyField(Parent, on_delete="CASCADE")

    assert Child.parent.db_value(Parent(code="p1")) == "p1"
    assert Child.parent.db_value(12) == "12"  # CharField.db_value, no codec refusal
    assert type(codec_of(Child.parent)) is Codec


def test_plain_peewee_fields_get_the_pass_through_codec():
    codec = codec_of(peewee.CharField())
    assert type(codec) is Codec and codec.validate(5) == 5
    assert isinstance(codec_of(SavedQuery.name), TextCodec)


def test_booleans_on_integer_columns_get_a_named_check_on_sqlite_only(db, backend):
    class Flagged(peewee.Model):
        is_on = BooleanField(default=False)

        class Meta:
            table_name = "spec_flags"

    Flagged._meta.set_database(db)
    Flagged.create_table()
    declared = {c.name: c.data_type.upper() for c in db.get_columns("spec_flags")}
    assert declared["is_on"] == ("INTEGER" if backend == "sqlite" else "BOOLEAN")
    check = "spec_flags_is_on_boolean_check"
    sql = "INSERT INTO spec_flags (is_on) VALUES (2)"
    if backend == "sqlite":
        with pytest.raises(peewee.IntegrityError, match=check):
            with db.atomic():
                db.execute_sql(sql)
    else:  # a real BOOLEAN column refuses the integer itself
        with pytest.raises(peewee.ProgrammingError):
            with db.atomic():
                db.execute_sql(sql)
    Flagged.create(is_on=True)
    assert [f.is_on for f in Flagged.select()] == [True]


def test_column_classes_carry_their_limits_and_pass_peewee_options_through():
    plain = CharField()
    assert plain.max_length == 255 and plain.codec.validate("x" * 255) == "x" * 255
    with pytest.raises(ValidationError, match="at most 255 characters, got 256"):
        plain.codec.validate("x" * 256)
    short = CharField(10, True, default="d")  # positional null, as peewee takes it
    assert (short.max_length, short.null, short.default) == (10, True, "d")
    assert short.codec.describe() == {"type": "str", "max_length": 10}
    email = EmailField()
    assert email.max_length == 254 and email.codec.validate(" A@B.C ") == "a@b.c"
    with pytest.raises(ValidationError, match="at most 254 characters"):
        email.codec.validate("a" * 255)
    small = EmailField(8, True, unique=True)
    assert (small.max_length, small.null, small.unique) == (8, True, True)
    assert small.codec.describe() == {"type": "str", "max_length": 8}
    strict, lenient = DoubleField(), DoubleField(True, allow_nonfinite=True, default=0.0)
    with pytest.raises(ValidationError, match="NaN and infinities"):
        strict.codec.validate(float("nan"))
    assert lenient.codec.validate(float("inf")) == float("inf")
    assert (strict.null, lenient.null, lenient.default) == (False, True, 0.0)


def test_json_fields_take_peewee_options_positional_and_named():
    assert JSONField(null=True, default=dict).null is True

    class Doc(peewee.Model):
        body = JSONField(lambda value: "[]")  # peewee's first argument: dumps

        class Meta:
            database = peewee.SqliteDatabase(":memory:")
            table_name = "doc"

    # db_value() is a SQL function call on a bound field: what the table stores is the test
    Doc.create_table()
    Doc.create(body=[1, 2])
    assert Doc._meta.database.execute_sql("SELECT body FROM doc").fetchall() == [("[]",)]
    assert Doc.body.python_value('{"a": 1}') == {"a": 1}
    with pytest.raises(ValidationError, match="Doc.body: expected a JSON-serialisable value"):
        Doc.body.db_value({1})  # the codec still checks first
