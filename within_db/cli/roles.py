"""``within-db roles``: least-privilege PostgreSQL roles (an owner that migrates, an app that
cannot rewrite the audit log)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from within_db import roles as service
from within_db.cli.output import note

if TYPE_CHECKING:
    from within_db.cli import Settings

__all__ = ["roles"]

owner_option = click.option("--owner", required=True, metavar="ROLE",
                            help="Role that owns the schema and runs `migrate up`.")
app_option = click.option("--app", required=True, metavar="ROLE",
                          help="Role the application connects as: DML on the domain tables, "
                               "SELECT and INSERT only on audit_logs.")


@click.group()
def roles() -> None:
    """Least-privilege PostgreSQL roles for production.

    The roles must exist (CREATE ROLE ... LOGIN). Run as a superuser or the database owner,
    again after every `migrate up` (tables a migration adds stay closed to the app until then).

    \b
    Examples:
      within-db roles sql --owner within_owner --app within_app > roles.sql
      within-db roles setup --owner within_owner --app within_app
    """


@roles.command()
@owner_option
@app_option
@click.pass_obj
def sql(settings: Settings, owner: str, app: str) -> None:
    """Print the SQL script that `roles setup` would run, for review or your own tooling.

    \b
    Example:
      within-db roles sql --owner within_owner --app within_app | psql -1 within
    """
    for statement in service.role_setup_sql(owner, app, settings.database()):
        click.echo(f"{statement};")


@roles.command()
@owner_option
@app_option
@click.pass_obj
def setup(settings: Settings, owner: str, app: str) -> None:
    """Give OWNER every table, sequence and function, and APP only what the services need.

    One transaction; idempotent. Prints the statements it ran.

    \b
    Example:
      within-db --database-url postgresql://postgres@db/within roles setup \\
        --owner within_owner --app within_app
    """
    statements = service.setup_roles(owner, app, settings.database())
    for statement in statements:
        click.echo(f"{statement};")
    note(f"roles set: {owner} owns the schema, {app} has least privilege")
