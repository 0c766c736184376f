"""Typed readers for environment variables.

Every setting Behavry reads from the environment goes through one of these helpers, so a bad value
fails the same way everywhere: a `ConfigError` naming the variable, which `settings.py` turns into a
one-line exit message instead of a traceback deep inside Django's start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A configuration value is present but unusable."""


def env_str(name: str, default: str = "", *, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(name, default)


def env_bool(name: str, default: bool = False, *, environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    if name not in environ:
        return default
    raw = environ[name]
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    environ = os.environ if environ is None else environ
    if name not in environ:
        return default
    raw = environ[name]
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum of {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} is above the maximum of {maximum}")
    return value


def env_list(name: str, default: list[str], *, environ: Mapping[str, str] | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    if name not in environ:
        return list(default)
    return [item.strip() for item in environ[name].split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...], *, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    raw = environ.get(name, default)
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={raw!r} is not one of: {', '.join(choices)}")
    return value


_RATE_PERIODS = {
    "s": "second",
    "sec": "second",
    "second": "second",
    "m": "minute",
    "min": "minute",
    "minute": "minute",
    "h": "hour",
    "hour": "hour",
    "d": "day",
    "day": "day",
}


def env_rate(name: str, default: str, *, environ: Mapping[str, str] | None = None) -> str | None:
    """A request rate such as `600/minute` (DRF throttle syntax), or None for `off`."""
    environ = os.environ if environ is None else environ
    raw = environ.get(name, default)
    value = raw.strip().lower()
    if value in ("off", "none", "0"):
        return None
    count, _, period = value.partition("/")
    if not count.isdigit() or int(count) < 1 or period not in _RATE_PERIODS:
        raise ConfigError(f"{name}={raw!r} is not a rate (use e.g. 600/minute, 20/second, or off)")
    return f"{int(count)}/{_RATE_PERIODS[period]}"


@dataclass(frozen=True)
class DatabaseConfig:
    vendor: str  # "sqlite" or "postgresql"
    django: dict


def parse_database_url(url: str, *, sqlite_default: Path, conn_max_age: int = 60) -> DatabaseConfig:
    """Turn DATABASE_URL into a Django DATABASES entry.

    Only the two backends Behavry is tested on are accepted; anything else (mysql://, typos) is a
    start-up error rather than a surprise at the first query.
    """
    if not url:
        return DatabaseConfig("sqlite", _sqlite(sqlite_default))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        # sqlite:///relative/or/absolute.db - the path is everything after the scheme's slashes.
        path = parts.path or ""
        if not path or path == "/":
            raise ConfigError(f"DATABASE_URL={url!r} has no file path (sqlite:///var/behavry.sqlite3)")
        return DatabaseConfig("sqlite", _sqlite(Path(path)))
    if scheme in {"postgres", "postgresql", "pgsql"}:
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ConfigError(f"DATABASE_URL={url!r} names no database")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"DATABASE_URL={url!r} has a bad port") from None
        return DatabaseConfig(
            "postgresql",
            {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": name,
                "USER": unquote(parts.username or ""),
                "PASSWORD": unquote(parts.password or ""),
                "HOST": parts.hostname or "",
                "PORT": str(port or ""),
                # Reused connections: opening one per tool call would cost milliseconds on the hot
                # path. No per-use health check either: with Channels' database_sync_to_async it
                # adds a SELECT 1 round trip to every step. After a database restart the first
                # step on a stale connection fails (and denies, fail closed), and Django then
                # drops that connection. Held requests never keep a connection checked out.
                "CONN_MAX_AGE": conn_max_age,
                "CONN_HEALTH_CHECKS": False,
                "OPTIONS": {"connect_timeout": 5},
            },
        )
    raise ConfigError(f"DATABASE_URL scheme {scheme or '(none)'!r} is not supported; use postgres://… or sqlite:///…")


def _sqlite(path: Path) -> dict:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            # The embedded default runs the ASGI server and a Celery worker against one file.
            # WAL lets readers proceed during a write, IMMEDIATE takes the write lock at BEGIN so
            # two writers queue on `timeout` instead of failing with "database is locked".
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        # Tests use a file too, not Django's shared in-memory database: that one takes table
        # locks that ignore the busy timeout, so concurrent tests would fail where the embedded
        # default (a WAL file) queues writers.
        "TEST": {"NAME": str(path.with_name(f"test-{path.stem}.sqlite3"))},
    }


def check_redis_url(name: str, url: str) -> str:
    if not url:
        return url
    scheme = urlsplit(url).scheme.lower()
    if scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(f"{name}={url!r} is not a redis:// URL")
    return url
