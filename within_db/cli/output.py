"""Render rows for the terminal (aligned table), for jq (one JSON document) or as CSV.

Data goes to stdout; progress, summaries and warnings go to stderr via ``note()``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

import click

from within_db.base import jsonable

__all__ = ["FORMATS", "format_option", "note", "render", "resolve", "table"]

FORMATS = ("table", "json", "csv")

def _inherit(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # ctx.meta is shared by a command and its groups: a group's --format reaches the command
    # unless the command gives its own
    if value is not None:
        ctx.meta["within_db.format"] = value
        return value
    found: str | None = ctx.meta.get("within_db.format")
    return found


format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default=None, callback=_inherit,
    help="Output format, here or on a group [default: table on a terminal, json otherwise].",
)


def resolve(fmt: str | None) -> str:
    if fmt:
        return fmt
    return "table" if sys.stdout.isatty() else "json"


def note(message: str) -> None:
    """Write a human message to stderr, never mixed into data."""
    click.echo(message, err=True)


def _cell(value: Any) -> str:
    value = jsonable(value)
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def table(rows: list[dict], columns: list[str] | None = None, max_width: int = 60) -> str:
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row]
             for row in cells]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(columns)]
    line = "  ".join(h.ljust(w) for h, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells]
    return "\n".join([line.rstrip(), rule, *body])


def render(rows: list[dict], fmt: str | None, columns: list[str] | None = None,
           document: Any = None) -> None:
    """Print ``rows``; for json, print ``document`` instead when one is given.

    CSV always starts with its header: pass ``columns`` where ``rows`` may be empty.
    """
    fmt = resolve(fmt)
    if fmt == "json":
        payload = jsonable(document if document is not None else rows)
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    elif fmt == "csv":
        buffer = io.StringIO()
        columns = columns or (list(rows[0]) if rows else [])
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row.get(c)) for c in columns})
        click.echo(buffer.getvalue(), nl=False)
    else:
        click.echo(table(rows, columns))
