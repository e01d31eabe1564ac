"""One suite, two backends: every database fixture is parametrised over sqlite and postgres.

PostgreSQL comes from WITHIN_DB_TEST_POSTGRES_URL (an admin connection); each session makes a
throwaway database and drops it. WITHIN_DB_REQUIRE_POSTGRES=1 turns an unreachable server
into a failure instead of a skip. The streaming replica of that server (scripts/ensure_replica.sh)
comes from WITHIN_DB_TEST_REPLICA_URL; replica tests read each throwaway database through it.
WITHIN_DB_TEST_BACKENDS (sqlite, postgres or both, the default) picks the backends;
WITHIN_DB_TEST_REUSE_DIR keeps migrated and seeded template databases there across runs (the
mutation runs start pytest thousands of times; migrating each time would dominate).
"""

import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import peewee
import psycopg2
import pytest
from hypothesis import HealthCheck, settings

import within_db
from within_db import migrate, partitions
from within_db.db import database

# examples/ is not installed: `import examples.api` works however pytest is started
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("WITHIN_DB_TEST_POSTGRES_URL",
                              "postgresql://root@127.0.0.1:5432/test")
PG_REPLICA_URL = os.environ.get("WITHIN_DB_TEST_REPLICA_URL",
                                "postgresql://root@127.0.0.1:5433/test")
REQUIRE_PG = os.environ.get("WITHIN_DB_REQUIRE_POSTGRES") == "1"
# Suites of several worktrees share the one replica: tests that stop it or pause its replay
# take this lock exclusively, tests that expect it streaming take it shared.
REPLICA_LOCK = "/tmp/within_db_replica_tests.lock"
# Replay on a shared, busy machine can stall for a while (other suites drop databases, and each
# DROP DATABASE waits for a restartpoint): replica tests assert where reads go and what they
# see, not how fast, so they allow generous lag and waits.
REPLICA_TEST_OPTIONS = {"max_replica_lag": 600.0, "replica_wait": 120.0}
ALL_BACKENDS = ("sqlite", "postgres")
_CHOSEN = {part.strip() for part in
           os.environ.get("WITHIN_DB_TEST_BACKENDS", ",".join(ALL_BACKENDS)).split(",")}
BACKENDS = tuple(kind for kind in ALL_BACKENDS if kind in _CHOSEN)
REUSE_DIR = os.environ.get("WITHIN_DB_TEST_REUSE_DIR") or None
# databases of runs sharing a REUSE_DIR carry its tag, so drop_templates finds those a killed
# run left behind
_TAG = (hashlib.sha256(str(Path(REUSE_DIR).resolve()).encode()).hexdigest()[:8] + "_"
        if REUSE_DIR else "")


def pytest_configure(config):
    unknown = _CHOSEN - set(ALL_BACKENDS)
    if unknown or not BACKENDS:
        raise pytest.UsageError(
            f"WITHIN_DB_TEST_BACKENDS={os.environ['WITHIN_DB_TEST_BACKENDS']!r}: expected "
            "sqlite, postgres or sqlite,postgres")
    if REQUIRE_PG and "postgres" not in BACKENDS:
        # CI must never pass by leaving PostgreSQL out
        raise pytest.UsageError(
            "WITHIN_DB_REQUIRE_POSTGRES=1 but WITHIN_DB_TEST_BACKENDS leaves PostgreSQL out: "
            "unset one of them")

# Property tests run inside a database transaction (a savepoint per example); deadlines mean
# nothing on a shared 2-core machine. CI keeps the example count modest for both backends.
_PROFILE = dict(deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("ci", max_examples=40, **_PROFILE)
settings.register_profile("dev", max_examples=20, **_PROFILE)
# scripts/mutation.py: the same examples in every run, and no example database shared by runs
settings.register_profile("mutation", max_examples=20,
                          **{**_PROFILE, "derandomize": True, "database": None})
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE")
                      or ("ci" if os.environ.get("CI") else "dev"))


def _admin():
    db = within_db.db.make_database(PG_ADMIN_URL)
    db.connect()
    return db


def _pg_url(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


class Databases:
    """Creates and drops throwaway databases of one backend."""

    def __init__(self, kind, tmp_path_factory):
        self.kind = kind
        self.tmp = tmp_path_factory
        self.created = []

    def new_url(self, state: str | None = None) -> str:
        """A new database: empty, or in ``state`` (a key of _STATES)."""
        template = _template(self.kind, state) if state and REUSE_DIR else None
        if self.kind == "sqlite":
            path = self.tmp.mktemp("db") / "within.db"
            if template:
                shutil.copyfile(template, path)
            url = f"sqlite:///{path}"
        else:
            name = f"within_test_{_TAG}{uuid.uuid4().hex[:12]}"
            clause = f' TEMPLATE "{template}"' if template else ""
            admin = _admin()
            try:
                admin.execute_sql(f'CREATE DATABASE "{name}"{clause}')
            finally:
                admin.close()
            self.created.append(name)
            url = _pg_url(name)
        if state and not template:
            _STATES[state](url)
        return url

    def drop_all(self):
        if not self.created:
            return
        admin = _admin()
        try:
            for name in self.created:
                admin.execute_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.close()


@pytest.fixture(scope="session")
def postgres_available():
    if "postgres" not in BACKENDS:
        pytest.skip("PostgreSQL left out by WITHIN_DB_TEST_BACKENDS")
    try:
        _admin().close()
    except (within_db.errors.WithinDBError, psycopg2.Error, peewee.PeeweeException) as exc:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")


def replica_url_of(primary_url: str) -> str:
    """The URL of the replica's copy of a throwaway database of the primary."""
    base, _, _ = PG_REPLICA_URL.rpartition("/")
    return f"{base}/{primary_url.rpartition('/')[2]}"


@contextlib.contextmanager
def replica_lock(exclusive: bool):
    with open(REPLICA_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def wait_for_replica_database(url: str, timeout: float = 600.0) -> None:
    """Wait until the replica lets clients into a database just created on the primary."""
    deadline = time.monotonic() + timeout
    while True:
        db = within_db.db.make_database(replica_url_of(url))
        try:
            db.connect()
            return
        except within_db.errors.DatabaseUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            db.close()


def wait_until_replica_current(url: str, timeout: float = 600.0) -> None:
    """Wait until the replica has replayed everything the primary had written on entry."""
    primary = within_db.db.make_database(url)
    replica = within_db.db.make_database(replica_url_of(url))
    try:
        lsn = primary.execute_sql("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
        deadline = time.monotonic() + timeout
        while not replica.execute_sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                      (lsn,)).fetchone()[0]:
            assert time.monotonic() < deadline, f"the replica did not replay {lsn} in time"
            time.sleep(0.05)
    finally:
        primary.close()
        replica.close()


@pytest.fixture(scope="session")
def replica_available(postgres_available):
    """The streaming replica answers, in recovery; else a skip (a failure in CI)."""
    problem = None
    try:
        db = within_db.db.make_database(PG_REPLICA_URL)
        try:
            if not db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0]:
                problem = "it is not in recovery"
        finally:
            db.close()
    except (within_db.errors.WithinDBError, peewee.PeeweeException) as exc:
        problem = str(exc)
    if problem:
        message = (f"replica at {within_db.db.redact_url(PG_REPLICA_URL)} unusable: {problem}; "
                   "run scripts/ensure_replica.sh")
        if REQUIRE_PG:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def replicated_url(replica_available, tmp_path_factory):
    """A migrated throwaway PostgreSQL database (module scope) that the replica serves too."""
    factory = Databases("postgres", tmp_path_factory)
    url = factory.new_url()
    db = within_db.db.make_database(url)
    migrate.upgrade(db)
    db.close()
    wait_for_replica_database(url)
    yield url
    factory.drop_all()


@pytest.fixture
def replicated_db(replicated_url):
    """``connect(url, replica=...)`` on the module's database while the replica streams."""
    with replica_lock(exclusive=False):
        db = within_db.connect(replicated_url, replica=replica_url_of(replicated_url),
                               **REPLICA_TEST_OPTIONS)
        yield db
        db.close()
        database.initialize(None)


@pytest.fixture(scope="session", params=BACKENDS)
def databases(request, tmp_path_factory):
    """A factory of fresh, empty databases of one backend (the test's parameter)."""
    if request.param == "postgres":
        request.getfixturevalue("postgres_available")
    factory = Databases(request.param, tmp_path_factory)
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def backend(databases):
    return databases.kind


# test rows fall in these months; PostgreSQL needs their partitions (a migration creates only
# the current month and the next few)
TEST_DATA_SINCE = "2024-01"


def migrate_for_tests(db):
    migrate.upgrade(db)
    partitions.ensure(since=TEST_DATA_SINCE, db=db)


def _migrate_url(url: str) -> None:
    db = within_db.db.make_database(url)
    migrate_for_tests(db)
    db.close()


def _seed_url(url: str) -> None:
    from within_db.seed import run_seed

    db = within_db.connect(url)
    run_seed(db, "tiny")
    db.close()
    database.initialize(None)


def _upgrade_url(url: str) -> None:
    db = within_db.db.make_database(url)
    migrate.upgrade(db)
    db.close()


#: how a new database reaches each state (with WITHIN_DB_TEST_REUSE_DIR: once, into a template)
_STATES = {"migrated": _migrate_url, "upgraded": _upgrade_url, "seeded": _seed_url}


def _template(kind: str, state: str) -> str:
    """The template of ``state`` in REUSE_DIR (a file, or a PostgreSQL database), made once.

    Keyed by the migrations' text; the directory stands for one state of the library, so
    whoever sets it empties it (and drops its templates: drop_templates) when the code changes.
    """
    digest = hashlib.sha256()
    for path in sorted((ROOT / "migrations").glob("*.py")):
        digest.update(path.read_bytes())
    key = f"{state}_{digest.hexdigest()[:10]}"
    reuse = Path(REUSE_DIR).resolve()
    reuse.mkdir(parents=True, exist_ok=True)
    marker = reuse / f"{kind}_{key}"
    with open(reuse / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one pytest process builds it, the others wait
        if marker.exists():
            return str(marker) if kind == "sqlite" else marker.read_text()
        if kind == "sqlite":
            building = reuse / f"building_{uuid.uuid4().hex[:8]}.db"
            _STATES[state](f"sqlite:///{building}")
            building.replace(marker)
            return str(marker)
        name = "within_tpl_" + hashlib.sha256(f"{reuse}/{key}".encode()).hexdigest()[:16]
        admin = _admin()
        try:
            admin.execute_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute_sql(f'CREATE DATABASE "{name}"')
        finally:
            admin.close()
        _STATES[state](_pg_url(name))
        marker.write_text(name)
        return name


def build_templates(kind: str) -> None:
    """Make every template of ``kind`` in WITHIN_DB_TEST_REUSE_DIR now, with this code."""
    for state in _STATES:
        _template(kind, state)


def drop_templates(reuse_dir: str) -> None:
    """Drop the PostgreSQL templates of a WITHIN_DB_TEST_REUSE_DIR, and the test databases
    of runs that used it, then empty it."""
    reuse = Path(reuse_dir)
    names = [p.read_text() for p in reuse.glob("postgres_*")]
    if reuse.exists() and "postgres" in BACKENDS:
        tag = hashlib.sha256(str(reuse.resolve()).encode()).hexdigest()[:8]
        admin = _admin()
        try:
            rows = admin.execute_sql("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                     (f"within\\_test\\_{tag}\\_%",)).fetchall()
            for name in names + [row[0] for row in rows]:
                admin.execute_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.close()
    shutil.rmtree(reuse, ignore_errors=True)


@pytest.fixture(scope="session")
def migrated_url(databases):
    return databases.new_url("migrated")


@pytest.fixture(scope="session")
def session_db(migrated_url):
    db = within_db.db.make_database(migrated_url)
    db.connect()
    yield db
    db.close()


@pytest.fixture
def db(session_db):
    """The migrated database of the backend, bound to the proxy, in a rolled-back transaction."""
    database.initialize(session_db)
    with session_db.atomic() as txn:
        yield session_db
        txn.rollback()
    database.initialize(None)


@pytest.fixture
def fresh_url(request, databases):
    """The URL of a new database of the backend, for tests that commit: empty, or migrated
    when the test also asks for ``migrated_fresh_db``."""
    migrated = "migrated_fresh_db" in request.fixturenames
    return databases.new_url("migrated" if migrated else None)


@pytest.fixture
def fresh_db(fresh_url):
    db = within_db.connect(fresh_url)
    yield db
    db.close()
    database.initialize(None)


@pytest.fixture
def migrated_fresh_db(fresh_db):
    """``fresh_db``, migrated (its ``fresh_url`` made it so)."""
    return fresh_db


@pytest.fixture(scope="session")
def seeded_url(databases):
    """A database of the backend filled by ``within-db seed --scale tiny`` (read-only use)."""
    return databases.new_url("seeded")


@pytest.fixture
def seeded_db(seeded_url):
    """The seeded database bound to the proxy, in a rolled-back transaction."""
    db = within_db.db.make_database(seeded_url)
    database.initialize(db)
    with db.atomic() as txn:
        yield db
        txn.rollback()
    db.close()
    database.initialize(None)


@pytest.fixture
def anyio_backend():
    return "asyncio"  # within_db.aio is pwasyncio, built on asyncio


@pytest.fixture(scope="session")
def aio_url(databases):
    """A migrated database of the backend for the async and API tests (they commit)."""
    return databases.new_url("upgraded")
