"""``within-db audit``: checkpoints and verification through the real CLI, on both backends."""

import json

import pytest
from click.testing import CliRunner

from within_db.cli import cli
from within_db.db import database, make_database

KEY = "cli-audit-key-0123456789abcdef-xyz"


@pytest.fixture
def run(fresh_url, monkeypatch):
    """Invoke ``within-db --database-url <fresh db> ARGS`` with the audit key set."""
    monkeypatch.setenv("WITHIN_DB_AUDIT_KEY", KEY)
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(cli, ["--database-url", fresh_url, *args])
        if database.obj is not None:
            database.obj.close()
        assert KEY not in result.stdout and KEY not in result.stderr
        return result

    yield invoke
    database.initialize(None)


@pytest.fixture
def seeded(run):
    result = run("seed", "--scale", "tiny")
    assert result.exit_code == 0, result.output
    return run


def _tamper(url, sql):
    """Change the committed log the way its owner could: triggers off, then ``sql``."""
    db = make_database(url)
    with db.connection_context(), db.atomic():
        if db.kind == "postgres":
            db.execute_sql("ALTER TABLE audit_logs DISABLE TRIGGER USER")
        else:
            for (name,) in db.execute_sql("SELECT name FROM sqlite_master WHERE type = "
                                          "'trigger' AND tbl_name = 'audit_logs'").fetchall():
                db.execute_sql(f'DROP TRIGGER "{name}"')
        db.execute_sql(sql)


def test_help_of_every_audit_command_has_an_example():
    runner = CliRunner()
    for args in (["audit"], ["audit", "checkpoint"], ["audit", "verify"]):
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, args


def test_verify_a_seeded_log(seeded):
    result = seeded("audit", "verify", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["checked"] > 0 and report["broken_id"] is None
    assert "audit chain intact" in result.stderr


def test_checkpoint_then_verify_then_truncation_fails(seeded, fresh_url, tmp_path):
    result = seeded("audit", "checkpoint")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    head = json.loads(line)
    assert len(result.stdout.splitlines()) == 1 and head["rows"] > 0
    anchor = tmp_path / "checkpoints.jsonl"
    anchor.write_text(line + "\n\n")
    result = seeded("audit", "verify", "--checkpoint", str(anchor), "--format", "json")
    assert result.exit_code == 0 and json.loads(result.stdout)["checkpoints"] == 1

    _tamper(fresh_url, f"DELETE FROM audit_logs WHERE id >= {head['last_id'] - 1}")
    assert seeded("audit", "verify").exit_code == 0  # nothing anchors the head without it
    result = seeded("audit", "verify", "--checkpoint", str(anchor), "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["broken_id"] == head["last_id"]
    [error] = result.stderr.strip().splitlines()
    assert error.startswith(f"Error: audit chain broken at row {head['last_id']}: is missing")


def test_a_changed_row_is_named(seeded, fresh_url):
    _tamper(fresh_url, "UPDATE audit_logs SET action = 'forged' WHERE id = 3")
    result = seeded("audit", "verify")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: audit chain broken at row 3: row content does not "
                                     "match its hash")
    assert "forged" not in result.stderr


def test_bad_keys_and_bad_checkpoint_files(seeded, tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    result = seeded("audit", "verify", "--checkpoint", str(bad))
    assert result.exit_code == 1 and result.stderr.startswith("Error: checkpoint 1 is not JSON")
    monkeypatch.delenv("WITHIN_DB_AUDIT_KEY")
    result = seeded("audit", "checkpoint")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("Error: WITHIN_DB_AUDIT_KEY is not set")
    monkeypatch.setenv("WITHIN_DB_AUDIT_KEY", "too-short")
    result = seeded("audit", "checkpoint")
    assert result.exit_code == 2 and "too-short" not in result.stderr
