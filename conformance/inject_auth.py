"""A tiny HTTP forwarder that adds `Authorization: Bearer <token>` and changes nothing else.

Why it exists: `conformance server` (@modelcontextprotocol/conformance 0.1.16) has no option to
send a header. `--help` lists only --url, --scenario, --suite, --expected-failures, -o,
--spec-version and --verbose; the scenarios build their client as
`new StreamableHTTPClientTransport(new URL(url))` with no `requestInit`, and the raw-HTTP scenarios
(SSE streams, DNS rebinding) call fetch with fixed header sets. The only environment variable the
bundle reads is GITHUB_TOKEN (for `tier-check`). Behavry answers 401 without an agent token, so the
suite reaches Behavry through this forwarder.

Transparency: method, path, query, body and every request header (Host and Origin included, so
Behavry's own Host/Origin checks see what the suite sent) go through unchanged, apart from
hop-by-hop headers and the added Authorization. The response status, headers and body bytes come
back unchanged and unbuffered (`aiter_raw`), so SSE events arrive as the upstream sends them. A
client that goes away closes the upstream response too. run.sh also runs the suite through this
forwarder straight to server-everything, as a control showing the forwarder itself changes no result.

    CONFORMANCE_TOKEN=... python inject_auth.py --port 4000 --upstream http://127.0.0.1:8000

uvicorn and httpx are Behavry runtime dependencies (requirements.txt), so the venv has both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

import httpx
import uvicorn

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


def make_app(upstream: str, token: str):
    client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None), follow_redirects=False)
    upstream = upstream.rstrip("/")

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name.decode("latin-1").lower() not in HOP_BY_HOP and name.lower() != b"authorization"
        ]
        if token:
            headers.append(("Authorization", f"Bearer {token}"))
        url = upstream + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        # httpx.Request, not client.build_request: the client would add its default Accept: */*,
        # Accept-Encoding and User-Agent to requests that lack them, and Accept matters to MCP.
        request = httpx.Request(scope["method"], url, headers=headers, content=bytes(body) or None)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            message = f"inject_auth: upstream unreachable: {type(exc).__name__}".encode()
            await send({"type": "http.response.start", "status": 502, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": message})
            return

        async def relay() -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name, value)
                        for name, value in response.headers.raw
                        if name.decode("latin-1").lower() not in HOP_BY_HOP
                    ],
                }
            )
            with contextlib.suppress(httpx.HTTPError):  # upstream broke off: end our body too
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def client_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        work = asyncio.ensure_future(relay())
        gone = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                task.cancel()
            await asyncio.gather(work, gone, return_exceptions=True)
            await response.aclose()

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1 only)")
    parser.add_argument("--upstream", required=True, help="base URL to forward to, e.g. http://127.0.0.1:8000")
    ns = parser.parse_args()
    token = os.environ.get("CONFORMANCE_TOKEN", "")
    uvicorn.run(
        make_app(ns.upstream, token),
        host="127.0.0.1",
        port=ns.port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        server_header=False,  # the upstream's own headers only: no added Server/Date
        date_header=False,
    )


if __name__ == "__main__":
    main()
