"""Migrations: a thin layer over ``playhouse.migrations.Runner``, plus the drift check.

Each migration runs in its own transaction; concurrent runners serialise on a PostgreSQL
advisory lock or an SQLite IMMEDIATE transaction. ``check()`` compares the schema the
migrations build with the schema the models build.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import peewee
from playhouse.migrations import MigrationError as PlayhouseMigrationError
from playhouse.migrations import Runner as PlayhouseRunner
from playhouse.migrations import template
from playhouse.schema_diff import diff_models

from within_db import freeze, introspect
from within_db.db import backend, database, make_database
from within_db.errors import MigrationError, NotMigratedError

log = logging.getLogger(__name__)

HISTORY_TABLE = "schema_migrations"
ADVISORY_LOCK_KEY = 0x77697468  # "with": one key for every within_db migration runner


def migrations_dir() -> Path:
    """Return the folder of migration scripts shipped with the package."""
    return Path(str(importlib.resources.files("within_db.migrations")))


class Runner(PlayhouseRunner):
    """playhouse's Runner, serialised across processes and with SQLite foreign-key care."""

    def __init__(self, db: peewee.Database, directory: str | Path | None = None):
        super().__init__(db, str(directory or migrations_dir()), table_name=HISTORY_TABLE)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        db = self.database
        if backend(db) == "postgres":
            db.execute_sql("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
            try:
                yield
            finally:
                db.execute_sql("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
            return
        # SQLite ignores this pragma inside a transaction, and a table rebuild with foreign
        # keys on would cascade: switch it off first, check the keys before each commit.
        db.pragma("foreign_keys", 0)
        try:
            with db.atomic("IMMEDIATE") as txn:
                try:
                    yield
                except BaseException:
                    txn.commit()  # keep the migrations that succeeded before the failure
                    raise
        finally:
            db.pragma("foreign_keys", 1)

    def up(self, target=None, fake=False):
        with self.database.connection_context(), self.locked():
            return super().up(target, fake)

    def down(self, target=None):
        with self.database.connection_context(), self.locked():
            return super().down(target)

    def _run(self, name, module, direction, fake=False):
        try:
            if fake or backend(self.database) == "postgres":
                return super()._run(name, module, direction, fake)
            with self.database.atomic():
                super()._run(name, module, direction, fake)
                self._check_foreign_keys(name, direction)
        except MigrationError:
            raise
        except Exception as exc:  # the transaction scope above has rolled back; re-raised
            raise MigrationError(
                f"{name} ({direction}) failed with {type(exc).__name__} and was rolled back; "
                "nothing of it was applied (run with --debug for the cause)"
            ) from exc

    def _check_foreign_keys(self, name, direction):
        broken = self.database.execute_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise MigrationError(
                f"{name} ({direction}) left {len(broken)} rows with broken foreign keys "
                f"in {sorted({r[0] for r in broken})}; it was rolled back"
            )


def _db(db: peewee.Database | None) -> peewee.Database:
    if db is not None:
        return db
    if database.obj is None:
        database.__getattr__("obj")  # raises NotConnectedError with what to do
    return database.obj


def _translate(exc: PlayhouseMigrationError) -> MigrationError:
    return MigrationError(f"{exc}".rstrip(".") + "; run `within-db migrate status` to see names")


@dataclass(frozen=True)
class MigrationState:
    name: str
    applied: bool
    file_missing: bool


def status(db: peewee.Database | None = None, directory=None) -> list[MigrationState]:
    """Return every migration (file or history row) with whether it is applied."""
    runner = Runner(_db(db), directory)
    with runner.database.connection_context():
        rows = runner.status()
    return [MigrationState(m.name, m.applied is not None, m.path is None) for m in rows]


def pending(db: peewee.Database | None = None, directory=None) -> list[str]:
    return [m.name for m in status(db, directory) if not m.applied]


def head(db: peewee.Database | None = None, directory=None) -> str | None:
    """Return the name of the last applied migration, or None."""
    applied = [m.name for m in status(db, directory) if m.applied]
    return applied[-1] if applied else None


def upgrade(db: peewee.Database | None = None, target: str | None = None, fake: bool = False,
            directory=None) -> list[str]:
    """Apply pending migrations (up to ``target``); return the names applied.

    Raises MigrationError for an unknown target or a failing script (which leaves nothing).
    """
    try:
        applied = Runner(_db(db), directory).up(target, fake)
    except PlayhouseMigrationError as exc:
        raise _translate(exc) from None
    for name in applied:
        log.info("applied %s%s", name, " (fake)" if fake else "")
    return applied


def downgrade(db: peewee.Database | None = None, target: str | None = None,
              directory=None) -> list[str]:
    """Revert the last migration, or every one back through ``target``; return the names."""
    try:
        return Runner(_db(db), directory).down(target)
    except PlayhouseMigrationError as exc:
        raise _translate(exc) from None


def downgrade_plan(db: peewee.Database | None = None, target: str | None = None,
                   directory=None) -> list[str]:
    """Return the names ``downgrade`` would revert, newest first, without reverting."""
    applied = [m.name for m in status(db, directory) if m.applied]
    if target is not None and target not in applied:
        raise MigrationError(f'"{target}" is not an applied migration; '
                             "run `within-db migrate status` to see names")
    if not applied:
        return []
    if target is None:
        return [applied[-1]]
    return list(reversed(applied[applied.index(target):]))


def rows_at_risk(db: peewee.Database | None, plan: list[str], directory=None) -> dict[str, int]:
    """Return {table: rows} for tables holding rows that reverting ``plan`` would drop.

    The dropped tables are found by building the schema in scratch space before and after
    the reverted migrations, so it holds for any script.
    """
    db = _db(db)
    names = [m.name for m in status(db, directory) if not m.file_missing]
    first = names.index(plan[-1])
    with scratch_database(db) as scratch:
        runner = Runner(scratch, directory)
        if first:
            runner.up(names[first - 1])
        before = set(introspect.table_names(scratch))
        runner.up(plan[0])
        dropped = set(introspect.table_names(scratch)) - before - {HISTORY_TABLE}
    with db.connection_context():
        live = set(introspect.table_names(db))
        counts = {t: db.execute_sql(f'SELECT count(*) FROM "{t}"').fetchone()[0]  # noqa: S608
                  for t in sorted(dropped & live)}
    return {t: n for t, n in counts.items() if n}


def require_migrated(db: peewee.Database | None = None) -> None:
    """Raise NotMigratedError unless every shipped migration is applied."""
    states = status(_db(db))
    missing = [m.name for m in states if not m.applied]
    if missing:
        raise NotMigratedError(
            f"database {'has no schema' if len(missing) == len(states) else 'is behind'}: "
            f"{len(missing)} migration(s) pending ({missing[0]}...); run `within-db migrate up`"
        )


def create(name: str, directory=None) -> str:
    """Write an empty numbered migration script; return its path."""
    return Runner(make_database("sqlite:///:memory:"), directory).create(name)


# -- drift ----------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_database(db: peewee.Database) -> Iterator[peewee.Database]:
    """Yield an empty database of the same backend: in memory, or a temporary PG schema."""
    if backend(db) == "sqlite":
        scratch = make_database("sqlite:///:memory:")
        with scratch.connection_context():
            yield scratch
        return
    schema = f"within_scratch_{uuid.uuid4().hex[:12]}"
    with db.connection_context():
        db.execute_sql(f'CREATE SCHEMA "{schema}"')
    try:
        scratch = make_database(db.url, options=f"-c search_path={schema}")
        with scratch.connection_context():
            yield scratch
    finally:
        with db.connection_context():
            db.execute_sql(f'DROP SCHEMA "{schema}" CASCADE')


def models_schema(db: peewee.Database, models) -> dict[str, introspect.Table]:
    with db.bind_ctx(models):
        db.create_tables(models)
    return introspect.describe(db, [m._meta.table_name for m in models])


def check(db: peewee.Database | None = None, models=None, directory=None) -> list[str]:
    """Return the differences between the migrations' schema and the models' (empty: none).

    Compares tables, columns (type, nullability, default), indexes (partial ones included),
    foreign keys with on_delete, and CHECK constraints, on the backend of ``db``.
    """
    from within_db.models import ALL_MODELS

    db = _db(db)
    models = list(models or ALL_MODELS)
    with scratch_database(db) as from_models:
        expected = models_schema(from_models, models)
    with scratch_database(db) as from_migrations:
        Runner(from_migrations, directory).up()
        actual = introspect.describe(from_migrations)
    actual.pop(HISTORY_TABLE, None)
    return introspect.compare(expected, actual)


def generate(name: str, db: peewee.Database | None = None, models=None, directory=None) -> str:
    """Write a migration from the difference between the models and ``db``; return its path.

    New tables are frozen with their CHECKs and partial indexes; other changes come from
    playhouse's template. Review the file, then run ``within-db migrate check``.
    """
    from within_db.models import ALL_MODELS

    db = _db(db)
    models = list(models or ALL_MODELS)
    with db.connection_context():
        diff = diff_models(db, models)
    if not diff:
        raise MigrationError("models and database agree; nothing to generate")
    body = template(diff._replace(create_tables=[]))
    if diff.create_tables:
        created = freeze.models_source(diff.create_tables, db)
        tables = [m._meta.table_name for m in reversed(peewee.sort_models(diff.create_tables))]
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
