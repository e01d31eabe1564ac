"""Saved queries: structured definitions compiled to one parameterised peewee query.

A definition (``analytics.definitions``) names a dataset, dimensions, metrics, filters, sort
and limit from the catalogue (``analytics.catalogue``), so no user text ever becomes SQL. Date
truncation and ratio metrics are written to give identical results on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import peewee
from peewee import SQL, fn

from within_db.boundary import public_api
from within_db.db import Backend, bound
from within_db.errors import ValidationError
from within_db.services.analytics.catalogue import DATASETS, MAX_LIMIT, Dataset, catalogue
from within_db.services.analytics.definitions import (
    Definition,
    _grain,
    parse,
    run_filters,
    validate_definition,
)

__all__ = ["catalogue", "compile_definition", "execute_definition", "validate_definition"]

FLOAT_DIGITS = 9


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def _from(column: peewee.Field, day: dt.date) -> Any:
    """The first value of ``day`` in ``column``: the date, or its UTC midnight for instants."""
    if isinstance(column, peewee.DateField):
        return day
    return _midnight(day)


def _on_or_before(column: peewee.Field, day: dt.date) -> Any:
    if isinstance(column, peewee.DateField):
        return column <= day
    return column < _midnight(day + dt.timedelta(days=1))


def _on(column: peewee.Field, day: dt.date) -> Any:
    return (column >= _from(column, day)) & _on_or_before(column, day)


def _date_filter(db: Any, column: peewee.Field, op: str, value: Any) -> Any:
    if op == "gte":
        return column >= _from(column, value)
    if op == "lte":
        return _on_or_before(column, value)
    if op == "between":
        return (column >= _from(column, value[0])) & _on_or_before(column, value[1])
    if op == "eq":
        return _on(column, value)
    if isinstance(column, peewee.DateField):
        return column.in_(value)
    # the instant's UTC day, as text: one IN list, not an OR chain deeper than SQLite's
    # expression-depth limit allows
    return db.date_text(column, "day").in_([d.isoformat() for d in value])


def _filter(db: Any, ds: Dataset, dim: str, op: str, value: Any) -> Any:
    if dim == "date":
        return _date_filter(db, ds.date, op, value)
    col = ds.dimensions[dim]
    if op == "eq":
        return col == value
    if op == "in":
        return col.in_(value)
    if op == "between":
        return col.between(value[0], value[1])
    return col >= value if op == "gte" else col <= value


@public_api
def compile_definition(definition: dict[str, Any] | Definition,
                       params: dict[str, Any] | None = None, db: Backend | None = None
                       ) -> tuple[peewee.ModelSelect[Any], dict[str, Callable[[Any], Any]]]:
    """Return ``(query, converters)`` for a definition; ValidationError if it does not
    validate or ``params`` do not fit it. Builds no SQL text. The query is for ``db`` (its
    date functions) and runs there; the bound database by default."""
    d = definition if isinstance(definition, Definition) else parse(definition)
    filters = run_filters(d, params)
    if db is not None and not isinstance(db, peewee.Database):
        raise ValidationError("db must be a peewee database")
    database = bound(db)
    ds = DATASETS[d.dataset]
    selected: list[peewee.ColumnBase] = []
    group_by: list[peewee.ColumnBase] = []
    converters: dict[str, Callable[[Any], Any]] = {}
    for dim in d.dimensions:
        grain = _grain(dim)
        if grain:
            # both render the truncated day as ISO text, so results compare equal
            expr = database.date_text(ds.date, grain)
            converters[dim] = _to_date
        else:
            expr = ds.dimensions[dim]
            if isinstance(expr, peewee.ForeignKeyField):
                converters[dim] = expr.rel_field.python_value
        selected.append(expr.alias(dim))
        group_by.append(expr)
    for m in d.metrics:
        if m in ds.sums:
            expr = fn.COALESCE(fn.SUM(ds.sums[m]), 0)
            converters[m] = int
        elif m in ds.money:
            expr = fn.COALESCE(fn.SUM(ds.money[m]), 0)
            converters[m] = _money
        else:
            expr = ds.other[m]()
            converters[m] = _float
        selected.append(expr.alias(m))
    # the converters above, not peewee's field coercion, decide the Python types
    selected = [e.coerce(False) if isinstance(e.unwrap(), peewee.Function) else e
                for e in selected]
    query = ds.base().select(*selected)
    if group_by:
        query = query.group_by(*group_by)
    for dim, op, value in filters:
        query = query.where(_filter(database, ds, dim, op, value))
    order = [SQL(f'"{s.by}"').desc() if s.desc else SQL(f'"{s.by}"').asc() for s in d.sort]
    # a total order, so results match across backends: then by every dimension
    order += [SQL(f'"{dim}"').asc() for dim in d.dimensions]
    if order:
        query = query.order_by(*order)
    query = query.limit(d.limit or MAX_LIMIT)
    return query.dicts().bind(database), converters


def _to_date(value: str) -> dt.date:
    return dt.date.fromisoformat(value)  # date_text: YYYY-MM-DD text on both backends


def _money(value: Any) -> Decimal:
    return Decimal(int(value)).scaleb(-6)


def _float(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    return round(float(value), FLOAT_DIGITS)


@public_api
def execute_definition(definition: dict | Definition, params: dict | None = None
                       ) -> list[dict[str, Any]]:
    """Run a definition and return its rows with Python values (dates, Decimal, float)."""
    d = definition if isinstance(definition, Definition) else parse(definition)
    query, converters = compile_definition(d, params)
    names = [*d.dimensions, *d.metrics]
    return [{k: (converters[k](row[k]) if row[k] is not None and k in converters else row[k])
             for k in names} for row in query]
