"""Migrations: the runner API, a thin layer over ``playhouse.migrations.Runner``.

Each migration runs in its own transaction; concurrent runners serialise on a PostgreSQL
advisory lock or an SQLite IMMEDIATE transaction. The drift check and the generator live in
``within_db.schema.drift``; this module never imports the models.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TypeAlias

import peewee
from playhouse.migrations import MigrationError as PlayhouseMigrationError
from playhouse.migrations import Runner as PlayhouseRunner

from within_db.boundary import public_api, text
from within_db.db import Backend, BrokenForeignKeys, bound
from within_db.errors import (
    ArgumentError,
    ConfigurationError,
    MigrationError,
    NotMigratedError,
    WithinDBError,
)
from within_db.fields import UTCDateTimeField, utcnow

__all__ = [
    "ADVISORY_LOCK_KEY", "Directory", "HISTORY_TABLE", "MigrationState", "Runner", "create",
    "create_path", "project_migrations",
    "downgrade", "downgrade_plan", "head", "migrations_dir", "pending", "require_migrated",
    "rows_at_risk", "status", "upgrade",
]

log = logging.getLogger(__name__)

HISTORY_TABLE = "schema_migrations"
ADVISORY_LOCK_KEY = 0x77697468  # "with": one key for every within_db migration runner
#: a folder of migration scripts; None means the ones shipped with the package
Directory: TypeAlias = str | Path | None


def migrations_dir() -> Path:
    """Return the folder of migration scripts shipped with the package."""
    return Path(str(importlib.resources.files("within_db.migrations")))


class Runner(PlayhouseRunner):
    """playhouse's Runner, serialised across processes and with SQLite foreign-key care.

    ``on_step(name, direction)`` is called after each migration commits.
    """

    database: Backend

    def __init__(self, db: Backend, directory: Directory = None,
                 on_step: Callable[[str, str], object] | None = None) -> None:
        if directory is not None and not Path(_directory(directory)).is_dir():
            raise ConfigurationError(
                f"the migrations directory {directory} does not exist; create it or fix "
                "--directory (WITHIN_DB_MIGRATIONS)")
        super().__init__(db, str(directory or migrations_dir()), table_name=HISTORY_TABLE)
        self.on_step = on_step
        self.History = _history_model(db)
        self.migrator = db.schema_migrator()  # keeps STRICT tables and triggers on SQLite

    def up(self, target: str | None = None, fake: bool = False) -> list[str]:
        with self.database.connection_context(), self.database.migration_lock(ADVISORY_LOCK_KEY):
            if not any(m.path is not None and not m.applied for m in self.status()):
                # nothing to apply, so no CREATE TABLE IF NOT EXISTS for the history either:
                # a least-privilege role (see within_db.roles) may call this and the seed
                return []
            return super().up(target, fake)

    def down(self, target: str | None = None) -> list[str]:
        with self.database.connection_context(), self.database.migration_lock(ADVISORY_LOCK_KEY):
            return super().down(target)

    def _run(self, name: str, module: ModuleType, direction: str, fake: bool = False) -> None:
        if fake:
            super()._run(name, module, direction, fake)
        else:
            self._run_checked(name, module, direction)
        if self.on_step is not None:
            self.on_step(name, direction)

    def _run_checked(self, name: str, module: ModuleType, direction: str) -> None:
        try:
            with self.database.migration_step():
                super()._run(name, module, direction)
        except BrokenForeignKeys as exc:
            raise MigrationError(
                f"{name} ({direction}) left rows with broken foreign keys in {exc.tables}; "
                "it was rolled back"
            ) from None
        except WithinDBError as exc:  # a script that refuses says why
            raise MigrationError(f"{name} ({direction}) refused and was rolled back: {exc}") \
                from None
        except Exception as exc:  # the transaction scope above has rolled back; re-raised
            raise MigrationError(
                f"{name} ({direction}) failed with {type(exc).__name__} and was rolled back; "
                "nothing of it was applied (run with --debug for the cause)"
            ) from exc


def _directory(directory: object) -> str | Path:
    if not isinstance(directory, (str, Path)) or isinstance(directory, str) and (
            not directory or "\0" in directory):
        raise ArgumentError(f"directory must be a folder path (str or Path), not "
                            f"{type(directory).__name__}")
    return directory


def _history_model(db: Backend) -> type[peewee.Model]:
    """playhouse's history model with ``applied`` as an aware UTC instant on both backends.

    TIMESTAMPTZ on PostgreSQL, fixed-width UTC text on SQLite (0005 converts older rows,
    which playhouse wrote as naive local time).
    """
    class History(peewee.Model):
        name = peewee.CharField(unique=True)
        applied = UTCDateTimeField(default=utcnow)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = HISTORY_TABLE

    return History


def _translate(exc: PlayhouseMigrationError) -> MigrationError:
    return MigrationError(f"{exc}".rstrip(".") + "; run `within-db migrate status` to see names")


@dataclass(frozen=True)
class MigrationState:
    name: str
    applied: bool
    file_missing: bool
    #: when it was applied, an aware UTC datetime (None while pending)
    applied_at: dt.datetime | None = None


@public_api
def status(db: Backend | None = None, directory: Directory = None) -> list[MigrationState]:
    """Return every migration (file or history row) with whether it is applied."""
    runner = Runner(bound(db), directory)
    with runner.database.connection_context():
        rows = runner.status()
    return [MigrationState(m.name, m.applied is not None, m.path is None, m.applied)
            for m in rows]


@public_api
def pending(db: Backend | None = None, directory: Directory = None) -> list[str]:
    """Return the names of the migrations not yet applied, oldest first."""
    return [m.name for m in status(db, directory) if not m.applied]


@public_api
def head(db: Backend | None = None, directory: Directory = None) -> str | None:
    """Return the name of the last applied migration, or None."""
    applied = [m.name for m in status(db, directory) if m.applied]
    return applied[-1] if applied else None


@public_api
def upgrade(db: Backend | None = None, target: str | None = None, fake: bool = False,
            directory: Directory = None,
            on_step: Callable[[str, str], object] | None = None) -> list[str]:
    """Apply pending migrations (up to ``target``); return the names applied.

    Each migration commits on its own; ``on_step(name, "up")`` follows each commit. Raises
    MigrationError for an unknown target or a failing script (which leaves nothing of it).
    """
    try:
        applied = Runner(bound(db), directory, on_step).up(target, fake)
    except PlayhouseMigrationError as exc:
        raise _translate(exc) from None
    for name in applied:
        log.info("applied %s%s", name, " (fake)" if fake else "")
    return applied


@public_api
def downgrade(db: Backend | None = None, target: str | None = None,
              directory: Directory = None,
              on_step: Callable[[str, str], object] | None = None) -> list[str]:
    """Revert the last migration, or every one back through ``target``; return the names.

    ``on_step(name, "down")`` follows each commit. Raises MigrationError naming a migration
    whose file is missing before reverting anything.
    """
    downgrade_plan(db, target, directory)
    try:
        return Runner(bound(db), directory, on_step).down(target)
    except PlayhouseMigrationError as exc:
        raise _translate(exc) from None


@public_api
def downgrade_plan(db: Backend | None = None, target: str | None = None,
                   directory: Directory = None) -> list[str]:
    """Return the names ``downgrade`` would revert, newest first, without reverting."""
    states = [m for m in status(db, directory) if m.applied]
    applied = [m.name for m in states]
    if target is not None and target not in applied:
        raise MigrationError(f'"{target}" is not an applied migration; '
                             "run `within-db migrate status` to see names")
    if not applied:
        return []
    plan = [applied[-1]] if target is None else list(reversed(applied[applied.index(target):]))
    missing = [m.name for m in states if m.file_missing and m.name in plan]
    if missing:
        folder = directory or migrations_dir()
        raise MigrationError(
            f"cannot revert {', '.join(missing)}: the file {missing[0]}.py is missing from "
            f"{folder}; restore it (e.g. from version control) or pass the --directory "
            "that holds it")
    return plan


@public_api
def rows_at_risk(db: Backend | None, plan: list[str],
                 directory: Directory = None) -> dict[str, int]:
    """Return {table: rows} for tables holding rows that reverting ``plan`` would drop.

    The dropped tables are found by building the schema in scratch space before and after
    the reverted migrations, so it holds for any script.
    """
    db = bound(db)
    names = [m.name for m in status(db, directory) if not m.file_missing]
    if not isinstance(plan, list) or not plan or not all(
            isinstance(n, str) and n in names for n in plan):
        raise ArgumentError("plan must be a non-empty list of migration names, as "
                            "downgrade_plan returns")
    first = names.index(plan[-1])
    with db.scratch() as scratch:
        runner = Runner(scratch, directory)
        if first:
            runner.up(names[first - 1])
        before = set(scratch.table_names())
        runner.up(plan[0])
        dropped = set(scratch.table_names()) - before - {HISTORY_TABLE}
    with db.connection_context():
        live = set(db.table_names())
        counts = {t: db.execute_sql(f'SELECT count(*) FROM "{t}"').fetchone()[0]  # noqa: S608
                  for t in sorted(dropped & live)}
    return {t: n for t, n in counts.items() if n}


@public_api
def require_migrated(db: Backend | None = None) -> None:
    """Raise NotMigratedError unless every shipped migration is applied."""
    states = status(bound(db))
    missing = [m.name for m in states if not m.applied]
    if missing:
        raise NotMigratedError(
            f"database {'has no schema' if len(missing) == len(states) else 'is behind'}: "
            f"{len(missing)} migration(s) pending ({missing[0]}...); run `within-db migrate up`"
        )


PROJECT_FILES = ("setup.cfg", "pyproject.toml")


@public_api
def project_migrations(directory: Directory = None, cwd: Path | None = None) -> Path:
    """Return the folder new migrations are written to; ConfigurationError if there is none.

    ``directory`` if given, else ``migrations/`` beside the nearest setup.cfg or
    pyproject.toml from ``cwd`` upwards. Never a folder inside an installed package: what is
    written there is lost on reinstall, yet applied to every database used from that
    environment.
    """
    if directory is not None:
        folder = Path(_directory(directory))
    else:
        start = (cwd or Path.cwd()).resolve()
        root = next((d for d in (start, *start.parents)
                     if any((d / f).is_file() for f in PROJECT_FILES)), None)
        if root is None:
            raise ConfigurationError(
                f"no project found at or above {start} (no setup.cfg or pyproject.toml), so "
                "there is no migrations folder to write to; pass --directory DIR (or set "
                "WITHIN_DB_MIGRATIONS)")
        folder = root / "migrations"
    if not folder.is_dir():
        raise ConfigurationError(
            f"the migrations directory {folder} does not exist; create it (mkdir) or pass "
            "--directory DIR (or set WITHIN_DB_MIGRATIONS)")
    if {"site-packages", "dist-packages"} & set(folder.resolve().parts):
        raise ConfigurationError(
            f"{folder} is inside an installed package; write migrations into your project "
            "with --directory DIR (or WITHIN_DB_MIGRATIONS)")
    return folder


@public_api
def create_path(name: str, directory: Directory = None) -> Path:
    """Return the path of the next migration called ``name``, refusing bad names.

    Raises ArgumentError for an empty name, one that starts with a number (the number is
    added) or one already used; ConfigurationError as ``project_migrations``.
    """
    text(name, "the migration name", max_length=200, empty=True)
    folder = project_migrations(directory)
    slug = re.sub(r"[^\w]+", "_", name.strip()).strip("_").lower()
    if not slug:
        raise ArgumentError("the migration name is empty; give a few words, e.g. "
                            "add_campaign_priority")
    if slug[0].isdigit():
        raise ArgumentError(f'the migration name "{name}" starts with a number; give the '
                            "words alone (e.g. add_campaign_priority): the number is added")
    names = sorted(p.stem for p in folder.glob("[0-9]*.py"))
    taken = [n for n in names if n.split("_", 1)[-1] == slug]
    if taken:
        raise ArgumentError(f'a migration named "{slug}" exists already ({taken[0]}); choose '
                            "another name")
    number = max((int(re.match(r"\d+", n).group()) for n in names), default=0) + 1  # type: ignore[union-attr]
    return folder / f"{number:04d}_{slug}.py"


@public_api
def create(name: str, directory: Directory = None) -> str:
    """Write an empty numbered migration script; return its path (see ``create_path``)."""
    path = create_path(name, directory)
    path.write_text(TEMPLATE.format(name=name.strip()))
    return str(path)


TEMPLATE = '''"""{name}"""
from peewee import *


def up(migrator, db):
    # migrator.migrate(
    #     migrator.add_column('table', 'column', TextField(default='')))
    pass


def down(migrator, db):
    pass
'''
