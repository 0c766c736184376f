"""An MCP upstream (the official SDK server, both eras) whose tools take arguments marked
`x-mcp-header`: on 2026-07-28 it refuses a tools/call whose `Mcp-Param-*` headers are missing or
disagree with the body (-32020), as the specification requires of a server that reads them.
Served by tests/proxy/asgi_server.py."""

from __future__ import annotations

from typing import Annotated

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from pydantic import Field

READ_ONLY = ToolAnnotations(read_only_hint=True)


def build_app():
    server = MCPServer(name="param-upstream", version="1.0.0")

    @server.tool(annotations=READ_ONLY)
    def get_region(
        region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
        zone: Annotated[int, Field(json_schema_extra={"x-mcp-header": "Zone"})] = 0,
        verbose: bool = False,
    ) -> str:
        """Region (and zone) are mirrored in the Mcp-Param-Region and Mcp-Param-Zone headers."""
        return f"region={region} zone={zone}"

    @server.tool(annotations=READ_ONLY)
    def get_plain(text: str) -> str:
        """No argument of it is a header."""
        return f"plain {text}"

    return server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),  # loopback tests
    )
