"""2025-era session upkeep: last_seen_at follows use, idle sessions end, one agent's sessions are capped.

End to end with the official MCP SDK client (legacy mode) -> Behavry -> the 2025-only demo upstream,
plus the proxy's touch and ticker on their own.
"""

import asyncio
import time
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import httpx2
import pytest
from django.utils import timezone
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from agents.models import AgentSession
from agents.services import SESSION_TOUCH_SECONDS, agent_create, agent_token_issue
from agents.tasks import expire_idle_sessions
from audit.models import AuditEvent
from proxy import inflight, sessions
from proxy import jsonrpc as rpc
from tests.conftest import TEST_ACTOR
from tests.factories import AgentSessionFactory
from tests.proxy.conftest import mcp_client, run_in_thread

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("starter_policies")]

ACCEPT = "application/json, text/event-stream"
VERSION = "2025-11-25"
STALE = timedelta(seconds=SESSION_TOUCH_SECONDS + 30)


@pytest.fixture
def outsider_token(transactional_db):
    outsider = agent_create(name="outsider-bot", roles=["readers"], by=TEST_ACTOR)
    return agent_token_issue(agent=outsider, by=TEST_ACTOR)[1]


@asynccontextmanager
async def legacy_client(url, token, statuses):
    """The SDK client in legacy mode, noting the HTTP status of each POST it sends."""

    async def note(response):
        if response.request.method == "POST":
            statuses.append(response.status_code)

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=60))
    http.event_hooks["response"].append(note)
    async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        yield client


async def initialize(url, token):
    """A raw 2025-11-25 initialize (a leaky client that never sends DELETE); returns the session id."""
    params = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params},
            headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT},
        )
    return response.headers["mcp-session-id"]


async def list_tools(url, token, session_id):
    """The HTTP status of a tools/list on that session."""
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT, "Mcp-Session-Id": session_id}
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers)
    return response.status_code


async def upstream_knows(upstream_url, upstream_session_id):
    """Does the upstream itself still have this session? (Asked directly, not through Behavry.)"""
    headers = {"Accept": ACCEPT, "Mcp-Session-Id": upstream_session_id, "MCP-Protocol-Version": VERSION}
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            upstream_url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=headers
        )
    return response.status_code == 200


async def eventually(check, timeout=10.0):
    """Wait until `check()` (a coroutine function) is true; background work finishes in its own time."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def session_row(session_id):
    return AgentSession.objects.get(pk=session_id)


def open_rows(**filters):
    return list(AgentSession.objects.filter(ended_at__isnull=True, **filters).order_by("created_at"))


def age(session_id, by):
    AgentSession.objects.filter(pk=session_id).update(last_seen_at=timezone.now() - by)
    return session_row(session_id).last_seen_at


# --- idle expiry, end to end ---------------------------------------------------------------------


async def test_after_idle_expiry_the_next_call_gets_404_and_a_new_session_works(
    behavry_url, legacy_server, legacy_upstream, token, agent, settings, monkeypatch
):
    # The SDK client keeps its GET stream open, which keeps a live session seen (the ticker); this
    # test plays a client gone quiet, so the ticker sees nothing in use.
    monkeypatch.setattr(sessions, "in_use", set)
    settings.BEHAVRY_MCP_SESSION_IDLE_SECONDS = 60
    url = f"{behavry_url}/mcp/legacy"
    statuses: list[int] = []
    async with legacy_client(url, token, statuses) as client:
        assert (await client.call_tool("echo", {"message": "before"})).content[0].text == "Echo: before"
        [session] = await run_in_thread(open_rows, agent=agent)
        assert session.upstream_session_id and await upstream_knows(legacy_upstream, session.upstream_session_id)
        await run_in_thread(age, session.pk, timedelta(hours=2))

        assert await run_in_thread(expire_idle_sessions) == 1

        with pytest.raises(MCPError) as refused:
            await client.call_tool("echo", {"message": "after"})
        assert refused.value.code == rpc.SESSION_NOT_FOUND
        assert statuses[-1] == 404
    assert (await run_in_thread(session_row, session.pk)).end_reason == "idle"
    assert not await upstream_knows(legacy_upstream, session.upstream_session_id)

    async with mcp_client(url, token, "legacy") as client:  # the client initializes again
        assert (await client.call_tool("echo", {"message": "again"})).content[0].text == "Echo: again"


async def test_idle_expiry_leaves_a_busy_agent_alone(
    behavry_url, legacy_server, token, outsider_token, agent, settings, monkeypatch
):
    monkeypatch.setattr(sessions, "in_use", set)
    settings.BEHAVRY_MCP_SESSION_IDLE_SECONDS = 60
    url = f"{behavry_url}/mcp/legacy"
    quiet = await initialize(url, token)
    busy = await initialize(url, outsider_token)
    await run_in_thread(age, quiet, timedelta(hours=2))

    assert await run_in_thread(expire_idle_sessions) == 1

    assert await list_tools(url, token, quiet) == 404
    assert await list_tools(url, outsider_token, busy) == 200


# --- the per-agent cap, end to end ---------------------------------------------------------------


async def test_an_initialize_past_the_cap_evicts_that_agents_least_recently_seen_session_only(
    behavry_url, legacy_server, legacy_upstream, token, outsider_token, agent, settings
):
    settings.BEHAVRY_MCP_MAX_SESSIONS_PER_AGENT = 2
    url = f"{behavry_url}/mcp/legacy"
    outsiders = [await initialize(url, outsider_token) for _ in range(2)]
    first, second = await initialize(url, token), await initialize(url, token)
    first_upstream = (await run_in_thread(session_row, first)).upstream_session_id
    await run_in_thread(age, first, timedelta(minutes=5))  # the least recently seen, whatever the clock's grain

    third = await initialize(url, token)  # a leaky client: its sessions are never deleted

    assert await list_tools(url, token, first) == 404
    assert [await list_tools(url, token, s) for s in (second, third)] == [200, 200]
    assert [await list_tools(url, outsider_token, s) for s in outsiders] == [200, 200]
    assert (await run_in_thread(session_row, first)).end_reason == "evicted"
    initialized = await run_in_thread(lambda: AuditEvent.objects.get(action="initialize", session=third).details)
    assert initialized["evicted_sessions"] == [first]  # recorded on the event that caused it

    async def upstream_forgot():
        return not await upstream_knows(legacy_upstream, first_upstream)

    await eventually(upstream_forgot)  # the eviction's upstream DELETE runs in the background


# --- last_seen_at follows use --------------------------------------------------------------------


async def test_a_request_on_a_stale_session_moves_last_seen_at_and_a_fresh_one_does_not(
    behavry_url, legacy_server, token, monkeypatch
):
    url = f"{behavry_url}/mcp/legacy"
    session_id = await initialize(url, token)
    stale = await run_in_thread(age, session_id, STALE)

    assert await list_tools(url, token, session_id) == 200

    async def moved():
        return (await run_in_thread(session_row, session_id)).last_seen_at > stale

    await eventually(moved)
    touched = []
    monkeypatch.setattr(sessions, "_touch", lambda ids: touched.append(ids) or asyncio.sleep(0))
    assert await list_tools(url, token, session_id) == 200
    assert touched == []  # seen within the last SESSION_TOUCH_SECONDS: no UPDATE at all


async def test_a_get_stream_start_moves_last_seen_at(behavry_url, legacy_server, token):
    url = f"{behavry_url}/mcp/legacy"
    session_id = await initialize(url, token)
    stale = await run_in_thread(age, session_id, STALE)
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream", "Mcp-Session-Id": session_id}

    async def moved():
        return (await run_in_thread(session_row, session_id)).last_seen_at > stale

    async with httpx.AsyncClient(timeout=30) as http, http.stream("GET", url, headers=headers) as stream:
        assert stream.status_code == 200
        await eventually(moved)


async def test_a_stateless_call_carried_on_a_bridge_session_moves_its_last_seen_at(
    behavry_url, legacy_server, token, agent
):
    url = f"{behavry_url}/mcp/legacy"
    async with mcp_client(url, token, "2026-07-28") as client:
        await client.call_tool("echo", {"message": "bridged"})
        [bridge] = await run_in_thread(open_rows, agent=agent, era="modern")
        stale = await run_in_thread(age, bridge.pk, STALE)
        await client.call_tool("echo", {"message": "bridged again"})

    async def moved():
        return (await run_in_thread(session_row, bridge.pk)).last_seen_at > stale

    await eventually(moved)


async def test_a_stateless_call_to_a_2026_upstream_touches_no_session(behavry_url, demo_server, token, monkeypatch):
    touched = []
    monkeypatch.setattr(sessions, "touch_if_due", touched.append)
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "2026-07-28") as client:
        assert (await client.call_tool("echo", {"message": "stateless"})).content[0].text == "Echo: stateless"
    assert touched == []
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "legacy") as client:  # the same probe sees sessions
        await client.call_tool("echo", {"message": "legacy"})
    assert touched and {session.era for session in touched} == {"legacy"}


# --- the ticker -----------------------------------------------------------------------------------


async def test_the_ticker_keeps_sessions_in_use_seen_and_no_others(agent, legacy_server, monkeypatch):
    monkeypatch.setattr(sessions, "TICK_SECONDS", 0.01)

    def make(session_id, by):
        AgentSessionFactory(id=session_id, agent=agent, server=legacy_server)
        return age(session_id, by)

    before = {sid: await run_in_thread(make, sid, STALE) for sid in ("streaming", "calling", "quiet")}
    await run_in_thread(make, "fresh", timedelta(0))
    sessions.stream_opened("streaming")
    inflight.register("calling", 7, asyncio.Event())
    try:
        sessions.touch_if_due(await run_in_thread(session_row, "fresh"))  # starts this loop's ticker

        async def both_moved():
            rows = {sid: (await run_in_thread(session_row, sid)).last_seen_at for sid in before}
            return rows["streaming"] > before["streaming"] and rows["calling"] > before["calling"]

        await eventually(both_moved)
        assert (await run_in_thread(session_row, "quiet")).last_seen_at == before["quiet"]
    finally:
        sessions.stream_closed("streaming")
        inflight.unregister("calling", 7)
        await sessions.stop_ticking()
