import datetime as dt
import tracemalloc
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from within_db import batch
from within_db.errors import BulkInsertError, ValidationError
from within_db.models.campaigns import Ad, Campaign, SpendRecord
from within_db.models.ml_system import PredictionLog

from .helpers import make_ad, make_campaign, make_user, make_version

UTC = dt.UTC
AWKWARD = "tab\there\nnew line \\ backslash \\N 'q' \"dq\" é ✓ 🚀 中文 \r cr"


def _compare(model, saved, bulk, ignore=("id",)):
    a, b = saved.to_dict(), bulk.to_dict()
    for key in ignore:
        a.pop(key, None)
        b.pop(key, None)
    assert a == b


def test_bulk_rows_read_back_identical_to_model_saves(db):
    owner = make_user()
    when = dt.datetime(2026, 3, 29, 2, 30, 0, 5, tzinfo=ZoneInfo("Europe/Berlin"))
    values = dict(owner=owner.id, name=AWKWARD[:200], objective="leads", platform="tiktok",
                  status="paused", start_date=dt.date(2026, 2, 1), end_date=None,
                  total_budget_micros=Decimal("123456789.000001"), currency="EUR",
                  metadata={"nested": {"list": [1, None, 2.5, "x\ty"], "t": True}, "e": {}},
                  created_at=when, updated_at=when)
    saved = Campaign.create(id=uuid.uuid4(), **values)
    bulk_id = uuid.uuid4()
    assert batch.bulk_insert(Campaign, [{"id": bulk_id, **values}]) == 1
    _compare(Campaign, Campaign.get_by_id(saved.id), Campaign.get_by_id(bulk_id))
    # NULL in every nullable column of ads
    campaign = Campaign.get_by_id(bulk_id)
    ad_values = dict(campaign=campaign.id, name="n", headline=AWKWARD[:300], body=AWKWARD,
                     media_url=None, created_at=when, updated_at=when)
    a1 = Ad.create(id=uuid.uuid4(), **ad_values)
    a2 = uuid.uuid4()
    batch.bulk_insert(Ad, [{"id": a2, **ad_values}])
    _compare(Ad, Ad.get_by_id(a1.id), Ad.get_by_id(a2))
    assert Ad.get_by_id(a2).body == AWKWARD


def test_bulk_accepts_tuples_and_applies_defaults(db):
    version = make_version()
    t = dt.datetime(2026, 1, 1, tzinfo=UTC)
    n = batch.bulk_insert(PredictionLog, [(version.id, "r1", 0.5, t), (version.id, "r2", 0.7, t)],
                          fields=["model_version", "request_id", "score", "created_at"])
    assert n == 2
    row = PredictionLog.get(PredictionLog.request_id == "r2")
    assert row.features == {} and row.ad_id is None and row.created_at == t
    with pytest.raises(ValidationError, match="unknown fields"):
        batch.bulk_insert(PredictionLog, [], fields=["nope"])
    with pytest.raises(BulkInsertError, match="row 0: unknown fields scroe"):
        batch.bulk_insert(PredictionLog, [{"model_version": version.id, "request_id": "r3",
                                           "scroe": 0.5}])
    assert PredictionLog.select().count() == 2


def test_bulk_insert_of_nothing_writes_nothing(db):
    assert batch.bulk_insert(PredictionLog, []) == 0


def test_a_violation_in_row_1000_of_5000_writes_nothing_and_names_the_row(db):
    version = make_version()
    rows = [{"model_version": version.id, "request_id": f"req-{i}", "score": 0.1}
            for i in range(5000)]
    rows[1000]["request_id"] = "req-3"  # duplicates row 3
    with pytest.raises(BulkInsertError) as info:
        batch.bulk_insert(PredictionLog, rows, batch_size=700)
    assert info.value.position == 1000
    assert "row 1000" in str(info.value)
    assert info.value.constraint == "prediction_logs_request_id"
    assert PredictionLog.select().count() == 0


def test_check_violations_and_bad_values_name_the_row(db):
    campaign = make_campaign()
    good = {"campaign": campaign.id, "occurred_at": dt.datetime.now(UTC),
            "amount_micros": Decimal("1")}
    with pytest.raises(BulkInsertError) as info:
        batch.bulk_insert(SpendRecord, [good, good, {**good, "amount_micros": Decimal("-1")}])
    assert info.value.position == 2
    assert info.value.constraint == "spend_records_amount_non_negative_check"
    with pytest.raises(BulkInsertError, match="row 1: .*naive"):
        batch.bulk_insert(SpendRecord, [good, {**good, "occurred_at": dt.datetime(2026, 1, 1)}])
    with pytest.raises(BulkInsertError, match="row 0: .*missing required field 'occurred_at'"):
        batch.bulk_insert(SpendRecord, [{"campaign": campaign.id, "amount_micros": 1}])
    assert SpendRecord.select().count() == 0


def test_stream_returns_every_row_once_in_order(db):
    version = make_version()
    ad = make_ad()
    base = dt.datetime(2026, 1, 1, tzinfo=UTC)
    batch.bulk_insert(PredictionLog, [
        {"model_version": version.id, "request_id": f"r{i:05d}", "score": i / 10_000,
         "ad": ad.id if i % 2 else None, "features": {"i": i},
         "created_at": base + dt.timedelta(seconds=i)} for i in range(5_003)])
    query = PredictionLog.select().order_by(PredictionLog.request_id.desc())
    rows = list(batch.stream(query.dicts(), chunk_size=1000))
    assert [r["request_id"] for r in rows] == [f"r{i:05d}" for i in reversed(range(5_003))]
    assert rows[0]["features"] == {"i": 5002} and rows[0]["created_at"] == base + \
        dt.timedelta(seconds=5002)
    assert rows[0]["ad"] is None and rows[1]["ad"] == ad.id
    tuples = list(batch.stream(query.select(PredictionLog.score).tuples(), chunk_size=999))
    assert len(tuples) == 5_003 and tuples[-1] == (0.0,)
    models = list(batch.stream(query.limit(3)))
    assert [m.request_id for m in models] == ["r05002", "r05001", "r05000"]
    assert isinstance(models[0], PredictionLog) and models[0].model_version_id == version.id
    assert list(batch.stream(query.where(PredictionLog.score > 5).dicts())) == []


def test_stream_reads_uuid_keys_as_uuids(db):
    campaign = make_campaign()
    query = Campaign.select(Campaign.id, Campaign.owner).where(Campaign.id == campaign.id)
    assert list(batch.stream(query.dicts())) == [{"id": campaign.id,
                                                  "owner": campaign.owner_id}]
    assert isinstance(campaign.id, uuid.UUID)


def test_stream_memory_stays_flat(db):
    version = make_version()
    batch.bulk_insert(PredictionLog, ({"model_version": version.id, "request_id": f"m{i}",
                                       "score": 0.5, "features": {"pad": "x" * 200}}
                                      for i in range(20_000)))
    query = PredictionLog.select().dicts()
    tracemalloc.start()
    count = 0
    for _ in batch.stream(query, chunk_size=500):
        count += 1
    _, peak_stream = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracemalloc.start()
    everything = list(query)
    _, peak_list = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == len(everything) == 20_000
    assert peak_stream < peak_list / 5, (peak_stream, peak_list)
