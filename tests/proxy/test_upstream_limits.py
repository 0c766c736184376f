"""proxy/upstream.py's bounds on what one upstream exchange may take from a proxy process: the size
of an answer (BEHAVRY_UPSTREAM_MAX_ANSWER_BYTES), the connections GET streams hold
(BEHAVRY_UPSTREAM_MAX_GET_STREAMS) and the wait for a pooled connection."""

from __future__ import annotations

import asyncio
import json

import pytest

from audit.models import AuditEvent
from proxy import upstream
from proxy.upstream import UpstreamAnswerTooLarge, UpstreamError
from tests.proxy.conftest import MODES, mcp_client, run_in_thread
from tests.proxy.test_http1 import Server
from tests.proxy.test_upstream import call, target

LIMIT = 100_000


@pytest.fixture
def small_answers(settings):
    settings.BEHAVRY_UPSTREAM_MAX_ANSWER_BYTES = LIMIT


def endless(head: bytes, unit: bytes):
    """A handler that answers with `head`, then `unit` over and over, without end: only a client
    that stops reading and hangs up ends the exchange (the server's next write then fails)."""

    async def handler(reader, writer, server):
        await server.read_request(reader)
        writer.write(head)
        while True:
            writer.write(unit)
            await writer.drain()

    return handler


async def assert_dropped(server: Server, t) -> None:
    """The connection was closed, not pooled: the upstream saw the hang-up, the pool holds nothing."""
    await asyncio.wait_for(server.disconnected.wait(), 10)
    client = upstream.pool_for(t).client
    assert client is not None and client.open == 0 and not client.idle


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.parametrize(
    ("name", "head", "unit"),
    [
        (
            "a JSON body whose length is said",
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {100 * LIMIT}\r\n\r\n".encode(),
            b'{"jsonrpc": "2.0"' + b" " * 8000,
        ),
        (
            "a JSON body that ends when the connection does",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n",
            b" " * 8192,
        ),
        ("one SSE line", SSE_HEAD + chunked(b"data: "), chunked(b"x" * 8192)),
        ("one SSE event of many lines", SSE_HEAD, chunked(b"data: xxxxxxxx\n" * 512)),
    ],
)
async def test_it_drops_the_connection_of_an_answer_past_the_limit(small_answers, name, head, unit):
    async with Server(endless(head, unit)) as server:
        t = target(server.port, id=200 + len(name))
        with pytest.raises(UpstreamAnswerTooLarge, match=f"larger than {LIMIT} bytes"):
            reply = await upstream.post(t, call())
            await upstream.first_response(reply, 1)
        await assert_dropped(server, t)


async def test_a_stream_of_many_events_each_under_the_limit_is_read_through(small_answers):
    event = b"data: " + json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {}}).encode()
    done = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}}).encode()
    body = (event + b"\n\n") * (3 * LIMIT // len(event)) + b"data: " + done + b"\n\n"

    async def handler(reader, writer, server):
        await server.read_request(reader)
        writer.write(SSE_HEAD + chunked(body) + chunked(b""))
        await writer.drain()

    async with Server(handler) as server:
        reply = await upstream.post(target(server.port, id=210), call())
        assert await upstream.first_response(reply, 1) == json.loads(done)


@pytest.mark.parametrize("mode", MODES)
async def test_a_tool_answer_past_the_limit_is_an_error_result_and_an_audited_outcome(
    behavry_url, token, agent, demo_server, starter_policies, small_answers, mode
):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        result = await client.call_tool("echo", {"message": "y" * LIMIT})
        assert result.is_error
        assert f"upstream answer larger than {LIMIT} bytes" in result.content[0].text
        fine = await client.call_tool("echo", {"message": "short"})  # the upstream is still usable
        assert fine.content[0].text == "Echo: short"
    outcome = await run_in_thread(
        lambda: AuditEvent.objects.filter(agent_id=agent.pk, kind="outcome").order_by("id").first()
    )
    assert outcome.details["status"] == "upstream_error"
    assert f"larger than {LIMIT} bytes" in outcome.reason


async def test_get_streams_past_their_budget_are_refused_and_never_take_a_requests_connection(
    legacy_upstream, settings, monkeypatch
):
    """Before GET streams had connections of their own, three of them held both of these two
    request connections, and the calls below waited for one until the read timeout."""
    settings.BEHAVRY_UPSTREAM_MAX_GET_STREAMS = 3
    monkeypatch.setattr(upstream, "REQUEST_CONNECTIONS", 2)
    legacy = target(0, id=220, url=legacy_upstream, era="legacy", protocol_version="2025-11-25")
    sessions = [await upstream.legacy_initialize(legacy, client_info={}, client_capabilities={}) for _ in range(3)]
    streams = [await upstream.legacy_listen(legacy, session, version) for session, version, _ in sessions]
    assert all(stream is not None for stream in streams)
    session, version, _ = sessions[0]
    with pytest.raises(UpstreamError, match="already has 3 GET streams open"):
        await upstream.legacy_listen(legacy, session, version)

    async def echo(n: int) -> dict:
        message = {
            "jsonrpc": "2.0",
            "id": n,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": f"call {n}"}},
        }
        reply = await upstream.post(legacy, message, session_id=session, protocol_version=version)
        return await upstream.first_response(reply, n)

    answers = await asyncio.gather(*(echo(n) for n in range(4)))
    assert [a["result"]["content"][0]["text"] for a in answers] == [f"Echo: call {n}" for n in range(4)]

    await streams[0].aclose()  # a closed stream gives its place back (here, to another session)
    fourth, fourth_version, _ = await upstream.legacy_initialize(legacy, client_info={}, client_capabilities={})
    again = await upstream.legacy_listen(legacy, fourth, fourth_version)
    assert again is not None
    for stream in [again, *streams[1:]]:
        await stream.aclose()
    assert upstream.pool_for(legacy).streams_open == 0


async def test_a_request_waits_for_a_pooled_connection_about_as_long_as_for_a_connect(monkeypatch):
    """All request connections busy with calls that take long: the next call fails after the
    connect timeout (here 1 s) instead of queueing for the read timeout (here an hour)."""
    monkeypatch.setattr(upstream, "REQUEST_CONNECTIONS", 1)

    async def never_answers(reader, writer, server):
        await server.read_request(reader)
        await asyncio.sleep(3600)

    async with Server(never_answers) as server:
        slow = target(server.port, id=221, connect_timeout=1.0, read_timeout=3600.0)
        held = asyncio.ensure_future(upstream.post(slow, call(1)))
        while not server.requests:
            await asyncio.sleep(0.01)
        with pytest.raises(UpstreamError, match="timed out"):
            await upstream.post(slow, call(2))
        held.cancel()
