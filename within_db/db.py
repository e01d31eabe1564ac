"""The database proxy every model uses, and how it gets bound.

``connect()`` turns a URL into a configured peewee database (SQLite with its pragmas, or
PostgreSQL with server-side cursors, UTC sessions and a connect timeout) and binds the proxy.
URL redaction lives here too; nothing in this module ever prints a password.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

import peewee
import psycopg2
from playhouse.db_url import parse as parse_url
from playhouse.postgres_ext import PooledPostgresqlExtDatabase, PostgresqlExtDatabase

from within_db.errors import ConfigurationError, DatabaseUnavailableError, NotConnectedError

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///within.db"
SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+pool", "postgres+pool")
CONNECT_TIMEOUT = 10
BUSY_TIMEOUT = 30.0

# Aware datetimes are stored as fixed-width UTC text on SQLite (see fields.UTCDateTimeField);
# PostgreSQL gets a real TIMESTAMPTZ.
SQLITE_FIELD_TYPES = {"TIMESTAMPTZ": "TEXT"}


SECRET_COLUMNS = ("password_hash", "token_hash")


class _RedactSecretParams(logging.Filter):
    """peewee logs every query with its parameters at DEBUG; hide those of secret columns."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[0], str) and msg[1] \
                and any(col in msg[0] for col in SECRET_COLUMNS):
            record.msg = (msg[0], "<parameters redacted: secret columns>")
        return True


# A filter, not a handler: the library still leaves logging configuration to the application.
logging.getLogger("peewee").addFilter(_RedactSecretParams())


class _Proxy(peewee.DatabaseProxy):
    """A DatabaseProxy whose misuse before ``connect()`` says what to do."""

    def __getattr__(self, attr):
        if self.obj is None:
            raise NotConnectedError(
                "no database is bound: call within_db.connect(url) first "
                f"(accepted schemes: {', '.join(SCHEMES)})"
            )
        return getattr(self.obj, attr)

    def __enter__(self):
        return self.__getattr__("__enter__")()

    def __exit__(self, *exc):
        return self.__getattr__("__exit__")(*exc)


database = _Proxy()


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class _Redacted:
    """Mixin: a repr that names the backend and the redacted URL only."""

    url = ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)}>"


class SqliteDatabase(_Redacted, peewee.SqliteDatabase):
    """peewee's SqliteDatabase with within_db's column types and a race-free WAL switch."""

    def _set_pragmas(self, conn):
        cursor = conn.cursor()
        try:
            for pragma, value in self._pragmas:
                if pragma == "journal_mode":
                    self._set_journal_mode(cursor, str(value))
                else:
                    cursor.execute(f"PRAGMA {pragma} = {value}")
        finally:
            cursor.close()

    def _set_journal_mode(self, cursor, mode: str) -> None:
        # WAL persists in the file, so only a new file needs the switch; the switch wants an
        # exclusive lock and SQLite does not wait for it, so retry while another process
        # (say, a concurrent `migrate up`) holds the file.
        deadline = time.monotonic() + self._timeout
        while True:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == mode.lower():
                return
            try:
                cursor.execute(f"PRAGMA journal_mode = {mode}")
                return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


class _ClearConnectErrors:
    """Mixin: turn the driver's connect failure into DatabaseUnavailableError."""

    def _connect(self):
        try:
            return super()._connect()
        except psycopg2.OperationalError as exc:
            raise _unavailable(self, exc) from exc


class PostgresDatabase(_Redacted, _ClearConnectErrors, PostgresqlExtDatabase):
    """PostgreSQL through psycopg2 with real server-side cursors and a clear connect error."""


class PooledPostgresDatabase(_Redacted, _ClearConnectErrors, PooledPostgresqlExtDatabase):
    """The pooled variant of :class:`PostgresDatabase`."""


def _unavailable(db, exc: Exception) -> DatabaseUnavailableError:
    # The driver's text is classified, never echoed: it may name users or hosts we redact.
    params = db.connect_params
    where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"
    text = str(exc).lower()
    if "does not exist" in text and "database" in text:
        reason = f'database "{db.database}" does not exist; create it first (createdb)'
    elif "password" in text or "authentication" in text:
        reason = "authentication failed for the given user"
    elif "timeout" in text or "timed out" in text:
        reason = f"no answer within {params.get('connect_timeout', CONNECT_TIMEOUT)}s"
    else:
        reason = "connection refused or host unreachable; is the server running?"
    return DatabaseUnavailableError(f"cannot connect to PostgreSQL at {where}: {reason}")


def _resolve_url(url: str | None) -> str:
    if url is None:
        url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"empty database URL; expected one of the schemes {', '.join(SCHEMES)}, "
            f"e.g. {DEFAULT_URL}"
        )
    return url.strip()


def make_database(url: str | None = None, **options) -> peewee.Database:
    """Build (without binding or opening) the database a URL describes.

    Keyword options override what the URL's query string says.
    """
    url = _resolve_url(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        shown = scheme or redact_url(url)
        raise ConfigurationError(
            f'unsupported database URL scheme "{shown}"; accepted schemes: '
            f"{', '.join(SCHEMES)} (e.g. {DEFAULT_URL} or postgresql://user@host:5432/dbname)"
        )
    try:
        kwargs = parse_url(url, unquote_password=True, unquote_user=True)
    except ValueError as exc:
        raise ConfigurationError(f"malformed database URL {redact_url(url)}: {exc}") from None
    kwargs.update(options)
    name = kwargs.pop("database", "")

    if scheme == "sqlite":
        db = _make_sqlite(name or ":memory:", kwargs)
    else:
        if not name:
            raise ConfigurationError(
                f"database URL {redact_url(url)} names no database; "
                "expected postgresql://user@host:5432/dbname"
            )
        db = _make_postgres(scheme, unquote(name), kwargs)
    db.url = url
    return db


def _make_sqlite(name: str, kwargs: dict) -> SqliteDatabase:
    timeout = float(kwargs.pop("timeout", BUSY_TIMEOUT))
    pragmas = {"foreign_keys": 1}
    if name != ":memory:" and not name.startswith("file::memory:"):
        # WAL lets readers in other processes work during a write; NORMAL is durable under WAL.
        pragmas.update(journal_mode="wal", synchronous="normal")
    pragmas.update(kwargs.pop("pragmas", {}))
    field_types = {**SQLITE_FIELD_TYPES, **kwargs.pop("field_types", {})}
    return SqliteDatabase(
        name, pragmas=pragmas, timeout=timeout, field_types=field_types, **kwargs
    )


def _make_postgres(scheme: str, name: str, kwargs: dict) -> peewee.Database:
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
    kwargs.setdefault("application_name", "within_db")
    options = kwargs.pop("options", "")
    kwargs["options"] = f"-c TimeZone=UTC {options}".strip()
    if scheme.endswith("+pool"):
        kwargs.setdefault("max_connections", 20)
        kwargs.setdefault("stale_timeout", 300)
        return PooledPostgresDatabase(name, **kwargs)
    return PostgresDatabase(name, **kwargs)


def connect(url: str | None = None, **options) -> peewee.Database:
    """Bind the proxy to the database ``url`` describes and return that database.

    ``url`` falls back to ``$DATABASE_URL``, then ``sqlite:///within.db``. Calling it again
    closes the previously bound database and rebinds. The connection itself opens lazily.
    Raises ConfigurationError for an unknown scheme or a URL without a database name.
    """
    db = make_database(url, **options)
    previous = database.obj
    if previous is not None and previous is not db and not previous.is_closed():
        previous.close()
    database.initialize(db)
    log.info("bound within_db to %s", redact_url(db.url))
    return db


def get_db() -> Iterator[peewee.Database]:
    """Yield the bound database with an open connection (binding the default if unbound).

    Supports the original design's ``db = next(get_db())``; a connection opened here closes
    when the generator is closed or collected.
    """
    db = database.obj if database.obj is not None else connect()
    opened = db.connect(reuse_if_open=True)
    try:
        yield db
    finally:
        # A connection the caller already had open (perhaps in a transaction) stays open.
        if opened and not db.is_closed():
            db.close()


def write_transaction(db: peewee.Database | None = None):
    """Return a transaction that holds the write lock from its first statement.

    On SQLite a top-level transaction starts IMMEDIATE, so a read-then-write sequence never
    fails on lock upgrade; nested calls (and PostgreSQL) get a plain ``atomic()``.
    """
    db = db if db is not None else database.obj
    if db is None:
        database.__getattr__("atomic")
    if backend(db) == "sqlite" and not db.in_transaction():
        return db.atomic("IMMEDIATE")
    return db.atomic()


def backend(db: peewee.Database | None = None) -> str:
    """Return ``"sqlite"`` or ``"postgres"`` for ``db`` (default: the bound database)."""
    db = db if db is not None else database.obj
    if db is None:
        database.__getattr__("backend")
    return "postgres" if isinstance(db, peewee.PostgresqlDatabase) else "sqlite"
