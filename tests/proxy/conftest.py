"""A live Behavry (the real ASGI app, served by uvicorn in a thread) in front of the demo upstream.

In-process so tests share the test database and can break things on purpose (audit, decision,
database) with monkeypatch, while the agent side is the official MCP SDK client over real HTTP
and the upstream is a real SDK server in its own process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager

import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from agents.services import agent_create, agent_token_issue, role_create
from policies.engine import engine_cache
from policies.services import policy_create
from proxy.identity import clear_caches
from proxy.services import upstream_server_create
from tests.conftest import TEST_ACTOR, free_port

# The in-process servers running now (behavry_url), for _django_db_helper below.
_servers: list[uvicorn.Server] = []


@pytest.fixture
def _django_db_helper(_django_db_helper):
    """pytest-django's database fixture, wrapped: before it empties the database after a test,
    wait (up to 2 s) until the in-process server has no request running and no audit append in
    flight. A call's last audit write may follow its answer (proxy/hold.py records a held call's
    outcome right after answering); a flush that runs into it deadlocks with it."""
    yield _django_db_helper
    from audit.aio import appends_in_flight

    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and (appends_in_flight or any(s.server_state.tasks for s in _servers)):
        time.sleep(0.005)


@pytest.fixture(scope="session")
def behavry_url(django_db_blocker):
    from behavry.asgi import application

    port = free_port()
    config = uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    loops = []

    def run():
        loop = asyncio.new_event_loop()
        loops.append(loop)
        loop.run_until_complete(server.serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _servers.append(server)
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    # Close the connections the server's ORM thread opened, or the test database cannot be dropped.
    from asgiref.sync import sync_to_async
    from django.db import connections

    from proxy import inflight, sessions

    asyncio.run_coroutine_threadsafe(inflight.stop_listening(), loops[0]).result(10)
    asyncio.run_coroutine_threadsafe(sessions.stop_ticking(), loops[0]).result(10)
    asyncio.run_coroutine_threadsafe(sync_to_async(connections.close_all)(), loops[0]).result(10)
    server.should_exit = True
    thread.join(10)
    _servers.remove(server)
    # On PostgreSQL the proxy also keeps a connection in each database pool thread
    # (behavry/dbthreads.py) and the audit append's pool on the server's loop (behavry/pgpool.py),
    # which nothing here can reach to close: end them server-side.
    connection = connections["default"]
    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture(autouse=True)
def _fresh_proxy_caches():
    clear_caches()
    engine_cache.reset()
    yield
    clear_caches()
    engine_cache.reset()


@pytest.fixture
def demo_server(transactional_db, demo_upstream):
    return upstream_server_create(slug="demo", name="Demo", url=demo_upstream, by=TEST_ACTOR)


@pytest.fixture
def legacy_server(transactional_db, legacy_upstream):
    return upstream_server_create(slug="legacy", name="Legacy demo", url=legacy_upstream, by=TEST_ACTOR)


@pytest.fixture
def legacy_json_server(transactional_db, legacy_json_upstream):
    return upstream_server_create(slug="legacy-json", name="Legacy JSON demo", url=legacy_json_upstream, by=TEST_ACTOR)


@pytest.fixture
def agent_and_token(transactional_db):
    role_create(name="readers", by=TEST_ACTOR)
    agent = agent_create(name="research-bot", roles=["readers"], by=TEST_ACTOR)
    _token, raw = agent_token_issue(agent=agent, by=TEST_ACTOR)
    return agent, raw


@pytest.fixture
def token(agent_and_token):
    return agent_and_token[1]


@pytest.fixture
def agent(agent_and_token):
    return agent_and_token[0]


@pytest.fixture
def starter_policies(transactional_db, agent_and_token):
    """Reads allowed, echo/slow_task allowed, delete_* denied, write escalated; the rest default deny."""
    for body in (
        {"name": "reads", "effect": "allow", "actions": ["read"]},
        {
            "name": "utilities",
            "effect": "allow",
            "tools": [
                "echo",
                "slow_task",
                "task_status",
                "fail",
                "ask_user",
                "ping_client",
                "announce_*",
                "show_credentials",
            ],
        },
        {"name": "no deleting", "effect": "deny", "tools": ["delete_*"], "reason": "Deleting is not allowed."},
        {"name": "writes need approval", "effect": "escalate", "tools": ["write_file"], "reason": "Needs a human."},
    ):
        policy_create(data=body, by=TEST_ACTOR)


@asynccontextmanager
async def mcp_client(
    url: str, token: str | None, mode: str, elicitation_callback=None, message_handler=None, **headers
):
    all_headers = {**headers}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    http = create_mcp_http_client(headers=all_headers, timeout=httpx2.Timeout(30, read=60))
    transport = streamable_http_client(url, http_client=http)
    async with Client(
        transport, mode=mode, elicitation_callback=elicitation_callback, message_handler=message_handler
    ) as client:
        yield client


MODES = ["legacy", "2026-07-28"]


async def run_in_thread(fn, *args, **kwargs):
    """Run ORM code from an async test without tripping Django's async-safety check.

    It first waits for the in-process server's outcome writes still committing after their answer
    went out (proxy.handlers.answer_after_outcome), so a read after a call sees its outcome."""
    from asgiref.sync import sync_to_async

    await outcomes_committed()
    return await sync_to_async(fn, thread_sensitive=True)(*args, **kwargs)


async def outcomes_committed(timeout: float = 10.0) -> None:
    from proxy.handlers import outcomes_in_flight

    deadline = time.monotonic() + timeout
    while outcomes_in_flight:  # the server's loop is another thread's
        if time.monotonic() > deadline:
            raise AssertionError(f"outcome writes still in flight after {timeout} s")
        await asyncio.sleep(0.001)


__all__ = ["MODES", "asyncio", "mcp_client", "run_in_thread"]


async def upstream_task_status(upstream_url: str, tag: str, until_not: str = "running", timeout: float = 15.0) -> str:
    """Ask the demo upstream itself (not through Behavry) how a tagged slow_task run ended."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with Client(streamable_http_client(upstream_url), mode="legacy") as client:
        while True:
            status = (await client.call_tool("task_status", {"tag": tag})).content[0].text
            if status != until_not or asyncio.get_running_loop().time() > deadline:
                return status
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (cryptography comes with Daphne's autobahn)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "behavry-test-upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "cert.pem", folder / "key.pem"
