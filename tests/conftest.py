"""One suite, two backends: every database fixture is parametrised over sqlite and postgres.

PostgreSQL comes from WITHIN_DB_TEST_POSTGRES_URL (an admin connection); each session makes a
throwaway database and drops it. WITHIN_DB_REQUIRE_POSTGRES=1 turns an unreachable server
into a failure instead of a skip.
"""

import os
import sys
import uuid
from pathlib import Path

import peewee
import psycopg2
import pytest
from hypothesis import HealthCheck, settings

import within_db
from within_db import migrate
from within_db.db import database

# examples/ is not installed: `import examples.api` works however pytest is started
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("WITHIN_DB_TEST_POSTGRES_URL",
                              "postgresql://root@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("WITHIN_DB_REQUIRE_POSTGRES") == "1"
BACKENDS = ("sqlite", "postgres")

# Property tests run inside a database transaction (a savepoint per example); deadlines mean
# nothing on a shared 2-core machine. CI keeps the example count modest for both backends.
_PROFILE = dict(deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("ci", max_examples=40, **_PROFILE)
settings.register_profile("dev", max_examples=20, **_PROFILE)
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

    def new_url(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.tmp.mktemp('db') / 'within.db'}"
        name = f"within_test_{uuid.uuid4().hex[:12]}"
        admin = _admin()
        try:
            admin.execute_sql(f'CREATE DATABASE "{name}"')
        finally:
            admin.close()
        self.created.append(name)
        return _pg_url(name)

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
    try:
        _admin().close()
    except (within_db.errors.WithinDBError, psycopg2.Error, peewee.PeeweeException) as exc:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")


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


@pytest.fixture(scope="session")
def migrated_url(databases):
    url = databases.new_url()
    db = within_db.db.make_database(url)
    migrate.upgrade(db)
    db.close()
    return url


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
def fresh_url(databases):
    """The URL of a new, empty database of the backend, for tests that commit."""
    return databases.new_url()


@pytest.fixture
def fresh_db(fresh_url):
    db = within_db.connect(fresh_url)
    yield db
    db.close()
    database.initialize(None)


@pytest.fixture
def migrated_fresh_db(fresh_db):
    migrate.upgrade(fresh_db)
    return fresh_db


@pytest.fixture(scope="session")
def seeded_url(databases):
    """A database of the backend filled by ``within-db seed --scale tiny`` (read-only use)."""
    from within_db.seed import run_seed

    url = databases.new_url()
    db = within_db.connect(url)
    run_seed(db, "tiny")
    db.close()
    database.initialize(None)
    return url


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
    url = databases.new_url()
    db = within_db.db.make_database(url)
    migrate.upgrade(db)
    db.close()
    return url
