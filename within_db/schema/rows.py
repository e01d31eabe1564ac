"""Generic, safe reads of any table: row counts and filtered rows for ``within-db inspect``.

Table and column names are checked against the live schema; values are always bound
parameters, converted to the column's type first. Secret columns are never returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import peewee

from within_db.boundary import public_api
from within_db.db import Backend
from within_db.errors import ArgumentError, ValidationError
from within_db.fields import MoneyField, codec_of
from within_db.models import ALL_MODELS
from within_db.schema import introspect

__all__ = ["MAX_ROWS", "present", "rows", "table_counts"]

MODELS = {m._meta.table_name: m for m in ALL_MODELS}
MAX_ROWS = 100_000  # what `inspect rows --limit` accepts


@public_api
def table_counts(db: Backend) -> list[dict[str, Any]]:
    """Return ``[{"table", "rows", "partitions"}]`` for every table, one COUNT query each.

    A partitioned table is one entry (its rows are those of all its partitions), with the
    number of its partitions; ``partitions`` is None for a plain table.
    """
    with db.connection_context():
        names = introspect.table_names(db)
        out = []
        for name in names:
            parts = (len(db.partitions(name, "", exact=False)) if db.partitioning(name)
                     else None)
            out.append({"table": name, "rows": peewee.Table(name).bind(db).select().count(),
                        "partitions": parts})
        return out


def _is_money(field: peewee.Field | None) -> bool:
    return isinstance(field, MoneyField)


def present(model: type[peewee.Model], row: dict[str, Any]) -> dict[str, Any]:
    """Return ``row`` (a model's ``to_dict()``) as the CLI shows it: money in micros.

    Money columns are named ``*_micros``, so the CLI shows the stored integer micros under
    that name (1 unit = 1,000,000 micros), and ``--where`` takes the same form.
    """
    fields = {f.column_name: f for f in model._meta.sorted_fields if _is_money(f)}
    return {k: fields[k].db_value(v) if k in fields and v is not None else v
            for k, v in row.items()}


def _coerce(field: peewee.Field | None, column: str, value: str) -> Any:
    if field is None:
        return value
    if _is_money(field):
        text = value.strip()
        if not text.lstrip("-").isdigit():
            raise ArgumentError(f'--where {column}: "{value}" is not a whole number of micros '
                                "(money is shown and filtered in micros: 1 unit = 1,000,000)")
        return int(text)
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


@public_api
def rows(db: Backend, table: str, filters: Iterable[tuple[str, str]] = (),
         order: str | None = None, limit: int = 20) -> tuple[list[str], list[dict[str, Any]]]:
    """Return the shown columns and up to ``limit`` rows of ``table`` matching every filter.

    Money columns hold integer micros, as stored. Raises ArgumentError naming the valid
    tables or columns for an unknown name, or a value that does not fit its column.
    """
    if order is not None and not isinstance(order, str):
        raise ArgumentError(f"order must be a column name, not {type(order).__name__}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_ROWS:
        raise ArgumentError(f"limit must be an integer from 0 to {MAX_ROWS}")
    filters = list(filters)
    if not all(isinstance(f, tuple) and len(f) == 2 and all(isinstance(p, str) for p in f)
               for f in filters):
        raise ArgumentError("filters must be (column, text value) pairs")
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
            bound = converted if field is None or _is_money(field) else \
                field.db_value(converted)
            query = query.where(peewee.Column(source, column) == bound)
        if order:
            column = introspect.require_column(live, order.lstrip("-"))
            query = query.order_by(peewee.Column(source, column).desc() if order.startswith("-")
                                   else peewee.Column(source, column).asc())
        readers = {c: f.python_value for c, f in fields.items() if not _is_money(f)}
        results = []
        for row in query.limit(limit).dicts():
            results.append({c: readers[c](v) if c in readers else v for c, v in row.items()})
        return shown, results
