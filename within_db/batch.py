"""Bulk writes and streaming reads for batch ML jobs; the contract here is throughput.

``bulk_insert`` renders one INSERT and feeds sqlite3's ``executemany`` on SQLite, and streams
``COPY ... FROM STDIN`` on PostgreSQL, all in one transaction. ``stream`` iterates a query in
constant memory: a server-side cursor inside a transaction on PostgreSQL (no WITH HOLD, so
rows flow as they are produced), the lazy cursor on SQLite.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeAlias

import peewee

from within_db.db import Backend, BulkLoadFailed, bound
from within_db.errors import BulkInsertError, ConfigurationError, ValidationError
from within_db.fields import MoneyField, UTCDateTimeField, format_utc, storage_field, to_micros
from within_db.integrity import violation

if TYPE_CHECKING:
    import pandas

__all__ = ["DEFAULT_BATCH", "DEFAULT_CHUNK", "Row", "bulk_insert", "stream", "to_dataframe"]

DEFAULT_BATCH = 10_000
DEFAULT_CHUNK = 2_000
_PASSTHROUGH = (peewee.IntegerField, peewee.FloatField, peewee.CharField, peewee.TextField,
                peewee.BooleanField)
#: a row for ``bulk_insert``: a dict keyed by field name, or a tuple in ``fields`` order
Row: TypeAlias = dict[str, Any] | Sequence[Any]


def _insert_fields(model: type[peewee.Model]) -> list[peewee.Field]:
    return [f for f in model._meta.sorted_fields if not isinstance(f, peewee.AutoField)]


def _converter(field: peewee.Field) -> Callable[[Any], Any] | None:
    """Return the to-storage conversion of a field, or None where values pass as they are."""
    target = storage_field(field)
    if isinstance(target, peewee.JSONField):
        return json.dumps
    if isinstance(target, UTCDateTimeField):
        return format_utc
    if isinstance(target, MoneyField):
        return to_micros
    if isinstance(target, peewee.DateField) and type(target).__module__ == "peewee":
        return _date_text
    if isinstance(target, _PASSTHROUGH) and type(target).__module__ == "peewee":
        return None  # the driver binds these natively; the database checks the type
    return target.db_value


def _date_text(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)


_MISSING = object()


def _rows(fields: list[peewee.Field], rows: Iterable[Row],
          tuple_fields: list[str]) -> Iterator[tuple[Any, ...]]:
    """Yield storage-ready tuples; raise BulkInsertError naming the row position."""
    plan = []
    for f in fields:
        alias = f.column_name if f.column_name != f.name else None
        required = not f.null and f.default is None
        plan.append((f.name, alias, _converter(f), f.default, callable(f.default), required))
    known = {f.name for f in fields} | {f.column_name for f in fields}
    for position, row in enumerate(rows):
        try:
            if isinstance(row, dict):
                given = row
                if position == 0 and not set(row) <= known:  # checked once: a hot loop
                    raise ValidationError(f"unknown fields {', '.join(sorted(set(row) - known))}")
            else:
                if len(row) != len(tuple_fields):
                    raise ValidationError(f"expected {len(tuple_fields)} values, got {len(row)}")
                given = dict(zip(tuple_fields, row, strict=True))
            values = []
            for name, alias, convert, default, is_callable, required in plan:
                value = given.get(name, _MISSING)
                if value is _MISSING and alias is not None:
                    value = given.get(alias, _MISSING)
                if value is _MISSING:
                    if required:
                        raise ValidationError(f"missing required field {name!r}")
                    value = default() if is_callable else default
                if convert is not None and value is not None:
                    value = convert(value)
                values.append(value)
            yield tuple(values)
        except (ValidationError, ValueError, TypeError) as exc:
            raise BulkInsertError(f"row {position}: {exc}; nothing was written",
                                  position=position) from None


def bulk_insert(model: type[peewee.Model], rows: Iterable[Row], batch_size: int | None = None,
                fields: list[str] | None = None) -> int:
    """Insert ``rows`` (dicts keyed by field name, or tuples in ``fields`` order) atomically.

    ``batch_size`` is the number of rows serialised per COPY buffer on PostgreSQL (SQLite
    streams every row through one ``executemany``). Values go through the same conversions
    as a model save; defaults apply to missing fields. All rows are written in one
    transaction, or none: a constraint violation raises BulkInsertError naming the 0-based
    row position and the constraint. Returns the count.
    """
    db = bound()
    all_fields = _insert_fields(model)
    tuple_fields = fields or [f.name for f in all_fields]
    unknown = set(tuple_fields) - {f.name for f in all_fields}
    if unknown:
        raise ValidationError(f"unknown fields for {model.__name__}: {', '.join(sorted(unknown))}")
    batch_size = batch_size or DEFAULT_BATCH
    formatters = [_copy_formatter(f) for f in all_fields]
    try:
        return db.bulk_load(model._meta.table_name, [f.column_name for f in all_fields],
                            _rows(all_fields, rows, tuple_fields), formatters, batch_size)
    except BulkLoadFailed as exc:
        raise _failed(db, exc) from None


def _failed(db: Backend, exc: BulkLoadFailed) -> BulkInsertError:
    position = exc.position
    if exc.integrity is None:
        return BulkInsertError(f"row {position} has a value of the wrong type or size for its "
                               "column; nothing was written", position=position)
    found = violation(exc.integrity, db)
    name = (found.name or found.kind) if found else "a constraint"
    return BulkInsertError(f"row {position} violates {name}; nothing was written",
                           position=position, constraint=name)


# -- PostgreSQL COPY -------------------------------------------------------------------------

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _escape(value: str) -> str:
    return value.translate(_ESCAPES)


def _bool_text(value: Any) -> str:
    return "t" if value else "f"


def _copy_formatter(field: peewee.Field) -> Callable[[Any], str]:
    """Return value -> COPY text for the storage values ``_rows`` produced for ``field``."""
    target = storage_field(field)
    if isinstance(target, peewee.BooleanField):
        return _bool_text
    if isinstance(target, peewee.FloatField):
        return repr
    if isinstance(target, (peewee.IntegerField, UTCDateTimeField, peewee.UUIDField,
                           peewee.DateField)):
        return str  # digits, fixed-format timestamps, hex and ISO dates need no escaping
    return _copy_text


def _copy_text(value: Any) -> str:
    if value is True or value is False:
        return _bool_text(value)
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return _escape(str(value))


# -- streaming reads ------------------------------------------------------------------------


def stream(query: peewee.SelectBase, chunk_size: int = DEFAULT_CHUNK) -> Iterator[Any]:
    """Yield the rows of ``query`` (dicts, tuples or models, as the query says) lazily.

    Memory stays flat: PostgreSQL reads through a server-side cursor declared inside a
    transaction (opened here if the caller has none; psycopg2's named cursors would need
    WITH HOLD, which builds the whole result first), SQLite through its lazy cursor.
    """
    db = bound()
    sql, params = query.sql()
    with db.streaming_cursor(sql, params) as (cursor, fetch):
        yield from _convert(db, query, cursor, fetch, chunk_size)


def _convert(db: Backend, query: peewee.SelectBase, cursor: Any,
             fetchmany: Callable[[int], list[Any]], chunk_size: int) -> Iterator[Any]:
    chunk = fetchmany(chunk_size)
    if not chunk:
        return
    wrapper = query._get_cursor_wrapper(cursor)  # type: ignore[attr-defined]  # private
    wrapper.initialize()
    if type(wrapper) is not peewee.ModelDictCursorWrapper:
        process = wrapper.process_row  # tuples, models: peewee's own row building
        while chunk:
            for row in chunk:
                yield process(row)
            chunk = fetchmany(chunk_size)
        return
    # dicts, the common ML case: convert only columns whose driver value needs it
    readers = {i: _reader(wrapper.fields[i], conv, db)
               for i, conv in enumerate(wrapper.converters)
               if conv is not None and _needs_conversion(wrapper.fields[i])}
    build = _dict_builder(wrapper.unique_columns, {i: r for i, r in readers.items() if r})
    while chunk:
        yield from map(build, chunk)
        chunk = fetchmany(chunk_size)


def _dict_builder(names: list[str], readers: dict[int, Callable[[Any], Any]]
                  ) -> Callable[[tuple[Any, ...]], dict[str, Any]]:
    """Compile ``row -> dict`` for these columns, as namedtuple compiles its class.

    A dict display with the conversions inlined is as fast as hand-written code; names are
    embedded with repr(), so no column name can change the generated source.
    """
    env = {f"_c{i}": reader for i, reader in readers.items()}
    items = []
    for i, name in enumerate(names):
        value = (f"(_c{i}(r[{i}]) if r[{i}] is not None else None)" if i in readers
                 else f"r[{i}]")
        items.append(f"{str(name)!r}: {value}")
    build: Callable[[tuple[Any, ...]], dict[str, Any]] = eval(  # noqa: S307
        "lambda r: {" + ", ".join(items) + "}", env)
    return build


def _reader(field: peewee.Field | None, default: Callable[[Any], Any],
            db: Backend) -> Callable[[Any], Any] | None:
    """The cheapest exact conversion of a driver value for the hot loop (None: keep it)."""
    target = storage_field(field) if field is not None else None
    if isinstance(target, UTCDateTimeField):
        return _as_utc if db.native_datetimes else dt.datetime.fromisoformat
    if isinstance(target, peewee.JSONField) and type(target).__module__ == "peewee":
        return None if db.native_json else json.loads
    if isinstance(target, peewee.UUIDField) and not isinstance(field, peewee.ForeignKeyField):
        return uuid.UUID
    return default


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC)


def _needs_conversion(field: peewee.Field | None) -> bool:
    if field is None:
        return True
    target = storage_field(field)
    # the drivers already return int, float and str for these plain peewee columns
    return not (type(target).__module__ == "peewee" and isinstance(target, _PASSTHROUGH)
                and not isinstance(target, peewee.BooleanField))


# -- dataframes ---------------------------------------------------------------------------


def _dtype_of(field: peewee.Field) -> str | None:
    target = storage_field(field)
    if isinstance(target, MoneyField):
        return "float64"  # units as floats for modelling; query directly for exact Decimal
    if isinstance(target, UTCDateTimeField):
        return "datetime64[ns, UTC]"
    if isinstance(target, peewee.DateField):
        return "datetime64[ns]"
    if isinstance(target, peewee.BooleanField):
        return "boolean"
    if isinstance(target, (peewee.IntegerField, peewee.AutoField)):
        return "Int64"
    if isinstance(target, peewee.FloatField):
        return "float64"
    if isinstance(target, (peewee.CharField, peewee.TextField, peewee.UUIDField)):
        return "string"
    return None  # JSON and anything else stay Python objects


def to_dataframe(query: peewee.Select) -> pandas.DataFrame:
    """Return a pandas DataFrame of ``query`` typed from its fields (needs the ``ml`` extra).

    Integers become nullable Int64, dates datetime64, instants datetime64 in UTC, money
    float64 units, text and UUIDs pandas strings; JSON columns stay Python objects.
    """
    try:
        import pandas as pd
    except ImportError:
        raise ConfigurationError(
            "to_dataframe needs pandas: pip install 'within_db[ml]'") from None
    dtypes = {}
    for node in query.selected_columns:
        field = node.unwrap() if isinstance(node, peewee.Node) else node
        if isinstance(field, peewee.Field):
            name = node.name if isinstance(node, peewee.Alias) else field.name
            dtypes[name] = _dtype_of(field)
    rows = list(stream(query.dicts()))
    frame = pd.DataFrame.from_records(rows, columns=list(dtypes) or None)
    for column, dtype in dtypes.items():
        if dtype is None:
            continue
        values = frame[column]
        if dtype.startswith("datetime64"):
            frame[column] = pd.to_datetime(values, utc=dtype.endswith("UTC]"))
        elif dtype == "string":
            frame[column] = values.map(lambda v: None if v is None else str(v)).astype(dtype)
        else:
            frame[column] = values.astype("float64" if dtype == "float64" else dtype)
    return frame
