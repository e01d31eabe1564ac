"""The drift check and the migration generator.

``check()`` compares three schemas on the backend of the database: the one the models build,
the one the migrations build (both in scratch space) and, when the database has a migration
history, the live one; each difference is one line naming the pair that disagrees.
``generate()`` writes a migration from the difference between the models and a live database.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import peewee
from playhouse.migrations import template
from playhouse.schema_diff import diff_models

from within_db.boundary import public_api
from within_db.db import Backend, bound
from within_db.errors import ArgumentError, MigrationError
from within_db.migrate import HISTORY_TABLE, Directory, Runner, create_path, status
from within_db.schema import freeze, introspect
from within_db.schema.introspect import Table

__all__ = ["Difference", "DriftReport", "Generated", "check", "check_report", "compare",
           "differences", "generate", "models_schema"]

Models = Iterable[type[peewee.Model]]
_KINDS = (("columns", "column"), ("indexes", "index"), ("foreign_keys", "foreign key"),
          ("checks", "check"), ("triggers", "trigger"))


@dataclass(frozen=True)
class Difference:
    """One difference between two described schemas, ``left`` and ``right`` naming them.

    ``kind`` is table, strict (SQLite STRICT tables), primary key, column, index, foreign
    key, check or trigger; a value is None where that side lacks the thing.
    """

    table: str
    kind: str
    name: str
    left: str
    right: str
    left_value: Any = None
    right_value: Any = None

    @property
    def only_left(self) -> bool:
        return self.right_value is None

    @property
    def only_right(self) -> bool:
        return self.left_value is None

    def __str__(self) -> str:
        if self.kind == "table":
            there, missing = (self.left, self.right) if self.only_left else \
                (self.right, self.left)
            return f"table {self.table}: in {there}, missing from {missing}"
        if self.kind == "strict":
            def shown(strict: bool) -> str:
                return "STRICT" if strict else "not STRICT"
            return (f"table {self.table}: {shown(self.left_value)} in {self.left}, "
                    f"{shown(self.right_value)} in {self.right}")
        if self.kind == "partitioning":
            return (f"table {self.table}: partitioned by {self.left_value} in {self.left}, "
                    f"by {self.right_value} in {self.right}")
        if self.kind == "primary key":
            return (f"table {self.table}: primary key {self.left_value} in {self.left}, "
                    f"{self.right_value} in {self.right}")
        what = f"{self.table}: {self.kind} {self.name}"
        if self.only_left:
            return f"{what} in {self.left}, missing from {self.right}"
        if self.only_right:
            return f"{what} in {self.right}, missing from {self.left}"
        return f"{what} differs: {_delta(self.left_value, self.right_value, self.left, self.right)}"


def _delta(left: Any, right: Any, left_label: str, right_label: str) -> str:
    if dataclasses.is_dataclass(left) and dataclasses.is_dataclass(right):
        parts = []
        for f in dataclasses.fields(left):
            a, b = getattr(left, f.name), getattr(right, f.name)
            if a != b:
                parts.append(f"{f.name} {_shown(a)} in {left_label}, {_shown(b)} in {right_label}")
        return "; ".join(parts)
    return f"{left_label} {_shown(left)} vs {right_label} {_shown(right)}"


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return f"({', '.join(value)})"
    return "none" if value is None else str(value)


def differences(left: dict[str, Table], right: dict[str, Table], left_label: str = "models",
                right_label: str = "migrations",
                kinds: Sequence[str] = ("columns", "indexes", "foreign_keys", "checks"),
                ) -> list[Difference]:
    """Return every difference between two described schemas, sorted by table and kind."""
    out: list[Difference] = []

    def add(table: str, kind: str, name: str, a: Any, b: Any) -> None:
        out.append(Difference(table, kind, name, left_label, right_label, a, b))

    for name in sorted(set(left) | set(right)):
        if name not in right or name not in left:
            if "columns" in kinds:  # tables are compared with their columns
                add(name, "table", name, left.get(name), right.get(name))
            continue
        a, b = left[name], right[name]
        if "columns" in kinds and a.strict != b.strict:
            add(name, "strict", name, a.strict, b.strict)
        if "columns" in kinds and a.partitioning != b.partitioning:
            add(name, "partitioning", name, a.partitioning, b.partitioning)
        if "columns" in kinds and a.primary_key != b.primary_key:
            add(name, "primary key", name, a.primary_key, b.primary_key)
        for attr, label in _KINDS:
            if attr not in kinds:
                continue
            mine, theirs = getattr(a, attr), getattr(b, attr)
            for key in sorted(set(mine) | set(theirs)):
                if mine.get(key) != theirs.get(key):
                    add(name, label, key, mine.get(key), theirs.get(key))
    return out


def compare(expected: dict[str, Table], actual: dict[str, Table],
            expected_label: str = "models", actual_label: str = "migrations") -> list[str]:
    """List every difference between two described schemas, as readable lines."""
    return [str(d) for d in differences(expected, actual, expected_label, actual_label)]


def models_schema(db: Backend, models: Sequence[type[peewee.Model]]) -> dict[str, Table]:
    """Create ``models`` in ``db`` (an empty scratch database) and describe the result."""
    with db.bind_ctx(models):
        db.create_schema(models)
    return introspect.describe(db)  # guard tables of partitioned models included


def _migrations_schema(db: Backend, directory: Directory, target: str | None = None,
                       ) -> dict[str, Table]:
    with db.scratch() as scratch:
        Runner(scratch, directory).up(target)
        built = introspect.describe(scratch)
    built.pop(HISTORY_TABLE, None)
    return built


def _models(models: object) -> list[type[peewee.Model]]:
    """``models`` as a list of model classes (all of within_db's if None or empty)."""
    from within_db.models import ALL_MODELS

    if models is None:
        return list(ALL_MODELS)
    if not isinstance(models, Iterable) or isinstance(models, (str, bytes)):
        raise ArgumentError(f"models must be a list of model classes, not "
                            f"{type(models).__name__}")
    found = list(models)
    if not all(isinstance(m, type) and issubclass(m, peewee.Model) for m in found):
        raise ArgumentError("models must be a list of peewee model classes")
    return found or list(ALL_MODELS)


def _expected(db: Backend, models: Models | None) -> dict[str, Table]:
    with db.scratch() as scratch:
        return models_schema(scratch, _models(models))


def _live(db: Backend) -> dict[str, Table] | None:
    """The live schema without the history table, or None without a migration history."""
    with db.connection_context():
        if HISTORY_TABLE not in db.table_names():
            return None
        if not db.execute_sql(f'SELECT count(*) FROM "{HISTORY_TABLE}"').fetchone()[0]:  # noqa: S608
            return None
        live = introspect.describe(db)
    live.pop(HISTORY_TABLE, None)
    return live


@dataclass
class DriftReport:
    """What ``check_report`` compared (``compared``: pairs, in words) and what differs."""

    lines: list[str]
    compared: list[str]


@public_api
def check_report(db: Backend | None = None, models: Models | None = None,
                 directory: Directory = None) -> DriftReport:
    """Compare models, migrations and (with a migration history) the live database.

    Models vs migrations always; then models vs database when every migration is applied
    (triggers, which models cannot declare, migrations vs database), or migrations up to the
    applied head vs database while some are pending (and a line says so).
    """
    db = bound(db)
    models = _models(models)  # refused before any scratch database is built
    expected = _expected(db, models)
    built = _migrations_schema(db, directory)
    lines = compare(expected, built, "models", "migrations")
    compared = ["models vs migrations"]
    live = _live(db)
    if live is None:
        return DriftReport(lines, compared)
    states = status(db, directory)
    for state in states:
        if state.applied and state.file_missing:
            lines.append(f"migration {state.name}: applied to the database, its file is missing")
    pending = [s.name for s in states if not s.applied]
    if pending:
        applied = [s.name for s in states if s.applied and not s.file_missing]
        lines.append(f"database: {len(pending)} migration(s) pending ({', '.join(pending)}); "
                     "run `within-db migrate up`")
        at_head = _migrations_schema(db, directory, applied[-1]) if applied else {}
        found = differences(at_head, live, "migrations", "database",
                            kinds=[k for k, _ in _KINDS])
        compared.append(f"migrations up to {applied[-1] if applied else 'none'} vs database")
    else:
        found = differences(expected, live, "models", "database")
        found += differences(built, live, "migrations", "database", kinds=["triggers"])
        compared += ["models vs database", "migration triggers vs database"]
    order = ["table", "strict", "partitioning", "primary key", *(label for _, label in _KINDS)]
    found.sort(key=lambda d: (d.table, order.index(d.kind), d.name))
    lines += [str(d) for d in found]
    return DriftReport(lines, compared)


@public_api
def check(db: Backend | None = None, models: Models | None = None,
          directory: Directory = None) -> list[str]:
    """Return every drift between models, migrations and the live database (empty: none).

    Compares tables, columns (type, nullability, default), indexes (partial ones included),
    foreign keys with on_delete, CHECK constraints and triggers; see ``check_report``.
    """
    return check_report(db, models, directory).lines


@dataclass
class Generated:
    """A written migration: its ``path``, and the differences it leaves ``todo`` by hand."""

    path: str
    todo: list[str]


def _handled(d: Difference, created: set[str], columns: set[tuple[str, str]]) -> bool:
    """Whether playhouse's template (or our freezer) writes the step for ``d``."""
    if d.kind == "table" or d.table in created:
        return True
    if d.kind == "column":
        return d.only_left or d.only_right
    if d.kind in ("index", "foreign key"):
        value = d.left_value or d.right_value
        cols = value.columns if d.kind == "index" else (value.column,)
        if any((d.table, c) in columns for c in cols):
            return True  # created or dropped with its column
        return d.kind == "index" and value.where is None and (d.only_left or d.only_right)
    return False


@public_api
def generate(name: str, db: Backend | None = None, models: Models | None = None,
             directory: Directory = None, allow_destructive: bool = False) -> Generated:
    """Write a migration from the difference between the models and ``db``.

    Refuses (MigrationError) a database without migration history or with pending migrations,
    models that match the database, and destructive steps (dropping a column or a table)
    unless ``allow_destructive``. New tables are frozen with their CHECKs and partial indexes;
    what cannot be generated (CHECKs, type, nullability and default changes, partial indexes
    of existing tables, triggers) becomes TODO comments and ``Generated.todo``.
    """
    db = bound(db)
    models = _models(models)
    path = create_path(name, directory)  # refuses a bad name or folder before any work
    live = _live(db)
    if live is None:
        raise MigrationError(
            "the database has no migration history; generate compares the models with a "
            "migrated database: run `within-db migrate up` first")
    pending = [s.name for s in status(db, directory) if not s.applied]
    if pending:
        raise MigrationError(f"{len(pending)} migration(s) pending ({', '.join(pending)}); "
                             "apply them first (`within-db migrate up`), then generate")
    with db.connection_context():
        diff = diff_models(db, models)
    expected = _expected(db, models)
    found = differences(expected, live, "models", "database")
    if not diff and not found:
        raise MigrationError("models and database agree; nothing to generate")
    model_tables = set(expected)  # with the guard tables of partitioned models
    dropped_tables = sorted(set(live) - model_tables)
    destructive = [f"drop column {t}.{c}" for t, c in diff.drop_columns]
    destructive += [f"drop table {t}" for t in dropped_tables]
    if destructive and not allow_destructive:
        raise MigrationError(
            f"the models imply destructive steps: {', '.join(destructive)} (data loss); "
            "rerun with --allow-destructive to write them, or change the models")
    created = {m._meta.table_name for m in diff.create_tables} | set(dropped_tables)
    columns = {(f.model._meta.table_name, f.column_name) for f in diff.add_columns}
    columns |= set(diff.drop_columns)
    todo = [str(d) for d in found if not _handled(d, created, columns)]
    body = _body(diff, dropped_tables)
    notes = "".join(f"# TODO: {line}\n" for line in todo)
    header = (f'"""{name}"""\n'
              "# Review before applying, then run `within-db migrate check`.\n" + notes)
    with open(path, "w") as fh:
        fh.write(header + body)
    return Generated(str(path), todo)


def _body(diff: Any, dropped_tables: list[str]) -> str:
    body = template(diff._replace(create_tables=[]))
    if diff.create_tables:
        created = freeze.models_source(diff.create_tables)
        ordered = peewee.sort_models(diff.create_tables)  # type: ignore[attr-defined]  # no stub
        tables = [m._meta.table_name for m in reversed(ordered)]
        drop = "\n".join(f"migrator.migrate(migrator.drop_table({t!r}))" for t in tables)
        body = body.replace("def up(migrator, db):\n",
                            "def up(migrator, db):\n" + textwrap.indent(created, "    ") + "\n", 1)
        body = body.replace("def down(migrator, db):\n",
                            "def down(migrator, db):\n" + textwrap.indent(drop, "    ") + "\n", 1)
        body = body.replace("from peewee import *\n",
                            "from peewee import *\n\n\n" + freeze.local_type_source() + "\n", 1)
    if dropped_tables:
        drops = "".join(f"    migrator.migrate(migrator.drop_table({t!r}))\n"
                        for t in dropped_tables)
        body = body.replace("def up(migrator, db):\n", "def up(migrator, db):\n" + drops, 1)
        body = body.replace("# Generated from", "# TODO: down() cannot restore the dropped "
                            f"table(s) {', '.join(dropped_tables)}\n# Generated from", 1)
    return body
