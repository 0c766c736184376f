"""Shared fixtures: people personas, API keys per role, a live demo upstream, CI service checks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache

from accounts.roles import PersonRole
from accounts.services import api_key_create
from behavry.actors import Actor
from tests.factories import UserFactory

ROOT = Path(__file__).resolve().parent.parent
TEST_ACTOR = Actor(kind="system", id="tests", name="tests")
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_sessionstart(session):
    """In CI a configured service that does not answer fails the run instead of skipping tests."""
    if not IN_CI:
        return
    from django.conf import settings

    if settings.REDIS_URL:
        import redis

        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
        except Exception as exc:
            pytest.exit(f"CI=true and REDIS_URL is set, but Redis does not answer: {exc}", returncode=3)


def pytest_collection_modifyitems(config, items):
    from django.conf import settings

    for item in items:
        if item.get_closest_marker("postgres") and settings.DATABASE_VENDOR != "postgresql":
            item.add_marker(pytest.mark.skip(reason="PostgreSQL-only behaviour; runs in the PostgreSQL pass"))
        if item.get_closest_marker("redis") and not settings.REDIS_URL:
            item.add_marker(pytest.mark.skip(reason="needs REDIS_URL; runs in the Redis pass"))


@pytest.fixture(autouse=True)
def _clean_cache(settings):
    """Empty Behavry's cache between tests without FLUSHDB-ing a shared Redis database."""
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(match="behavry:*", count=1000))
        if keys:
            client.delete(*keys)
    else:
        cache.clear()
    yield


@pytest.fixture(autouse=True)
def _close_proxy_connections():
    """The audit append's event-loop connections (behavry/pgpool.py) belong to a test's loop, and
    the database threads' (behavry/dbthreads.py) outlive any test: close both after each test, or
    the test database cannot be dropped."""
    yield
    from behavry import dbthreads, pgpool

    pgpool.close_all()
    dbthreads.close_thread_connections()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Personas get a password; the production hasher costs ~0.6 s per user.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright (its own browser download does not work here)."""
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("CI=true but chromium is not installed")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, which makes Django think
    # every ORM call in a fixture is inside async code. The calls really are synchronous, and the
    # fixture is module-scoped so the override ends with the browser tests.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]  # module scope: async tests elsewhere keep the check


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


def _person(username: str, role: PersonRole | None):
    user = UserFactory(username=username)
    if role is not None:
        user.groups.add(Group.objects.get_or_create(name=role.value)[0])
    return user


@pytest.fixture
def admin_user(db):
    return _person("alice-admin", PersonRole.ADMIN)


@pytest.fixture
def approver_user(db):
    return _person("bob-approver", PersonRole.APPROVER)


@pytest.fixture
def viewer_user(db):
    return _person("carol-viewer", PersonRole.VIEWER)


@pytest.fixture
def outsider_user(db):
    """A signed-in person with no Behavry role at all."""
    return _person("mallory-outsider", None)


def _key(role: str) -> str:
    _obj, raw = api_key_create(name=f"{role}-key", role=role, by=TEST_ACTOR)
    return raw


@pytest.fixture
def admin_key(db) -> str:
    return _key(PersonRole.ADMIN)


@pytest.fixture
def approver_key(db) -> str:
    return _key(PersonRole.APPROVER)


@pytest.fixture
def viewer_key(db) -> str:
    return _key(PersonRole.VIEWER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_upstream(era: str, *extra: str):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo.upstream", "--port", str(port), "--era", era, *extra],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"demo upstream exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("demo upstream did not start within 20 s")


@pytest.fixture(scope="session")
def demo_upstream():
    """URL of a real MCP server (demo/upstream.py, official SDK) speaking both eras."""
    proc, url = _start_upstream("dual")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def legacy_upstream():
    """URL of the demo upstream restricted to the 2025 (initialize) era."""
    proc, url = _start_upstream("legacy")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def legacy_json_upstream():
    """The 2025-only demo upstream answering every POST with one JSON body (no SSE)."""
    proc, url = _start_upstream("legacy", "--json")
    yield url
    proc.terminate()
    proc.wait(10)


def start_daphne(redis_url: str) -> tuple[subprocess.Popen, str]:
    """A real Daphne process on a free port, sharing the (transactional) test database and Redis."""
    import httpx
    from django.db import connection

    settings = connection.settings_dict
    port = free_port()
    host, db_port = settings["HOST"] or "127.0.0.1", settings["PORT"] or 5432
    env = {
        **os.environ,
        # The subprocess talks to the test database directly (its data is committed: transactional test).
        "DATABASE_URL": f"postgres://{settings['USER']}@{host}:{db_port}/{settings['NAME']}",
        "REDIS_URL": redis_url,
    }
    from behavry.asgi_server import asgi_server_command

    proc = subprocess.Popen(
        asgi_server_command("daphne", port),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"daphne did not start: {proc.stderr.read().decode()[-2000:]}")


@pytest.fixture
def daphnes(request, settings):
    """Start Daphne processes with `daphnes()` (PostgreSQL + Redis tests); stopped at the end."""
    procs = []

    def start(redis_url=None):
        proc, url = start_daphne(redis_url or settings.REDIS_URL)
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(10)


class MonotonicClock:
    """Stands in for `time` in the modules given to frozen_monotonic(): cache lifetimes and
    refresh windows pass by assigning `now`, without sleeping."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def frozen_monotonic(monkeypatch, *modules) -> MonotonicClock:
    from types import SimpleNamespace

    clock = MonotonicClock()
    for module in modules:
        monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock
