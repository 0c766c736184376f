"""Bad configuration stops start-up with one line naming the problem."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _check(**env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BEHAVRY_", "DATABASE_URL", "REDIS_URL"))}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL scheme 'mysql' is not supported"),
        ({"BEHAVRY_PORT": "eighty"}, "BEHAVRY_PORT='eighty' is not an integer"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL='http://localhost' is not a redis:// URL"),
        ({"BEHAVRY_DEBUG": "perhaps"}, "BEHAVRY_DEBUG='perhaps' is not a boolean"),
        ({"BEHAVRY_PRODUCTION": "true"}, "BEHAVRY_SECRET_KEY must be set"),
    ],
)
def test_it_refuses_bad_configuration_with_one_line(env, expected):
    result = _check(**env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"behavry: configuration error: {expected}")


def test_it_starts_with_no_configuration_at_all(tmp_path):
    result = _check(BEHAVRY_VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
