"""2025-11-25 polling SSE (SEP-1699): an upstream that ends a connection mid-stream after an event
with an id is resumed with GET + Last-Event-ID (proxy/upstream.py _SseStream), for a tool call's
answer and for a session's GET stream: against a scripted upstream for what goes on the wire, and
through Behavry against the official SDK server with an event store
(tests/proxy/resumable_upstream.py)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import pytest

from audit.models import AuditEvent
from policies.services import policy_create
from proxy import upstream
from proxy.services import upstream_server_create
from proxy.upstream import UpstreamError
from tests.conftest import ROOT, TEST_ACTOR, free_port
from tests.proxy.conftest import MODES, mcp_client, run_in_thread
from tests.proxy.test_upstream import Scripted, call, sse, target

LEGACY = {"session_id": "session-1", "protocol_version": "2025-11-25"}
PROGRESS = b'{"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}'
ANSWER = b'{"jsonrpc": "2.0", "id": 1, "result": {"content": []}}'


async def test_an_answer_ended_after_an_event_id_goes_on_from_a_get_with_last_event_id():
    first = sse(b"id: ev-1\nretry: 10\ndata: \n\n", b"id: ev-2\ndata: " + PROGRESS + b"\n\n")
    async with Scripted([first, sse(b"id: ev-3\ndata: " + ANSWER + b"\n\n")]) as up:
        reply = await upstream.post(target(up.port), call(), **LEGACY)
        messages = [message async for message in reply.messages]
        await reply.aclose()
    assert [m.get("method", "answer") for m in messages] == ["notifications/progress", "answer"]
    resumed = up.requests[1].decode().lower()
    assert resumed.startswith("get /mcp http/1.1\r\n")
    for header in ("last-event-id: ev-2", "mcp-session-id: session-1", "mcp-protocol-version: 2025-11-25"):
        assert f"{header}\r\n" in resumed
    assert "x-upstream-key: upstream-secret\r\n" in resumed


@pytest.mark.parametrize(
    ("why", "events", "send"),
    [
        (
            "a 2026-07-28 answer has no resumption",
            b"id: ev-1\ndata: \n\n",
            {"headers": {"MCP-Protocol-Version": "2026-07-28"}},
        ),
        ("no event had an id", b"data: " + PROGRESS + b"\n\n", LEGACY),
        ("the last id was emptied", b"id: ev-1\ndata: \n\nid\ndata: " + PROGRESS + b"\n\n", LEGACY),
    ],
)
async def test_an_answer_that_cannot_be_resumed_ends_without_a_response(why, events, send):
    async with Scripted([sse(events), sse(b"data: " + ANSWER + b"\n\n")]) as up:
        reply = await upstream.post(target(up.port), call(), **send)
        with pytest.raises(UpstreamError, match="without a response"):
            await upstream.first_response(reply, 1)
    assert len(up.requests) == 1, why


async def test_resuming_gives_up_after_a_few_reconnections_that_bring_nothing():
    empty = sse()
    answers = [sse(b"id: ev-1\nretry: 0\ndata: \n\n")] + [empty] * upstream.RESUME_ATTEMPTS
    async with Scripted(answers) as up:
        reply = await upstream.post(target(up.port), call(), **LEGACY)
        with pytest.raises(UpstreamError, match=f"{upstream.RESUME_ATTEMPTS} reconnections brought nothing"):
            await upstream.first_response(reply, 1)
    assert len(up.requests) == 1 + upstream.RESUME_ATTEMPTS


async def test_a_refused_resumption_is_an_upstream_error_at_once():
    gone = ("404 Not Found", "Content-Length: 0\r\n", [])
    async with Scripted([sse(b"id: ev-1\nretry: 0\ndata: \n\n"), gone, sse()]) as up:
        reply = await upstream.post(target(up.port), call(), **LEGACY)
        with pytest.raises(UpstreamError, match="could not be resumed: reconnecting was answered HTTP 404"):
            await upstream.first_response(reply, 1)
    assert len(up.requests) == 2


@pytest.fixture(scope="module")
def resumable_upstream():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.proxy.resumable_upstream", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the resumable upstream did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def url(behavry_url, resumable_upstream, starter_policies):
    upstream_server_create(slug="polling", name="Polling", url=resumable_upstream, by=TEST_ACTOR)
    policy_create(
        data={"name": "polling tools", "effect": "allow", "tools": ["poll_task", "announce_across_reconnect"]},
        by=TEST_ACTOR,
    )
    return f"{behavry_url}/mcp/polling"


@pytest.mark.parametrize("mode", MODES)
async def test_a_tool_call_gets_its_result_when_the_upstream_ends_the_connection_mid_call(url, token, agent, mode):
    async with mcp_client(url, token, mode) as client:
        result = await client.call_tool("poll_task", {"seconds": 0.5})
    assert not result.is_error
    assert result.content[0].text == "finished after reconnect"
    outcome = await run_in_thread(lambda: AuditEvent.objects.filter(agent_id=agent.pk, kind="outcome").get())
    assert outcome.details["status"] == "ok"


async def test_a_get_stream_goes_on_when_the_upstream_ends_it(url, token):
    """The second announcement is made while the upstream's GET stream is closed: only a resumed
    stream (Last-Event-ID) replays it."""
    changes: list[str] = []
    both = asyncio.Event()

    async def on_message(message):
        if getattr(message, "method", "") == "notifications/tools/list_changed":
            changes.append(message.method)
            if len(changes) == 2:
                both.set()

    async with mcp_client(url, token, "legacy", message_handler=on_message) as client:
        # The GET stream opens after initialize, in the background: a first call gives it time.
        await client.list_tools()
        result = await client.call_tool("announce_across_reconnect", {})
        assert result.content[0].text == "announced twice"
        await asyncio.wait_for(both.wait(), 10)
    assert changes == ["notifications/tools/list_changed"] * 2


async def test_a_retry_longer_than_the_read_timeout_is_not_waited_for():
    async with Scripted([sse(b"id: ev-1\nretry: 3600000\ndata: \n\n"), sse()]) as up:
        reply = await upstream.post(target(up.port, read_timeout=0.5), call(), **LEGACY)
        with pytest.raises(UpstreamError, match="timed out resuming after event 'ev-1'"):
            await upstream.first_response(reply, 1)
    assert len(up.requests) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_an_upstream_question_during_a_completion_is_answered_not_left_hanging(url, token, mode):
    """A 2025 upstream that asks roots/list while it answers completion/complete gets an answer at
    once (method not found: only tool calls and named reads carry questions to the agent), so the
    agent gets its completion rather than wait for the upstream's own timeout (60 s here, more
    than the client waits)."""
    from mcp_types import PromptReference

    async with mcp_client(url, token, mode) as client:
        result = await client.complete(PromptReference(type="ref/prompt", name="any"), {"name": "a", "value": ""})
    assert len(result.completion.values) == 1 and result.completion.values[0].startswith("no roots:")
    assert "not found" in result.completion.values[0].lower()
