"""The demo upstream is a real MCP server; drive it with the official SDK client in both eras."""

import httpx
import pytest
from mcp import Client

EXPECTED_TOOLS = {
    "echo",
    "read_file",
    "list_files",
    "write_file",
    "delete_file",
    "send_email",
    "slow_task",
    "task_status",
    "ask_user",
    "ping_client",
    "announce_tools_changed",
    "show_credentials",
    "fail",
}


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_it_serves_every_demo_tool_in_both_eras(demo_upstream, mode):
    async with Client(demo_upstream, mode=mode) as client:
        assert client.protocol_version == ("2026-07-28" if mode == "2026-07-28" else "2025-11-25")
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == EXPECTED_TOOLS
        result = await client.call_tool("read_file", {"path": "/docs/readme.md"})
        assert not result.is_error and "Demo workspace" in result.content[0].text
        failed = await client.call_tool("fail", {"message": "boom"})
        assert failed.is_error and "boom" in failed.content[0].text


async def test_slow_task_reports_progress(demo_upstream):
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total))

    async with Client(demo_upstream, mode="legacy") as client:
        result = await client.call_tool("slow_task", {"seconds": 0.2, "steps": 3}, progress_callback=on_progress)
    assert not result.is_error
    assert seen == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]


async def test_the_legacy_only_variant_refuses_the_modern_era(legacy_upstream):
    async with httpx.AsyncClient() as http:
        response = await http.post(
            legacy_upstream,
            json={"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}},
            headers={"MCP-Protocol-Version": "2026-07-28", "Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 400
    async with Client(legacy_upstream, mode="auto") as client:  # the SDK falls back to initialize
        assert client.protocol_version == "2025-11-25"


async def test_it_refuses_a_foreign_origin(demo_upstream):
    async with httpx.AsyncClient() as http:
        response = await http.post(
            demo_upstream,
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
            headers={"Origin": "http://evil.example", "Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 403


async def test_task_status_tells_how_a_tagged_run_ended(demo_upstream):
    async with Client(demo_upstream, mode="legacy") as client:
        assert (await client.call_tool("task_status", {"tag": "demo-t1"})).content[0].text == "unknown"
        await client.call_tool("slow_task", {"seconds": 0.1, "steps": 1, "tag": "demo-t1"})
        assert (await client.call_tool("task_status", {"tag": "demo-t1"})).content[0].text == "finished"
