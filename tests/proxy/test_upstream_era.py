"""Which era an upstream speaks: detected only from a clear answer, never guessed from a passing
failure (a 503 during a deploy, a 401 from an expired credential), and asked again when its URL
changes. Scripted upstreams for the wire; the official SDK client through Behavry for the calls."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from django.urls import reverse

from proxy import upstream
from proxy.models import UpstreamServer
from proxy.services import upstream_server_create, upstream_server_set_era, upstream_server_update
from proxy.upstream import UpstreamError, UpstreamIsModern
from tests.conftest import TEST_ACTOR
from tests.factories import UpstreamServerFactory
from tests.proxy.asgi_server import read_body, serve_in_thread
from tests.proxy.conftest import MODES, mcp_client, run_in_thread
from tests.proxy.test_upstream import Scripted, target

MODERN = "2026-07-28"


def _json(status: str, body, **headers: str):
    data = json.dumps(body).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (status, f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra}", [data])


def _raw(status: str, content_type: str, data: bytes):
    return (status, f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n", [data])


def _error(code: int, msg_id="behavry-discover"):
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": "no"}}


HTML_503 = _raw("503 Service Unavailable", "text/html", b"<html>503 Service Temporarily Unavailable</html>")
INITIALIZED = _json(
    "200 OK",
    {"jsonrpc": "2.0", "id": "behavry-initialize", "result": {"protocolVersion": "2025-11-25", "capabilities": {}}},
    **{"Mcp-Session-Id": "probe-session"},
)
GONE = ("200 OK", "Content-Length: 0\r\n", [])  # the answer to the probe session's DELETE


def _methods(up: Scripted) -> list[str]:
    out = []
    for raw in up.requests:
        head, _, body = raw.partition(b"\r\n\r\n")
        verb = head.split(b" ", 1)[0].decode()
        out.append(json.loads(body)["method"] if body else verb)
    return out


# --- detect_era against scripted answers ---------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        HTML_503,
        _json("401 Unauthorized", {"error": "invalid_token", "error_description": "The access token expired"}),
        _json("401 Unauthorized", {"error": {"code": "invalid_token"}}),
        _raw("401 Unauthorized", "text/plain", b"Unauthorized"),
        _raw("403 Forbidden", "text/html", b"<h1>Forbidden</h1>"),
        _json("500 Internal Server Error", _error(-32603)),
        _json("502 Bad Gateway", _error(-32000)),
    ],
    ids=["503-html", "401-oauth-json", "401-error-object-no-int", "401-text", "403-html", "500-json-rpc", "502"],
)
async def test_an_answer_that_says_nothing_about_the_protocol_is_no_verdict(answer):
    async with Scripted([answer]) as up:
        with pytest.raises(UpstreamError, match=r"HTTP \d+; its protocol era is not known yet"):
            await upstream.detect_era(target(up.port, era="unknown"))
    assert _methods(up) == ["server/discover"]  # nothing else was tried on a failing upstream


@pytest.mark.parametrize("code", [-32020, -32021, -32022])
async def test_a_2026_error_code_is_a_modern_verdict(code):
    async with Scripted([_json("400 Bad Request", _error(code))]) as up:
        assert await upstream.detect_era(target(up.port, era="unknown")) == ("modern", {})


async def test_a_2025_servers_refusal_is_a_legacy_verdict():
    refusal = {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": "Bad Request: No valid session"}}
    async with Scripted([_json("400 Bad Request", refusal)]) as up:
        assert await upstream.detect_era(target(up.port, era="unknown")) == ("legacy", {})


@pytest.mark.parametrize(
    "unclear",
    [
        _json("200 OK", _error(-32601)),  # a stateless 2025 server: "method not found", with 200
        _raw("404 Not Found", "text/html", b"<h1>Not Found</h1>"),
        _json("400 Bad Request", {"detail": "bad request"}),
        _json("400 Bad Request", {"error": "invalid_request"}),  # OAuth's shape: "error" is a string
    ],
    ids=["200-method-not-found", "404-html", "400-not-json-rpc", "400-oauth-json"],
)
async def test_an_unclear_answer_is_settled_by_initialize(unclear):
    async with Scripted([unclear, INITIALIZED, GONE]) as up:
        assert await upstream.detect_era(target(up.port, era="unknown")) == ("legacy", {})
    assert _methods(up) == ["server/discover", "initialize", "DELETE"]  # the probe's session is closed
    assert b"mcp-session-id: probe-session" in up.requests[2].lower()


async def test_initialize_refused_as_an_unsupported_version_is_a_modern_verdict():
    unsupported = _json("400 Bad Request", _error(-32022, "behavry-initialize"))
    async with Scripted([_raw("404 Not Found", "text/plain", b"nope"), unsupported]) as up:
        assert await upstream.detect_era(target(up.port, era="unknown")) == ("modern", {})


async def test_an_unclear_answer_then_a_failing_initialize_is_no_verdict():
    async with Scripted([_raw("404 Not Found", "text/plain", b"nope"), HTML_503]) as up:
        with pytest.raises(UpstreamError, match="era is not known yet"):
            await upstream.detect_era(target(up.port, era="unknown"))


async def test_a_session_refused_as_an_unsupported_version_says_the_upstream_is_modern():
    """What a wrongly remembered "legacy" meets: the caller can tell it from other refusals."""
    async with Scripted([_json("400 Bad Request", _error(-32022, "behavry-initialize"))]) as up:
        with pytest.raises(UpstreamIsModern):
            await upstream.legacy_initialize(target(up.port, era="legacy"), client_info={}, client_capabilities={})


# --- through Behavry: a 2026-only upstream whose first answer is a failure -------------------------


class FlakyModern:
    """A 2026-07-28-only upstream (raw ASGI) that answers the next `failures` POSTs with a canned
    failure, as a reverse proxy does during a deploy or an auth server with an expired token."""

    def __init__(self) -> None:
        self.failures: list[tuple[int, bytes, bytes]] = []  # (status, content type, body)
        self.methods: list[str] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}

        async def reply(status: int, data, content_type: bytes = b"application/json") -> None:
            raw = data if isinstance(data, bytes) else json.dumps(data).encode()
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
            await send({"type": "http.response.body", "body": raw})

        if scope["method"] != "POST":
            return await reply(405, b"", b"text/plain")
        message = json.loads(body)
        self.methods.append(message.get("method", "(response)"))
        if self.failures:
            status, content_type, data = self.failures.pop(0)
            return await reply(status, data, content_type)
        if headers.get("mcp-protocol-version") != MODERN:
            error = {"code": -32022, "message": "Unsupported protocol version", "data": {"supported": [MODERN]}}
            return await reply(400, {"jsonrpc": "2.0", "id": message.get("id"), "error": error})
        if "id" not in message:
            return await reply(202, b"")
        results = {
            "server/discover": {"supportedVersions": [MODERN], "capabilities": {"tools": {}}},
            "tools/list": {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]},
            "tools/call": {"content": [{"type": "text", "text": "modern echo"}], "isError": False},
        }
        result = results.get(message["method"])
        if result is None:
            error = {"code": -32601, "message": "Method not found"}
            return await reply(404, {"jsonrpc": "2.0", "id": message["id"], "error": error})
        await reply(200, {"jsonrpc": "2.0", "id": message["id"], "result": {**result, "resultType": "complete"}})


@pytest.fixture(scope="module")
def flaky_modern():
    app = FlakyModern()
    with serve_in_thread(app) as base:
        yield app, f"{base}/mcp"


@pytest.fixture
def flaky(flaky_modern, behavry_url, starter_policies):
    app, url = flaky_modern
    app.failures.clear()
    app.methods.clear()
    server = upstream_server_create(slug="flaky", name="Flaky", url=url, by=TEST_ACTOR)
    return app, server, f"{behavry_url}/mcp/flaky"


def _modern_call(url: str, token: str) -> httpx.Response:
    """A 2026-07-28 agent's tools/call as raw HTTP: the SDK client cannot even connect while the
    upstream fails (its server/discover fails), so this is how a call meets the failure."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"},
    }
    params = {"name": "echo", "arguments": {}, "_meta": meta}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "echo",
    }
    return httpx.post(url, json=body, headers=headers, timeout=30)


def _era(server: UpstreamServer) -> tuple[str, str]:
    server.refresh_from_db()
    return server.era, server.protocol_version


def _outcomes(tool: str) -> list[dict]:
    from audit.models import AuditEvent

    return list(AuditEvent.objects.filter(tool=tool, kind="outcome").order_by("id").values("details", "reason"))


FIRST_FAILURES = {
    "503-html": (503, b"text/html", b"<html>503 Service Temporarily Unavailable</html>"),
    "401-oauth-json": (401, b"application/json", b'{"error":"invalid_token","error_description":"expired"}'),
    "401-text": (401, b"text/plain", b"Unauthorized"),
}


@pytest.mark.parametrize("failure", FIRST_FAILURES.values(), ids=FIRST_FAILURES.keys())
async def test_a_failure_at_first_contact_fails_that_call_and_the_next_one_finds_the_modern_era(flaky, token, failure):
    app, server, url = flaky
    app.failures.append(failure)

    first = await asyncio.to_thread(_modern_call, url, token)

    assert first.status_code == 200
    result = first.json()["result"]  # an error result with an audited outcome, not a JSON-RPC -32603
    assert result["isError"] is True
    assert f"HTTP {failure[0]}; its protocol era is not known yet" in result["content"][0]["text"]
    assert await run_in_thread(_era, server) == ("unknown", "")  # nothing remembered from a failure
    outcome = (await run_in_thread(_outcomes, "echo"))[0]
    assert outcome["details"]["status"] == "upstream_error"

    for mode in MODES:
        async with mcp_client(url, token, mode) as client:
            again = await client.call_tool("echo", {})
        assert not again.is_error and again.content[0].text == "modern echo"
    assert await run_in_thread(_era, server) == ("modern", MODERN)
    assert "initialize" not in app.methods  # never taken for a 2025 server


async def test_an_upstream_remembered_as_2025_era_that_refuses_a_2025_session_is_asked_again(flaky, token):
    """A row an older detection pinned to "legacy" (or an upstream since moved to 2026-07-28): its
    -32022 to initialize makes Behavry ask again instead of failing every call."""
    _app, server, url = flaky
    await run_in_thread(upstream_server_set_era, server_id=server.pk, era="legacy", protocol_version="")
    for mode in MODES:
        async with mcp_client(url, token, mode) as client:
            result = await client.call_tool("echo", {})
        assert not result.is_error and result.content[0].text == "modern echo", mode
    assert await run_in_thread(_era, server) == ("modern", MODERN)


# --- a new URL is detected again -----------------------------------------------------------------


@pytest.mark.django_db
def test_changing_the_url_forgets_the_era():
    server = UpstreamServerFactory(url="http://127.0.0.1:9001/mcp")
    UpstreamServer.objects.filter(pk=server.pk).update(era="legacy", protocol_version="2025-11-25")
    server.refresh_from_db()

    upstream_server_update(server=server, name="Renamed", by=TEST_ACTOR)
    assert _era(server) == ("legacy", "2025-11-25")  # same URL, same server

    upstream_server_update(server=server, url="http://127.0.0.1:9002/mcp", by=TEST_ACTOR)
    assert _era(server) == ("unknown", "")


@pytest.mark.django_db
def test_changing_the_url_in_the_admin_forgets_the_era(client, admin_user):
    """The admin's form sets the new URL on the instance before the service sees it."""
    server = UpstreamServerFactory(slug="files", url="http://127.0.0.1:9001/mcp")
    UpstreamServer.objects.filter(pk=server.pk).update(era="modern", protocol_version=MODERN)
    client.force_login(admin_user)
    form = {
        "name": server.name,
        "url": "http://127.0.0.1:9002/mcp",
        "auth_header_name": "Authorization",
        "auth_header_value": "",
        "enabled": "on",
        "connect_timeout": "5.0",
        "read_timeout": "300.0",
    }

    response = client.post(reverse("admin:proxy_upstreamserver_change", args=[server.pk]), form)

    assert response.status_code == 302
    assert _era(server) == ("unknown", "")
    assert server.url == "http://127.0.0.1:9002/mcp"


@pytest.mark.django_db
def test_a_verdict_about_a_url_since_replaced_is_not_remembered():
    server = UpstreamServerFactory(url="http://127.0.0.1:9002/mcp")

    upstream_server_set_era(server_id=server.pk, era="legacy", protocol_version="", url="http://127.0.0.1:9001/mcp")
    assert _era(server) == ("unknown", "")

    upstream_server_set_era(server_id=server.pk, era="modern", protocol_version=MODERN, url=server.url)
    assert _era(server) == ("modern", MODERN)
