"""Demo upstream: a real MCP server (official `mcp` SDK 2.x) that Behavry proxies in `make run` and tests.

It keeps a small in-memory file store so read, write and destructive tools do something real
without touching the disk. Tools cover the cases the proxy must handle:

- read-only: `read_file`, `list_files`, `echo`
- writing: `write_file`; destructive: `delete_file`; outbound: `send_email`
- slow with progress: `slow_task` (and `task_status`, how a tagged run ended); failing: `fail`
- completion of `summarize`'s path; the value `slow:<tag>` answers after 3 s, tracked like `slow_task`
- asking the user (elicitation): `ask_user` and the prompt `release_notes` (both eras: MRTR on
  2026-07-28, a mid-call request on 2025 sessions)

    python -m demo.upstream --port 8765            # both eras (2026-07-28 and 2025-xx), like SDK servers
    python -m demo.upstream --port 8765 --era legacy  # answers only the initialize handshake era

`--era legacy` behaves like server-everything: a modern request is refused with a plain 400, so
Behavry's era detection sees a legacy-only upstream.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import anyio
import uvicorn
from mcp.server import MCPServer
from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import (
    Completion,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmptyResult,
    InputRequiredResult,
    PingRequest,
    ToolAnnotations,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel

SEED_FILES = {
    "/docs/readme.md": "# Demo workspace\nThis is the demo upstream's in-memory file store.\n",
    "/docs/roadmap.md": "Q1: ship the proxy. Q2: ship escalations.\n",
    "/data/customers.csv": "id,name\n1,Ada\n2,Grace\n",
}


class Confirmation(BaseModel):
    confirm: bool


class Tone(BaseModel):
    tone: str


def _confirmation(question: str) -> Elicit[Confirmation]:
    # Module level: the tool's annotations are strings (PEP 563), resolved in this module's globals.
    return Elicit(question, Confirmation)


def build_server() -> MCPServer:
    files: dict[str, str] = dict(SEED_FILES)
    outbox: list[dict[str, str]] = []
    task_runs: dict[str, str] = {}

    @contextmanager
    def tracked(tag: str) -> Iterator[None]:
        """Record how a tagged run ends, for `task_status`: finished, or cancelled by the client."""
        if tag:
            task_runs[tag] = "running"
        try:
            yield
        except anyio.get_cancelled_exc_class():
            if tag:
                task_runs[tag] = "cancelled"
            raise
        if tag:
            task_runs[tag] = "finished"

    server = MCPServer(name="behavry-demo-upstream", version="1.0.0", instructions="Demo tools behind Behavry.")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def echo(message: str) -> str:
        """Echo a message back."""
        return f"Echo: {message}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def read_file(path: str) -> str:
        """Read a file from the demo workspace."""
        if path not in files:
            raise ToolError(f"No such file: {path}")
        return files[path]

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def list_files(prefix: str = "/") -> list[str]:
        """List files whose path starts with prefix."""
        return sorted(p for p in files if p.startswith(prefix))

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False))
    def write_file(path: str, content: str) -> str:
        """Create or overwrite a file in the demo workspace."""
        files[path] = content
        return f"Wrote {len(content)} characters to {path}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False))
    def delete_file(path: str) -> str:
        """Delete a file from the demo workspace."""
        if files.pop(path, None) is None:
            raise ToolError(f"No such file: {path}")
        return f"Deleted {path}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True))
    def send_email(to: str, subject: str, body: str) -> str:
        """Send an email (kept in the demo outbox, never delivered)."""
        outbox.append({"to": to, "subject": subject, "body": body})
        return f"Queued email #{len(outbox)} to {to}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def slow_task(ctx: Context, seconds: float = 1.0, steps: int = 4, tag: str = "") -> str:
        """Work for `seconds`, reporting progress `steps` times. With a `tag`, `task_status` tells
        afterwards whether the run finished or was cancelled (what a client's cancel reached)."""
        steps = max(1, min(int(steps), 100))
        with tracked(tag):
            for step in range(1, steps + 1):
                await anyio.sleep(max(0.0, float(seconds)) / steps)
                await ctx.report_progress(step, steps, f"step {step}/{steps}")
        return f"Finished {steps} steps in {seconds}s"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def task_status(tag: str) -> str:
        """How the `slow_task` run with this tag ended: running, finished, cancelled or unknown."""
        return task_runs.get(tag, "unknown")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def ask_user(
        question: str,
        answer: Annotated[ElicitationResult[Confirmation], Resolve(_confirmation)],
        then_seconds: float = 0.0,
        tag: str = "",
    ) -> str:
        """Ask the agent's user a yes/no question, then work `then_seconds` (a tagged run shows in
        `task_status`, so tests can see a cancel that arrives after the answer).

        Through a resolver, so the SDK asks in the client's era: a mid-call `elicitation/create`
        request on 2025 sessions, an `input_required` result (MRTR) on 2026-07-28.
        """
        with tracked(tag):
            await anyio.sleep(max(0.0, float(then_seconds)))
        if not isinstance(answer, AcceptedElicitation):
            return f"The user chose {answer.action}."
        return f"The user answered {'yes' if answer.data.confirm else 'no'}."

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def ping_client(ctx: Context) -> str:
        """Ping the client mid-call (a 2025-era server-to-client request that is not a question)."""
        # Tied to this call, so it rides the call's own stream (send_ping() would use the GET stream).
        try:
            await ctx.session.send_request(
                PingRequest(),
                EmptyResult,
                request_read_timeout_seconds=10,
                metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
            )
        except MCPError as exc:  # 2026-07-28 has no mid-call requests at all
            return f"no ping on this protocol era: {exc.message}"
        return "the client answered the ping"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def announce_tools_changed(ctx: Context) -> str:
        """Tell the client its tool list changed (a server-initiated notification, not tied to this call)."""
        await ctx.session.send_tool_list_changed()
        return "announced"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def show_credentials(ctx: Context) -> dict[str, str]:
        """Which credential headers reached this server (lets tests check what a proxy forwards)."""
        headers = {k.lower(): v for k, v in (ctx.headers or {}).items()}
        return {k: headers.get(k, "") for k in ("authorization", "x-upstream-key")}

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def fail(message: str = "demo failure") -> str:
        """Always fails, to exercise error paths."""
        raise ToolError(message)

    @server.resource("demo://readme", mime_type="text/markdown")
    def readme() -> str:
        """The demo workspace readme."""
        return files.get("/docs/readme.md", "")

    @server.prompt()
    def summarize(path: str) -> str:
        """Ask the model to summarize a file."""
        return f"Summarize the file at {path}:\n\n{files.get(path, '(missing)')}"

    @server.prompt()
    async def release_notes(version: str, ctx: Context) -> str | InputRequiredResult:
        """Draft release notes, after asking the user for the tone: input_required (MRTR) for
        2026-07-28 clients, a mid-read elicitation/create request on 2025 sessions."""
        if ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
            asked = await ctx.elicit("Which tone?", Tone)
            chosen = asked.data.tone if isinstance(asked, AcceptedElicitation) else "neutral"
            return f"Write {chosen} release notes for version {version}."
        answer = (ctx.input_responses or {}).get("tone")
        if answer is None:
            schema = {"type": "object", "properties": {"tone": {"type": "string"}}, "required": ["tone"]}
            ask = ElicitRequest(params=ElicitRequestFormParams(message="Which tone?", requested_schema=schema))
            return InputRequiredResult(input_requests={"tone": ask}, request_state=f"release:{version}")
        content = answer.content if isinstance(answer, ElicitResult) else None
        tone = content.get("tone", "neutral") if isinstance(content, dict) else "neutral"
        return f"Write {tone} release notes for version {version}."

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> Completion:
        """Complete `summarize`'s path from the workspace. A value `slow:<tag>` waits 3 s first,
        tracked like `slow_task`: what a client's cancel of a request that names no tool reached."""
        value = str(getattr(argument, "value", "") or "")
        if value.startswith("slow:"):
            with tracked(value.removeprefix("slow:")):
                await anyio.sleep(3)
        return Completion(values=sorted(p for p in files if p.startswith(value))[:100])

    server._behavry_state = {"files": files, "outbox": outbox}  # type: ignore[attr-defined]
    return server


class LegacyOnly:
    """ASGI wrapper that refuses the modern era the way a 2025-era server does (plain 400)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            version = headers.get("mcp-protocol-version")
            if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
                body = json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {"code": -32000, "message": f"Bad Request: Unsupported protocol version: {version}"},
                    }
                ).encode()
                await send(
                    {"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]}
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def build_app(era: str = "dual", json_response: bool = False):
    server = build_server()
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*"],
        allowed_origins=["http://127.0.0.1", "http://127.0.0.1:*", "http://localhost:*"],
    )
    app = server.streamable_http_app(
        streamable_http_path="/mcp", transport_security=security, json_response=json_response
    )
    return LegacyOnly(app) if era == "legacy" else app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--era", choices=["dual", "legacy"], default="dual")
    parser.add_argument(
        "--json",
        action="store_true",
        help="answer POSTs with one JSON body, no SSE (no headers until the tool is done)",
    )
    parser.add_argument("--log-level", default="warning")
    ns = parser.parse_args()
    uvicorn.run(
        build_app(ns.era, json_response=ns.json), host=ns.host, port=ns.port, log_level=ns.log_level, lifespan="on"
    )


if __name__ == "__main__":
    main()
