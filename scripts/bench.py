"""Benchmark within_db against the raw drivers, side by side on SQLite and PostgreSQL.

    python scripts/bench.py [--rows N] [--postgres-url URL] [--repeat K]
    python scripts/bench.py --only retention --partition-rows 100000 --archive-rows 200000

Prints a markdown table of median times and their ratio to the raw reference of the same
backend, measured in the same run (1.0 = as fast as the hand-written driver code; for the
prediction-log pages the reference is keyset page 1). A
benchmark, not a test: timings on a shared 2-core machine are noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import itertools
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg2
from playhouse.test_utils import count_queries

import within_db
from within_db import batch, migrate, partitions
from within_db.models.campaigns import Ad, Campaign
from within_db.models.ml_system import MLModel, ModelVersion, PredictionLog
from within_db.models.users import AuditLog, User
from within_db.repositories import CampaignRepository, PredictionLogRepository
from within_db.repositories.ml import VIEW_PREDICTIONS
from within_db.services.audit import GENESIS, row_digest, verify_audit_chain
from within_db.services.campaigns import get_user_campaigns

UTC = dt.UTC
BASE = dt.datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS = ("model_version_id", "request_id", "ad_id", "score", "features", "latency_ms",
           "created_at")


def prediction_rows(n: int, version_id: int, tag: str) -> list[dict]:
    return [{"model_version": version_id, "request_id": f"{tag}-{i}", "ad": None,
             "score": (i % 1000) / 1000, "features": {"ctr_7d": 0.01 * (i % 7), "hour": i % 24,
                                                      "platform": "meta"},
             "latency_ms": 1.5 + (i % 10), "created_at": BASE + dt.timedelta(seconds=i)}
            for i in range(n)]


def timed(fn, repeat: int, setup=None) -> float:
    samples = []
    for _ in range(repeat):
        if setup:
            setup()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def peak_mb(fn) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1e6


# -- raw references ---------------------------------------------------------------------------
# Lean on purpose: the standard library and the driver only, the fastest obvious conversions
# (isoformat, json.dumps), and connections opened before the timed region.

INSERT_SQL = (f"INSERT INTO prediction_logs ({', '.join(COLUMNS)}) "  # noqa: S608
              "VALUES (?, ?, ?, ?, ?, ?, ?)")
SELECT_SQL = ("SELECT id, model_version_id, request_id, ad_id, score, features, latency_ms, "
              "created_at FROM prediction_logs")


def raw_sqlite_connection(path: str):
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=normal")
    conn.execute("PRAGMA foreign_keys=1")
    return conn


def raw_sqlite_insert(conn, rows: list[dict]) -> None:
    dumps = json.dumps
    conn.execute("BEGIN")
    # the instant as the fixed-width UTC text within_db stores (it sorts chronologically)
    conn.executemany(INSERT_SQL, [(r["model_version"], r["request_id"], r["ad"], r["score"],
                                   dumps(r["features"]), r["latency_ms"],
                                   r["created_at"].isoformat(" ", "microseconds"))
                                  for r in rows])
    conn.execute("COMMIT")


def raw_pg_insert(conn, rows: list[dict]) -> None:
    import io

    dumps = json.dumps
    buf = io.StringIO()
    buf.writelines([f"{r['model_version']}\t{r['request_id']}\t\\N\t{r['score']!r}\t"
                    f"{dumps(r['features'])}\t{r['latency_ms']!r}\t"
                    f"{r['created_at'].isoformat()}\n" for r in rows])
    buf.seek(0)
    with conn, conn.cursor() as cur:
        cur.copy_expert(f"COPY prediction_logs ({', '.join(COLUMNS)}) FROM STDIN", buf)


def raw_sqlite_stream(conn) -> int:
    loads, parse, as_uuid = json.loads, dt.datetime.fromisoformat, uuid.UUID
    cur = conn.execute(SELECT_SQL)
    n = 0
    while rows := cur.fetchmany(2000):
        for r in rows:
            _ = {"id": r[0], "model_version": r[1], "request_id": r[2],
                 "ad": as_uuid(r[3]) if r[3] else None, "score": r[4],
                 "features": loads(r[5]), "latency_ms": r[6], "created_at": parse(r[7])}
            n += 1
    cur.close()
    return n


def raw_pg_stream(conn) -> int:
    n = 0
    with conn, conn.cursor(name="bench") as cur:  # a server-side cursor: flat memory
        cur.execute(SELECT_SQL)
        while rows := cur.fetchmany(2000):
            for r in rows:  # psycopg2 already returns UUID, dict and aware datetimes
                _ = {"id": r[0], "model_version": r[1], "request_id": r[2], "ad": r[3],
                     "score": r[4], "features": r[5], "latency_ms": r[6], "created_at": r[7]}
                n += 1
    return n


CAMPAIGN_COLS = ("id", "created_at", "updated_at", "owner_id", "name", "objective",
                 "platform", "status", "start_date", "end_date", "total_budget_micros",
                 "currency", "metadata")
AD_COLS = ("id", "created_at", "updated_at", "campaign_id", "name", "headline", "body",
           "call_to_action", "creative_type", "media_url", "status")


def _iso(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(UTC).isoformat()


def _day(value) -> str | None:
    return value if value is None or isinstance(value, str) else value.isoformat()


def _money(micros) -> str:
    return format((Decimal(int(micros)).scaleb(-6)).normalize(), "f")


def raw_user_campaigns(db, user_id) -> list:
    """One JOIN grouped in Python, converting by hand to the same dicts as the service."""
    select = ", ".join([*(f"c.{c}" for c in CAMPAIGN_COLS), *(f"a.{c}" for c in AD_COLS)])
    sql = (f"SELECT {select} FROM campaigns c LEFT JOIN ads a ON a.campaign_id = c.id "  # noqa: S608
           f"WHERE c.owner_id = {db.param} ORDER BY c.created_at DESC, c.id, a.created_at, a.id")
    width = len(CAMPAIGN_COLS)
    out, index = [], {}
    for row in db.execute_sql(sql, (user_id,)):
        cid = str(uuid.UUID(str(row[0])))
        if cid not in index:
            metadata = row[12] if isinstance(row[12], dict) else json.loads(row[12])
            index[cid] = {"campaign": {
                "id": cid, "created_at": _iso(row[1]), "updated_at": _iso(row[2]),
                "owner_id": str(uuid.UUID(str(row[3]))), "name": row[4], "objective": row[5],
                "platform": row[6], "status": row[7], "start_date": _day(row[8]),
                "end_date": _day(row[9]), "total_budget_micros": _money(row[10]),
                "currency": row[11], "metadata": metadata}, "ads": []}
            out.append(index[cid])
        a = row[width:]
        if a[0] is not None:
            index[cid]["ads"].append({
                "id": str(uuid.UUID(str(a[0]))), "created_at": _iso(a[1]),
                "updated_at": _iso(a[2]), "campaign_id": str(uuid.UUID(str(a[3]))),
                "name": a[4], "headline": a[5], "body": a[6], "call_to_action": a[7],
                "creative_type": a[8], "media_url": a[9], "status": a[10]})
    return out


def naive_user_campaigns(user_id) -> list:
    """The original design's example: one query per campaign."""
    user = User.select().where(User.id == user_id).first()
    result = []
    for campaign in (Campaign.select().where(Campaign.owner == user.id)
                     .order_by(Campaign.created_at.desc())):
        ads = Ad.select().where(Ad.campaign == campaign.id)
        result.append({"campaign": campaign.to_dict(), "ads": [a.to_dict() for a in ads]})
    return result


# -- one backend --------------------------------------------------------------------------------


def bench_backend(name: str, url: str, dsn_or_path: str, n: int, repeat: int,
                  audit_rows: int = 0) -> list[tuple]:
    db = within_db.connect(url)
    migrate.upgrade(db)
    partitions.ensure(since=BASE.date())  # the bench's rows are in BASE's month
    conn = (raw_sqlite_connection(dsn_or_path) if name == "sqlite"
            else psycopg2.connect(dsn_or_path))
    results = []
    with db.connection_context():
        owner = User.create(email=f"bench-{uuid.uuid4().hex[:8]}@example.com")
        model = MLModel.create(name=f"bench-{uuid.uuid4().hex[:8]}", task="classification")
        version = ModelVersion.create(model=model, version=1, artifact_uri="s3://bench")

        def clear():
            PredictionLog.delete().execute()

        tags = iter(range(10_000))
        rows = {}

        def fresh_rows():
            clear()
            rows["data"] = prediction_rows(n, version.id, f"t{next(tags)}")

        def ours():
            batch.bulk_insert(PredictionLog, rows["data"])

        def raw():
            (raw_sqlite_insert if name == "sqlite" else raw_pg_insert)(conn, rows["data"])

        def peewee_insert_many():
            with db.atomic():
                for chunk in range(0, n, 1000):
                    PredictionLog.insert_many(rows["data"][chunk:chunk + 1000]).execute()

        t_raw = timed(raw, repeat, fresh_rows)
        t_ours = timed(ours, repeat, fresh_rows)
        t_pw = timed(peewee_insert_many, max(1, repeat // 2), fresh_rows)
        results += [(name, "insert", "raw driver", t_raw, 1.0, "", ""),
                    (name, "insert", "within_db bulk_insert", t_ours, t_ours / t_raw, "", ""),
                    (name, "insert", "peewee insert_many", t_pw, t_pw / t_raw, "", "")]

        # stream: the table now holds n rows
        query = PredictionLog.select().dicts()

        def ours_stream():
            return sum(1 for _ in batch.stream(query))

        def raw_stream():
            return (raw_sqlite_stream if name == "sqlite" else raw_pg_stream)(conn)

        def as_list():
            return len(list(PredictionLog.select().dicts()))  # a new query: no result cache

        assert ours_stream() == raw_stream() == n
        t_raw = timed(raw_stream, repeat)
        t_ours = timed(ours_stream, repeat)
        m_raw, m_ours, m_list = peak_mb(raw_stream), peak_mb(ours_stream), peak_mb(as_list)
        results += [(name, "stream", "raw fetchmany + convert", t_raw, 1.0, f"{m_raw:.1f}", ""),
                    (name, "stream", "within_db stream", t_ours, t_ours / t_raw,
                     f"{m_ours:.1f}", ""),
                    (name, "stream", "list(query)", timed(as_list, 1), timed(as_list, 1) / t_raw,
                     f"{m_list:.1f}", "")]
        clear()

        # user campaigns: 200 campaigns x 10 ads
        campaigns = [{"id": uuid.uuid4(), "owner": owner.id, "name": f"c{i}",
                      "objective": "sales", "platform": "meta", "start_date": dt.date(2026, 1, 1),
                      "created_at": BASE + dt.timedelta(minutes=i),
                      "updated_at": BASE} for i in range(200)]
        batch.bulk_insert(Campaign, campaigns)
        batch.bulk_insert(Ad, [{"id": uuid.uuid4(), "campaign": c["id"], "name": f"a{j}",
                                "created_at": BASE, "updated_at": BASE}
                               for c in campaigns for j in range(10)])
        key = owner.id.hex if name == "sqlite" else str(owner.id)
        assert raw_user_campaigns(db, key) == get_user_campaigns(owner.id)
        t_raw = timed(lambda: raw_user_campaigns(db, key), repeat)
        with count_queries() as q_ours:
            get_user_campaigns(owner.id)
        with count_queries() as q_naive:
            naive_user_campaigns(owner.id)
        t_ours = timed(lambda: get_user_campaigns(owner.id), repeat)
        t_naive = timed(lambda: naive_user_campaigns(owner.id), repeat)
        results += [(name, "user campaigns", "raw JOIN", t_raw, 1.0, "", 1),
                    (name, "user campaigns", "within_db get_user_campaigns", t_ours,
                     t_ours / t_raw, "", q_ours.count),
                    (name, "user campaigns", "naive loop (design example)", t_naive,
                     t_naive / t_raw, "", q_naive.count)]
        reader = User.create(email=f"bench-{uuid.uuid4().hex[:8]}@example.com",
                             is_superuser=True)
        with count_queries() as q_repo:
            CampaignRepository(owner).user_campaigns(owner.id)
        t_repo = timed(lambda: CampaignRepository(owner).user_campaigns(owner.id), repeat)
        results.append((name, "user campaigns", "CampaignRepository.user_campaigns (schemas)",
                        t_repo, t_repo / t_raw, "", q_repo.count))
        results += bench_pages(name, version.id, reader, n, repeat)
        if audit_rows:
            results += bench_audit(name, conn, audit_rows, repeat)
    conn.close()
    db.close()
    return results


# -- the audit chain (issue 14) -----------------------------------------------------------------

AUDIT_SQL = ("SELECT id, actor_id, action, target_type, target_id, metadata, ip, created_at, "
             "prev_hash, row_hash FROM audit_logs ORDER BY id")


def audit_chain_rows(n: int):
    """A valid chain of ``n`` events with typical metadata, hashed as record_event would."""
    prev = GENESIS
    for i in range(n):
        created = BASE + dt.timedelta(seconds=i)
        metadata = {"reason": "password" if i % 3 else "locked", "attempt": i % 5}
        digest = row_digest(prev, None, "login.failure", "users", str(i), metadata, "10.0.0.1",
                            created)
        yield {"action": "login.failure", "target_type": "users", "target_id": str(i),
               "metadata": metadata, "ip": "10.0.0.1", "created_at": created,
               "prev_hash": prev, "row_hash": digest}
        prev = digest


def raw_fetch(conn) -> int:
    """The floor: fetch every audit row through the driver, hash nothing."""
    count = 0
    if isinstance(conn, sqlite3.Connection):
        cursor = conn.execute(AUDIT_SQL)
        while rows := cursor.fetchmany(2000):
            count += len(rows)
        return count
    with conn, conn.cursor(name="bench_audit") as cursor:
        cursor.itersize = 2000
        cursor.execute(AUDIT_SQL)
        while rows := cursor.fetchmany(2000):
            count += len(rows)
    return count


def bench_audit(name: str, conn, n: int, repeat: int) -> list[tuple]:
    """verify_audit_chain over ``n`` rows: seconds, rows/s and peak traced memory."""
    batch.bulk_insert(AuditLog, audit_chain_rows(n))
    report = verify_audit_chain()
    assert report.ok and report.checked >= n, report
    t_raw = timed(lambda: raw_fetch(conn), repeat)
    t_ours = timed(verify_audit_chain, repeat)
    mem = peak_mb(verify_audit_chain)
    return [(name, "audit verify", f"raw fetchmany, no hashing ({n / t_raw:,.0f} rows/s)",
             t_raw, 1.0, "", ""),
            (name, "audit verify", f"within_db verify_audit_chain ({n / t_ours:,.0f} rows/s)",
             t_ours, t_ours / t_raw, f"{mem:.1f}", "")]


PAGE = 20


def bench_pages(name: str, version_id: int, reader: User, n: int, repeat: int) -> list[tuple]:
    """Prediction logs: the keyset page at row n - PAGE (page n/PAGE) against page 1, and
    the same pages by OFFSET. The first page is the reference."""
    batch.bulk_insert(PredictionLog, prediction_rows(n, version_id, "pages"))
    if name == "postgres":
        # the insert runs above left ~1.4M dead index entries below the live ids; the last
        # page's look-ahead row would wade through them until autovacuum runs
        within_db.database.execute_sql("VACUUM ANALYZE prediction_logs")
    repo = PredictionLogRepository(reader)
    repo.can(VIEW_PREDICTIONS)  # permission cached: time the page query alone
    skip = n - PAGE
    cursor = None
    for _ in range(skip // 500):  # walk to the cursor before the last page
        cursor = repo.list(limit=500, cursor=cursor).next_cursor
    if skip % 500:
        cursor = repo.list(limit=skip % 500, cursor=cursor).next_cursor
    last = repo.list(limit=PAGE, cursor=cursor)
    by_offset = list(PredictionLog.select().order_by(PredictionLog.id.desc())
                     .offset(skip).limit(PAGE))
    assert [r.id for r in last.items] == [r.id for r in by_offset] and last.next_cursor is None

    def keyset_first() -> None:
        repo.list(limit=PAGE)

    def keyset_last() -> None:
        repo.list(limit=PAGE, cursor=cursor)

    def offset_page(offset: int):
        return lambda: list(PredictionLog.select().order_by(PredictionLog.id.desc())
                            .offset(offset).limit(PAGE))

    reps = max(repeat, 25)  # single pages take milliseconds: more samples for a stable median
    t_first = timed(keyset_first, reps)
    with count_queries() as q_keyset:
        keyset_last()
    t_last = timed(keyset_last, reps)
    t_off_first = timed(offset_page(0), reps)
    t_off_last = timed(offset_page(skip), reps)
    page_no = f"page {n // PAGE:,}"
    PredictionLog.delete().where(PredictionLog.model_version == version_id).execute()
    return [(name, f"logs page of {PAGE}", "keyset page 1", t_first, 1.0, "", q_keyset.count),
            (name, f"logs page of {PAGE}", f"keyset {page_no}", t_last, t_last / t_first, "",
             q_keyset.count),
            (name, f"logs page of {PAGE}", "OFFSET page 1", t_off_first,
             t_off_first / t_first, "", 1),
            (name, f"logs page of {PAGE}", f"OFFSET {page_no}", t_off_last,
             t_off_last / t_first, "", 1)]


# -- scaling out: replica reads, read-your-writes waits, Dask ----------------------------------


def _wait_for_database(url: str) -> None:
    for _ in range(600):  # a database created on the primary reaches the replica shortly after
        db = within_db.db.make_database(url)
        try:
            db.connect()
            return
        except within_db.errors.DatabaseUnavailableError:
            time.sleep(0.1)
        finally:
            db.close()
    raise SystemExit(f"no database at {url} after 60 s: is the replica streaming?")


def _dask_rows_per_second(frame_of, n: int, workers: int, repeat: int) -> float:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, processes=True, threads_per_worker=1,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        def run() -> None:
            frame = frame_of(2 * workers)
            assert client.compute(frame.map_partitions(len).sum(), sync=True) == n

        return n / timed(run, repeat)


def bench_scaling(name: str, url: str, replica: str | None, n: int,
                  repeat: int) -> list[tuple]:
    """Replica reads against the primary, read_your_writes waits, to_dask against
    to_dataframe. Rows: (backend, measure, path, value, unit)."""
    db = within_db.connect(url, replica=replica)
    migrate.upgrade(db)
    partitions.ensure(since=BASE.date())  # the bench's rows are in BASE's month
    out = []
    owner = User.create(email=f"scale-{uuid.uuid4().hex[:8]}@example.com")
    for i in range(20):
        Campaign.create(owner=owner, name=f"c{i}", objective="sales", platform="meta",
                        start_date=dt.date(2026, 1, 1))
    model = MLModel.create(name=f"scale-{uuid.uuid4().hex[:8]}", task="classification")
    version = ModelVersion.create(model=model, version=1, artifact_uri="s3://bench")
    batch.bulk_insert(PredictionLog, prediction_rows(n, version.id, "scale"))
    query = PredictionLog.select()
    if replica:
        primary_only = within_db.db.make_database(url)
        with db.read_your_writes():  # the replica has every row before anything is timed
            assert db.for_reads() is db.replica.db, "the replica is not usable"
        reps = max(repeat, 50)
        for label, target in (("primary", primary_only), ("replica", db)):
            within_db.database.initialize(target)
            small = timed(lambda: get_user_campaigns(owner.id), reps)
            scan = timed(lambda: sum(1 for _ in batch.stream(query.tuples())), repeat)
            out += [(name, "get_user_campaigns (20 campaigns)", label, small * 1e3, "ms"),
                    (name, f"stream {n:,} rows", label, scan, "s")]
        within_db.database.initialize(db)
        waits, fallbacks = [], 0
        for i in range(500):
            User.create(email=f"ryw-{i}-{uuid.uuid4().hex[:6]}@example.com")
            start = time.perf_counter()
            with db.read_your_writes():
                fallbacks += db.for_reads() is db
            waits.append(time.perf_counter() - start)
        waits.sort()
        out += [(name, "read_your_writes after a write (500)", "median wait",
                 statistics.median(waits) * 1e3, "ms"),
                (name, "read_your_writes after a write (500)", "p99 wait",
                 waits[int(len(waits) * 0.99) - 1] * 1e3, "ms"),
                (name, "read_your_writes after a write (500)", "read from the primary",
                 fallbacks, "reads")]
        primary_only.close()
    t_frame = timed(lambda: batch.to_dataframe(query), repeat)
    out.append((name, f"read {n:,} prediction logs", "to_dataframe, one process", n / t_frame,
                "rows/s"))
    for workers in (1, 2):
        with db.read_your_writes():
            rate = _dask_rows_per_second(lambda parts: batch.to_dask(query, parts), n, workers,
                                         repeat)
        out.append((name, f"read {n:,} prediction logs",
                    f"to_dask, {workers} worker{'s' if workers > 1 else ''}", rate, "rows/s"))
    db.close()
    return out


# -- retention: partitions, drop against DELETE, archive to Parquet (issue 16) -------------------

ARCHIVE_RUN = """
import json, sys, time, datetime, within_db, pyarrow, pyarrow.parquet
from within_db import archive
within_db.connect(sys.argv[1])
# Arrow's compute set-up costs ~50 MB once, at the first cast: not part of the archive's growth
pyarrow.array(['2025-01-01 00:00:00+00:00']).cast(pyarrow.timestamp('us', 'UTC'))
def kb(key):
    return int(open('/proc/self/status').read().split(key + ':')[1].split()[0])
open('/proc/self/clear_refs', 'w').write('5')  # Linux: reset the peak RSS (VmHWM)
before = kb('VmRSS')
start = time.perf_counter()
done = archive.archive(sys.argv[2], sys.argv[3], today=datetime.date.today())
seconds = time.perf_counter() - start
print(json.dumps({"rows": sum(m.rows for m in done), "seconds": seconds,
                  "grown_mb": (kb('VmHWM') - before) / 1024}))
"""


def month_rows(n: int, version_id: int, tag: str, month: dt.date):
    """``n`` prediction rows spread over ``month`` (a generator: millions stay out of memory)."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=UTC)
    step = 27 * 86_400 / max(n, 1)
    for i in range(n):
        yield {"model_version": version_id, "request_id": f"{tag}-{i}", "ad": None,
               "score": (i % 1000) / 1000, "features": {"ctr_7d": 0.01 * (i % 7), "hour": i % 24,
                                                        "platform": "meta"},
               "latency_ms": 1.5 + (i % 10), "created_at": start + dt.timedelta(seconds=i * step)}


class _Lines:
    """A file-like object over COPY text lines, for the raw COPY reference."""

    def __init__(self, lines):
        self.lines = lines

    def read(self, size: int = -1) -> str:
        return "".join(itertools.islice(self.lines, 10_000))

    readline = read


def raw_pg_copy(conn, rows, commit: bool = True) -> None:
    dumps = json.dumps
    lines = (f"{r['model_version']}\t{r['request_id']}\t\\N\t{r['score']!r}\t"
             f"{dumps(r['features'])}\t{r['latency_ms']!r}\t{r['created_at'].isoformat()}\n"
             for r in rows)
    with conn.cursor() as cur:
        cur.copy_expert(f"COPY prediction_logs ({', '.join(COLUMNS)}) FROM STDIN", _Lines(lines))
    if commit:
        conn.commit()


GUARD_TRIGGER = "prediction_logs_request_id_guard"


def _load_months(name: str, conn, version_id: int, month_n: int, rest: int, out: list) -> None:
    """Load January (raw COPY) and February (bulk_insert); on PostgreSQL also time two more
    months in the opposite order (bulk_insert, then raw COPY: ABBA, so a trend in the
    machine's load or the guard's size does not favour either) and raw COPY without the
    guard trigger (rolled back), the guard's cost."""
    january, february = dt.date(2025, 1, 1), dt.date(2025, 2, 1)
    if name == "sqlite":
        batch.bulk_insert(PredictionLog, month_rows(month_n, version_id, "jan", january))
        if rest:
            start = time.perf_counter()
            batch.bulk_insert(PredictionLog, month_rows(rest, version_id, "feb", february))
            out.append((name, f"load {rest:,} rows into one month", "within_db bulk_insert",
                        rest / (time.perf_counter() - start), "rows/s"))
        return

    def raw(tag, month):
        start = time.perf_counter()
        raw_pg_copy(conn, month_rows(month_n, version_id, tag, month))
        return time.perf_counter() - start

    def ours(tag, month, n):
        start = time.perf_counter()
        batch.bulk_insert(PredictionLog, month_rows(n, version_id, tag, month))
        return time.perf_counter() - start

    t_raw = [raw("jan", january)]
    t_ours = [ours("feb", february, rest)] if rest else []
    what = f"load {month_n:,} rows into one month"
    if rest == month_n:  # the second half of ABBA, into March and April (not archived)
        t_ours.append(ours("mar", dt.date(2025, 3, 1), month_n))
        t_raw.append(raw("apr", dt.date(2025, 4, 1)))
    out.append((name, what, "raw COPY (guard trigger on)",
                month_n * len(t_raw) / sum(t_raw), "rows/s"))
    if t_ours:
        out.append((name, what, "within_db bulk_insert", rest * len(t_ours) / sum(t_ours),
                    "rows/s"))
    if rest == month_n:
        out.append((name, what, f"bulk_insert time / raw COPY time (sum of {len(t_raw)} each)",
                    sum(t_ours) / sum(t_raw), "ratio"))
    # the guard's cost: the same raw COPY with its trigger disabled, rolled back
    with conn.cursor() as cur:
        cur.execute(f"ALTER TABLE prediction_logs DISABLE TRIGGER {GUARD_TRIGGER}")
        start = time.perf_counter()
        raw_pg_copy(conn, month_rows(month_n, version_id, "may", dt.date(2025, 5, 1)),
                    commit=False)
        t_bare = time.perf_counter() - start
    conn.rollback()
    out += [(name, what, "raw COPY, guard trigger disabled", month_n / t_bare, "rows/s"),
            (name, what, "raw COPY time with the guard / without", statistics.mean(t_raw) /
             t_bare, "ratio")]


def bench_retention(name: str, url: str, dsn_or_path: str, month_n: int,
                    archive_n: int) -> list[tuple]:
    """Loading a month, dropping it against the DELETE it replaces, archiving to Parquet.

    Rows: (backend, measure, path, value, unit). January 2025 gets ``month_n`` rows (raw COPY
    on PostgreSQL, the reference), February the rest of ``archive_n`` (bulk_insert); both are
    archived, then January is dropped and its request ids pruned.
    """
    db = within_db.connect(url)
    migrate.upgrade(db)
    january, february = dt.date(2025, 1, 1), dt.date(2025, 2, 1)
    partitions.ensure(since=january)
    conn = (raw_sqlite_connection(dsn_or_path) if name == "sqlite"
            else psycopg2.connect(dsn_or_path))
    out: list[tuple] = []
    model = MLModel.create(name=f"keep-{uuid.uuid4().hex[:8]}", task="classification")
    version = ModelVersion.create(model=model, version=1, artifact_uri="s3://bench")
    rest = max(archive_n - month_n, 0)
    _load_months(name, conn, version.id, month_n, rest, out)
    if name == "postgres":
        within_db.database.execute_sql("VACUUM ANALYZE prediction_logs")
        within_db.database.execute_sql("VACUUM ANALYZE prediction_request_ids")
    db.close()

    with tempfile.TemporaryDirectory() as lake:
        run = subprocess.run([sys.executable, "-c", ARCHIVE_RUN, url, "2025-03", lake],
                             capture_output=True, text=True, check=True)
        report = json.loads(run.stdout)
        assert report["rows"] == month_n + rest, report
        size = sum(p.stat().st_size for p in Path(lake).rglob("*.parquet"))
    total = f"archive {report['rows']:,} rows (2 months)"
    out += [(name, total, "rows/s", report["rows"] / report["seconds"], "rows/s"),
            (name, total, "peak RSS growth", report["grown_mb"], "MB"),
            (name, total, "Parquet size", size / 1e6, "MB")]

    # the DELETE a partition drop replaces, rolled back so the same rows are dropped after
    low, high = (f"{m:%Y-%m-%d} 00:00:00+00:00" for m in (january, february))
    if name == "sqlite":
        low, high = low[:10], high[:10]  # UTC text: the date sorts before every instant of it
    if name == "postgres":
        with conn.cursor() as cur:
            start = time.perf_counter()
            cur.execute("DELETE FROM prediction_logs WHERE created_at >= %s AND created_at < %s",
                        (low, high))
            t_delete = time.perf_counter() - start
            assert cur.rowcount == month_n
        conn.rollback()
    else:
        conn.execute("BEGIN")
        start = time.perf_counter()
        deleted = conn.execute("DELETE FROM prediction_logs WHERE created_at >= ? AND "
                               "created_at < ?", (low, high)).rowcount
        t_delete = time.perf_counter() - start
        conn.execute("ROLLBACK")
        assert deleted == month_n
    conn.close()
    db = within_db.connect(url)
    start = time.perf_counter()
    dropped = partitions.drop("2025-02")
    t_drop = time.perf_counter() - start
    assert {m: n for m, n in dropped.items() if n} == {january: month_n}, dropped
    what = f"remove a month of {month_n:,} rows"
    ours = ("partitions drop (DETACH CONCURRENTLY + DROP)" if name == "postgres"
            else "partitions drop (DELETE in batches of 50,000)")
    out += [(name, what, "DELETE ... WHERE created_at in the month (one transaction)",
             t_delete, "s"),
            (name, what, ours, t_drop, "s")]
    if name == "postgres":  # off the drop's path: frees the month's request ids
        start = time.perf_counter()
        pruned = partitions.prune()
        t_prune = time.perf_counter() - start
        assert sum(pruned.values()) == month_n, pruned
        out.append((name, what, "then partitions prune (guard rows, batches of 50,000)",
                    t_prune, "s"))
    db.close()
    return out


def bench_retention_main(args: argparse.Namespace) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "retention.db")
        results += bench_retention("sqlite", f"sqlite:///{path}", path, args.partition_rows,
                                   args.archive_rows)
    admin = psycopg2.connect(args.postgres_url)
    admin.autocommit = True
    name = f"within_bench_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        url = args.postgres_url.rpartition("/")[0] + "/" + name
        results += bench_retention("postgres", url, url, args.partition_rows, args.archive_rows)
    finally:
        if within_db.database.obj is not None:
            within_db.database.obj.close()
        admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()
    print(f"Retention: a month of {args.partition_rows:,} rows, an archive of "
          f"{args.archive_rows:,}; {dt.date.today()}, {platform.machine()} {os.cpu_count()} "
          f"cores, Python {sys.version.split()[0]}, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end\n")
    print("| backend | measure | path | value | unit |")
    print("|---|---|---|---:|---|")
    for backend, measure, path, value, unit in results:
        shown = (f"{value:,.0f}" if unit == "rows/s" else f"{value:.2f}x" if unit == "ratio"
                 else f"{value:.1f}" if unit == "MB" else f"{value:.3f}")
        print(f"| {backend} | {measure} | {path} | {shown} | {unit} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--audit-rows", type=int, default=300_000,
                        help="audit events for the verify_audit_chain section (0: skip it)")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "WITHIN_DB_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test"))
    parser.add_argument("--replica-url", default=os.environ.get(
        "WITHIN_DB_TEST_REPLICA_URL", "postgresql://root@127.0.0.1:5433/test"),
        help="streaming replica of --postgres-url's server (scripts/ensure_replica.sh)")
    parser.add_argument("--partition-rows", type=int, default=1_000_000,
                        help="rows in the month the retention section drops")
    parser.add_argument("--archive-rows", type=int, default=2_000_000,
                        help="rows the retention section archives to Parquet (two months)")
    parser.add_argument("--only", choices=("all", "drivers", "scaling", "retention"),
                        default="all",
                        help="drivers: within_db against the raw drivers; scaling: replica "
                             "reads, read_your_writes and Dask (needs the dask extra); "
                             "retention: partition drop against DELETE, archive to Parquet "
                             "(needs the lake extra)")
    args = parser.parse_args()
    if args.only in ("all", "retention"):
        bench_retention_main(args)
    if args.only in ("all", "scaling"):
        bench_scaling_main(args)
    if args.only in ("scaling", "retention"):
        return

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.db")
        results += bench_backend("sqlite", f"sqlite:///{path}", path, args.rows, args.repeat,
                                 args.audit_rows)
    admin = psycopg2.connect(args.postgres_url)
    admin.autocommit = True
    name = f"within_bench_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        url = args.postgres_url.rpartition("/")[0] + "/" + name
        results += bench_backend("postgres", url, url, args.rows, args.repeat, args.audit_rows)
    finally:
        within_db.database.obj.close()
        admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()

    print(f"{args.rows:,} rows, median of {args.repeat}; {dt.date.today()}, "
          f"{platform.machine()} {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print("| backend | operation | path | seconds | ratio to raw | peak MB | queries |")
    print("|---|---|---|---:|---:|---:|---:|")
    for backend, op, path, seconds, ratio, mem, queries in results:
        shown = f"{ratio:.2f}x" if ratio is not None else ""
        secs = f"{seconds:.3f}" if seconds >= 0.1 else f"{seconds:.5f}"
        print(f"| {backend} | {op} | {path} | {secs} | {shown} | {mem} | {queries} |")



def bench_scaling_main(args: argparse.Namespace) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results += bench_scaling("sqlite", f"sqlite:///{os.path.join(tmp, 'scale.db')}", None,
                                 args.rows, args.repeat)
    admin = psycopg2.connect(args.postgres_url)
    admin.autocommit = True
    name = f"within_bench_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    # the test suites' replica lock, shared: a test that stops the replica waits for us
    lock = open("/tmp/within_db_replica_tests.lock", "a")  # noqa: SIM115 - held to the end
    fcntl.flock(lock, fcntl.LOCK_SH)
    try:
        url = args.postgres_url.rpartition("/")[0] + "/" + name
        replica = args.replica_url.rpartition("/")[0] + "/" + name
        _wait_for_database(replica)
        results += bench_scaling("postgres", url, replica, args.rows, args.repeat)
    finally:
        lock.close()
        within_db.database.obj.close()
        admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()
    print(f"Scaling out: {args.rows:,} rows, median of {args.repeat}; {dt.date.today()}, "
          f"{platform.machine()} {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print("| backend | measure | path | value | unit |")
    print("|---|---|---|---:|---|")
    for backend, measure, path, value, unit in results:
        shown = f"{value:,.0f}" if unit == "rows/s" else (
            f"{value}" if unit == "reads" else f"{value:.3f}")
        print(f"| {backend} | {measure} | {path} | {shown} | {unit} |")
    print()


if __name__ == "__main__":
    main()
