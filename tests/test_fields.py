import datetime as dt
import json
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from within_db.base import jsonable
from within_db.errors import ValidationError
from within_db.fields import format_utc, to_micros
from within_db.models.campaigns import Campaign, SpendRecord
from within_db.models.users import User

from .helpers import make_campaign, make_user

UTC = dt.UTC


def test_aware_datetimes_round_trip_as_utc(db):
    berlin = dt.datetime(2026, 3, 29, 3, 30, 15, 123456, tzinfo=ZoneInfo("Europe/Berlin"))
    user = make_user(last_login_at=berlin)
    back = User.get_by_id(user.id).last_login_at
    assert back == berlin
    assert back.tzinfo == UTC
    assert back.utcoffset() == dt.timedelta(0)


def test_naive_datetimes_are_refused_with_a_clear_error(db):
    with pytest.raises(ValidationError, match="naive datetime"):
        make_user(last_login_at=dt.datetime(2026, 1, 1, 12, 0))


def test_instants_sort_chronologically_across_offsets(db):
    campaign = make_campaign()
    tokyo = ZoneInfo("Asia/Tokyo")
    times = [
        dt.datetime(2026, 1, 1, 8, 0, tzinfo=tokyo),   # 2025-12-31 23:00 UTC
        dt.datetime(2026, 1, 1, 0, 30, tzinfo=UTC),
        dt.datetime(2025, 12, 31, 20, 0, tzinfo=ZoneInfo("America/New_York")),  # 01:00 UTC
    ]
    for t in times:
        SpendRecord.create(campaign=campaign, occurred_at=t, amount_micros=1)
    got = [r.occurred_at for r in SpendRecord.select().order_by(SpendRecord.occurred_at)]
    assert got == sorted(times)
    later = SpendRecord.select().where(
        SpendRecord.occurred_at > dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC)).count()
    assert later == 2


def test_money_is_exact_for_large_values(db):
    amount = Decimal("1234567890123.456789")
    campaign = make_campaign(total_budget_micros=amount)
    assert Campaign.get_by_id(campaign.id).total_budget_micros == amount
    raw = Campaign.select(Campaign.total_budget_micros).where(Campaign.id == campaign.id)
    assert raw.tuples().get()[0] == amount


def test_money_refuses_floats_and_excess_precision():
    with pytest.raises(ValidationError, match="Decimal"):
        to_micros(1.5)
    with pytest.raises(ValidationError, match="6 decimal places"):
        to_micros(Decimal("0.0000001"))
    with pytest.raises(ValidationError, match="out of range"):
        to_micros(Decimal("10000000000000"))
    with pytest.raises(ValidationError, match="not a number"):
        to_micros("abc")
    assert to_micros("1.25") == 1_250_000
    assert to_micros(3) == 3_000_000


def test_money_sums_stay_exact_in_sql(db):
    from peewee import fn

    campaign = make_campaign()
    for amount in ("0.10", "0.20", "1000000000.000001"):
        SpendRecord.create(campaign=campaign, occurred_at=dt.datetime.now(UTC),
                           amount_micros=Decimal(amount))
    total = SpendRecord.select(fn.SUM(SpendRecord.amount_micros)).scalar()
    assert Decimal(total) / 1_000_000 == Decimal("1000000000.300001")


def test_emails_are_stored_normalised(db):
    user = make_user(email="  Ｊane.Doe@Example.COM ")
    assert User.get_by_id(user.id).email == "jane.doe@example.com"
    assert User.get(User.email == "JANE.DOE@example.com").id == user.id


def test_jsonable_handles_every_value_type():
    value = {
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "dt": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "date": dt.date(2026, 1, 2),
        "money": Decimal("100.000000"),
        "small": Decimal("0.500000"),
        "nested": [{"a": Decimal("1.5")}, (1, 2)],
        "plain": [None, True, 1, 1.5, "s"],
    }
    out = jsonable(value)
    assert out == {
        "uuid": "12345678-1234-5678-1234-567812345678",
        "dt": "2026-01-02T03:04:05+00:00",
        "date": "2026-01-02",
        "money": "100",
        "small": "0.5",
        "nested": [{"a": "1.5"}, [1, 2]],
        "plain": [None, True, 1, 1.5, "s"],
    }
    json.dumps(out)
    with pytest.raises(TypeError):
        jsonable(object())


def test_format_utc_is_fixed_width():
    a = format_utc(dt.datetime(2026, 1, 1, tzinfo=UTC))
    b = format_utc(dt.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC))
    assert len(a) == len(b) and a < b


def test_timestamps_are_set_and_updated_on_save(db):
    user = make_user()
    created, updated = user.created_at, user.updated_at
    assert created.tzinfo == UTC
    user.full_name = "Changed"
    user.save()
    reread = User.get_by_id(user.id)
    assert reread.created_at == created
    assert reread.updated_at > updated
