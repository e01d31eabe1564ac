"""Every misuse of the CLI is one ``Error:`` line with its cause and the next step.

The table below runs the real CLI (click's CliRunner, or the console script where a terminal,
a signal or file permissions matter); cases that involve a database run on both backends.
"""

import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from within_db import migrate
from within_db.cli import cli
from within_db.db import database

from .conftest import PG_ADMIN_URL

EXE = str(Path(sys.executable).parent / "within-db")
PG = urlsplit(PG_ADMIN_URL)
PG_HOST = f"{PG.hostname}:{PG.port or 5432}"


def invoke(*args, url=None, env=None):
    runner = CliRunner()
    prefix = ["--database-url", url] if url else []
    result = runner.invoke(cli, [*prefix, *args], env=env)
    if database.obj is not None:
        database.obj.close()
        database.initialize(None)
    return result.exit_code, result.stdout, result.stderr


def assert_one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    return lines[0]


# -- the URL and the connection: no database needed ----------------------------------------

SECRET = "Tr0ub"
URL_CASES = [
    # (id, url, exit code, expected words, words that must not appear)
    ("sqlite-two-slashes", "sqlite://within.db", 2, ["three slashes", "sqlite:///within.db"],
     []),
    ("unencoded-at-and-slash-in-password", f"postgresql://root:{SECRET}@dor/x@{PG_HOST}/db", 2,
     ["percent-encode", "%40", "%2F"], [SECRET, "dor", "x@"]),
    ("unencoded-slash-in-password", f"postgresql://root:{SECRET}/x@{PG_HOST}/db", 2,
     ["percent-encode"], [SECRET, "x@"]),
    ("unencoded-hash-in-password", f"postgresql://root:{SECRET}#x@{PG_HOST}/db", 2,
     ["percent-encode"], [SECRET]),
    ("bad-port", "postgresql://root@127.0.0.1:54x2/db", 2, ["port", "1 to 65535"], ["54x2"]),
    ("port-out-of-range", "postgresql://root@127.0.0.1:70000/db", 2, ["port"], []),
    ("unknown-postgres-option", f"postgresql://root@{PG_HOST}/test?bogus_opt=1", 2,
     ['unknown database URL option "bogus_opt"', "connect_timeout"], []),
    ("unknown-sqlite-option", "sqlite:///x.db?journal=wal", 2,
     ['unknown database URL option "journal"', "timeout"], []),
    ("unknown-scheme", "mysql://u@h/d", 2, ["unsupported", "postgresql"], []),
    ("no-database-name", f"postgresql://root:{SECRET}@{PG_HOST}", 2, ["names no database"],
     [SECRET]),
    ("sqlite-directory-missing", "sqlite:////nonexistent_dir/x.db", 1,
     ["/nonexistent_dir does not exist", "SQLite: unable to open database file"], []),
    ("postgres-refused", f"postgresql://root:{SECRET}@127.0.0.1:1/db", 1,
     ["127.0.0.1:1", "connection refused", "server running"], [SECRET]),
    ("postgres-unknown-host", "postgresql://root@no-such-host.invalid/db", 1,
     ['unknown host "no-such-host.invalid"'], ["refused"]),
]


@pytest.mark.parametrize("case", URL_CASES, ids=[c[0] for c in URL_CASES])
def test_a_bad_url_or_connection_is_one_line(case, tmp_path, monkeypatch):
    _, url, code, expected, forbidden = case
    monkeypatch.chdir(tmp_path)
    exit_code, stdout, stderr = invoke("migrate", "up", url=url)
    line = assert_one_error_line(stderr)
    assert exit_code == code, stderr
    for words in expected:
        assert words in line
    for words in forbidden:
        assert words not in stderr + stdout
    assert list(tmp_path.iterdir()) == []  # nothing was created on the way


def test_postgres_missing_role_is_told_apart(postgres_available):
    url = f"postgresql://no_such_role_15@{PG_HOST}/{PG.path.lstrip('/')}"
    exit_code, _, stderr = invoke("migrate", "status", url=url)
    line = assert_one_error_line(stderr)
    assert exit_code == 1
    assert 'role "no_such_role_15" does not exist' in line and "createuser" in line


class _PasswordRefusingServer:
    """Speaks just enough of the PostgreSQL protocol to refuse a password, as a server does."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            while True:
                length, code = struct.unpack("!ii", conn.recv(8))
                if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not offered
                    conn.sendall(b"N")
                    continue
                conn.recv(length - 8)
                break
            conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # cleartext password, please
            conn.recv(1024)
            fields = (b"SFATAL\0VFATAL\0C28P01\0"
                      b'Mpassword authentication failed for user "root"\0\0')
            conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)

    def close(self):
        self.sock.close()


def test_postgres_authentication_failure_is_told_apart():
    server = _PasswordRefusingServer()
    try:
        url = f"postgresql://root:{SECRET}@127.0.0.1:{server.port}/db?sslmode=disable"
        exit_code, _, stderr = invoke("migrate", "status", url=url)
    finally:
        server.close()
    line = assert_one_error_line(stderr)
    assert exit_code == 1
    assert 'authentication failed for user "root"' in line and "password" in line
    assert SECRET not in stderr


# -- SQLite file-system causes, with real permissions ---------------------------------------

def _without_permission_override():
    # root ignores file modes; drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    # child's bounding set so the read-only directory binds it like any user
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_cli(*args, cwd, env=None, preexec_fn=None):
    full_env = {"PATH": "/usr/bin:/bin", **(env or {})}
    return subprocess.run([EXE, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=120, preexec_fn=preexec_fn)


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "existing.db").touch()
    yield folder
    folder.chmod(0o755)


def test_sqlite_in_a_read_only_directory(read_only_dir):
    out = run_cli("migrate", "up", cwd=read_only_dir, preexec_fn=None)
    assert out.returncode == 0, out.stderr  # writable while it was made
    read_only_dir.chmod(0o555)
    (read_only_dir / "existing.db").chmod(0o444)
    new = run_cli("--database-url", "sqlite:///new.db", "migrate", "up", cwd=read_only_dir,
                  preexec_fn=_without_permission_override)
    line = assert_one_error_line(new.stderr)
    assert new.returncode == 1
    assert f"{read_only_dir} is not writable" in line
    assert "SQLite: unable to open database file" in line
    old = run_cli("--database-url", "sqlite:///existing.db", "migrate", "up",
                  cwd=read_only_dir, preexec_fn=_without_permission_override)
    line = assert_one_error_line(old.stderr)
    assert old.returncode == 1
    assert "read-only" in line and "SQLite: attempt to write a readonly database" in line
    assert sorted(p.name for p in read_only_dir.iterdir()) == ["existing.db", "within.db"]


# -- usage errors exit 2, as one line -------------------------------------------------------

USAGE_CASES = [
    ("unknown-table", ["inspect", "rows", "passwords"], ['unknown table "passwords"',
                                                          "campaigns"]),
    ("unknown-where-column", ["inspect", "rows", "users", "--where", "pwd=1"],
     ['unknown column "pwd"', "email"]),
    ("unknown-order-column", ["inspect", "rows", "users", "--order", "-nope"],
     ['unknown column "nope"']),
    ("bad-boolean", ["inspect", "rows", "users", "--where", "is_active=maybe"],
     ["not a valid boolean"]),
    ("json-column", ["inspect", "rows", "campaigns", "--where", "metadata={}"],
     ['column "metadata" holds JSON', "--where"]),
    ("where-without-equals", ["inspect", "rows", "users", "--where", "novalue"],
     ["COLUMN=VALUE", "--help"]),
    ("unknown-schema-table", ["inspect", "schema", "nope"], ["valid tables"]),
    ("bad-limit", ["inspect", "rows", "users", "--limit", "-1"], ["--limit", "--help"]),
    ("bad-format", ["inspect", "tables", "--format", "xml"], ["--format", "xml"]),
    ("unknown-command", ["migrate", "frobnicate"], ["frobnicate", "within-db migrate --help"]),
    ("unknown-option", ["inspect", "--colour"], ["--colour"]),
    ("missing-argument", ["inspect", "user"], ["EMAIL_OR_ID"]),
    ("reset-and-append", ["seed", "--reset", "--append"], ["exclude each other"]),
    ("unknown-count", ["seed", "--count", "bogus=1"], ["bogus", "users"]),
    ("no-users", ["seed", "--count", "users=0"], ["users=0 is out of range", "1 to 100,000",
                                                  "admin"]),
    ("no-versions", ["seed", "--count", "versions_per_model=0"],
     ["versions_per_model=0 is out of range", "production and a staging"]),
    ("no-days", ["seed", "--count", "max_days=0"], ["max_days=0 is out of range", "3 to"]),
    ("huge-users", ["seed", "--count", "users=100000000"], ["users=100000000 is out of range"]),
    ("huge-total", ["seed", "--scale", "large", "--count", "users=100000"],
     ["would write up to", "rows"]),
    ("negative-count", ["seed", "--count", "users=-1"], ["NAME=N"]),
    ("missing-directory", ["migrate", "--directory", "/nonexistent/migs", "status"],
     ["/nonexistent/migs does not exist"]),
]


@pytest.mark.parametrize("case", USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
def test_usage_errors_exit_2_in_one_line(case, migrated_url):
    _, args, expected = case
    exit_code, stdout, stderr = invoke(*args, url=migrated_url)
    line = assert_one_error_line(stderr)
    assert exit_code == 2, stderr
    assert stdout == ""
    for words in expected:
        assert words in line


# -- runtime failures: exit 1, one line -----------------------------------------------------

def test_reverting_a_migration_whose_file_is_missing_names_it(fresh_url, tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), folder,
                    ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    assert invoke("migrate", "--directory", str(folder), "up", url=fresh_url)[0] == 0
    last = sorted(folder.glob("[0-9]*.py"))[-1]
    last.unlink()
    exit_code, _, stderr = invoke("migrate", "--directory", str(folder), "down", "--yes",
                                  url=fresh_url)
    line = assert_one_error_line(stderr)
    assert exit_code == 1
    assert f"{last.name} is missing from {folder}" in line and "restore it" in line
    status = invoke("migrate", "--directory", str(folder), "status", "--format", "json",
                    url=fresh_url)
    assert status[0] == 0  # nothing was reverted


def test_ctrl_c_exits_130_and_says_nothing_was_written(fresh_url, tmp_path):
    assert invoke("migrate", "up", url=fresh_url)[0] == 0
    proc = subprocess.Popen([EXE, "--database-url", fresh_url, "seed", "--scale", "medium"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={"PATH": "/usr/bin:/bin"})
    first = proc.stderr.readline()  # the first progress line: the seed has begun
    assert "seed" in first, first
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, first + rest
    lines = [line for line in rest.splitlines() if line.startswith("Error")]
    assert lines == ["Error: interrupted; nothing was written (the step in progress was "
                     "rolled back)"], rest
    exit_code, stdout, _ = invoke("inspect", "rows", "users", "--format", "json", url=fresh_url)
    assert exit_code == 0 and stdout.strip() == "[]"
