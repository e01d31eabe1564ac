"""Asyncio access through peewee's ``playhouse.pwasyncio``: the same models, services and
repositories, awaited. Needs ``pip install 'within_db[async]'`` (greenlet, aiosqlite, asyncpg).

pwasyncio runs synchronous peewee code in a greenlet and suspends it at every query while
the driver (aiosqlite, asyncpg) awaits, so nothing here is rewritten for async: ``run(fn)``
and ``awaitable(obj)`` execute the ordinary code on the event loop without blocking it on
I/O. Each asyncio task gets its own pooled connection, released when the task ends.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

import peewee

from within_db.db import SqliteDatabase, bound, database
from within_db.db import make_database as _make_sync
from within_db.db.common import _Shared
from within_db.db.postgres import _PostgresBackend
from within_db.errors import ConfigurationError

try:
    from playhouse import pwasyncio
except ImportError as exc:  # greenlet missing
    raise ImportError("within_db.aio needs the async extra: "
                      "pip install 'within_db[async]'") from exc

R = TypeVar("R")


class AsyncSqliteDatabase(pwasyncio.AsyncSqliteDatabase, SqliteDatabase):
    """within_db's SQLite (pragmas, column types, write transactions) over aiosqlite."""


def _parse_instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _parse_date(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else value.isoformat()


class AsyncPostgresDatabase(_Shared, _PostgresBackend, pwasyncio.AsyncPostgresqlDatabase):
    """within_db's PostgreSQL over an asyncpg pool, UTC sessions like the sync class."""

    async def register_adapters(self, conn: Any) -> None:
        await super().register_adapters(conn)
        # asyncpg binds TIMESTAMPTZ and DATE parameters only from datetime/date objects, but
        # the codecs store instants and dates as ISO text (as psycopg2 sends them): exchange
        # text, which the server parses, exactly as with psycopg2.
        await conn.set_type_codec("timestamptz", encoder=_as_text, decoder=_parse_instant,
                                  schema="pg_catalog", format="text")
        await conn.set_type_codec("date", encoder=_as_text, decoder=_parse_date,
                                  schema="pg_catalog", format="text")


def make_database(url: str | None = None, **options: Any) -> peewee.Database:
    """Build (without binding or connecting) the asyncio database a URL describes.

    The URL is parsed exactly as ``within_db.connect`` parses it; ``postgresql+pool``
    options set the asyncpg pool size (``max_connections``).
    """
    return _make_sync(url, **options).for_asyncio()


def connect(url: str | None = None, **options: Any) -> peewee.Database:
    """Bind the models to the asyncio database ``url`` describes and return it.

    Then ``await aio.run(fn, ...)`` any service or repository call, or use
    ``aio.awaitable(obj)``. Close the pool with ``await aio.close()``.
    """
    db = make_database(url, **options)
    database.initialize(db)
    return db


def _async_db() -> Any:
    db = bound()
    if not isinstance(db, pwasyncio.AsyncDatabaseMixin):
        raise ConfigurationError("the bound database is synchronous: bind one with "
                                 "within_db.aio.connect(url) to await queries")
    return db


async def run(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """Await ``fn(*args, **kwargs)``: any synchronous within_db call, its queries async."""
    return await _async_db().run(fn, *args, **kwargs)


async def close() -> None:
    """Release this task's connection and close the bound database's pool."""
    db = _async_db()
    await db.aclose()
    await db.close_pool()


class awaitable:  # noqa: N801 - reads as a function: aio.awaitable(repo).list()
    """Wrap a repository (or a services module) so each public method returns a coroutine.

    ``page = await aio.awaitable(CampaignRepository(actor)).list(limit=20)``
    """

    def __init__(self, target: Any):
        self._target = target

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self._target, name)
        if not callable(method):
            raise AttributeError(f"{name} is not a method")

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await run(method, *args, **kwargs)

        call.__name__ = name
        call.__doc__ = method.__doc__
        return call


__all__ = [
    "AsyncPostgresDatabase",
    "AsyncSqliteDatabase",
    "awaitable",
    "close",
    "connect",
    "make_database",
    "run",
]
