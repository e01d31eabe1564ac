"""Generic, safe reads of any table: row counts and filtered rows for ``within-db inspect``.

Table and column names are checked against the live schema; values are always bound
parameters, converted to the column's type first. Secret columns are never returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import peewee

from within_db.db import Backend
from within_db.errors import ArgumentError, ValidationError
from within_db.fields import codec_of
from within_db.models import ALL_MODELS
from within_db.schema import introspect

__all__ = ["rows", "table_counts"]

MODELS = {m._meta.table_name: m for m in ALL_MODELS}


def table_counts(db: Backend) -> list[dict[str, Any]]:
    """Return ``[{"table", "rows"}]`` for every table, one COUNT query each."""
    with db.connection_context():
        names = introspect.table_names(db)
        return [{"table": t, "rows": peewee.Table(t).bind(db).select().count()} for t in names]


def _coerce(field: peewee.Field | None, column: str, value: str) -> Any:
    if field is None:
        return value
    codec = codec_of(field)
    if codec.python_type is object:
        return value
    if not codec.parseable:
        raise ArgumentError(f'column "{column}" holds {codec.kind}, which --where cannot compare; '
                            "filter on another column, or query JSON paths from Python")
    try:
        return codec.parse(value)
    except ValidationError as exc:
        raise ArgumentError(f'--where {column}: "{value}" is not a valid {codec.kind} '
                            f"({exc})") from None


def rows(db: Backend, table: str, filters: Iterable[tuple[str, str]] = (),
         order: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Return up to ``limit`` rows of ``table`` matching every ``column = value`` filter.

    Raises ArgumentError naming the valid tables or columns for an unknown name.
    """
    with db.connection_context():
        introspect.require_table(db, table)
        live = introspect.describe(db, [table])[table]
        model = MODELS.get(table)
        fields = {f.column_name: f for f in model._meta.sorted_fields} if model else {}
        public = {f.column_name for f in model.public_fields()} if model else set(live.columns)
        shown = [c for c in live.columns if c in public]
        source = peewee.Table(table).bind(db)
        query = source.select(*[peewee.Column(source, c) for c in shown])
        for column, value in filters:
            introspect.require_column(live, column)
            field = fields.get(column)
            converted = _coerce(field, column, value)
            bound = field.db_value(converted) if field is not None else converted
            query = query.where(peewee.Column(source, column) == bound)
        if order:
            column = introspect.require_column(live, order.lstrip("-"))
            query = query.order_by(peewee.Column(source, column).desc() if order.startswith("-")
                                   else peewee.Column(source, column).asc())
        results = []
        for row in query.limit(limit).dicts():
            results.append({c: fields[c].python_value(v) if c in fields else v
                            for c, v in row.items()})
        return results
