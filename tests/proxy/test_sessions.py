"""2025-era session upkeep: last_seen_at follows use.

End to end through Behavry to the demo upstreams, plus the proxy's touch and ticker on their own.
"""

import asyncio
import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from agents.models import AgentSession
from agents.services import SESSION_TOUCH_SECONDS
from proxy import inflight, sessions
from tests.proxy.conftest import mcp_client, run_in_thread

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("starter_policies")]

ACCEPT = "application/json, text/event-stream"
VERSION = "2025-11-25"
STALE = timedelta(seconds=SESSION_TOUCH_SECONDS + 30)


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
        AgentSession.objects.create(id=session_id, agent=agent, server=legacy_server)
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
