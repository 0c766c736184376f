"""A 2025-11-25-only MCP upstream (the official SDK server) that uses polling SSE (SEP-1699).

It keeps its events in memory (an EventStore) and suggests `retry: 100` ms. Each tool ends a
connection on purpose, and a client gets the rest only by reconnecting with GET + Last-Event-ID:
- poll_task ends its own POST's SSE connection mid-call, then answers;
- announce_across_reconnect announces a tool list change on the session's GET stream, ends that
  stream, then announces another.
Its completion/complete asks the client for roots/list first, on the request's own stream.

    python -m tests.proxy.resumable_upstream PORT
"""

from __future__ import annotations

import itertools
import sys

import anyio
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.message import ServerMessageMetadata
from mcp_types import (
    CompleteRequestParams,
    CompleteResult,
    Completion,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
)

from demo.upstream import LegacyOnly


class MemoryEventStore(EventStore):
    """Every event of every stream, in order; a replay sends the rest of the named event's stream."""

    def __init__(self) -> None:
        self.events: list[tuple[EventId, StreamId, JSONRPCMessage | None]] = []
        self.numbers = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = f"{stream_id}:{next(self.numbers)}"
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        ids = [event_id for event_id, _, _ in self.events]
        if last_event_id not in ids:
            return None
        position = ids.index(last_event_id)
        stream_id = self.events[position][1]
        for event_id, stream, message in self.events[position + 1 :]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def build_app():
    server = MCPServer(name="resumable-upstream", version="1.0.0")

    @server.tool()
    async def poll_task(ctx: Context, seconds: float = 0.5) -> str:
        """Ends this call's SSE connection (the client must reconnect), then answers."""
        await ctx.close_sse_stream()
        await anyio.sleep(seconds)
        return "finished after reconnect"

    @server.tool()
    async def announce_across_reconnect(ctx: Context) -> str:
        """A tool list change on the GET stream, the GET stream ended, then another change."""
        await ctx.session.send_tool_list_changed()
        await anyio.sleep(0.2)
        await ctx.close_standalone_sse_stream()
        await anyio.sleep(0.3)
        await ctx.session.send_tool_list_changed()
        return "announced twice"

    async def complete_from_roots(ctx, params: CompleteRequestParams) -> CompleteResult:
        """A completion that first asks the client for its roots, on the request's own stream."""
        try:
            roots = await ctx.session.send_request(
                ListRootsRequest(),
                ListRootsResult,
                request_read_timeout_seconds=60,
                metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
            )
            values = [str(root.uri) for root in roots.roots]
        except Exception as exc:  # what the client answered instead of roots
            values = [f"no roots: {exc}"]
        return CompleteResult(completion=Completion(values=values))

    server._lowlevel_server.add_request_handler("completion/complete", CompleteRequestParams, complete_from_roots)

    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        event_store=MemoryEventStore(),
        retry_interval=100,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),  # loopback tests
    )
    return LegacyOnly(app)


if __name__ == "__main__":
    uvicorn.run(build_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
