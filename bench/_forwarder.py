"""Zero-logic ASGI forwarder: the floor that bench/proxy_overhead.py measures Behavry against.

No auth, no policy, no audit, no JSON parsing: it reads the POST body, sends it to the upstream
with the MCP headers it came with, and returns the upstream's status, content type and body.

    FORWARD_URL=http://127.0.0.1:8765/mcp python -m uvicorn _forwarder:app --app-dir bench ...
    FORWARD_URL=... FORWARD_CLIENT=aiohttp ...      # aiohttp's client instead of httpx
    FORWARD_CLIENT=httpx2 ...                         # pydantic's httpx fork (its pool has the O(n) fixes)
    FORWARD_CLIENT=http1 ...                          # Behavry's own upstream client (proxy/http1.py)

The upstream client is pooled and created on first use in the server's event loop.
"""

from __future__ import annotations

import os

FORWARD_URL = os.environ.get("FORWARD_URL", "http://127.0.0.1:8765/mcp")
FORWARD_CLIENT = os.environ.get("FORWARD_CLIENT", "httpx")
PASS_HEADERS = {b"content-type", b"accept", b"mcp-protocol-version", b"mcp-method", b"mcp-name", b"mcp-session-id"}

_client = None


async def _post_httpx(body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    global _client
    if _client is None:
        httpx = __import__("httpx2" if FORWARD_CLIENT == "httpx2" else "httpx")

        _client = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
    response = await _client.post(FORWARD_URL, content=body, headers=headers)
    return response.status_code, response.headers.get("content-type", ""), response.content


async def _post_aiohttp(body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    global _client
    if _client is None:
        import aiohttp

        _client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200),
            timeout=aiohttp.ClientTimeout(total=30.0, connect=5.0),
            auto_decompress=False,
        )
    async with _client.post(FORWARD_URL, data=body, headers=headers) as response:
        return response.status, response.headers.get("content-type", ""), await response.read()


async def _post_http1(body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    global _client
    if _client is None:
        import sys
        from pathlib import Path

        from yarl import URL

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from proxy import http1

        url = URL(FORWARD_URL)
        _client = (http1.Client(scheme=url.scheme, host=url.raw_host or "", port=url.port or 80), url.raw_path_qs)
    client, path = _client
    response = await client.request(
        "POST", path, headers, body, connect_timeout=5.0, read_timeout=30.0, pool_timeout=35.0
    )
    data = await response.read()
    response.release()
    return response.status, response.headers.get("content-type", ""), data


_post = {"aiohttp": _post_aiohttp, "http1": _post_http1}.get(FORWARD_CLIENT, _post_httpx)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return
        chunks.append(event.get("body", b""))
        if not event.get("more_body"):
            break
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k.lower() in PASS_HEADERS}
    try:
        status, content_type, body = await _post(b"".join(chunks), headers)
    except Exception as exc:  # noqa: BLE001 - the floor still answers, so the bench counts an error, not a hang
        status, content_type, body = 502, "text/plain", f"forwarder: {type(exc).__name__}".encode()
    response_headers = [(b"content-length", str(len(body)).encode())]
    if content_type:
        response_headers.append((b"content-type", content_type.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})
