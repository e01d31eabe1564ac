"""Archiving prediction logs to a hive-partitioned Parquet dataset: read back by pyarrow and
DuckDB equal to the database, safe to rerun, verified before any drop, flat in memory, and
refusing hostile input with one error line and nothing written."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import within_db
from within_db import archive, batch, partitions
from within_db.cli import cli
from within_db.db import database
from within_db.errors import NothingToArchiveError, VerificationError
from within_db.models.ml_system import PredictionLog

from .conftest import (
    REPLICA_TEST_OPTIONS,
    Databases,
    migrate_for_tests,
    replica_lock,
    replica_url_of,
    wait_until_replica_current,
)
from .helpers import make_ad, make_version

UTC = dt.UTC
TODAY = dt.date(2026, 11, 25)
COLUMNS = ["id", "model_version_id", "request_id", "ad_id", "score", "features", "latency_ms",
           "created_at"]


def _fill(version, counts, tag="r", ad=None):
    """``counts[(year, month)]`` prediction logs per month, with every kind of value."""
    rows = []
    for (year, month), n in counts.items():
        for i in range(n):
            rows.append({
                "model_version": version.id, "request_id": f"{tag}-{year}-{month}-{i}",
                "ad": ad.id if ad is not None and i % 2 else None, "score": i / 7,
                "features": {"i": i, "ünï": "tab\there", "nested": [1.5, None, {"z": 1e16}]},
                "latency_ms": None if i % 3 == 0 else 2.25 * i,
                # the last instant of the month in UTC, given in another offset
                "created_at": (dt.datetime(year, month, 1, tzinfo=UTC) + dt.timedelta(
                    days=i % 28, seconds=i)).astimezone(dt.timezone(dt.timedelta(hours=-5))),
            })
    return batch.bulk_insert(PredictionLog, rows)


def _database_rows(before):
    query = (PredictionLog.select().where(
        PredictionLog.created_at < dt.datetime(before.year, before.month, 1, tzinfo=UTC))
        .order_by(PredictionLog.id))
    return batch.to_arrow(query).read_all()


def _files(directory):
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*")
                  if p.is_file())


@pytest.fixture
def logs(migrated_fresh_db):
    """A committed database with logs in Jan (5), Feb (3) and Mar (4) 2026."""
    version = make_version()
    _fill(version, {(2026, 1): 5, (2026, 2): 3, (2026, 3): 4}, ad=make_ad())
    return version


def test_the_dataset_reads_back_equal_to_the_database_in_pyarrow_and_duckdb(logs, tmp_path):
    lake = tmp_path / "lake"
    expected = _database_rows(dt.date(2026, 3, 1))
    done = archive.archive("2026-03", lake, today=TODAY)
    written = [m for m in done if m.action == "written"]
    assert [(m.month, m.rows) for m in written] == [(dt.date(2026, 1, 1), 5),
                                                    (dt.date(2026, 2, 1), 3)]
    assert {m.action for m in done} <= {"written", "empty"}  # PostgreSQL's empty months
    assert _files(lake) == ["month=2026-01/prediction_logs-2026-01.parquet",
                            "month=2026-02/prediction_logs-2026-02.parquet"]
    meta = pq.read_metadata(lake / "month=2026-01" / "prediction_logs-2026-01.parquet")
    assert meta.row_group(0).column(0).compression == "ZSTD"

    dataset = ds.dataset(lake, partitioning="hive", format="parquet")
    table = dataset.to_table().sort_by("id")
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("id").type == pa.int64()
    assert table.select(COLUMNS).equals(expected.select(COLUMNS))
    assert table["month"].to_pylist() == [f"{t:%Y-%m}" for t in
                                          expected["created_at"].to_pylist()]
    assert json.loads(table["features"][0].as_py())["nested"][2] == {"z": 10**16}

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    got = con.execute(f"SELECT {', '.join(COLUMNS)}, month::VARCHAR FROM read_parquet(?, "
                      "hive_partitioning = true) ORDER BY id",
                      [str(lake / "*" / "*.parquet")]).fetchall()
    want = expected.to_pylist()
    assert [row[:-1] for row in got] == [tuple(r[c] for c in COLUMNS) for r in want]
    assert [row[-1] for row in got] == [f"{r['created_at']:%Y-%m}" for r in want]
    assert got[0][7].utcoffset() == dt.timedelta(0)
    assert con.execute("SELECT count(*) FROM read_parquet(?, hive_partitioning = true) "
                       "WHERE json_extract(features, '$.i')::INT = 0",
                       [str(lake / "*" / "*.parquet")]).fetchone() == (2,)


def test_a_rerun_keeps_complete_months_and_rewrites_changed_ones(logs, tmp_path):
    lake = tmp_path / "lake"
    archive.archive("2026-03", lake, today=TODAY)
    january = lake / "month=2026-01" / "prediction_logs-2026-01.parquet"
    february = lake / "month=2026-02" / "prediction_logs-2026-02.parquet"
    inode = january.stat().st_ino
    again = {m.month: m.action for m in archive.archive("2026-03", lake, today=TODAY)}
    assert again[dt.date(2026, 1, 1)] == again[dt.date(2026, 2, 1)] == "kept"
    assert january.stat().st_ino == inode  # not rewritten
    # a late row for January, and a February file that was damaged
    _fill(logs, {(2026, 1): 1}, tag="late")
    february.write_bytes(b"PAR1 not really")
    third = {m.month: (m.action, m.rows) for m in archive.archive("2026-03", lake, today=TODAY)}
    assert third[dt.date(2026, 1, 1)] == ("written", 6)
    assert third[dt.date(2026, 2, 1)] == ("written", 3)
    assert _files(lake) == ["month=2026-01/prediction_logs-2026-01.parquet",
                            "month=2026-02/prediction_logs-2026-02.parquet"]  # no duplicate
    assert ds.dataset(lake, partitioning="hive").count_rows() == 9


def test_drop_removes_the_verified_months_and_the_archive_keeps_them(logs, tmp_path, backend):
    lake = tmp_path / "lake"
    done = archive.archive("2026-03", lake, drop=True, today=TODAY)
    assert {m.month for m in done if m.dropped and m.rows} == {dt.date(2026, 1, 1),
                                                               dt.date(2026, 2, 1)}
    left = sorted(r.created_at.month for r in PredictionLog.select())
    assert left == [3] * 4
    months = [p.start for p in partitions.list_partitions()]
    assert dt.date(2026, 2, 1) not in months and dt.date(2026, 3, 1) in months
    if backend == "postgres":  # every month before March went, empty ones too
        assert months[0] == dt.date(2026, 3, 1)
    assert ds.dataset(lake, partitioning="hive").count_rows() == 8
    with pytest.raises(NothingToArchiveError, match="no rows before 2026-03"):
        archive.archive("2026-03", lake, drop=True, today=TODAY)
    assert ds.dataset(lake, partitioning="hive").count_rows() == 8  # the archive is untouched


def test_a_month_that_changes_after_verification_is_kept(logs, backend):
    counts = {p.start: p.rows for p in partitions.list_partitions()}
    wrong = {**counts, dt.date(2026, 2, 1): 2}  # as if a row arrived after the archive
    with pytest.raises(VerificationError, match="2026-02 now holds 3 rows") as info:
        partitions.drop("2026-03", today=TODAY, expected=wrong)
    assert "dropped before it: " in str(info.value) and "2026-01" in str(info.value)
    assert PredictionLog.select().count() == 7  # January went, February stayed whole
    assert dt.date(2026, 2, 1) in [p.start for p in partitions.list_partitions()]
    if backend == "postgres":  # attached again: February's rows are writable and readable
        _fill(logs, {(2026, 2): 1}, tag="after")
        assert PredictionLog.select().count() == 8
    with pytest.raises(VerificationError, match="was not verified"):
        partitions.drop("2026-03", today=TODAY, expected={})


def test_archive_memory_stays_flat(migrated_fresh_db, fresh_url, tmp_path):
    version = make_version()
    rows = 60_000
    batch.bulk_insert(PredictionLog, (
        {"model_version": version.id, "request_id": f"m{i}", "score": 0.5,
         "features": {"ctr_7d": i / rows, "hour": i % 24, "platform": "meta" * 20},
         "created_at": dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=i)}
        for i in range(rows)))
    migrated_fresh_db.close()
    # a fresh process, its peak RSS reset after the imports and Arrow's one-off compute set-up
    # (~50 MB at the first cast; Linux: clear_refs 5): the growth covers Python objects and
    # Arrow's allocator alike
    code = (
        "import sys, datetime, within_db, pyarrow, pyarrow.parquet\n"
        "pyarrow.array(['2026-01-01 00:00:00+00:00']).cast(pyarrow.timestamp('us', 'UTC'))\n"
        "from within_db import archive\n"
        "within_db.connect(sys.argv[1])\n"
        "def kb(key):\n"
        "    status = open('/proc/self/status').read().split(key + ':')[1]\n"
        "    return int(status.split()[0])\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = kb('VmRSS')\n"
        "done = archive.archive('2026-02', sys.argv[2], today=datetime.date(2026, 11, 25),\n"
        "                       row_group_rows=5_000, batch_size=1_000)\n"
        "print(sum(m.rows for m in done), (kb('VmHWM') - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code, fresh_url, str(tmp_path / "lake")],
                         capture_output=True, text=True, check=True)
    archived, grown_mb = map(int, out.stdout.split())
    print(f"archive of {rows:,} rows grew the peak RSS by {grown_mb} MB")
    assert archived == rows
    assert grown_mb < 40, f"peak memory grew by {grown_mb} MB for {rows:,} rows"
    meta = pq.read_metadata(tmp_path / "lake" / "month=2026-01" / "prediction_logs-2026-01.parquet")
    assert meta.num_row_groups == 12 and meta.num_rows == rows


# -- a replica that lags: verification against the primary refuses the drop --------------------


@pytest.fixture
def replicated_logs(replica_available, tmp_path_factory):
    """A PostgreSQL database (replicas are PostgreSQL's) with January logs on the replica."""
    factory = Databases("postgres", tmp_path_factory)
    url = factory.new_url()
    db = within_db.db.make_database(url)
    migrate_for_tests(db)
    db.close()
    with replica_lock(exclusive=True):
        db = within_db.connect(url, replica=replica_url_of(url), **REPLICA_TEST_OPTIONS)
        try:
            version = make_version()
            _fill(version, {(2026, 1): 4})
            wait_until_replica_current(url)
            yield url, db, version
        finally:
            db.close()
            database.initialize(None)
            factory.drop_all()


def test_a_lagging_replica_fails_verification_and_nothing_is_dropped(replicated_logs,
                                                                     tmp_path):
    url, db, version = replicated_logs
    admin = within_db.db.make_database(replica_url_of(url))
    admin.execute_sql("SELECT pg_wal_replay_pause()")
    try:
        _fill(version, {(2026, 1): 1}, tag="unreplayed")  # on the primary only, for now
        assert db.for_reads() is db.replica.db  # within its lag bound: reads go there
        with pytest.raises(VerificationError, match=r"2026-01 \(5 rows in the database, 4 rows "
                                                    r"in the file\).*nothing was dropped"):
            archive.archive("2026-02", tmp_path, drop=True, today=TODAY)
    finally:
        admin.execute_sql("SELECT pg_wal_replay_resume()")
        admin.close()
    assert PredictionLog.select().count() == 5
    assert dt.date(2026, 1, 1) in [p.start for p in partitions.list_partitions()]
    wait_until_replica_current(url)
    done = archive.archive("2026-02", tmp_path, drop=True, today=TODAY)
    assert [(m.action, m.rows, m.dropped) for m in done if m.rows] == [("written", 5, True)]
    assert PredictionLog.select().count() == 0


# -- the CLI ----------------------------------------------------------------------------------


def _run(url, *args):
    result = CliRunner().invoke(cli, ["--database-url", url, *args])
    if database.obj is not None:
        database.obj.close()
    database.initialize(None)
    return result


def test_cli_archives_and_drops_with_yes(logs, fresh_url, tmp_path, backend):
    lake = tmp_path / "lake"
    result = _run(fresh_url, "archive", "prediction-logs", "--before", "2026-03", "--to",
                  str(lake), "--drop", "--yes", "--format", "json")
    assert result.exit_code == 0, result.output
    months = {m["month"]: m for m in json.loads(result.stdout) if m["rows"]}
    assert set(months) == {"2026-01", "2026-02"}
    assert months["2026-01"]["dropped"] is True and months["2026-01"]["action"] == "written"
    assert "2026-01: 5 rows written" in result.stderr and "dropped" in result.stderr
    assert ds.dataset(lake, partitioning="hive").count_rows() == 8
    # the dropped months' request ids are free again (PostgreSQL prunes its guard table)
    assert ("freed 8 request id(s)" in result.stderr) == (backend == "postgres"), result.stderr


def _unwritable(tmp_path):
    # root may write anywhere permission bits allow nothing; /proc takes no new files at all
    return "/proc"


@pytest.mark.parametrize("args, code, message", [
    (["--before", "2026-13"], 2, "YYYY-MM"),
    (["--before", "2026/01"], 2, "YYYY-MM"),
    (["--before", "'; DROP TABLE prediction_logs; --"], 2, "YYYY-MM"),
    (["--before", "2999-01"], 2, "after the current month"),
    (["--to", "FILE"], 1, "is a file, not a directory"),
    (["--to", "FILE/below"], 1, "which is a file"),
    (["--to", "UNWRITABLE"], 1, "cannot write in /proc"),
    (["--before", "2025-01"], 1, "no rows before 2025-01"),
    (["--drop"], 1, "rerun with --yes"),
])
def test_cli_refuses_hostile_input_with_one_line_and_writes_nothing(logs, fresh_url, tmp_path,
                                                                    args, code, message):
    lake = tmp_path / "lake"
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    options = {"--before": "2026-03", "--to": str(lake)}
    for key, value in zip(args[::2], [*args[1::2], None], strict=False):
        options[key] = {"FILE": str(afile), "FILE/below": str(afile / "below"),
                        "UNWRITABLE": _unwritable(tmp_path)}.get(value, value)
    flat = [x for k, v in options.items() for x in ((k,) if v is None else (k, v))]
    result = _run(fresh_url, "archive", "prediction-logs", *flat)
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("Error: ") and len(result.stderr.splitlines()) == 1
    assert message in result.stderr
    assert not lake.exists() and afile.read_text() == "not a directory"
    assert _files(tmp_path) == ["afile"]
    db = within_db.connect(fresh_url)
    with db.connection_context():
        assert PredictionLog.select().count() == 12
    db.close()
    database.initialize(None)


def test_cli_without_pyarrow_names_the_lake_extra(migrated_fresh_db, fresh_url, tmp_path):
    code = ("import sys; sys.modules['pyarrow'] = None\n"
            "from within_db.cli import main\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code, "--database-url", fresh_url,
                             "archive", "prediction-logs", "--before", "2026-01", "--to",
                             str(tmp_path / "lake")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("Error: Arrow and Parquet need pyarrow: pip install "
                             "'within_db[lake]'\n")
    assert not (tmp_path / "lake").exists()


def test_months_spanning_several_partitions_read_as_one_dataset(migrated_fresh_db, tmp_path):
    version = make_version()
    partitions.ensure(since="2024-01", today=TODAY)
    _fill(version, {(2024, 12): 2, (2025, 6): 3, (2026, 1): 1})
    done = archive.archive("2026-02", tmp_path / "lake", today=TODAY)
    assert [(f"{m.month:%Y-%m}", m.rows) for m in done if m.rows] == [
        ("2024-12", 2), ("2025-06", 3), ("2026-01", 1)]
    dataset = ds.dataset(tmp_path / "lake", partitioning="hive")
    assert dataset.to_table(filter=ds.field("month") == "2025-06").num_rows == 3
    assert dataset.count_rows() == 6
    assert sum(m.rows == 0 for m in done) == len(done) - 3  # empty months: no file
    assert len(_files(tmp_path / "lake")) == 3
    with pytest.raises(NothingToArchiveError):
        archive.archive("2024-12", tmp_path / "lake", today=TODAY)
