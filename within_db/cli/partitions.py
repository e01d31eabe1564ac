"""``within-db partitions``: list, ensure and drop the monthly partitions of prediction_logs."""

from __future__ import annotations

import sys

import click

from within_db import migrate as migrations
from within_db import partitions as api
from within_db.cli.output import format_option, note, render
from within_db.errors import ValidationError

__all__ = ["partitions"]


def _migrated_db(settings):
    db = settings.database()
    migrations.require_migrated(db)
    return db


@click.group()
def partitions() -> None:
    """Monthly partitions of prediction_logs (PostgreSQL; SQLite keeps one table).

    A write for a month without a partition fails and names `partitions ensure`: run
    `ensure` from cron (daily) so the coming months always exist.

    \b
    Examples:
      within-db partitions ensure --ahead 3
      within-db partitions list --exact
      within-db partitions drop --before 2025-01 --yes
    """


@partitions.command("list")
@click.option("--exact", is_flag=True,
              help="Count rows (slow on big months) instead of PostgreSQL's estimate.")
@format_option
@click.pass_obj
def list_(settings, exact, fmt) -> None:
    """Each month: partition name, range [from, to), rows and size on disk.

    On SQLite the months holding rows are listed (always counted; no size).

    \b
    Example:
      within-db partitions list --format json | jq '.[].rows'
    """
    db = _migrated_db(settings)
    rows = [{"name": p.name, "from": p.start, "to": p.end, "rows": p.rows, "bytes": p.bytes}
            for p in api.list_partitions(exact=exact, db=db)]
    render(rows, fmt, columns=["name", "from", "to", "rows", "bytes"])


@partitions.command()
@click.option("--ahead", default=api.DEFAULT_AHEAD, show_default=True,
              type=click.IntRange(0, 120), help="Months after the current one to create.")
@click.option("--from", "since", metavar="YYYY-MM",
              help="Also create the months from this one (backfills) [default: current month].")
@click.pass_obj
def ensure(settings, ahead, since) -> None:
    """Create the missing partitions up to --ahead months from now, without blocking writers.

    Each month is built beside the table and ATTACHed (SHARE UPDATE EXCLUSIVE, not the
    ACCESS EXCLUSIVE of PARTITION OF); safe to run repeatedly and concurrently. Then frees
    the request ids of months dropped earlier, if any remain (in batches).

    \b
    Example:
      within-db partitions ensure --ahead 6 --from 2025-01
    """
    db = _migrated_db(settings)
    created = api.ensure(ahead=ahead, since=since, db=db)
    for name in created:
        click.echo(name)
    note(f"created {len(created)} partition(s)")
    _prune(db)


def _prune(db) -> None:
    freed = api.prune(db=db)
    if freed:
        note(f"freed the request ids of {len(freed)} dropped month(s), "
             f"{sum(freed.values())} id(s)")


@partitions.command()
@click.option("--before", required=True, metavar="YYYY-MM",
              help="Drop every month before this one (the current month is kept).")
@click.option("--yes", is_flag=True, help="Do not ask; required when not on a terminal.")
@format_option
@click.pass_obj
def drop(settings, before, yes, fmt) -> None:
    """Drop whole months before --before: DETACH CONCURRENTLY and DROP on PostgreSQL, batched
    DELETEs on SQLite. The rows are gone for good: archive them first. On PostgreSQL the
    months' request ids are freed afterwards, in batches (interrupted, `ensure` finishes it).

    \b
    Example:
      within-db archive prediction-logs --before 2025-01 --to /data/lake --drop
      within-db partitions drop --before 2025-01 --yes
    """
    cutoff = api.parse_month(before, "--before")
    db = _migrated_db(settings)
    doomed = [p for p in api.list_partitions(exact=False, db=db) if p.start < cutoff]
    if doomed and not yes:
        message = (f"this drops {len(doomed)} month(s) of prediction_logs "
                   f"({doomed[0].start:%Y-%m} to {doomed[-1].start:%Y-%m})")
        if not sys.stdin.isatty():
            raise ValidationError(f"{message}; rerun with --yes to confirm")
        click.confirm(f"{message}. Continue?", abort=True, err=True)
    dropped = api.drop(cutoff, db=db)
    render([{"month": f"{m:%Y-%m}", "rows": n} for m, n in dropped.items()], fmt,
           columns=["month", "rows"])
    note(f"dropped {len(dropped)} month(s), {sum(dropped.values())} row(s)")
    _prune(db)
