"""Saved-query definitions: one pydantic schema, applied when a query is saved and when it runs.

The schema fixes the shape (strict types, no unknown keys), the catalogue the names, and each
filter's dimension the type of its values (ISO dates, UUIDs, integers, text). Values written
as ``{"param": name}`` are typed when the query runs, with its parameters.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from within_db.boundary import public_api
from within_db.errors import ValidationError
from within_db.fields import Codec
from within_db.services.analytics.catalogue import (
    DATASETS,
    MAX_LIMIT,
    OPERATORS,
    catalogue,
    dimension_codec,
)

__all__ = ["MAX_IN", "Definition", "Filter", "Sort", "validate_definition"]

MAX_IN = 1_000  # values of one "in" filter
MAX_TEXT_VALUE = 1_024
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_NAME = Field(max_length=64)
_VALUE_SHAPE = ('a filter value is text, a number, true/false, {"param": "name"}, or a list '
                f"of those (at most {MAX_IN})")


def _choices(values: Any) -> str:
    return ", ".join(values)


def _is_param(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"param"}


def _scalar_or_param(value: Any) -> None:
    if _is_param(value):
        name = value["param"]
        if not isinstance(name, str) or not _PARAM_NAME.fullmatch(name):
            raise ValueError("a parameter name is a letter or _ then letters, digits or _ "
                             "(at most 64)")
    elif isinstance(value, str):
        if len(value) > MAX_TEXT_VALUE or "\x00" in value:
            raise ValueError(f"a text filter value is at most {MAX_TEXT_VALUE} characters, "
                             "without NUL")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a number filter value must be finite")
    elif not isinstance(value, (int, bool)):
        raise ValueError(_VALUE_SHAPE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Filter(_Strict):
    """``{"dimension": ..., "op": eq|in|between|gte|lte, "value": ...}``."""

    dimension: str = _NAME
    op: str = _NAME
    value: Any

    @field_validator("op")
    @classmethod
    def _op(cls, op: str) -> str:
        if op not in OPERATORS:
            raise ValueError(f"unknown operator; valid: {_choices(OPERATORS)}")
        return op

    @field_validator("value")
    @classmethod
    def _shape(cls, value: Any) -> Any:
        if isinstance(value, list):
            if len(value) > MAX_IN:
                raise ValueError(f"a filter takes at most {MAX_IN} values")
            for item in value:
                _scalar_or_param(item)
        else:
            _scalar_or_param(value)
        return value


class Sort(_Strict):
    """``{"by": <a selected dimension or metric>, "desc": bool}``."""

    by: str = _NAME
    desc: StrictBool = False


class Definition(_Strict):
    """A saved query: dataset, dimensions, metrics, filters, sort and limit."""

    dataset: str = _NAME
    dimensions: list[str] = Field(default_factory=list, max_length=16)
    metrics: list[str] = Field(max_length=32)
    filters: list[Filter] = Field(default_factory=list, max_length=32)
    sort: list[Sort] = Field(default_factory=list, max_length=16)
    limit: StrictInt | None = None

    @pydantic.model_validator(mode="after")
    def _catalogue(self) -> Definition:
        _check_names(self)
        resolve_filters(self, None)
        return self


def _grain(dimension: str) -> str | None:
    """The date grain of a catalogue dimension ("date" is by day), None for the others."""
    if dimension == "date":
        return "day"
    return dimension.removeprefix("date:") if dimension.startswith("date:") else None


def _check_names(d: Definition) -> None:
    if d.dataset not in DATASETS:
        raise ValueError(f'unknown dataset "{d.dataset}"; valid datasets: '
                         f"{_choices(DATASETS)}")
    valid = catalogue()[d.dataset]
    if not d.metrics:
        raise ValueError("a query needs at least one metric")
    for dim in d.dimensions:
        if dim not in valid["dimensions"]:
            raise ValueError(f'unknown dimension "{dim}" for {d.dataset}; valid: '
                             f"{_choices(valid['dimensions'])}")
    if sum(1 for dim in d.dimensions if _grain(dim)) > 1:
        raise ValueError("at most one date dimension per query")
    for m in d.metrics:
        if m not in valid["metrics"]:
            raise ValueError(f'unknown metric "{m}" for {d.dataset}; valid: '
                             f"{_choices(valid['metrics'])}")
    if len(set(d.dimensions) | set(d.metrics)) != len(d.dimensions) + len(d.metrics):
        raise ValueError("dimensions and metrics must not repeat")
    filterable = ["date", *DATASETS[d.dataset].dimensions]
    for f in d.filters:
        if f.dimension not in filterable:
            raise ValueError(f'cannot filter on "{f.dimension}"; valid: '
                             f"{_choices(filterable)}")
    for s in d.sort:
        if s.by not in [*d.dimensions, *d.metrics]:
            raise ValueError('sort entries are {"by": <a selected dimension or metric>, '
                             '"desc": bool}')
    if d.limit is not None and not 1 <= d.limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}")


def _typed(codec: Codec, value: Any, where: str) -> Any:
    """Return ``value`` as its dimension's column holds it, or raise ValueError.

    The column's codec decides (a date dimension takes the codec of date columns), so a
    filter refuses what a write to that column refuses: non-canonical dates and UUID text,
    integers outside the column's range, text longer than the column.
    """
    try:
        return codec.validate(value)
    except ValidationError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _param(value: Any, params: dict[str, Any] | None) -> Any:
    """The parameter's value; ``_UNBOUND`` while saving (params is None)."""
    if not _is_param(value):
        return value
    if params is None:
        return _UNBOUND
    name = value["param"]
    if name not in params:
        raise ValueError(f'missing query parameter "{name}"')
    return params[name]


_UNBOUND = object()


def resolve_filters(d: Definition, params: dict[str, Any] | None
                    ) -> list[tuple[str, str, Any]]:
    """Return ``(dimension, op, typed value)`` per filter, parameters substituted.

    ``params=None`` checks the literal values only (while saving), and leaves out filters
    whose whole value is a parameter. Raises ValueError.
    """
    ds = DATASETS[d.dataset]
    out = []
    for i, f in enumerate(d.filters):
        codec = dimension_codec(ds, f.dimension)
        where = f'filter {i} ("{f.dimension}" {f.op})'
        value = _param(f.value, params)
        if value is _UNBOUND:  # while saving: typed when the query runs
            continue
        if f.op in ("in", "between"):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{where}: needs a list")
            if f.op == "between" and len(value) != 2:
                raise ValueError(f'{where}: "between" needs a [from, to] pair')
            if not 1 <= len(value) <= MAX_IN:
                raise ValueError(f'{where}: "in" needs 1 to {MAX_IN} values')
            items = [_param(v, params) for v in value]
            typed = [v if v is _UNBOUND else _typed(codec, v, where) for v in items]
            out.append((f.dimension, f.op, typed))
        else:
            if isinstance(value, (list, tuple, dict)):
                raise ValueError(f'{where}: "{f.op}" takes one value, not a list')
            out.append((f.dimension, f.op, _typed(codec, value, where)))
    return out


def _message(exc: pydantic.ValidationError) -> str:
    """The schema's complaints without the input values pydantic would echo."""
    parts = []
    for error in exc.errors()[:3]:  # the message and place only, never the input
        msg = str(error["msg"]).removeprefix("Value error, ")
        loc = ".".join(str(p) for p in error["loc"])
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse(definition: Any) -> Definition:
    """Return the schema object of a definition, or raise ValidationError."""
    if not isinstance(definition, dict):
        raise ValidationError("a query definition must be a JSON object")
    unknown = set(definition) - set(Definition.model_fields)
    if unknown:
        names = sorted(str(k)[:40] for k in unknown)
        raise ValidationError(f"unknown definition keys: {_choices(names)}; valid: "
                              f"{_choices(Definition.model_fields)}")
    try:
        return Definition.model_validate(definition)
    except pydantic.ValidationError as exc:
        raise ValidationError(_message(exc)) from None


@public_api
def validate_definition(definition: Any) -> dict:
    """Check a definition against the schema and the catalogue; return it, or raise
    ValidationError."""
    parse(definition)
    return definition


def run_filters(d: Definition, params: Any) -> list[tuple[str, str, Any]]:
    """``resolve_filters`` with the run's parameters, raising ValidationError."""
    if params is None:
        params = {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise ValidationError("params must be a dict with text keys")
    try:
        return resolve_filters(d, params)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None

