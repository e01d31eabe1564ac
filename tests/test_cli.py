"""The CLI through click's CliRunner (and once as the installed console script)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from within_db import migrate
from within_db.cli import cli
from within_db.db import database

SHIPPED = sorted(p.stem for p in migrate.migrations_dir().glob("[0-9]*.py"))


@pytest.fixture
def run(fresh_url):
    """Invoke ``within-db --database-url <fresh db> ARGS``; returns the click Result."""
    runner = CliRunner()

    def invoke(*args, url=fresh_url, input=None):
        result = runner.invoke(cli, ["--database-url", url, *args], input=input)
        if database.obj is not None:
            database.obj.close()
        return result

    yield invoke
    database.initialize(None)


@pytest.fixture
def seeded(run):
    result = run("seed", "--scale", "tiny")
    assert result.exit_code == 0, result.output
    return run


def test_version_and_help():
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.startswith("within-db, version")
    result = runner.invoke(cli, ["-h"])
    assert result.exit_code == 0 and "migrate" in result.output and "seed" in result.output
    for group in ("migrate", "inspect", "seed"):
        out = runner.invoke(cli, [group, "--help"]).output
        assert "Example" in out


def test_migrate_status_up_down(run):
    result = run("migrate", "up", "--target", "0001_initial")
    assert result.exit_code == 0 and result.stdout == ""
    assert "applied 0001_initial" in result.stderr  # progress goes to stderr
    result = run("migrate", "status", "--format", "json")
    assert result.exit_code == 1
    first, second = json.loads(result.stdout)[:2]
    assert second == {"name": "0002_audit_log_append_only", "status": "pending", "file": "ok",
                      "applied_at": None}
    assert first["status"] == "applied" and first["applied_at"].endswith("+00:00")
    assert "pending; run `within-db migrate up`" in result.stderr
    result = run("migrate", "up")
    assert result.exit_code == 0 and "applied 0002_audit_log_append_only" in result.stderr
    assert run("migrate", "status").exit_code == 0
    assert run("migrate", "check").exit_code == 0
    result = run("migrate", "down", "--target", "0001_initial")
    assert result.exit_code == 0 and "reverted 0001_initial" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["inspect"], ["inspect", "tables"], ["inspect", "schema"],
                                     ["inspect", "rows", "users"], ["inspect", "user", "x@y.z"],
                                     ["migrate", "status"], ["migrate", "check"]])
def test_read_only_commands_create_no_file(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 1
    assert result.stderr == f"Error: no SQLite database at {tmp_path / 'within.db'}; check " \
        "--database-url (DATABASE_URL), or create it with `within-db migrate up`\n"
    assert list(tmp_path.iterdir()) == []


def test_migrate_down_refuses_to_drop_rows_without_yes(seeded):
    result = seeded("migrate", "down", "--target", "0001_initial")
    assert result.exit_code == 1
    assert "drops" in result.stderr and "rows" in result.stderr and "--yes" in result.stderr
    assert "Traceback" not in result.output
    assert seeded("inspect", "tables").exit_code == 0  # nothing was reverted
    result = seeded("migrate", "down", "--target", "0001_initial", "--yes")
    assert result.exit_code == 0


def test_migrate_errors_are_one_line(run):
    result = run("migrate", "up", "--target", "9999_nope")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("Error: unknown migration")


def test_unmigrated_database_says_what_to_run(run):
    result = run("inspect")
    assert result.exit_code == 1
    assert "within-db migrate up" in result.stderr


def test_seed_then_inspect(seeded):
    result = seeded("inspect", "--format", "json")
    doc = json.loads(result.stdout)
    assert doc["migration_head"] == max(p.stem for p in migrate.migrations_dir().glob("0*.py"))
    counts = {t["table"]: t["rows"] for t in doc["tables"]}
    # empty by design: the history, and dropped months whose request ids await pruning
    empty = {"schema_migrations", "prediction_request_ids_dropped_months"}
    assert all(counts[t] > 0 for t in counts if t not in empty), counts
    result = seeded("inspect", "tables", "--format", "csv")
    assert result.stdout.splitlines()[0] == "table,rows,partitions"


def test_seed_refuses_a_database_with_data(seeded):
    result = seeded("seed", "--scale", "tiny")
    assert result.exit_code == 1 and "--reset" in result.stderr and "--append" in result.stderr
    result = seeded("seed", "--scale", "tiny", "--append", "--format", "json")
    assert result.exit_code == 0, result.output
    users = {t["table"]: t for t in json.loads(result.stdout)["tables"]}["users"]
    assert users["rows"] == 12 and users["added"] == 6
    result = seeded("seed", "--scale", "tiny", "--reset", "--format", "json")
    assert result.exit_code == 0, result.output
    users = {t["table"]: t for t in json.loads(result.stdout)["tables"]}["users"]
    assert users["rows"] == 6


def test_seed_count_overrides_and_bad_counts(run):
    result = run("seed", "--scale", "tiny", "--count", "users=2", "--count", "predictions=10",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    counts = {t["table"]: t["rows"] for t in json.loads(result.stdout)["tables"]}
    assert counts["users"] == 2 and counts["prediction_logs"] == 10
    result = run("seed", "--count", "bogus=1")
    assert result.exit_code == 2 and "bogus" in result.stderr
    result = run("seed", "--reset", "--append")
    assert result.exit_code == 2 and "exclude each other" in result.stderr


def test_inspect_rows_filters_orders_and_binds_values(seeded):
    first = json.loads(seeded("inspect", "rows", "campaigns", "--limit", "1",
                              "--format", "json").stdout)[0]
    result = seeded("inspect", "rows", "campaigns", "--where", f"platform={first['platform']}",
                    "--order", "-created_at", "--limit", "50", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and all(r["platform"] == first["platform"] for r in rows)
    assert [r["created_at"] for r in rows] == sorted((r["created_at"] for r in rows),
                                                     reverse=True)
    injected = seeded("inspect", "rows", "users", "--where", "email=x' OR '1'='1",
                      "--format", "json")
    assert injected.exit_code == 0 and json.loads(injected.stdout) == []
    assert json.loads(seeded("inspect", "--format", "json").stdout)["tables"]
    active = seeded("inspect", "rows", "users", "--where", "is_active=true", "--format", "json")
    assert all(r["is_active"] is True for r in json.loads(active.stdout))


def test_inspect_never_shows_secret_columns(seeded):
    for table in ("credentials", "access_tokens", "share_links"):
        result = seeded("inspect", "rows", table, "--format", "json")
        assert result.exit_code == 0, result.output
        text = result.stdout
        assert "password_hash" not in text and "token_hash" not in text
        assert "$argon2id$" not in text


def test_inspect_schema_reads_the_live_database(seeded):
    result = seeded("inspect", "schema", "model_versions", "--format", "json")
    doc = json.loads(result.stdout)[0]
    assert doc["table"] == "model_versions"
    indexes = {i["name"]: i for i in doc["indexes"]}
    assert indexes["model_versions_one_production"]["unique"]
    assert "production" in indexes["model_versions_one_production"]["where"]
    assert {c["name"] for c in doc["checks"]} == {"model_versions_stage_check",
                                                   "model_versions_version_positive_check"}
    fks = {f["column"]: f["on_delete"] for f in doc["foreign_keys"]}
    assert fks == {"model_id": "CASCADE", "training_job_id": "SET NULL"}
    audit = json.loads(seeded("inspect", "schema", "audit_logs", "--format", "json").stdout)[0]
    assert audit["triggers"] and all(
        "audit_logs_append_only" in t["definition"] or "RAISE(ABORT" in t["definition"]
        for t in audit["triggers"])
    table = seeded("inspect", "schema", "campaigns", "--format", "table")
    assert "campaigns_currency_check" in table.stdout and "owner_id" in table.stdout


def test_inspect_user_shows_roles_and_campaigns(seeded):
    rows = json.loads(seeded("inspect", "rows", "users", "--limit", "1", "--order", "email",
                             "--format", "json").stdout)
    email = rows[0]["email"]
    doc = json.loads(seeded("inspect", "user", email.upper(), "--format", "json").stdout)
    assert doc["user"]["email"] == email and "password_hash" not in json.dumps(doc)
    assert doc["roles"]
    created = [c["campaign"]["created_at"] for c in doc["campaigns"]]
    assert created == sorted(created, reverse=True)
    assert all(c["ads"] for c in doc["campaigns"])
    by_id = json.loads(seeded("inspect", "user", doc["user"]["id"], "--format", "json").stdout)
    assert by_id == doc
    table = seeded("inspect", "user", email, "--format", "table")
    assert email in table.stdout
    missing = seeded("inspect", "user", "ghost@example.com")
    assert missing.exit_code == 1 and "no user" in missing.stderr


def test_inspect_erd(run):
    result = run("inspect", "erd")
    assert result.stdout.startswith("erDiagram") and "users ||--o{ campaigns" in result.stdout
    assert run("inspect", "erd", "--markdown").stdout.startswith("# within_db schema")


def test_bad_url_and_unreachable_server_are_one_line_without_secrets(run):
    result = run("inspect", url="mysql://u@h/d")
    assert result.exit_code == 2 and result.stderr.startswith("Error: unsupported")
    result = run("inspect", url="postgresql://root:Sup3rSecret@127.0.0.1:1/x?connect_timeout=2")
    assert result.exit_code == 1
    assert "127.0.0.1:1" in result.stderr and "Sup3rSecret" not in result.output
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(run):
    runner = CliRunner()
    result = runner.invoke(cli, ["--debug", "--database-url", "mysql://u@h/d", "inspect"])
    assert result.exception is not None and type(result.exception).__name__ == \
        "ConfigurationError"


def test_installed_console_script_runs(fresh_url, tmp_path):
    beside = Path(sys.executable).parent / "within-db"
    exe = str(beside) if beside.exists() else shutil.which("within-db")
    assert exe, "the console script is not installed (pip install -e .)"
    env = {"DATABASE_URL": fresh_url, "PATH": "/usr/bin:/bin"}
    seed = subprocess.run([exe, "seed", "--scale", "tiny", "--format", "json"], env=env,
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert seed.returncode == 0, seed.stderr
    assert "seeded" in seed.stderr and json.loads(seed.stdout)["tables"]
    assert "seed: users 1/6" in seed.stderr  # progress without a terminal too
    status = subprocess.run([exe, "migrate", "status"], env=env, capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    assert status.returncode == 0
    bad = subprocess.run([exe, "inspect", "rows", "nope"], env=env, capture_output=True,
                         text=True, cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_migrate_create_and_directory_option(run, tmp_path):
    folder = tmp_path / "migs"
    folder.mkdir()
    result = run("migrate", "--directory", str(folder), "create", "Add priority!")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("0001_add_priority.py")
    assert run("migrate", "--directory", str(folder), "up").exit_code == 0
    status = run("migrate", "--directory", str(folder), "status", "--format", "json")
    assert [m["name"] for m in json.loads(status.stdout)] == ["0001_add_priority"]


@pytest.mark.parametrize("answer,reverted", [("n", False), ("y", True)])
def test_migrate_down_asks_on_a_terminal(seeded, fresh_url, answer, reverted):
    # util-linux `script` gives the command a real terminal; CliRunner has none
    script = shutil.which("script")
    assert script, "util-linux `script` is needed to give the command a terminal"
    exe = Path(sys.executable).parent / "within-db"
    command = f"{exe} --database-url '{fresh_url}' migrate down --target 0001_initial"
    result = subprocess.run([script, "-q", "-e", "-c", command, "/dev/null"],
                            input=f"{answer}\n", capture_output=True, text=True, timeout=120)
    assert "Continue? [y/N]" in result.stdout and "rows in" in result.stdout
    assert (result.returncode == 0) is reverted
    status = json.loads(seeded("migrate", "status", "--format", "json").stdout)
    assert all(m["status"] == ("pending" if reverted else "applied") for m in status)


def test_inspect_user_with_a_malformed_id_is_not_found_on_both_backends(seeded):
    for value in ("not-a-uuid", "12345678-1234", "\u043ewner@example.com"):
        result = seeded("inspect", "user", value)
        assert result.exit_code == 1
        assert result.stderr.startswith("Error: no user with that email or id")
        assert result.stderr.count("\n") == 1


def test_two_seeds_at_once_one_fills_the_other_says_it_holds_data(fresh_url):
    # Both start together; the seed lock makes the second wait for the first's commit.
    procs = [subprocess.Popen([sys.executable, "-m", "within_db", "--database-url", fresh_url,
                               "seed", "--scale", "tiny", "--format", "json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    (ok, _), (failed, message) = outcomes
    assert (ok, failed) == (0, 1), outcomes
    assert message.startswith("Error: the database already holds data (6 users)"), message
    assert message.count("\n") == 1


def test_format_is_accepted_on_the_group_and_the_command(seeded):
    for args in (["--format", "csv", "inspect", "rows", "users"],
                 ["inspect", "--format", "csv", "rows", "users"],
                 ["inspect", "rows", "users", "--format", "csv"],
                 ["inspect", "--format", "json", "rows", "users", "--format", "csv"]):
        result = seeded(*args)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("id,created_at,updated_at,email,"), args
    result = seeded("migrate", "--format", "csv", "status")
    assert result.stdout.splitlines()[0] == "name,status,file,applied_at"


def test_csv_always_has_a_header(seeded):
    result = seeded("inspect", "rows", "users", "--where", "email=nobody@example.com",
                    "--format", "csv")
    assert result.exit_code == 0
    assert result.stdout.startswith("id,created_at,updated_at,email,")
    assert result.stdout.count("\n") == 1
    result = seeded("inspect", "schema", "users", "--format", "csv")
    assert result.stdout.splitlines()[0] == "table,kind,name,detail,nullable,default"


def test_inspect_user_csv_carries_the_user_on_every_row(seeded):
    users = json.loads(seeded("inspect", "rows", "users", "--order", "email",
                              "--format", "json").stdout)
    email = users[0]["email"]
    result = seeded("inspect", "user", email, "--format", "csv")
    lines = result.stdout.splitlines()
    assert lines[0] == "user_id,email,full_name,is_active,roles,campaign_id,campaign,platform," \
        "status,created_at,ads"
    assert len(lines) > 1 and all(f",{email}," in line for line in lines[1:])


def test_money_is_shown_and_filtered_in_micros_under_its_column_name(seeded):
    rows = json.loads(seeded("inspect", "rows", "campaigns", "--limit", "1",
                             "--format", "json").stdout)
    micros = rows[0]["total_budget_micros"]
    assert isinstance(micros, int) and micros > 1_000_000
    found = json.loads(seeded("inspect", "rows", "campaigns", "--where",
                              f"total_budget_micros={micros}", "--format", "json").stdout)
    assert [r["id"] for r in found] == [rows[0]["id"]]
    units = seeded("inspect", "rows", "campaigns", "--where",
                   f"total_budget_micros={micros / 1_000_000}")
    assert units.exit_code == 2 and "whole number of micros" in units.stderr
    owner = json.loads(seeded("inspect", "user", rows[0]["owner_id"], "--format", "json").stdout)
    shown = {c["campaign"]["id"]: c["campaign"]["total_budget_micros"]
             for c in owner["campaigns"]}
    assert shown[rows[0]["id"]] == micros


def test_inspect_schema_is_sorted_so_equal_databases_print_equal_output(seeded, databases):
    documents = json.loads(seeded("inspect", "schema", "--format", "json").stdout)
    for doc in documents:
        for section, key in (("indexes", "name"), ("foreign_keys", "column"),
                             ("checks", "name"), ("triggers", "name")):
            names = [item[key] for item in doc[section]]
            assert names == sorted(names), (doc["table"], section)
    other = databases.new_url()
    assert seeded("migrate", "up", url=other).exit_code == 0
    # the same months as the seeded one (seed creates those of its prediction logs)
    assert seeded("partitions", "ensure", "--from", "2025-12", url=other).exit_code == 0
    for fmt in ("json", "csv", "table"):
        assert seeded("inspect", "schema", "--format", fmt, url=other).stdout == \
            seeded("inspect", "schema", "--format", fmt).stdout
