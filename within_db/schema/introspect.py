"""Read the live schema of a database: tables, columns, indexes, foreign keys, CHECKs.

Used by ``migrate check`` (drift) and by ``within-db inspect``; also the allow-list that user
supplied table and column names are checked against before any query is built.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import peewee

from within_db.boundary import public_api
from within_db.db import Backend, bound
from within_db.errors import ArgumentError

__all__ = [
    "Column", "ForeignKey", "Index", "Table", "describe", "require_column", "require_table",
    "table_names",
]


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    default: str | None


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]
    unique: bool
    where: str | None


@dataclass(frozen=True)
class ForeignKey:
    column: str
    ref_table: str
    ref_column: str
    on_delete: str


@dataclass
class Table:
    name: str
    columns: dict[str, Column] = field(default_factory=dict)
    indexes: dict[str, Index] = field(default_factory=dict)
    foreign_keys: dict[str, ForeignKey] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)
    # created by migrations only (models cannot declare them), so drift checks skip them
    triggers: dict[str, str] = field(default_factory=dict)
    primary_key: tuple[str, ...] = ()
    #: SQLite STRICT table (column types enforced); always False on PostgreSQL, which
    #: enforces types on every table
    strict: bool = False
    # PostgreSQL's partition key ("RANGE (created_at)") and the partitions under the table;
    # partitions are never listed as tables of their own
    partitioning: str | None = None
    partitions: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Columns in table order; indexes, foreign keys, CHECKs and triggers sorted by name,
        so equal schemas give equal documents whatever order the catalogue returns."""
        return {
            "table": self.name,
            "strict": self.strict,
            "primary_key": list(self.primary_key),
            "partitioning": self.partitioning,
            "partitions": self.partitions,
            "columns": [vars(c) for c in self.columns.values()],
            "indexes": [dict(vars(i), columns=list(i.columns))
                        for _, i in sorted(self.indexes.items())],
            "foreign_keys": [vars(f) for _, f in sorted(self.foreign_keys.items())],
            "checks": [{"name": k, "expression": v} for k, v in sorted(self.checks.items())],
            "triggers": [{"name": k, "definition": v} for k, v in sorted(self.triggers.items())],
        }


@public_api
def table_names(db: Backend) -> list[str]:
    """Return the database's table names (current schema on PostgreSQL), sorted."""
    return db.table_names()


@public_api
def describe(db: Backend, tables: list[str] | None = None) -> dict[str, Table]:
    """Return the live schema of ``tables`` (default: all) keyed by table name."""
    db = bound(db)
    if tables is None:
        names = table_names(db)
    else:
        if not isinstance(tables, (list, tuple)) or not all(isinstance(t, str) for t in tables):
            raise ArgumentError("tables must be a list of table names")
        valid = table_names(db)
        for name in tables:
            if name not in valid:
                raise ArgumentError(f'unknown table "{name}"; valid tables: '
                                    f'{", ".join(valid)}')
        names = list(tables)
    reader = _READERS[db.kind]
    return {name: reader(db, name) for name in names}


@public_api
def require_table(db: Backend, name: str) -> str:
    """Return ``name`` if it is a table here, else raise ArgumentError listing valid names."""
    valid = table_names(db)
    if not isinstance(name, str) or name not in valid:
        raise ArgumentError(f'unknown table "{name}"; valid tables: {", ".join(valid)}')
    return name


def require_column(table: Table, name: str) -> str:
    if not isinstance(name, str) or name not in table.columns:
        raise ArgumentError(
            f'unknown column "{name}" in table "{table.name}"; valid columns: '
            f'{", ".join(table.columns)}'
        )
    return name


# -- SQLite ---------------------------------------------------------------------------------

_CHECK_RE = re.compile(r'CONSTRAINT\s+"?(\w+)"?\s+CHECK\s*\(', re.IGNORECASE)


def _balanced(text: str, start: int) -> str:
    """Return the text inside the parenthesis opened just before ``start``."""
    depth, i, quote = 1, start, None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    raise ValueError("unbalanced parentheses in schema SQL")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _describe_sqlite(db: peewee.Database, name: str) -> Table:
    table = Table(name)
    q = _quote(name)
    info = db.execute_sql(f"PRAGMA table_info({q})").fetchall()
    for _cid, col, ctype, notnull, default, pk in info:
        table.columns[col] = Column(col, ctype.upper(), not notnull and not pk, default)
    table.primary_key = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
    index_sql = dict(db.execute_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (name,)
    ).fetchall())
    for _seq, iname, unique, origin, _partial in db.execute_sql(f"PRAGMA index_list({q})"):
        if origin == "pk" or iname.startswith("sqlite_autoindex"):
            continue
        cols = tuple(r[2] for r in db.execute_sql(f"PRAGMA index_info({_quote(iname)})"))
        sql = index_sql.get(iname) or ""
        where = sql.split(" WHERE ", 1)[1].strip() if " WHERE " in sql else None
        table.indexes[iname] = Index(iname, cols, bool(unique), where)
    for row in db.execute_sql(f"PRAGMA foreign_key_list({q})"):
        _id, _seq, ref_table, col, ref_col, _on_update, on_delete, _match = row
        table.foreign_keys[col] = ForeignKey(col, ref_table, ref_col or "id", on_delete.upper())
    (create_sql,) = db.execute_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    for match in _CHECK_RE.finditer(create_sql):
        table.checks[match.group(1)] = _balanced(create_sql, match.end()).strip()
    table.triggers = dict(db.execute_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
        "ORDER BY name", (name,)).fetchall())
    table.strict = bool(db.execute_sql(f"PRAGMA table_list({q})").fetchone()[5])
    return table


# -- PostgreSQL -----------------------------------------------------------------------------

_PG_ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL",
                 "d": "SET DEFAULT"}

_PG_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a
JOIN pg_class t ON t.oid = a.attrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = current_schema() AND t.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_PG_INDEXES = """
SELECT c.relname, ix.indisunique, ix.indisprimary, pg_get_expr(ix.indpred, ix.indrelid),
       array(SELECT a.attname FROM unnest(ix.indkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum
             ORDER BY k.ord)
FROM pg_index ix
JOIN pg_class c ON c.oid = ix.indexrelid
JOIN pg_class t ON t.oid = ix.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = current_schema() AND t.relname = %s
"""

_PG_CONSTRAINTS = """
SELECT con.conname, con.contype, pg_get_constraintdef(con.oid), con.confdeltype,
       ref.relname,
       array(SELECT a.attname FROM unnest(con.conkey) k(attnum)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum),
       array(SELECT a.attname FROM unnest(con.confkey) k(attnum)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum)
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_class ref ON ref.oid = con.confrelid
WHERE n.nspname = current_schema() AND t.relname = %s AND con.contype IN ('c', 'f', 'p')
"""

_PG_TRIGGERS = """
SELECT tg.tgname,
       -- the schema (public, or a scratch schema of the drift check) is left out
       replace(replace(pg_get_triggerdef(tg.oid), ' ON ' || quote_ident(n.nspname) || '.', ' ON '),
               'FUNCTION ' || quote_ident(n.nspname) || '.', 'FUNCTION ')
FROM pg_trigger tg
JOIN pg_class t ON t.oid = tg.tgrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = current_schema() AND t.relname = %s AND NOT tg.tgisinternal
ORDER BY tg.tgname
"""


def _describe_postgres(db: peewee.Database, name: str) -> Table:
    table = Table(name)
    for col, ctype, nullable, default in db.execute_sql(_PG_COLUMNS, (name,)):
        table.columns[col] = Column(col, ctype, nullable, default)
    for iname, unique, primary, where, cols in db.execute_sql(_PG_INDEXES, (name,)):
        if not primary:
            table.indexes[iname] = Index(iname, tuple(cols), unique, where)
    for cname, kind, definition, deltype, ref, cols, ref_cols in db.execute_sql(
        _PG_CONSTRAINTS, (name,)
    ):
        if kind == "c":
            table.checks[cname] = definition
        elif kind == "p":
            table.primary_key = tuple(cols)
        else:
            table.foreign_keys[cols[0]] = ForeignKey(cols[0], ref, ref_cols[0],
                                                     _PG_ON_DELETE[deltype])
    table.triggers = dict(db.execute_sql(_PG_TRIGGERS, (name,)).fetchall())
    backend = cast(Backend, db)  # only the backend classes read partitions
    table.partitioning = backend.partitioning(name)
    if table.partitioning:
        table.partitions = [{"name": p.name, "from": p.start.isoformat(), "to": p.end.isoformat()}
                            for p in backend.partitions(name, "", exact=False)]
    return table


# each backend's catalogue reader, chosen by the database class's ``kind``
_READERS: dict[str, Callable[[peewee.Database, str], Table]] = {
    "sqlite": _describe_sqlite, "postgres": _describe_postgres}
