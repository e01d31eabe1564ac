"""Monthly partitions of prediction_logs: list them, create the coming months, drop old ones.

PostgreSQL range-partitions the table by month (migration partition_prediction_logs); SQLite
keeps one table, where a "partition" is a month of rows and dropping deletes them in batches.
No DEFAULT partition: a write for a month without a partition fails, naming
``within-db partitions ensure``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import peewee

from within_db.boundary import public_api
from within_db.db import Backend, Partition, bound, month_start, next_month, partition_meta
from within_db.errors import ValidationError
from within_db.models.ml_system import PredictionLog

__all__ = ["DEFAULT_AHEAD", "Partition", "drop", "ensure", "list_partitions", "months_between",
           "parse_month", "prune"]

DEFAULT_AHEAD = 3
_MONTH = re.compile(r"(\d{4})-(\d{2})")


def parse_month(value: str | dt.date, what: str = "month") -> dt.date:
    """Return the first day of a ``YYYY-MM`` month (a date passes through, truncated)."""
    if isinstance(value, dt.date):
        return month_start(value)
    match = _MONTH.fullmatch(str(value).strip())
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1:
        raise ValidationError(f"{what}: expected a month as YYYY-MM, e.g. 2026-01")
    return dt.date(int(match.group(1)), int(match.group(2)), 1)


def months_between(first: dt.date, last: dt.date) -> list[dt.date]:
    """Return the first days of the months from ``first`` through ``last``, inclusive."""
    months, month = [], month_start(first)
    while month <= last:
        months.append(month)
        month = next_month(month)
    return months


@contextlib.contextmanager
def _connected(db: Backend) -> Iterator[None]:
    """Open a connection for the block unless one is open (perhaps in a transaction)."""
    if db.is_closed():
        with db.connection_context():
            yield
    else:
        yield


def _layout(model: Any) -> tuple[str, str, dict[str, str]]:
    if not (isinstance(model, type) and issubclass(model, peewee.Model)):
        raise ValidationError("model: expected a model class partitioned by month, "
                              "e.g. PredictionLog")
    column, guards = partition_meta(model)
    if column is None:
        raise ValidationError(f"{model.__name__} is not partitioned by month")
    return model._meta.table_name, column, guards


@public_api
def list_partitions(exact: bool = True, model: Any = PredictionLog,
                    db: Backend | None = None) -> list[Partition]:
    """Return the table's months, oldest first: partitions on PostgreSQL, months with rows on
    SQLite. ``exact=False`` uses PostgreSQL's row estimates instead of counting."""
    db = bound(db)
    table, column, _ = _layout(model)
    with _connected(db):
        return db.partitions(table, column, exact=exact)


@public_api
def ensure(ahead: int = DEFAULT_AHEAD, since: str | dt.date | None = None,
           today: dt.date | None = None, model: Any = PredictionLog,
           db: Backend | None = None) -> list[str]:
    """Create the missing partitions from ``since`` (default: this month) through ``ahead``
    months after the current one; return the names created (none on SQLite).

    Writers keep writing meanwhile (LIKE + CHECK + ATTACH, see ``within_db.db``). Run it from
    cron, e.g. daily; ``since`` backfills past months before loading historic rows (a month
    dropped earlier has its request ids pruned first).
    """
    if not isinstance(ahead, int) or isinstance(ahead, bool) or not 0 <= ahead <= 120:
        raise ValidationError("ahead: expected a number of months from 0 to 120")
    db = bound(db)
    table, column, guards = _layout(model)
    current = month_start(today or dt.datetime.now(dt.UTC).date())
    first = parse_month(since, "since") if since is not None else current
    last = current
    for _ in range(ahead):
        last = next_month(last)
    if first > last:
        raise ValidationError(f"since: {first:%Y-%m} is after the last month ensured, "
                              f"{last:%Y-%m}; raise --ahead")
    with _connected(db):
        return db.ensure_partitions(table, column, months_between(first, last), guards)


@public_api
def drop(before: str | dt.date, today: dt.date | None = None, model: Any = PredictionLog,
         db: Backend | None = None,
         expected: dict[dt.date, int] | None = None) -> dict[dt.date, int]:
    """Remove every month before ``before`` (YYYY-MM); return {month: rows removed}.

    PostgreSQL detaches each partition CONCURRENTLY and drops it, so it must run outside a
    transaction; SQLite deletes the rows in batches. On PostgreSQL the months' request ids
    stay taken until ``prune()`` frees them (the CLI's ``drop`` and ``ensure`` call it). The
    current month and later ones are refused. ``expected`` ({month: rows}, e.g. what an
    archive verified) makes the drop exact: a month whose row count differs when it is
    dropped (counted after the detach on PostgreSQL, in the first batch's transaction on
    SQLite), or that is not in it, is kept and VerificationError raised; the months before
    it stay dropped.
    """
    db = bound(db)
    table, column, guards = _layout(model)
    cutoff = parse_month(before, "before")
    current = month_start(today or dt.datetime.now(dt.UTC).date())
    if cutoff > current:
        raise ValidationError(f"before: {cutoff:%Y-%m} would drop the current month; "
                              f"the latest allowed is {current:%Y-%m}")
    if db.in_transaction():
        raise ValidationError("dropping partitions cannot run inside a transaction "
                              "(PostgreSQL detaches them concurrently); call it outside atomic()")
    with _connected(db):
        months = [p.start for p in db.partitions(table, column, exact=False)
                  if p.start < cutoff]
        return db.drop_partitions(table, column, months, guards, expected=expected)


@public_api
def prune(model: Any = PredictionLog, db: Backend | None = None,
          batch_size: int = 50_000) -> dict[dt.date, int]:
    """Free the request ids of dropped months; return {month: ids freed}.

    PostgreSQL deletes the guard rows that ``drop`` left behind in batches of ``batch_size``,
    one short transaction each, so it may run beside writers, be interrupted and rerun.
    Nothing to do on SQLite ({}). Must run outside a transaction.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValidationError("batch_size: expected a whole number of rows, at least 1")
    db = bound(db)
    table, _, guards = _layout(model)
    if db.in_transaction():
        raise ValidationError("pruning runs one transaction per batch; call it outside "
                              "atomic()")
    with _connected(db):
        return db.prune_guards(table, guards, batch_size=batch_size)
