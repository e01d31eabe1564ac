"""From a URL to a bound database: make_database(), connect(), get_db() and the helpers
that act on the bound database."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeAlias

from within_db.db.common import BUSY_TIMEOUT, CONNECT_TIMEOUT, bound, database, log
from within_db.db.postgres import PooledPostgresDatabase, PostgresDatabase
from within_db.db.replica import MAX_REPLICA_LAG, REPLICA_WAIT
from within_db.db.sqlite import SQLITE_FIELD_TYPES, SQLITE_MIN_VERSION, SqliteDatabase
from within_db.errors import ConfigurationError
from within_db.url import DEFAULT_URL, SCHEMES, DatabaseURL, parse_url, redact_url

__all__ = [
    "Backend", "backend", "connect", "get_db", "make_database", "read_your_writes", "reading",
    "write_transaction",
]


def _resolve_url(url: str | None) -> str:
    if url is None:
        url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"empty database URL; expected one of the schemes {', '.join(SCHEMES)}, "
            f"e.g. {DEFAULT_URL}"
        )
    return url.strip()


#: the databases ``make_database`` builds; each implements every backend-specific operation
Backend: TypeAlias = SqliteDatabase | PostgresDatabase | PooledPostgresDatabase


def make_database(url: str | None = None, read_only: bool = False,
                  **options: Any) -> Backend:
    """Build (without binding or opening) the database a URL describes.

    ``read_only``: SQLite opens the file with ``mode=ro`` (a missing file is an error, never
    created); PostgreSQL sessions default to read-only transactions. Keyword options override
    what the URL's query string says. Raises ConfigurationError for a malformed URL.
    """
    url = _resolve_url(url)
    parsed = parse_url(url)
    db: Backend
    if parsed.kind == "sqlite":
        db = _make_sqlite(parsed, read_only, options)
    else:
        db = _make_postgres(parsed, read_only, options)
    db.url = url
    db.read_only = read_only
    return db


def _make_sqlite(parsed: DatabaseURL, read_only: bool, options: dict[str, Any]) -> SqliteDatabase:
    kwargs = {**parsed.options, **options}
    name = parsed.database
    if sqlite3.sqlite_version_info < SQLITE_MIN_VERSION:
        need = ".".join(map(str, SQLITE_MIN_VERSION))
        raise ConfigurationError(
            f"SQLite {sqlite3.sqlite_version} is too old: within_db needs SQLite {need} or "
            "newer for STRICT tables (upgrade Python's sqlite3 library or use PostgreSQL)")
    timeout = float(kwargs.pop("timeout", BUSY_TIMEOUT))
    pragmas: dict[str, Any] = {"foreign_keys": 1}
    in_memory = name == ":memory:" or name.startswith("file::memory:")
    if read_only:
        pragmas["query_only"] = 1
    elif not in_memory:
        # WAL lets readers in other processes work during a write; NORMAL is durable under WAL.
        pragmas.update(journal_mode="wal", synchronous="normal")
    pragmas.update(kwargs.pop("pragmas", {}))
    field_types = {**SQLITE_FIELD_TYPES, **kwargs.pop("field_types", {})}
    db = SqliteDatabase(
        name, pragmas=pragmas, timeout=timeout, field_types=field_types, **kwargs
    )
    db.keeps_connection = in_memory
    return db


def _make_postgres(parsed: DatabaseURL, read_only: bool,
                   options: dict[str, Any]) -> PostgresDatabase | PooledPostgresDatabase:
    kwargs = {**parsed.connect_kwargs(), **options}
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
    kwargs.setdefault("application_name", "within_db")
    settings = "-c TimeZone=UTC" + (" -c default_transaction_read_only=on" if read_only else "")
    kwargs["options"] = f"{settings} {kwargs.pop('options', '') or ''}".strip()
    if parsed.pooled:
        kwargs.setdefault("max_connections", 20)
        kwargs.setdefault("stale_timeout", 300)
        return PooledPostgresDatabase(parsed.database, **kwargs)
    return PostgresDatabase(parsed.database, **kwargs)


def connect(url: str | None = None, read_only: bool = False, *, replica: str | None = None,
            max_replica_lag: float = MAX_REPLICA_LAG, replica_wait: float = REPLICA_WAIT,
            **options: Any) -> Backend:
    """Bind the proxy to the database ``url`` describes and return that database.

    ``url`` falls back to ``$DATABASE_URL``, then ``sqlite:///within.db``. Calling it again
    closes the previously bound database and rebinds. The connection itself opens lazily.
    Raises ConfigurationError for a malformed URL (see ``make_database``).

    ``replica`` is a streaming replica of a PostgreSQL primary (``$DATABASE_REPLICA_URL`` when
    ``url`` also comes from the environment): the read paths (``batch.stream``,
    ``to_dataframe``, ``training_rows``, ``run_saved_query``, ``get_user_campaigns``,
    ``within-db inspect``) read from it unless this thread is in a transaction on the primary,
    it is unreachable or not in recovery, or it lags more than ``max_replica_lag`` seconds;
    ``replica_wait`` bounds the wait of ``read_your_writes()``. SQLite ignores it.
    """
    if url is None and replica is None:
        replica = os.environ.get("DATABASE_REPLICA_URL") or None
    db = make_database(url, read_only=read_only, **options)
    if replica:
        db.use_replica(replica, max_lag=max_replica_lag, wait=replica_wait)
    previous = database.obj
    if previous is not None and previous is not db and not previous.is_closed():
        previous.close()
    database.initialize(db)
    log.info("bound within_db to %s", redact_url(db.url))
    return db


def get_db() -> Iterator[Backend]:
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


def write_transaction(db: Backend | None = None) -> AbstractContextManager[Any]:
    """Return a transaction that holds the write lock from its first statement.

    On SQLite a top-level transaction starts IMMEDIATE, so a read-then-write sequence never
    fails on lock upgrade; nested calls (and PostgreSQL) get a plain ``atomic()``.
    """
    return bound(db).write_transaction()


def reading() -> Any:
    """Return ``bound().reading()``: route the block's model queries to the read target."""
    return bound().reading()


def read_your_writes(timeout: float | None = None, after: str | None = None) -> Any:
    """Return ``bound().read_your_writes(...)``: replica reads in the block see prior writes."""
    return bound().read_your_writes(timeout=timeout, after=after)


def backend(db: Backend | None = None) -> str:
    """Return ``"sqlite"`` or ``"postgres"`` for ``db`` (default: the bound database)."""
    return bound(db).kind
