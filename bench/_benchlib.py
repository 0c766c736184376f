"""Shared set-up for the benchmark scripts: environment, django.setup(), migrate, small helpers."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/behavry_bench"


def bench_env() -> None:
    """Point Django at the bench database (unless DATABASE_URL is set) and keep var/ out of the checkout."""
    os.environ.setdefault("DATABASE_URL", BENCH_DATABASE_URL)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "behavry.settings")
    os.environ.setdefault("BEHAVRY_VAR_DIR", str(Path(tempfile.gettempdir()) / "behavry-bench-var"))
    os.environ.setdefault("BEHAVRY_LOG_LEVEL", "WARNING")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def setup_django(*, migrate: bool = True) -> None:
    bench_env()
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of `values` (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def db_label() -> str:
    from django.db import connection

    s = connection.settings_dict
    return f"{connection.vendor} {s.get('USER')}@{s.get('HOST')}:{s.get('PORT')}/{s.get('NAME')}"


def pg_settings() -> str:
    from django.db import connection

    if connection.vendor != "postgresql":
        return ""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
            " current_setting('fsync'), current_setting('shared_buffers')"
        )
        version, sync_commit, fsync, shared = cursor.fetchone()
    return f"PostgreSQL {version}, synchronous_commit={sync_commit}, fsync={fsync}, shared_buffers={shared}"
