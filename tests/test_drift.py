"""The drift check reads the live database; generate and create write only where they should.

Each case of issue 15's "Why" runs the real CLI on both backends.
"""

import json
import os
import shutil
from pathlib import Path

import peewee
import pytest
from click.testing import CliRunner
from playhouse.migrate import SchemaMigrator

from within_db import migrate
from within_db.cli import cli
from within_db.db import database, make_database
from within_db.errors import ValidationError
from within_db.schema import drift, introspect
from within_db.schema import rows as browse

TRIGGER = {"sqlite": "audit_logs_no_delete", "postgres": "audit_logs_no_truncate"}
SHIPPED = sorted(p.stem for p in migrate.migrations_dir().glob("[0-9]*.py"))
NEXT = f"{len(SHIPPED) + 1:04d}"


@pytest.fixture
def run(fresh_url):
    runner = CliRunner()

    def invoke(*args, url=fresh_url):
        result = runner.invoke(cli, ["--database-url", url, *args])
        if database.obj is not None:
            database.obj.close()
            database.initialize(None)
        return result

    yield invoke
    database.initialize(None)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (pyproject.toml, migrations/ holding the shipped ones) as the cwd."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'shop'\n")
    folder = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), folder,
                    ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WITHIN_DB_MIGRATIONS", raising=False)
    return folder


def drift_database(url, backend):
    """Drop a CHECK, a partial index and a trigger, change a type, add a column."""
    db = make_database(url)
    migrator = SchemaMigrator.from_database(db)
    with db.connection_context():
        migrator.migrate(
            migrator.drop_index("model_versions", "model_versions_one_production"),
            migrator.alter_column_type("prediction_logs", "score", peewee.TextField()),
            migrator.add_column("users", "nickname", peewee.CharField(null=True, max_length=40)),
        )
        if backend == "postgres":
            db.execute_sql("ALTER TABLE campaigns DROP CONSTRAINT campaigns_currency_check")
            db.execute_sql("DROP TRIGGER audit_logs_no_truncate ON audit_logs")
        else:  # SQLite cannot drop a constraint: edit the stored CREATE TABLE (fault injection)
            expression = introspect.describe(db, ["campaigns"])["campaigns"].checks[
                "campaigns_currency_check"]
            (sql,) = db.execute_sql("SELECT sql FROM sqlite_master WHERE name = 'campaigns'"
                                    ).fetchone()
            clause = f', CONSTRAINT "campaigns_currency_check" CHECK ({expression})'
            assert clause in sql
            db.execute_sql("PRAGMA writable_schema = ON")
            db.execute_sql("UPDATE sqlite_master SET sql = ? WHERE name = 'campaigns'",
                           (sql.replace(clause, ""),))
            db.execute_sql("PRAGMA writable_schema = OFF")
            db.execute_sql("DROP TRIGGER audit_logs_no_delete")


EXPECTED_DRIFT = [
    "campaigns: check campaigns_currency_check in models, missing from database",
    "model_versions: index model_versions_one_production in models, missing from database",
    "users: column nickname in database, missing from models",
]


def test_check_reads_the_live_database(run, fresh_url, backend):
    assert run("migrate", "up").exit_code == 0
    result = run("migrate", "check")
    assert result.exit_code == 0, result.output
    assert "models vs database" in result.stderr
    drift_database(fresh_url, backend)
    result = run("migrate", "check")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    for line in EXPECTED_DRIFT:
        assert line in lines
    assert any(line.startswith("prediction_logs: column score differs: type ")
               and "in models" in line
               and "in database" in line for line in lines), lines
    assert (f"audit_logs: trigger {TRIGGER[backend]} in migrations, missing from database"
            in lines)
    assert not any("in migrations, missing from models" in line or
                   "missing from migrations" in line for line in lines)  # that pair agrees
    assert lines == sorted(lines, key=lambda line: line.split(":")[0].removeprefix("table "))
    assert "difference(s)" in result.stderr and "models vs database" in result.stderr


def test_check_reports_pending_migrations_and_compares_at_the_head(run):
    assert run("migrate", "up", "--target", "0001_initial").exit_code == 0
    result = run("migrate", "check")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"database: {len(SHIPPED) - 1} migration(s) pending ({', '.join(SHIPPED[1:])}); run "
        "`within-db migrate up`"]
    assert "migrations up to 0001_initial vs database" in result.stderr


def test_generate_refuses_destructive_steps_and_lists_what_it_cannot_write(
        run, fresh_url, backend, project):
    assert run("migrate", "up").exit_code == 0
    drift_database(fresh_url, backend)
    before = sorted(project.iterdir())
    result = run("migrate", "generate", "sync")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: the models imply destructive steps: drop column "
                                    "users.nickname (data loss)")
    assert "--allow-destructive" in result.stderr
    assert sorted(project.iterdir()) == before  # nothing written
    result = run("migrate", "generate", "sync", "--allow-destructive")
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path.parent == project and path.name == f"{NEXT}_sync.py"
    source = path.read_text()
    assert "migrator.drop_column('users', 'nickname')" in source
    for line in EXPECTED_DRIFT[:2]:
        assert f"TODO (write by hand): {line}" in result.stderr
        assert f"# TODO: {line}" in source
    assert "TODO (write by hand): prediction_logs: column score differs" in result.stderr


def test_generate_refuses_a_database_without_history(run, project):
    result = run("migrate", "generate", "oops")
    assert result.exit_code == 1
    assert "no migration history" in result.stderr and "migrate up" in result.stderr
    assert sorted(p.name for p in project.glob("[0-9]*.py")) == [
        p.name for p in sorted(migrate.migrations_dir().glob("[0-9]*.py"))]


def test_generate_refuses_when_nothing_differs(run, project):
    assert run("migrate", "up").exit_code == 0
    result = run("migrate", "generate", "nothing")
    assert result.exit_code == 1 and "nothing to generate" in result.stderr
    assert not list(project.glob("*nothing*"))


@pytest.mark.parametrize("name,message", [
    ("", "the migration name is empty"),
    ("  !! ", "the migration name is empty"),
    ("0001_initial", "starts with a number"),
    ("42", "starts with a number"),
    ("initial", 'a migration named "initial" exists already (0001_initial)'),
    ("Audit Log append-only", 'named "audit_log_append_only" exists already'),
])
def test_create_refuses_bad_names(name, message, project):
    result = CliRunner().invoke(cli, ["migrate", "create", name])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    assert len(list(project.glob("[0-9]*.py"))) == len(SHIPPED)


def test_create_writes_into_the_project_beside_pyproject(project, monkeypatch):
    monkeypatch.chdir(project)  # from a subfolder, the nearest project is found
    result = CliRunner().invoke(cli, ["migrate", "create", "add priority"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(project / f"{NEXT}_add_priority.py")
    assert f"within-db migrate --directory {project} up" in result.stderr
    assert '"""add priority"""' in (project / f"{NEXT}_add_priority.py").read_text()


def test_create_outside_a_project_or_into_an_installed_package_is_refused(tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WITHIN_DB_MIGRATIONS", raising=False)
    result = CliRunner().invoke(cli, ["migrate", "create", "add_priority"])
    assert result.exit_code == 2 and "no project found" in result.stderr
    assert "--directory" in result.stderr
    (tmp_path / "setup.cfg").write_text("[metadata]\nname = shop\n")
    result = CliRunner().invoke(cli, ["migrate", "create", "add_priority"])
    assert result.exit_code == 2
    assert f"{tmp_path / 'migrations'} does not exist" in result.stderr
    installed = tmp_path / "venv/lib/python3.11/site-packages/within_db/migrations"
    installed.mkdir(parents=True)
    for how in (["--directory", str(installed)], []):
        env = {} if how else {"WITHIN_DB_MIGRATIONS": str(installed)}
        result = CliRunner().invoke(cli, ["migrate", *how, "create", "add_priority"], env=env)
        assert result.exit_code == 2 and "inside an installed package" in result.stderr
    assert list(installed.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["setup.cfg", "venv"]


def test_check_of_a_wheel_like_install_leaves_the_package_alone(run, tmp_path):
    # status and up use the shipped migrations; a missing --directory is an error, not "[]"
    result = run("migrate", "--directory", str(tmp_path / "nope"), "status")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert run("migrate", "up").exit_code == 0
    status = run("migrate", "status", "--format", "json")
    assert status.exit_code == 0 and all(m["status"] == "applied"
                                         for m in json.loads(status.stdout))
    assert os.access(migrate.migrations_dir(), os.R_OK)


# -- the API boundary: bad arguments are refused with WithinDBError subclasses ----------------

@pytest.mark.parametrize("call,message", [
    (lambda db, tmp: introspect.describe(db, "users"), "tables must be a list of table names"),
    (lambda db, tmp: introspect.describe(db, [5]), "tables must be a list of table names"),
    (lambda db, tmp: introspect.describe(db, ["nope"]), 'unknown table "nope"'),
    (lambda db, tmp: introspect.describe(db, ['x"; DROP TABLE users; --']), "unknown table"),
    (lambda db, tmp: introspect.require_table(db, 5), "unknown table"),
    (lambda db, tmp: browse.rows(db, "users", [("email",)]), "(column, text value) pairs"),
    (lambda db, tmp: browse.rows(db, "users", order=5), "order must be a column name"),
    (lambda db, tmp: browse.rows(db, "users", limit=-1), "limit must be an integer"),
    (lambda db, tmp: browse.rows(db, "users", limit="5"), "limit must be an integer"),
    (lambda db, tmp: browse.rows(db, "users", limit=2**80), "limit must be an integer"),
    (lambda db, tmp: drift.check(db, models=5), "models must be a list of model classes"),
    (lambda db, tmp: drift.check(db, models=["users"]), "models must be a list of peewee"),
    (lambda db, tmp: drift.generate(None, db, directory=tmp), "must be text, not NoneType"),
])
def test_schema_tools_refuse_bad_arguments_with_within_db_errors(db, tmp_path, call, message):
    with pytest.raises(ValidationError) as info:
        call(db, tmp_path)
    assert message in str(info.value)
    assert list(tmp_path.iterdir()) == []
