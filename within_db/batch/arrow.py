"""Typed Arrow record batches of a query, streamed in flat memory (needs the ``lake`` extra).

Types come from the fields' codecs (``fields.Codec.arrow``), never from the values; rows come
through the same server-side cursor and replica routing as ``stream``. pyarrow is imported
when called, so ``import within_db`` never needs it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import peewee
import psycopg2

from within_db import boundary as check
from within_db.boundary import public_api, translate
from within_db.db import Backend, bound
from within_db.errors import ConfigurationError, ValidationError
from within_db.fields import codec_of

if TYPE_CHECKING:
    import pyarrow

__all__ = ["DEFAULT_ARROW_BATCH", "arrow_schema", "require_pyarrow", "to_arrow"]

#: rows per record batch: about 3 MB of prediction logs (and the driver rows behind them)
DEFAULT_ARROW_BATCH = 16_384


def require_pyarrow() -> Any:
    """Return the pyarrow module; ConfigurationError naming the extra when it is missing."""
    try:
        import pyarrow
    except ImportError:
        raise ConfigurationError(
            "Arrow and Parquet need pyarrow: pip install 'within_db[lake]'") from None
    return pyarrow


def _columns(query: peewee.Select) -> list[tuple[str, peewee.Field, bool]]:
    """(name, field, nullable) of each selected column; ValidationError for an expression.

    A column is named as the table names it (``model_version_id``, as ``to_dict()`` keys
    it), an aliased field by its alias. NOT NULL holds only for the query's own model: a
    joined model's columns can be NULL in a LEFT JOIN.
    """
    out = []
    for node in query.selected_columns:
        target = node.unwrap() if isinstance(node, peewee.Node) else node
        if not isinstance(target, peewee.Field) or codec_of(target).arrow is None:
            shown = node.name if isinstance(node, peewee.Alias) else type(target).__name__
            raise ValidationError(
                f"to_arrow types every column from its field, and {shown!r} is not a "
                "within_db field; select fields (aliases are fine) and compute in Arrow, "
                "DuckDB or pandas")
        name = node.name if isinstance(node, peewee.Alias) else target.column_name
        model = getattr(query, "model", None)
        out.append((name, target, bool(target.null) or target.model is not model))
    names = [name for name, _, _ in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValidationError(f"to_arrow needs distinct column names; alias the repeated "
                              f"{', '.join(repeated)}")
    return out


def _arrow_type(pa: Any, name: str) -> Any:
    types = {"bool": pa.bool_(), "int64": pa.int64(), "double": pa.float64(),
             "string": pa.string(), "date32[day]": pa.date32(),
             "timestamp[us, tz=UTC]": pa.timestamp("us", tz="UTC")}
    return types[name]


def arrow_schema(query: peewee.Select) -> pyarrow.Schema:
    """Return the Arrow schema ``to_arrow(query)`` produces (no query is run)."""
    pa = require_pyarrow()
    return pa.schema([pa.field(name, _arrow_type(pa, codec_of(field).arrow or ""), nullable)
                      for name, field, nullable in _columns(query)])


@public_api
def to_arrow(query: peewee.Select,
             batch_size: int = DEFAULT_ARROW_BATCH) -> pyarrow.RecordBatchReader:
    """Return a ``pyarrow.RecordBatchReader`` over the rows of ``query``, typed by its fields.

    The reader carries its schema before any row is read, yields record batches of at most
    ``batch_size`` rows as they arrive (iterate it, ``read_next_batch()``, or hand it to
    ``pyarrow.dataset.write_dataset``, DuckDB or Polars; ``read_all()`` builds one Table), and
    holds one batch at a time: the rows stream through ``stream``'s server-side cursor (a
    transaction on PostgreSQL that ends with the reader; close or exhaust it), from the
    replica when one is configured. Types: integers (ids, keys) int64, floats double, booleans
    bool, text string, dates date32, instants ``timestamp[us, tz=UTC]``, UUIDs their canonical
    text, money int64 micros under its ``*_micros`` column name, JSON its RFC 8785 canonical
    text (identical on both backends). Columns are named as the table names them
    (``model_version_id``), aliases as aliased. Raises ValidationError for a column that is not
    a field, ConfigurationError without pyarrow (``pip install 'within_db[lake]'``).
    """
    if not isinstance(query, peewee.Select):
        raise ValidationError(f"query must be a peewee select query, not {type(query).__name__}")
    check.integer(batch_size, "batch_size", low=1, high=1_000_000)
    pa = require_pyarrow()
    columns = _columns(query)
    schema = arrow_schema(query)
    return pa.RecordBatchReader.from_batches(
        schema, _batches(bound(), query, columns, schema, batch_size))


def _converter(pa: Any, field: peewee.Field, target: Any,
               db: Backend) -> Callable[[tuple[Any, ...]], Any]:
    """The column conversion: driver values (one column of a chunk) -> an Arrow array."""
    read = codec_of(field).arrow_reader(db)
    if read is str:  # ISO text that Arrow parses itself, vectorised
        return lambda values: pa.array(values, pa.string()).cast(target)
    if read is None:
        return lambda values: pa.array(values, target)
    function: Callable[[Any], Any] = read

    def convert(values: tuple[Any, ...]) -> Any:
        return pa.array([None if v is None else function(v) for v in values], target)

    return convert


def _batches(db: Backend, query: peewee.Select, columns: list[tuple[str, peewee.Field, bool]],
             schema: Any, batch_size: int) -> Iterator[Any]:
    # pyarrow re-raises what the generator raises: driver errors leave as WithinDBError
    try:
        yield from _read(db, query, columns, schema, batch_size)
    except (peewee.PeeweeException, psycopg2.Error, sqlite3.Error) as exc:
        raise translate(exc) from None


def _read(db: Backend, query: peewee.Select, columns: list[tuple[str, peewee.Field, bool]],
          schema: Any, batch_size: int) -> Iterator[Any]:
    pa = require_pyarrow()
    converters = [_converter(pa, field, schema.field(i).type, db)
                  for i, (_, field, _) in enumerate(columns)]
    sql, params = query.sql()
    with db.reading_cursor(sql, params, batch_size) as (_, fetch):
        chunk = fetch(batch_size)
        while chunk:
            arrays = [convert(values) for convert, values in
                      zip(converters, zip(*chunk, strict=True), strict=True)]
            del chunk  # the driver's rows go before the next fetch: one chunk at a time
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
            chunk = fetch(batch_size)
