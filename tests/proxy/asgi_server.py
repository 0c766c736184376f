"""An ASGI app served by uvicorn on a thread of the test process, for upstreams the tests script
(a raw ASGI app that misbehaves on purpose, an official SDK server built in the test)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from tests.conftest import free_port


@contextmanager
def serve_in_thread(app, *, lifespan: str = "off") -> Iterator[str]:
    """Yields the server's base URL (http://127.0.0.1:PORT) while it runs. `lifespan="on"` for an
    SDK server, whose session manager starts in its lifespan."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-thread ASGI server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def read_body(receive) -> bytes:
    """A request's whole body, for a scripted ASGI upstream."""
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            return body
