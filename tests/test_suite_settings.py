"""The suite's own switches (tests/conftest.py): backend choice and what CI may not skip."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT


def _collect(**env):
    settings = {k: v for k, v in os.environ.items()
                if k not in ("WITHIN_DB_TEST_BACKENDS", "WITHIN_DB_REQUIRE_POSTGRES")}
    settings.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only",
                           "-p", "no:cacheprovider", "tests/test_fields.py"],
                          cwd=ROOT, env=settings, capture_output=True, text=True, timeout=120)


def test_one_backend_can_be_chosen():
    done = _collect(WITHIN_DB_TEST_BACKENDS="sqlite")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[sqlite]" in done.stdout and "[postgres]" not in done.stdout
    done = _collect(WITHIN_DB_TEST_BACKENDS="postgres")
    assert "[postgres]" in done.stdout and "[sqlite]" not in done.stdout


@pytest.mark.parametrize("env,message", [
    ({"WITHIN_DB_TEST_BACKENDS": "sqlite", "WITHIN_DB_REQUIRE_POSTGRES": "1"},
     "WITHIN_DB_REQUIRE_POSTGRES=1 but WITHIN_DB_TEST_BACKENDS leaves PostgreSQL out"),
    ({"WITHIN_DB_TEST_BACKENDS": "mysql"}, "expected sqlite, postgres or sqlite,postgres"),
    ({"WITHIN_DB_TEST_BACKENDS": ""}, "expected sqlite, postgres or sqlite,postgres"),
])
def test_a_backend_choice_that_would_skip_or_mean_nothing_is_refused(env, message):
    done = _collect(**env)
    assert done.returncode == 4
    assert message in done.stderr
