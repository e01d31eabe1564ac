"""``within-db archive``: write old months of prediction_logs to Parquet, then drop them."""

from __future__ import annotations

import sys

import click

from within_db import archive as api
from within_db import migrate as migrations
from within_db import partitions
from within_db.cli.output import format_option, note, render
from within_db.errors import ValidationError

__all__ = ["archive"]


@click.group()
def archive() -> None:
    """Archive old months to a Parquet dataset that DuckDB, Spark or pyarrow read.

    Needs the lake extra: pip install 'within_db[lake]'.

    \b
    Example:
      within-db archive prediction-logs --before 2025-01 --to /data/lake/prediction_logs
    """


@archive.command("prediction-logs")
@click.option("--before", required=True, metavar="YYYY-MM",
              help="Archive every month before this one (at most the current month).")
@click.option("--to", "directory", required=True, metavar="DIR",
              help="Dataset directory (created if missing): DIR/month=YYYY-MM/*.parquet.")
@click.option("--drop", is_flag=True,
              help="After every file is verified, drop the archived months.")
@click.option("--yes", is_flag=True, help="Do not ask before --drop; required when not on a "
              "terminal.")
@format_option
@click.pass_obj
def prediction_logs(settings, before, directory, drop, yes, fmt) -> None:
    """Write each month of prediction_logs before --before to one Parquet file.

    DIR/month=YYYY-MM/prediction_logs-YYYY-MM.parquet: zstd, row groups of 131,072 rows,
    timestamps in UTC, ids int64, UUIDs and JSON (RFC 8785 canonical) as strings. Rows stream
    from the replica when --replica-url is given. Files appear by an atomic rename; a rerun
    keeps months whose file already matches the database and rewrites the others. Before
    any --drop every file's row count and id range are checked against the primary.

    \b
    Example:
      within-db archive prediction-logs --before 2025-01 --to /data/lake/logs --drop --yes
      duckdb -c "SELECT month, count(*) FROM read_parquet('/data/lake/logs/*/*.parquet',
                 hive_partitioning = true) GROUP BY 1"
    """
    db = settings.database()
    migrations.require_migrated(db)
    plan = api.plan_archive(before, directory)
    if drop and not yes:
        months = list(plan.months)
        message = (f"this archives and then drops {len(months)} month(s) of prediction_logs "
                   f"({months[0]:%Y-%m} to {months[-1]:%Y-%m}, "
                   f"{sum(plan.months.values()):,} rows)")
        if not sys.stdin.isatty():
            raise ValidationError(f"{message}; rerun with --yes to confirm")
        click.confirm(f"{message}. Continue?", abort=True, err=True)

    def progress(month: api.ArchivedMonth) -> None:
        note(f"{month.month:%Y-%m}: {month.rows:,} rows {month.action} ({month.seconds:.1f} s)")
        if month.action == "written":
            settings.written.append(f"{month.month:%Y-%m} written to Parquet")

    done = api.archive(before, directory, drop=drop, progress=progress)
    rows = [{"month": f"{m.month:%Y-%m}", "rows": m.rows, "action": m.action,
             "dropped": m.dropped, "file": str(m.path) if m.path else None} for m in done]
    render(rows, fmt, columns=["month", "rows", "action", "dropped", "file"])
    dropped = sum(m.dropped for m in done)
    note(f"archived {sum(m.rows for m in done):,} row(s) in {len(done)} month(s) to "
         f"{plan.directory}" + (f"; dropped {dropped} month(s)" if drop else ""))
    freed = partitions.prune(db=db) if dropped else {}
    if freed:  # PostgreSQL: the dropped months' request ids, in batches
        note(f"freed {sum(freed.values())} request id(s) of the dropped months")
