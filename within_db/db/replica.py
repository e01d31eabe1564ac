"""Read replicas: health and lag probes, routing of read paths, read-your-writes."""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, TypeVar

import peewee
import psycopg2
import psycopg2.errors

from within_db.db.common import _ROUTE, _Fetch, bound, log
from within_db.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    WithinDBError,
)
from within_db.url import redact_url

__all__ = [
    "MAX_REPLICA_LAG", "REPLICA_WAIT", "Replica", "replica_read",
]

# -- read replicas ----------------------------------------------------------------------------
# A primary may carry a streaming replica (``use_replica``). Read paths ask ``for_reads()`` for
# the database to read from: the replica when this thread has no transaction open on the
# primary, the replica answers in recovery and lags at most ``max_lag`` seconds, and (inside
# ``read_your_writes()``) it has replayed the primary's WAL position as of the caller's last
# write; otherwise the primary. SQLite keeps one file and never has a replica.

#: seconds a replica may lag before reads skip it for the primary
MAX_REPLICA_LAG = 10.0
#: seconds ``read_your_writes()`` waits for the replica before reading from the primary
REPLICA_WAIT = 1.0
#: seconds a health verdict is reused: a healthy one briefly, an unhealthy one longer
_HEALTHY_FOR, _UNHEALTHY_FOR = 1.0, 5.0
#: connect timeout of a replica unless its URL says otherwise: a dead one must not stall reads
_REPLICA_CONNECT_TIMEOUT = 3

# Lag: zero when the replica replays, within _CATCH_UP seconds, the WAL position the primary had
# written when the probe began; else the age of the last transaction it replayed (an upper
# bound). Measuring against the primary matters: after an idle spell any WAL record in flight
# would make that age look like lag. Without an answer from the primary the replica judges
# alone: zero while its WAL receiver runs and it has replayed all it received.
# clock_timestamp(), not now(): the probe may run inside a long read transaction.
_CATCH_UP = 0.05
_PRIMARY_LSN_SQL = "SELECT pg_current_wal_lsn()::text"
_HEALTH_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
                 AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN 0
            ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())
       END::float8,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
"""
_REPLAYED_SQL = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
# Where the caller's commits end at the latest: a synchronous commit is flushed before it
# returns, so the flush position covers it; an asynchronous one (synchronous_commit = off) may
# not be, so then the insert position. The insert position always would be safe too, but it
# runs ahead of the flush with other sessions' unflushed WAL, and replicas only receive
# flushed WAL: waits for it took up to wal_writer_delay (p99 230 ms here against 4 ms).
_WRITTEN_LSN_SQL = ("SELECT (CASE WHEN current_setting('synchronous_commit') = 'off' "
                    "THEN pg_current_wal_insert_lsn() ELSE pg_current_wal_flush_lsn() END)::text")
_READ_ONLY_SQL = re.compile(r"\s*(SELECT|SHOW|EXPLAIN|FETCH)\b", re.IGNORECASE)
# 08: connection exceptions; 57P01-03: server shutting down or starting; 40001: on a replica,
# a query cancelled by a recovery conflict (DDL or vacuum replayed from the primary).
_REPLICA_FAILURES = ("08", "57P01", "57P02", "57P03", "40001")
_MARKS = itertools.count(1)  # next() is atomic: every write gets a fresh mark

P = ParamSpec("P")
T = TypeVar("T")


def _lsn_number(text: str) -> int:
    """Return a WAL position ``"16/B374D848"`` as an integer (comparable)."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _lsn_text(number: int) -> str:
    """Return the ``"16/B374D848"`` form of an integer WAL position."""
    return f"{number >> 32:X}/{number & 0xFFFFFFFF:X}"


def _pgcode(exc: BaseException) -> str | None:
    """The SQLSTATE of the driver error behind ``exc`` (peewee keeps it as ``.orig``)."""
    driver = getattr(exc, "orig", None) or exc
    return getattr(driver, "pgcode", None)


def _is_replica_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a read on the replica, means "read it from the primary"."""
    if isinstance(exc, DatabaseUnavailableError | peewee.InterfaceError):
        return True
    if not isinstance(exc, peewee.OperationalError):
        return False
    code = _pgcode(exc)
    return code is None or code.startswith(_REPLICA_FAILURES)


@contextlib.contextmanager
def _routed(db: peewee.Database) -> Iterator[None]:
    previous = getattr(_ROUTE, "db", None)
    _ROUTE.db = db
    try:
        yield
    finally:
        _ROUTE.db = previous


class Replica:
    """A streaming replica of a primary: its database, its lag bound and its health verdict.

    The verdict is cached (1 s when healthy, 5 s when not) and logged only when it changes:
    a replica that is down, not in recovery or lagging is skipped with one warning.
    """

    def __init__(self, db: Any, max_lag: float, wait: float):
        self.db = db
        self.max_lag = max_lag
        self.wait = wait
        self._lock = threading.Lock()
        self._ok = False
        self._until = 0.0      # monotonic time the verdict holds until
        self._said: bool | None = None

    def __repr__(self) -> str:
        return f"<Replica {redact_url(self.db.url)} max_lag={self.max_lag}s>"

    def usable(self, primary: peewee.Database) -> bool:
        """Return whether reads may go to the replica now (one probe per verdict period)."""
        if time.monotonic() < self._until or not self._lock.acquire(blocking=False):
            return self._ok  # fresh, or another thread is probing: use the last verdict
        try:
            ok, why = self._probe(primary)
            self._judge(ok, why)
        finally:
            self._lock.release()
        return ok

    def _probe(self, primary: peewee.Database) -> tuple[bool, str]:
        try:
            written: int | None = _lsn_number(primary.execute_sql(_PRIMARY_LSN_SQL).fetchone()[0])
        except (peewee.OperationalError, peewee.InterfaceError, DatabaseUnavailableError):
            written = None  # the primary cannot say; its own reads will tell the caller
        try:
            in_recovery, lag, age = self.db.execute_sql(_HEALTH_SQL).fetchone()
            if in_recovery and written is not None:
                lag = 0.0 if self.replayed(written, min(_CATCH_UP, self.max_lag)) else age
        except DatabaseUnavailableError as exc:
            self.discard()
            return False, str(exc)
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            self.discard()
            return False, f"the health check failed ({type(exc).__name__})"
        if not in_recovery:
            return False, "it is not in recovery (a primary, or promoted)"
        if lag is None or lag > self.max_lag:
            shown = "an unknown time" if lag is None else f"{lag:.1f}s"
            return False, f"it lags {shown} behind the primary (bound: {self.max_lag:g}s)"
        return True, f"lag {lag:.3f}s"

    def _judge(self, ok: bool, why: str) -> None:
        self._ok = ok
        self._until = time.monotonic() + (_HEALTHY_FOR if ok else _UNHEALTHY_FOR)
        if ok != self._said:
            if ok:
                log.info("reads go to the replica %s (%s)", redact_url(self.db.url), why)
            else:
                log.warning("reads go to the primary: replica %s skipped: %s",
                            redact_url(self.db.url), why)
            self._said = ok

    def failed(self, exc: BaseException) -> None:
        """Mark the replica unhealthy after a read on it failed with ``exc``."""
        self.discard()
        self._judge(False, f"a read on it failed ({type(exc).__name__})")

    def discard(self) -> None:
        """Close this thread's replica connection (it may be broken) without raising."""
        with contextlib.suppress(peewee.PeeweeException, psycopg2.Error):
            self.db.close()

    def replayed(self, lsn: int, timeout: float) -> bool:
        """Wait until the replica has replayed WAL position ``lsn``; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        pause = 0.0002
        text = _lsn_text(lsn)
        while True:
            if self.db.execute_sql(_REPLAYED_SQL, (text,)).fetchone()[0]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 0.01)


class _Reads(peewee.Database):
    """Mixin of every database class: where reads go (the replica, when one is usable)."""

    replica: Replica | None = None
    _write_mark = 0                      # changes on every write committed through this object
    _lsn_seen: tuple[int, int] = (0, 0)  # (write mark, primary WAL position read after it)

    def _reads_local(self) -> threading.local:
        state = self.__dict__.get("_reads_state")
        if state is None:
            state = self.__dict__.setdefault("_reads_state", threading.local())
        return state

    def use_replica(self, url: str, max_lag: float = MAX_REPLICA_LAG,
                    wait: float = REPLICA_WAIT, **options: Any) -> None:
        """Send eligible reads to the streaming replica at ``url`` (see ``connect``)."""
        raise NotImplementedError

    def for_reads(self) -> Any:
        """Return the database to read from now: the replica when allowed, else this one.

        Never raises for the replica's sake: one that is down, lagging or (inside
        ``read_your_writes()``) not caught up within its wait is skipped with a warning.
        """
        replica = self.replica
        if replica is None or self.in_transaction() or not replica.usable(self):
            return self
        state = self._reads_local()
        if getattr(state, "ryw", 0):
            lsn = max(self._last_write_lsn(), getattr(state, "after", 0))
            try:
                caught_up = lsn == 0 or replica.replayed(lsn, state.wait)
            except (peewee.OperationalError, peewee.InterfaceError,
                    DatabaseUnavailableError) as exc:
                replica.failed(exc)
                return self
            if not caught_up:
                log.warning("read from the primary: replica %s had not replayed %s after %gs",
                            redact_url(replica.db.url), _lsn_text(lsn), state.wait)
                return self
        return replica.db

    def _last_write_lsn(self) -> int:
        """The primary's WAL position as of the last write made through this object (0: none)."""
        return 0

    def write_position(self) -> str | None:
        """Return the WAL position replica reads in ``read_your_writes()`` wait for, as text.

        Hand it to another process's ``read_your_writes(after=...)`` so its replica reads see
        this process's writes. None on SQLite or without a replica.
        """
        return None

    def read_position(self) -> str | None:
        """Return what this thread's replica reads wait for now: ``write_position()`` inside
        ``read_your_writes()``, else None (hand it to readers in other processes)."""
        return self.write_position() if getattr(self._reads_local(), "ryw", 0) else None

    def portable_url(self) -> str:
        """Return the URL another process opens to reach this same database."""
        raise NotImplementedError

    @contextlib.contextmanager
    def read_your_writes(self, timeout: float | None = None,
                         after: str | None = None) -> Iterator[None]:
        """Make replica reads in the block (this thread) see the writes made before them.

        Each read waits until the replica has replayed the primary's WAL position as of the
        last write committed through this database (and ``after``, a ``write_position()`` of
        another process), at most ``timeout`` seconds (default: the replica's wait), then reads
        from the primary with a warning. A no-op on SQLite or without a replica.
        """
        state = self._reads_local()
        saved = (getattr(state, "ryw", 0), getattr(state, "after", 0), getattr(state, "wait", 0))
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
            raise ConfigurationError(
                f"read_your_writes timeout must be >= 0 seconds, got {timeout!r}")
        try:
            floor = _lsn_number(after) if after else 0
        except ValueError:
            raise ConfigurationError(f'after must be a WAL position like "16/B374D848", '
                                     f"got {after!r}") from None
        state.ryw = saved[0] + 1
        state.after = max(saved[1], floor)
        state.wait = timeout if timeout is not None else (
            self.replica.wait if self.replica is not None else 0)
        try:
            yield
        finally:
            state.ryw, state.after, state.wait = saved

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """Route this thread's model queries in the block to ``for_reads()``; yield that database.

        For read-only code: a write inside the block on a replica raises ReadOnlyError. A
        replica that fails inside the block raises; ``read(fn)`` retries on the primary instead.
        """
        target = self.for_reads()
        with _routed(target):
            yield target

    def read(self, fn: Callable[[Any], T]) -> T:
        """Return ``fn(db)``, with model queries routed to ``db`` when it is the replica.

        ``fn`` must only read: when the replica fails under it (connection lost, query
        cancelled by a recovery conflict), it runs again on the primary.
        """
        target = self.for_reads()
        if target is not self:
            try:
                with _routed(target):
                    return fn(target)
            except (peewee.PeeweeException, WithinDBError) as exc:
                if self.replica is None or not _is_replica_failure(exc):
                    raise
                self.replica.failed(exc)
        return fn(self)

    @contextlib.contextmanager
    def reading_cursor(self, sql: str, params: Any,
                       chunk_size: int) -> Iterator[tuple[Any, Callable[[int], list]]]:
        """``streaming_cursor`` on ``for_reads()``; yields ``(cursor, fetch)``.

        The first chunk is fetched here, so a replica that fails before delivering a row is
        replaced by the primary; a failure after rows were delivered raises.
        """
        target = self.for_reads()
        if target is not self:
            stack = contextlib.ExitStack()
            try:
                cursor, fetch = stack.enter_context(target.streaming_cursor(sql, params))
                first = fetch(chunk_size)
            except (peewee.PeeweeException, WithinDBError, psycopg2.Error) as exc:
                with contextlib.suppress(peewee.PeeweeException, psycopg2.Error):
                    stack.close()
                if self.replica is None or not _is_replica_failure(_peewee_error(exc)):
                    raise
                self.replica.failed(exc)
            else:
                with stack:
                    yield cursor, _prefetched(first, fetch)
                return
        with self.streaming_cursor(sql, params) as pair:
            yield pair

    def streaming_cursor(self, sql: str, params: Any) -> AbstractContextManager[
            tuple[Any, _Fetch]]:
        """Yield ``(cursor, fetch)`` over the query's rows (each backend defines it)."""
        raise NotImplementedError


def _peewee_error(exc: BaseException) -> BaseException:
    # The streaming cursor talks to psycopg2 directly: classify its errors as peewee would.
    if isinstance(exc, psycopg2.OperationalError):
        return peewee.OperationalError(exc, *exc.args)
    if isinstance(exc, psycopg2.InterfaceError):
        return peewee.InterfaceError(exc, *exc.args)
    return exc


def _prefetched(first: list, fetch: Callable[[int], list]) -> Callable[[int], list]:
    pending = [first]

    def fetch_next(n: int) -> list:
        return pending.pop() if pending else fetch(n)

    return fetch_next


def replica_read(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorate a read-only function: its queries go to the replica when one is usable.

    Through ``bound().read()``: inside a transaction on the primary, without a replica or on
    SQLite it runs on the primary as before; a replica failing under it means a rerun there.
    """
    @functools.wraps(fn)
    def routed(*args: P.args, **kwargs: P.kwargs) -> T:
        return bound().read(lambda _db: fn(*args, **kwargs))

    return routed
