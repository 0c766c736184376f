"""Fail closed: when the engine, the database or the audit write fails, the call is denied and
nothing reaches the upstream. Each case is checked on the upstream's side: the file the call would
have written does not exist there."""

import asyncio
import threading
import time
import uuid

import pytest
from django.db import OperationalError, connection
from mcp import Client

from audit.models import AuditEvent
from policies.services import policy_create
from tests.audit.test_aio import refuse_audit_inserts
from tests.conftest import TEST_ACTOR
from tests.proxy.conftest import MODES, mcp_client, run_in_thread

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("demo_server")]


@pytest.fixture(autouse=True)
def allow_writes(agent_and_token):
    policy_create(
        data={"name": "writes allowed", "effect": "allow", "tools": ["write_file", "read_file"]}, by=TEST_ACTOR
    )


async def upstream_has(demo_upstream, path) -> bool:
    async with Client(demo_upstream, mode="2026-07-28") as direct:  # straight to the upstream, no Behavry
        result = await direct.call_tool("read_file", {"path": path})
    return not result.is_error


async def write_through_behavry(behavry_url, token, mode):
    path = f"/fail-closed/{uuid.uuid4().hex}"
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        result = await client.call_tool("write_file", {"path": path, "content": "x"})
    return path, result


@pytest.mark.parametrize("mode", MODES)
async def test_the_control_case_writes_upstream(behavry_url, demo_upstream, token, mode):
    path, result = await write_through_behavry(behavry_url, token, mode)
    assert not result.is_error
    assert await upstream_has(demo_upstream, path)


async def broken_audit(*args, **kwargs):
    raise OperationalError("audit table unavailable")


@pytest.mark.parametrize("mode", MODES)
async def test_an_audit_write_failure_denies(behavry_url, demo_upstream, token, mode, monkeypatch):
    monkeypatch.setattr("proxy.handlers.audit_record_async", broken_audit)
    path, result = await write_through_behavry(behavry_url, token, mode)
    assert result.is_error
    assert result.structured_content["behavry"]["policy_id"] == "system.fail_closed"
    assert not await upstream_has(demo_upstream, path)


@pytest.mark.parametrize("mode", MODES)
async def test_a_database_refusing_the_decision_event_denies_on_the_warm_path(
    behavry_url, demo_upstream, token, mode, monkeypatch
):
    """Warm caches and a known chain head: the decision is made on the event loop and its event
    written on the loop's own connection (audit/aio.py). A real refusal there denies too."""
    path, result = await write_through_behavry(behavry_url, token, mode)  # warms every cache
    assert not result.is_error
    await run_in_thread(refuse_audit_inserts, True)
    threads = []

    async def on_db_thread(fn, *args, **kwargs):
        threads.append(fn.__name__)
        return await real_on_db_thread(fn, *args, **kwargs)

    from audit import aio

    real_on_db_thread = aio.on_db_thread
    monkeypatch.setattr(aio, "on_db_thread", on_db_thread)
    try:
        path, result = await write_through_behavry(behavry_url, token, mode)
    finally:
        monkeypatch.undo()
        await run_in_thread(refuse_audit_inserts, False)
    if connection.vendor == "postgresql" and mode == "2026-07-28":
        # Refused on the event loop's connection, not through the locking append. (A 2025 session
        # records its opening first; that refusal drops the head hint, so the decision then goes
        # to the locking append, which is refused too.)
        assert threads == []
    assert result.structured_content["behavry"]["policy_id"] == "system.fail_closed"
    assert not await upstream_has(demo_upstream, path)
    path, result = await write_through_behavry(behavry_url, token, mode)  # and it recovers
    assert not result.is_error and await upstream_has(demo_upstream, path)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("warm", [False, True], ids=["cold-caches", "warm-caches"])
async def test_a_decision_function_error_denies_and_is_audited(
    behavry_url, demo_upstream, token, mode, monkeypatch, warm
):
    """Cold caches: the decision runs on a database thread; warm: on the event loop. Either way
    an error in it is a recorded fail-closed deny. The real cache check decides which path runs."""
    from proxy import decision as decision_module

    if warm:  # caches that cannot expire between the warming call and the one under test
        monkeypatch.setattr("policies.engine.REFRESH_SECONDS", 60)
        monkeypatch.setattr("proxy.classify._CACHE_SECONDS", 60)
        # Twice: the first call to a new upstream detects its era, which empties the caches.
        for _ in range(2):
            await write_through_behavry(behavry_url, token, mode)
    real = decision_module.decide_tool_call
    paths = []

    def broken(**kwargs):
        if kwargs.get("cached_only") and real(**kwargs) is None:
            paths.append("stale cache")
            return None
        paths.append("loop" if kwargs.get("cached_only") else "thread")
        raise RuntimeError("engine bug")

    monkeypatch.setattr("proxy.handlers.decide_tool_call", broken)
    path, result = await write_through_behavry(behavry_url, token, mode)
    assert result.structured_content["behavry"]["policy_id"] == "system.fail_closed"
    assert not await upstream_has(demo_upstream, path)
    event = await run_in_thread(lambda: AuditEvent.objects.filter(tool="write_file", decision="deny").get())
    assert event.policy_id == "system.fail_closed"
    assert paths == (["loop"] if warm else ["stale cache", "thread"])


async def test_an_unavailable_database_denies(behavry_url, demo_upstream, token, monkeypatch):
    def down():
        raise OperationalError("could not connect to server")

    monkeypatch.setattr("policies.selectors.policy_version", down)
    path, result = await write_through_behavry(behavry_url, token, "2026-07-28")
    assert result.structured_content["behavry"]["policy_id"] == "system.fail_closed"
    assert not await upstream_has(demo_upstream, path)


async def test_a_slow_database_denies_after_the_decision_timeout(
    behavry_url, demo_upstream, token, monkeypatch, settings
):
    settings.BEHAVRY_DECISION_TIMEOUT_SECONDS = 1

    def slow():
        time.sleep(1.5)
        return 0

    monkeypatch.setattr("policies.selectors.policy_version", slow)
    path, result = await write_through_behavry(behavry_url, token, "2026-07-28")
    assert result.structured_content["behavry"]["policy_id"] == "system.fail_closed"
    assert not await upstream_has(demo_upstream, path)


async def test_a_decision_stuck_on_the_database_is_denied_without_waiting_for_it(
    behavry_url, demo_upstream, token, monkeypatch, settings
):
    """Not only checked once the database answers: the call is denied while the decision's
    database work is still blocked (a lock, a server that stopped answering)."""
    settings.BEHAVRY_DECISION_TIMEOUT_SECONDS = 1
    blocked, release = threading.Event(), threading.Event()

    def stuck():
        blocked.set()
        release.wait(60)
        return 0

    monkeypatch.setattr("policies.selectors.policy_version", stuck)
    try:
        path, result = await asyncio.wait_for(write_through_behavry(behavry_url, token, "2026-07-28"), 30)
        assert blocked.is_set() and not release.is_set()  # answered while the database work hung
    finally:
        release.set()
    # (on SQLite the decision event then waits behind the stuck thread too, and times out as well)
    assert result.structured_content["behavry"]["policy_id"] == "system.fail_closed"
    assert not await upstream_has(demo_upstream, path)


async def test_an_unreachable_upstream_is_a_clear_error_and_an_audited_outcome(behavry_url, token, demo_server):
    from proxy.services import upstream_server_update

    await run_in_thread(upstream_server_update, server=demo_server, url="http://127.0.0.1:9/mcp", by=TEST_ACTOR)
    await run_in_thread(lambda: type(demo_server).objects.filter(pk=demo_server.pk).update(era="modern"))
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "2026-07-28") as client:
        result = await client.call_tool("write_file", {"path": "/x", "content": "x"})
    assert result.is_error and "could not reach" in result.content[0].text
    outcome = await run_in_thread(lambda: AuditEvent.objects.filter(kind="outcome").get())
    assert outcome.details["status"] == "upstream_error"


@pytest.mark.parametrize("failure", ["slow", "audit"])
async def test_a_read_fails_closed_like_a_tool_call(behavry_url, token, monkeypatch, settings, failure):
    """prompts/get and resources/read go through the same decide-and-record step: a decision past
    the timeout or an audit write that fails is a deny, and nothing is read upstream."""
    from tests.proxy.test_endpoint import modern_headers, post

    if failure == "slow":
        settings.BEHAVRY_DECISION_TIMEOUT_SECONDS = 1
        monkeypatch.setattr("policies.selectors.policy_version", lambda: time.sleep(1.5) or 0)
    else:
        monkeypatch.setattr("proxy.handlers.audit_record_async", broken_audit)
    await run_in_thread(policy_create, data={"name": "reads", "effect": "allow", "actions": ["read"]}, by=TEST_ACTOR)
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 5, "method": "resources/read", "params": {"uri": "demo://readme", "_meta": meta}}
    headers = modern_headers(token, "resources/read", "demo://readme")
    response = (await post(f"{behavry_url}/mcp/demo", body, headers)).json()
    assert "result" not in response
    assert response["error"]["data"]["behavry"]["policy_id"] == "system.fail_closed"
