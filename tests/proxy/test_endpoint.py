"""The MCP endpoint's transport rules, each bad input tested on the wire (raw HTTP, no SDK)."""

import json
import secrets

import httpx
import pytest

from accounts.services import api_key_create
from agents.services import agent_suspend, agent_token_issue, agent_token_revoke
from audit.models import AuditEvent
from tests.conftest import TEST_ACTOR
from tests.proxy.conftest import run_in_thread

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("demo_server", "starter_policies")]

ACCEPT = "application/json, text/event-stream"
MODERN = "2026-07-28"


def modern_headers(token, method, name=None, **extra):
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": ACCEPT,
        "Content-Type": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    return {**headers, **extra}


def modern_call(tool, arguments, msg_id=1):
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }


async def post(url, body, headers, timeout=30):
    async with httpx.AsyncClient(timeout=timeout) as http:
        content = body if isinstance(body, bytes) else json.dumps(body)
        return await http.post(url, content=content, headers=headers)


async def initialize(url, token):
    """A raw 2025-11-25 initialize; the response carries the Mcp-Session-Id header."""
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    return await post(url, body, {"Authorization": f"Bearer {token}", "Accept": ACCEPT})


async def get_stream_headers(url, token):
    """A new 2025-11-25 session's headers for its GET stream."""
    session_id = (await initialize(url, token)).headers["mcp-session-id"]
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "text/event-stream",
        "Mcp-Session-Id": session_id,
        "MCP-Protocol-Version": "2025-11-25",
    }


@pytest.fixture
def url(behavry_url):
    return f"{behavry_url}/mcp/demo"


async def test_a_modern_call_works_on_the_wire(url, token):
    response = await post(url, modern_call("echo", {"message": "wire"}), modern_headers(token, "tools/call", "echo"))
    assert response.status_code == 200
    assert response.json()["result"]["content"][0]["text"] == "Echo: wire"
    assert response.json()["result"]["resultType"] == "complete"


async def test_a_missing_token_is_401_with_a_bearer_challenge(url):
    response = await post(url, modern_call("echo", {}), {"Accept": ACCEPT})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_token_for_another_deployment_is_401(url):
    foreign = "bhv_agent_" + secrets.token_urlsafe(32)
    response = await post(url, modern_call("echo", {}), modern_headers(foreign, "tools/call", "echo"))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_an_api_key_is_refused_on_mcp(url):
    _key, raw = await run_in_thread(api_key_create, name="k", role="admin", by=TEST_ACTOR)
    response = await post(url, modern_call("echo", {}), modern_headers(raw, "tools/call", "echo"))
    assert response.status_code == 401
    assert "API keys" in response.json()["error"]["message"]


async def test_a_revoked_token_is_refused_on_the_next_request(url, agent, token, monkeypatch):
    monkeypatch.setattr("proxy.identity.CACHE_SECONDS", 0)  # the 1 s cache is the documented bound
    ok = await post(url, modern_call("echo", {"message": "a"}), modern_headers(token, "tools/call", "echo"))
    assert ok.status_code == 200
    tok = await run_in_thread(lambda: agent.tokens.get())
    await run_in_thread(agent_token_revoke, token=tok, by=TEST_ACTOR)
    response = await post(url, modern_call("echo", {"message": "b"}), modern_headers(token, "tools/call", "echo"))
    assert response.status_code == 401


async def test_a_suspended_agent_is_403_and_its_session_is_gone(behavry_url, url, agent, token, monkeypatch):
    monkeypatch.setattr("proxy.identity.CACHE_SECONDS", 0)
    init = await initialize(url, token)
    session_id = init.headers["mcp-session-id"]
    other_agent_token = await run_in_thread(_other_agent_token)
    await run_in_thread(agent_suspend, agent=agent, reason="test", by=TEST_ACTOR)
    refused = await post(
        url,
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {
            "Authorization": f"Bearer {token}",
            "Accept": ACCEPT,
            "Mcp-Session-Id": session_id,
            "MCP-Protocol-Version": "2025-11-25",
        },
    )
    assert refused.status_code == 403
    # other agents are untouched
    fine = await post(
        url, modern_call("echo", {"message": "x"}), modern_headers(other_agent_token, "tools/call", "echo")
    )
    assert fine.status_code == 200 and not fine.json()["result"]["isError"]


def _other_agent_token():
    from agents.services import agent_create

    other = agent_create(name="bystander", by=TEST_ACTOR)
    return agent_token_issue(agent=other, by=TEST_ACTOR)[1]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", -32700),
        (b"\xff\xfe", -32700),
        (b"[" * 100_000 + b"]" * 100_000, -32700),
        (json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]).encode(), -32600),
        (json.dumps({"id": 1, "method": "tools/list"}).encode(), -32600),
        (json.dumps({"jsonrpc": "2.0", "id": None, "method": "tools/list"}).encode(), -32600),
        (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [1]}).encode(), -32602),
        (json.dumps("just a string").encode(), -32600),
    ],
)
async def test_malformed_messages_get_json_rpc_errors(url, token, body, code):
    response = await post(url, body, {"Authorization": f"Bearer {token}", "Accept": ACCEPT})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


async def test_an_unknown_method_is_not_forwarded(url, token):
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "admin/shutdown",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        },
    }
    response = await post(url, body, modern_headers(token, "admin/shutdown"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == -32601


async def test_a_wrong_session_id_is_404(url, token):
    response = await post(
        url,
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {
            "Authorization": f"Bearer {token}",
            "Accept": ACCEPT,
            "Mcp-Session-Id": "nope",
            "MCP-Protocol-Version": "2025-11-25",
        },
    )
    assert response.status_code == 404


async def test_a_legacy_request_without_a_session_is_400(url, token):
    response = await post(
        url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
    )
    assert response.status_code == 400


async def test_an_oversized_body_is_413(url, token, settings):
    settings.BEHAVRY_MCP_MAX_BODY_BYTES = 2048
    big = modern_call("echo", {"message": "x" * 4096})
    response = await post(url, big, modern_headers(token, "tools/call", "echo"))
    assert response.status_code == 413


async def test_a_foreign_origin_is_403_and_a_bad_host_too(url, token):
    response = await post(
        url, modern_call("echo", {}), modern_headers(token, "tools/call", "echo", Origin="http://evil.example")
    )
    assert response.status_code == 403
    response = await post(
        url, modern_call("echo", {}), modern_headers(token, "tools/call", "echo", Host="evil.example")
    )
    assert response.status_code == 403


async def test_a_host_allowed_once_is_refused_after_allowed_hosts_change(url, token, settings):
    """Verdicts per Host value are remembered (proxy/endpoint.py _host_allowed), but only for the
    ALLOWED_HOSTS they were reached under."""
    headers = modern_headers(token, "tools/call", "echo", Host="agents.example")
    settings.ALLOWED_HOSTS = ["127.0.0.1", ".example"]
    assert (await post(url, modern_call("echo", {"message": "a"}), headers)).status_code == 200
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    assert (await post(url, modern_call("echo", {"message": "b"}), headers)).status_code == 403


async def test_a_header_body_mismatch_is_minus_32020(url, token):
    smuggled = await post(
        url, modern_call("delete_file", {"path": "/docs/readme.md"}), modern_headers(token, "tools/call", "echo")
    )
    assert smuggled.status_code == 400 and smuggled.json()["error"]["code"] == -32020
    wrong_method = await post(url, modern_call("echo", {}), modern_headers(token, "tools/list"))
    assert wrong_method.json()["error"]["code"] == -32020
    wrong_version = await post(
        url,
        modern_call("echo", {}),
        modern_headers(token, "tools/call", "echo", **{"MCP-Protocol-Version": "2025-11-25"}),
    )
    assert wrong_version.status_code == 400


async def test_a_modern_request_without_its_envelope_is_minus_32602(url, token):
    """The protocol version and the client's capabilities are required in `_meta` (the SDK server's
    first rung): a header alone does not make a 2026-07-28 request."""
    no_meta = modern_call("echo", {"message": "hi"})
    del no_meta["params"]["_meta"]
    no_capabilities = modern_call("echo", {"message": "hi"})
    del no_capabilities["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]
    for body, missing in ((no_meta, "protocolVersion"), (no_capabilities, "clientCapabilities")):
        response = await post(url, body, modern_headers(token, "tools/call", "echo"))
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == -32602 and missing in error["message"], error
    assert await run_in_thread(AuditEvent.objects.filter(tool="echo").count) == 0


async def test_a_routing_header_given_twice_is_minus_32020(url, token):
    """Two Mcp-Name headers: a router reading the first and Behavry the last would disagree."""
    headers = [(k, v) for k, v in modern_headers(token, "tools/call", "echo").items()]
    headers.append(("Mcp-Name", "delete_file"))
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(url, content=json.dumps(modern_call("echo", {"message": "hi"})), headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == {"code": -32020, "message": "mcp-name header appears more than once"}


async def test_the_modern_checks_come_in_the_sdk_servers_order(url, token):
    """Headers against the body (-32020) before the version (-32022), which is the one code a
    negotiating client does not fall back from; a falsy _meta version is not the header's."""
    cases = []
    future = modern_call("echo", {"message": "hi"})
    future["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
    cases.append((future, modern_headers(token, "tools/call", "echo"), 400, -32020))
    for falsy in ("", False, 0, None, 5):
        body = modern_call("echo", {"message": "hi"})
        body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = falsy
        cases.append((body, modern_headers(token, "tools/call", "echo"), 400, -32020))
    nameless = modern_call("echo", {"message": "hi"})
    del nameless["params"]["name"]
    cases.append((nameless, modern_headers(token, "tools/call"), 400, -32602))  # the handler's

    for body, headers, status, code in cases:
        response = await post(url, body, headers)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), (body, response.text)
    assert await run_in_thread(AuditEvent.objects.filter(tool="echo").count) == 0


async def test_a_protocol_version_header_given_twice_is_refused_in_either_era(url, token):
    """The era is read from that header: two copies must not make one reader see a session request
    and another a stateless one."""
    session_id = (await initialize(url, token)).headers["mcp-session-id"]
    headers = [
        ("Authorization", f"Bearer {token}"),
        ("Accept", ACCEPT),
        ("Mcp-Session-Id", session_id),
        ("MCP-Protocol-Version", MODERN),
        ("MCP-Protocol-Version", "2025-11-25"),
    ]
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(url, content=json.dumps(body), headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020


async def test_an_encoded_mcp_name_must_decode_to_the_body_exactly(url, token):
    """`=?base64?…?=` decodes to the name; a malformed or non-canonical one matches nothing (taken
    verbatim, it would stand for a value the body does not hold)."""
    body = modern_call("echo", {"message": "hi"})
    good = await post(url, body, modern_headers(token, "tools/call", "=?base64?ZWNobw==?="))  # "echo"
    assert good.status_code == 200 and good.json()["result"]["isError"] is False
    for bad in ("=?base64?ZWNobw?=", "=?base64?ZWNobx==?=", "=?base64?not base64?="):
        response = await post(url, body, modern_headers(token, "tools/call", bad))
        assert response.status_code == 400 and response.json()["error"]["code"] == -32020, bad


def test_a_name_that_looks_encoded_is_encoded_so_it_arrives_as_it_is():
    from proxy import jsonrpc

    looks_encoded = "=?base64?ZWNobw==?="
    sent = jsonrpc.header_encode(looks_encoded)
    assert sent != looks_encoded and jsonrpc.header_value(sent) == looks_encoded
    assert jsonrpc.header_encode("echo") == "echo"
    assert jsonrpc.header_value(jsonrpc.header_encode(" Zürich")) == " Zürich"


async def test_an_upstreams_json_rpc_error_reaches_a_modern_agent_with_its_http_status(url, token):
    """A 2026-07-28 client reads the status before the body: the upstream's "method not found"
    for a method that era removed is a 404 through Behavry, as it is directly."""
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "logging/setLevel",
        "params": {
            "level": "info",
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    response = await post(url, body, modern_headers(token, "logging/setLevel"))
    assert response.json()["error"]["code"] == -32601, response.text
    assert response.status_code == 404


async def test_an_unsupported_modern_version_is_minus_32022(url, token):
    body = modern_call("echo", {})
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
    response = await post(
        url, body, modern_headers(token, "tools/call", "echo", **{"MCP-Protocol-Version": "2099-01-01"})
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == -32022 and error["data"] == {"supported": ["2026-07-28"], "requested": "2099-01-01"}


async def test_an_unknown_server_slug_is_404(behavry_url, token):
    response = await post(
        f"{behavry_url}/mcp/nope", modern_call("echo", {}), modern_headers(token, "tools/call", "echo")
    )
    assert response.status_code == 404


async def test_a_missing_accept_is_406_and_a_put_is_405(url, token):
    response = await post(
        url, modern_call("echo", {}), {**modern_headers(token, "tools/call", "echo"), "Accept": "text/html"}
    )
    assert response.status_code == 406
    async with httpx.AsyncClient() as http:
        assert (await http.put(url, headers={"Authorization": f"Bearer {token}"})).status_code == 405


async def test_odd_unicode_and_bad_params_never_crash_and_are_never_forwarded(url, token):
    for arguments in ({"message": "\u0000\ud800 \U0001f600"}, {"path": "../../etc/passwd" * 50}):
        response = await post(
            url, modern_call("send_email", arguments), modern_headers(token, "tools/call", "send_email")
        )
        assert response.status_code == 200 and response.json()["result"]["isError"]
    bad = await post(url, modern_call("echo", "not-an-object"), modern_headers(token, "tools/call", "echo"))
    assert bad.json()["error"]["code"] == -32602
    outcomes = await run_in_thread(lambda: AuditEvent.objects.filter(kind="outcome", tool="send_email").count())
    assert outcomes == 0


async def test_a_delete_ends_the_session(url, token):
    init = await initialize(url, token)
    session_id = init.headers["mcp-session-id"]
    headers = {"Authorization": f"Bearer {token}", "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
    async with httpx.AsyncClient() as http:
        assert (await http.delete(url, headers=headers)).status_code == 200
    after = await post(url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, {**headers, "Accept": ACCEPT})
    assert after.status_code == 404


async def test_a_get_stream_needs_a_session_and_a_2025_era_upstream(url, token):
    async with httpx.AsyncClient(timeout=10) as http:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        assert (await http.get(url, headers=headers)).status_code == 405
        assert (await http.get(url, headers={**headers, "Mcp-Session-Id": "nope"})).status_code == 404
        assert (await http.get(url, headers={**headers, "Accept": "application/json"})).status_code == 406
    init = await initialize(url, token)
    async with httpx.AsyncClient(timeout=10) as http:
        # the demo upstream speaks 2026-07-28, which has no GET stream to relay
        response = await http.get(url, headers={**headers, "Mcp-Session-Id": init.headers["mcp-session-id"]})
    assert response.status_code == 405


def test_a_lone_surrogate_is_sent_back_as_its_json_escape_not_a_500():
    from proxy.endpoint import _json_bytes, _sse_event

    message = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "Method not found: x\ud9ce"}}
    assert json.loads(_json_bytes(message)) == message
    assert json.loads(_sse_event(message).split(b"data: ", 1)[1]) == message


async def test_a_request_method_sent_as_a_notification_is_400_and_never_reaches_the_upstream(
    behavry_url, legacy_server, legacy_upstream, token
):
    """The outsider's trick: `tools/call` without an id is a notification, which nothing decides or
    audits. It must not be relayed to the upstream as one."""
    from mcp import Client

    url = f"{behavry_url}/mcp/legacy"
    session_id = (await initialize(url, token)).headers["mcp-session-id"]
    path = f"/notification/{secrets.token_hex(4)}"
    body = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "write_file", "arguments": {"path": path}}}
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT, "Mcp-Session-Id": session_id}
    response = await post(
        url,
        {**body, "params": {**body["params"], "arguments": {"path": path, "content": "x"}}},
        {
            **headers,
            "MCP-Protocol-Version": "2025-11-25",
        },
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32600 and "needs an 'id'" in response.json()["error"]["message"]
    async with Client(legacy_upstream, mode="legacy") as direct:
        assert (await direct.call_tool("read_file", {"path": path})).is_error  # never written


@pytest.mark.parametrize("slug", ["demo", "legacy"])
async def test_a_response_posted_by_a_stateless_agent_is_400(behavry_url, legacy_server, token, slug):
    """In 2026-07-28 a client answers a server's question by retrying its request, which policy
    decides again (proxy/mrtr.py); a bare response would answer a parked question around that
    (2025 upstream) or fail (2026 upstream)."""
    headers = modern_headers(token, "tools/call")
    del headers["Mcp-Method"]
    for msg_id in range(3):
        response = await post(f"{behavry_url}/mcp/{slug}", {"jsonrpc": "2.0", "id": msg_id, "result": {}}, headers)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == -32600


async def _send_in_two_parts(url: str, token: str, body: bytes, between) -> tuple[int, bytes]:
    """A raw HTTP/1.1 POST whose body arrives in two parts, with `between()` awaited in between."""
    import asyncio
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Accept: {ACCEPT}\r\nContent-Type: application/json\r\nMCP-Protocol-Version: {MODERN}\r\n"
        f"Mcp-Method: tools/call\r\nMcp-Name: echo\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body[:10])
    await writer.drain()
    await between()
    try:
        writer.write(body[10:])
        await writer.drain()
    except ConnectionError:
        pass  # the server answered and closed first
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_a_body_sent_too_slowly_is_408(url, token, settings):
    import asyncio

    settings.BEHAVRY_MCP_BODY_TIMEOUT_SECONDS = 1
    body = json.dumps(modern_call("echo", {"message": "slow"})).encode()
    status, answer = await _send_in_two_parts(url, token, body, lambda: asyncio.sleep(1.5))
    assert status == 408 and b"not received within 1 s" in answer


async def test_a_suspension_while_the_body_arrives_applies_to_that_request(url, agent, token, monkeypatch):
    """Authentication runs before the body is read, and again after: an agent suspended while its
    request was on the wire gets 403, not an allowed call."""
    import asyncio
    import threading

    from proxy import endpoint

    monkeypatch.setattr("proxy.identity.CACHE_SECONDS", 0)
    authenticated = threading.Event()

    def identity_then_signal(raw):
        identity = real(raw)
        authenticated.set()
        return identity

    real = endpoint.identity_for_token
    monkeypatch.setattr(endpoint, "identity_for_token", identity_then_signal)

    async def suspend():
        # Not run_in_thread: on SQLite the server's database work queues on that same one thread.
        waited = await asyncio.get_running_loop().run_in_executor(None, authenticated.wait, 10)
        assert waited  # the server let the agent in before...
        await run_in_thread(agent_suspend, agent=agent, reason="mid-body", by=TEST_ACTOR)  # ...this

    body = json.dumps(modern_call("echo", {"message": "mid-body"})).encode()
    status, _answer = await _send_in_two_parts(url, token, body, suspend)
    assert status == 403
    decisions = await run_in_thread(lambda: list(AuditEvent.objects.filter(kind="decision", agent_id=agent.pk)))
    assert not [event for event in decisions if event.decision == "allow"]


async def test_a_slow_streamed_answer_gets_keepalives(url, token, monkeypatch):
    """A tool that says nothing for a while: comments keep the agent's stream (and any idle
    timeout in front of Behavry) from closing it."""
    monkeypatch.setattr("proxy.endpoint.KEEPALIVE_SECONDS", 0.1)
    body = modern_call("slow_task", {"seconds": 1.0, "steps": 2})
    body["params"]["_meta"]["progressToken"] = "p1"  # the upstream streams its progress
    response = await post(url, body, modern_headers(token, "tools/call", "slow_task"))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.text.count(": keepalive") >= 3
    assert "Finished 2 steps" in response.text  # and the answer still came


async def test_a_get_stream_ends_when_its_agent_is_suspended(behavry_url, legacy_server, agent, token, monkeypatch):
    import asyncio

    monkeypatch.setattr("proxy.endpoint.KEEPALIVE_SECONDS", 0.1)
    monkeypatch.setattr("proxy.identity.CACHE_SECONDS", 0)
    url = f"{behavry_url}/mcp/legacy"
    headers = await get_stream_headers(url, token)
    async with httpx.AsyncClient(timeout=30) as http, http.stream("GET", url, headers=headers) as stream:
        assert stream.status_code == 200
        chunks = stream.aiter_bytes()
        assert b"keepalive" in await anext(chunks)  # open and alive
        await run_in_thread(agent_suspend, agent=agent, reason="test", by=TEST_ACTOR)

        async def drained():
            return b"".join([chunk async for chunk in chunks])

        await asyncio.wait_for(drained(), 10)  # the stream ends, rather than run on


@pytest.mark.parametrize(("asked", "agreed"), [("2025-06-18", "2025-06-18"), ("2025-03-26", "2025-11-25")])
async def test_initialize_agrees_only_to_versions_whose_rules_behavry_keeps(url, token, asked, agreed):
    """2025-03-26 obliges a server to accept JSON-RPC batches, which Behavry refuses: asked for it,
    Behavry offers its latest 2025 version and the client decides."""
    params = {"protocolVersion": asked, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    response = await post(url, body, {"Authorization": f"Bearer {token}", "Accept": ACCEPT})
    assert response.json()["result"]["protocolVersion"] == agreed


async def test_one_agent_cannot_take_every_get_stream(behavry_url, legacy_server, token, settings):
    """An agent's GET streams to one upstream are capped per process, so the upstream's budget of
    GET streams stays open to other agents (the outsider here is the other agent)."""
    import asyncio
    import contextlib

    settings.BEHAVRY_MCP_MAX_GET_STREAMS_PER_AGENT = 2
    url = f"{behavry_url}/mcp/legacy"
    other_token = await run_in_thread(_other_agent_token)

    async def open_stream(stack, http, bearer):
        headers = await get_stream_headers(url, bearer)
        return await stack.enter_async_context(http.stream("GET", url, headers=headers))

    async with httpx.AsyncClient(timeout=30) as http, contextlib.AsyncExitStack() as stack:
        first = [await open_stream(stack, http, token) for _ in range(2)]
        assert [stream.status_code for stream in first] == [200, 200]
        refused = await open_stream(stack, http, token)
        assert refused.status_code == 429
        assert (await open_stream(stack, http, other_token)).status_code == 200
    from proxy import endpoint

    for _ in range(100):  # the server notices the hang-ups and gives the places back
        if not endpoint._get_streams:
            break
        await asyncio.sleep(0.05)
    async with httpx.AsyncClient(timeout=30) as http, contextlib.AsyncExitStack() as stack:
        assert (await open_stream(stack, http, token)).status_code == 200
