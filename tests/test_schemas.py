"""The pydantic schemas: generated from the models, validated by the field codecs,
serialised like to_dict(), never carrying a private field."""

import datetime as dt
import json
import uuid
from decimal import Decimal

import peewee
import pydantic
import pytest
from click.testing import CliRunner

from within_db import schemas
from within_db.base import one_of
from within_db.cli import cli
from within_db.models import ALL_MODELS
from within_db.models.campaigns import Campaign
from within_db.models.ml_system import PredictionLog

from .helpers import make_ad, make_campaign, make_user

MODEL_IDS = [m.__name__ for m in ALL_MODELS]


@pytest.mark.parametrize("model", ALL_MODELS, ids=MODEL_IDS)
def test_every_read_schema_matches_its_model(model):
    read = schemas.READ[model]
    assert read.__name__ == f"{model.__name__}Read"
    assert getattr(schemas, read.__name__) is read
    private = set(getattr(model._meta, "private_fields", ()))
    expected = [schemas.key(f) for f in model._meta.sorted_fields if f.name not in private]
    assert list(read.model_fields) == expected
    document = read.model_json_schema(mode="serialization")
    assert set(document["required"]) == set(expected)
    for field in model.public_fields():
        prop = document["properties"][schemas.key(field)]
        nullable = "anyOf" in prop and {"type": "null"} in prop["anyOf"]
        assert nullable == field.null, field
        shape = next((p for p in prop.get("anyOf", [prop]) if p != {"type": "null"}), prop)
        if field.choices:
            assert shape.get("enum", [shape.get("const")]) == [v for v, _ in field.choices]
        elif isinstance(field, peewee.CharField) and not isinstance(field,
                                                                   peewee.ForeignKeyField):
            assert shape["maxLength"] == field.max_length


@pytest.mark.parametrize("model", ALL_MODELS, ids=MODEL_IDS)
def test_no_private_field_in_any_schema(model):
    private = set(getattr(model._meta, "private_fields", ()))
    for name, schema in schemas.schemas_by_name().items():
        if name.startswith(model.__name__):
            assert not private & set(schema.model_fields), name
    if private:
        text = json.dumps(schemas.json_schema(model.__name__))
        assert not any(p in text for p in private)


@pytest.mark.parametrize("model", ALL_MODELS, ids=MODEL_IDS)
def test_choices_are_exactly_the_check_constraints(model):
    rendered = {str(c.nodes[-1].sql) for c in model._meta.constraints or []}
    for field in model._meta.sorted_fields:
        if field.choices:
            values = tuple(v for v, _ in field.choices)
            assert f"CHECK ({one_of(field.column_name, values)})" in rendered, field
    # and no one_of CHECK lacks its choices
    columns_with_choices = {f.column_name for f in model._meta.sorted_fields if f.choices}
    for sql in rendered:
        body = sql[len("CHECK ("):-1]
        if " IN (" in body and body.split(" IN (")[0].isidentifier():
            assert body.split(" IN (")[0] in columns_with_choices, sql


@pytest.mark.parametrize("model", ALL_MODELS, ids=MODEL_IDS)
def test_read_json_equals_to_dict_for_seeded_rows(seeded_db, model):
    rows = list(model.select().order_by(model._meta.primary_key).limit(25))
    assert rows, f"the tiny seed left {model._meta.table_name} empty"
    read = schemas.READ[model]
    for row in rows:
        assert read.model_validate(row).model_dump(mode="json") == row.to_dict()
        assert read.model_validate(row.to_dict()).model_dump(mode="json") == row.to_dict()


@pytest.mark.parametrize("model", list(schemas.WRITE), ids=lambda m: m.__name__)
def test_write_schemas_take_the_model_fields_defaults_and_nullability(model):
    create, update = schemas.WRITE[model]
    by_key = {schemas.key(f): f for f in model._meta.sorted_fields}
    for name, info in create.model_fields.items():
        if name == "password":
            continue
        field = by_key[name]
        if field.default is None and not field.null:
            assert info.is_required(), name
        elif callable(field.default):
            assert info.default_factory() == field.default(), name
        else:
            assert info.default == field.default, name
    for name, info in update.model_fields.items():
        assert not info.is_required()
        assert name in by_key


VALID_CAMPAIGN = dict(name="Spring", objective="sales", platform="meta",
                      start_date="2026-03-01", total_budget_micros="1500.25")

HOSTILE_CAMPAIGN = [
    ("unknown field", {"owner_id": str(uuid.uuid4())}),
    ("bad enum", {"platform": "myspace"}),
    ("name too long", {"name": "x" * 201}),
    ("name not text", {"name": 12}),
    ("money float", {"total_budget_micros": 0.1}),
    ("money 7 places", {"total_budget_micros": "1.0000001"}),
    ("money not a number", {"total_budget_micros": "lots"}),
    ("money out of range", {"total_budget_micros": "1e40"}),
    ("date garbage", {"start_date": "yesterday"}),
    ("metadata not JSON", {"metadata": {"a": object()}}),
]


@pytest.mark.parametrize("case,change", HOSTILE_CAMPAIGN, ids=[c for c, _ in HOSTILE_CAMPAIGN])
def test_create_refuses_hostile_values(db, case, change):
    with pytest.raises(pydantic.ValidationError) as info:
        schemas.CampaignCreate.model_validate({**VALID_CAMPAIGN, **change})
    assert len(info.value.errors()) >= 1


def test_create_accepts_valid_values_and_keeps_money_exact():
    made = schemas.CampaignCreate.model_validate(VALID_CAMPAIGN)
    assert made.total_budget_micros == Decimal("1500.25")
    assert made.status == "draft" and made.currency == "USD"
    assert made.metadata == {}
    assert made.start_date == dt.date(2026, 3, 1)


def test_codec_errors_are_the_field_codecs_own_messages():
    with pytest.raises(pydantic.ValidationError) as info:
        schemas.CampaignCreate.model_validate({**VALID_CAMPAIGN,
                                               "total_budget_micros": "1.0000001"})
    assert "more than 6 decimal places" in str(info.value)


def test_strict_types_refuse_coercion():
    for change in ({"is_active": "false"}, {"is_active": 0}, {"full_name": 5}):
        with pytest.raises(pydantic.ValidationError):
            schemas.UserUpdate.model_validate(change)
    scores = schemas.create_schema(PredictionLog, ("score", "latency_ms"))
    for bad in ({"score": float("nan")}, {"score": float("inf")}, {"score": "0.5"},
                {"score": True}, {"score": 0.5, "latency_ms": "1"}):
        with pytest.raises(pydantic.ValidationError):
            scores.model_validate(bad)
    assert scores.model_validate({"score": 1}).score == 1.0


def test_update_keeps_unset_fields_apart_and_refuses_null_on_required_columns():
    update = schemas.CampaignUpdate.model_validate({"name": "New", "end_date": None})
    assert schemas.changes(update) == {"name": "New", "end_date": None}
    with pytest.raises(pydantic.ValidationError):
        schemas.CampaignUpdate.model_validate({"name": None})


def test_naive_instants_are_refused_like_the_field_does():
    create = schemas.create_schema(Campaign, ("created_at",))
    with pytest.raises(pydantic.ValidationError):
        create.model_validate({"created_at": "2026-01-01T00:00:00"})
    aware = create.model_validate({"created_at": "2026-01-01T02:00:00+02:00"})
    assert aware.created_at.utcoffset() == dt.timedelta(hours=2)


def test_password_is_secret_and_bounded():
    user = schemas.UserCreate.model_validate({"email": "a@example.com",
                                              "password": "correct horse battery"})
    assert "correct horse" not in repr(user)
    assert "correct horse" not in user.model_dump_json()
    assert user.password.get_secret_value() == "correct horse battery"
    with pytest.raises(pydantic.ValidationError) as info:
        schemas.UserCreate.model_validate({"email": "a@example.com", "password": "short pw"})
    assert "short pw" not in json.dumps([e["msg"] for e in info.value.errors()])


def test_read_serialises_like_to_dict(db):
    campaign = make_campaign(owner=make_user(), total_budget_micros=Decimal("10.100000"))
    ad = make_ad(campaign)
    dumped = schemas.CampaignRead.model_validate(campaign).model_dump(mode="json")
    assert dumped == Campaign.get_by_id(campaign.id).to_dict()
    assert dumped["total_budget_micros"] == "10.1"
    assert dumped["created_at"].endswith("+00:00")
    assert schemas.AdRead.model_validate(ad).model_dump(mode="json")["campaign_id"] == \
        str(campaign.id)


def test_cli_prints_json_schema():
    runner = CliRunner()
    result = runner.invoke(cli, ["inspect", "json-schema", "Campaign"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert set(document) == {"CampaignRead", "CampaignCreate", "CampaignUpdate"}
    assert "owner_id" not in document["CampaignCreate"]["properties"]
    everything = json.loads(runner.invoke(cli, ["inspect", "json-schema"]).output)
    assert "CredentialRead" in everything
    assert "password_hash" not in json.dumps(everything)
    assert "token_hash" not in json.dumps(everything)
    bad = runner.invoke(cli, ["inspect", "json-schema", "Nope"])
    assert bad.exit_code == 2 and "models: AccessToken" in bad.output
