"""Property tests: for every model, random valid values round-trip identically through save,
bulk_insert and stream, and random invalid values are refused the same way on every path.

Each example starts from a row of the ``tiny`` seed; fields no CHECK, key or unique index
constrains take random values, unique columns fresh ones. Each example runs in a savepoint.
"""

import datetime as dt
import itertools
import math
import re
import uuid
from decimal import Decimal

import peewee
import pytest
from hypothesis import given
from hypothesis import strategies as st

from within_db import batch
from within_db.errors import BulkInsertError, ValidationError
from within_db.fields import (
    BoolCodec,
    DateCodec,
    EmailCodec,
    FloatCodec,
    InstantCodec,
    IntCodec,
    JSONCodec,
    MoneyCodec,
    TextCodec,
    UUIDCodec,
    codec_of,
)
from within_db.models import ALL_MODELS
from within_db.models.analytics import Dashboard, ReportTemplate, SavedQuery, ShareLink
from within_db.models.campaigns import (
    AdMetric,
    Campaign,
    CampaignPerformance,
    CampaignPlatformSetting,
)
from within_db.models.ml_system import FeatureImportance, MLModel, ModelVersion, PredictionLog
from within_db.models.users import (
    AccessToken,
    AuditLog,
    Credential,
    Permission,
    Role,
    RolePermission,
    User,
    UserProfile,
    UserRole,
)

UTC = dt.UTC
_counter = itertools.count(1)

# -- strategies from the codecs ------------------------------------------------------------

_text_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_json_scalar = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                | st.floats(-1e15, 1e15, allow_nan=False) | st.text(_text_chars, max_size=20))
_json_any = st.recursive(_json_scalar, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(_text_chars, max_size=8), inner, max_size=4),
                     max_leaves=12)
_json = _json_any.filter(lambda v: v is not None)  # a top-level None is SQL NULL
_offsets = [UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)),
            dt.timezone(-dt.timedelta(hours=8))]
_aware = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1),
                      timezones=st.sampled_from(_offsets))


def valid(codec):
    """Values the codec accepts."""
    if isinstance(codec, BoolCodec):
        return st.booleans()
    if isinstance(codec, IntCodec):
        return st.integers(codec.low, codec.high)
    if isinstance(codec, FloatCodec):
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**53, 2**53)
    if isinstance(codec, TextCodec):
        return st.text(_text_chars, max_size=min(codec.max_length, 40))
    if isinstance(codec, UUIDCodec):
        return st.uuids()
    if isinstance(codec, DateCodec):
        return st.dates()
    if isinstance(codec, InstantCodec):
        return _aware
    if isinstance(codec, MoneyCodec):
        return st.decimals(-10**12, 10**12, places=6, allow_nan=False, allow_infinity=False)
    if isinstance(codec, JSONCodec):
        return _json
    raise AssertionError(codec)


def invalid(codec):
    """Values the codec refuses (None aside: NOT NULL is the database's rule)."""
    other = st.sampled_from([object(), b"bytes", {1, 2}, 1j])
    if isinstance(codec, BoolCodec):
        return other | st.text() | st.integers() | st.floats()
    if isinstance(codec, IntCodec):
        return (other | st.booleans() | st.floats() | st.text()
                | st.integers(codec.high + 1) | st.integers(max_value=codec.low - 1))
    if isinstance(codec, FloatCodec):
        return other | st.booleans() | st.text() | st.sampled_from([math.nan, math.inf, -math.inf])
    if isinstance(codec, TextCodec):
        nul = st.tuples(st.text(max_size=3), st.text(max_size=3)).map(lambda p: "\x00".join(p))
        too_long = st.just("x" * (codec.max_length + 1))
        return other | st.booleans() | st.integers() | nul | too_long
    if isinstance(codec, UUIDCodec):
        return other | st.integers() | st.uuids().map(lambda u: u.hex) | st.text(max_size=40)
    if isinstance(codec, DateCodec):
        return other | st.datetimes() | st.integers() | st.text(max_size=12).filter(
            lambda t: not re.fullmatch(r"\d{4}-\d\d-\d\d", t))
    if isinstance(codec, InstantCodec):
        return other | st.datetimes() | st.dates() | st.integers() | st.floats()
    if isinstance(codec, MoneyCodec):
        return (other | st.booleans() | st.floats() | st.just("ten")
                | st.just(Decimal("0.0000001")) | st.just(Decimal("NaN")) | st.just(10**14))
    if isinstance(codec, JSONCodec):
        bad = st.sampled_from([math.nan, math.inf, object(), {1, 2}, b"x", "a\x00b"])
        return bad | bad.map(lambda v: {"k": [v]})
    raise AssertionError(codec)


# -- rows -----------------------------------------------------------------------------------


def _hex(n=64):
    return (uuid.uuid4().hex * 2)[:n]


def _fresh(model, row):
    """Values that make ``row`` unique again (unique columns, unique indexes, keys)."""
    n = next(_counter)
    tag = f"{n:x}{_hex(8)}"
    fresh = {
        User: lambda: {"email": f"h{tag}@example.com"},
        UserProfile: lambda: {"user": User.create(email=f"p{tag}@example.com").id},
        Credential: lambda: {"user": User.create(email=f"c{tag}@example.com").id},
        Role: lambda: {"name": f"r{tag}"},
        Permission: lambda: {"codename": f"p{tag}.x"},
        RolePermission: lambda: {"role": Role.create(name=f"r{tag}").id},
        UserRole: lambda: {"role": Role.create(name=f"r{tag}").id},
        AccessToken: lambda: {"token_hash": _hex()},
        AuditLog: lambda: {"row_hash": _hex()},
        CampaignPlatformSetting: lambda: {"platform": "pinterest", "campaign": Campaign.create(
            owner=User.select().first(), name="c", objective="sales", platform="meta",
            start_date=dt.date(2026, 1, 1)).id},
        AdMetric: lambda: {"date": dt.date(2900, 1, 1) + dt.timedelta(days=n)},
        CampaignPerformance: lambda: {"date": dt.date(2900, 1, 1) + dt.timedelta(days=n)},
        MLModel: lambda: {"name": f"m{tag}"},
        ModelVersion: lambda: {"version": 10**6 + n, "stage": "none"},
        PredictionLog: lambda: {"request_id": f"q{tag}"},
        FeatureImportance: lambda: {"feature": f"f{tag}", "rank": 10**6 + n},
        ReportTemplate: lambda: {"name": f"t{tag}"},
        SavedQuery: lambda: {"name": f"s{tag}"},
        Dashboard: lambda: {"name": f"d{tag}"},
        ShareLink: lambda: {"token_hash": _hex()},
    }.get(model, dict)()
    key = model._meta.primary_key
    if isinstance(codec_of(key), UUIDCodec):
        fresh[key.name] = uuid.uuid4()
    return {**row, **fresh}


def _constrained(model):
    """Names of fields a CHECK, key, foreign key or unique index constrains."""
    names = set()
    checks = " ".join(peewee.Context().sql(c).query()[0] for c in model._meta.constraints or [])
    for field in model._meta.sorted_fields:
        if (field.primary_key or field.unique or isinstance(field, peewee.ForeignKeyField)
                or re.search(rf"\b{field.column_name}\b", checks)
                or isinstance(codec_of(field), EmailCodec)):
            names.add(field.name)
    for fields, _unique in (ix for ix in model._meta.indexes if isinstance(ix, (list, tuple))):
        names.update(fields)
    for index in model._meta.indexes:
        if not isinstance(index, (list, tuple)):
            names.update(getattr(e, "name", "") for e in index._expressions)
    return names


def _template(model):
    """A valid row of ``model`` as field-name -> Python value (from the seeded data)."""
    instance = model.select().order_by(*model._meta.get_primary_keys()).first()
    return {f.name: getattr(instance, f.name if not isinstance(f, peewee.ForeignKeyField)
                            else f.column_name)
            for f in model._meta.sorted_fields if not f.auto_increment}


def _stored(model, key_name, key_value):
    instance = model.get(getattr(model, key_name) == key_value)
    return {f.name: getattr(instance, f.column_name if isinstance(f, peewee.ForeignKeyField)
                            else f.name) for f in model._meta.sorted_fields}


def _lookup(model, row):
    """A (field, value) pair that finds ``row`` again."""
    key = model._meta.primary_key
    if key.name in row:
        return key.name, row[key.name]
    for field in model._meta.sorted_fields:
        if field.unique and field.name in row:
            return field.name, row[field.name]
    return None


MODELS = [m for m in ALL_MODELS]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_valid_values_round_trip_through_every_path(seeded_db, model):
    free = [f for f in model._meta.sorted_fields
            if f.name not in _constrained(model) and not f.auto_increment]
    strategy = st.fixed_dictionaries({f.name: (st.none() | valid(codec_of(f))) if f.null
                                      else valid(codec_of(f)) for f in free})
    template = _template(model)

    @given(values=strategy)
    def check(values):
        with seeded_db.atomic() as savepoint:
            for path in ("save", "bulk"):
                row = _fresh(model, {**template, **values})
                if path == "save":
                    instance = model(**row)
                    instance.save(force_insert=True)
                    if model._meta.primary_key.name not in row:
                        row[model._meta.primary_key.name] = instance._pk
                else:
                    before = model.select().count()
                    assert batch.bulk_insert(model, [row]) == 1
                    assert model.select().count() == before + 1
                found = _lookup(model, row)
                if found is None:  # an auto key only: the newest row
                    key = model._meta.primary_key
                    found = key.name, model.select(peewee.fn.MAX(key)).scalar()
                stored = _stored(model, *found)
                for name, value in values.items():
                    expected = codec_of(model._meta.fields[name]).validate(value) \
                        if value is not None else None
                    assert stored[name] == expected, (path, name)
                    assert type(stored[name]) is type(expected) or expected is None \
                        or isinstance(expected, (dict, list)), (path, name)
                streamed = [r for r in batch.stream(
                    model.select().where(getattr(model, found[0]) == found[1]).dicts())]
                assert len(streamed) == 1
                for name in values:
                    field = model._meta.fields[name]
                    assert streamed[0][field.name] == stored[name], (path, name)
            savepoint.rollback()

    check()


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_invalid_values_are_refused_on_every_path_with_nothing_written(seeded_db, model):
    fields = [f for f in model._meta.sorted_fields if not f.auto_increment]
    template = _template(model)

    @given(data=st.data())
    def check(data):
        field = data.draw(st.sampled_from(fields), label="field")
        value = data.draw(invalid(codec_of(field)), label="value")
        with pytest.raises(ValidationError) as direct:
            field.db_value(value)
        message = str(direct.value)
        assert message.startswith(f"{model.__name__}.{field.name}: ")
        with seeded_db.atomic() as savepoint:
            row = _fresh(model, template)
            before = model.select().count()
            with pytest.raises(ValidationError) as saved:
                model.create(**{**row, field.name: value})
            assert str(saved.value) == message
            with pytest.raises(BulkInsertError) as bulk:
                batch.bulk_insert(model, [row, {**row, field.name: value}])
            assert str(bulk.value) == f"row 1: {message}; nothing was written"
            assert model.select().count() == before
            savepoint.rollback()

    check()


_funnel = st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1),
                    st.integers(0, 2**63 - 1)).map(sorted)


def test_constrained_numbers_and_dates_round_trip(seeded_db):
    """Integers to the BIGINT limit, money to the micro and any date, within the CHECKs."""
    template = _template(AdMetric)

    @given(funnel=_funnel, spend=st.decimals(0, 9_223_372_036_854, places=6, allow_nan=False),
           day=st.dates())
    def check(funnel, spend, day):
        conversions, clicks, impressions = funnel
        values = {"impressions": impressions, "clicks": clicks, "conversions": conversions,
                  "spend_micros": spend, "date": day}
        with seeded_db.atomic() as savepoint:
            AdMetric.delete().where(AdMetric.ad == template["ad"]).execute()
            AdMetric.create(**{**template, **values})
            saved = _stored(AdMetric, "ad", template["ad"])
            AdMetric.delete().where(AdMetric.ad == template["ad"]).execute()
            batch.bulk_insert(AdMetric, [{**template, **values}])
            (streamed,) = batch.stream(AdMetric.select().where(AdMetric.ad == template["ad"])
                                       .dicts())
            bulk = _stored(AdMetric, "ad", template["ad"])
            for name, value in values.items():
                assert saved[name] == bulk[name] == streamed[name] == value, name
            savepoint.rollback()

    check()
