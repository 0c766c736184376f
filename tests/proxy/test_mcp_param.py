"""Tools with `x-mcp-header` arguments through Behavry: a 2026-07-28 upstream gets the
`Mcp-Param-*` headers derived from the body Behavry decided on, whatever era the agent speaks.
The upstream is the official SDK server (tests/proxy/param_upstream.py, served on a thread), which refuses a call
whose headers are missing or disagree with the body."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from audit.models import AuditEvent
from policies.services import policy_create
from proxy import upstream
from proxy.services import upstream_server_create
from tests.conftest import TEST_ACTOR
from tests.proxy.asgi_server import serve_in_thread
from tests.proxy.conftest import MODES, mcp_client, run_in_thread
from tests.proxy.param_upstream import build_app

MODERN = "2026-07-28"


@pytest.fixture(scope="module")
def param_upstream():
    with serve_in_thread(build_app(), lifespan="on") as base:
        yield f"{base}/mcp"


@pytest.fixture
def url(behavry_url, param_upstream, starter_policies):
    upstream_server_create(slug="params", name="Params", url=param_upstream, by=TEST_ACTOR)
    return f"{behavry_url}/mcp/params"


def _outcomes(tool: str) -> list[dict]:
    return list(AuditEvent.objects.filter(tool=tool, kind="outcome").order_by("id").values("details"))


@pytest.mark.parametrize("mode", MODES)
async def test_a_tool_with_header_arguments_works_through_behavry_in_either_era(url, token, mode):
    async with mcp_client(url, token, MODERN) as lister:
        await lister.list_tools()  # the catalog Behavry derives the headers from
    async with mcp_client(url, token, mode) as client:
        # Not-ASCII (sent base64-wrapped), an integer, and an argument left out (no header then).
        both = await client.call_tool("get_region", {"region": "Zürich", "zone": 7, "verbose": True})
        region_only = await client.call_tool("get_region", {"region": "eu-west"})
    assert (both.is_error, both.content[0].text) == (False, "region=Zürich zone=7")
    assert (region_only.is_error, region_only.content[0].text) == (False, "region=eu-west zone=0")
    statuses = [o["details"]["status"] for o in await run_in_thread(_outcomes, "get_region")]
    # A new 2026-07-28 client does not know the tool's schema before its first call, so it sends
    # no header; refused (-32020), it lists the tools and tries again, as against the upstream
    # directly. A 2025 client sends no headers, and Behavry checks none for it.
    assert statuses == (["refused", "ok", "ok"] if mode == MODERN else ["ok", "ok"])


async def test_the_schemas_are_read_once_per_upstream_not_per_call(url, token, monkeypatch):
    reads = []
    read = upstream._read_param_maps
    monkeypatch.setattr(upstream, "_read_param_maps", lambda server_id: reads.append(server_id) or read(server_id))
    async with mcp_client(url, token, MODERN) as client:
        await client.list_tools()
        for _ in range(3):
            assert not (await client.call_tool("get_region", {"region": "eu-west"})).is_error
            assert not (await client.call_tool("get_plain", {"text": "x"})).is_error
    assert len(reads) == 1


def _raw_call(token: str, arguments: dict, **param_headers: str) -> tuple[str, dict[str, str]]:
    """A 2026-07-28 tools/call of get_region on the wire, with the given Mcp-Param-* headers."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"},
    }
    params = {"name": "get_region", "arguments": arguments, "_meta": meta}
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "get_region",
        **{f"Mcp-Param-{name}": value for name, value in param_headers.items()},
    }
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}), headers


async def _post(url: str, body: str, headers: dict[str, str]) -> httpx.Response:
    return await asyncio.to_thread(httpx.post, url, content=body, headers=headers, timeout=30)


def _decisions(tool: str) -> int:
    return AuditEvent.objects.filter(tool=tool, kind="decision").count()


async def test_an_argument_no_header_can_carry_is_refused_not_a_crash(url, token):
    """A lone surrogate is valid JSON but has no UTF-8, so no header can carry it: the call has
    its argument without the header, which Behavry refuses (-32020) as the upstream would, with
    the refusal in the audit trail."""
    async with mcp_client(url, token, MODERN) as client:
        await client.list_tools()
    body, headers = _raw_call(token, {"region": "\ud800"})  # json.dumps writes it as "\\ud800"

    response = await _post(url, body, headers)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020
    assert "Mcp-Param-Region header is missing" in response.json()["error"]["message"]
    assert [o["details"]["status"] for o in await run_in_thread(_outcomes, "get_region")] == ["refused"]


async def test_an_agents_header_that_disagrees_with_its_body_is_refused_and_audited(url, token):
    """Behavry reads the body, so it must check the headers against it: a router in front of
    Behavry may have gone by `Mcp-Param-Region: us-east` while the body asks for eu-west. Nothing
    of it reaches the upstream; the decision and the refusal are in the audit trail."""
    async with mcp_client(url, token, MODERN) as client:
        await client.list_tools()

    lying = await _post(url, *_raw_call(token, {"region": "eu-west"}, Region="us-east"))
    extra = await _post(url, *_raw_call(token, {"region": "eu-west"}, Region="eu-west", Zone="3"))
    malformed = await _post(url, *_raw_call(token, {"region": "eu-west"}, Region="=?base64?not base64?="))
    body, headers = _raw_call(token, {"region": "eu-west"})
    not_ascii = await asyncio.to_thread(  # a payload no base64 decoder takes: the SDK's raised (a 500)
        httpx.post, url, content=body, headers=[*headers.items(), ("Mcp-Param-Region", b"=?base64?\xe9?=")]
    )

    for response in (lying, extra, malformed, not_ascii):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == -32020, response.text
    assert [o["details"]["status"] for o in await run_in_thread(_outcomes, "get_region")] == ["refused"] * 4

    encoded = "=?base64?WsO8cmljaA==?="  # "Zürich"
    honest = await _post(url, *_raw_call(token, {"region": "Zürich", "zone": 7}, Region=encoded, Zone="7"))
    assert honest.status_code == 200, honest.text
    assert honest.json()["result"]["content"][0]["text"] == "region=Zürich zone=7"


async def test_a_header_given_twice_is_refused_before_anything_is_decided(url, token):
    """A router reading the first copy and Behavry the last would act on different values."""
    async with mcp_client(url, token, MODERN) as client:
        await client.list_tools()
    body, headers = _raw_call(token, {"region": "eu-west"}, Region="us-east")
    twice = [*headers.items(), ("Mcp-Param-Region", "eu-west")]

    response = await asyncio.to_thread(httpx.post, url, content=body, headers=twice, timeout=30)

    assert response.status_code == 400
    assert response.json()["error"] == {"code": -32020, "message": "mcp-param-region header appears more than once"}
    assert await run_in_thread(_decisions, "get_region") == 0


async def test_a_tool_the_agent_may_not_use_is_denied_and_audited_not_refused_for_its_headers(url, token):
    """The agent's listing never showed get_region, so its client sends no headers for it: the
    call is a policy denial (a tool result, audited), as before the headers were checked."""
    await run_in_thread(
        policy_create, data={"name": "no regions", "effect": "deny", "tools": ["get_region"]}, by=TEST_ACTOR
    )
    async with mcp_client(url, token, MODERN) as client:
        assert "get_region" not in {tool.name for tool in (await client.list_tools()).tools}
    response = await _post(url, *_raw_call(token, {"region": "eu-west"}))

    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["isError"] is True and result["structuredContent"]["behavry"]["decision"] == "deny"
    decisions = await run_in_thread(
        lambda: list(AuditEvent.objects.filter(tool="get_region", kind="decision").values_list("decision", flat=True))
    )
    assert decisions == ["deny"]


def test_only_headers_that_mirror_an_argument_are_passed_on():
    """An agent's header Behavry has no schema for goes up only if its value is one of the call's
    argument values: it then carries nothing the decision and the audit trail did not see."""
    message = {"params": {"name": "t", "arguments": {"region": "eu-west", "opts": {"zone": 7, "on": True}}}}
    agent = {
        "mcp-param-region": "eu-west",
        "mcp-param-zone": "7",
        "mcp-param-on": "true",
        "mcp-param-encoded": "=?base64?ZXUtd2VzdA==?=",  # "eu-west"
        "mcp-param-secret": "AKIAEXAMPLE",
        "mcp-param-derived": "eu-west",
    }

    passed = upstream._passable_param_headers(message, agent, {"Mcp-Param-Derived": "eu-west"})

    assert set(passed) == {"mcp-param-region", "mcp-param-zone", "mcp-param-on", "mcp-param-encoded"}
    assert upstream._passable_param_headers({"params": {"arguments": []}}, agent, {}) == {}


async def test_an_agents_headers_for_a_tool_behavry_has_not_catalogued_go_up_as_they_came(url, token):
    """Nobody listed the upstream's tools yet, so Behavry derives no header for get_region: the
    transport obliges an intermediary to pass on the `Mcp-Param-*` headers it does not know, and
    the upstream checks them itself."""
    response = await _post(url, *_raw_call(token, {"region": "eu-west"}, Region="eu-west"))

    assert response.status_code == 200, response.text
    assert response.json()["result"]["content"][0]["text"] == "region=eu-west zone=0"
    assert [o["details"]["status"] for o in await run_in_thread(_outcomes, "get_region")] == ["ok"]
