"""Monthly partitions of prediction_logs: the conversion migration, request_id uniqueness
across months, partition maintenance (API and CLI), retention, and the schema tooling."""

import datetime as dt
import json
import threading
import time

import peewee
import pytest
from click.testing import CliRunner

import within_db
from within_db import archive, batch, migrate, partitions
from within_db.cli import cli
from within_db.db import backend, database
from within_db.db.pg_partitions import PARTITION_LOCK_KEY
from within_db.errors import BulkInsertError, NotMigratedError, ValidationError
from within_db.integrity import violation
from within_db.models.ml_system import MLModel, PredictionLog
from within_db.schema import drift, introspect
from within_db.services import ml_system as ml

from .helpers import make_ad, make_version, raises_violation

GUARD = "prediction_request_ids"
DROPPED = "prediction_request_ids_dropped_months"

UTC = dt.UTC
SHIPPED = sorted(p.stem for p in migrate.migrations_dir().glob("[0-9]*.py"))
CONVERSION = next(name for name in SHIPPED if name.endswith("_partition_prediction_logs"))
BEFORE_CONVERSION = SHIPPED[SHIPPED.index(CONVERSION) - 1]
GUARD_MONTHS = next(name for name in SHIPPED if name.endswith("_guard_months"))


def at(month: int, day: int = 15, year: int = 2026) -> dt.datetime:
    return dt.datetime(year, month, day, 12, 0, tzinfo=UTC)


def _log(version, request_id, when, **kw):
    return PredictionLog.create(model_version=version, request_id=request_id, score=0.5,
                                created_at=when, **kw)


# -- request_id unique across months -------------------------------------------------------


def test_request_id_is_unique_across_months_on_every_write_path(db):
    version = make_version()
    first = _log(version, "req-1", at(1))
    assert isinstance(first.id, int) and PredictionLog.get_by_id(first.id).request_id == "req-1"
    with raises_violation(db, "unique", "prediction_logs_request_id"):
        PredictionLog.insert(model_version=version, request_id="req-1", score=0.1,
                             features="{}", created_at=at(3)).execute()
    with pytest.raises(BulkInsertError) as info:
        batch.bulk_insert(PredictionLog, [
            {"model_version": version.id, "request_id": "req-2", "score": 0.1, "created_at": at(2)},
            {"model_version": version.id, "request_id": "req-3", "score": 0.1, "created_at": at(4)},
            {"model_version": version.id, "request_id": "req-1", "score": 0.1, "created_at": at(5)},
        ])
    assert info.value.position == 2
    assert info.value.constraint == "prediction_logs_request_id"
    assert "row 2" in str(info.value) and "req-1" not in str(info.value)
    with pytest.raises(BulkInsertError) as info:
        ml.log_predictions(version, [{"request_id": "dup", "score": 0.2, "created_at": at(6)},
                                     {"request_id": "dup", "score": 0.3, "created_at": at(7)}])
    assert (info.value.position, info.value.constraint) == (1, "prediction_logs_request_id")
    assert PredictionLog.select().count() == 1  # all or nothing


def test_deleting_or_moving_a_log_frees_or_moves_its_request_id(db):
    version = make_version()
    gone = _log(version, "req-a", at(1))
    moved = _log(version, "req-b", at(2))
    gone.delete_instance()
    _log(version, "req-a", at(8))  # free again
    # a new request id, within the month and across months (PostgreSQL moves the row)
    PredictionLog.update(request_id="req-c").where(PredictionLog.id == moved.id).execute()
    PredictionLog.update(request_id="req-d", created_at=at(9)).where(
        PredictionLog.id == moved.id).execute()
    _log(version, "req-b", at(3))
    _log(version, "req-c", at(4))
    with raises_violation(db, "unique", "prediction_logs_request_id"):
        _log(version, "req-d", at(5))
    assert sorted(PredictionLog.select(PredictionLog.request_id).tuples()) == [
        ("req-a",), ("req-b",), ("req-c",), ("req-d",)]


def test_a_month_without_a_partition_fails_naming_partitions_ensure(db, backend):
    version = make_version()
    far = dt.datetime(2099, 5, 1, tzinfo=UTC)
    rows = [{"request_id": "now", "score": 0.1}, {"request_id": "far", "score": 0.1,
                                                  "created_at": far}]
    if backend == "sqlite":  # one plain table holds every month
        assert ml.log_predictions(version, rows) == 2
        return
    with pytest.raises(BulkInsertError) as info:
        ml.log_predictions(version, rows)
    assert info.value.position == 1 and info.value.constraint == "no_partition"
    assert "within-db partitions ensure" in str(info.value)
    assert PredictionLog.select().count() == 0


def test_rows_land_in_their_months_and_queries_prune_partitions(db, backend):
    version = make_version()
    ml.log_predictions(version, [{"request_id": f"r{m}", "score": 0.1, "created_at": at(m)}
                                 for m in (1, 2, 3)])
    march = PredictionLog.select().where(
        PredictionLog.created_at >= dt.datetime(2026, 3, 1, tzinfo=UTC),
        PredictionLog.created_at < dt.datetime(2026, 4, 1, tzinfo=UTC))
    assert [r.request_id for r in march] == ["r3"]
    if backend == "postgres":
        sql, params = march.sql()
        plan = "\n".join(r[0] for r in db.execute_sql(f"EXPLAIN {sql}", params).fetchall())
        assert "prediction_logs_2026_03" in plan
        assert "prediction_logs_2026_02" not in plan and "prediction_logs_2026_04" not in plan
        counts = db.execute_sql("SELECT tableoid::regclass::text, count(*) FROM prediction_logs "
                                "GROUP BY 1 ORDER BY 1").fetchall()
        assert counts == [("prediction_logs_2026_01", 1), ("prediction_logs_2026_02", 1),
                          ("prediction_logs_2026_03", 1)]
    else:  # one table: the same query, no partitions to prune
        assert introspect.describe(db, ["prediction_logs"])["prediction_logs"].partitions == []


# -- the schema tooling ---------------------------------------------------------------------


def test_introspection_shows_the_parent_with_its_indexes_and_partitions_under_it(db, backend):
    names = introspect.table_names(db)
    assert "prediction_logs" in names
    assert not [n for n in names if n.startswith("prediction_logs_2")]
    table = introspect.describe(db, ["prediction_logs"])["prediction_logs"]
    assert set(table.indexes) >= {"prediction_logs_model_version_id_created_at",
                                  "prediction_logs_ad_id"}
    if backend == "postgres":
        assert table.partitioning == "RANGE (created_at)"
        assert table.primary_key == ("id", "created_at")
        assert {"name": "prediction_logs_2026_01", "from": "2026-01-01",
                "to": "2026-02-01"} in table.partitions
        assert "prediction_request_ids" in names
        assert "prediction_logs_request_id" not in table.indexes  # the guard's primary key
    else:
        assert table.partitioning is None and table.partitions == []
        assert table.primary_key == ("id",)
        assert table.indexes["prediction_logs_request_id"].unique
        assert "prediction_request_ids" not in names


def test_drift_check_sees_a_missing_partitioning(session_db, backend):
    assert drift.check(session_db) == []
    meta = PredictionLog._meta
    saved = meta.partition_by
    del meta.partition_by
    try:
        diffs = drift.check(session_db)
    finally:
        meta.partition_by = saved
    if backend == "postgres":
        assert any("partitioned by None in models, by RANGE (created_at)" in d for d in diffs)
    else:
        assert diffs == []  # SQLite partitions nothing either way


# -- the conversion migration ---------------------------------------------------------------


def _snapshot(db):
    return db.execute_sql("SELECT id, model_version_id, request_id, ad_id, score, "
                          "features::text, latency_ms, created_at FROM prediction_logs "
                          "ORDER BY id").fetchall() if db.native_json else db.execute_sql(
        "SELECT * FROM prediction_logs ORDER BY id").fetchall()


def test_a_database_migrated_before_converts_with_every_row_kept(fresh_db, backend):
    migrate.upgrade(fresh_db, target=BEFORE_CONVERSION)
    with fresh_db.connection_context():
        version = make_version()
        ad = make_ad()
        months = [(2024, 11), (2025, 6), (2026, 1), (2026, 2)]
        rows = [{"model_version": version.id, "request_id": f"old-{i}", "ad": ad.id if i % 2
                 else None, "score": i / 10, "features": {"i": i, "s": "x\ty"},
                 "latency_ms": None if i == 3 else 1.5, "created_at": at(m, 2 + i, y)}
                for i, (y, m) in enumerate(months)]
        batch.bulk_insert(PredictionLog, rows)
        before = _snapshot(fresh_db)
    migrate.upgrade(fresh_db)
    assert drift.check(fresh_db) == []
    with fresh_db.connection_context():
        assert _snapshot(fresh_db) == before
        # ids continue from the old sequence, the guard holds the old request ids
        new = _log(version, "new-1", dt.datetime.now(UTC))
        assert new.id == max(r[0] for r in before) + 1
        with raises_violation(fresh_db, "unique", "prediction_logs_request_id"):
            _log(version, "old-2", dt.datetime.now(UTC))
        listed = [p.start for p in partitions.list_partitions(db=fresh_db)]
        assert listed[0] == dt.date(2024, 11, 1) and dt.date(2026, 2, 1) in listed
        if backend == "postgres":  # every month through the current one and three ahead
            assert len(listed) == len(partitions.months_between(
                listed[0], listed[-1])) >= 28
        after = _snapshot(fresh_db)
    migrate.downgrade(fresh_db, target=CONVERSION)
    with fresh_db.connection_context():
        assert _snapshot(fresh_db) == after
        assert introspect.describe(fresh_db, ["prediction_logs"])[
            "prediction_logs"].partitioning is None
        assert "prediction_request_ids" not in introspect.table_names(fresh_db)
        with raises_violation(fresh_db, "unique", "prediction_logs_request_id"):
            _log(version, "old-2", dt.datetime.now(UTC))
    migrate.upgrade(fresh_db)
    assert drift.check(fresh_db) == []


def test_guard_months_migration_fills_months_keeps_rows_and_reverts(fresh_db, backend):
    db = fresh_db
    migrate.upgrade(db, target=CONVERSION)
    with db.connection_context():
        if backend == "postgres":  # months as the conversion's era made them
            for month in (1, 2, 3):
                db.execute_sql(f"CREATE TABLE IF NOT EXISTS prediction_logs_2026_{month:02d} "
                               f"PARTITION OF prediction_logs FOR VALUES FROM "
                               f"('2026-{month:02d}-01 00:00+00') TO "
                               f"('2026-{month + 1:02d}-01 00:00+00')")
        version = make_version()
        rows = [{"model_version": version.id, "request_id": f"{m}-{i}", "score": 0.1,
                 "created_at": at(m)} for m in (1, 2) for i in range(3)]
        rows.append({"model_version": version.id, "request_id": "edge", "score": 0.1,
                     "created_at": dt.datetime(2026, 1, 31, 23, 59, tzinfo=UTC)})
        batch.bulk_insert(PredictionLog, rows)
        if backend == "postgres":  # an id whose log is gone (a partition truncated by hand)
            db.execute_sql(f"INSERT INTO {GUARD} VALUES ('orphan')")
        before = _snapshot(db)
    migrate.upgrade(db)
    assert drift.check(db) == []
    with db.connection_context():
        assert _snapshot(db) == before
        if backend == "postgres":
            months = {r: m.month for r, m in _guard(db).items()}
            assert months == {**{f"{m}-{i}": m for m in (1, 2) for i in range(3)}, "edge": 1}
        else:
            assert GUARD not in introspect.table_names(db)
        _log(version, "orphan", at(2))
        partitions.drop("2026-02", today=dt.date(2026, 11, 1))  # January, ids not pruned
        with raises_violation(db, "unique", "prediction_logs_request_id"):
            _log(version, "2-0", at(3))
    migrate.downgrade(db, target=GUARD_MONTHS)
    with db.connection_context():
        # reverted, the pending prune is done: the old design freed ids with their month
        _log(version, "1-0", at(2))
        with raises_violation(db, "unique", "prediction_logs_request_id"):
            _log(version, "2-0", at(3))
        if backend == "postgres":
            assert set(_guard_columns(db)) == {"request_id"}
            assert DROPPED not in introspect.table_names(db)
        after = _snapshot(db)
    migrate.upgrade(db)
    assert drift.check(db) == []
    with db.connection_context():
        assert _snapshot(db) == after


def _guard_columns(db):
    return [c for (c,) in db.execute_sql(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped", (GUARD,)).fetchall()]


# -- maintenance: ensure, list, drop ----------------------------------------------------------


def test_ensure_creates_the_coming_months_once(migrated_fresh_db, backend):
    today = dt.date(2031, 11, 20)
    created = partitions.ensure(ahead=2, today=today)
    again = partitions.ensure(ahead=2, today=today)
    if backend == "postgres":
        assert created == ["prediction_logs_2031_11", "prediction_logs_2031_12",
                           "prediction_logs_2032_01"]
        starts = [p.start for p in partitions.list_partitions()]
        assert starts[-3:] == [dt.date(2031, 11, 1), dt.date(2031, 12, 1), dt.date(2032, 1, 1)]
        assert drift.check(migrated_fresh_db) == []  # partitions do not count as drift
    else:
        assert created == []
    assert again == []


@pytest.mark.parametrize("kwargs, message", [
    ({"ahead": -1}, "ahead"), ({"ahead": 121}, "ahead"), ({"ahead": True}, "ahead"),
    ({"since": "2026-13"}, "YYYY-MM"), ({"since": "26-01"}, "YYYY-MM"),
    ({"since": "2026-01-01"}, "YYYY-MM"), ({"since": "'; DROP TABLE x; --"}, "YYYY-MM"),
    ({"since": "2099-01", "ahead": 0}, "after the last month"),
    ({"model": PredictionLog._meta.table_name}, "model class"),
    ({"model": MLModel}, "not partitioned by month"),
])
def test_ensure_refuses_bad_arguments(db, kwargs, message):
    with pytest.raises(ValidationError, match=message):
        partitions.ensure(**kwargs)


def test_ensure_does_not_wait_for_open_write_transactions(migrated_fresh_db, fresh_url,
                                                          backend):
    if backend == "sqlite":
        assert partitions.ensure(ahead=1, today=dt.date(2033, 1, 1)) == []
        return
    version = make_version()
    writer = within_db.db.make_database(fresh_url)
    writer.connect()
    try:
        writer.execute_sql("BEGIN")
        writer.execute_sql("INSERT INTO prediction_logs (model_version_id, request_id, score, "
                           "features, created_at) VALUES (%s, 'open', 0.5, '{}', now())",
                           (version.id,))
        # the writer holds ROW EXCLUSIVE on the parent until it commits; ATTACH needs only
        # SHARE UPDATE EXCLUSIVE, so this completes (a lock wait would hit lock_timeout)
        created = partitions.ensure(ahead=1, since="2033-01", today=dt.date(2033, 1, 1))
        assert created == ["prediction_logs_2033_01", "prediction_logs_2033_02"]
        writer.execute_sql("COMMIT")
    finally:
        writer.close()
    assert PredictionLog.select().where(PredictionLog.request_id == "open").count() == 1


def test_drop_removes_whole_months_and_frees_their_request_ids(migrated_fresh_db, backend):
    version = make_version()
    ml.log_predictions(version, [{"request_id": f"r{m}-{i}", "score": 0.1, "created_at": at(m)}
                                 for m in (1, 2, 3) for i in range(3)])
    dropped = partitions.drop("2026-03", today=dt.date(2026, 11, 1))
    assert dropped[dt.date(2026, 1, 1)] == dropped[dt.date(2026, 2, 1)] == 3
    assert sum(dropped.values()) == 6 and max(dropped) == dt.date(2026, 2, 1)
    left = sorted(r for (r,) in PredictionLog.select(PredictionLog.request_id).tuples())
    assert left == ["r3-0", "r3-1", "r3-2"]
    months = [p.start for p in partitions.list_partitions()]
    assert dt.date(2026, 2, 1) not in months and dt.date(2026, 3, 1) in months
    if backend == "postgres":
        assert "prediction_logs_2026_01" not in migrated_fresh_db.get_tables()
        partitions.ensure(since="2026-01", today=dt.date(2026, 11, 1))
    ml.log_predictions(version, [{"request_id": "r1-0", "score": 0.2, "created_at": at(1)}])
    assert partitions.drop("2026-01", today=dt.date(2026, 11, 1)) == {}


@pytest.mark.parametrize("before, message", [
    ("2099-01", "current month"), ("2026-1", "YYYY-MM"), ("x", "YYYY-MM"),
])
def test_drop_refuses_the_current_month_and_bad_months(migrated_fresh_db, before, message):
    with pytest.raises(ValidationError, match=message):
        partitions.drop(before, today=dt.date(2026, 11, 1))


def test_drop_refuses_to_run_inside_a_transaction(db):
    with pytest.raises(ValidationError, match="outside"):
        partitions.drop("2026-01")


def _guard(db):
    return dict(db.execute_sql(f"SELECT request_id, month FROM {GUARD}").fetchall())


def _dropped(db):
    return [m for (m,) in db.execute_sql(f"SELECT month FROM {DROPPED} ORDER BY 1").fetchall()]


def test_guard_rows_record_the_utc_month_of_their_log(db, backend):
    version = make_version()
    if backend == "sqlite":  # UNIQUE(request_id) on the one table: no guard to keep
        assert GUARD not in introspect.table_names(db)
        return
    # the session's zone must not matter: 23:30 UTC on 31 January is February in Kiritimati
    db.execute_sql("SET LOCAL TIME ZONE 'Pacific/Kiritimati'")
    late = _log(version, "late-jan", dt.datetime(2026, 1, 31, 23, 30, tzinfo=UTC))
    moved = _log(version, "to-move", at(2))
    assert _guard(db) == {"late-jan": dt.date(2026, 1, 1), "to-move": dt.date(2026, 2, 1)}
    PredictionLog.update(request_id="renamed").where(PredictionLog.id == late.id).execute()
    PredictionLog.update(created_at=at(3)).where(PredictionLog.id == moved.id).execute()
    assert _guard(db) == {"renamed": dt.date(2026, 1, 1), "to-move": dt.date(2026, 3, 1)}
    PredictionLog.delete().where(PredictionLog.id == moved.id).execute()
    assert _guard(db) == {"renamed": dt.date(2026, 1, 1)}


def _nonzero(counts):
    return {month: n for month, n in counts.items() if n}


def test_dropped_ids_stay_taken_until_pruned_then_are_free(migrated_fresh_db, backend):
    db = migrated_fresh_db
    version = make_version()
    ml.log_predictions(version, [{"request_id": f"r{m}-{i}", "score": 0.1, "created_at": at(m)}
                                 for m in (1, 2, 3) for i in range(5)])
    january, february = dt.date(2026, 1, 1), dt.date(2026, 2, 1)
    dropped = partitions.drop("2026-03", today=dt.date(2026, 11, 1))
    assert _nonzero(dropped) == {january: 5, february: 5}
    if backend == "postgres":
        assert _dropped(db) == sorted(dropped)  # every month dropped, empty ones too
        with raises_violation(db, "unique", "prediction_logs_request_id"):
            _log(version, "r1-0", at(3))  # stricter until pruned, never looser
        # an interrupted prune left part of February: a rerun finishes it
        db.execute_sql(f"DELETE FROM {GUARD} WHERE request_id IN ('r2-0', 'r2-1')")
        assert _nonzero(partitions.prune(batch_size=2)) == {january: 5, february: 3}
        assert _dropped(db) == [] and sorted(_guard(db)) == [f"r3-{i}" for i in range(5)]
    else:
        assert partitions.prune(batch_size=2) == {}  # the rows and their ids went together
    _log(version, "r1-0", at(3))
    _log(version, "r2-4", at(3))
    assert partitions.prune() == {}
    with raises_violation(db, "unique", "prediction_logs_request_id"):
        _log(version, "r3-0", at(4))


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": True}, "batch_size"),
    ({"batch_size": "10"}, "batch_size"), ({"model": "prediction_logs"}, "model class"),
    ({"model": MLModel}, "not partitioned by month"),
])
def test_prune_refuses_bad_arguments(db, kwargs, message):
    with pytest.raises(ValidationError, match=message):
        partitions.prune(**kwargs)


def test_prune_refuses_to_run_inside_a_transaction(db):
    with pytest.raises(ValidationError, match="outside"):
        partitions.prune()


def _session(url):
    other = within_db.db.make_database(url)
    other.connect()
    return other


def _insert_sql(version_id, request_id, month):
    return ("INSERT INTO prediction_logs (model_version_id, request_id, score, features, "
            f"created_at) VALUES ({int(version_id)}, '{request_id}', 0.5, '{{}}', "
            f"'2026-{month:02d}-15 12:00:00+00')")


def _in_thread(fn):
    """Start ``fn`` in a thread; return (thread, outcome) where outcome fills on exit."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except Exception as exc:  # handed to the test thread, which asserts on it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _wait_until_waiting(db, pid, what="Lock", timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute_sql("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                             (pid,)).fetchone()
        if row and row[0] == what:
            return
        time.sleep(0.05)
    raise AssertionError(f"backend {pid} never waited on a {what}")


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_concurrent_writers_of_one_request_id_one_wins_the_other_names_the_constraint(
        migrated_fresh_db, fresh_url, backend, isolation):
    version = make_version()
    first, second = _session(fresh_url), _session(fresh_url)
    try:
        if backend == "sqlite":  # one writer at a time: the second sees the committed row
            with first.atomic():
                first.execute_sql(_insert_sql(version.id, "race", 1).replace("'2026-01-15 "
                                                                             "12:00:00+00'",
                                                                             "'2026-01-15'"))
            with raises_violation(second, "unique", "prediction_logs_request_id"):
                second.execute_sql(_insert_sql(version.id, "race", 2).replace(
                    "'2026-02-15 12:00:00+00'", "'2026-02-15'"))
            return
        pid = second.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        cursor = second.connection().cursor()  # peewee's connections are per thread
        for request_id, end in (("race-commit", "COMMIT"), ("race-rollback", "ROLLBACK")):
            first.execute_sql("BEGIN")
            first.execute_sql(_insert_sql(version.id, request_id, 1))
            second.execute_sql(f"BEGIN ISOLATION LEVEL {isolation}")
            second.execute_sql("SELECT 1")  # the snapshot predates the first's commit
            thread, outcome = _in_thread(
                lambda rid=request_id: cursor.execute(_insert_sql(version.id, rid, 2)))
            _wait_until_waiting(first, pid)  # on the first writer's guard row
            first.execute_sql(end)
            thread.join(30)
            assert not thread.is_alive()
            if end == "COMMIT":
                found = violation(peewee.IntegrityError(outcome.get("error")), second)
                assert found is not None, outcome
                assert (found.kind, found.name) == ("unique", "prediction_logs_request_id")
                second.execute_sql("ROLLBACK")
            else:
                assert "error" not in outcome, outcome
                second.execute_sql("COMMIT")
        counts = dict(first.execute_sql("SELECT request_id, count(*) FROM prediction_logs "
                                        "GROUP BY 1").fetchall())
        assert counts == {"race-commit": 1, "race-rollback": 1}
        assert set(_guard(first)) == {"race-commit", "race-rollback"}
    finally:
        first.close()
        second.close()


def test_drop_beside_writers_blocks_none_and_waits_for_their_transactions(
        migrated_fresh_db, fresh_url, backend):
    version = make_version()
    ml.log_predictions(version, [{"request_id": f"old-{i}", "score": 0.1, "created_at": at(1)}
                                 for i in range(3)])
    writer, dropper = _session(fresh_url), within_db.db.make_database(fresh_url)
    try:
        if backend == "sqlite":  # batches of DELETEs between the writer's transactions
            with writer.atomic():
                writer.execute_sql("INSERT INTO prediction_logs (model_version_id, request_id, "
                                   "score, features, created_at) VALUES (?, 'w-0', 0.5, '{}', "
                                   "'2026-03-15')", (version.id,))
            dropped = partitions.drop("2026-02", today=dt.date(2026, 11, 1), db=dropper)
            assert _nonzero(dropped) == {dt.date(2026, 1, 1): 3}
            return
        writer.execute_sql("SET lock_timeout = '5s'")  # a blocked writer fails the test
        writer.execute_sql("BEGIN")
        writer.execute_sql(_insert_sql(version.id, "w-0", 3))
        thread, outcome = _in_thread(
            lambda: partitions.drop("2026-02", today=dt.date(2026, 11, 1), db=dropper))
        time.sleep(1)  # the detach's second phase now waits for the writer's transaction
        assert thread.is_alive()
        for i in range(1, 4):  # meanwhile the writer keeps writing, and so does a new one
            writer.execute_sql(_insert_sql(version.id, f"w-{i}", 3))
        ml.log_predictions(version, [{"request_id": "other", "score": 0.1, "created_at": at(3)}])
        writer.execute_sql("COMMIT")
        thread.join(60)
        assert not thread.is_alive() and "error" not in outcome, outcome
        assert _nonzero(outcome["value"]) == {dt.date(2026, 1, 1): 3}
        # an open write transaction neither blocks the prune nor is blocked by it
        writer.execute_sql("BEGIN")
        writer.execute_sql(_insert_sql(version.id, "w-4", 3))
        thread, outcome = _in_thread(lambda: partitions.prune(db=dropper))
        thread.join(30)
        assert not thread.is_alive() and "error" not in outcome, outcome
        assert _nonzero(outcome["value"]) == {dt.date(2026, 1, 1): 3}
        writer.execute_sql(_insert_sql(version.id, "old-0", 3))  # freed
        writer.execute_sql("COMMIT")
        assert PredictionLog.select().count() == 7
    finally:
        writer.close()
        dropper.close()


def test_prune_waits_for_ensure_so_a_month_is_never_pruned_while_created(
        migrated_fresh_db, fresh_url, backend):
    version = make_version()
    ml.log_predictions(version, [{"request_id": "jan", "score": 0.1, "created_at": at(1)}])
    partitions.drop("2026-02", today=dt.date(2026, 11, 1))
    if backend == "sqlite":
        assert partitions.prune() == {}
        return
    holder, pruner = _session(fresh_url), within_db.db.make_database(fresh_url)
    try:
        holder.execute_sql("BEGIN")
        holder.execute_sql("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK_KEY,))
        thread, outcome = _in_thread(lambda: partitions.prune(db=pruner))
        time.sleep(1)
        assert thread.is_alive() and dt.date(2026, 1, 1) in _dropped(migrated_fresh_db)
        holder.execute_sql("COMMIT")
        thread.join(30)
        assert "error" not in outcome, outcome
        assert _nonzero(outcome["value"]) == {dt.date(2026, 1, 1): 1}
        assert _dropped(migrated_fresh_db) == []
    finally:
        holder.close()
        pruner.close()


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def run(fresh_url):
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(cli, ["--database-url", fresh_url, *args])
        if database.obj is not None:
            database.obj.close()
        return result

    yield invoke
    database.initialize(None)


def test_partitions_cli_lists_ensures_and_drops(run, fresh_url, backend):
    assert run("migrate", "up").exit_code == 0
    result = run("partitions", "ensure", "--from", "2026-01", "--ahead", "0")
    assert result.exit_code == 0, result.output
    db = within_db.connect(fresh_url)
    with db.connection_context():
        version = make_version()
        ml.log_predictions(version, [{"request_id": f"c{m}", "score": 0.1, "created_at": at(m)}
                                     for m in (1, 2)])
    db.close()
    result = run("partitions", "list", "--exact", "--format", "csv")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "name,from,to,rows,bytes"
    if backend == "postgres":
        assert lines[1].startswith("prediction_logs_2026_01,2026-01-01,2026-02-01,1,")
    else:
        assert lines[1:] == ["prediction_logs,2026-01-01,2026-02-01,1,",
                             "prediction_logs,2026-02-01,2026-03-01,1,"]
    refused = run("partitions", "drop", "--before", "2026-02")  # CliRunner: not a terminal
    assert refused.exit_code == 1 and "--yes" in refused.stderr
    result = run("partitions", "drop", "--before", "2026-02", "--yes", "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("[") and '"rows": 1' in result.stdout
    # PostgreSQL frees the dropped month's request ids right after the drop
    assert ("1 id(s)" in result.stderr) == (backend == "postgres"), result.stderr
    db = within_db.connect(fresh_url)
    with db.connection_context():
        ml.log_predictions(version, [{"request_id": "c1", "score": 0.1, "created_at": at(2)}])
        PredictionLog.delete().where(PredictionLog.request_id == "c1").execute()
    db.close()
    bad = run("partitions", "drop", "--before", "2026/02", "--yes")
    assert bad.exit_code == 1 and "YYYY-MM" in bad.stderr
    result = run("inspect", "tables", "--format", "json")
    tables = {t["table"]: t for t in json.loads(result.stdout)["tables"]}
    assert tables["prediction_logs"]["rows"] == 1
    if backend == "postgres":
        assert tables["prediction_logs"]["partitions"] >= 1
        assert not any(name.startswith("prediction_logs_20") for name in tables)
    else:
        assert tables["prediction_logs"]["partitions"] is None


@pytest.mark.parametrize("name,call", [
    ("list_partitions", lambda tmp: partitions.list_partitions()),
    ("ensure", lambda tmp: partitions.ensure()),
    ("drop", lambda tmp: partitions.drop("2020-01")),
    ("prune", lambda tmp: partitions.prune()),
    ("plan_archive", lambda tmp: archive.plan_archive("2020-01", tmp)),
    ("archive", lambda tmp: archive.archive("2020-01", tmp)),
])
def test_an_unmigrated_database_is_named_not_a_driver_error(fresh_db, tmp_path, name, call):
    # SQLite keeps one plain table: ensure and prune have nothing to do before it exists
    if backend(fresh_db) == "sqlite" and name in ("ensure", "prune"):
        assert call(tmp_path) in ([], {})
        return
    with pytest.raises(NotMigratedError) as info:
        call(tmp_path)
    assert str(info.value) == ("the schema is missing a table or column; run `within-db "
                               "migrate up`")
    assert fresh_db.get_tables() == [] and list(tmp_path.iterdir()) == []
