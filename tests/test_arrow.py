"""batch.to_arrow: typed record batches from the fields' codecs, equal to what stream reads,
the same on both backends; streamed a batch at a time, from the replica when there is one."""

import datetime as dt
import subprocess
import sys
import uuid
from decimal import Decimal

import peewee
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import within_db
from within_db import batch
from within_db.canonical import canonical_json
from within_db.errors import ValidationError
from within_db.fields import (
    BoolCodec,
    DateCodec,
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
from within_db.models.ml_system import PredictionLog
from within_db.models.users import User

from .conftest import replica_url_of
from .helpers import make_version

UTC = dt.UTC
ARROW = {IntCodec: pa.int64(), FloatCodec: pa.float64(), BoolCodec: pa.bool_(),
         TextCodec: pa.string(), UUIDCodec: pa.string(), DateCodec: pa.date32(),
         InstantCodec: pa.timestamp("us", tz="UTC"), MoneyCodec: pa.int64(),
         JSONCodec: pa.string()}


def _codec_type(field):
    codec = codec_of(field)
    return next(t for cls, t in ARROW.items() if isinstance(codec, cls))


def _expected(field, value):
    """What to_arrow holds for a value ``stream`` read, by the field's codec (the oracle)."""
    if value is None:
        return None
    codec = codec_of(field)
    if isinstance(codec, UUIDCodec):
        return str(value)
    if isinstance(codec, MoneyCodec):
        return int(Decimal(value).scaleb(6))
    if isinstance(codec, JSONCodec):
        return canonical_json(value)
    return value


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_every_model_is_typed_from_its_codecs(model):
    schema = batch.arrow.arrow_schema(model.select())
    fields = model._meta.sorted_fields
    assert schema.names == [f.column_name for f in fields]
    for field in fields:
        column = schema.field(field.column_name)
        assert column.type == _codec_type(field), field.name
        assert column.nullable == bool(field.null), field.name


def test_to_arrow_equals_stream_for_every_model(seeded_db):
    filled = 0
    for model in ALL_MODELS:
        query = model.select().order_by(*[f.asc() for f in model._meta.sorted_fields[:1]])
        table = batch.to_arrow(query, batch_size=7).read_all()
        rows = list(batch.stream(query.dicts()))
        assert table.num_rows == len(rows), model.__name__
        filled += bool(rows)
        fields = model._meta.sorted_fields
        expected = [{f.column_name: _expected(f, row[f.name]) for f in fields} for row in rows]
        assert table.to_pylist() == expected, model.__name__
    assert filled >= 20  # the tiny seed fills most tables


def test_instants_are_utc_microseconds_and_dates_date32(db):
    version = make_version()
    moment = dt.datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-7)))
    PredictionLog.create(model_version=version, request_id="tz", score=0.5, created_at=moment)
    column = batch.to_arrow(PredictionLog.select(PredictionLog.created_at)).read_all()["created_at"]
    assert column.type == pa.timestamp("us", tz="UTC")
    assert column.cast(pa.int64()).to_pylist() == [
        int((moment - dt.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 10**6 + 123456]
    assert column.to_pylist()[0].utcoffset() == dt.timedelta(0)


def test_batches_stream_at_most_batch_size_rows(db):
    version = make_version()
    batch.bulk_insert(PredictionLog, [{"model_version": version.id, "request_id": f"b{i}",
                                       "score": 0.1, "created_at": dt.datetime(2026, 2, 1,
                                                                               tzinfo=UTC)}
                                      for i in range(5)])
    reader = batch.to_arrow(PredictionLog.select().order_by(PredictionLog.id), batch_size=2)
    assert isinstance(reader, pa.RecordBatchReader)
    assert reader.schema.field("features").type == pa.string()
    assert [b.num_rows for b in reader] == [2, 2, 1]
    empty = batch.to_arrow(PredictionLog.select().where(PredictionLog.score > 1))
    assert empty.read_all().num_rows == 0 and empty.schema.names[0] == "id"


def test_aliases_name_columns_and_joined_columns_are_nullable(db):
    version = make_version()
    PredictionLog.create(model_version=version, request_id="a", score=0.5)
    query = (PredictionLog.select(PredictionLog.score.alias("p"), User.email)
             .join(User, peewee.JOIN.LEFT_OUTER, on=(User.email == PredictionLog.request_id)))
    table = batch.to_arrow(query).read_all()
    assert table.schema.names == ["p", "email"]
    assert table.schema.field("p").nullable is False and table.schema.field("email").nullable
    assert table.to_pylist() == [{"p": 0.5, "email": None}]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(
        blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=5), inner, max_size=3),
    max_leaves=8)
ROW = st.fixed_dictionaries({
    "request_id": st.text(st.characters(blacklist_categories=("Cs",),
                                        blacklist_characters="\x00"), min_size=1, max_size=64),
    "score": st.floats(allow_nan=False, allow_infinity=False),
    "features": st.dictionaries(st.text(max_size=5).filter(lambda k: "\x00" not in k), JSON,
                                max_size=4),
    "latency_ms": st.none() | st.floats(0, 1e6),
    "created_at": st.datetimes(dt.datetime(2024, 1, 1), dt.datetime(2026, 12, 31),
                               timezones=st.sampled_from([UTC, dt.timezone(
                                   dt.timedelta(hours=5, minutes=30))])),
})


@given(rows=st.lists(ROW, min_size=1, max_size=5, unique_by=lambda r: r["request_id"]))
def test_any_prediction_log_reads_back_exactly(db, rows):
    with db.atomic() as savepoint:
        version = make_version()
        batch.bulk_insert(PredictionLog, [{**r, "model_version": version.id} for r in rows])
        table = batch.to_arrow(PredictionLog.select().order_by(PredictionLog.id)).read_all()
        got = table.to_pylist()
        assert [g["request_id"] for g in got] == [r["request_id"] for r in rows]
        for g, r in zip(got, rows, strict=True):
            assert g["score"] == r["score"] and g["latency_ms"] == r["latency_ms"]
            assert g["created_at"] == r["created_at"]  # the same instant, shown in UTC
            assert g["features"] == canonical_json(r["features"])
            assert g["model_version_id"] == version.id
        savepoint.rollback()


@pytest.mark.parametrize("kwargs, message", [
    ({"query": "SELECT 1"}, "peewee select"),
    ({"query": User.select().dicts(), "batch_size": 0}, "batch_size"),
    ({"query": User.select(), "batch_size": True}, "batch_size"),
    ({"query": User.select(), "batch_size": 2_000_000}, "batch_size"),
    ({"query": User.select(peewee.fn.COUNT(User.id).alias("n"))}, "'n' is not a within_db field"),
    ({"query": User.select(User.email, User.email)}, "distinct column names"),
])
def test_misuse_is_refused_before_any_row(db, kwargs, message):
    with pytest.raises(ValidationError, match=message):
        batch.to_arrow(**kwargs)


def test_within_db_imports_without_pyarrow_and_to_arrow_names_the_extra():
    code = ("import sys; sys.modules['pyarrow'] = None\n"
            "import within_db, within_db.batch, within_db.archive, within_db.cli\n"
            "within_db.connect('sqlite:///:memory:')\n"
            "from within_db.models.users import User\n"
            "try:\n"
            "    within_db.batch.to_arrow(User.select())\n"
            "except within_db.errors.ConfigurationError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout == "Arrow and Parquet need pyarrow: pip install 'within_db[lake]'\n"
    plain = subprocess.run([sys.executable, "-c", "import sys, within_db, within_db.batch, "
                            "within_db.archive, within_db.cli; print('pyarrow' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert plain.stdout.strip() == "False"


def test_to_arrow_reads_from_the_replica(replicated_db, replicated_url):
    version = make_version()
    for i in range(3):
        PredictionLog.create(model_version=version, request_id=f"rep-{uuid.uuid4()}-{i}",
                             score=0.5)
    with replicated_db.read_your_writes():
        reader = batch.to_arrow(PredictionLog.select().where(
            PredictionLog.model_version == version.id), batch_size=1)
        first = reader.read_next_batch()  # the reader now holds a cursor open on its server
        name = replicated_url.rpartition("/")[2]
        sql = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
               "AND query LIKE 'FETCH FORWARD%%'")
        admin = within_db.db.make_database(replica_url_of(replicated_url))
        try:
            assert admin.execute_sql(sql, (name,)).fetchone()[0] == 1
        finally:
            admin.close()
        assert first.num_rows == 1  # batch_size holds on the replica's cursor too
        assert [b.num_rows for b in reader] == [1, 1]
