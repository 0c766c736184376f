"""What Behavry adds to an MCP tools/call: latency and CPU, against the upstream direct and a zero-logic floor.

Run:  .venv/bin/python bench/proxy_overhead.py [--seconds 10] [--rates 50,100,200] [--targets a,b]
      [--no-access-log] [--no-queries] [--in-process 1000] [--agents 1] [--profile behavry-uvloop,behavry-daphne]

uvloop and httptools come with the requirements (behavry-uvloop is the production server); py-spy
(--profile) and httpx2 are optional: pip install them into .venv.

Set-up (all inside this script):
- PostgreSQL database `behavry_bench_proxy` (or --database) on 127.0.0.1:5432 (user postgres; created if missing),
  REDIS_URL=redis://127.0.0.1:6379/3, BEHAVRY_VAR_DIR a temp dir, `manage.py migrate`.
- The demo upstream (`python -m demo.upstream`, the official MCP SDK server) on a free port, registered
  as upstream `bench-echo`, an agent with a fresh token, and an allow policy for the tool `echo`.

Targets, each its own server process on its own port, all up for the whole run:
  direct              the demo upstream itself (uvicorn; uvloop/httptools when installed)
  fwd-daphne          bench/_forwarder.py under Daphne, httpx client
  fwd-uvicorn         bench/_forwarder.py under uvicorn (asyncio loop, h11), httpx client
  fwd-uvloop          bench/_forwarder.py under uvicorn (uvloop, httptools), httpx client
  fwd-daphne-aiohttp, fwd-uvicorn-aiohttp, fwd-uvloop-aiohttp
                      the same with aiohttp's client: the floor as issue 4 defines it (uvicorn, uvloop,
                      httptools and aiohttp's client: 0.9 ms of CPU per call)
  fwd-daphne-http1, fwd-uvicorn-http1, fwd-uvloop-http1
                      the same with Behavry's own upstream client (proxy/http1.py): the floors for
                      behavry-daphne, behavry-uvicorn and behavry-uvloop, so Behavry-minus-floor is
                      Behavry's own work and not the choice of client
  fwd-uvloop-httpx2   the same with httpx2 (pydantic's httpx fork, installed with the mcp SDK)
  behavry-daphne      `python -m daphne behavry.asgi:application`
  behavry-uvicorn     `python -m uvicorn behavry.asgi:application --loop asyncio --http h11`
  behavry-uvloop      `python -m uvicorn behavry.asgi:application --loop uvloop --http httptools`
Targets whose packages are missing (uvloop, httptools, aiohttp, httpx2) are skipped with a note.

Load: open loop. Calls are sent at fixed times (i / rate) whether or not earlier ones have answered; the
latency of a call runs from its scheduled time to the last byte of its answer (so a late start counts).
Each window is preceded by a 1 s warm-up at the same rate. Rates are interleaved (for each rate, every
target in turn) so slow drift in the machine's load hits all targets alike. With --rounds N the whole
sequence runs N times and the tables show medians over the rounds (the added latencies as the median of
each round's target-minus-direct), followed by every round's Behavry-against-floor figures: this host's
speed drifts by 2x within an hour, so one round can land in a slow phase. The request is the 2026-07-28
(stateless) `tools/call` of `echo` with a 1 KB message, one POST per call; every answer is checked
(HTTP 200, the right id, a result with isError false and the echoed text) and failures are counted.

CPU: utime+stime from /proc/<pid>/stat of the server process and its children, before and after each
window, divided by the calls sent. Also shown: the upstream's CPU, the PostgreSQL backends of the bench
database, the load generator (this process) and whatever else ran on the machine in that window. The
load generator, the upstream, PostgreSQL and the target share the same cores.

Also printed, before the load: every PostgreSQL round trip of one allowed call (McpEndpoint driven in
this process under a libpq protocol trace, so BEGIN/COMMIT and health-check queries show too), and with
--profile, where a target's CPU goes (py-spy --gil samples grouped by pipeline stage and by library) while
it serves --profile-rate calls/s; the flame graph lands in the temp dir, which is then kept.

Servers run with their default access logs (written to a log file) unless --no-access-log.
Printed: numbers only, no pass/fail assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _benchlib import ROOT, percentile

DB_NAME = "behavry_bench_proxy"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
REDIS_URL = "redis://127.0.0.1:6379/3"
SLUG = "bench-echo"
AGENT_NAME = "bench-proxy-overhead"
POLICY_NAME = "allow echo"
MODERN = "2026-07-28"
MESSAGE = ("Behavry bench payload: the quick brown fox jumps over the lazy dog. " * 20)[:1024]
EXPECTED_TEXT = f"Echo: {MESSAGE}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PY = sys.executable
HAVE = {name: importlib.util.find_spec(name) is not None for name in ("uvloop", "httptools", "aiohttp", "httpx2")}

# Bodies are built by splicing the id into a fixed template (cheap for the load generator).
_META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
_CALL = {
    "jsonrpc": "2.0",
    "id": 999999999,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"message": MESSAGE}, "_meta": _META},
}
_BODY_HEAD, _BODY_TAIL = json.dumps(_CALL, separators=(",", ":")).encode().split(b"999999999")


def call_body(msg_id: int) -> bytes:
    return _BODY_HEAD + str(msg_id).encode() + _BODY_TAIL


# --- targets -----------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    kind: str  # direct | forwarder | behavry
    stack: str  # the server and HTTP client, for the table
    floor: str = ""  # the forwarder with the same server stack (Behavry targets)
    port: int = 0
    path: str = ""
    proc: subprocess.Popen | None = None
    log: Path | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def target_catalog() -> list[Target]:
    uv = HAVE["uvloop"] and HAVE["httptools"]
    return [
        Target("direct", "direct", "uvicorn (demo upstream)"),
        Target("fwd-daphne", "forwarder", "daphne + httpx"),
        *([Target("fwd-daphne-aiohttp", "forwarder", "daphne + aiohttp")] if HAVE["aiohttp"] else []),
        Target("fwd-uvicorn", "forwarder", "uvicorn asyncio/h11 + httpx"),
        *([Target("fwd-uvicorn-aiohttp", "forwarder", "uvicorn asyncio/h11 + aiohttp")] if HAVE["aiohttp"] else []),
        *([Target("fwd-uvloop", "forwarder", "uvicorn uvloop/httptools + httpx")] if uv else []),
        *(
            [Target("fwd-uvloop-aiohttp", "forwarder", "uvicorn uvloop/httptools + aiohttp")]
            if uv and HAVE["aiohttp"]
            else []
        ),
        *(
            [Target("fwd-uvloop-httpx2", "forwarder", "uvicorn uvloop/httptools + httpx2")]
            if uv and HAVE["httpx2"]
            else []
        ),
        *([Target("fwd-daphne-http1", "forwarder", "daphne + http1")] if HAVE["httptools"] else []),
        *([Target("fwd-uvicorn-http1", "forwarder", "uvicorn asyncio/h11 + http1")] if HAVE["httptools"] else []),
        *([Target("fwd-uvloop-http1", "forwarder", "uvicorn uvloop/httptools + http1")] if uv else []),
        # Behavry's upstream client is proxy/http1.py: its floor is the forwarder with that client.
        Target("behavry-daphne", "behavry", "daphne + http1", floor="fwd-daphne-http1"),
        Target("behavry-uvicorn", "behavry", "uvicorn asyncio/h11 + http1", floor="fwd-uvicorn-http1"),
        *(
            [Target("behavry-uvloop", "behavry", "uvicorn uvloop/httptools + http1", floor="fwd-uvloop-http1")]
            if uv
            else []
        ),
    ]


def server_command(target: Target, app: str, access_log: bool) -> list[str]:
    """The servers as deployed by default (both write an access line per request to stdout, which goes
    to a log file here), or with `access_log=False` both quiet (daphne -v 0, uvicorn --no-access-log)."""
    port = str(target.port)
    if "daphne" in target.name:
        return [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", port, *([] if access_log else ["-v", "0"]), app]
    uvicorn = [PY, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", port, "--lifespan", "off"]
    if not access_log:
        uvicorn += ["--no-access-log", "--log-level", "warning"]
    if "uvloop" in target.name:
        return [*uvicorn, "--loop", "uvloop", "--http", "httptools"]
    return [*uvicorn, "--loop", "asyncio", "--http", "h11"]


def start_process(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        # Own session, so cleanup can signal exactly this process group and nothing else.
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_port(proc: subprocess.Popen, port: int, log: Path, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {seconds:.0f} s: {log.read_text()[-2000:]}")


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# --- CPU accounting from /proc -------------------------------------------------------------------------


def proc_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children[ppid].append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_ticks(root: int) -> dict[int, int]:
    return {pid: proc_ticks(pid) for pid in descendants(root)}


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return user + nice + system + irq + softirq + steal, sum(values)


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PgBackends:
    """CPU of the PostgreSQL backends connected to the bench database (except this watcher's own)."""

    def __init__(self):
        import psycopg

        self.conn = psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}", autocommit=True)

    def pids(self) -> list[int]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (DB_NAME,)
        ).fetchall()
        return [r[0] for r in rows]

    def ticks(self) -> dict[int, int]:
        return {pid: proc_ticks(pid) for pid in self.pids()}

    def close(self) -> None:
        self.conn.close()


def delta_ticks(before: dict[int, int], after: dict[int, int]) -> int:
    """Ticks used in the window; processes that appeared in it count from zero, vanished ones are lost."""
    return sum(t - before.get(pid, 0) for pid, t in after.items() if t >= before.get(pid, 0))


# --- a small open-loop HTTP/1.1 client (asyncio protocol, keep-alive pool) ----------------------------


class _Conn(asyncio.Protocol):
    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self._head: tuple[int, dict[str, str], object] | None = None
        self._chunks: list[bytes] = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            try:
                self._parse()
            except (ValueError, IndexError) as exc:  # a malformed answer fails this call, not the run
                self.waiter.set_exception(exc)

    def connection_lost(self, exc):
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self._head is not None and self._head[2] == "eof":
                status, headers, _ = self._head
                self.waiter.set_result((status, headers, bytes(self.buf), False))
            else:
                self.waiter.set_exception(ConnectionError("connection closed by server"))

    def _parse(self) -> None:
        buf = self.buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            if "content-length" in headers:
                mode: object = int(headers["content-length"])
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                mode = "chunked"
            else:
                mode = "eof"
            self._head, self._chunks = (status, headers, mode), []
        status, headers, mode = self._head
        if isinstance(mode, int):
            if len(buf) < mode:
                return
            body = bytes(buf[:mode])
            del buf[:mode]
        elif mode == "chunked":
            while True:
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    return
                size = int(bytes(buf[:line_end]).split(b";")[0], 16)
                if size == 0:
                    end = buf.find(b"\r\n\r\n", line_end)
                    if end < 0:
                        return
                    del buf[: end + 4]
                    body = b"".join(self._chunks)
                    break
                if len(buf) < line_end + 2 + size + 2:
                    return
                self._chunks.append(bytes(buf[line_end + 2 : line_end + 2 + size]))
                del buf[: line_end + 2 + size + 2]
        else:
            return  # read until the server closes
        self._head = None
        keep = headers.get("connection", "").lower() != "close"
        self.waiter.set_result((status, headers, body, keep))

    async def request(self, raw: bytes):
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


class Client:
    def __init__(self, port: int, path: str, tokens: list[str] | None):
        self.port = port
        self.idle: list[_Conn] = []
        base = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: {MODERN}\r\n"
        )
        # One head per agent token; calls take them in turn (--agents).
        heads = [(base + f"Authorization: Bearer {token}\r\n").encode() for token in tokens or []] or [base.encode()]
        self.heads = itertools.cycle(heads)

    def raw(self, body: bytes, method: str = "tools/call", name: str | None = "echo") -> bytes:
        extra = f"Mcp-Method: {method}\r\n" + (f"Mcp-Name: {name}\r\n" if name else "")
        return next(self.heads) + extra.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body

    async def _send(self, raw: bytes):
        conn = None
        while self.idle:
            candidate = self.idle.pop()
            if not candidate.closed:
                conn = candidate
                break
        if conn is None:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(_Conn, "127.0.0.1", self.port)
        try:
            status, headers, body, keep = await conn.request(raw)
        except BaseException:
            if conn.transport is not None:
                conn.transport.abort()
            raise
        if keep and not conn.closed:
            self.idle.append(conn)
        else:
            conn.transport.close()
        return status, headers, body

    async def send(self, raw: bytes, timeout: float):
        return await asyncio.wait_for(self._send(raw), timeout)

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


def check_answer(status: int, headers: dict[str, str], body: bytes, msg_id: int) -> str | None:
    """None for a successful echo result, else a short error category."""
    if status != 200:
        return f"HTTP {status}"
    try:
        if "text/event-stream" in headers.get("content-type", ""):
            message = None
            for line in body.split(b"\n"):
                if line.startswith(b"data:"):
                    candidate = json.loads(line[5:])
                    if isinstance(candidate, dict) and candidate.get("id") == msg_id:
                        message = candidate
        else:
            message = json.loads(body)
    except ValueError:
        return "bad JSON"
    if not isinstance(message, dict) or message.get("id") != msg_id:
        return "wrong id"
    if "error" in message:
        return f"JSON-RPC {message['error'].get('code')}"
    result = message.get("result")
    if not isinstance(result, dict):
        return "no result"
    if result.get("isError"):
        text = ((result.get("content") or [{}])[0].get("text") or "")[:60]
        return f"isError: {text}"
    content = result.get("content") or [{}]
    if content[0].get("text") != EXPECTED_TEXT:
        return "wrong text"
    return None


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)  # ms, scheduled time -> answer (errors included)
    lags: list[float] = field(default_factory=list)  # ms, scheduled time -> request written
    errors: Counter = field(default_factory=Counter)
    sent: int = 0
    seconds: float = 0.0


async def open_loop(client: Client, rate: float, seconds: float, timeout: float, first_id: int) -> Window:
    window = Window()
    count = max(1, int(rate * seconds))
    tasks = []

    async def one(msg_id: int, due: float) -> None:
        window.lags.append((time.perf_counter() - due) * 1000)
        try:
            status, headers, body = await client.send(client.raw(call_body(msg_id)), timeout)
            error = check_answer(status, headers, body, msg_id)
        except TimeoutError:
            error = "timeout"
        except (OSError, ConnectionError) as exc:
            error = type(exc).__name__
        window.latencies.append((time.perf_counter() - due) * 1000)
        if error:
            window.errors[error] += 1

    start = time.perf_counter() + 0.01
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(first_id + i, due)))
    await asyncio.gather(*tasks)
    window.sent = count
    window.seconds = time.perf_counter() - start
    return window


async def one_call(client: Client, body: bytes, method: str, name: str | None, timeout: float = 30.0):
    return await client.send(client.raw(body, method, name), timeout)


# --- set-up --------------------------------------------------------------------------------------------


def configure_env(var_dir: str) -> dict[str, str]:
    os.environ.update(
        {
            "DATABASE_URL": DATABASE_URL,
            "REDIS_URL": REDIS_URL,
            "BEHAVRY_VAR_DIR": var_dir,
            "DJANGO_SETTINGS_MODULE": "behavry.settings",
            "BEHAVRY_LOG_LEVEL": "WARNING",
        }
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "bench"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ensure_database() -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        return "created" if not exists else "exists"


def register(upstream_url: str, agents: int = 1) -> list[str]:
    """Upstream server, agents, tokens and allow policy, via services. Returns a raw token per agent."""
    from agents.models import Agent
    from agents.services import agent_create, agent_token_issue
    from behavry.actors import SYSTEM
    from policies.models import Policy
    from policies.services import policy_create
    from proxy.models import UpstreamServer
    from proxy.services import upstream_server_create, upstream_server_update

    server = UpstreamServer.objects.filter(slug=SLUG).first()
    if server is None:
        upstream_server_create(slug=SLUG, name="Bench echo", url=upstream_url, by=SYSTEM, auth_header_value="")
    elif server.url != upstream_url or not server.enabled:
        upstream_server_update(server=server, by=SYSTEM, url=upstream_url, enabled=True)
    tokens = []
    for i in range(agents):
        name = AGENT_NAME if i == 0 else f"{AGENT_NAME}-{i}"
        agent = Agent.objects.filter(name=name).first() or agent_create(name=name, by=SYSTEM)
        _, raw = agent_token_issue(agent=agent, by=SYSTEM, label="bench/proxy_overhead.py")
        tokens.append(raw)
    if not Policy.objects.filter(name=POLICY_NAME).exists():
        policy_create(data={"name": POLICY_NAME, "effect": "allow", "tools": ["echo"]}, by=SYSTEM)
    return tokens


# --- one call through McpEndpoint in this process (no HTTP server) --------------------------------------


async def endpoint_call(endpoint, token: str, msg_id: int) -> tuple[int, bytes]:
    """One allowed tools/call (echo, 1 KB) driven straight into the ASGI endpoint: (status, body)."""
    body = call_body(msg_id)
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"mcp-protocol-version", MODERN.encode()),
        (b"mcp-method", b"tools/call"),
        (b"mcp-name", b"echo"),
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "method": "POST",
        "path": f"/mcp/{SLUG}",
        "headers": headers,
        "url_route": {"kwargs": {"slug": SLUG}},
    }
    sent: list[dict] = []
    delivered = False
    forever = asyncio.Event()

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await forever.wait()
        return {"type": "http.disconnect"}

    async def send(event):
        sent.append(event)

    await endpoint(scope, receive, send)
    status = next(e["status"] for e in sent if e["type"] == "http.response.start")
    return status, b"".join(e.get("body", b"") for e in sent if e["type"] == "http.response.body")


# --- SQL round trips per call (in-process, libpq trace) ------------------------------------------------


def count_queries(token: str, calls: int = 0) -> None:
    """Drive McpEndpoint in this process and list every PostgreSQL round trip of one allowed call.

    async_to_sync makes this thread the one that runs every database_sync_to_async step, so the Django
    connection seen here is the one the handlers use. libpq's protocol trace shows everything sent,
    including what Django's query log misses: BEGIN/COMMIT and the CONN_HEALTH_CHECKS `SELECT 1`.
    """
    from asgiref.sync import async_to_sync
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from psycopg import pq

    from policies.engine import engine_cache
    from proxy.endpoint import McpEndpoint
    from proxy.identity import clear_caches

    endpoint = McpEndpoint()

    async def call(msg_id: int) -> tuple[int, bytes]:
        return await endpoint_call(endpoint, token, msg_id)  # returns once the outcome event is committed

    def traced(msg_id: int) -> tuple[list[str], list[dict], str | None]:
        connection.ensure_connection()
        path = Path(tempfile.mkstemp(prefix="pqtrace-")[1])
        with open(path, "w") as trace_file, CaptureQueriesContext(connection) as captured:
            pgconn = connection.connection.pgconn
            pgconn.trace(trace_file.fileno())
            pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            try:
                status, body = async_to_sync(call)(msg_id)
            finally:
                with contextlib.suppress(Exception):
                    connection.connection.pgconn.untrace()
        trips, pending = [], ""
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            if parts[0] == "F" and parts[2] == "Query":
                trips.append(parts[3].strip().strip('"'))
            elif parts[0] == "F" and parts[2] == "Parse":
                pending = parts[3].strip().split('"')[3] if parts[3].count('"') >= 4 else parts[3]
            elif parts[0] == "F" and parts[2] == "Sync":
                trips.append(pending or "(extended query)")
                pending = ""
        path.unlink()
        error = check_answer(status, {"content-type": "application/json"}, body, msg_id)
        return trips, list(captured.captured_queries), error

    def show(title: str, trips: list[str], queries: list[dict], error: str | None) -> None:
        print(f"  {title}: {len(trips)} round trips to PostgreSQL, {len(queries)} in Django's query log")
        if error:
            print(f"    !! the call did not succeed: {error}")
        for i, sql in enumerate(trips, 1):
            text = " ".join(sql.split())
            print(f"    {i:>2}. {text[:150]}{'…' if len(text) > 150 else ''}")

    from behavry import dbthreads

    # On PostgreSQL the handlers' database steps run on a pool of threads, and the audit appends
    # on the event loop's own connections (behavry/pgpool.py), out of this trace's reach; here all
    # of them run on this thread's connection (the SQL is the same).
    parallel, dbthreads.PARALLEL_DB = dbthreads.PARALLEL_DB, False
    print("\nSQL per allowed tools/call (in-process McpEndpoint, libpq protocol trace)")
    async_to_sync(call)(1)  # era detection, catalog, caches
    async_to_sync(call)(2)
    trips, queries, error = traced(3)
    show("steady state (identity, upstream and policy caches warm)", trips, queries, error)
    clear_caches()
    engine_cache._checked_at = 0.0  # as after REFRESH_SECONDS: re-read the policy version
    trips2, queries2, error2 = traced(4)
    show("after the 1 s identity/upstream cache and the 0.5 s policy-version check expire", trips2, queries2, error2)
    print(
        f"  the extra {len(trips2) - len(trips)} round trips recur at most once a second (identity, upstream) and"
        " twice a second (policy version) per process: <0.05 per call at 100 calls/s"
    )
    dbthreads.PARALLEL_DB = parallel
    if calls:
        # Behavry's own code without any HTTP server: sequential calls, database steps on the pool
        # threads as in production; CPU of this whole process (client side of the upstream call
        # included), median of 3 runs. Less noisy than the server windows below.
        import uvloop

        async def run() -> list[tuple[float, float]]:
            for i in range(200):
                await call(10 + i)
            out = []
            for _ in range(3):
                c0, t0 = time.process_time(), time.perf_counter()
                for i in range(calls):
                    await call(1000 + i)
                out.append(((time.process_time() - c0) / calls * 1000, (time.perf_counter() - t0) / calls * 1000))
            return out

        runs = sorted(uvloop.run(run()))
        print(
            f"  in-process, no HTTP server, {calls} sequential calls x3: {runs[1][0]:.2f} ms CPU per call (median;"
            f" runs {', '.join(f'{c:.2f}' for c, _ in runs)}), {sorted(w for _, w in runs)[1]:.2f} ms wall per call"
        )
    from django.db import connections

    connections.close_all()


# --- py-spy profile summary ----------------------------------------------------------------------------

# Where a sample goes: the deepest frame of the call stack that names a stage of Behavry's pipeline.
STAGES = [
    ("audit write (audit_record)", ("(audit/",)),
    ("decision (classify + policy engine)", ("(proxy/decision.py", "(proxy/classify.py", "(policies/")),
    ("identity + upstream lookup (cached 1 s)", ("identity_for_token", "target_for_slug", "(agents/")),
    ("upstream call (proxy/upstream.py)", ("(proxy/upstream.py",)),
    ("hold / escalation checks", ("(proxy/hold.py", "(escalations/")),
    ("handlers: other (shape result, records)", ("(proxy/handlers.py",)),
    ("endpoint: parse, checks, reply", ("(proxy/endpoint.py", "(proxy/jsonrpc.py")),
    ("Channels router / Django ASGI", ("(channels/", "(django/core/handlers/")),
]
# What runs in the sample's own (leaf) frame: the library that burns the CPU.
LIBRARIES = [
    ("psycopg driver", ("/psycopg/", "psycopg/")),
    ("Django ORM (query build, models)", ("django/db/models/",)),
    ("Django DB backend/transactions", ("django/db/backends/", "django/db/transaction.py", "django/db/utils.py")),
    ("Django other", ("django/",)),
    ("asgiref sync<->async hops", ("asgiref/",)),
    ("thread pool / threading", ("concurrent/futures/", "threading.py", "queue.py")),
    ("httpx/httpcore/anyio/h11 (client)", ("httpx/", "httpcore/", "anyio/", "h11/")),
    ("aiohttp/yarl/multidict (client)", ("aiohttp/", "yarl/", "multidict/")),
    ("Behavry's upstream client (proxy/http1.py)", ("proxy/http1.py",)),
    ("uvicorn/httptools (server)", ("uvicorn/", "httptools")),
    ("daphne/twisted/autobahn (server)", ("daphne/", "twisted/", "autobahn/")),
    ("event loop (asyncio, uvloop native)", ("asyncio/",)),
    ("json", ("json/",)),
    ("hashing / hmac", ("hashlib", "hmac")),
    ("Behavry code itself", ("(proxy/", "(audit/", "(policies/", "(agents/", "(behavry/", "(escalations/")),
    ("logging", ("logging/",)),
]


def _classify(frame: str, table) -> str | None:
    for label, needles in table:
        if any(n in frame for n in needles):
            return label
    return None


def summarise_profile(raw: Path, cpu_ms: float, calls: int) -> None:
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    total = sum(c for _, c in stacks) or 1
    per_call = cpu_ms / calls if calls else float("nan")
    stage_lib: dict[str, Counter] = defaultdict(Counter)
    for frames, c in stacks:
        stage = None
        for frame in reversed(frames):
            stage = _classify(frame, STAGES)
            if stage:
                break
        if stage is None:
            thread_pool = any("concurrent/futures/thread.py" in f for f in frames)
            stage = "DB thread, outside Behavry code" if thread_pool else "server + event loop, outside Behavry code"
        stage_lib[stage][_classify(frames[-1], LIBRARIES) or f"other: {frames[-1][:60]}"] += c
    print(f"  {total} GIL-holding samples; process CPU {per_call:.2f} ms/call; shares below are of the samples")
    print(f"  {'stage (deepest pipeline frame on the stack)':<46} {'share':>6} {'~ms/call':>9}   top leaf libraries")
    ranked = sorted(stage_lib.items(), key=lambda kv: -sum(kv[1].values()))
    for stage, libs in ranked:
        n = sum(libs.values())
        top = ", ".join(f"{lib} {100 * k / n:.0f}%" for lib, k in libs.most_common(3))
        print(f"  {stage:<46} {100 * n / total:5.1f}% {per_call * n / total:9.2f}   {top}")
    by_lib: Counter = Counter()
    for libs in stage_lib.values():
        by_lib.update(libs)
    print(f"  {'leaf library, whole process':<46} {'share':>6} {'~ms/call':>9}")
    for lib, n in by_lib.most_common(12):
        print(f"  {lib[:46]:<46} {100 * n / total:5.1f}% {per_call * n / total:9.2f}")
    self_time: Counter = Counter()
    for frames, c in stacks:
        self_time[frames[-1]] += c
    print("  top 15 leaf frames:")
    for frame, c in self_time.most_common(15):
        print(f"    {100 * c / total:5.1f}%  {frame[:120]}")


def profile_target(target: Target, rate: float, seconds: float, timeout: float, runner, out_dir: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not os.path.exists(spy):
        print(f"\n(py-spy is not installed: `.venv/bin/pip install py-spy` to profile {target.name})")
        return
    raw = out_dir / f"profile-{target.name}.txt"
    svg = Path(tempfile.gettempdir()) / f"behavry-profile-{target.name}.svg"
    # --gil: only threads holding the GIL, i.e. Python CPU, not waits on PostgreSQL or the network.
    base = [spy, "record", "--pid", str(target.proc.pid), "--rate", "500", "--gil"]
    tokens = TOKENS if target.kind == "behavry" else None
    duration = int(seconds) + 2
    proc = subprocess.Popen(
        [*base, "--duration", str(duration), "--format", "raw", "-o", str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    before = {pid: _split_ticks(pid) for pid in descendants(target.proc.pid)}
    client = Client(target.port, target.path, tokens)
    window = runner.run(open_loop(client, rate, seconds, timeout, 50_000_000))
    after = {pid: _split_ticks(pid) for pid in descendants(target.proc.pid)}
    client.close()
    _, err = proc.communicate(timeout=duration + 60)
    utime = sum(a[0] - before.get(pid, (0, 0))[0] for pid, a in after.items())
    stime = sum(a[1] - before.get(pid, (0, 0))[1] for pid, a in after.items())
    ms = 1000 / CLK_TCK
    print(
        f"\nProfile of {target.name} at {rate:g} calls/s for {seconds:g} s (py-spy --gil, 500 Hz):"
        f" {sum(window.errors.values())} errors; user {utime * ms / window.sent:.2f} + system"
        f" {stime * ms / window.sent:.2f} ms CPU per call (with the sampler attached)"
    )
    if not raw.exists():
        print(f"  py-spy failed: {err.decode()[-500:]}")
        return
    summarise_profile(raw, (utime + stime) * ms, window.sent)
    with contextlib.suppress(Exception):  # a flame graph for humans, from a second, shorter recording
        proc = subprocess.Popen(
            [*base, "--duration", "5", "-o", str(svg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(1.0)
        client = Client(target.port, target.path, tokens)
        runner.run(open_loop(client, rate, 5, timeout, 60_000_000))
        client.close()
        proc.wait(60)
        print(f"  flame graph: {svg}   raw stacks: {raw}")


def _split_ticks(pid: int) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0, 0
    return int(fields[11]), int(fields[12])


# --- main ----------------------------------------------------------------------------------------------

TOKENS: list[str] = []


def fmt(value: float, width: int = 7, digits: int = 1) -> str:
    if value != value:  # nan
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def set_database(name: str) -> None:
    global DB_NAME, DATABASE_URL
    DB_NAME, DATABASE_URL = name, f"postgres://postgres@127.0.0.1:5432/{name}"


def main() -> None:
    global TOKENS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per rate and target (10)")
    parser.add_argument("--rates", default="50,100,200", help="arrival rates in calls/s (50,100,200)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds at each rate before each window")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every rate and target this many times; report medians (1)"
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="per-call timeout in seconds (15)")
    parser.add_argument("--targets", default="", help="comma list of target names (default: all available)")
    parser.add_argument("--profile", default="", help="after the table, py-spy one or more targets (comma list)")
    parser.add_argument("--profile-rate", type=float, default=50.0, help="calls/s while profiling (50)")
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        help="run Daphne and uvicorn without their per-request access log (default: their defaults, log on)",
    )
    parser.add_argument("--no-queries", action="store_true", help="skip the in-process SQL round-trip listing")
    parser.add_argument(
        "--in-process",
        type=int,
        default=1000,
        metavar="N",
        help="with the SQL listing: CPU per call of N sequential in-process calls, no server (1000; 0 skips)",
    )
    parser.add_argument("--database", default=DB_NAME, help=f"PostgreSQL database to use ({DB_NAME})")
    parser.add_argument(
        "--agents",
        type=int,
        default=1,
        help="calls rotate over this many agents (1): each agent's audit events form one serialised chain",
    )
    opts = parser.parse_args()
    set_database(opts.database)
    rates = [float(r) for r in opts.rates.split(",") if r.strip()]

    catalog = target_catalog()
    wanted = [t.strip() for t in opts.targets.split(",") if t.strip()]
    unknown = set(wanted) - {t.name for t in catalog}
    if unknown:
        parser.error(f"unknown or unavailable target(s): {', '.join(sorted(unknown))}")
    targets = [t for t in catalog if not wanted or t.name in wanted or t.name == "direct"]

    var_dir = tempfile.mkdtemp(prefix="behavry-bench-proxy-")
    env = configure_env(var_dir)
    logs = Path(var_dir) / "logs"
    logs.mkdir()
    upstream: subprocess.Popen | None = None
    spawned: list[subprocess.Popen] = []
    pg: PgBackends | None = None
    runner = None

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # an overloaded target can hold thousands of calls
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"database {DB_NAME}: {ensure_database()}; migrating…")
        subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        import django

        sys.path.insert(0, str(ROOT))
        django.setup()
        from _benchlib import pg_settings

        up_port = free_port()
        up_log = logs / "upstream.log"
        upstream = start_process([PY, "-m", "demo.upstream", "--port", str(up_port)], env, up_log)
        wait_port(upstream, up_port, up_log)
        upstream_url = f"http://127.0.0.1:{up_port}/mcp"
        TOKENS = register(upstream_url, opts.agents)

        print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, clock ticks {CLK_TCK}/s; {pg_settings()}")
        versions = []
        for pkg in (
            "django",
            "channels",
            "daphne",
            "twisted",
            "uvicorn",
            "uvloop",
            "httptools",
            "httpx",
            "httpx2",
            "aiohttp",
        ):
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                versions.append(f"{pkg} {version(pkg)}")
        print("packages: " + ", ".join(versions))
        missing = [name for name, ok in HAVE.items() if not ok]
        if missing:
            print(f"not installed, targets skipped: {', '.join(missing)} (pip install them into .venv to add them)")
        print(f"upstream (demo, official MCP SDK): {upstream_url}")

        if not opts.no_queries:
            count_queries(TOKENS[0], opts.in_process)
        from django.db import connections

        connections.close_all()

        for target in targets:
            if target.kind == "direct":
                target.port, target.path, target.proc = up_port, "/mcp", upstream
                continue
            target.port = free_port()
            target.log = logs / f"{target.name}.log"
            if target.kind == "forwarder":
                target.path = "/mcp"
                tenv = {**env, "FORWARD_URL": upstream_url}
                tenv["FORWARD_CLIENT"] = (
                    target.name.rpartition("-")[2] if target.name.endswith(("aiohttp", "httpx2", "http1")) else "httpx"
                )
                target.proc = start_process(
                    server_command(target, "_forwarder:app", not opts.no_access_log), tenv, target.log
                )
            else:
                target.path = f"/mcp/{SLUG}"
                target.proc = start_process(
                    server_command(target, "behavry.asgi:application", not opts.no_access_log), env, target.log
                )
            spawned.append(target.proc)
        for target in targets:
            wait_port(target.proc, target.port, target.log or up_log)

        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            client_loop = "uvloop"
        except ImportError:
            runner = asyncio.Runner()
            client_loop = "asyncio"

        # First contact: Behavry lists tools once (fills its catalog, detects the upstream's era), then
        # every target gets a short warm-up.
        for target in targets:
            client = Client(target.port, target.path, TOKENS if target.kind == "behavry" else None)
            if target.kind == "behavry":
                body = json.dumps(
                    {"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": {"_meta": _META}}
                ).encode()
                status, _, answer = runner.run(one_call(client, body, "tools/list", None))
                if status != 200 or b'"echo"' not in answer:
                    print(f"!! {target.name}: tools/list answered {status}: {answer[:300]!r}")
            status, headers, answer = runner.run(one_call(client, call_body(1), "tools/call", "echo"))
            problem = check_answer(status, headers, answer, 1)
            if problem:
                print(f"!! {target.name}: first call failed ({problem}): {answer[:300]!r}")
            runner.run(open_loop(client, 50, 2.0, opts.timeout, 100))
            client.close()

        pg = PgBackends()
        print(
            f"\nload: open loop, {opts.seconds:g} s per window after {opts.warmup:g} s warm-up, rates {opts.rates}/s;"
            f" client: raw asyncio HTTP/1.1 ({client_loop}) in this process; server access logs"
            f" {'off' if opts.no_access_log else 'on (server defaults), written to a file'}"
        )
        print(
            f"NOTE: the load generator, the upstream, PostgreSQL and the target all share these {os.cpu_count()}"
            " cores; 'other' is CPU used by processes outside the bench during the window."
        )
        rounds: list[dict[tuple[float, str], dict]] = []
        next_id = 1_000
        for _ in range(max(1, opts.rounds)):
            results: dict[tuple[float, str], dict] = {}
            rounds.append(results)
            for rate in rates:
                for target in targets:
                    client = Client(target.port, target.path, TOKENS if target.kind == "behavry" else None)
                    if opts.warmup > 0:
                        runner.run(open_loop(client, rate, opts.warmup, opts.timeout, next_id))
                        next_id += int(rate * opts.warmup) + 1
                    server_root = target.proc.pid
                    s0, u0, d0 = tree_ticks(server_root), tree_ticks(upstream.pid), pg.ticks()
                    g0, m0 = self_cpu_seconds(), machine_ticks()
                    window = runner.run(open_loop(client, rate, opts.seconds, opts.timeout, next_id))
                    s1, u1, d1 = tree_ticks(server_root), tree_ticks(upstream.pid), pg.ticks()
                    g1, m1 = self_cpu_seconds(), machine_ticks()
                    next_id += window.sent + 1
                    client.close()
                    server = delta_ticks(s0, s1)
                    up = 0 if target.kind == "direct" else delta_ticks(u0, u1)
                    db = delta_ticks(d0, d1)
                    gen = (g1 - g0) * CLK_TCK
                    busy, total = m1[0] - m0[0], m1[1] - m0[1]
                    ncpu = os.cpu_count() or 1
                    ms = 1000 / CLK_TCK / window.sent
                    results[(rate, target.name)] = {
                        "w": window,
                        "srv": server * ms,
                        "up": up * ms,
                        "db": db * ms,
                        "gen": gen * ms,
                        "other": max(0.0, busy - server - up - db - gen) / (total / ncpu) if total else float("nan"),
                        "p50": percentile(window.latencies, 50),
                        "p95": percentile(window.latencies, 95),
                        "p99": percentile(window.latencies, 99),
                        "lag99": percentile(window.lags, 99),
                    }
                    settle(target.proc.pid)
        report(targets, rates, rounds[0] if len(rounds) == 1 else combine_rounds(rounds))
        if len(rounds) > 1:
            report_rounds(targets, rates, rounds)
        for name in [p.strip() for p in opts.profile.split(",") if p.strip()]:
            chosen = next((t for t in targets if t.name == name), None)
            if chosen is None:
                print(f"\n(no target {name!r} in this run to profile)")
                continue
            profile_target(chosen, opts.profile_rate, opts.profile_seconds, opts.timeout, runner, Path(var_dir))
    finally:
        if runner is not None:
            runner.close()
        if pg is not None:
            pg.close()
        for proc in [*spawned, upstream]:
            stop_process(proc)
        if not opts.profile:
            shutil.rmtree(var_dir, ignore_errors=True)
        else:
            print(f"(logs and raw profiles kept in {var_dir})")


def settle(pid: int, seconds: float = 30.0) -> None:
    """Wait until the target has finished any backlog (its CPU goes quiet) before the next window."""
    deadline = time.monotonic() + seconds
    last = sum(tree_ticks(pid).values())
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = sum(tree_ticks(pid).values())
        if now - last <= 1:
            return
        last = now


def combine_rounds(rounds: list[dict[tuple[float, str], dict]]) -> dict[tuple[float, str], dict]:
    """One result per (rate, target): medians over the rounds. A target's percentiles are set so that
    subtracting the direct call's median gives the median of each round's own difference (direct
    and target measured minutes apart would not pair)."""
    combined: dict[tuple[float, str], dict] = {}
    for key in rounds[0]:
        runs = [r[key] for r in rounds if key in r]
        window = Window(sent=sum(run["w"].sent for run in runs))
        for run in runs:
            window.errors.update(run["w"].errors)
        combined[key] = {"w": window} | {
            metric: statistics.median(run[metric] for run in runs)
            for metric in ("srv", "up", "db", "gen", "other", "p50", "p95", "p99", "lag99")
        }
    for (rate, name), result in combined.items():
        direct = combined.get((rate, "direct"))
        if direct is None or name == "direct":
            continue
        for metric in ("p50", "p95", "p99"):
            paired = [r[(rate, name)][metric] - r[(rate, "direct")][metric] for r in rounds if (rate, name) in r]
            result[metric] = direct[metric] + statistics.median(paired)
    return combined


def report_rounds(targets: list[Target], rates: list[float], rounds: list[dict[tuple[float, str], dict]]) -> None:
    print(f"\nEvery round, Behavry against its floor ({len(rounds)} rounds; the tables above show the medians)")
    print(f"{'rate':>5} {'behavry':<16}  CPU ms/call (floor)   +p50 ms (floor)   +p99 ms (floor)")
    for rate in rates:
        for target in targets:
            if target.kind != "behavry":
                continue
            for i, results in enumerate(rounds, 1):
                b, f, d = (results.get((rate, name)) for name in (target.name, target.floor, "direct"))
                if b is None or d is None:
                    continue
                floor = f or {"srv": float("nan"), "p50": float("nan"), "p99": float("nan")}
                print(
                    f"{rate:>5g} {target.name:<16} #{i}: {b['srv']:5.2f} ({floor['srv']:4.2f})"
                    f"   {b['p50'] - d['p50']:6.2f} ({floor['p50'] - d['p50']:5.2f})"
                    f"   {b['p99'] - d['p99']:7.2f} ({floor['p99'] - d['p99']:6.2f})"
                )


def report(targets: list[Target], rates: list[float], results: dict) -> None:
    print(
        "\nLatency in ms from scheduled send to full answer (nearest-rank percentiles; errors included at the time"
        " they failed).\n+p50/+p95/+p99 = the target's percentile minus the direct call's at the same rate."
        "\nCPU in ms per call: srv = the target server process (with children), up = the demo upstream,"
        " db = PostgreSQL backends,\ngen = load generator; other = cores busy outside the bench; lag99 = p99 of how"
        " late the generator sent."
    )
    header = (
        f"{'rate':>5} {'target':<19} {'stack':<34} {'calls':>6} {'err':>5} {'p50':>7} {'p95':>7} {'p99':>7}"
        f" {'+p50':>7} {'+p95':>7} {'+p99':>7} {'srv':>6} {'up':>6} {'db':>6} {'gen':>6} {'other':>6} {'lag99':>6}"
    )
    errors_seen: list[str] = []
    for rate in rates:
        print()
        print(header)
        direct = results.get((rate, "direct"))
        for target in targets:
            r = results.get((rate, target.name))
            if r is None:
                continue
            w = r["w"]
            nerr = sum(w.errors.values())
            if nerr:
                errors_seen.append(f"{rate:g}/s {target.name}: {dict(w.errors)}")
            added = [
                r[k] - direct[k] if direct and target.kind != "direct" else float("nan") for k in ("p50", "p95", "p99")
            ]
            print(
                f"{rate:>5g} {target.name:<19} {target.stack:<34} {w.sent:>6} {nerr:>5}"
                f" {fmt(r['p50'], 7, 2)} {fmt(r['p95'], 7, 2)} {fmt(r['p99'], 7, 2)}"
                f" {fmt(added[0], 7, 2)} {fmt(added[1], 7, 2)} {fmt(added[2], 7, 2)}"
                f" {fmt(r['srv'], 6, 2)} {fmt(r['up'], 6, 2)} {fmt(r['db'], 6, 2)} {fmt(r['gen'], 6, 2)}"
                f" {fmt(r['other'], 6, 2)} {fmt(r['lag99'], 6, 1)}"
            )
    if errors_seen:
        print("\nerrors: " + "; ".join(errors_seen))
    else:
        print("\nerrors: none (every answer was a successful echo result)")

    print("\nBehavry against the zero-logic forwarder on the same server stack (same run, same rate)")
    print(
        f"{'rate':>5} {'behavry':<16} {'floor':<12} {'CPU ms/call':>12} {'floor':>7} {'ratio':>6} {'minus floor':>12}"
        f" {'+p50':>7} {'floor':>7} {'+p99':>7} {'floor':>7}   goals (<=2 ms CPU; at 100/s +p50<=3, +p99<=10)"
    )
    for rate in rates:
        direct = results.get((rate, "direct"))
        for target in targets:
            if target.kind != "behavry":
                continue
            b, f = results.get((rate, target.name)), results.get((rate, target.floor))
            if b is None or direct is None:
                continue
            fcpu = f["srv"] if f else float("nan")
            fp50 = f["p50"] - direct["p50"] if f else float("nan")
            fp99 = f["p99"] - direct["p99"] if f else float("nan")
            bp50, bp99 = b["p50"] - direct["p50"], b["p99"] - direct["p99"]
            goals = [f"CPU {'met' if b['srv'] <= 2 else 'missed'}"]
            if rate == 100:
                goals.append(f"+p50 {'met' if bp50 <= 3 else 'missed'}")
                goals.append(f"+p99 {'met' if bp99 <= 10 else 'missed'}")
            print(
                f"{rate:>5g} {target.name:<16} {target.floor or '-':<12} {fmt(b['srv'], 12, 2)} {fmt(fcpu, 7, 2)}"
                f" {fmt(b['srv'] / fcpu if fcpu else float('nan'), 5, 1)}x {fmt(b['srv'] - fcpu, 12, 2)}"
                f" {fmt(bp50, 7, 2)} {fmt(fp50, 7, 2)} {fmt(bp99, 7, 2)} {fmt(fp99, 7, 2)}   {', '.join(goals)}"
            )


if __name__ == "__main__":
    main()
