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


@pytest.mark.parametrize("setting", ["DEFAULT_PAGINATION_CLASS", "DEFAULT_PARSER_CLASSES", "EXCEPTION_HANDLER"])
def test_drf_settings_import_whichever_is_read_first(setting, tmp_path):
    # The system checks run in set order, so any DRF setting may be the first thing a command
    # reads; an import cycle through it once broke `manage.py migrate` at random in CI.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BEHAVRY_", "DATABASE_URL", "REDIS_URL"))}
    code = (
        "import django; django.setup()\n"
        "from rest_framework.settings import api_settings\n"
        f"value = api_settings.{setting}\n"
        "print(*[v.__module__ for v in (value if isinstance(value, list) else [value])])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "behavry.settings", "BEHAVRY_VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] in ("behavry.api", "behavry.drf_defaults")
