"""An upstream that lists one odd tool next to good ones, end to end through Behavry: the good
tools are still listed to agents, and a tool the catalog cannot hold is not.

The SDK's servers cannot list a malformed tool (they validate their own), so the upstream here is a
raw ASGI app speaking the 2026-07-28 era, served by uvicorn in a thread like Behavry itself.
"""

import json

import pytest

from policies.services import policy_create
from proxy.services import upstream_server_create
from tests.conftest import TEST_ACTOR
from tests.proxy.asgi_server import read_body, serve_in_thread
from tests.proxy.test_endpoint import MODERN, modern_headers, post

pytestmark = pytest.mark.django_db(transaction=True)

GOOD = [
    {"name": "get_ok", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
    {"name": "list_ok", "inputSchema": {"type": "object"}},
]
# What the upstream lists after GOOD: set by each test (the upstream runs in this process).
ODD: list[dict] = []


async def odd_upstream(scope, receive, send):
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    message = json.loads(body)
    if "id" not in message:  # a notification
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    results = {
        "server/discover": {"supportedVersions": [MODERN], "capabilities": {"tools": {}}},
        "tools/list": {"tools": [GOOD[0], *ODD, GOOD[1]]},
        "tools/call": {"content": [{"type": "text", "text": "ok"}], "isError": False},
    }
    if message["method"] in results:
        status, reply = 200, {"result": {**results[message["method"]], "resultType": "complete"}}
    else:
        status, reply = 404, {"error": {"code": -32601, "message": "Method not found"}}
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send(
        {"type": "http.response.body", "body": json.dumps({"jsonrpc": "2.0", "id": message["id"], **reply}).encode()}
    )


@pytest.fixture(scope="module")
def odd_upstream_url():
    with serve_in_thread(odd_upstream) as base:
        yield f"{base}/mcp"


@pytest.fixture
def odd_url(behavry_url, odd_upstream_url, token):
    upstream_server_create(slug="odd", name="Odd", url=odd_upstream_url, by=TEST_ACTOR)
    # Allow every tool, so what is listed depends on the catalog alone.
    policy_create(data={"name": "everything", "effect": "allow", "tools": ["*"]}, by=TEST_ACTOR)
    yield f"{behavry_url}/mcp/odd"
    ODD.clear()


async def listed(url, token) -> list[str]:
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
    response = await post(url, body, modern_headers(token, "tools/list"))
    assert response.status_code == 200
    return [tool["name"] for tool in response.json()["result"]["tools"]]


async def test_the_control_case_lists_the_good_tools(odd_url, token):
    assert await listed(odd_url, token) == ["get_ok", "list_ok"]


@pytest.mark.parametrize(
    "odd",
    [
        {"name": "get_" + "x" * 125, "inputSchema": {"type": "object"}},  # longer than Tool.name
        {"name": "get_odd", "description": "before\x00after"},  # PostgreSQL text cannot hold U+0000
        {"name": 7},
    ],
    ids=["129-character name", "U+0000", "number for a name"],
)
async def test_a_tool_the_catalog_cannot_hold_is_not_listed_and_the_others_are(odd_url, token, odd):
    ODD.append(odd)
    assert await listed(odd_url, token) == ["get_ok", "list_ok"]


@pytest.mark.parametrize(
    "odd",
    [
        {"name": "get_odd", "inputSchema": {"type": "object"}, "annotations": "readOnly"},
        {"name": "get_odd", "inputSchema": ["type", "object"], "annotations": {}},
    ],
    ids=["string annotations", "list inputSchema"],
)
async def test_a_tool_with_a_malformed_part_is_catalogued_and_listed_with_the_others(odd_url, token, odd):
    ODD.append(odd)
    assert await listed(odd_url, token) == ["get_ok", "get_odd", "list_ok"]


async def test_a_list_for_a_name_hides_only_that_tool(odd_url, token):
    ODD.append({"name": ["get_odd"]})
    assert await listed(odd_url, token) == ["get_ok", "list_ok"]
