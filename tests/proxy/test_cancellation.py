"""Cancellation: a 2026-07-28 client cancels by closing the stream, a 2025 client by sending
notifications/cancelled. Either way the call stops and the outcome says "cancelled"."""

import asyncio
import json

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from audit.models import AuditEvent
from tests.proxy.conftest import MODES, mcp_client, run_in_thread, upstream_task_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("demo_server", "starter_policies")]


async def wait_for_outcome(tool: str, timeout: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        rows = await run_in_thread(lambda: list(AuditEvent.objects.filter(kind="outcome", tool=tool).values()))
        if rows:
            return rows[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no outcome event for {tool}")


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_timeout_cancels_the_held_call_and_it_is_audited(behavry_url, token, mode):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=60))
    transport = streamable_http_client(f"{behavry_url}/mcp/demo", http_client=http)
    async with Client(transport, mode=mode, read_timeout_seconds=1.0) as client:
        with pytest.raises(MCPError):
            await client.call_tool("slow_task", {"seconds": 4, "steps": 4})
        # the session is still usable afterwards
        ok = await client.call_tool("echo", {"message": "after cancel"})
        assert ok.content[0].text == "Echo: after cancel"
    outcome = await wait_for_outcome("slow_task")
    assert outcome["details"]["status"] == "cancelled"


async def test_a_modern_disconnect_mid_stream_cancels(behavry_url, token):
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "slow_task",
            "arguments": {"seconds": 4, "steps": 8},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "progressToken": "p1",
            },
        },
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "slow_task",
    }
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{behavry_url}/mcp/demo", json=body, headers=headers) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if "notifications/progress" in line:
                break  # got going; now hang up
    outcome = await wait_for_outcome("slow_task")
    assert outcome["details"]["status"] == "cancelled"


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def modern_call(token: str, msg_id, tool: str, arguments: dict) -> tuple[dict, dict]:
    body = {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": MODERN_META},
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    return body, headers


async def hang_up_once_running(behavry_url: str, token: str, tag: str) -> None:
    """A 2026 agent calls slow_task (id 1) on the legacy upstream and hangs up at its first progress."""
    body, headers = modern_call(token, 1, "slow_task", {"seconds": 3, "steps": 6, "tag": tag})
    body["params"]["_meta"]["progressToken"] = "p1"
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{behavry_url}/mcp/legacy", json=body, headers=headers) as response,
    ):
        async for line in response.aiter_lines():
            if "notifications/progress" in line:
                break  # the tool is running upstream; hang up


async def test_a_modern_hang_up_on_a_legacy_upstream_cancels_the_tool_there(
    behavry_url, legacy_server, legacy_upstream, token
):
    """A 2025 server keeps working when the HTTP stream closes; Behavry must say
    notifications/cancelled on the bridge session, naming the id it sent the call under."""
    await hang_up_once_running(behavry_url, token, "hang-up")
    assert await upstream_task_status(legacy_upstream, "hang-up") == "cancelled"
    outcome = await wait_for_outcome("slow_task")
    assert outcome["details"]["status"] == "cancelled"


async def test_a_modern_hang_up_cancels_upstream_even_before_a_json_answering_server_replies(
    behavry_url, legacy_json_server, legacy_json_upstream, token
):
    """A 2025 server answering with one JSON body sends no headers until the tool is done, so the
    whole call happens inside Behavry's upstream POST: the cancel must not wait for its reply."""
    body, headers = modern_call(token, 1, "slow_task", {"seconds": 3, "steps": 3, "tag": "json-hang-up"})
    async with httpx2.AsyncClient(timeout=1.0) as http:
        with pytest.raises(httpx2.ReadTimeout):
            await http.post(f"{behavry_url}/mcp/legacy-json", json=body, headers=headers)
    assert await upstream_task_status(legacy_json_upstream, "json-hang-up") == "cancelled"


async def test_modern_calls_reusing_one_id_on_a_legacy_upstream_do_not_cross(
    behavry_url, legacy_server, legacy_upstream, token
):
    """Stateless clients often number every request 1, and Behavry carries them all on one
    upstream session per (agent, upstream): each must travel under its own id there, or a
    cancel (and an answer) could reach the wrong call."""

    async def keep(tag):
        body, headers = modern_call(token, 1, "slow_task", {"seconds": 1.5, "steps": 3, "tag": tag})
        async with httpx2.AsyncClient(timeout=30) as http:
            response = await http.post(f"{behavry_url}/mcp/legacy", json=body, headers=headers)
        final = [line for line in response.text.splitlines() if line.startswith("data:") and '"result"' in line]
        message = json.loads(final[-1][5:]) if final else response.json()
        assert message["id"] == 1
        return message["result"]["content"][0]["text"]

    kept, _ = await asyncio.gather(keep("kept"), hang_up_once_running(behavry_url, token, "dropped"))
    assert kept == "Finished 3 steps in 1.5s"
    assert await upstream_task_status(legacy_upstream, "dropped") == "cancelled"
    assert await upstream_task_status(legacy_upstream, "kept") == "finished"


@pytest.mark.parametrize("progress", [False, True], ids=["plain", "streaming"])
async def test_a_2025_cancel_ends_the_http_exchange_cleanly_without_an_answer(behavry_url, token, progress):
    """After notifications/cancelled the agent gets no response for the request (the spec says
    so), but its POST still ends: an event stream with no answer in it, not a 500 or a dangling
    response."""
    from tests.proxy.test_endpoint import ACCEPT, initialize

    url = f"{behavry_url}/mcp/demo"
    session = (await initialize(url, token)).headers["mcp-session-id"]
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": ACCEPT,
        "Mcp-Session-Id": session,
        "MCP-Protocol-Version": "2025-11-25",
    }
    params = {"name": "slow_task", "arguments": {"seconds": 3, "steps": 6}}
    if progress:
        params["_meta"] = {"progressToken": "p1"}
    call = {"jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": params}
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 41, "reason": "test"}}
    async with httpx2.AsyncClient(timeout=10) as http:
        pending = asyncio.ensure_future(http.post(url, json=call, headers=headers))
        await asyncio.sleep(1.0)
        assert (await http.post(url, json=cancel, headers=headers)).status_code == 202
        response = await pending
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    answers = [line for line in response.text.splitlines() if line.startswith("data:") and '"id":41' in line]
    assert answers == []
    outcome = await wait_for_outcome("slow_task")
    assert outcome["details"]["status"] == "cancelled"


@pytest.mark.parametrize("server", ["legacy", "legacy-json"])
async def test_a_modern_hang_up_cancels_a_request_that_names_no_tool_on_a_legacy_upstream(
    behavry_url, legacy_server, legacy_upstream, legacy_json_server, legacy_json_upstream, token, server
):
    """Lists and completion pass through without a decision, but a 2026 agent's hang-up is still its
    cancel: the 2025 upstream gets notifications/cancelled as for tools/call."""
    body = {
        "jsonrpc": "2.0",
        "id": 4,
        "method": "completion/complete",
        "params": {
            "ref": {"type": "ref/prompt", "name": "summarize"},
            "argument": {"name": "path", "value": f"slow:{server}-complete"},
            "_meta": MODERN_META,
        },
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "completion/complete",
    }
    async with httpx2.AsyncClient(timeout=1.0) as http:
        with pytest.raises(httpx2.ReadTimeout):
            await http.post(f"{behavry_url}/mcp/{server}", json=body, headers=headers)
    upstream = legacy_upstream if server == "legacy" else legacy_json_upstream
    assert await upstream_task_status(upstream, f"{server}-complete") == "cancelled"


async def test_a_completion_that_is_not_cancelled_answers(behavry_url, token):
    """The control case for the test above: the same request, waited for, answers."""
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "2026-07-28") as client:
        result = await client.complete({"type": "ref/prompt", "name": "summarize"}, {"name": "path", "value": "/docs/"})
    assert "/docs/readme.md" in result.completion.values
