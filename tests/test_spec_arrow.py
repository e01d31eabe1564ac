"""within_db.batch.to_arrow as a specification: exact refusals, batch_size at its edges, and a
driver error during the read leaving as the WithinDBError that names its cause.
"""

import datetime as dt
import sys

import peewee
import pytest

from within_db import batch
from within_db.batch import arrow
from within_db.errors import ConfigurationError, NotMigratedError, ValidationError
from within_db.fields import BigIntegerField
from within_db.models.ml_system import PredictionLog
from within_db.models.users import User

from .helpers import make_version


def _logs(n):
    version = make_version()
    batch.bulk_insert(PredictionLog, [
        {"model_version": version.id, "request_id": f"a{i}", "score": 0.5,
         "created_at": dt.datetime(2026, 2, 1, tzinfo=dt.UTC)} for i in range(n)])
    return PredictionLog.select(PredictionLog.request_id).order_by(PredictionLog.id)


def test_batch_size_takes_one_to_a_million_rows(db):
    query = _logs(3)
    assert [b.num_rows for b in batch.to_arrow(query, batch_size=1)] == [1, 1, 1]
    assert [b.num_rows for b in batch.to_arrow(query, batch_size=1_000_000)] == [3]
    for size in (0, 1_000_001):
        with pytest.raises(ValidationError) as info:
            batch.to_arrow(query, batch_size=size)
        assert str(info.value) == "batch_size must be from 1 to 1000000"


@pytest.mark.parametrize("query, shown", [
    (lambda: User.select(peewee.fn.COUNT(User.id)), "'Function'"),
    (lambda: User.select(peewee.fn.COUNT(User.id).alias("n")), "'n'"),
])
def test_an_expression_column_is_refused_with_the_way_out(db, query, shown):
    with pytest.raises(ValidationError) as info:
        batch.to_arrow(query())
    assert str(info.value) == (
        f"to_arrow types every column from its field, and {shown} is not a within_db field; "
        "select fields (aliases are fine) and compute in Arrow, DuckDB or pandas")


def test_repeated_column_names_are_all_named(db):
    with pytest.raises(ValidationError) as info:
        batch.to_arrow(User.select(User.id, User.email, User.email, User.id))
    assert str(info.value) == ("to_arrow needs distinct column names; alias the repeated "
                               "email, id")


def test_a_driver_error_while_reading_names_its_cause(db):
    class Missing(peewee.Model):
        n = BigIntegerField()

        class Meta:
            database = db
            table_name = "spec_arrow_missing"

    reader = batch.to_arrow(Missing.select(Missing.n))  # the query runs when read
    with pytest.raises(NotMigratedError) as info:
        reader.read_all()
    assert str(info.value) == ("the schema is missing a table or column; run "
                               "`within-db migrate up`")


def test_without_pyarrow_the_refusal_names_the_extra(db, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    for call in (lambda: batch.to_arrow(User.select()), lambda: arrow.arrow_schema(User.select())):
        with pytest.raises(ConfigurationError) as info:
            call()
        assert str(info.value) == "Arrow and Parquet need pyarrow: pip install 'within_db[lake]'"


@pytest.mark.parametrize("query, kind", [("SELECT 1", "str"), (User, "ModelBase"),
                                         (User.delete(), "ModelDelete")])
def test_only_select_queries_are_read(db, query, kind):
    with pytest.raises(ValidationError) as info:
        batch.to_arrow(query)
    assert str(info.value) == f"query must be a peewee select query, not {kind}"
