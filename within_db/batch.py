"""Bulk writes and streaming reads for batch ML jobs; the contract here is throughput.

``bulk_insert`` renders one INSERT and feeds sqlite3's ``executemany`` on SQLite, and streams
``COPY ... FROM STDIN`` on PostgreSQL, all in one transaction. ``stream`` iterates a query in
constant memory: a server-side cursor inside a transaction on PostgreSQL (no WITH HOLD, so
rows flow as they are produced), the lazy cursor on SQLite.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import peewee

from within_db import boundary as check
from within_db.boundary import public_api
from within_db.db import Backend, BulkLoadFailed, bound, database, make_database, redact_url
from within_db.errors import BulkInsertError, ConfigurationError, ValidationError
from within_db.fields import INLINE_ENV, SafeText, codec_of, copy_escape
from within_db.integrity import violation
from within_db.models import ALL_MODELS

if TYPE_CHECKING:
    import dask.dataframe
    import pandas

__all__ = [
    "DEFAULT_BATCH", "DEFAULT_CHUNK", "KeyRange", "MAX_PARTITIONS", "Row", "bulk_insert",
    "partitions", "stream", "to_dask", "to_dataframe",
]

DEFAULT_BATCH = 10_000
DEFAULT_CHUNK = 2_000
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
    """Compiled row converters of one bulk insert, cached by the rows' key set."""

    def __init__(self, model: type[peewee.Model], fields: list[peewee.Field],
                 tuple_fields: list[str], text: bool):
        self.model, self.fields, self.text = model, fields, text
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
        env: dict[str, Any] = {**INLINE_ENV, "_esc": copy_escape, "_other": self.convert,
                               "_len": len, "_VE": ValidationError}
        # another key set (or tuple length) goes to the converter compiled for it: every
        # row's keys are checked, at the cost of one len() and the key lookups
        lines = ["def convert(r):", f"    if _len(r) != {len(row)}:", "        return _other(r)",
                 "    try:"]
        reads, values, convert_lines = [], [], []
        for i, field in enumerate(self.fields):
            codec = codec_of(field)
            env[f"_c{i}"] = _full(field, codec, self.text)
            x = f"x{i}"
            if field.name in given:
                reads.append(f"        {x} = r[{given[field.name]!r}]")
            elif not field.null and field.default is None:
                raise ValidationError(f"missing required field {field.name!r}")
            elif callable(field.default):
                env[f"_d{i}"] = field.default
                convert_lines.append(f"    {x} = _d{i}()")
            else:  # a constant default, converted once
                env[f"_k{i}"] = (("\\N" if self.text else None) if field.default is None
                                 else env[f"_c{i}"](field.default))
                values.append(f"_k{i}")
                continue
            # a try costs nothing until it catches; the refusal gains the model.field label
            env[f"_L{i}"] = f"{field.model.__name__}.{field.name}: "
            values.append(f"v{i}")
            convert_lines += ["    try:", f"        v{i} = {self._expression(x, i, field, codec)}",
                      "    except _VE as e:", f"        raise _VE(_L{i} + str(e)) from None"]
        lines += reads or ["        pass"]
        lines += ["    except (KeyError, IndexError, TypeError):", "        return _other(r)"]
        lines += convert_lines
        if self.text:  # an f-string of plain names: {v} is the value's str(), i.e. repr()
            lines.append("    return f'" + "\\t".join("{" + v + "}" for v in values) + "\\n'")
        else:
            lines.append("    return (" + ", ".join(values) + ",)")
        exec("\n".join(lines), env)  # noqa: S102 - generated from field metadata only, see above
        convert: Callable = env["convert"]
        return convert

    def _expression(self, x: str, i: int, field: peewee.Field, codec: Any) -> str:
        fast = codec.inline(x)
        if fast is None:
            value = f"_c{i}({x})"
        else:
            cond, expr, kind = fast
            if self.text:
                expr = _COPY_INLINE[kind].format(v=expr, y=f"y{i}")
            value = f"({expr} if {cond} else _c{i}({x}))"
        if field.null:
            null = "'\\\\N'" if self.text else "None"
            return f"({null} if {x} is None else {value})"
        return value


def _full(field: peewee.Field, codec: Any, text: bool) -> Callable[[Any], Any]:
    """The codec's full conversion of one value (to storage, or to COPY text)."""
    to_db, to_copy = codec.to_db, codec.to_copy
    if isinstance(field, peewee.ForeignKeyField):
        rel_model, rel_name = field.rel_model, field.rel_field.name

        def convert(value: Any) -> Any:
            if isinstance(value, rel_model):  # a model instance stands for its key
                value = getattr(value, rel_name)
            return to_copy(to_db(value)) if text else to_db(value)

        return convert
    if text:
        return lambda value: to_copy(to_db(value))
    return to_db


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
    converters = _Converters(model, all_fields, tuple_fields, db.bulk_text)
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
        field = node.unwrap() if isinstance(node, peewee.Node) else node
        if isinstance(field, peewee.Field):
            name = node.name if isinstance(node, peewee.Alias) else field.name
            dtypes[name] = _dtype_of(field)
    return dtypes


def _frame(query: peewee.Select, rows: list[dict[str, Any]]) -> pandas.DataFrame:
    """Build the typed DataFrame of ``query`` from its rows as dicts."""
    return _typed_frame(rows, _dtypes(query))


def _typed_frame(rows: list[dict[str, Any]], dtypes: dict[str, str | None]) -> pandas.DataFrame:
    """Build a DataFrame with these columns (all of them when ``dtypes`` is empty)."""
    try:
        import pandas as pd
    except ImportError:
        raise ConfigurationError(
            "to_dataframe needs pandas: pip install 'within_db[ml]'") from None
    frame = pd.DataFrame.from_records(rows, columns=list(dtypes) or None)
    for column, dtype in dtypes.items():
        values = frame[column]
        if dtype is None:
            continue
        if dtype.startswith("datetime64"):
            # the declared unit, whatever pandas infers from the values (or from none)
            frame[column] = pd.to_datetime(values, utc=dtype.endswith("UTC]")).astype(dtype)
        elif dtype == "string":
            frame[column] = values.map(lambda v: None if v is None else str(v)).astype(dtype)
        else:
            frame[column] = values.astype("float64" if dtype == "float64" else dtype)
    return frame


# -- parallel reads -------------------------------------------------------------------------

#: most ranges ``partitions`` makes (a bound value per range travels in one query)
MAX_PARTITIONS = 10_000
_UNSPLITTABLE = (("_limit", "LIMIT"), ("_offset", "OFFSET"), ("_group_by", "GROUP BY"),
                 ("_having", "HAVING"), ("_simple_distinct", "DISTINCT"))


@dataclass(frozen=True, repr=False)
class KeyRange:
    """One part of ``partitions()``: the rows of its query with ``lower <= key < upper``.

    ``None`` leaves that side open; ``empty`` marks the extra parts of an empty table, whose
    query selects nothing. ``query`` is the caller's query restricted to the range.
    """

    query: peewee.Select
    key: str
    lower: Any = None
    upper: Any = None
    empty: bool = False

    def __repr__(self) -> str:
        if self.empty:
            return f"<KeyRange {self.key}: empty>"
        return f"<KeyRange {self.lower!r} <= {self.key} < {self.upper!r}>"


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARTITIONS:
        shown = value if isinstance(value, int) else type(value).__name__  # never a big repr
        raise ValidationError(f"{name} must be a whole number from 1 to {MAX_PARTITIONS}, "
                              f"got {shown}")
    return value


def _index_leaders(model: type[peewee.Model]) -> list[peewee.Field]:
    """The fields that lead an index covering every row (partial indexes left out)."""
    meta = model._meta
    leaders = [meta.primary_key] if isinstance(meta.primary_key, peewee.Field) else []
    for index in [*meta.fields_to_index(), *getattr(meta, "indexes", [])]:
        expressions = getattr(index, "_expressions", None)
        if expressions and getattr(index, "_where", None) is None \
                and isinstance(expressions[0], peewee.Field):
            leaders.append(expressions[0])
    name = getattr(meta, "partition_by", None)
    if name:  # a partitioned table prunes to the partitions a range touches
        leaders.append(meta.fields[name])
    return leaders


def _split_key(query: Any, key: peewee.Field | str | None) -> peewee.Field:
    """Return the field ``query`` can be split on; ValidationError naming what would work."""
    if not isinstance(query, peewee.ModelSelect) or isinstance(query, peewee.CompoundSelectQuery):
        raise ValidationError("partitions splits a select over one model, e.g. "
                              f"PredictionLog.select(); got {type(query).__name__}")
    for attr, clause in _UNSPLITTABLE:
        if getattr(query, attr, None) or (attr == "_simple_distinct"
                                          and getattr(query, "_distinct", None) is not None):
            raise ValidationError(f"cannot split a query with {clause}: ranges of a key would "
                                  "change its result; split the query without it")
    model = query.model
    meta = model._meta
    table = meta.table_name
    if key is None:
        name = getattr(meta, "partition_by", None)
        field = meta.fields[name] if name else meta.primary_key
        if isinstance(field, peewee.CompositeKey) or not isinstance(field, peewee.Field):
            raise ValidationError(f"{table} has a composite primary key; pass key=")
    else:
        field = meta.fields.get(key) if isinstance(key, str) else key
        if not isinstance(field, peewee.Field) or field.model is not model:
            shown = repr(key)[:80] if isinstance(key, str | peewee.Field) else type(key).__name__
            raise ValidationError(f"{shown} is not a column of {table}; pass one of "
                                  f"{', '.join(sorted(meta.fields))}")
    leaders = _index_leaders(model)
    if not any(field is f for f in leaders):
        names = sorted({f.name for f in leaders if not f.null})
        raise ValidationError(f"{table}.{field.column_name} leads no index, so every range would "
                              f"scan the table; indexed keys: {', '.join(names)}")
    if field.null:
        raise ValidationError(f"{table}.{field.column_name} is nullable: rows with NULL would "
                              "fall in no range; pick a NOT NULL key")
    return field


@public_api
def partitions(query: peewee.Select, n: int,
               key: peewee.Field | str | None = None) -> list[KeyRange]:
    """Split ``query`` into ``n`` ranges of an indexed key that hold each of its rows once.

    The key defaults to the model's ``Meta.partition_by`` column, else its primary key; a
    given ``key`` must be a NOT NULL field of the query's model that leads an index. Bounds
    are the key's quantiles over the query's rows (a count and an ordered scan of the key, on
    the replica when one is configured), so skewed keys still give even ranges; a value shared
    by many rows stays in one range. Ranges are half-open and the outer ones unbounded, so a
    row written after the split still falls in exactly one. Always ``n`` ranges: with fewer
    rows than ``n`` some are empty. Raises ValidationError for a query with LIMIT, OFFSET,
    GROUP BY, HAVING or DISTINCT, for an unindexed or nullable key, and for ``n`` outside
    1..10,000. UUID keys work: both backends order them alike.
    """
    n = _count(n, "n")
    field = _split_key(query, key)
    name = field.name

    def plan(_db: Any) -> tuple[int, list[Any]]:
        total = query.count()
        positions = sorted({k * total // n for k in range(1, n)}) if total else []
        if not positions:
            return total, []
        ordered = query.select(
            field.alias("k"), peewee.fn.row_number().over(order_by=[field]).alias("rn"),
        ).order_by().alias("ordered")
        picked = (peewee.Select([ordered], [ordered.c.k, ordered.c.rn])
                  .where(ordered.c.rn.in_([p + 1 for p in positions]))
                  .order_by(ordered.c.rn).bind(database))
        at = {rn - 1: field.python_value(k) for k, rn in picked.tuples()}
        return total, [at[p] for p in positions if p in at]

    total, found = bound().read(plan)
    if total == 0 or not found:  # an empty table: one open range, the rest select nothing
        nothing = query.where(peewee.SQL("1 = 0"))
        return [KeyRange(query, name)] + [KeyRange(nothing, name, empty=True)
                                          for _ in range(n - 1)]
    # with fewer rows than ranges, repeat the last bound: [b, b) is empty
    edges = [None, *found, *[found[-1]] * (n - 1 - len(found)), None]
    ranges = []
    for lower, upper in zip(edges, edges[1:], strict=False):
        part = query
        if lower is not None:
            part = part.where(field >= lower)
        if upper is not None:
            part = part.where(field < upper)
        ranges.append(KeyRange(part, name, lower, upper))
    return ranges


class _Source:
    """Where a Dask task reads: a database URL (and its replica's), never a live connection.

    Its repr and Dask token carry no password; the URLs travel inside the pickled task only,
    because a worker needs them to connect (give workers a password-free URL and PGPASSWORD,
    ~/.pgpass or a service file to keep the secret out of the graph entirely).
    """

    def __init__(self, db: Backend):
        self.url = db.portable_url()
        replica = db.replica
        self.replica = replica.db.url if replica is not None else None
        self.max_lag = replica.max_lag if replica is not None else 0.0
        self.wait = replica.wait if replica is not None else 0.0
        self.after = db.read_position()
        self.token = uuid.uuid4().hex

    def __repr__(self) -> str:
        replica = f" replica={redact_url(self.replica)}" if self.replica else ""
        return f"<within_db source {redact_url(self.url)}{replica}>"

    def __dask_tokenize__(self) -> str:
        return self.token

    def open(self) -> Backend:
        """Build the database to read from in this process, read-only."""
        db = make_database(self.url, read_only=True)
        if self.replica:
            db.use_replica(self.replica, max_lag=self.max_lag, wait=self.wait)
        return db


#: a column as a task sees it: (dict key, model class or None, field name or None)
_Column: TypeAlias = tuple[str, Any, str | None]


def _columns(query: peewee.Select) -> list[_Column]:
    """Name every selected column the way ``to_dataframe`` does, by reference to its field."""
    out: list[_Column] = []
    for node in query.selected_columns:
        target = node.unwrap() if isinstance(node, peewee.Node) else node
        if isinstance(node, peewee.Alias):
            name = node.name
        elif isinstance(target, peewee.Field):
            name = target.name
        else:
            raise ValidationError("to_dask needs a name for every column: alias expressions, "
                                  "e.g. fn.COUNT(PredictionLog.id).alias('n')")
        if isinstance(target, peewee.Field):
            out.append((name, target.model, target.name))
        else:
            out.append((name, None, None))
    return out


class _RangeReader:
    """The Dask task: run one range's SQL through the streaming path on its own connection.

    Tasks carry SQL text, parameters and fields by reference (model class, field name), never
    peewee query objects: those hold the database they last ran on.
    """

    def __init__(self, source: _Source, chunk_size: int, columns: list[_Column],
                 dtypes: dict[str, str | None]):
        self.source = source
        self.chunk_size = chunk_size
        self.columns = columns
        self.dtypes = dtypes

    def __repr__(self) -> str:
        return f"<within_db range reader of {self.source!r}>"

    def __dask_tokenize__(self) -> str:
        return self.source.token

    def __call__(self, compiled: tuple[str, tuple[Any, ...]] | None) -> pandas.DataFrame:
        rows: list[dict[str, Any]] = []
        if compiled is not None:
            db = self.source.open()
            try:
                after = self.source.after
                with db.read_your_writes(after=after) if after else contextlib.nullcontext():
                    rows = self._read(db, *compiled)
            finally:
                db.close()
        frame = _typed_frame(rows, self.dtypes)
        untyped = {c: object for c, t in self.dtypes.items() if t is None}
        return frame.astype(untyped) if untyped else frame  # as in the empty meta

    def _read(self, db: Backend, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        readers = {}
        for i, (_, model, name) in enumerate(self.columns):
            if model is not None:
                field = model._meta.fields[name]
                reader = _reader(field, field.python_value, db)
                if reader is not None:
                    readers[i] = reader
        build = _dict_builder([c[0] for c in self.columns], readers)
        rows: list[dict[str, Any]] = []
        with db.reading_cursor(sql, params, self.chunk_size) as (_, fetch):
            chunk = fetch(self.chunk_size)
            while chunk:
                rows.extend(map(build, chunk))
                chunk = fetch(self.chunk_size)
        return rows


@public_api
def to_dask(query: peewee.Select, npartitions: int, key: peewee.Field | str | None = None,
            chunk_size: int = DEFAULT_CHUNK) -> dask.dataframe.DataFrame:
    """Return a Dask DataFrame of ``query`` read in ``npartitions`` key ranges in parallel.

    Needs the ``dask`` extra. The ranges are ``partitions(query, npartitions, key)``; each
    task opens its own read-only connection from the URL (the replica's when one is
    configured; inside ``read_your_writes()`` it waits for this thread's writes) and streams
    its range. Columns have ``to_dataframe``'s dtypes (expression columns, which must be
    aliased, are objects). Each range is read in its own transaction, so the parts are not one
    snapshot: rows written meanwhile may or may not appear, never twice. Raises
    ConfigurationError for an in-memory SQLite database, which other processes cannot see.
    """
    try:
        import dask
        import dask.dataframe as dd
    except ImportError:
        raise ConfigurationError(
            "to_dask needs dask: pip install 'within_db[dask]'") from None
    npartitions = _count(npartitions, "npartitions")
    _split_key(query, key)  # refuses what partitions() would, before anything else runs
    check.integer(chunk_size, "chunk_size", low=1, high=1_000_000)
    columns = _columns(query)
    db = bound()
    source = _Source(db)
    dtypes = {name: None for name, _, _ in columns} | _dtypes(query)
    context = db.get_sql_context
    compiled = [None if part.empty else tuple(context().parse(part.query.dicts()))
                for part in partitions(query, npartitions, key=key)]
    reader = _RangeReader(source, chunk_size, columns, dtypes)
    # dask turns object columns into Arrow strings by default: JSON stays Python objects here
    with dask.config.set({"dataframe.convert-string": False}):
        return dd.from_map(reader, compiled, meta=reader(None), label="within-db-read")
