"""within_db.batch as a specification: what each argument changes, what every value becomes.

Every value kind goes through ``bulk_insert`` and comes back as ``Model.create`` would store
it (the COPY text formatter on PostgreSQL, executemany tuples on SQLite); ``batch_size`` and
``chunk_size`` have effects a test can see; an abandoned stream leaves no open cursor.
"""

import datetime as dt
import enum
import math
import tracemalloc
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

import peewee
import pytest

from within_db import batch
from within_db.errors import BulkInsertError, ReadOnlyError, ValidationError
from within_db.models.campaigns import Ad, AdMetric, Campaign
from within_db.models.ml_system import PredictionLog
from within_db.models.users import User

from .conftest import REPLICA_TEST_OPTIONS
from .helpers import make_ad, make_campaign, make_user, make_version

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)


class Level(enum.IntEnum):
    HIGH = 7


class Tag(enum.StrEnum):
    A = "alpha"


def _log(version, i, **kw):
    return {"model_version": version.id, "request_id": f"r{i}", "score": 0.5, **kw}


def _one(model, **where):
    return model.get(*[getattr(model, k) == v for k, v in where.items()])


# -- every value kind, through the COPY formatter (PostgreSQL) and executemany (SQLite) -------


FLOATS = [0.1, -0.0, 1e-300, 5e-324, 1.7976931348623157e308, -2.5, 3, 2**53 + 1, 0]


def test_floats_come_back_as_model_saves_store_them(db, backend):
    version = make_version()
    rows = [_log(version, i, score=value, latency_ms=abs(value)) for i, value in
            enumerate(FLOATS)]
    assert batch.bulk_insert(PredictionLog, rows) == len(FLOATS)
    for i, value in enumerate(FLOATS):
        saved = PredictionLog.create(**_log(version, f"saved{i}", score=value))
        stored = _one(PredictionLog, request_id=f"r{i}")
        assert type(stored.score) is float
        assert stored.score == float(value) == PredictionLog.get_by_id(saved.id).score
        assert stored.latency_ms == abs(float(value))
    negative_zero = _one(PredictionLog, request_id="r1").score
    # PostgreSQL keeps the sign of -0.0; SQLite stores every zero as 0 (a model save too)
    assert math.copysign(1, negative_zero) == (-1 if backend == "postgres" else 1)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, True, "0.5", Decimal("0.5")])
def test_refused_floats_name_the_row_and_write_nothing(db, bad):
    version = make_version()
    rows = [_log(version, 0), _log(version, 1), _log(version, 2, score=bad)]
    with pytest.raises(BulkInsertError) as info:
        batch.bulk_insert(PredictionLog, rows)
    assert info.value.position == 2
    assert str(info.value).startswith("row 2: PredictionLog.score: expected a finite float")
    assert str(info.value).endswith("; nothing was written")
    assert PredictionLog.select().count() == 0


def test_integers_of_every_width_and_subclass(db):
    ad = make_ad()
    rows = [{"ad": ad.id, "date": dt.date(2026, 1, d), "impressions": value, "clicks": 0}
            for d, value in [(1, 2**63 - 1), (2, 0), (3, Level.HIGH), (4, 12)]]
    assert batch.bulk_insert(AdMetric, rows) == 4
    got = {m.date.day: m.impressions for m in AdMetric.select()}
    assert got == {1: 2**63 - 1, 2: 0, 3: 7, 4: 12}
    assert {type(v) for v in got.values()} == {int}
    other = make_ad()
    for bad, message in [(2**63, "expected an int (64-bit): out of range"),
                         (-2**63 - 1, "expected an int (64-bit): out of range"),
                         (True, "expected an int (64-bit), got bool"),
                         (1.0, "expected an int (64-bit), got float"),
                         ("5", "expected an int (64-bit), got str")]:
        with pytest.raises(BulkInsertError) as info:
            batch.bulk_insert(AdMetric, [{**rows[1], "ad": other.id},
                                         {**rows[0], "ad": other.id, "impressions": bad}])
        assert str(info.value).startswith(f"row 1: AdMetric.impressions: {message}")
        assert info.value.position == 1
    assert AdMetric.select().count() == 4


def test_money_decimals_ints_and_text(db):
    owner = make_user()
    amounts = [Decimal("0.000001"), Decimal("12.5"), 7, "3.25", Decimal("1E+3"), Decimal(0)]
    rows = [{"owner": owner.id, "name": f"m{i}", "objective": "sales", "platform": "meta",
             "start_date": dt.date(2026, 1, 1), "total_budget_micros": amount}
            for i, amount in enumerate(amounts)]
    assert batch.bulk_insert(Campaign, rows) == len(amounts)
    for i, amount in enumerate(amounts):
        stored = _one(Campaign, name=f"m{i}").total_budget_micros
        assert stored == Decimal(amount) and type(stored) is Decimal
    for bad, message in [(0.5, "not float"), (Decimal("0.0000001"), "6 decimal places"),
                         (Decimal("NaN"), "not a finite number"), ("x", "not a number"),
                         (True, "got bool")]:
        with pytest.raises(BulkInsertError, match=f"row 1: Campaign.total_budget_micros: .*"
                                                  f"{message}"):
            batch.bulk_insert(Campaign, [rows[0], {**rows[0], "total_budget_micros": bad}])


def test_uuids_dates_instants_and_booleans(db):
    owner = make_user()
    ids = [uuid.uuid4() for _ in range(4)]
    summer = dt.datetime(2026, 7, 1, 12, 30, 15, 123456, tzinfo=BERLIN)  # +02:00
    cases = [  # id as given, start_date as given, created_at as given -> created_at in UTC
        (ids[0], dt.date(2026, 1, 2), T0, T0),
        (str(ids[1]), "2026-01-03", summer, summer.astimezone(UTC)),
        (str(ids[2]).upper(), dt.date(1, 1, 1), "2026-01-01T05:00:00.5+05:00",
         dt.datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        (ids[3], dt.date(9999, 12, 31), dt.datetime(2026, 3, 29, 2, 30, tzinfo=BERLIN),
         dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
    ]
    rows = [{"id": given, "owner": owner.id, "name": f"u{i}", "objective": "sales",
             "platform": "meta", "start_date": day, "end_date": None, "created_at": when,
             "updated_at": when}
            for i, (given, day, when, _) in enumerate(cases)]
    rows[3]["end_date"] = dt.date(9999, 12, 31)
    assert batch.bulk_insert(Campaign, rows) == 4
    for i, (_, day, _, utc) in enumerate(cases):
        stored = Campaign.get_by_id(ids[i])
        assert stored.start_date == (day if isinstance(day, dt.date)
                                     else dt.date.fromisoformat(day))
        assert stored.created_at == utc and stored.created_at.tzinfo == UTC
    assert Campaign.get_by_id(ids[0]).end_date is None
    assert Campaign.get_by_id(ids[3]).end_date == dt.date(9999, 12, 31)
    for name, bad, message in [
        ("id", "not-a-uuid", "Campaign.id: expected a UUID"),
        ("id", uuid.uuid4().hex, "Campaign.id: expected a UUID"),
        ("start_date", dt.datetime(2026, 1, 1), "Campaign.start_date: expected a date"),
        ("start_date", "2026-1-1", "Campaign.start_date: expected a date"),
        ("created_at", dt.datetime(2026, 1, 1), "Campaign.created_at: naive datetime refused"),
        ("created_at", "2026-01-01", "Campaign.created_at: naive datetime refused"),
        ("created_at", 1767225600, "Campaign.created_at: expected an aware datetime"),
    ]:
        row = {**rows[0], "id": uuid.uuid4(), name: bad}
        with pytest.raises(BulkInsertError, match=f"^row 0: {message}"):
            batch.bulk_insert(Campaign, [row])
    users = [{"email": " Mixed.Case@Example.COM ", "is_active": False, "is_superuser": True},
             {"email": "b@example.com"}]
    assert batch.bulk_insert(User, users) == 2
    first = _one(User, email="mixed.case@example.com")
    assert (first.is_active, first.is_superuser) == (False, True)
    second = _one(User, email="b@example.com")
    assert (second.is_active, second.is_superuser, second.last_login_at) == (True, False, None)
    for bad in (1, 0, "true", None):
        with pytest.raises(BulkInsertError, match="row 0: User.is_active: expected a bool"):
            batch.bulk_insert(User, [{"email": "c@example.com", "is_active": bad}])


TEXTS = [
    "plain ascii",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\.",
    "\\",
    "é ✓ 🚀 中文",
    "é\twith\\all\nof\rthem",
    "",
]


def test_text_with_tabs_newlines_and_backslashes(db):
    version = make_version()
    rows = [_log(version, i, request_id=f"t{i}", features={"text": text}) for i, text in
            enumerate(TEXTS)]
    owner = make_user()
    campaigns = [{"owner": owner.id, "name": text or "x", "objective": "sales",
                  "platform": "meta", "start_date": dt.date(2026, 1, 1),
                  "metadata": {"k\t\\": [text, None, 1.5, True]}} for text in TEXTS]
    assert batch.bulk_insert(PredictionLog, rows) == len(TEXTS)
    assert batch.bulk_insert(Campaign, campaigns) == len(TEXTS)
    for i, text in enumerate(TEXTS):
        assert _one(PredictionLog, request_id=f"t{i}").features == {"text": text}
        stored = _one(Campaign, name=text or "x")
        assert stored.metadata == {"k\t\\": [text, None, 1.5, True]}


def test_text_at_the_column_length_and_beyond(db):
    version = make_version()
    exact = ["a" * 64, "é" * 64, "\\" * 64, Tag.A]
    rows = [_log(version, i, request_id=text) for i, text in enumerate(exact)]
    assert batch.bulk_insert(PredictionLog, rows) == 4
    assert sorted(p.request_id for p in PredictionLog.select()) == sorted(
        ["a" * 64, "é" * 64, "\\" * 64, "alpha"])
    for bad, message in [("a" * 65, "at most 64 characters"), ("é" * 65, "at most 64"),
                         ("a\x00b", "without NUL"), ("\ud800", "lone surrogates"),
                         (5, "got int"), (None, "got NoneType")]:
        with pytest.raises(BulkInsertError, match=f"row 0: PredictionLog.request_id: .*"
                                                  f"{message}"):
            batch.bulk_insert(PredictionLog, [_log(version, 0, request_id=bad)])


def test_json_values_of_every_shape(db):
    version = make_version()
    shapes = [{}, [], "just text", 0, -1.5, True, None, {"nested": {"list": [1, None, "x"]}},
              {"quote\"": "back\\slash\ttab\nnl"}, ["é", "\u2028"]]
    rows = [_log(version, i, features=shape) for i, shape in enumerate(shapes)]
    assert batch.bulk_insert(PredictionLog, rows) == len(shapes)
    for i, shape in enumerate(shapes):
        assert _one(PredictionLog, request_id=f"r{i}").features == shape
    for bad, message in [({"x": math.nan}, "NaN and infinities"), ({"x": {1, 2}}, "got dict"),
                         ("nul\x00", "without NUL"), ({"k": "\udc00"}, "lone surrogates")]:
        with pytest.raises(BulkInsertError, match=f"row 0: PredictionLog.features: .*{message}"):
            batch.bulk_insert(PredictionLog, [_log(version, 0, features=bad)])


def test_nulls_and_defaults(db):
    version = make_version()
    ad = make_ad()
    before = dt.datetime.now(UTC)
    rows = [_log(version, 0, ad=None, latency_ms=None), _log(version, 1, ad=ad.id),
            _log(version, 2, ad=ad)]
    assert batch.bulk_insert(PredictionLog, rows) == 3
    logs = {p.request_id: p for p in PredictionLog.select()}
    assert logs["r0"].ad_id is None and logs["r0"].latency_ms is None
    assert logs["r1"].ad_id == ad.id == logs["r2"].ad_id
    assert all(p.features == {} for p in logs.values())  # a callable default, per row
    assert all(before <= p.created_at <= dt.datetime.now(UTC) for p in logs.values())
    owner = make_user()
    base = {"owner": owner.id, "objective": "sales", "platform": "meta",
            "start_date": dt.date(2026, 1, 1)}
    assert batch.bulk_insert(Campaign, [{**base, "name": "d1"}, {**base, "name": "d2"}]) == 2
    d1, d2 = _one(Campaign, name="d1"), _one(Campaign, name="d2")
    assert d1.id != d2.id  # uuid4 is called for each row, not once
    assert (d1.status, d1.currency, d1.total_budget_micros, d1.end_date, d1.metadata) == \
        ("draft", "USD", Decimal(0), None, {})
    with pytest.raises(BulkInsertError, match="row 1: PredictionLog.score: expected a finite"):
        batch.bulk_insert(PredictionLog, [_log(version, 5), _log(version, 6, score=None)])
    with pytest.raises(BulkInsertError, match="row 0: missing required field 'score'"):
        batch.bulk_insert(PredictionLog, [{"model_version": version.id, "request_id": "x"}])


# -- rows, keys and arguments ---------------------------------------------------------------


def test_rows_keyed_by_column_names_alone(db):
    owner = make_user()
    version = make_version()
    assert batch.bulk_insert(Campaign, [{"owner_id": owner.id, "name": "by column",
                                         "objective": "sales", "platform": "meta",
                                         "start_date": dt.date(2026, 1, 1)}]) == 1
    assert _one(Campaign, name="by column").owner_id == owner.id
    assert batch.bulk_insert(PredictionLog, [
        {"model_version_id": version.id, "request_id": "c", "score": 1.0},
        {"model_version": version.id, "request_id": "f", "score": 2.0}]) == 2
    assert {p.request_id: p.model_version_id for p in PredictionLog.select()} == {
        "c": version.id, "f": version.id}
    with pytest.raises(BulkInsertError) as info:
        batch.bulk_insert(PredictionLog, [
            {"model_version": version.id, "request_id": "g", "score": 1.0},
            {"model_version": version.id, "model_version_id": version.id, "request_id": "h",
             "score": 1.0}])
    assert str(info.value) == ("row 1: 'model_version' given twice (as 'model_version' and "
                               "'model_version_id'); nothing was written")
    with pytest.raises(BulkInsertError) as info:
        batch.bulk_insert(PredictionLog, [{"zz": 1, "model_version": 1, "aa": 2, "request_id":
                                           "x", "score": 1.0}])
    assert str(info.value) == "row 0: unknown fields aa, zz; nothing was written"


def test_tuples_follow_the_fields_argument(db):
    version = make_version()
    n = batch.bulk_insert(PredictionLog, [(0.25, "t1", version.id), (0.75, "t2", version)],
                          fields=["score", "request_id", "model_version"])
    assert n == 2
    assert {p.request_id: p.score for p in PredictionLog.select()} == {"t1": 0.25, "t2": 0.75}
    # without fields=, tuples hold every field in order (the auto-increment id left out)
    full = (version.id, "t3", None, 0.5, {"a": 1}, 2.0, T0)
    assert batch.bulk_insert(PredictionLog, [full]) == 1
    stored = _one(PredictionLog, request_id="t3")
    assert (stored.features, stored.latency_ms, stored.created_at) == ({"a": 1}, 2.0, T0)
    # dicts and tuples in one call: each shape gets its own converter
    assert batch.bulk_insert(PredictionLog, [(0.5, "t4", version.id),
                                             {"score": 0.5, "request_id": "t5",
                                              "model_version": version.id},
                                             (0.5, "t6", version.id)],
                             fields=["score", "request_id", "model_version"]) == 3
    with pytest.raises(BulkInsertError, match="row 0: missing required field 'model_version'"):
        batch.bulk_insert(PredictionLog, [(0.5, "t7")], fields=["score", "request_id"])
    for bad in [None, 3.5, object()]:
        with pytest.raises(BulkInsertError, match="^row 1: expected a dict or a tuple; nothing"):
            batch.bulk_insert(PredictionLog, [(0.5, "t8", version.id), bad],
                              fields=["score", "request_id", "model_version"])
    assert PredictionLog.select().count() == 6


@pytest.mark.parametrize("rows", ["text", b"bytes", {"score": 1}, 5, None])
def test_rows_must_be_an_iterable_of_rows(db, rows):
    with pytest.raises(ValidationError, match=f"^rows must be an iterable of dicts or tuples, "
                                              f"not {type(rows).__name__}$"):
        batch.bulk_insert(PredictionLog, rows)


@pytest.mark.parametrize("model", [PredictionLog(), "PredictionLog", peewee.Model, None])
def test_the_model_must_be_a_within_db_model_class(db, model):
    with pytest.raises(ValidationError) as info:
        batch.bulk_insert(model, [])
    assert str(info.value) == "model must be a within_db model class, such as PredictionLog"


def test_a_row_in_a_month_without_a_partition_names_the_fix(db, backend):
    version = make_version()
    rows = [_log(version, 0), _log(version, 1, created_at=dt.datetime(2099, 5, 1, tzinfo=UTC))]
    if backend == "sqlite":  # one plain table holds every month
        assert batch.bulk_insert(PredictionLog, rows) == 2
        return
    with pytest.raises(BulkInsertError) as info:
        batch.bulk_insert(PredictionLog, rows)
    assert str(info.value) == (
        "row 1 falls in a month without a partition of prediction_logs; create it with "
        "`within-db partitions ensure` (--from YYYY-MM for past months); nothing was written")
    assert (info.value.position, info.value.constraint) == (1, "no_partition")


def test_fields_argument_is_checked_before_any_row(db):
    def rows():
        raise AssertionError("read a row")
        yield

    for fields, message in [(["score", "nope", "alsonot"], "unknown fields for PredictionLog: "
                                                           "alsonot, nope$"),
                            (["id"], "unknown fields for PredictionLog: id$"),
                            ("score", "fields"), ([1], "fields")]:
        with pytest.raises(ValidationError, match=message):
            batch.bulk_insert(PredictionLog, rows(), fields=fields)


@pytest.mark.parametrize("size,ok", [(0, False), (1, True), (1_000_000, True),
                                     (1_000_001, False), (True, False), ("5", False),
                                     (2.0, False), (None, True)])
def test_batch_size_bounds(db, size, ok):
    version = make_version()
    rows = [_log(version, i) for i in range(3)]
    if ok:
        assert batch.bulk_insert(PredictionLog, rows, batch_size=size) == 3
    else:
        with pytest.raises(ValidationError, match="batch_size"):
            batch.bulk_insert(PredictionLog, rows, batch_size=size)
        assert PredictionLog.select().count() == 0


def _peak_while_inserting(version, count, batch_size):
    """Peak Python memory while ``count`` rows of ~2 KB stream into bulk_insert."""
    pad = "x" * 2000
    rows = (_log(version, f"{batch_size}-{i}", features={"pad": pad}) for i in range(count))
    tracemalloc.start()
    try:
        assert batch.bulk_insert(PredictionLog, rows, batch_size=batch_size) == count
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_batch_size_is_the_rows_held_per_copy_buffer(db, backend):
    version = make_version()
    small = _peak_while_inserting(version, 3000, 20)
    large = _peak_while_inserting(version, 3000, 3000)
    if backend == "postgres":  # a COPY buffer holds batch_size converted lines
        assert large > 4_000_000 > 1_000_000 > small, (small, large)
        default = _peak_while_inserting(version, 3000, None)  # 10,000: the whole input here
        assert default > 4_000_000, default
    else:  # executemany pulls one row at a time whatever batch_size says
        assert small < 1_000_000 and large < 1_000_000, (small, large)
    assert PredictionLog.select().count() == 9000 if backend == "postgres" else 6000


def test_a_refusal_in_a_late_copy_buffer_rolls_back_the_earlier_ones(db):
    version = make_version()
    rows = [_log(version, i) for i in range(50)]
    rows[47]["score"] = math.inf
    with pytest.raises(BulkInsertError) as info:
        batch.bulk_insert(PredictionLog, iter(rows), batch_size=10)
    assert info.value.position == 47
    rows[47]["score"] = 0.5
    rows[48]["request_id"] = "r2"
    with pytest.raises(BulkInsertError) as info:
        batch.bulk_insert(PredictionLog, rows, batch_size=10)
    assert info.value.position == 48 and info.value.constraint == "prediction_logs_request_id"
    assert PredictionLog.select().count() == 0
    assert batch.bulk_insert(PredictionLog, rows[:48], batch_size=10) == 48


def test_a_value_the_column_cannot_hold_names_the_row(db, backend):
    """Schema drift: the database refuses a value the codec passed (fault injection)."""
    owner = make_user()
    base = {"owner": owner.id, "objective": "sales", "platform": "meta",
            "start_date": dt.date(2026, 1, 1)}
    rows = [{**base, "name": "ab"}, {**base, "name": "abc"}]
    if backend == "postgres":  # a narrower column: COPY fails with a data error on line 2
        db.execute_sql("ALTER TABLE campaigns ALTER COLUMN name TYPE varchar(2)")
        message = ("row 1 has a value of the wrong type or size for its column; nothing was "
                   "written")
        constraint = None
    else:  # SQLite has no column sizes; a trigger refuses it without naming a constraint
        db.execute_sql("CREATE TRIGGER campaigns_narrow BEFORE INSERT ON campaigns "
                       "WHEN length(NEW.name) > 2 BEGIN SELECT RAISE(ABORT, 'narrow'); END")
        message = "row 1 violates a constraint; nothing was written"
        constraint = "a constraint"
    with pytest.raises(BulkInsertError) as info:
        batch.bulk_insert(Campaign, rows)
    assert str(info.value) == message
    assert info.value.position == 1 and info.value.constraint == constraint
    assert Campaign.select().where(Campaign.owner == owner).count() == 0


# -- streaming ------------------------------------------------------------------------------


@pytest.fixture
def ticks(db, backend):
    """A column that counts the rows the database has produced: ``(expression, count())``."""
    if backend == "postgres":
        db.execute_sql("CREATE TEMP SEQUENCE spec_ticks")
        return (peewee.fn.nextval("spec_ticks"),
                lambda: db.execute_sql("SELECT last_value, is_called FROM spec_ticks")
                .fetchone()[0])
    calls = []

    def tick(_):
        calls.append(1)
        return len(calls)

    name = f"spec_tick_{uuid.uuid4().hex}"  # one connection serves the session's tests
    db.connection().create_function(name, 1, tick)
    return getattr(peewee.fn, name)(1), lambda: len(calls)


def _numbers(db, n):
    db.execute_sql("CREATE TEMP TABLE spec_numbers (n INTEGER NOT NULL)")
    db.execute_sql("INSERT INTO spec_numbers (n) VALUES " + ", ".join(f"({i})" for i in range(n)))
    return peewee.Table("spec_numbers", ("n",)).bind(db)


def test_chunk_size_is_the_rows_read_ahead(db, backend, ticks):
    tick, produced = ticks
    # sqlite3's cursor steps one row past what it has handed out; a server cursor does not
    ahead = 1 if backend == "sqlite" else 0
    table = _numbers(db, 25)
    query = table.select(table.n, tick.alias("t"))  # no ORDER BY: rows made as they are read
    rows = batch.stream(query.tuples(), chunk_size=10)
    assert next(rows) == (0, 1)
    assert produced() == 10 + ahead  # one chunk, not the whole result
    for _ in range(9):
        next(rows)
    assert produced() == 10 + ahead
    assert next(rows) == (10, 11)
    assert produced() == 20 + ahead
    assert [r[0] for r in rows] == list(range(11, 25))
    assert produced() == 25
    models = PredictionLog.select(PredictionLog.id).where(PredictionLog.id < 0)
    assert list(batch.stream(models)) == []


def test_an_abandoned_stream_closes_its_cursor(db, backend, ticks):
    tick, produced = ticks
    table = _numbers(db, 30)
    rows = batch.stream(table.select(table.n, tick.alias("t")).dicts(), chunk_size=4)
    assert [next(rows)["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
    rows.close()
    assert produced() == (9 if backend == "sqlite" else 8)  # two chunks, nothing more
    if backend == "postgres":
        assert db.execute_sql("SELECT count(*) FROM pg_cursors").fetchone()[0] == 0
    # a table with an open cursor on it cannot be dropped on either backend
    db.execute_sql("DROP TABLE spec_numbers")
    assert db.execute_sql("SELECT 41 + 1").fetchone()[0] == 42  # the connection is usable


def test_a_stream_dropped_by_an_exception_closes_its_cursor(db, backend):
    table = _numbers(db, 10)
    with pytest.raises(ZeroDivisionError):
        for row in batch.stream(table.select(table.n).tuples(), chunk_size=3):
            1 / (row[0] - 4)
    if backend == "postgres":
        assert db.execute_sql("SELECT count(*) FROM pg_cursors").fetchone()[0] == 0
    db.execute_sql("DROP TABLE spec_numbers")


@pytest.mark.parametrize("size", [0, -1, 1_000_001, True, "10", 1.5, None])
def test_chunk_size_bounds(db, size):
    with pytest.raises(ValidationError, match="chunk_size"):
        batch.stream(PredictionLog.select(), chunk_size=size)


@pytest.mark.parametrize("query", [None, "SELECT 1", PredictionLog, PredictionLog.delete()])
def test_stream_takes_select_queries_only(db, query):
    with pytest.raises(ValidationError, match="^query must be a peewee select query, not "):
        batch.stream(query)


def test_stream_chunk_edges(db):
    version = make_version()
    batch.bulk_insert(PredictionLog, [_log(version, f"{i:02d}") for i in range(12)])
    query = PredictionLog.select(PredictionLog.request_id).order_by(PredictionLog.request_id)
    expected = [f"r{i:02d}" for i in range(12)]
    for size in (1, 4, 5, 12, 13, 1_000_000):
        assert [r["request_id"] for r in batch.stream(query.dicts(), chunk_size=size)] == \
            expected
        assert [r.request_id for r in batch.stream(query, chunk_size=size)] == expected
    assert list(batch.stream(query.where(PredictionLog.score > 1).dicts())) == []


def test_streamed_dicts_equal_peewee_dicts_for_every_value_kind(db):
    owner = make_user()
    campaign = make_campaign(owner=owner, end_date=None, metadata={"a": [1, "b"]},
                             total_budget_micros=Decimal("1.5"))
    make_campaign(owner=owner, end_date=dt.date(2026, 5, 1))
    query = (Campaign.select(Campaign, User.is_active, User.last_login_at,
                             Campaign.name.alias("it's \"quoted\""),
                             peewee.fn.COUNT(Campaign.id).over().alias("n"))
             .join(User).order_by(Campaign.name))
    streamed = list(batch.stream(query.dicts(), chunk_size=1))
    assert streamed == list(query.dicts())
    first = next(r for r in streamed if r["id"] == campaign.id)
    assert first["end_date"] is None and first["metadata"] == {"a": [1, "b"]}
    assert first["total_budget_micros"] == Decimal("1.5") and first["owner"] == owner.id
    assert first["is_active"] is True and first["last_login_at"] is None
    assert first["n"] == 2
    latest = Campaign.select(peewee.fn.MAX(Campaign.created_at).alias("latest"),
                             peewee.fn.MIN(Campaign.start_date).alias("first"),
                             peewee.fn.SUM(Campaign.total_budget_micros).alias("budget")).dicts()
    assert list(batch.stream(latest)) == list(latest)
    row = list(batch.stream(latest))[0]
    assert row["latest"].tzinfo == UTC and row["first"] == dt.date(2026, 1, 1)
    assert row["budget"] == 1_002_000_000  # peewee leaves SUM() uncoerced: micros, as list()
    assert first["it's \"quoted\""] == campaign.name
    assert list(batch.stream(query.namedtuples())) == list(query.namedtuples())
    assert list(batch.stream(query.tuples())) == list(query.tuples())


# -- dataframes -----------------------------------------------------------------------------


def test_dataframe_dtypes_follow_the_fields(db):
    pytest.importorskip("pandas")
    owner = make_user()
    make_campaign(owner=owner, end_date=None, total_budget_micros=Decimal("2.25"),
                  metadata={"k": 1})
    query = Campaign.select(Campaign.id, Campaign.owner, Campaign.name, Campaign.start_date,
                            Campaign.end_date, Campaign.total_budget_micros,
                            Campaign.metadata, Campaign.created_at, User.is_active,
                            User.last_login_at.alias("seen")).join(User)
    frame = batch.to_dataframe(query)
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        "id": "string", "owner": "string", "name": "string", "start_date": "datetime64[ns]",
        "end_date": "datetime64[ns]", "total_budget_micros": "float64", "metadata": "object",
        "created_at": "datetime64[ns, UTC]", "is_active": "boolean",
        "seen": "datetime64[ns, UTC]"}
    row = frame.iloc[0]
    assert row["owner"] == str(owner.id) and row["total_budget_micros"] == 2.25
    assert row["metadata"] == {"k": 1} and bool(row["is_active"]) is True
    assert str(row["end_date"]) == "NaT" and str(row["seen"]) == "NaT"
    logs = PredictionLog.select(PredictionLog.id, PredictionLog.ad, PredictionLog.latency_ms,
                                PredictionLog.created_at, Campaign.start_date,
                                PredictionLog.features).join(Ad, peewee.JOIN.LEFT_OUTER) \
        .join(Campaign, peewee.JOIN.LEFT_OUTER)
    dtypes = {"id": "Int64", "ad": "string", "latency_ms": "float64",
              "created_at": "datetime64[ns, UTC]", "start_date": "datetime64[ns]",
              "features": "object"}
    empty = batch.to_dataframe(logs)
    assert {c: str(t) for c, t in empty.dtypes.items()} == dtypes and len(empty) == 0
    version = make_version()
    ad = make_ad()
    batch.bulk_insert(PredictionLog, [_log(version, 0, ad=None, created_at=T0),
                                      _log(version, 1, ad=ad.id, latency_ms=2.5)])
    full = batch.to_dataframe(logs.order_by(PredictionLog.request_id))
    assert {c: str(t) for c, t in full.dtypes.items()} == dtypes
    assert full["ad"].isna().tolist() == [True, False] and full["ad"][1] == str(ad.id)
    assert full["latency_ms"].isna().tolist() == [True, False] and full["latency_ms"][1] == 2.5
    assert str(full["created_at"][0]) == "2026-01-01 00:00:00+00:00"
    assert full["start_date"].isna().tolist() == [True, False]
    assert str(full["start_date"][1]) == "2026-01-01 00:00:00"


def test_dataframe_keeps_expression_columns(db, backend):
    pytest.importorskip("pandas")
    version = make_version()
    batch.bulk_insert(PredictionLog, [_log(version, i, score=i / 4) for i in range(4)])
    query = (PredictionLog.select(PredictionLog.model_version,
                                  peewee.fn.COUNT(PredictionLog.id).alias("n"))
             .group_by(PredictionLog.model_version))
    frame = batch.to_dataframe(query)
    assert list(frame.columns) == ["model_version", "n"]
    assert frame.to_dict("records") == [{"model_version": version.id, "n": 4}]
    assert {c: str(t) for c, t in frame.dtypes.items()} == {"model_version": "Int64",
                                                            "n": "object"}
    empty = batch.to_dataframe(query.where(PredictionLog.score > 1))
    assert {c: str(t) for c, t in empty.dtypes.items()} == {"model_version": "Int64",
                                                            "n": "object"}
    # an unaliased expression is named as its dict key: the driver's column name
    bare = batch.to_dataframe(PredictionLog.select(PredictionLog.model_version,
                                                   peewee.fn.COUNT(PredictionLog.id))
                              .group_by(PredictionLog.model_version))
    name = "count" if backend == "postgres" else "id"
    assert bare.to_dict("records") == [{"model_version": version.id, name: 4}]
    assert str(bare.dtypes[name]) == "object"


def test_dates_pandas_cannot_hold_are_refused_by_name(db):
    pytest.importorskip("pandas")
    make_campaign(start_date=dt.date(2026, 1, 1), end_date=dt.date(9999, 12, 31))
    with pytest.raises(ValidationError) as info:
        batch.to_dataframe(Campaign.select(Campaign.name, Campaign.end_date))
    assert str(info.value) == ("end_date holds a date outside pandas' datetime64[ns] range "
                               "(1677-09-22 to 2262-04-11); leave the column out or filter "
                               "those rows")
    assert len(batch.to_dataframe(Campaign.select(Campaign.name))) == 1


@pytest.mark.parametrize("query", [None, "SELECT 1", PredictionLog])
def test_to_dataframe_takes_select_queries_only(db, query):
    with pytest.raises(ValidationError, match="^query must be a peewee select query"):
        batch.to_dataframe(query)


# -- partitions and to_dask -----------------------------------------------------------------


def _sizes(ranges):
    return [part.query.count() for part in ranges]


def test_key_ranges_describe_themselves(db):
    version = make_version()
    batch.bulk_insert(PredictionLog, [_log(version, i) for i in range(4)])
    ids = sorted(p.id for p in PredictionLog.select())
    ranges = batch.partitions(PredictionLog.select(), 2, key="id")
    assert [repr(r) for r in ranges] == [f"<KeyRange None <= id < {ids[2]!r}>",
                                         f"<KeyRange {ids[2]!r} <= id < None>"]
    assert (ranges[0].lower, ranges[0].upper, ranges[1].lower, ranges[1].upper) == \
        (None, ids[2], ids[2], None)
    empty = batch.partitions(PredictionLog.select().where(PredictionLog.score > 1), 2)
    assert [repr(r) for r in empty] == ["<KeyRange None <= created_at < None>",
                                        "<KeyRange created_at: empty>"]


def test_partition_counts_at_their_edges(db):
    version = make_version()
    batch.bulk_insert(PredictionLog, [_log(version, i) for i in range(3)])
    query = PredictionLog.select()
    assert _sizes(batch.partitions(query, 1, key="id")) == [3]
    most = batch.partitions(query, batch.MAX_PARTITIONS, key="id")
    assert len(most) == 10_000 and sum(_sizes(most[:3] + most[-3:])) == 3
    # more ranges than rows: bounds at rows 0, 1, 2 (positions 3*k//5), the last repeated as
    # an empty [b, b)
    assert _sizes(batch.partitions(query, 5, key="id")) == [0, 1, 1, 0, 1]
    for n, shown in [(0, "0"), (10_001, "10001"), (True, "True"), ("4", "str"), (2.0, "float"),
                     (None, "NoneType"), (-3, "-3")]:
        with pytest.raises(ValidationError) as info:
            batch.partitions(query, n)
        assert str(info.value) == f"n must be a whole number from 1 to 10000, got {shown}"


class _Pair(peewee.Model):
    left = peewee.IntegerField(index=True)
    right = peewee.IntegerField()

    class Meta:
        primary_key = peewee.CompositeKey("left", "right")


class _Keyless(peewee.Model):
    at = peewee.IntegerField(index=True)
    note = peewee.IntegerField()

    class Meta:
        primary_key = False


@pytest.mark.parametrize("make_query,key,message", [
    (lambda: PredictionLog.select().limit(3), None,
     "cannot split a query with LIMIT: ranges of a key would change its result; split the "
     "query without it"),
    (lambda: PredictionLog.select().offset(3), None, "cannot split a query with OFFSET: ranges"),
    (lambda: PredictionLog.select().group_by(PredictionLog.ad), None,
     "cannot split a query with GROUP BY: ranges"),
    (lambda: PredictionLog.select().group_by(PredictionLog.ad).having(peewee.SQL("1 = 1")),
     None, "cannot split a query with GROUP BY: ranges"),
    (lambda: PredictionLog.select().having(peewee.SQL("1 = 1")), None,
     "cannot split a query with HAVING: ranges"),
    (lambda: PredictionLog.select().distinct(), None, "cannot split a query with DISTINCT"),
    (lambda: PredictionLog.select().distinct(PredictionLog.model_version), None,
     "cannot split a query with DISTINCT"),
    (lambda: PredictionLog.select() | PredictionLog.select(), None,
     "partitions splits a select over one model, e.g. PredictionLog.select(); got "
     "ModelCompoundSelectQuery"),
    (lambda: "SELECT 1", None, "partitions splits a select over one model, e.g. "
     "PredictionLog.select(); got str"),
    (lambda: _Pair.select(), None, "_pair has no single-column primary key; pass key="),
    (lambda: PredictionLog.select(), "latency_ms",
     "prediction_logs.latency_ms leads no index, so every range would scan the table; indexed "
     "keys: created_at, id, model_version, request_id"),
    (lambda: PredictionLog.select(), PredictionLog.ad,
     "prediction_logs.ad_id is nullable: rows with NULL would fall in no range; pick a NOT "
     "NULL key"),
    (lambda: PredictionLog.select(), "k" * 100,
     f"{('k' * 100)!r}"[:80] + " is not a column of prediction_logs; pass one of ad, "
     "created_at, features, id, latency_ms, model_version, request_id, score"),
    (lambda: PredictionLog.select(), Campaign.id, "<UUIDField: Campaign.id> is not a column"),
    (lambda: PredictionLog.select(), 5, "int is not a column of prediction_logs; pass one of"),
    (lambda: _Pair.select(), "right",
     "_pair.right leads no index, so every range would scan the table; indexed keys: left"),
    (lambda: _Keyless.select(), "note", "_keyless.note leads no index, so every range would "
     "scan the table; indexed keys: at"),
    (lambda: _Keyless.select(), None, "_keyless has no single-column primary key; pass key="),
    (lambda: User.select(), "email", None),
    (lambda: PredictionLog.select(), "model_version", None),  # leads the (version, time) index
])
def test_what_partitions_cannot_split_is_named(db, make_query, key, message):
    if message is None:
        assert len(batch.partitions(make_query(), 2, key=key)) == 2
        return
    with pytest.raises(ValidationError) as info:
        batch.partitions(make_query(), 2, key=key)
    assert str(info.value).startswith(message)


def test_a_partial_index_does_not_make_a_key_splittable(db):
    from within_db.models.analytics import ScheduledReport

    with pytest.raises(ValidationError) as info:  # scheduled_reports_due is WHERE is_active
        batch.partitions(ScheduledReport.select(), 2, key="next_run_at")
    assert str(info.value) == (
        "scheduled_reports.next_run_at leads no index, so every range would scan the table; "
        "indexed keys: id, report")


@pytest.fixture
def seeded_logs(seeded_db):
    pytest.importorskip("dask.dataframe")
    return PredictionLog.select(PredictionLog.id, PredictionLog.model_version,
                                PredictionLog.request_id, PredictionLog.ad,
                                PredictionLog.features, PredictionLog.created_at,
                                PredictionLog.score.alias("s"),
                                (PredictionLog.score * 2).alias("twice"))


def test_dask_ranges_read_what_to_dataframe_reads(seeded_logs):
    query = seeded_logs
    local = batch.to_dataframe(query).sort_values("id").reset_index(drop=True)
    assert len(local) > 100
    for n, chunk in [(3, 7), (1, 1_000_000)]:
        frame = batch.to_dask(query, n, key="id", chunk_size=chunk)
        assert frame.npartitions == n
        assert list(frame.columns) == ["id", "model_version", "request_id", "ad", "features",
                                       "created_at", "s", "twice"]
        assert frame.dtypes.equals(local.dtypes)
        computed = frame.compute(scheduler="sync")
        assert computed.dtypes.equals(local.dtypes)
        computed = computed.sort_values("id").reset_index(drop=True)
        assert computed.drop(columns=["twice"]).equals(local.drop(columns=["twice"]))
        assert computed["twice"].tolist() == pytest.approx(local["twice"].tolist())


def test_dask_graph_parts_describe_their_source(seeded_db, seeded_url):
    from within_db.batch import parallel
    from within_db.db import redact_url

    source = parallel._Source(seeded_db)
    shown = f"<within_db source {redact_url(seeded_url)}>"
    assert repr(source) == shown
    assert source.replica is None and source.after is None
    assert (source.max_lag, source.wait) == (0.0, 0.0)
    assert source.__dask_tokenize__() == source.token != parallel._Source(seeded_db).token
    reader = parallel._RangeReader(source, 10, [], {})
    assert repr(reader) == f"<within_db range reader of {shown}>"
    assert reader.__dask_tokenize__() == source.token
    opened = source.open()
    try:
        assert opened.execute_sql("SELECT count(*) FROM users").fetchone()[0] > 0
        # a read-only connection refuses writes
        with pytest.raises((peewee.OperationalError, ReadOnlyError)):
            opened.execute_sql("DELETE FROM audit_logs")
    finally:
        opened.close()


def test_a_dask_task_reads_the_replica_within_the_callers_limits(replicated_db):
    from within_db.batch import parallel

    limits = (REPLICA_TEST_OPTIONS["max_replica_lag"], REPLICA_TEST_OPTIONS["replica_wait"])
    opened = parallel._Source(replicated_db).open()  # what each task opens
    try:
        assert opened.replica is not None
        assert opened.replica.db.url == replicated_db.replica.db.url
        assert (opened.replica.max_lag, opened.replica.wait) == limits  # not the defaults
    finally:
        opened.close()


@pytest.mark.parametrize("chunk", [0, 1_000_001, True, "5"])
def test_to_dask_checks_chunk_size(seeded_logs, chunk):
    with pytest.raises(ValidationError, match="chunk_size"):
        batch.to_dask(seeded_logs, 2, key="id", chunk_size=chunk)


def test_to_dask_names_every_column_or_refuses(seeded_logs):
    with pytest.raises(ValidationError) as info:
        batch.to_dask(PredictionLog.select(PredictionLog.id, PredictionLog.score * 2), 2)
    assert str(info.value) == ("to_dask needs a name for every column: alias expressions, e.g. "
                               "fn.COUNT(PredictionLog.id).alias('n')")


def test_dask_ranges_convert_money_and_uuid_keys_as_to_dataframe(seeded_db):
    pytest.importorskip("dask.dataframe")
    query = Campaign.select(Campaign.id, Campaign.owner, Campaign.total_budget_micros,
                            Campaign.start_date, Campaign.created_at)
    local = batch.to_dataframe(query).sort_values("id").reset_index(drop=True)
    computed = batch.to_dask(query, 3).compute(scheduler="sync")
    computed = computed.sort_values("id").reset_index(drop=True)
    assert computed.equals(local)
    assert local["total_budget_micros"].max() < 10**7  # units, not micros
