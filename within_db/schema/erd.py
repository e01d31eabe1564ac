"""The Mermaid ER diagram of the models, as checked in at docs/schema.md."""

from __future__ import annotations

from collections.abc import Sequence

import peewee

from within_db.db import partition_meta

__all__ = ["mermaid", "schema_markdown"]

HEADER = """# within_db schema

Generated from the models; a test keeps this file current (regenerate with
`within-db inspect erd --markdown > docs/schema.md`). CHECK constraints, partial indexes and
triggers are listed by `within-db inspect schema`.

"""


def _keys(field: peewee.Field) -> str:
    keys = []
    if field.primary_key:
        keys.append("PK")
    if isinstance(field, peewee.ForeignKeyField):
        keys.append("FK")
    if field.unique:
        keys.append("UK")
    return " " + ",".join(keys) if keys else ""


def mermaid(models: Sequence[type[peewee.Model]]) -> str:
    """Return a Mermaid ``erDiagram`` of ``models``: columns, keys and relationships."""
    lines = ["erDiagram"]
    for model in models:
        key, guards = partition_meta(model)
        if key:
            lines.append(f"    %% {model._meta.table_name}: range-partitioned by month on {key} "
                         "on PostgreSQL (primary key with it); unique "
                         + ", ".join(f"{c} kept by {g}" for c, g in guards.items()))
        lines.append(f"    {model._meta.table_name} {{")
        for field in model._meta.sorted_fields:
            ftype = field.field_type.lower()
            note = ' "nullable"' if field.null else ""
            if field.column_name == key:
                note = ' "partition key (month)"'
            lines.append(f"        {ftype} {field.column_name}{_keys(field)}{note}")
        lines.append("    }")
    for model in models:
        for field in model._meta.sorted_fields:
            if not isinstance(field, peewee.ForeignKeyField):
                continue
            many = "o|" if field.unique else "o{"
            one = "o|" if field.null else "||"
            parent = field.rel_model._meta.table_name
            lines.append(f"    {parent} {one}--{many} {model._meta.table_name} : "
                         f'"{field.column_name} ({field.on_delete.lower()})"')
    return "\n".join(lines) + "\n"


def schema_markdown(models: Sequence[type[peewee.Model]]) -> str:
    """Return docs/schema.md: a short header and the diagram in a mermaid block."""
    return f"{HEADER}```mermaid\n{mermaid(models)}```\n"
