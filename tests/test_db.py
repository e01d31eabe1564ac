import logging
import subprocess
import sys

import pytest

import within_db
from within_db.db import (
    DEFAULT_URL,
    PooledPostgresDatabase,
    PostgresDatabase,
    SqliteDatabase,
    backend,
    database,
    get_db,
    make_database,
    redact_url,
)
from within_db.errors import ConfigurationError, DatabaseUnavailableError, NotConnectedError

from .conftest import PG_ADMIN_URL


@pytest.fixture(autouse=True)
def unbind():
    yield
    if database.obj is not None:
        database.obj.close()
    database.initialize(None)


def test_connect_defaults_to_a_sqlite_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    db = within_db.connect()
    assert isinstance(db, SqliteDatabase)
    assert db.database == "within.db"
    db.execute_sql("SELECT 1")
    assert (tmp_path / "within.db").exists()
    assert DEFAULT_URL == "sqlite:///within.db"


def test_connect_reads_database_url_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    db = within_db.connect()
    assert db.database == f"{tmp_path}/env.db"


def test_sqlite_file_connections_get_pragmas(tmp_path):
    db = within_db.connect(f"sqlite:///{tmp_path}/p.db")
    assert db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert db.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 30000


def test_sqlite_memory_works_with_foreign_keys():
    db = within_db.connect("sqlite:///:memory:")
    assert db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "memory"


def test_a_second_process_reads_while_a_write_is_open(tmp_path):
    path = tmp_path / "wal.db"
    db = within_db.connect(f"sqlite:///{path}")
    db.execute_sql("CREATE TABLE t (x INTEGER)")
    db.execute_sql("INSERT INTO t VALUES (1)")
    with db.atomic():
        db.execute_sql("INSERT INTO t VALUES (2)")
        out = subprocess.run(
            [sys.executable, "-c",
             "import within_db;"
             f"db = within_db.connect('sqlite:///{path}');"
             "print(db.execute_sql('SELECT count(*) FROM t').fetchone()[0])"],
            capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_connect_postgres_schemes(scheme, postgres_available):
    url = PG_ADMIN_URL.replace("postgresql://", f"{scheme}://", 1)
    db = within_db.connect(url)
    assert isinstance(db, PostgresDatabase)
    assert db.execute_sql("SHOW TimeZone").fetchone()[0] == "UTC"
    name = db.execute_sql("SELECT current_setting('application_name')").fetchone()[0]
    assert name == "within_db"
    assert db.connect_params["connect_timeout"] > 0


def test_connect_pooled_postgres(postgres_available):
    url = PG_ADMIN_URL.replace("postgresql://", "postgresql+pool://", 1)
    db = within_db.connect(url)
    assert isinstance(db, PooledPostgresDatabase)
    assert db.execute_sql("SELECT 1").fetchone()[0] == 1


def test_postgres_binds_a_class_with_real_server_side_cursors():
    db = make_database("postgresql://u@h/d")
    from playhouse.postgres_ext import PostgresqlExtDatabase

    assert isinstance(db, PostgresqlExtDatabase)


def test_percent_encoded_credentials_are_decoded():
    db = make_database("postgresql://us%40er:p%40ss%3Aw%2Frd@db.example:6543/prod")
    assert db.connect_params["user"] == "us@er"
    assert db.connect_params["password"] == "p@ss:w/rd"
    assert db.connect_params["port"] == 6543
    assert db.database == "prod"


def test_connect_again_rebinds_the_proxy(tmp_path):
    first = within_db.connect(f"sqlite:///{tmp_path}/a.db")
    first.execute_sql("SELECT 1")
    second = within_db.connect(f"sqlite:///{tmp_path}/b.db")
    assert database.obj is second
    assert first.is_closed()
    assert database.execute_sql("PRAGMA database_list").fetchone()[2].endswith("b.db")


@pytest.mark.parametrize("url", ["foo://x", "mysql://u@h/d", "no-scheme-at-all", ""])
def test_unknown_scheme_names_the_accepted_ones(url):
    with pytest.raises(ConfigurationError) as info:
        within_db.connect(url)
    message = str(info.value)
    for scheme in ("sqlite", "postgresql", "postgres", "postgresql+pool"):
        assert scheme in message


def test_library_error_from_the_command_line():
    out = subprocess.run([sys.executable, "-c", "import within_db; within_db.connect('foo://x')"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "within_db.errors.ConfigurationError" in out.stderr
    assert "accepted schemes" in out.stderr


def test_postgres_url_without_database_name_is_refused():
    with pytest.raises(ConfigurationError, match="names no database"):
        within_db.connect("postgresql://root:secret@127.0.0.1:5432")


def test_proxy_used_before_connect_says_what_to_do():
    with pytest.raises(NotConnectedError, match=r"within_db.connect\(url\)"):
        database.execute_sql("SELECT 1")
    with pytest.raises(ConfigurationError):
        with database:
            pass


def test_unreachable_postgres_names_host_and_port_without_password(caplog):
    caplog.set_level(logging.DEBUG)
    db = within_db.connect("postgresql://root:hunter2secret@127.0.0.1:1/nowhere?connect_timeout=2")
    with pytest.raises(DatabaseUnavailableError) as info:
        db.connect()
    assert "127.0.0.1:1" in str(info.value)
    assert "hunter2secret" not in str(info.value)
    assert "hunter2secret" not in caplog.text
    assert "hunter2secret" not in repr(db)


def test_missing_postgres_database_is_reported(postgres_available):
    url = PG_ADMIN_URL.rpartition("/")[0] + "/within_db_does_not_exist"
    db = within_db.connect(url)
    with pytest.raises(DatabaseUnavailableError, match="does not exist"):
        db.connect()


def test_password_never_appears_in_repr_or_errors():
    url = "postgresql://root:s3cr%21t@h:1/d"
    db = make_database(url)
    assert "s3cr" not in repr(db)
    assert redact_url(url) == "postgresql://root:***@h:1/d"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ConfigurationError) as info:
        make_database("postgresql://root:s3cr%21t@h:1")
    assert "s3cr" not in str(info.value)


def test_get_db_yields_an_open_connection_and_closes_it(tmp_path):
    within_db.connect(f"sqlite:///{tmp_path}/g.db")
    gen = get_db()
    db = next(gen)
    assert not db.is_closed()
    assert db.execute_sql("SELECT 1").fetchone()[0] == 1
    gen.close()
    assert db.is_closed()


def test_get_db_binds_the_default_when_unbound(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/dflt.db")
    gen = get_db()
    db = next(gen)
    assert database.obj is db
    gen.close()


def test_backend_names(session_db, backend):
    assert within_db.db.backend(session_db) == backend


def test_backend_of_unbound_proxy_raises():
    with pytest.raises(NotConnectedError):
        backend()

