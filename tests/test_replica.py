"""Read replicas on the real streaming replica of the test server (scripts/ensure_replica.sh).

Reads go to the replica outside write transactions; read_your_writes() makes them see the
caller's writes; a replica that is down, stopped or lagging is skipped for the primary. The
replica tests are PostgreSQL's own; SQLite ignores the option.
"""

import datetime as dt
import logging
import socket
import subprocess
import uuid
from pathlib import Path

import peewee
import pytest
from click.testing import CliRunner

import within_db
from within_db import batch, migrate
from within_db.cli import cli
from within_db.db import database
from within_db.errors import ConfigurationError, ReadOnlyError
from within_db.models.campaigns import Campaign, CampaignPerformance
from within_db.models.users import User
from within_db.services.campaigns import get_user_campaigns
from within_db.services.ml_system import training_rows

from .conftest import (
    REPLICA_TEST_OPTIONS,
    replica_lock,
    replica_url_of,
    wait_until_replica_current,
)
from .helpers import make_campaign

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _email() -> str:
    return f"r{uuid.uuid4().hex[:12]}@example.com"


class Recorder:
    """Records the statements a database runs through peewee (its query hooks)."""

    def __init__(self, db):
        self.sql = []
        self.db = db
        db.query_hooks.append(self)

    def __call__(self, event):
        self.sql.append(event.sql)

    def close(self):
        self.db.query_hooks.remove(self)


def _in_recovery(db) -> bool:
    return db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _connect(url: str, **options):
    """``within_db.connect`` to ``url`` with its replica, allowing for a busy machine."""
    return within_db.connect(url, replica=replica_url_of(url), **{**REPLICA_TEST_OPTIONS,
                                                                   **options})


def _dead_replica(url: str, password: str = "") -> str:
    """A replica URL for the same database on a port where nothing listens."""
    auth = f"root:{password}" if password else "root"
    return f"postgresql://{auth}@127.0.0.1:{_free_port()}/{url.rpartition('/')[2]}"


# -- where reads go ------------------------------------------------------------------------


def test_reads_outside_transactions_run_on_the_replica(replicated_db):
    db = replicated_db
    with db.reading() as target:
        assert target is db.replica.db and _in_recovery(target)
    # the streaming paths: the query reports which server executes it
    recovery = peewee.fn.pg_is_in_recovery().alias("in_recovery")
    one = list(batch.stream(peewee.Select(columns=[recovery]).bind(database).dicts()))
    assert one == [{"in_recovery": True}]
    frame = batch.to_dataframe(peewee.Select(columns=[recovery]).bind(database))
    assert frame["in_recovery"].tolist() == [True]
    # the service read paths: their statements reach the replica, none the primary
    user = User.create(email=_email())
    replica, primary = Recorder(db.replica.db), Recorder(db)
    try:
        with db.read_your_writes():
            assert get_user_campaigns(user.id) == []
    finally:
        replica.close()
        primary.close()
    def service(sql):  # leaves out the health probe, the WAL positions and the waits
        return [s for s in sql if '"users"' in s or '"campaigns"' in s]

    assert len(service(replica.sql)) == 2  # the user, their campaigns (no ads: none)
    assert service(primary.sql) == []


def test_training_rows_stream_from_the_replica(replicated_db, replicated_url):
    db = replicated_db
    campaign = make_campaign()
    for day in range(3):
        CampaignPerformance.create(campaign=campaign, date=dt.date(2026, 2, 1 + day),
                                   impressions=100, clicks=5)
    with db.read_your_writes():
        rows = training_rows(dt.date(2026, 2, 1), dt.date(2026, 2, 28), chunk_size=1)
        first = next(rows)  # the generator now holds a cursor open on the server it chose
        name = replicated_url.rpartition("/")[2]
        sql = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
               "AND query LIKE 'FETCH FORWARD%%'")
        admin = within_db.db.make_database(replica_url_of(replicated_url))
        try:
            assert admin.execute_sql(sql, (name,)).fetchone()[0] == 1
        finally:
            admin.close()
        assert [first, *rows][-1]["campaign_id"] == campaign.id


def test_reads_inside_a_write_transaction_go_to_the_primary(replicated_db):
    db = replicated_db
    replica = Recorder(db.replica.db)
    try:
        with db.atomic() as txn:
            user = User.create(email=_email())
            assert get_user_campaigns(user.id) == []  # None: the replica does not know them
            with db.reading() as target:
                assert target is db and not _in_recovery(target)
            mine = User.select(User.id).where(User.id == user.id)
            assert [r["id"] for r in batch.stream(mine.dicts())] == [user.id]
            txn.rollback()
    finally:
        replica.close()
    assert replica.sql == []


def test_read_your_writes_sees_each_of_200_writes_on_the_replica(replicated_db):
    db = replicated_db
    misses = replica_reads = 0
    for i in range(200):
        if i % 2:
            with db.atomic():  # a committed transaction
                user = User.create(email=_email())
        else:
            user = User.create(email=_email())  # autocommit
        with db.read_your_writes(), db.reading() as target:
            replica_reads += target is db.replica.db
            misses += User.get_or_none(User.id == user.id) is None
    assert (misses, replica_reads) == (0, 200)
    # a service read right after a write, through the same path
    campaign = make_campaign()
    with db.read_your_writes():
        found = get_user_campaigns(campaign.owner_id)
    assert [c["campaign"]["id"] for c in found] == [str(campaign.id)]


def test_write_position_lets_another_process_read_these_writes(replicated_db, replicated_url):
    db = replicated_db
    user = User.create(email=_email())
    position = db.write_position()
    other = within_db.db.make_database(replicated_url)
    other.use_replica(replica_url_of(replicated_url), max_lag=600, wait=120)
    try:
        with other.read_your_writes(after=position):
            target = other.for_reads()
            assert target is other.replica.db
            assert target.execute_sql("SELECT count(*) FROM users WHERE id = %s",
                                      (str(user.id),)).fetchone()[0] == 1
    finally:
        other.close()


def test_writes_on_the_replica_are_refused_with_a_clear_error(replicated_db):
    db = replicated_db
    before = User.select().count()
    with db.reading(), pytest.raises(ReadOnlyError, match="read-only") as info:
        User.create(email=_email())
    assert "5433" in str(info.value) and "replica" in str(info.value)
    with pytest.raises(ReadOnlyError):
        db.replica.db.execute_sql("DELETE FROM users")
    with pytest.raises(ReadOnlyError):
        db.replica.db.execute_sql("CREATE TABLE nope (id int)")
    assert User.select().count() == before


# -- replicas that cannot serve -------------------------------------------------------------


def test_an_unreachable_replica_is_skipped_for_the_primary(replicated_url, caplog):
    db = within_db.connect(replicated_url, replica=_dead_replica(replicated_url, "s3cret"))
    try:
        user = User.create(email=_email())
        with caplog.at_level(logging.WARNING, logger="within_db.db"):
            with db.read_your_writes():
                assert get_user_campaigns(user.id) == []
            with db.reading() as target:
                assert target is db
            assert list(batch.stream(User.select(User.id).where(User.id == user.id)
                                     .dicts())) == [{"id": user.id}]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # logged when the verdict changes, not on every read
        assert "reads go to the primary" in warnings[0] and "cannot connect" in warnings[0]
        assert "s3cret" not in warnings[0] and "s3cret" not in repr(db.replica)
    finally:
        db.close()
        database.initialize(None)


def test_a_primary_given_as_replica_is_skipped(replicated_url, caplog):
    db = within_db.connect(replicated_url, replica=replicated_url)
    try:
        with caplog.at_level(logging.WARNING, logger="within_db.db"):
            assert db.for_reads() is db
        assert "not in recovery" in caplog.text
    finally:
        db.close()
        database.initialize(None)


def _stop_replica() -> None:
    subprocess.run(["bash", str(SCRIPTS / "stop_replica.sh")], check=True,
                   capture_output=True, timeout=120)


def _start_replica() -> None:
    subprocess.run(["bash", str(SCRIPTS / "ensure_replica.sh")], check=True,
                   capture_output=True, timeout=300)


def test_a_stopped_replica_falls_back_to_the_primary(replicated_url, replica_available,
                                                     caplog):
    with replica_lock(exclusive=True):
        db = _connect(replicated_url)
        try:
            user = User.create(email=_email())
            with db.read_your_writes():
                assert get_user_campaigns(user.id) == []  # on the replica, connection open
            assert not db.replica.db.is_closed()
            _stop_replica()
            try:
                with caplog.at_level(logging.WARNING, logger="within_db.db"):
                    # the verdict still says healthy: the read fails there and reruns on
                    # the primary, and the verdict turns
                    assert get_user_campaigns(user.id) == []
                    assert db.for_reads() is db
                    mine = User.select(User.id).where(User.id == user.id).dicts()
                    assert list(batch.stream(mine)) == [{"id": user.id}]
                    fresh = _connect(replicated_url)
                    assert fresh.for_reads() is fresh
                    assert get_user_campaigns(user.id) == []
                    fresh.close()
                assert "reads go to the primary" in caplog.text
            finally:
                _start_replica()
            again = _connect(replicated_url)
            try:
                with again.reading() as target:
                    assert target is again.replica.db and _in_recovery(target)
            finally:
                again.close()
        finally:
            db.close()
            database.initialize(None)


def test_a_stream_opened_on_a_failed_replica_comes_from_the_primary(replicated_url,
                                                                    replica_available):
    with replica_lock(exclusive=True):
        db = _connect(replicated_url)
        try:
            assert db.for_reads() is db.replica.db  # healthy, verdict cached
            # the replica ends this connection (as a restart would); the cached verdict
            # still sends the next stream there, which falls back before its first row
            pid = db.replica.db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            admin = within_db.db.make_database(replica_url_of(replicated_url))
            admin.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))
            admin.close()
            recovery = peewee.fn.pg_is_in_recovery().alias("in_recovery")
            rows = list(batch.stream(peewee.Select(columns=[recovery]).bind(database).dicts()))
            assert rows == [{"in_recovery": False}]
        finally:
            db.close()
            database.initialize(None)


def _paused_replay(url: str):
    """Pause replay on the replica until the context ends (the receiver keeps receiving)."""
    import contextlib

    @contextlib.contextmanager
    def paused():
        admin = within_db.db.make_database(replica_url_of(url))
        admin.execute_sql("SELECT pg_wal_replay_pause()")
        try:
            yield admin
        finally:
            admin.execute_sql("SELECT pg_wal_replay_resume()")
            admin.close()

    return paused()


def _received(admin, primary) -> None:
    """Wait until the replica has received (not replayed) everything the primary wrote."""
    lsn = primary.execute_sql("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
    for _ in range(1000):
        if admin.execute_sql("SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn",
                             (lsn,)).fetchone()[0]:
            return
        __import__("time").sleep(0.01)
    raise AssertionError("the replica received nothing for 10 s")


def test_a_lagging_replica_is_skipped_and_read_your_writes_times_out(replicated_url,
                                                                     replica_available,
                                                                     caplog):
    with replica_lock(exclusive=True):
        db = _connect(replicated_url, max_replica_lag=0.0, replica_wait=0.05)
        lenient = within_db.db.make_database(replicated_url)
        lenient.use_replica(replica_url_of(replicated_url), max_lag=3600, wait=0.05)
        try:
            with _paused_replay(replicated_url) as admin:
                user = User.create(email=_email())
                _received(admin, db)
                with caplog.at_level(logging.WARNING, logger="within_db.db"):
                    assert db.for_reads() is db  # lag > 0 s
                    assert "lags" in caplog.text
                    caplog.clear()
                    # within its lag bound, but not caught up with this write: after the
                    # wait the read goes to the primary and finds the row
                    with lenient.read_your_writes(after=db.write_position()):
                        target = lenient.for_reads()
                    assert target is lenient
                    assert "had not replayed" in caplog.text
                    count = target.execute_sql("SELECT count(*) FROM users WHERE id = %s",
                                               (str(user.id),)).fetchone()[0]
                    assert count == 1
                with lenient.reading() as target:  # without read_your_writes: the replica
                    assert target is lenient.replica.db
        finally:
            lenient.close()
            db.close()
            database.initialize(None)


# -- the CLI --------------------------------------------------------------------------------


def test_inspect_reads_through_the_replica_url(replicated_url, replica_available, caplog):
    runner = CliRunner()
    with replica_lock(exclusive=False), caplog.at_level(logging.INFO, logger="within_db.db"):
        wait_until_replica_current(replicated_url)  # the CLI allows the default lag, 10 s
        result = runner.invoke(cli, ["--database-url", replicated_url, "--replica-url",
                                     replica_url_of(replicated_url), "inspect", "tables",
                                     "--format", "json"])
        database.obj.close()
    assert result.exit_code == 0, result.output
    assert "reads go to the replica" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="within_db.db"):
        result = runner.invoke(cli, ["--database-url", replicated_url, "inspect", "rows",
                                     "users", "--limit", "1"],
                               env={"DATABASE_REPLICA_URL": _dead_replica(replicated_url)})
        database.obj.close()
    database.initialize(None)
    assert result.exit_code == 0, result.output
    assert "reads go to the primary" in caplog.text


# -- configuration --------------------------------------------------------------------------


def test_sqlite_ignores_the_replica(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'one.db'}"
    with caplog.at_level(logging.DEBUG, logger="within_db.db"):
        db = within_db.connect(url, replica="postgresql://root@127.0.0.1:5433/x")
    try:
        assert "SQLite has no replicas" in caplog.text and db.replica is None
        migrate.upgrade(db)
        user = User.create(email=_email())
        with db.read_your_writes(), db.reading() as target:
            assert target is db and get_user_campaigns(user.id) == []
        assert db.write_position() is None
    finally:
        db.close()
        database.initialize(None)


@pytest.mark.parametrize("options, expected", [
    ({"replica": "sqlite:///replica.db"}, "not a PostgreSQL URL"),
    ({"replica": "mysql://root@host/x"}, "not a PostgreSQL URL"),
    ({"replica": "postgresql://u:pw@h/x", "max_replica_lag": -1}, "max_replica_lag"),
    ({"replica": "postgresql://u:pw@h/x", "max_replica_lag": True}, "max_replica_lag"),
    ({"replica": "postgresql://u:pw@h/x", "replica_wait": "1"}, "replica_wait"),
])
def test_replica_options_are_checked(options, expected):
    with pytest.raises(ConfigurationError, match=expected) as info:
        within_db.connect("postgresql://u:pw@127.0.0.1/x", **options)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("kwargs, expected", [
    ({"timeout": -1}, "timeout"),
    ({"timeout": "soon"}, "timeout"),
    ({"after": "not-a-position"}, "WAL position"),
])
def test_read_your_writes_arguments_are_checked(kwargs, expected):
    db = within_db.db.make_database("postgresql://root@127.0.0.1/x")
    db.use_replica("postgresql://root@127.0.0.1:5433/x")
    with pytest.raises(ConfigurationError, match=expected):
        with db.read_your_writes(**kwargs):
            pass


def test_the_replica_url_comes_from_the_environment_only_with_the_primary(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://root@127.0.0.1/x")
    monkeypatch.setenv("DATABASE_REPLICA_URL", "postgresql://root@127.0.0.1:5433/x")
    try:
        assert within_db.connect().replica is not None
        # an explicit primary never pairs with a replica from the environment
        assert within_db.connect("postgresql://root@127.0.0.1/y").replica is None
    finally:
        database.initialize(None)


def test_campaigns_of_unknown_users_are_none_on_the_replica(replicated_db):
    assert get_user_campaigns(uuid.uuid4()) is None
    assert Campaign.select().where(Campaign.id == uuid.uuid4()).count() == 0
