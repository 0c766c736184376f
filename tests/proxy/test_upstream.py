"""proxy/upstream.py against a scripted raw HTTP upstream: what it sends, how it reads SSE, and how
timeouts and unreachable upstreams become UpstreamError."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl

import pytest

from proxy import upstream
from proxy.upstream import UpstreamError, UpstreamSessionGone, UpstreamTarget


def target(port: int, **overrides) -> UpstreamTarget:
    fields = {
        "id": 1,
        "slug": "scripted",
        "name": "Scripted",
        "url": f"http://127.0.0.1:{port}/mcp",
        "auth_header_name": "X-Upstream-Key",
        "auth_header_value": "upstream-secret",
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "era": "modern",
        "protocol_version": "2026-07-28",
    }
    return UpstreamTarget(**{**fields, **overrides})


class Scripted:
    """Answers each request with the next scripted (head, body chunks) and remembers what it got."""

    def __init__(self, answers, tls=None):
        self.answers = list(answers)
        self.tls = tls
        self.requests: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                self.requests.append(head + await reader.readexactly(length))
                status_line, headers, chunks = self.answers.pop(0)
                if status_line is None:  # hang: never answer
                    await asyncio.sleep(3600)
                writer.write(f"HTTP/1.1 {status_line}\r\n{headers}Connection: close\r\n\r\n".encode())
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                    await asyncio.sleep(0)
                writer.close()
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass


def sse(*chunks: bytes):
    return ("200 OK", "Content-Type: text/event-stream\r\n", list(chunks))


def call(msg_id=1):
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}


async def test_only_the_upstreams_own_credential_is_sent():
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}).encode()
    answer = ("200 OK", f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n", [body])
    async with Scripted([answer]) as up:
        reply = await upstream.post(target(up.port), call(), headers={"Mcp-Method": "tools/call"})
        assert (await upstream.first_response(reply, 1))["result"] == {"content": []}
    sent = up.requests[0].decode().lower()
    assert "x-upstream-key: upstream-secret" in sent
    assert "authorization" not in sent and "cookie" not in sent
    assert "mcp-method: tools/call" in sent


async def test_sse_lines_split_across_chunks_with_any_line_ending_and_any_length():
    big = "x" * 300_000  # longer than aiohttp's readline limit
    first = json.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"note": big}})
    last = json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"text": "caf\u00e9 \u2028 done"}}, ensure_ascii=False)
    raw = f": comment\r\nid: 1\r\ndata: {first}\r\n\r\ndata:{last}\r\r".encode()
    cuts = [5, 11, 12, 40, 150_000, len(raw) - len(last.encode()) - 5, len(raw) - 2, len(raw) - 1]
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    async with Scripted([sse(*chunks)]) as up:
        reply = await upstream.post(target(up.port), call(7))
        assert reply.streaming
        messages = [m async for m in reply.messages]
        await reply.aclose()
    assert messages[0]["params"]["note"] == big
    assert messages[1] == json.loads(last)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((None, "", []), "timed out"),
        (("200 OK", "Content-Type: application/json\r\nContent-Length: 2\r\n", [b"no"]), "without a JSON-RPC"),
        (("500 Internal Server Error", "Content-Length: 4\r\n", [b"oops"]), "HTTP 500"),
    ],
)
async def test_failures_become_upstream_errors(answer, expected):
    async with Scripted([answer]) as up:
        with pytest.raises(UpstreamError, match=expected):
            await upstream.post(target(up.port, read_timeout=0.3), call())


async def test_an_unreachable_upstream_is_an_upstream_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        with pytest.raises(UpstreamError, match="unreachable"):
            await upstream.post(target(port), call())


async def test_a_lost_session_is_reported_as_gone():
    answer = ("404 Not Found", "Content-Length: 0\r\n", [])
    async with Scripted([answer]) as up:
        with pytest.raises(UpstreamSessionGone):
            await upstream.post(target(up.port), call(), session_id="abcdef123456", protocol_version="2025-11-25")


async def test_an_upstream_behind_an_environment_proxy_is_reached_through_it(monkeypatch):
    """HTTP(S)_PROXY keeps aiohttp's client, which speaks to proxies; direct upstreams take http1."""
    event = json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"via": "proxy"}})
    async with Scripted([sse(f"data: {event}\n\n".encode())]) as proxy_server:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_server.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        behind = target(9, id=99, url="http://upstream.invalid:9/mcp")
        reply = await upstream.post(behind, call(3))
        assert reply.streaming
        assert await upstream.first_response(reply, 3) == json.loads(event)
        assert upstream.pool_for(behind).session is not None
    assert proxy_server.requests[0].startswith(b"POST http://upstream.invalid:9/mcp HTTP/1.1\r\n")


async def test_a_direct_upstream_takes_the_http1_client():
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}}).encode()
    answer = ("200 OK", f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n", [body])
    async with Scripted([answer]) as up:
        reply = await upstream.post(target(up.port, id=98), call())
        await upstream.first_response(reply, 1)
        pool = upstream.pool_for(target(up.port, id=98))
        assert pool.client is not None and pool.session is None


async def test_credentials_in_the_upstream_url_go_as_basic_auth():
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}}).encode()
    answer = ("200 OK", f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n", [body])
    async with Scripted([answer]) as up:
        with_user = target(up.port, id=97, url=f"http://bob:s%40cret@127.0.0.1:{up.port}/mcp")
        await upstream.first_response(await upstream.post(with_user, call()), 1)
    sent = up.requests[0].decode()
    assert f"Authorization: Basic {base64.b64encode(b'bob:s@cret').decode()}\r\n" in sent
    assert "bob" not in sent.split("\r\n", 1)[0]  # not in the request line


async def test_a_stream_cut_off_part_way_is_an_upstream_error():
    head = "Content-Type: text/event-stream\r\nContent-Length: 5000\r\n"
    event = json.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}})
    async with Scripted([("200 OK", head, [f"data: {event}\n\n".encode()])]) as up:
        reply = await upstream.post(target(up.port), call())
        with pytest.raises(UpstreamError, match="broke off"):
            await upstream.first_response(reply, 1)


def test_a_name_with_a_lone_surrogate_still_gets_an_mcp_name_header():
    """JSON's "\\ud800" parses to a lone surrogate, which UTF-8 cannot encode strictly."""
    message = {"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "p\ud800"}}
    _, headers = upstream.modern_request(message, client_info={}, client_capabilities={})
    assert headers["Mcp-Name"].startswith("=?base64?")
    assert base64.b64decode(headers["Mcp-Name"][9:-2]) == b"p\xed\xa0\x80"


async def test_an_https_upstream_is_verified_against_the_configured_ca_bundle(tls_files, monkeypatch):
    cert, key = tls_files
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"over": "tls"}}).encode()
    answer = ("200 OK", f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n", [body])
    async with Scripted([answer], tls=tls) as up:
        secure = target(up.port, id=96, url=f"https://127.0.0.1:{up.port}/mcp")
        with pytest.raises(UpstreamError, match="unreachable"):  # certifi's CAs do not know it
            await upstream.post(secure, call())
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusted = target(up.port, id=95, url=f"https://127.0.0.1:{up.port}/mcp")
        reply = await upstream.post(trusted, call())
        assert (await upstream.first_response(reply, 1))["result"] == {"over": "tls"}
