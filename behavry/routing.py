"""HTTP routes served by Channels ahead of Django: the MCP endpoint. asgi.py appends Django."""

from __future__ import annotations

from django.urls import re_path

from proxy.endpoint import McpEndpoint

held_routes: list = [
    re_path(r"^mcp/(?P<slug>[^/]+)/?$", McpEndpoint()),
]
