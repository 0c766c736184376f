"""HTTP routes served by Channels consumers ahead of Django.

The MCP endpoint (the proxy issue) is added here; asgi.py appends the catch-all to Django.
"""

from __future__ import annotations

held_routes: list = []
