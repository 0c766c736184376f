"""Cancellation: a 2026-07-28 client cancels by closing the stream, a 2025 client by sending
notifications/cancelled. Either way the call stops and the outcome says "cancelled"."""

import asyncio

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from audit.models import AuditEvent
from tests.proxy.conftest import MODES, run_in_thread

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
