"""``within-db migrate``: status, up, down, create, generate and the drift check."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from within_db import migrate as api
from within_db.cli.output import format_option, note, render
from within_db.errors import MigrationError
from within_db.schema import drift

if TYPE_CHECKING:
    from within_db.cli import Settings

__all__ = ["migrate"]


@click.group()
@click.option("--directory", type=click.Path(file_okay=False), metavar="DIR",
              envvar="WITHIN_DB_MIGRATIONS",
              help="Migration scripts to use [env WITHIN_DB_MIGRATIONS; default: the ones "
                   "shipped with within_db].")
@format_option
@click.pass_obj
def migrate(settings: Settings, directory: str | None, fmt: str | None) -> None:
    """Apply, revert and check schema migrations.

    \b
    Examples:
      within-db migrate up
      within-db migrate status || echo "pending migrations"
    """
    settings.migrations = directory


@migrate.command()
@format_option
@click.pass_obj
def status(settings: Settings, fmt: str | None) -> None:
    """List migrations and whether each is applied; exit 1 while any is pending.

    \b
    Example:
      within-db migrate status --format json
    """
    states = api.status(settings.database(read_only=True), settings.migrations)
    rows = [{"name": s.name,
             "status": "applied" if s.applied else "pending",
             "file": "missing" if s.file_missing else "ok",
             "applied_at": s.applied_at} for s in states]
    render(rows, fmt, columns=["name", "status", "file", "applied_at"])
    pending = [s.name for s in states if not s.applied]
    missing = [s.name for s in states if s.file_missing]
    if missing:
        note(f"{len(missing)} applied migration(s) have no file: {', '.join(missing)}")
    if pending:
        note(f"{len(pending)} pending; run `within-db migrate up`")
        sys.exit(1)


@migrate.command()
@click.option("--target", metavar="NAME", help="Stop after applying this migration.")
@click.option("--fake", is_flag=True, help="Record as applied without running the scripts.")
@click.pass_obj
def up(settings: Settings, target: str | None, fake: bool) -> None:
    """Apply pending migrations, each in its own transaction.

    \b
    Example:
      within-db migrate up --target 0001_initial
    """
    applied = api.upgrade(settings.database(), target=target, fake=fake,
                          directory=settings.migrations, on_step=_progress(settings, fake))
    if not applied:
        note("nothing to apply; the database is up to date")


def _progress(settings: Settings, fake: bool = False) -> Callable[[str, str], None]:
    """Report each committed migration on stderr and remember it for an interruption."""
    def step(name: str, direction: str) -> None:
        verb = "applied" if direction == "up" else "reverted"
        done = f"{verb} {name}{' (fake)' if fake else ''}"
        settings.written.append(done)
        note(done)
    return step


@migrate.command()
@click.option("--target", metavar="NAME",
              help="Revert every applied migration back through this one.")
@click.option("--yes", is_flag=True, help="Do not ask before dropping tables that hold rows.")
@click.pass_obj
def down(settings: Settings, target: str | None, yes: bool) -> None:
    """Revert the last migration (or back through --target).

    Asks before dropping tables that hold rows; without a terminal, refuses unless --yes.

    \b
    Example:
      within-db migrate down --target 0001_initial --yes
    """
    db = settings.database()
    plan = api.downgrade_plan(db, target, settings.migrations)
    if not plan:
        note("nothing to revert")
        return
    at_risk = api.rows_at_risk(db, plan, settings.migrations)
    if at_risk and not yes:
        summary = ", ".join(f"{t} ({n:,})" for t, n in sorted(at_risk.items()))
        lost = sum(at_risk.values())
        message = f"reverting {', '.join(plan)} drops {lost:,} rows in {summary}"
        if not sys.stdin.isatty():
            raise MigrationError(f"{message}; rerun with --yes to confirm")
        click.confirm(f"{message}. Continue?", abort=True, err=True)
    api.downgrade(db, target, settings.migrations, on_step=_progress(settings))


def _apply_hint(settings: Settings, path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    if settings.migrations is None and folder == str(api.migrations_dir().resolve()):
        return "within-db migrate up"
    return f"within-db migrate --directory {folder} up"


@migrate.command()
@click.argument("name")
@click.pass_obj
def create(settings: Settings, name: str) -> None:
    """Write an empty numbered migration script to fill in by hand.

    Writes into --directory (WITHIN_DB_MIGRATIONS), else into migrations/ beside the
    project's setup.cfg or pyproject.toml; never into an installed package. NAME is a few
    words without a number (the next free number is added).

    \b
    Example:
      within-db migrate create add_campaign_priority
    """
    path = api.create(name, settings.migrations)
    settings.written.append(f"wrote {path}")
    click.echo(path)
    note(f"fill in up() and down(), then run `{_apply_hint(settings, path)}`")


@migrate.command()
@click.argument("name")
@click.option("--allow-destructive", is_flag=True,
              help="Also write steps that lose data (dropping a column or a table).")
@click.pass_obj
def generate(settings: Settings, name: str, allow_destructive: bool) -> None:
    """Write a migration from the difference between the models and a migrated database.

    Refuses a database without migration history or with pending migrations, and steps that
    lose data unless --allow-destructive. What it cannot write (CHECKs, type, nullability
    and default changes, partial indexes of existing tables) is listed on stderr and as TODO
    comments in the file: review it, then run `within-db migrate check`.

    \b
    Example:
      within-db migrate generate add_campaign_priority
    """
    result = drift.generate(name, settings.database(), directory=settings.migrations,
                            allow_destructive=allow_destructive)
    settings.written.append(f"wrote {result.path}")
    click.echo(result.path)
    for line in result.todo:
        note(f"TODO (write by hand): {line}")
    note(f"review it, run `{_apply_hint(settings, result.path)}`, then `within-db migrate "
         "check`")


@migrate.command()
@click.pass_obj
def check(settings: Settings) -> None:
    """Exit 1 on drift between the models, the migrations and the database, one line each.

    Builds the models' and the migrations' schemas in scratch space of the same backend
    (SQLite in memory, or temporary PostgreSQL schemas); when the database has a migration
    history, also reads its live schema. Compares tables, columns (type, nullability,
    default), indexes (partial ones included), foreign keys with on_delete, CHECKs and
    triggers; each line names the pair that disagrees. Opens the database read-only.

    \b
    Example:
      within-db --database-url postgresql://root@127.0.0.1:5432/test migrate check
    """
    report = drift.check_report(settings.database(read_only=True),
                                directory=settings.migrations)
    for line in report.lines:
        click.echo(line)
    compared = ", ".join(report.compared)
    if report.lines:
        note(f"{len(report.lines)} difference(s) ({compared}); add a migration "
             "(`within-db migrate generate NAME`) and review it")
        sys.exit(1)
    note(f"no drift ({compared})")
