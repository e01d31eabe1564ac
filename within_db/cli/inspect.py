"""``within-db inspect``: tables and counts, the live schema, rows, a user's view, the ERD,
the API's JSON Schemas."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

from within_db import migrate as migrations
from within_db.cli.output import format_option, note, render, resolve
from within_db.models import ALL_MODELS
from within_db.models.campaigns import Campaign
from within_db.schema import introspect
from within_db.schema import rows as browse
from within_db.schema.erd import mermaid, schema_markdown
from within_db.services.campaigns import get_user_campaigns
from within_db.services.users import find_user, role_names

if TYPE_CHECKING:
    from within_db.cli import Settings
    from within_db.db import Backend

__all__ = ["inspect"]

T = TypeVar("T")


def _read(settings: Settings, fn: Callable[[Backend], T]) -> T:
    """Return ``fn(db)`` on a migrated database: the replica when one is configured and usable."""
    def checked(db: Backend) -> T:
        migrations.require_migrated(db)
        return fn(db)

    return settings.database(read_only=True).read(checked)


@click.group(invoke_without_command=True)
@format_option
@click.pass_context
def inspect(ctx: click.Context, fmt: str | None) -> None:
    """Show what is inside a database (alone: every table with its row count).

    \b
    Examples:
      within-db inspect
      within-db inspect rows campaigns --where platform=meta --order -created_at --limit 5
      within-db inspect user jane@example.com --format json | jq '.campaigns | length'
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(tables, fmt=fmt)


@inspect.command()
@format_option
@click.pass_obj
def tables(settings: Settings, fmt: str | None) -> None:
    """Every table with its row count (and partition count), and the migration head.

    \b
    Example:
      within-db inspect tables --format csv
    """
    rows, head = _read(settings, lambda db: (browse.table_counts(db), migrations.head(db)))
    render(rows, fmt, columns=["table", "rows", "partitions"],
           document={"migration_head": head, "tables": rows})
    if resolve(fmt) != "json":
        note(f"migration head: {head}")


@inspect.command()
@click.argument("table", required=False)
@format_option
@click.pass_obj
def schema(settings: Settings, table: str | None, fmt: str | None) -> None:
    """Columns, indexes, foreign keys and CHECKs of TABLE (or every table), read live.

    \b
    Example:
      within-db inspect schema campaigns
    """
    def read(db):
        with db.connection_context():
            names = [introspect.require_table(db, table)] if table else None
            return introspect.describe(db, names)

    described = _read(settings, read)
    documents = [t.to_dict() for t in described.values()]
    if resolve(fmt) != "table":
        rows = []
        for d in documents:
            rows += [dict(table=d["table"], kind="column", name=c["name"], detail=c["type"],
                          nullable=c["nullable"], default=c["default"]) for c in d["columns"]]
            rows += [dict(table=d["table"], kind="index", name=i["name"],
                          detail=("UNIQUE " if i["unique"] else "") + f"({', '.join(i['columns'])})"
                          + (f" WHERE {i['where']}" if i["where"] else "")) for i in d["indexes"]]
            rows += [dict(table=d["table"], kind="foreign key", name=f["column"],
                          detail=f"{f['ref_table']}.{f['ref_column']} ON DELETE {f['on_delete']}")
                     for f in d["foreign_keys"]]
            rows += [dict(table=d["table"], kind="check", name=c["name"], detail=c["expression"])
                     for c in d["checks"]]
            rows += [dict(table=d["table"], kind="trigger", name=t["name"], detail=t["definition"])
                     for t in d["triggers"]]
        render(rows, fmt, document=documents,
               columns=["table", "kind", "name", "detail", "nullable", "default"])
        return
    for doc in documents:
        partitioned = (f"; partitioned by {doc['partitioning']}, {len(doc['partitions'])} "
                       "partition(s)" if doc["partitioning"] else "")
        click.echo(f"\n{doc['table']} (primary key: {', '.join(doc['primary_key'])}"
                   f"{partitioned})")
        render(doc["columns"], "table")
        sections = [
            ("indexes", [dict(name=i["name"], columns=", ".join(i["columns"]),
                              unique=i["unique"], where=i["where"]) for i in doc["indexes"]]),
            ("foreign keys", doc["foreign_keys"]),
            ("checks", doc["checks"]),
            ("triggers", doc["triggers"]),
            ("partitions", doc["partitions"]),
        ]
        for title, rows in sections:
            if rows:
                click.echo(f"  {title}:")
                render(rows, "table")


@inspect.command()
@click.argument("table")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(0, 100_000))
@click.option("--where", "where", multiple=True, metavar="COLUMN=VALUE",
              help="Equality filter; repeat to AND several. Values are bound, never SQL.")
@click.option("--order", metavar="[-]COLUMN", help="Sort column; prefix with - for descending.")
@format_option
@click.pass_obj
def rows(settings: Settings, table: str, limit: int, where: tuple[str, ...], order: str | None,
         fmt: str | None) -> None:
    """Rows of TABLE, filtered and sorted; secret columns (hashes) are never shown.

    \b
    Example:
      within-db inspect rows users --where is_active=true --order -created_at --limit 5
    """
    filters = []
    for item in where:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise click.BadParameter(f"expected COLUMN=VALUE, got {item!r}", param_hint="--where")
        filters.append((column.strip(), value))
    columns, result = _read(settings, lambda db: browse.rows(db, table, filters=filters,
                                                              order=order, limit=limit))
    render(result, fmt, columns=columns)


@inspect.command()
@click.argument("email_or_id")
@format_option
@click.pass_obj
def user(settings: Settings, email_or_id: str, fmt: str | None) -> None:
    """A user with their roles, and their campaigns newest first, each with its ads.

    \b
    Example:
      within-db inspect user jane@example.com
    """
    def read(db):
        found = find_user(email_or_id)
        return found, role_names(found), get_user_campaigns(found.id) or []

    found, roles, listed = _read(settings, read)
    campaigns = [dict(c, campaign=browse.present(Campaign, c["campaign"])) for c in listed]
    document = {"user": found.to_dict(), "roles": roles, "campaigns": campaigns}
    if resolve(fmt) == "json":
        render([], "json", document=document)
        return
    summary = [dict(campaign=c["campaign"]["name"], platform=c["campaign"]["platform"],
                    status=c["campaign"]["status"], created_at=c["campaign"]["created_at"],
                    ads=len(c["ads"]), id=c["campaign"]["id"]) for c in campaigns]
    if resolve(fmt) == "csv":
        # one table: every row carries the user (a user without campaigns is one row)
        person = {"user_id": found.id, "email": found.email, "full_name": found.full_name,
                  "is_active": found.is_active, "roles": " ".join(roles)}
        columns = [*person, "campaign_id", "campaign", "platform", "status", "created_at",
                   "ads"]
        lines = [dict(person, campaign_id=s.pop("id"), **s) for s in summary] or [person]
        render(lines, "csv", columns=columns)
        return
    click.echo(f"{found.full_name} <{found.email}>  id={found.id}  "
               f"active={found.is_active}  roles={', '.join(roles) or '-'}")
    render(summary, "table")


@inspect.command()
@click.option("--markdown", is_flag=True, help="Print docs/schema.md (header and diagram).")
def erd(markdown: bool) -> None:
    """The Mermaid ER diagram of the schema, generated from the models.

    \b
    Example:
      within-db inspect erd --markdown > docs/schema.md
    """
    click.echo(schema_markdown(ALL_MODELS) if markdown else mermaid(ALL_MODELS), nl=False)


@inspect.command("json-schema")
@click.argument("name", required=False, metavar="[MODEL]")
def json_schema(name) -> None:
    """The JSON Schema of MODEL's API schemas (Read, Create, Update), or of every schema.

    Needs no database: the schemas are generated from the models. MODEL is a model name
    (Campaign) or one schema's name (CampaignCreate).

    \b
    Example:
      within-db inspect json-schema Campaign | jq '.CampaignCreate.required'
    """
    from within_db import schemas

    known = schemas.schemas_by_name()
    models = sorted(m.__name__ for m in schemas.READ)
    if name is not None and name not in known and f"{name}Read" not in known:
        raise click.BadParameter(f"no model or schema named {name!r}; models: "
                                 f"{', '.join(models)}", param_hint="MODEL")
    click.echo(json.dumps(schemas.json_schema(name), indent=2))
