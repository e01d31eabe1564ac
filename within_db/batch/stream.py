"""Streaming reads and dataframes: ``stream`` in constant memory, ``to_dataframe`` typed.

PostgreSQL reads through a server-side cursor inside a transaction (no WITH HOLD, so rows flow
as they are produced), SQLite through its lazy cursor; driver values are converted by the
fields' codecs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import peewee

from within_db import boundary as check
from within_db.boundary import public_api
from within_db.db import Backend, bound
from within_db.errors import ConfigurationError, ValidationError
from within_db.fields import codec_of

if TYPE_CHECKING:
    import pandas

__all__ = ["DEFAULT_CHUNK", "stream", "to_dataframe"]

DEFAULT_CHUNK = 2_000


# -- streaming reads ------------------------------------------------------------------------


@public_api
def stream(query: peewee.SelectBase, chunk_size: int = DEFAULT_CHUNK) -> Iterator[Any]:
    """Yield the rows of ``query`` (dicts, tuples or models, as the query says) lazily.

    Memory stays flat: PostgreSQL reads through a server-side cursor declared inside a
    transaction (opened here if the caller has none; psycopg2's named cursors would need
    WITH HOLD, which builds the whole result first), SQLite through its lazy cursor. With a
    replica configured the rows come from it (see ``within_db.connect``), unless the caller is
    in a transaction on the primary. Arguments are checked when called, before the first row
    is asked for.
    """
    if not isinstance(query, peewee.SelectBase):
        raise ValidationError(f"query must be a peewee select query, not {type(query).__name__}")
    check.integer(chunk_size, "chunk_size", low=1, high=1_000_000)
    return _stream(bound(), query, chunk_size)


def _stream(db: Backend, query: peewee.SelectBase, chunk_size: int) -> Iterator[Any]:
    sql, params = query.sql()
    with db.reading_cursor(sql, params, chunk_size) as (cursor, fetch):
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
               for i, conv in enumerate(wrapper.converters) if conv is not None}
    build = _dict_builder(wrapper.unique_columns, {i: r for i, r in readers.items() if r})
    while chunk:
        yield from map(build, chunk)
        chunk = fetchmany(chunk_size)


def _dict_builder(names: list[str], readers: dict[int, Callable]) -> Callable[[tuple], dict]:
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


def _reader(field: Any, default: Callable | None, db: Any) -> Callable | None:
    """The cheapest exact conversion of a driver value for the hot loop (None: keep it)."""
    if not isinstance(field, peewee.Field):
        return default
    codec = codec_of(field)
    if codec.python_type is object:  # a field without a codec: peewee's conversion
        return default
    return codec.reader(db)


# -- dataframes ---------------------------------------------------------------------------


def _dtype_of(field: peewee.Field) -> str | None:
    return codec_of(field).dtype  # None: JSON and anything else stay Python objects


@public_api
def to_dataframe(query: peewee.Select) -> pandas.DataFrame:
    """Return a pandas DataFrame of ``query`` typed from its fields (needs the ``ml`` extra).

    Integers become nullable Int64, dates datetime64, instants datetime64 in UTC, money
    float64 units, text and UUIDs pandas strings; JSON columns stay Python objects.
    """
    if not isinstance(query, peewee.Select):
        raise ValidationError(f"query must be a peewee select query, not {type(query).__name__}")
    try:
        import pandas  # noqa: F401 - checked before reading any row
    except ImportError:
        raise ConfigurationError(
            "to_dataframe needs pandas: pip install 'within_db[ml]'") from None
    return _frame(query, list(stream(query.dicts())))


def _dtypes(query: peewee.Select) -> dict[str, str | None]:
    """The declared pandas dtype of each field column of ``query``, by its dict key."""
    dtypes = {}
    for node in query.selected_columns:
        field = node.unwrap()
        if isinstance(field, peewee.Field):
            dtypes[node.name] = _dtype_of(field)  # an alias's name, else the field's
    return dtypes


def _frame(query: peewee.Select, rows: list[dict[str, Any]]) -> pandas.DataFrame:
    """Build the typed DataFrame of ``query`` from its rows as dicts.

    Every selected column is kept, expressions as objects: a row's keys name them (without
    rows, the aliased ones)."""
    names = list(rows[0]) if rows else [n.name for n in query.selected_columns
                                         if isinstance(n, (peewee.Alias, peewee.Field))]
    return _typed_frame(rows, dict.fromkeys(names) | _dtypes(query))


def _typed_frame(rows: list[dict[str, Any]], dtypes: dict[str, str | None]) -> pandas.DataFrame:
    """Build a DataFrame with these columns (all of them when ``dtypes`` is empty), each cast
    to its dtype (None: Python objects). ValidationError for dates pandas cannot hold."""
    import pandas as pd  # the callers checked that it is installed

    frame = pd.DataFrame.from_records(rows, columns=list(dtypes) or None)
    for column, dtype in dtypes.items():
        try:
            frame[column] = frame[column].astype(object if dtype is None else dtype)
        except pd.errors.OutOfBoundsDatetime:
            raise ValidationError(
                f"{column} holds a date outside pandas' {dtype} range (1677-09-22 to "
                "2262-04-11); leave the column out or filter those rows") from None
    return frame
