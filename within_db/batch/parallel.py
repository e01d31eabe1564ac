"""Parallel reads: ``partitions`` splits a query into key ranges, ``to_dask`` reads them.

Each Dask task opens its own read-only connection from the database URL (the replica's when
one is configured) and streams its range through the same row conversion as ``stream``.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import peewee

from within_db import boundary as check
from within_db.batch.stream import DEFAULT_CHUNK, _dict_builder, _dtypes, _reader, _typed_frame
from within_db.boundary import public_api
from within_db.db import Backend, bound, database, make_database, redact_url
from within_db.errors import ConfigurationError, ValidationError

if TYPE_CHECKING:
    import dask.dataframe
    import pandas

__all__ = ["KeyRange", "MAX_PARTITIONS", "partitions", "to_dask"]

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
    key = meta.primary_key  # a Field, a CompositeKey (a Field too, of no column) or False
    leaders = [key] if isinstance(key, peewee.Field) and not isinstance(key, peewee.CompositeKey) \
        else []
    for index in meta.fields_to_index():  # field indexes and Meta.indexes, partial ones too
        expressions = getattr(index, "_expressions", None)  # None: an index given as SQL
        if expressions and index._where is None and isinstance(expressions[0], peewee.Field):
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
        if getattr(query, attr) or (attr == "_simple_distinct"
                                    and query._distinct is not None):  # type: ignore[attr-defined]
            raise ValidationError(f"cannot split a query with {clause}: ranges of a key would "
                                  "change its result; split the query without it")
    model = query.model
    meta = model._meta
    table = meta.table_name
    if key is None:
        name = getattr(meta, "partition_by", None)
        field = meta.fields[name] if name else meta.primary_key
        if isinstance(field, peewee.CompositeKey) or not isinstance(field, peewee.Field):
            raise ValidationError(f"{table} has no single-column primary key; pass key=")
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
        target = node.unwrap()
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
        return _typed_frame(rows, self.dtypes)

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
