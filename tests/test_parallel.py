"""Parallel reads: partitions() splits a query into key ranges, to_dask() reads them in workers.

Ranges must hold every row of the query exactly once whatever the keys look like; a real
multi-process Dask cluster must get the same answers as SQL, on SQLite and on PostgreSQL (read
from the replica there).
"""

import datetime as dt
import uuid
from collections import Counter

import peewee
import pytest

import within_db
from within_db import batch, migrate
from within_db.db import database
from within_db.errors import ConfigurationError, ValidationError
from within_db.models.campaigns import Ad, Campaign
from within_db.models.ml_system import PredictionLog

from .conftest import (
    REPLICA_TEST_OPTIONS,
    migrate_for_tests,
    replica_url_of,
    wait_for_replica_database,
)
from .helpers import make_ad, make_campaign, make_user, make_version

UTC = dt.UTC
BASE = dt.datetime(2026, 1, 1, tzinfo=UTC)


def _logs(version, count, start=0, **extra):
    return [{"model_version": version.id, "request_id": f"p{start + i}-{uuid.uuid4().hex[:6]}",
             "score": (i % 1000) / 1024, "created_at": BASE + dt.timedelta(seconds=i), **extra}
            for i in range(count)]


def _covered(query, ranges, n):
    """Assert ``ranges`` are ``n`` parts holding each row of ``query`` exactly once."""
    assert len(ranges) == n
    pk = query.model._meta.primary_key
    parts = [[row[pk.name] for row in part.query.select(pk).dicts()] for part in ranges]
    seen = [key for part in parts for key in part]
    assert len(seen) == len(set(seen))  # no row in two ranges
    assert sorted(seen, key=str) == sorted((r[pk.name] for r in query.select(pk).dicts()),
                                           key=str)
    return [len(p) for p in parts]


# -- partitions -----------------------------------------------------------------------------


def test_ranges_are_even_and_cover_every_row_once(db):
    batch.bulk_insert(PredictionLog, _logs(make_version(), 100))
    query = PredictionLog.select()
    assert _covered(query, batch.partitions(query, 4), 4) == [25, 25, 25, 25]
    assert _covered(query, batch.partitions(query, 1), 1) == [100]
    assert _covered(query, batch.partitions(query, 3), 3) == [33, 33, 34]


def test_an_empty_table_gives_empty_ranges(db):
    query = PredictionLog.select()
    ranges = batch.partitions(query, 5)
    assert _covered(query, ranges, 5) == [0] * 5
    assert [r.empty for r in ranges] == [False, True, True, True, True]
    # a row written after the split still lands in exactly one range
    batch.bulk_insert(PredictionLog, _logs(make_version(), 1))
    assert _covered(query, ranges, 5) == [1, 0, 0, 0, 0]


def test_more_ranges_than_rows(db):
    batch.bulk_insert(PredictionLog, _logs(make_version(), 3))
    query = PredictionLog.select()
    sizes = _covered(query, batch.partitions(query, 10), 10)
    assert sum(sizes) == 3 and max(sizes) == 1


def test_skewed_keys_still_split_evenly(db):
    version = make_version()
    far = [dict(row, id=10**12 + i) for i, row in enumerate(_logs(version, 30, start=1000))]
    PredictionLog.insert_many(_logs(version, 30) + far).execute()
    query = PredictionLog.select()
    ranges = batch.partitions(query, 6, key="id")  # not the default, the partition column
    assert _covered(query, ranges, 6) == [10] * 6  # quantiles, not equal widths
    # rows past either end after the split land in the open outer ranges
    PredictionLog.insert_many([dict(_logs(version, 1, start=5000)[0], id=10**15)]).execute()
    assert _covered(query, ranges, 6)[-1] == 11


def test_uuid_keys_split_alike_on_both_backends(db):
    owner = make_user()
    for _ in range(20):
        make_campaign(owner=owner)
    query = Campaign.select().where(Campaign.owner == owner)
    sizes = _covered(query, batch.partitions(query, 3), 3)
    assert sorted(sizes) == [6, 7, 7]


def test_a_shared_key_value_stays_in_one_range(db):
    big, small = make_campaign(), make_campaign()
    for campaign, count in ((big, 9), (small, 3)):
        for _ in range(count):
            make_ad(campaign=campaign)
    query = Ad.select().where(Ad.campaign.in_([big.id, small.id]))
    ranges = batch.partitions(query, 4, key=Ad.campaign)
    sizes = _covered(query, ranges, 4)
    assert sorted(s for s in sizes if s) == [3, 9]


def test_filtered_and_joined_queries_split_too(db):
    version, other = make_version(), make_version()
    ad = make_ad()
    batch.bulk_insert(PredictionLog, _logs(version, 40, ad=ad.id) + _logs(other, 40, 100))
    query = (PredictionLog.select(PredictionLog, Ad.name).join(Ad)
             .where(PredictionLog.model_version == version.id)
             .order_by(PredictionLog.created_at.desc()))
    ranges = batch.partitions(query, 4, key="id")
    assert _covered(query, ranges, 4) == [10, 10, 10, 10]


@pytest.mark.parametrize("n", [0, -1, True, "4", 2.5, None, batch.MAX_PARTITIONS + 1])
def test_a_bad_count_is_refused(db, n):
    with pytest.raises(ValidationError, match="whole number from 1 to 10000"):
        batch.partitions(PredictionLog.select(), n)


@pytest.mark.parametrize("make_query, key, expected", [
    (lambda: PredictionLog.select(), PredictionLog.score, "leads no index"),
    (lambda: PredictionLog.select(), "latency_ms", "leads no index"),
    (lambda: PredictionLog.select(), PredictionLog.ad, "nullable"),
    (lambda: PredictionLog.select(), Campaign.id, "not a column of prediction_logs"),
    (lambda: PredictionLog.select(), "nope", "not a column of prediction_logs"),
    (lambda: PredictionLog.select().limit(10), None, "LIMIT"),
    (lambda: PredictionLog.select().offset(10), None, "OFFSET"),
    (lambda: PredictionLog.select(PredictionLog.model_version, peewee.fn.COUNT(1))
     .group_by(PredictionLog.model_version), None, "GROUP BY"),
    (lambda: PredictionLog.select(PredictionLog.model_version).distinct(), None, "DISTINCT"),
    (lambda: PredictionLog.select() | PredictionLog.select(), None, "one model"),
    (lambda: peewee.Select(columns=[peewee.SQL("1")]), None, "one model"),
])
def test_unsplittable_queries_and_keys_are_refused(db, make_query, key, expected):
    with pytest.raises(ValidationError, match=expected):
        batch.partitions(make_query(), 2, key=key)


# -- to_dask on a real multi-process cluster ------------------------------------------------

ROWS = 200_000
SHARE = [0, 0, 0, 1, 1, 2, 3]  # skewed: version 0 gets 3/7 of the rows


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as local, \
            distributed.Client(local) as client:
        yield client


@pytest.fixture(scope="module")
def logged(databases, request):
    """200,000 prediction logs over four versions in a database of its own (module scope)."""
    url = databases.new_url()
    options = {}
    if databases.kind == "postgres":
        request.getfixturevalue("replica_available")
        wait_for_replica_database(url)
        options = {"replica": replica_url_of(url), **REPLICA_TEST_OPTIONS}
    db = within_db.connect(url, **options)
    migrate_for_tests(db)  # with the months the rows fall in
    versions = [make_version() for _ in range(4)]
    batch.bulk_insert(PredictionLog, (
        {"model_version": versions[SHARE[i % 7]].id, "request_id": f"r{i}",
         "score": (i % 1000) / 1024, "created_at": BASE + dt.timedelta(seconds=i)}
        for i in range(ROWS)))
    yield db, versions
    db.close()
    database.initialize(None)


@pytest.fixture
def bound_logs(logged):
    db, versions = logged
    database.initialize(db)
    yield db, versions
    database.initialize(None)


def test_dask_workers_agree_with_sql(bound_logs, cluster):
    db, versions = bound_logs
    count, total = PredictionLog.select(peewee.fn.COUNT(PredictionLog.id),
                                        peewee.fn.SUM(PredictionLog.score)).scalar(as_tuple=True)
    per_version = {v: n for v, n in PredictionLog.select(PredictionLog.model_version,
                                                         peewee.fn.COUNT(PredictionLog.id))
                   .group_by(PredictionLog.model_version).tuples()}
    with db.read_your_writes():  # the workers wait until the replica has these rows
        frame = batch.to_dask(PredictionLog.select(), 4)
    assert frame.npartitions == 4
    got_count, got_total, got_versions = cluster.compute(
        [frame.score.count(), frame.score.sum(), frame.model_version.value_counts()],
        sync=True)
    assert (count, total) == (ROWS, sum((i % 1000) / 1024 for i in range(ROWS)))
    assert (got_count, got_total) == (count, total)  # dyadic scores: exact in any order
    assert {int(k): int(v) for k, v in got_versions.items()} == per_version
    shares = Counter(SHARE[i % 7] for i in range(ROWS))
    assert per_version == {versions[k].id: n for k, n in shares.items()}


def test_dask_frames_have_to_dataframe_dtypes(bound_logs, cluster):
    query = PredictionLog.select().where(PredictionLog.id <= 5000)
    frame = batch.to_dask(query, 3)
    local = batch.to_dataframe(query)
    assert frame.dtypes.equals(local.dtypes)
    computed = cluster.compute(frame, sync=True)
    assert computed.dtypes.equals(local.dtypes)
    assert computed.sort_values("id").reset_index(drop=True).equals(
        local.sort_values("id").reset_index(drop=True))


def test_dask_workers_read_the_replica(bound_logs, cluster, backend):
    on_replica = peewee.fn.pg_is_in_recovery() if backend == "postgres" else peewee.Value(0)
    query = PredictionLog.select(PredictionLog.id, on_replica.alias("on_replica")).where(
        PredictionLog.id <= 1000)
    frame = batch.to_dask(query, 2)
    flags = set(cluster.compute(frame.on_replica, sync=True).tolist())
    assert flags == ({True} if backend == "postgres" else {0})


def test_the_graph_and_its_reprs_show_no_password(bound_logs, backend):
    db, _ = bound_logs
    if backend == "sqlite":
        url = db.url  # files have no password; the URL is absolute in the graph
    else:  # trust authentication ignores the password; it must still never be shown
        url = db.url.replace("root@", "root:s3cret@")
    other = within_db.connect(url)
    try:
        frame = batch.to_dask(PredictionLog.select().where(PredictionLog.id <= 10), 2)
        graph = dict(frame.__dask_graph__())
        text = repr(frame) + repr(graph) + "".join(map(str, graph))
        assert "s3cret" not in text
        assert frame.compute(scheduler="sync")["id"].tolist() == list(range(1, 11))
    finally:
        other.close()
        database.initialize(db)


def test_to_dask_needs_a_database_other_processes_can_open():
    db = within_db.connect("sqlite:///:memory:")
    try:
        migrate.upgrade(db)
        with pytest.raises(ConfigurationError, match="in-memory"):
            batch.to_dask(PredictionLog.select(), 2)
    finally:
        db.close()
        database.initialize(None)


def test_to_dask_refuses_unnamed_expressions_and_bad_counts(bound_logs):
    with pytest.raises(ValidationError, match="alias expressions"):
        batch.to_dask(PredictionLog.select(PredictionLog.id, peewee.fn.abs(PredictionLog.score)),
                      2)
    with pytest.raises(ValidationError, match="npartitions"):
        batch.to_dask(PredictionLog.select(), 0)


def test_to_dask_explains_the_extra_without_dask(bound_logs, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(ConfigurationError, match=r"within_db\[dask\]"):
        batch.to_dask(PredictionLog.select(), 2)


def test_prediction_logs_split_on_their_partition_key_by_default(db):
    batch.bulk_insert(PredictionLog, _logs(make_version(), 8))
    query = PredictionLog.select()
    ranges = batch.partitions(query, 2)
    assert {r.key for r in ranges} == {"created_at"}
    assert ranges[0].upper == BASE + dt.timedelta(seconds=4)
    assert _covered(query, ranges, 2) == [4, 4]
