"""Archive whole months of prediction_logs to Parquet that lake engines read, then drop them.

The dataset is hive-partitioned: ``DIR/month=YYYY-MM/prediction_logs-YYYY-MM.parquet``, zstd,
typed by ``batch.to_arrow``. Dropping goes through ``within_db.partitions``; nothing here
knows which backend it is on. Needs the ``lake`` extra (pyarrow).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import peewee

from within_db import __version__, partitions
from within_db import boundary as check
from within_db.batch.arrow import DEFAULT_ARROW_BATCH, arrow_schema, require_pyarrow, to_arrow
from within_db.boundary import public_api
from within_db.db import bound, month_start, next_month, partition_meta
from within_db.errors import (
    ArchiveDestinationError,
    ArgumentError,
    ConflictError,
    NothingToArchiveError,
    ValidationError,
    VerificationError,
)
from within_db.models.ml_system import PredictionLog

__all__ = ["DEFAULT_ROW_GROUP", "ArchivePlan", "ArchivedMonth", "archive", "month_path",
           "plan_archive"]

#: rows per Parquet row group: about 25 MB of prediction logs before compression, at the low
#: end of the 128k-1M rows lake engines read well, because one row group is what a write holds
#: in memory (measured: peak RSS growth ~125 MB, whatever the month's size)
DEFAULT_ROW_GROUP = 131_072
_KEY = b"within_db.archive"  # the file's key-value metadata: which table and month it holds

UTC = dt.UTC


@dataclass(frozen=True)
class ArchivedMonth:
    """One month of an archive run.

    ``action``: ``written`` (exported now), ``kept`` (a complete file from an earlier run
    matched the database, so it was not rewritten) or ``empty`` (no rows, no file). ``rows``
    is what the file holds, which equalled the database's count when verified.
    """

    month: dt.date
    rows: int
    path: Path | None
    action: str
    dropped: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class ArchivePlan:
    """What ``archive`` would do: the months before ``cutoff`` and their rows (database)."""

    cutoff: dt.date
    directory: Path
    table: str
    months: dict[dt.date, int] = field(default_factory=dict)


def month_path(directory: str | os.PathLike[str], month: dt.date,
               table: str = "prediction_logs") -> Path:
    """Return the one file a month is archived in: ``DIR/month=YYYY-MM/<table>-YYYY-MM.parquet``."""
    return Path(directory) / f"month={month:%Y-%m}" / f"{table}-{month:%Y-%m}.parquet"


def _month(value: object, today: dt.date | None) -> tuple[dt.date, dt.date]:
    """Return (cutoff, current month); ArgumentError for bad text or a cutoff in the future."""
    if not isinstance(value, str | dt.date):
        raise ArgumentError(f"before must be a YYYY-MM month, not {type(value).__name__}")
    try:
        cutoff = partitions.parse_month(value, "before")
    except ValidationError as exc:
        raise ArgumentError(str(exc)) from None
    current = month_start(today or dt.datetime.now(UTC).date())
    if cutoff > current:
        raise ArgumentError(f"before: {cutoff:%Y-%m} is after the current month "
                            f"({current:%Y-%m}); only months that have ended are archived, "
                            f"so at most --before {current:%Y-%m}")
    return cutoff, current


def _destination(directory: object) -> Path:
    """Return the target directory; ArchiveDestinationError unless files can be made in it.

    Writability is tried with a probe file (removed at once): permission bits say nothing
    to root, read-only mounts or full disks.
    """
    if not isinstance(directory, str | os.PathLike) or not str(directory).strip():
        raise ArchiveDestinationError("the archive directory must be a path, e.g. /data/lake")
    path = Path(directory).expanduser().absolute()
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise ArchiveDestinationError(f"{path} {what}, not a directory; pass a directory to "
                                      "--to")
    try:
        fd, probe = tempfile.mkstemp(prefix=".within_db-probe-", dir=existing)
    except OSError as exc:
        raise ArchiveDestinationError(f"cannot write in {existing}: {exc.strerror}; pass a "
                                      "writable directory to --to") from None
    os.close(fd)
    os.unlink(probe)
    return path


@public_api
def plan_archive(before: str | dt.date, directory: str | os.PathLike[str],
                 today: dt.date | None = None, model: Any = PredictionLog) -> ArchivePlan:
    """Check everything ``archive`` needs and return what it would archive; write nothing.

    Raises ArgumentError (a bad or future month), ArchiveDestinationError (not a writable
    directory), ConfigurationError (pyarrow missing) and NothingToArchiveError (no rows
    before the cutoff). Counts each month on the primary: one query per month.
    """
    require_pyarrow()
    cutoff, _ = _month(before, today)
    path = _destination(directory)
    column, _ = partition_meta(model)
    if column is None:
        raise ValidationError(f"{model.__name__} is not partitioned by month")
    table = model._meta.table_name
    db = bound()
    with _connected(db):
        months = [p.start for p in db.partitions(table, column, exact=False)
                  if p.start < cutoff]
        counts = {month: _stats(model, month)[0] for month in months}
    if not any(counts.values()):
        raise NothingToArchiveError(f"{table} holds no rows before {cutoff:%Y-%m}; nothing "
                                    "was written (list the months with `within-db partitions "
                                    "list --exact`)")
    return ArchivePlan(cutoff, path, table, counts)


@public_api
def archive(before: str | dt.date, directory: str | os.PathLike[str], *, drop: bool = False,
            today: dt.date | None = None, model: Any = PredictionLog,
            row_group_rows: int = DEFAULT_ROW_GROUP, batch_size: int = DEFAULT_ARROW_BATCH,
            progress: Callable[[ArchivedMonth], None] | None = None) -> list[ArchivedMonth]:
    """Write every month before ``before`` to Parquet, verify each file, then maybe drop.

    Each month is streamed (``batch.to_arrow``, from the replica when one is configured) into
    a hidden file beside its final name, fsynced and renamed, so a reader never sees half a
    file and a rerun never duplicates one: a month whose file already matches the database
    (rows and the lowest and highest id, read from the Parquet footer) is kept, any other is
    rewritten; a month without rows gets no file. Then every file's footer is checked against
    the primary's count; on any difference VerificationError names the months and nothing is
    dropped. ``drop=True`` then drops the months through ``partitions.drop`` with the verified
    counts, so a month that changes even after verification is kept. Must run outside a
    transaction when dropping. ``progress`` is called after each month.
    """
    check.integer(row_group_rows, "row_group_rows", low=1, high=4_194_304)
    check.integer(batch_size, "batch_size", low=1, high=1_000_000)
    db = bound()
    if drop and db.in_transaction():
        raise ValidationError("archive with drop cannot run inside a transaction (PostgreSQL "
                              "detaches partitions concurrently); call it outside atomic()")
    plan = plan_archive(before, directory, today=today, model=model)
    plan.directory.mkdir(parents=True, exist_ok=True)
    done = []
    with _connected(db):
        for month in plan.months:
            started = time.perf_counter()
            result = _archive_month(model, plan, month, row_group_rows, batch_size)
            done.append(replace(result, seconds=time.perf_counter() - started))
            if progress is not None:
                progress(done[-1])
        _verify(model, done)
        if drop:
            expected = {m.month: m.rows for m in done}
            dropped = partitions.drop(plan.cutoff, today=today, model=model, db=db,
                                      expected=expected)
            done = [replace(m, dropped=m.month in dropped) for m in done]
    return done


@contextlib.contextmanager
def _connected(db: Any) -> Iterator[None]:
    if db.is_closed():
        with db.connection_context():
            yield
    else:
        yield


def _bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    low = dt.datetime(month.year, month.month, 1, tzinfo=UTC)
    high = next_month(month)
    return low, dt.datetime(high.year, high.month, 1, tzinfo=UTC)


def _in_month(model: Any, month: dt.date) -> peewee.Expression:
    key = model._meta.fields[model._meta.partition_by]
    low, high = _bounds(month)
    return (key >= low) & (key < high)


def _stats(model: Any, month: dt.date) -> tuple[int, int | None, int | None]:
    """(rows, lowest id, highest id) of a month, on the primary (one query, one partition)."""
    pk = model._meta.primary_key
    rows, low, high = (model.select(peewee.fn.COUNT(pk), peewee.fn.MIN(pk), peewee.fn.MAX(pk))
                       .where(_in_month(model, month)).tuples().get())
    return rows, low, high


def _file_stats(path: Path, table: str, month: dt.date,
                id_column: str) -> tuple[int, int | None, int | None] | None:
    """(rows, lowest id, highest id) from a file's footer; None unless it is our month's."""
    pa, pq = require_pyarrow(), _parquet()
    if not path.is_file():
        return None
    try:
        meta = pq.read_metadata(path)
    except (OSError, ValueError, pa.ArrowException):  # truncated, not Parquet
        return None
    try:
        mine = json.loads((meta.metadata or {}).get(_KEY, b"{}"))
    except ValueError:
        return None
    if mine.get("table") != table or mine.get("month") != f"{month:%Y-%m}":
        return None
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if id_column not in names:
        return None
    index, lows, highs = names.index(id_column), [], []
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            return None
        lows.append(stats.min)
        highs.append(stats.max)
    return meta.num_rows, min(lows, default=None), max(highs, default=None)


def _archive_month(model: Any, plan: ArchivePlan, month: dt.date, row_group_rows: int,
                   batch_size: int) -> ArchivedMonth:
    stats = _stats(model, month)
    if stats[0] == 0:
        return ArchivedMonth(month, 0, None, "empty")
    path = month_path(plan.directory, month, plan.table)
    id_column = model._meta.primary_key.column_name
    if _file_stats(path, plan.table, month, id_column) == stats:
        return ArchivedMonth(month, stats[0], path, "kept")
    query = model.select().where(_in_month(model, month)).order_by(model._meta.primary_key)
    rows = _write(path, query, {"table": plan.table, "month": f"{month:%Y-%m}",
                                "within_db": __version__}, row_group_rows, batch_size)
    return ArchivedMonth(month, rows, path, "written")


def _parquet() -> Any:
    require_pyarrow()
    import pyarrow.parquet as pq

    return pq


def _write(path: Path, query: peewee.Select, about: dict[str, str], row_group_rows: int,
           batch_size: int) -> int:
    """Stream ``query`` into ``path`` through a locked hidden file renamed at the end.

    The hidden name is fixed per month, so a killed run leaves one file that the next run
    reuses; the lock makes a second archive of the same month fail instead of interleaving.
    """
    pa, pq = require_pyarrow(), _parquet()
    path.parent.mkdir(exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    schema = arrow_schema(query).with_metadata({_KEY: json.dumps(about).encode()})
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConflictError(f"another archive is writing {path.name}; wait for it "
                                "to finish") from None
        try:
            handle.truncate(0)
            rows = 0
            with pq.ParquetWriter(handle, schema, compression="zstd",
                                  write_statistics=True) as writer:
                held: list[Any] = []
                count = 0
                for record_batch in to_arrow(query, batch_size=batch_size):
                    held.append(record_batch)
                    count += record_batch.num_rows
                    while count >= row_group_rows:
                        table = pa.Table.from_batches(held, schema)
                        writer.write_table(table.slice(0, row_group_rows),
                                           row_group_size=row_group_rows)
                        rest = table.slice(row_group_rows)
                        held, count = rest.to_batches(), rest.num_rows
                        rows += row_group_rows
                if count:
                    writer.write_table(pa.Table.from_batches(held, schema),
                                       row_group_size=row_group_rows)
                    rows += count
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)
    return rows


def _verify(model: Any, done: list[ArchivedMonth]) -> None:
    """Compare each month's file with the primary now; VerificationError naming the others."""
    table = model._meta.table_name
    id_column = model._meta.primary_key.column_name
    wrong = []
    for result in done:
        stats = _stats(model, result.month)
        found = (None if result.path is None
                 else _file_stats(result.path, table, result.month, id_column))
        if result.path is None and stats[0] == 0:
            continue
        if found != stats:
            shown = "no file" if found is None else f"{found[0]:,} rows in the file"
            wrong.append(f"{result.month:%Y-%m} ({stats[0]:,} rows in the database, {shown})")
    if wrong:
        raise VerificationError(
            f"the archive of {table} does not match the database for {', '.join(wrong)}: rows "
            "changed while it was written, or it was read from a replica that lags; nothing "
            "was dropped; run the archive again to rewrite those months")
