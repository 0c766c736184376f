"""The ASGI server command line, in one place: `make run`, the conformance run and the tests that
start real server processes all use it.

uvicorn with uvloop and httptools is the default and the production server (measured cheaper per
proxied call than Daphne: bench/README.md); Daphne stays supported. Both serve HTTP, SSE and
websockets through Channels; neither needs lifespan events.
"""

from __future__ import annotations

import sys

APPLICATION = "behavry.asgi:application"


def asgi_server_command(server: str, port: int, host: str = "127.0.0.1") -> list[str]:
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), APPLICATION]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        APPLICATION,
        "--host",
        host,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--lifespan",
        "off",
        "--no-server-header",
    ]


if __name__ == "__main__":  # `python -m behavry.asgi_server uvicorn 8000`: one argument per line
    print("\n".join(asgi_server_command(sys.argv[1], int(sys.argv[2]))))
