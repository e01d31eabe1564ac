"""The drift check and the migration generator.

``check()`` builds the schema from the migrations and from the models in scratch space of the
same backend and lists every difference; ``generate()`` writes a migration from the difference
between the models and a live database.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence

import peewee
from playhouse.migrations import template
from playhouse.schema_diff import diff_models

from within_db.db import Backend, bound
from within_db.errors import MigrationError
from within_db.migrate import HISTORY_TABLE, Directory, Runner
from within_db.schema import freeze, introspect
from within_db.schema.introspect import Table

__all__ = ["check", "compare", "generate", "models_schema"]


def models_schema(db: Backend, models: Sequence[type[peewee.Model]]) -> dict[str, Table]:
    """Create ``models`` in ``db`` (an empty scratch database) and describe the result."""
    with db.bind_ctx(models):
        db.create_tables(models)
    return introspect.describe(db, [m._meta.table_name for m in models])


def check(db: Backend | None = None, models: Iterable[type[peewee.Model]] | None = None,
          directory: Directory = None) -> list[str]:
    """Return the differences between the migrations' schema and the models' (empty: none).

    Compares tables, columns (type, nullability, default), indexes (partial ones included),
    foreign keys with on_delete, and CHECK constraints, on the backend of ``db``.
    """
    from within_db.models import ALL_MODELS

    db = bound(db)
    models = list(models or ALL_MODELS)
    with db.scratch() as from_models:
        expected = models_schema(from_models, models)
    with db.scratch() as from_migrations:
        Runner(from_migrations, directory).up()
        actual = introspect.describe(from_migrations)
    actual.pop(HISTORY_TABLE, None)
    return compare(expected, actual)


def generate(name: str, db: Backend | None = None,
             models: Iterable[type[peewee.Model]] | None = None,
             directory: Directory = None) -> str:
    """Write a migration from the difference between the models and ``db``; return its path.

    New tables are frozen with their CHECKs and partial indexes; other changes come from
    playhouse's template. Review the file, then run ``within-db migrate check``.
    """
    from within_db.models import ALL_MODELS

    db = bound(db)
    models = list(models or ALL_MODELS)
    with db.connection_context():
        diff = diff_models(db, models)
    if not diff:
        raise MigrationError("models and database agree; nothing to generate")
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
    header = (f'"""{name}"""\n'
              "# Review before applying: CHECK, type, nullability and default changes to\n"
              "# existing tables are not generated; `within-db migrate check` lists them.\n")
    return Runner(db, directory).create(name, body=header + body)


def compare(expected: dict[str, Table], actual: dict[str, Table],
            expected_label: str = "models", actual_label: str = "migrations") -> list[str]:
    """List every difference between two described schemas, as readable lines."""
    out = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            out.append(f"table {name}: in {expected_label}, missing from {actual_label}")
            continue
        if name not in expected:
            out.append(f"table {name}: in {actual_label}, missing from {expected_label}")
            continue
        exp, act = expected[name], actual[name]
        if exp.strict != act.strict:
            out.append(f"table {name}: {'STRICT' if exp.strict else 'not STRICT'} in "
                       f"{expected_label}, {'STRICT' if act.strict else 'not STRICT'} in "
                       f"{actual_label}")
        if exp.primary_key != act.primary_key:
            out.append(f"table {name}: primary key {exp.primary_key} in {expected_label}, "
                       f"{act.primary_key} in {actual_label}")
        for kind in ("columns", "indexes", "foreign_keys", "checks"):
            e, a = getattr(exp, kind), getattr(act, kind)
            label = kind.rstrip("s").replace("_", " ").replace("indexe", "index")
            for key in sorted(set(e) | set(a)):
                if key not in a:
                    out.append(f"{name}: {label} {key} in {expected_label}, "
                               f"missing from {actual_label}")
                elif key not in e:
                    out.append(f"{name}: {label} {key} in {actual_label}, "
                               f"missing from {expected_label}")
                elif e[key] != a[key]:
                    out.append(f"{name}: {label} {key} differs: {expected_label} {e[key]} "
                               f"vs {actual_label} {a[key]}")
    return out
