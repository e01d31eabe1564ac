"""The ``within-db`` command: root group, global options and the one error boundary.

Usage and configuration errors exit 2, runtime failures exit 1, each as one ``Error:`` line on
stderr; ``--debug`` shows the traceback. Commands live in one module per group.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click
import peewee
import psycopg2

import within_db
from within_db.cli.output import format_option
from within_db.db import Backend
from within_db.errors import WithinDBError
from within_db.integrity import violation

__all__ = ["cli", "main"]

INTERRUPTED = 130  # 128 + SIGINT, as shells report it


@dataclass
class Settings:
    """What the root group parsed; commands ask it for the database and record their writes."""

    url: str | None
    debug: bool
    migrations: str | None = None
    #: what a command has committed so far, for the message when it is interrupted
    written: list[str] = field(default_factory=list)
    replica_url: str | None = field(default=None, repr=False)
    _db: Backend | None = field(default=None, repr=False)

    def database(self, read_only: bool = False) -> Backend:
        """Bind and return the database; ``read_only`` opens SQLite with mode=ro."""
        if self._db is None:
            self._db = within_db.connect(self.url, read_only=read_only,
                                         replica=self.replica_url)
        return self._db


class _Interrupted(Exception):
    """Ctrl-C, carried past click (which would print a blank line and call it an abort)."""


class Boundary(click.Group):
    """A click group whose ``main`` turns every failure into one line and an exit code."""

    #: the running command's settings, kept to say what an interrupted command had written
    settings: Settings | None = None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> NoReturn:
        """Run the command; exit with its code (standalone mode is always off here)."""
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args
        self.settings = None
        try:
            code = super().main(args=args, prog_name="within-db",
                                complete_var=complete_var, standalone_mode=False, **extra)
        except _Interrupted:
            click.echo(f"Error: interrupted; {_written(self.settings)}", err=True)
            code = INTERRUPTED
        except click.exceptions.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):
                click.echo(f"Error: interrupted; {_written(self.settings)}", err=True)
                code = INTERRUPTED
            else:
                click.echo("Error: aborted at the prompt; nothing was changed", err=True)
                code = 1
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "within-db"
            message = " ".join(exc.format_message().split()).rstrip(".")
            click.echo(f"Error: {message}; see `{command} --help`", err=True)
            code = exc.exit_code
        except click.ClickException as exc:
            click.echo(f"Error: {' '.join(exc.format_message().split())}", err=True)
            code = exc.exit_code
        except WithinDBError as exc:
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            code = exc.exit_code
        except (peewee.PeeweeException, sqlite3.Error, psycopg2.Error) as exc:
            if debug:
                raise
            click.echo(f"Error: {_database_error(exc)}", err=True)
            code = 1
        except Exception as exc:  # the CLI boundary: never a traceback without --debug
            if debug:
                raise
            click.echo(f"Error: unexpected {type(exc).__name__}; rerun with --debug", err=True)
            code = 1
        sys.exit(code or 0)


def _written(settings: Settings | None) -> str:
    done = settings.written if settings else []
    if not done:
        return "nothing was written (the step in progress was rolled back)"
    return (f"kept what had finished ({', '.join(done)}); the step in progress was "
            "rolled back")


def _database_error(exc: Exception) -> str:
    # Driver text can quote row values; report the class and constraint name only.
    db = within_db.database.obj
    if isinstance(exc, peewee.IntegrityError):
        found = violation(exc, db) if db is not None else None
        name = f" {found.name}" if found and found.name else ""
        return f"the database refused the write ({found.kind if found else 'integrity'}{name})"
    explained = db.explain_error(exc) if db is not None else None
    if explained:
        return explained
    return f"database error ({type(exc).__name__}); rerun with --debug for details"


@click.group(cls=Boundary, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar="DATABASE_URL", metavar="URL",
              help="Database to use [env DATABASE_URL; default sqlite:///within.db].")
@click.option("--replica-url", envvar="DATABASE_REPLICA_URL", metavar="URL",
              help="Streaming replica of a PostgreSQL database for the inspect commands "
                   "[env DATABASE_REPLICA_URL].")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@format_option
@click.version_option(within_db.__version__, "--version", prog_name="within-db")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, replica_url: str | None,
        debug: bool, fmt: str | None) -> None:
    """The within_db data layer: migrate, seed and inspect a database.

    \b
    Examples:
      within-db seed --scale small
      within-db inspect
      within-db --database-url postgresql://root@127.0.0.1:5432/test migrate status
    """
    if debug:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    ctx.obj = Settings(database_url, debug, replica_url=replica_url)
    cli.settings = ctx.obj
    ctx.call_on_close(lambda: ctx.obj._db is not None and ctx.obj._db.close())


def _register() -> None:
    from within_db.cli import archive, audit, inspect, migrate, partitions, roles, seed

    cli.add_command(archive.archive)
    cli.add_command(audit.audit)
    cli.add_command(migrate.migrate)
    cli.add_command(roles.roles)
    cli.add_command(inspect.inspect)
    cli.add_command(seed.seed)
    cli.add_command(partitions.partitions)


_register()


def main() -> None:
    """Console-script entry point."""
    cli.main()
