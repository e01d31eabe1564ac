"""Name the constraint behind an IntegrityError, the same way on SQLite and PostgreSQL.

PostgreSQL reports constraint names through psycopg2's diagnostics (asyncpg's errors carry the
same fields); SQLite names CHECKs but reports UNIQUE violations by columns, which are mapped
back to the index name here (or to PostgreSQL's ``<table>_pkey`` and ``<table>_<cols>_key``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import peewee

from within_db.db import database, partition_parent
from within_db.errors import ConflictError

__all__ = ["Violation", "conflict_on", "violation"]

_SQLITE = [
    ("check", re.compile(r"CHECK constraint failed: (\w+)")),
    ("unique", re.compile(r"UNIQUE constraint failed: ([\w., ]+)")),
    ("not_null", re.compile(r"NOT NULL constraint failed: (\w+)\.(\w+)")),
    ("foreign_key", re.compile(r"FOREIGN KEY constraint failed")),
]


@dataclass(frozen=True)
class Violation:
    """``kind`` is check, unique, not_null, foreign_key or no_partition; ``name`` the name.

    Not-null violations are named ``<table>_<column>_not_null``; SQLite does not say which
    foreign key failed, so its foreign-key violations have ``name=None``. ``no_partition``
    (PostgreSQL only: no partition covers the row's key) names the partitioned table.
    """

    kind: str
    name: str | None


def violation(exc: peewee.IntegrityError, db: peewee.Database) -> Violation | None:
    """Return the constraint ``exc`` reports, or None if it cannot be told."""
    orig: Any = getattr(exc, "orig", None) or (exc.args[0] if exc.args else None)
    diag = getattr(orig, "diag", None)
    if diag is not None:
        return _postgres(getattr(orig, "pgcode", None), diag)
    if getattr(orig, "sqlstate", None):
        # asyncpg (within_db.aio) carries the same diagnostic fields on the error itself
        return _postgres(orig.sqlstate, orig)
    return _sqlite(str(exc), db)


@contextlib.contextmanager
def conflict_on(constraint: str, message: str) -> Iterator[None]:
    """Turn a violation of the named constraint inside the block into ConflictError(message).

    Put the block's ``atomic()`` inside this context, so it has rolled back first. Other
    integrity errors propagate unchanged.
    """
    try:
        yield
    except peewee.IntegrityError as exc:
        found = violation(exc, database.obj)
        if found is not None and found.name == constraint:
            raise ConflictError(message) from None
        raise


_PG_KINDS = {"23514": "check", "23505": "unique", "23502": "not_null", "23503": "foreign_key"}


def _postgres(code: str | None, diag: Any) -> Violation | None:
    """``diag`` is psycopg2's Diagnostics or an asyncpg error: both name the same fields."""
    kind = _PG_KINDS.get(code or "")
    if kind is None:
        return None
    if kind == "not_null":
        table = partition_parent(diag.table_name or "")
        return Violation(kind, f"{table}_{diag.column_name}_not_null")
    if kind == "check" and diag.constraint_name is None:
        # "no partition of relation ... found for row" shares the CHECK violation code
        return Violation("no_partition", diag.table_name)
    name, table = diag.constraint_name, diag.table_name or ""
    parent = partition_parent(table)
    if parent != table and name and name.startswith(f"{table}_"):
        # a partition's own index (its primary key): name the partitioned table's
        name = parent + name[len(table):]
    return Violation(kind, name)


def _sqlite(message: str, db: peewee.Database) -> Violation | None:
    for kind, pattern in _SQLITE:
        match = pattern.search(message)
        if not match:
            continue
        if kind == "check":
            return Violation(kind, match.group(1))
        if kind == "not_null":
            return Violation(kind, f"{match.group(1)}_{match.group(2)}_not_null")
        if kind == "unique":
            return Violation(kind, _sqlite_unique_name(match.group(1), db))
        return Violation(kind, None)
    return None


def _sqlite_unique_name(spec: str, db: peewee.Database) -> str:
    """Name a UNIQUE violation as PostgreSQL would: the index's name, ``<table>_pkey`` for the
    primary key and ``<table>_<columns>_key`` for a UNIQUE constraint of the table itself."""
    pairs = [part.strip().split(".", 1) for part in spec.split(",")]
    table = pairs[0][0]
    columns = [col for _, col in pairs]
    quoted = '"' + table.replace('"', '""') + '"'
    info = db.execute_sql(f"PRAGMA table_info({quoted})").fetchall()
    if columns == [row[1] for row in sorted((r for r in info if r[5]), key=lambda r: r[5])]:
        return f"{table}_pkey"  # an INTEGER PRIMARY KEY has no index to find below
    for _seq, name, unique, origin, _partial in db.execute_sql(f"PRAGMA index_list({quoted})"):
        if not unique:
            continue
        cols = [r[2] for r in db.execute_sql(f"PRAGMA index_info(\"{name}\")")]
        if cols == columns:
            # origin "c": CREATE INDEX, which names it; "u": an unnamed UNIQUE constraint
            return name if origin == "c" else f"{table}_{'_'.join(columns)}_key"
    return f"{table}_{'_'.join(columns)}"
