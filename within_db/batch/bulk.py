"""Bulk writes: ``bulk_insert`` through compiled per-model row converters.

One INSERT fed to sqlite3's ``executemany`` on SQLite, ``COPY ... FROM STDIN`` on PostgreSQL,
all in one transaction; every value passes its field's codec.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

import peewee

from within_db import boundary as check
from within_db.boundary import public_api
from within_db.db import Backend, BulkLoadFailed, bound
from within_db.errors import BulkInsertError, ValidationError
from within_db.fields import INLINE_ENV, SafeText, codec_of, copy_escape
from within_db.integrity import violation
from within_db.models import ALL_MODELS

__all__ = ["DEFAULT_BATCH", "Row", "bulk_insert", "rows_argument"]

DEFAULT_BATCH = 10_000
#: a row for ``bulk_insert``: a dict keyed by field or column name, or a tuple in ``fields`` order
Row: TypeAlias = dict[str, Any] | Sequence[Any]


def _insert_fields(model: type[peewee.Model]) -> list[peewee.Field]:
    return [f for f in model._meta.sorted_fields if not f.auto_increment]


_END = object()


# -- per-model row converters ---------------------------------------------------------------
#
# A converter is compiled per (model, key set, output) the way namedtuple compiles its class:
# each value's common case (a str within its length, a finite float, an aware UTC datetime...)
# is checked and converted inline, as fast as hand-written code; anything else calls the
# field's codec, which converts it or raises ValidationError. Names and defaults enter the
# source only through repr() or the environment, never as text a caller chose.

# COPY text of an inline storage value, by its Python type (``{}`` is the value's source)
_COPY_INLINE = {
    int: "{v}", float: "{v}", SafeText: "{v}",  # f-strings render ints and floats as repr()
    bool: "('t' if {v} else 'f')",
    str: "({y} if '\\\\' not in ({y} := {v}) and '\\t' not in {y} and '\\n' not in {y} "
         "and '\\r' not in {y} else _esc({y}))",
}


class _Converters:
    """Compiled row converters of one bulk insert, cached by the rows' key set.

    This class makes storage tuples for ``executemany`` (SQLite); ``_CopyConverters`` makes
    COPY text lines (PostgreSQL). Each output's source fragments are its own methods.
    """

    #: the source of a NULL value, and a NULL default's converted value
    null_source = "None"
    null_value: Any = None

    def __init__(self, model: type[peewee.Model], fields: list[peewee.Field],
                 tuple_fields: list[str]):
        self.model, self.fields = model, fields
        self.tuple_fields = tuple_fields
        self.by_name = {f.name: f for f in fields}
        self.by_column = {f.column_name: f for f in fields}
        self.cache: dict[frozenset | int, Callable] = {}

    def convert(self, row: Any) -> Any:
        """Convert one row with the converter compiled for its key set (compiled on demand)."""
        return self.for_row(row)(row)

    def for_row(self, row: Any) -> Callable:
        if isinstance(row, dict):
            key: frozenset | int = frozenset(row)
        else:
            key = len(row)
        found = self.cache.get(key)
        if found is None:
            found = self.cache[key] = self._compile(row)
        return found

    def _given(self, row: Any) -> dict[str, str | int]:
        """Map field name -> the key (or tuple index) that holds its value in ``row``."""
        if not isinstance(row, dict):
            if len(row) != len(self.tuple_fields):
                raise ValidationError(f"expected {len(self.tuple_fields)} values, got "
                                      f"{len(row)}")
            return {name: i for i, name in enumerate(self.tuple_fields)}
        given: dict[str, str | int] = {}
        unknown = []
        for key in row:
            field = self.by_name.get(key) or self.by_column.get(key)
            if field is None:
                unknown.append(str(key))
            elif field.name in given:
                raise ValidationError(f"{field.name!r} given twice (as {given[field.name]!r} "
                                      f"and {key!r})")
            else:
                given[field.name] = key
        if unknown:
            raise ValidationError(f"unknown fields {', '.join(sorted(unknown))}")
        return given

    def _compile(self, row: Any) -> Callable:
        given = self._given(row)
        env = self._environment()
        # another key set (or tuple length) goes to the converter compiled for it: every
        # row's keys are checked, at the cost of one len() and the key lookups
        lines = ["def convert(r):", f"    if _len(r) != {len(row)}:", "        return _other(r)",
                 "    try:"]
        reads, values, convert_lines = [], [], []
        for i, field in enumerate(self.fields):
            codec = codec_of(field)
            env[f"_c{i}"] = self._full(field, codec)
            x = f"x{i}"
            if field.name in given:
                reads.append(f"        {x} = r[{given[field.name]!r}]")
            elif not field.null and field.default is None:
                raise ValidationError(f"missing required field {field.name!r}")
            elif callable(field.default):
                env[f"_d{i}"] = field.default
                convert_lines.append(f"    {x} = _d{i}()")
            else:  # a constant default, converted once
                env[f"_k{i}"] = (self.null_value if field.default is None
                                 else env[f"_c{i}"](field.default))
                values.append(f"_k{i}")
                continue
            # a try costs nothing until it catches; the refusal gains the model.field label
            env[f"_L{i}"] = f"{field.model.__name__}.{field.name}: "
            values.append(f"v{i}")
            convert_lines += ["    try:", f"        v{i} = {self._expression(x, i, field, codec)}",
                      "    except _VE as e:", f"        raise _VE(_L{i} + str(e)) from None"]
        lines += reads  # never empty: every model has a field without a default
        lines += ["    except (KeyError, IndexError, TypeError):", "        return _other(r)"]
        lines += convert_lines
        lines.append(self._result(values))
        exec("\n".join(lines), env)  # noqa: S102 - generated from field metadata only, see above
        convert: Callable = env["convert"]
        return convert

    def _expression(self, x: str, i: int, field: peewee.Field, codec: Any) -> str:
        fast = codec.inline(x)
        if fast is None:
            value = f"_c{i}({x})"
        else:
            cond, expr, kind = fast
            value = f"({self._output(expr, kind)} if {cond} else _c{i}({x}))"
        if field.null:
            return f"({self.null_source} if {x} is None else {value})"
        return value

    def _environment(self) -> dict[str, Any]:
        """The names the generated source may use."""
        return {**INLINE_ENV, "_other": self.convert, "_len": len, "_VE": ValidationError}

    def _output(self, expr: str, kind: type) -> str:
        """The source of an inline storage value as this output holds it."""
        return expr

    def _full(self, field: peewee.Field, codec: Any) -> Callable[[Any], Any]:
        """The codec's full conversion of one value to this output."""
        return _storage(field, codec)

    def _result(self, values: list[str]) -> str:
        """The generated source's return line: a tuple of the values."""
        return "    return (" + ", ".join(values) + ",)"


class _CopyConverters(_Converters):
    """Row converters to COPY text lines: tab-separated, escaped, newline-terminated."""

    null_source = "'\\\\N'"
    null_value = "\\N"

    def _environment(self) -> dict[str, Any]:
        return {**super()._environment(), "_esc": copy_escape}

    def _output(self, expr: str, kind: type) -> str:
        # y is bound and read within the one expression, so every field can use the name
        return _COPY_INLINE[kind].format(v=expr, y="y")

    def _full(self, field: peewee.Field, codec: Any) -> Callable[[Any], Any]:
        store, to_copy = _storage(field, codec), codec.to_copy
        return lambda value: to_copy(store(value))

    def _result(self, values: list[str]) -> str:
        # an f-string of plain names: {v} is the value's str(), i.e. repr()
        return "    return f'" + "\\t".join("{" + v + "}" for v in values) + "\\n'"


def _storage(field: peewee.Field, codec: Any) -> Callable[[Any], Any]:
    """The codec's conversion of one value to storage (a model instance stands for its key
    in a foreign key)."""
    to_db = codec.to_db
    if not isinstance(field, peewee.ForeignKeyField):
        return to_db
    rel_model, rel_name = field.rel_model, field.rel_field.name

    def convert(value: Any) -> Any:
        if isinstance(value, rel_model):
            value = getattr(value, rel_name)
        return to_db(value)

    return convert


def rows_argument(rows: object) -> None:
    """Refuse a ``rows`` argument that is not an iterable of rows (text and mappings are not)."""
    if isinstance(rows, (str, bytes, bytearray, dict)) or not isinstance(rows, Iterable):
        raise ValidationError(f"rows must be an iterable of dicts or tuples, not "
                              f"{type(rows).__name__}")


def _model_class(model: object) -> type[peewee.Model]:
    if not (isinstance(model, type) and model in ALL_MODELS):
        raise ValidationError("model must be a within_db model class, such as PredictionLog")
    return model


@public_api
def bulk_insert(model: type[peewee.Model], rows: Iterable[Row],
                batch_size: int | None = None, fields: list[str] | None = None) -> int:
    """Insert ``rows`` (dicts keyed by field or column name, or tuples in ``fields`` order).

    Every value goes through its field's codec, as in a model save; defaults apply to missing
    fields; every row's keys are checked. ``batch_size`` is the number of rows per COPY
    buffer on PostgreSQL (SQLite streams every row through one ``executemany``). All rows are
    written in one transaction, or none: a refused value or a constraint violation raises
    BulkInsertError naming the 0-based row position (and the constraint). Returns the count.
    """
    _model_class(model)
    rows_argument(rows)
    check.optional_integer(batch_size, "batch_size", low=1, high=1_000_000)
    if fields is not None:
        check.text_list(fields, "fields", max_items=200)
    db = bound()
    all_fields = _insert_fields(model)
    tuple_fields = fields or [f.name for f in all_fields]
    unknown = set(tuple_fields) - {f.name for f in all_fields}
    if unknown:
        raise ValidationError(f"unknown fields for {model.__name__}: {', '.join(sorted(unknown))}")
    converters = (_CopyConverters if db.bulk_text else _Converters)(model, all_fields,
                                                                     tuple_fields)
    iterator = iter(rows)
    first = next(iterator, _END)
    if first is _END:
        return 0
    try:
        convert = converters.for_row(first)
        head = convert(first)
    except (ValidationError, TypeError) as exc:
        raise _failed(db, BulkLoadFailed(0, cause=exc)) from None
    try:
        return db.bulk_load(model._meta.table_name, [f.column_name for f in all_fields],
                            itertools.chain((head,), map(convert, iterator)),
                            batch_size or DEFAULT_BATCH)
    except BulkLoadFailed as exc:
        raise _failed(db, exc) from None


def _failed(db: Backend, exc: BulkLoadFailed) -> BulkInsertError:
    position = exc.position
    if exc.cause is not None:
        if isinstance(exc.cause, ValidationError):
            message = str(exc.cause)
        elif isinstance(exc.cause, (TypeError, KeyError, IndexError)):
            message = "expected a dict or a tuple"
        else:
            raise exc.cause
        return BulkInsertError(f"row {position}: {message}; nothing was written",
                               position=position)
    if exc.integrity is None:
        return BulkInsertError(f"row {position} has a value of the wrong type or size for its "
                               "column; nothing was written", position=position)
    found = violation(exc.integrity, db)
    if found is not None and found.kind == "no_partition":
        return BulkInsertError(
            f"row {position} falls in a month without a partition of {found.name}; create it "
            "with `within-db partitions ensure` (--from YYYY-MM for past months); nothing "
            "was written", position=position, constraint="no_partition")
    name = (found.name or found.kind) if found else "a constraint"
    return BulkInsertError(f"row {position} violates {name}; nothing was written",
                           position=position, constraint=name)
