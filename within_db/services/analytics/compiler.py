"""Saved queries: structured definitions compiled to one parameterised peewee query.

A definition names a dataset, dimensions, metrics, filters, sort and limit; every name is
checked against the catalogue below, so no user text ever becomes SQL. Date truncation and
ratio metrics are written to give identical results on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import peewee
from peewee import SQL, fn

from within_db.db import Backend, bound
from within_db.errors import ValidationError
from within_db.models.campaigns import Ad, AdMetric, Campaign, CampaignPerformance, SpendRecord
from within_db.models.ml_system import MLModel, ModelMetric, ModelVersion, PredictionLog

__all__ = [
    "DATASETS", "Dataset", "GRAINS", "MAX_LIMIT", "OPERATORS", "catalogue", "compile_definition",
    "execute_definition", "validate_definition",
]

GRAINS = ("day", "week", "month")
OPERATORS = ("eq", "in", "between", "gte", "lte")
MAX_LIMIT = 10_000
FLOAT_DIGITS = 9


@dataclass
class Dataset:
    """A catalogue entry: base query, its date column, and what may be grouped and summed."""

    base: Callable[[], peewee.ModelSelect[Any]]
    date: peewee.Field
    dimensions: Mapping[str, peewee.ColumnBase]
    sums: Mapping[str, peewee.Field] = field(default_factory=dict)  # integer sums
    money: Mapping[str, peewee.Field] = field(default_factory=dict)  # sums of micros
    # name -> a function building the metric's expression
    other: Mapping[str, Callable[[], peewee.ColumnBase]] = field(default_factory=dict)


def _ratio(numerator: peewee.ColumnBase, denominator: peewee.ColumnBase,
           scale: float = 1.0) -> peewee.ColumnBase:
    # Both backends divide IEEE doubles; NULLIF turns a zero divisor into NULL, not an error.
    expr = numerator.cast("DOUBLE PRECISION") / fn.NULLIF(denominator, 0).cast("DOUBLE PRECISION")
    return expr / scale if scale != 1.0 else expr


def _datasets() -> dict[str, Dataset]:
    cp, am, sr, pl, mm = CampaignPerformance, AdMetric, SpendRecord, PredictionLog, ModelMetric
    perf_sums = {"impressions": cp.impressions, "clicks": cp.clicks,
                 "conversions": cp.conversions}
    ad_sums = {"impressions": am.impressions, "clicks": am.clicks, "conversions": am.conversions}
    return {
        "campaign_performance": Dataset(
            base=lambda: cp.select().join(Campaign, on=(cp.campaign == Campaign.id)),
            date=cp.date,
            dimensions={"campaign": cp.campaign, "platform": Campaign.platform,
                        "objective": Campaign.objective, "currency": Campaign.currency},
            sums=perf_sums, money={"spend": cp.spend_micros, "revenue": cp.revenue_micros},
            other={
                "ctr": lambda: _ratio(fn.SUM(cp.clicks), fn.SUM(cp.impressions)),
                "cvr": lambda: _ratio(fn.SUM(cp.conversions), fn.SUM(cp.clicks)),
                "cpa": lambda: _ratio(fn.SUM(cp.spend_micros), fn.SUM(cp.conversions), 1e6),
                "roas": lambda: _ratio(fn.SUM(cp.revenue_micros), fn.SUM(cp.spend_micros)),
            }),
        "ad_metrics": Dataset(
            base=lambda: (am.select().join(Ad, on=(am.ad == Ad.id))
                          .join(Campaign, on=(Ad.campaign == Campaign.id))),
            date=am.date,
            dimensions={"ad": am.ad, "campaign": Ad.campaign, "platform": Campaign.platform,
                        "creative_type": Ad.creative_type},
            sums=ad_sums, money={"spend": am.spend_micros},
            other={
                "ctr": lambda: _ratio(fn.SUM(am.clicks), fn.SUM(am.impressions)),
                "cvr": lambda: _ratio(fn.SUM(am.conversions), fn.SUM(am.clicks)),
                "cpa": lambda: _ratio(fn.SUM(am.spend_micros), fn.SUM(am.conversions), 1e6),
            }),
        "spend": Dataset(
            base=lambda: sr.select().join(Campaign, on=(sr.campaign == Campaign.id)),
            date=sr.occurred_at,
            dimensions={"campaign": sr.campaign, "platform": Campaign.platform,
                        "source": sr.source, "currency": sr.currency},
            money={"spend": sr.amount_micros},
            other={"records": lambda: fn.COUNT(sr.id)}),
        "prediction_logs": Dataset(
            base=lambda: (pl.select().join(ModelVersion, on=(pl.model_version == ModelVersion.id))
                          .join(MLModel, on=(ModelVersion.model == MLModel.id))),
            date=pl.created_at,
            dimensions={"model_version": pl.model_version, "model": MLModel.name,
                        "version": ModelVersion.version},
            other={"prediction_count": lambda: fn.COUNT(pl.id),
                   "mean_score": lambda: fn.AVG(pl.score),
                   "mean_latency_ms": lambda: fn.AVG(pl.latency_ms)}),
        "model_metrics": Dataset(
            base=lambda: (mm.select().join(ModelVersion, on=(mm.model_version == ModelVersion.id))
                          .join(MLModel, on=(ModelVersion.model == MLModel.id))),
            date=mm.recorded_at,
            dimensions={"model_version": mm.model_version, "model": MLModel.name,
                        "metric": mm.name, "split": mm.split},
            other={"mean_value": lambda: fn.AVG(mm.value), "min_value": lambda: fn.MIN(mm.value),
                   "max_value": lambda: fn.MAX(mm.value), "count": lambda: fn.COUNT(mm.id)}),
    }


DATASETS = _datasets()


def catalogue() -> dict[str, dict[str, list[str]]]:
    """Return the valid dimensions and metrics of every dataset."""
    return {name: {"dimensions": ["date", *(f"date:{g}" for g in GRAINS), *ds.dimensions],
                   "metrics": [*ds.sums, *ds.money, *ds.other]}
            for name, ds in DATASETS.items()}


def _choices(values: Iterable[str]) -> str:
    return ", ".join(values)


def _grain(dimension: str) -> str | None:
    if dimension == "date":
        return "day"
    if dimension.startswith("date:"):
        grain = dimension.split(":", 1)[1]
        if grain not in GRAINS:
            raise ValidationError(f'unknown date grain "{grain}"; valid: {_choices(GRAINS)}')
        return grain
    return None


def validate_definition(definition: Any) -> dict:
    """Check a definition against the catalogue; return it, or raise ValidationError."""
    if not isinstance(definition, dict):
        raise ValidationError("a query definition must be a JSON object")
    unknown = set(definition) - {"dataset", "dimensions", "metrics", "filters", "sort", "limit"}
    if unknown:
        raise ValidationError(f"unknown definition keys: {_choices(sorted(unknown))}; valid: "
                              "dataset, dimensions, metrics, filters, sort, limit")
    name = definition.get("dataset")
    if name not in DATASETS:
        raise ValidationError(f'unknown dataset "{name}"; valid datasets: {_choices(DATASETS)}')
    valid = catalogue()[name]
    dims = definition.get("dimensions", [])
    metrics = definition.get("metrics", [])
    if not isinstance(dims, list) or not isinstance(metrics, list):
        raise ValidationError("dimensions and metrics must be lists")
    if not metrics:
        raise ValidationError(f"at least one metric is needed; valid: {_choices(valid['metrics'])}")
    for d in dims:
        if d not in valid["dimensions"]:
            raise ValidationError(f'unknown dimension "{d}" for {name}; valid: '
                                  f"{_choices(valid['dimensions'])}")
    if sum(1 for d in dims if _grain(d)) > 1:
        raise ValidationError("at most one date dimension per query")
    for m in metrics:
        if m not in valid["metrics"]:
            raise ValidationError(f'unknown metric "{m}" for {name}; valid: '
                                  f"{_choices(valid['metrics'])}")
    if len(set(dims) | set(metrics)) != len(dims) + len(metrics):
        raise ValidationError("dimensions and metrics must not repeat")
    for f in definition.get("filters", []):
        if not isinstance(f, dict) or set(f) - {"dimension", "op", "value"}:
            raise ValidationError('a filter is {"dimension": ..., "op": ..., "value": ...}')
        if f.get("dimension") not in ["date", *DATASETS[name].dimensions]:
            raise ValidationError(f'cannot filter on "{f.get("dimension")}"; valid: '
                                  f"{_choices(['date', *DATASETS[name].dimensions])}")
        if f.get("op") not in OPERATORS:
            raise ValidationError(f'unknown operator "{f.get("op")}"; valid: '
                                  f"{_choices(OPERATORS)}")
    for s in definition.get("sort", []):
        if not isinstance(s, dict) or s.get("by") not in [*dims, *metrics]:
            raise ValidationError("sort entries are {\"by\": <a selected dimension or "
                                  "metric>, \"desc\": bool}")
    limit = definition.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or not 1 <= limit <= MAX_LIMIT):
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return definition


def _value(value: Any, params: dict) -> Any:
    if isinstance(value, dict) and set(value) == {"param"}:
        if value["param"] not in params:
            raise ValidationError(f'missing query parameter "{value["param"]}"')
        return params[value["param"]]
    if isinstance(value, list):
        return [_value(v, params) for v in value]
    return value


def _day(value: Any) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ValidationError("date filter values must be ISO dates (YYYY-MM-DD)") from None


def _from(column: peewee.Field, day: dt.date) -> dt.date:
    """The first value of ``day`` in ``column``: the date, or its UTC midnight for instants."""
    if isinstance(column, peewee.DateField):
        return day
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def _on_or_before(column: peewee.Field, day: dt.date) -> peewee.Expression:
    if isinstance(column, peewee.DateField):
        return column <= day
    return column < _from(column, day + dt.timedelta(days=1))


def _date_filter(column: peewee.Field, op: str, value: Any) -> peewee.Expression:
    if op == "gte":
        return column >= _from(column, _day(value))
    if op == "lte":
        return _on_or_before(column, _day(value))
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise ValidationError('"between" needs a [from, to] pair')
        lo, hi = _day(value[0]), _day(value[1])
        return (column >= _from(column, lo)) & _on_or_before(column, hi)
    days = value if op == "in" else [value]
    if not isinstance(days, list) or not days:
        raise ValidationError('"in" on date needs a non-empty list')
    return functools.reduce(operator.or_, [
        (column >= _from(column, _day(d))) & _on_or_before(column, _day(d)) for d in days])


def _filter(ds: Dataset, spec: dict[str, Any], params: dict[str, Any]) -> peewee.Expression:
    value = _value(spec["value"], params)
    op, dim = spec["op"], spec["dimension"]
    if dim == "date":
        return _date_filter(ds.date, op, value)
    col = ds.dimensions[dim]
    if op == "eq":
        return col == value
    if op == "in":
        if not isinstance(value, list) or not value:
            raise ValidationError(f'"in" on {dim} needs a non-empty list')
        return col.in_(value)
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise ValidationError('"between" needs a [from, to] pair')
        return col.between(value[0], value[1])
    return col >= value if op == "gte" else col <= value


def compile_definition(definition: dict[str, Any], params: dict[str, Any] | None = None,
                       db: Backend | None = None
                       ) -> tuple[peewee.ModelSelect[Any], dict[str, Callable[[Any], Any]]]:
    """Return ``(query, converters)`` for a validated definition. Builds no SQL text."""
    validate_definition(definition)
    db = bound(db)
    ds = DATASETS[definition["dataset"]]
    params = params or {}
    selected: list[peewee.ColumnBase] = []
    group_by: list[peewee.ColumnBase] = []
    converters: dict[str, Callable[[Any], Any]] = {}
    for d in definition.get("dimensions", []):
        grain = _grain(d)
        if grain:
            # both render the truncated day as ISO text, so results compare equal
            expr = db.date_text(ds.date, grain)
            converters[d] = _to_date
        else:
            expr = ds.dimensions[d]
            if isinstance(expr, peewee.ForeignKeyField):
                converters[d] = expr.rel_field.python_value
        selected.append(expr.alias(d))
        group_by.append(expr)
    for m in definition["metrics"]:
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
    for spec in definition.get("filters", []):
        query = query.where(_filter(ds, spec, params))
    order = [SQL(f'"{s["by"]}"').desc() if s.get("desc") else SQL(f'"{s["by"]}"').asc()
             for s in definition.get("sort", [])]
    # a total order, so results match across backends: then by every dimension
    order += [SQL(f'"{d}"').asc() for d in definition.get("dimensions", [])]
    if order:
        query = query.order_by(*order)
    query = query.limit(definition.get("limit") or MAX_LIMIT)
    return query.dicts(), converters


def _to_date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


def _money(value: Any) -> Decimal:
    return Decimal(int(value)).scaleb(-6)


def _float(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    return round(float(value), FLOAT_DIGITS)


def execute_definition(definition: dict[str, Any],
                       params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run a definition and return its rows with Python values (dates, Decimal, float)."""
    query, converters = compile_definition(definition, params)
    names = [*definition.get("dimensions", []), *definition["metrics"]]
    return [{k: (converters[k](row[k]) if row[k] is not None and k in converters else row[k])
             for k in names} for row in query]
