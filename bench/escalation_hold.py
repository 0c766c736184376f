"""Holding escalated calls: memory, database connections, allowed-call latency, bulk deny and bulk approve.

Run:  .venv/bin/python bench/escalation_hold.py [--calls 1000] [--agents 100] [--api-on-holder]

Set-up (all inside this script):
- PostgreSQL database `behavry_bench_hold` on 127.0.0.1:5432 (user postgres; created if missing),
  REDIS_URL=redis://127.0.0.1:6379/4 (flushed at start: it belongs to this bench), BEHAVRY_VAR_DIR a temp
  dir, BEHAVRY_MAX_HELD_REQUESTS well above --calls, `migrate`. Pending escalations left by an earlier,
  interrupted run are marked cancelled so the pending count is this run's.
- The demo upstream (`python -m demo.upstream`, the official MCP SDK server) on a free port, registered as
  upstream `demo`; --agents agents `bench-hold-<i>` with max_hold_seconds=3600 and a fresh token each;
  policies "hold writes" (escalate write_file) and "allow echo"; an admin API key.
- Daphne A (`python -m daphne behavry.asgi:application`) holds the calls. The REST calls (pending count,
  bulk decisions) go to a second Daphne B on the same database and Redis, as an approver's console would;
  --api-on-holder sends them to A instead.

Phases:
  0. warm-up: tools/list, echo calls, a few held calls denied and one approved (code paths, connections).
  1. baseline of A: VmRSS, PostgreSQL connections, idle CPU, allowed-call (echo) latency, open loop.
  2. hold --calls calls: raw 2026-07-28 POSTs sent at --open-rate (one per call, streamed with httpx, each
     with its own path /hold/<run>/<phase>/<n> so no two attach to one escalation; the streams stay open),
     until the API counts them all pending. Then the same numbers as in 1, with all of them held, and when
     each held call's response head arrived.
  3. one POST /api/v1/escalations/bulk/ denying them all: the API call's duration and when every held
     client had its final answer; every answer is checked; terminal audit events are counted.
  4. hold --calls again, bulk approve: when every client had its upstream result (all forwarded).
  5. comparison: the same number of write_file calls sent straight to the upstream, and of allowed echo
     calls through A, both with --concurrency calls in flight (what "upstream throughput" allows).

Everything shares the machine's cores: this load generator (one asyncio loop, also reading every held
stream), both Daphnes, the upstream, PostgreSQL and Redis. Prints numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _benchlib import ROOT, percentile

DB_NAME = "behavry_bench_hold"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
REDIS_URL = "redis://127.0.0.1:6379/4"
SLUG = "demo"
AGENT_PREFIX = "bench-hold-"
MAX_HOLD_SECONDS = 3600
MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PY = sys.executable


# --- processes ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        # Own session, so cleanup signals exactly this process group and nothing else.
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_http(proc: subprocess.Popen, url: str, log: Path, seconds: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not answering after {seconds:.0f} s: {log.read_text()[-2000:]}")


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


# --- /proc, PostgreSQL and Redis probes --------------------------------------------------------------


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def local_tcp_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets process `pid` has open (to attribute PostgreSQL backends)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) > 9 and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


class Pg:
    """A watcher connection to the bench database (autocommit), excluded from its own counts."""

    def __init__(self):
        import psycopg

        self.conn = psycopg.connect(PG_URL, autocommit=True)

    def connections(self, procs: dict[str, int]) -> dict[str, int]:
        """Backends of the bench database by owning process; 'total' is the brief's count(*), watcher included."""
        rows = self.conn.execute(
            "SELECT client_port, pid = pg_backend_pid() FROM pg_stat_activity WHERE datname = %s", (DB_NAME,)
        ).fetchall()
        owners = {name: local_tcp_ports(pid) for name, pid in procs.items()}
        out = Counter(dict.fromkeys(procs, 0))
        out["total"] = len(rows)
        for port, mine in rows:
            if mine:
                out["watcher"] += 1
                continue
            name = next((n for n, ports in owners.items() if port in ports), "other")
            out[name] += 1
        return dict(out)

    def transactions(self) -> int:
        row = self.conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (DB_NAME,)
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        self.conn.close()


class RedisStats:
    def __init__(self):
        import redis

        self.r = redis.Redis.from_url(REDIS_URL)

    def snapshot(self) -> dict[str, int]:
        stats, clients = self.r.info("stats"), self.r.info("clients")
        return {
            "commands": int(stats["total_commands_processed"]),
            "connections": int(stats["total_connections_received"]),
            "clients": int(clients["connected_clients"]),
        }


# --- set-up ------------------------------------------------------------------------------------------


def configure_env(var_dir: str, calls: int) -> dict[str, str]:
    os.environ.update(
        {
            "DATABASE_URL": DATABASE_URL,
            "REDIS_URL": REDIS_URL,
            "BEHAVRY_VAR_DIR": var_dir,
            "DJANGO_SETTINGS_MODULE": "behavry.settings",
            "BEHAVRY_LOG_LEVEL": "WARNING",
            "BEHAVRY_MAX_HELD_REQUESTS": str(max(5000, 2 * calls + 100)),
        }
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ensure_database() -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        return "created" if not exists else "exists"


def register(upstream_url: str, agents: int) -> tuple[list[str], str]:
    """Upstream, agents with fresh tokens, policies, admin key. Returns (agent tokens, admin key)."""
    from django.utils import timezone

    from accounts.services import api_key_create
    from agents.models import Agent
    from agents.services import agent_create, agent_token_issue, agent_update
    from behavry.actors import SYSTEM
    from escalations.models import Escalation, EscalationStatus
    from policies.models import Policy
    from policies.services import policy_create
    from proxy.models import UpstreamServer
    from proxy.services import upstream_server_create, upstream_server_update

    stale = Escalation.objects.filter(status=EscalationStatus.PENDING).update(
        status=EscalationStatus.CANCELLED, decided_at=timezone.now(), note="left by an earlier bench run"
    )
    if stale:
        print(f"marked {stale} pending escalations of an earlier run cancelled")
    server = UpstreamServer.objects.filter(slug=SLUG).first()
    if server is None:
        upstream_server_create(slug=SLUG, name="Demo", url=upstream_url, by=SYSTEM, auth_header_value="")
    elif server.url != upstream_url or not server.enabled:
        upstream_server_update(server=server, by=SYSTEM, url=upstream_url, enabled=True)
    existing = {a.name: a for a in Agent.objects.filter(name__startswith=AGENT_PREFIX)}
    tokens = []
    for i in range(agents):
        name = f"{AGENT_PREFIX}{i}"
        agent = existing.get(name)
        if agent is None:
            agent = agent_create(name=name, by=SYSTEM, max_hold_seconds=MAX_HOLD_SECONDS)
        elif agent.max_hold_seconds != MAX_HOLD_SECONDS:
            agent = agent_update(agent=agent, by=SYSTEM, max_hold_seconds=MAX_HOLD_SECONDS)
        if agent.status != "active":
            print(f"!! agent {name} is {agent.status}")
        tokens.append(agent_token_issue(agent=agent, by=SYSTEM, label="bench/escalation_hold.py")[1])
    for data in (
        {"name": "hold writes", "effect": "escalate", "tools": ["write_file"]},
        {"name": "allow echo", "effect": "allow", "tools": ["echo"]},
    ):
        if not Policy.objects.filter(name=data["name"]).exists():
            policy_create(data=data, by=SYSTEM)
    _, admin_key = api_key_create(name=f"bench-hold-{uuid.uuid4().hex[:8]}", role="admin", by=SYSTEM)
    return tokens, admin_key


# --- MCP calls ---------------------------------------------------------------------------------------


def mcp_headers(token: str | None, method: str, name: str | None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
    }
    if name:
        headers["Mcp-Name"] = name
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def call_body(msg_id: int, tool: str, arguments: dict) -> bytes:
    message = {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": META},
    }
    return json.dumps(message, separators=(",", ":")).encode()


def final_message(content_type: str, body: bytes, msg_id: int) -> dict | None:
    """The JSON-RPC response to msg_id in a JSON or SSE body."""
    if "text/event-stream" in content_type:
        found = None
        for line in body.split(b"\n"):
            if line.startswith(b"data:"):
                candidate = json.loads(line[5:])
                if isinstance(candidate, dict) and candidate.get("id") == msg_id:
                    found = candidate
        return found
    message = json.loads(body)
    return message if isinstance(message, dict) else None


def describe(message: dict | None) -> str:
    if message is None:
        return "no answer"
    if "error" in message:
        return f"JSON-RPC error {message['error'].get('code')}"
    result = message.get("result") or {}
    behavry = (result.get("structuredContent") or {}).get("behavry") or {}
    if result.get("isError"):
        return f"isError {behavry.get('policy_id') or ((result.get('content') or [{}])[0].get('text') or '')[:50]}"
    return "ok"


@dataclass
class Held:
    n: int
    msg_id: int
    path: str
    status: int | None = None
    sent_at: float | None = None
    headers_at: float | None = None
    answered_at: float | None = None
    message: dict | None = None
    error: str | None = None
    keepalives: int = 0


async def hold_one(client, url: str, token: str, held: Held, due: float) -> None:
    """One held call, sent at `due`: POST, read the SSE stream to its final JSON-RPC response (comments ignored).

    The response head is not a sign that the call is held: Daphne sends it with the first body bytes, which for
    a held call is the first keepalive, 10 s later. So calls are paced rather than gated on their heads.
    """
    body = call_body(held.msg_id, "write_file", {"path": held.path, "content": "x"})
    headers = mcp_headers(token, "tools/call", "write_file")
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    held.sent_at = time.perf_counter()
    try:
        async with client.stream("POST", url, content=body, headers=headers) as response:
            held.status = response.status_code
            held.headers_at = time.perf_counter()
            ctype = response.headers.get("content-type", "")
            if "text/event-stream" not in ctype:
                held.message = final_message(ctype, await response.aread(), held.msg_id)
                held.answered_at = time.perf_counter()
                return
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    held.keepalives += 1
                elif line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("id") == held.msg_id and ("result" in message or "error" in message):
                        held.message = message
                        held.answered_at = time.perf_counter()
    except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
        held.error = f"{type(exc).__name__}: {exc}"[:200]
        if held.answered_at is None:
            held.answered_at = time.perf_counter()


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    cpu_ms: float = 0.0
    seconds: float = 0.0


async def open_loop(client, url: str, token: str, rate: float, seconds: float, first_id: int, pid: int) -> Window:
    """Allowed echo calls sent at fixed times; latency from the scheduled time to the full answer."""
    window = Window()
    count = max(1, int(rate * seconds))
    headers = mcp_headers(token, "tools/call", "echo")

    async def one(msg_id: int, due: float) -> None:
        error = None
        try:
            body = call_body(msg_id, "echo", {"message": f"probe {msg_id}"})
            response = await client.post(url, content=body, headers=headers, timeout=30.0)
            message = final_message(response.headers.get("content-type", ""), response.content, msg_id)
            if response.status_code != 200 or describe(message) != "ok":
                error = f"HTTP {response.status_code} {describe(message)}"
        except Exception as exc:  # noqa: BLE001
            error = type(exc).__name__
        window.latencies.append((time.perf_counter() - due) * 1000)
        if error:
            window.errors[error] += 1

    tasks = []
    t0 = cpu_ticks(pid)
    start = time.perf_counter() + 0.01
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(first_id + i, due)))
    await asyncio.gather(*tasks)
    window.seconds = time.perf_counter() - start
    window.cpu_ms = (cpu_ticks(pid) - t0) * 1000 / CLK_TCK
    return window


async def closed_loop(client, url: str, token: str | None, tool: str, count: int, concurrency: int, first_id: int):
    """`count` calls with `concurrency` in flight; returns (seconds, Counter of outcomes)."""
    outcomes: Counter = Counter()
    queue = iter(range(count))
    headers = mcp_headers(token, "tools/call", tool)

    async def worker() -> None:
        for i in queue:
            msg_id = first_id + i
            args = {"message": f"m{i}"} if tool == "echo" else {"path": f"/direct/{msg_id}", "content": "x"}
            try:
                response = await client.post(url, content=call_body(msg_id, tool, args), headers=headers, timeout=60.0)
                message = final_message(response.headers.get("content-type", ""), response.content, msg_id)
                outcomes[describe(message) if response.status_code == 200 else f"HTTP {response.status_code}"] += 1
            except Exception as exc:  # noqa: BLE001
                outcomes[type(exc).__name__] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, outcomes


# --- the bench ---------------------------------------------------------------------------------------


@dataclass
class Env:
    holder_url: str
    api_url: str
    upstream_url: str
    holder_pid: int
    procs: dict[str, int]
    tokens: list[str]
    admin_key: str
    run: str
    pg: Pg
    redis: RedisStats
    timeout: float


def bulk_results(body: dict) -> dict:
    """The bulk API's per-id results, counted by their `result` value."""
    return dict(Counter(r.get("result") for r in body.get("results") or []))


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return user + nice + system + irq + softirq + steal, sum(values)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def summary_s(values: list[float]) -> str:
    if not values:
        return "-"
    return f"min {min(values):.2f}  p50 {percentile(values, 50):.2f}  max {max(values):.2f} s"


def fmt_conns(c: dict[str, int]) -> str:
    parts = [f"{k} {v}" for k, v in c.items() if k != "total"]
    return f"{c['total']} (" + ", ".join(parts) + ")"


def summary_ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"p50 {percentile(values, 50):.1f}  p99 {percentile(values, 99):.1f}  max {max(values):.1f} ms"


class Bench:
    def __init__(self, env: Env, opts):
        import httpx

        self.e = env
        self.opts = opts
        limit = max(1100, opts.calls + 100)
        self.held_client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            timeout=httpx.Timeout(None, connect=60.0),
        )
        self.probe_client = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=200))
        self.api = httpx.AsyncClient(
            base_url=env.api_url, headers={"Authorization": f"Bearer {env.admin_key}"}, timeout=600.0
        )
        self.mcp_url = f"{env.holder_url}/mcp/{SLUG}"
        self.next_id = 1_000_000
        self.results: dict[str, object] = {}

    async def close(self) -> None:
        for client in (self.held_client, self.probe_client, self.api):
            with contextlib.suppress(Exception):
                await client.aclose()

    def ids(self, n: int) -> int:
        first = self.next_id
        self.next_id += n + 1
        return first

    async def pending_count(self) -> int:
        response = await self.api.get("/api/v1/escalations/", params={"status": "pending", "limit": 1})
        response.raise_for_status()
        return response.json()["count"]

    async def hold(self, phase: str, count: int) -> tuple[list[Held], list[asyncio.Task], float]:
        """Start `count` held calls; return once the API counts them all pending."""
        first = self.ids(count)
        held = [Held(n, first + n, f"/hold/{self.e.run}/{phase}/{n}") for n in range(count)]
        tokens = self.e.tokens
        started = time.perf_counter()
        rate = self.opts.open_rate
        tasks = [
            asyncio.ensure_future(
                hold_one(self.held_client, self.mcp_url, tokens[h.n % len(tokens)], h, started + h.n / rate)
            )
            for h in held
        ]
        deadline = time.monotonic() + self.e.timeout
        pending = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            early = [h for h in held if h.answered_at is not None]
            if early:
                kinds = Counter(h.error or describe(h.message) for h in early)
                raise RuntimeError(f"{len(early)} held calls ended before any decision: {dict(kinds)}")
            if all(h.sent_at is not None for h in held):
                pending = await self.pending_count()
                if pending >= count:
                    break
        else:
            raise RuntimeError(f"only {pending} of {count} escalations pending after {self.e.timeout:.0f} s")
        return held, tasks, time.perf_counter() - started

    async def pending_ids(self, held: list[Held]) -> list[int]:
        from asgiref.sync import sync_to_async

        def query() -> list[int]:
            from django.db import connections

            from escalations.models import Escalation

            by_path = dict(Escalation.objects.filter(status="pending", tool="write_file").values_list("resource", "pk"))
            connections.close_all()
            return [by_path[h.path] for h in held if h.path in by_path]  # in the order of `held`

        return await sync_to_async(query, thread_sensitive=False)()

    async def audit_counts(self, escalation_ids: list[int], action: str) -> tuple[int, int, int, int]:
        """Audit events for these escalations: (terminal admin events, outcome events of the held requests,
        outcome events of the forwarded calls (policy escalation.<id>), escalations marked forwarded)."""
        from asgiref.sync import sync_to_async

        def query() -> tuple[int, int, int, int]:
            from django.db import connections

            from audit.models import AuditEvent
            from escalations.models import Escalation

            targets = [f"escalation:{i}" for i in escalation_ids]
            terminal = AuditEvent.objects.filter(action=action, resource__in=targets).count()
            rows = Escalation.objects.filter(pk__in=escalation_ids)
            request_ids = list(rows.values_list("request_id", flat=True))
            outcomes = AuditEvent.objects.filter(kind="outcome", request_id__in=request_ids).count()
            policies = [f"escalation.{i}" for i in escalation_ids]
            forwarded_outcomes = AuditEvent.objects.filter(kind="outcome", policy_id__in=policies).count()
            forwarded = rows.filter(forwarded_at__isnull=False).count()
            connections.close_all()
            return terminal, outcomes, forwarded_outcomes, forwarded

        return await sync_to_async(query, thread_sensitive=False)()

    async def bulk(self, ids: list[int], decision: str) -> tuple[float, float, dict]:
        t0 = time.perf_counter()
        response = await self.api.post(
            "/api/v1/escalations/bulk/", json={"ids": ids, "decision": decision, "note": "bench"}
        )
        t1 = time.perf_counter()
        body = (
            response.json() if response.status_code == 200 else {"status": response.status_code, "text": response.text}
        )
        return t0, t1, body

    def snapshot(self) -> dict:
        e = self.e
        return {
            "rss": rss_kb(e.holder_pid),
            "fds": fd_count(e.holder_pid),
            "conns": e.pg.connections(e.procs),
            "t": time.perf_counter(),
            "cpu": cpu_ticks(e.holder_pid),
            "xact": e.pg.transactions(),
            "redis": e.redis.snapshot(),
        }

    async def idle_rates(self, seconds: float) -> dict[str, float]:
        """CPU of A, database transactions/s and Redis commands and new connections/s while nothing is sent."""
        a = self.snapshot()
        await asyncio.sleep(seconds)
        b = self.snapshot()
        dt = b["t"] - a["t"]
        return {
            "cpu_pct": (b["cpu"] - a["cpu"]) * 100 / CLK_TCK / dt,
            "xact_s": (b["xact"] - a["xact"]) / dt,
            "redis_cmd_s": (b["redis"]["commands"] - a["redis"]["commands"]) / dt,
            "redis_conn_s": (b["redis"]["connections"] - a["redis"]["connections"]) / dt,
            "redis_clients": b["redis"]["clients"],
        }

    async def latency_window(self, label: str) -> Window:
        o = self.opts
        if o.probe_warmup > 0:
            await open_loop(
                self.probe_client, self.mcp_url, self.e.tokens[0], o.rate, o.probe_warmup, self.ids(1000), 0
            )
        samples: list[dict[str, int]] = []

        async def sample_conns() -> None:
            while True:
                samples.append(self.e.pg.connections(self.e.procs))
                await asyncio.sleep(0.5)

        sampler = asyncio.ensure_future(sample_conns())
        m0 = machine_busy()
        try:
            window = await open_loop(
                self.probe_client,
                self.mcp_url,
                self.e.tokens[0],
                o.rate,
                o.seconds,
                self.ids(int(o.rate * o.seconds) + 1),
                self.e.holder_pid,
            )
        finally:
            sampler.cancel()
        m1 = machine_busy()
        busy = 100 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
        holder_conns = [s.get("holder", 0) for s in samples] or [0]
        print(
            f"  allowed echo, {label}: {len(window.latencies)} calls at {o.rate:g}/s over {window.seconds:.1f} s:"
            f" {summary_ms(window.latencies)}; errors {sum(window.errors.values())}"
            f"{' ' + str(dict(window.errors)) if window.errors else ''};"
            f" A's CPU {window.cpu_ms / max(1, len(window.latencies)):.1f} ms/call (incl. its background work);"
            f" A's PostgreSQL connections during the window min {min(holder_conns)} max {max(holder_conns)};"
            f" machine CPU busy {busy:.0f}% (all processes), load average {loadavg()}"
        )
        return window

    async def warm_up(self) -> None:
        url = self.mcp_url
        response = await self.probe_client.post(
            url,
            content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}).encode(),
            headers=mcp_headers(self.e.tokens[0], "tools/list", None),
            timeout=30,
        )
        if response.status_code != 200 or b"write_file" not in response.content:
            raise RuntimeError(f"tools/list through Behavry answered {response.status_code}: {response.text[:300]}")
        _, outcomes = await closed_loop(self.probe_client, url, self.e.tokens[0], "echo", 40, 4, self.ids(40))
        if outcomes.get("ok") != 40:
            raise RuntimeError(f"warm-up echo calls failed: {dict(outcomes)}")
        # Every agent token once (identity lookups), then a few held calls: denied in bulk, one approved.
        for i, token in enumerate(self.e.tokens[: self.opts.agents]):
            msg_id = self.ids(1)
            await self.probe_client.post(
                url,
                content=call_body(msg_id, "echo", {"message": f"hello {i}"}),
                headers=mcp_headers(token, "tools/call", "echo"),
                timeout=30,
            )
        held, tasks, _ = await self.hold("warm", min(10, self.opts.calls))
        ids = await self.pending_ids(held)
        await self.bulk(ids[:-1], "deny")
        response = await self.api.post(f"/api/v1/escalations/{ids[-1]}/approve/", json={"note": "warm-up"})
        if response.status_code != 200:
            raise RuntimeError(f"approve answered {response.status_code}: {response.text[:300]}")
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        bad = Counter(describe(h.message) for h in held[:-1] if describe(h.message) != "isError escalation.denied")
        if bad or describe(held[-1].message) != "ok":
            raise RuntimeError(f"warm-up holds: {dict(bad)}, approved one: {describe(held[-1].message)}")

    async def run(self) -> None:
        o, e = self.opts, self.e
        await self.warm_up()
        await asyncio.sleep(2.0)

        print("\n1. baseline (nothing held)")
        base = self.snapshot()
        idle0 = await self.idle_rates(o.idle_seconds)
        print(
            f"  Daphne A: VmRSS {base['rss'] / 1024:.1f} MB, {base['fds']} fds; PostgreSQL connections to"
            f" {DB_NAME}: {fmt_conns(base['conns'])}"
        )
        print(
            f"  idle for {o.idle_seconds:g} s: A's CPU {idle0['cpu_pct']:.1f}%,"
            f" {idle0['xact_s']:.0f} DB transactions/s,"
            f" Redis {idle0['redis_cmd_s']:.0f} commands/s, {idle0['redis_conn_s']:.1f} new connections/s"
        )
        w0 = await self.latency_window("nothing held")

        print(f"\n2. hold {o.calls} calls (agents: {len(e.tokens)}, sent at {o.open_rate:g}/s)")
        held, tasks, opened_in = await self.hold("deny", o.calls)
        print(f"  all {o.calls} streams open and pending after {opened_in:.2f} s ({o.calls / opened_in:.0f} holds/s)")
        await asyncio.sleep(o.settle)
        full = self.snapshot()
        idle1 = await self.idle_rates(o.idle_seconds)
        per_call = (full["rss"] - base["rss"]) / o.calls
        print(
            f"  Daphne A: VmRSS {full['rss'] / 1024:.1f} MB (+{(full['rss'] - base['rss']) / 1024:.1f} MB) ="
            f" {per_call:.1f} KB per held call; {full['fds']} fds (+{full['fds'] - base['fds']})"
        )
        print(f"  PostgreSQL connections to {DB_NAME}: {fmt_conns(full['conns'])}")
        print(
            f"  idle for {o.idle_seconds:g} s: A's CPU {idle1['cpu_pct']:.1f}%,"
            f" {idle1['xact_s']:.0f} DB transactions/s,"
            f" Redis {idle1['redis_cmd_s']:.0f} commands/s, {idle1['redis_conn_s']:.1f} new connections/s,"
            f" {idle1['redis_clients']} Redis clients"
        )
        w1 = await self.latency_window(f"{o.calls} held")
        after_probe = rss_kb(e.holder_pid)
        heads = [(h.headers_at - h.sent_at) for h in held if h.headers_at is not None]
        print(
            f"  Daphne A after the window: VmRSS {after_probe / 1024:.1f} MB; response heads received {len(heads)}"
            f"/{o.calls}, {summary_s(heads)} after the request was sent"
        )

        print(f"\n3. bulk deny of {o.calls} in one POST to {'A' if o.api_on_holder else 'B'}")
        ids = await self.pending_ids(held)
        if len(ids) != o.calls:
            print(f"  !! {len(ids)} pending escalations found for {o.calls} held calls")
        t0, t1, body = await self.bulk(ids, "deny")
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), e.timeout)
        except TimeoutError:
            print(f"  !! not every held call answered within {e.timeout:.0f} s")
        answered = [h.answered_at - t0 for h in held if h.answered_at is not None]
        kinds = Counter(h.error or describe(h.message) for h in held)
        last = max(answered) if answered else float("nan")
        print(
            f"  API call {(t1 - t0):.2f} s (decided {body.get('decided')},"
            f" results {bulk_results(body)}); answers {len(answered)}/{o.calls}: first"
            f" {min(answered):.3f} s, p50 {percentile(answered, 50):.3f} s, last {last:.3f} s after the request ="
            f" {last - (t1 - t0):+.3f} s after the API call returned"
        )
        print(f"  answers: {dict(kinds)}; keepalives seen per stream max {max(h.keepalives for h in held)}")
        terminal, outcomes, _, _ = await self.audit_counts(ids, "escalation.deny")
        print(f"  audit: {terminal} 'escalation.deny' events for these escalations, {outcomes} outcome events")
        await asyncio.sleep(2.0)
        print(
            f"  after release: Daphne A VmRSS {rss_kb(e.holder_pid) / 1024:.1f} MB, {fd_count(e.holder_pid)} fds;"
            f" PostgreSQL connections {fmt_conns(e.pg.connections(e.procs))}"
        )
        deny = {"api": t1 - t0, "last": last, "after_return": last - (t1 - t0), "kinds": kinds, "terminal": terminal}

        print(f"\n4. hold {o.calls} again, bulk approve")
        held, tasks, opened_in = await self.hold("approve", o.calls)
        print(f"  all {o.calls} pending after {opened_in:.2f} s; VmRSS {rss_kb(e.holder_pid) / 1024:.1f} MB")
        await asyncio.sleep(o.settle)
        ids = await self.pending_ids(held)
        t0, t1, body = await self.bulk(ids, "approve")
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), e.timeout)
        except TimeoutError:
            print(f"  !! not every approved call answered within {e.timeout:.0f} s")
        answered = [h.answered_at - t0 for h in held if h.answered_at is not None]
        kinds = Counter(h.error or describe(h.message) for h in held)
        wrong = sum(
            1
            for h in held
            if describe(h.message) == "ok"
            and f"to {h.path}" not in ((h.message["result"].get("content") or [{}])[0].get("text") or "")
        )
        last_a = max(answered) if answered else float("nan")
        print(
            f"  API call {(t1 - t0):.2f} s (decided {body.get('decided')},"
            f" results {bulk_results(body)}); results {len(answered)}/{o.calls}: first"
            f" {min(answered):.3f} s, p50 {percentile(answered, 50):.3f} s, last {last_a:.3f} s after the request"
            f" ({last_a - (t1 - t0):+.3f} s after the API call returned) = {o.calls / last_a:.0f} forwarded calls/s"
        )
        print(f"  answers: {dict(kinds)}; upstream text naming another path: {wrong}")
        terminal_a, outcomes_a, forwarded_outcomes, forwarded = await self.audit_counts(ids, "escalation.approve")
        print(
            f"  audit: {terminal_a} 'escalation.approve' events, {forwarded} escalations marked forwarded,"
            f" {forwarded_outcomes} outcome events of the forwarded calls (policy escalation.<id>),"
            f" {outcomes_a} outcome events on the held requests' own request ids"
        )

        print(f"\n5. for comparison, {o.calls} calls with {o.concurrency} in flight")
        direct_s, direct_out = await closed_loop(
            self.probe_client, e.upstream_url, None, "write_file", o.calls, o.concurrency, self.ids(o.calls)
        )
        print(
            f"  write_file straight to the upstream: {direct_s:.2f} s = {o.calls / direct_s:.0f} calls/s;"
            f" {dict(direct_out)}"
        )
        allowed_s, allowed_out = await closed_loop(
            self.probe_client, self.mcp_url, e.tokens[0], "echo", o.calls, o.concurrency, self.ids(o.calls)
        )
        print(
            f"  allowed echo through Behavry A: {allowed_s:.2f} s = {o.calls / allowed_s:.0f} calls/s;"
            f" {dict(allowed_out)}"
        )

        p99_0, p99_1 = percentile(w0.latencies, 99), percentile(w1.latencies, 99)
        print("\nsummary")
        print(
            f"  RSS per held call {per_call:.1f} KB (target <= 50); PostgreSQL connections of A nothing held"
            f" {base['conns'].get('holder')}, {o.calls} held {full['conns'].get('holder')} (must not grow)"
        )
        print(
            f"  allowed p50 {percentile(w0.latencies, 50):.1f} -> {percentile(w1.latencies, 50):.1f} ms, p99"
            f" {p99_0:.1f} -> {p99_1:.1f} ms ({(p99_1 / p99_0 - 1) * 100:+.0f}%, target < +20%)"
        )
        print(
            f"  bulk deny: API {deny['api']:.2f} s, last answer {deny['last']:.2f} s after the request,"
            f" {deny['after_return']:+.2f} s after it returned (target <= 1 s); answers {dict(deny['kinds'])};"
            f" {deny['terminal']} terminal audit events"
        )
        print(
            f"  bulk approve: all {o.calls} forwarded {last_a:.2f} s after the request ({o.calls / last_a:.0f}/s);"
            f" upstream alone {o.calls / direct_s:.0f}/s, allowed calls through A {o.calls / allowed_s:.0f}/s"
        )


def report_log(name: str, log: Path) -> None:
    """WARNING/ERROR lines of a Daphne's log, counted by logger and message (timestamps dropped)."""
    kinds: Counter = Counter()
    tracebacks = 0
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("Traceback"):
            tracebacks += 1
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
            kinds[f"{parts[2]} {parts[3][:110]}"] += 1
    if not kinds and not tracebacks:
        print(f"Daphne {name} log: no warnings or errors")
        return
    print(f"Daphne {name} log: {tracebacks} tracebacks; " + "; ".join(f"{n}x {k}" for k, n in kinds.most_common(5)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="concurrent held calls (1000)")
    parser.add_argument("--agents", type=int, default=100, help="agents the held calls are spread over (100)")
    parser.add_argument("--rate", type=float, default=50.0, help="allowed-call probe rate, calls/s (50)")
    parser.add_argument("--seconds", type=float, default=5.0, help="allowed-call probe window (5)")
    parser.add_argument("--probe-warmup", type=float, default=1.0, help="unmeasured probe seconds before each window")
    parser.add_argument("--idle-seconds", type=float, default=4.0, help="window for idle CPU/DB/Redis rates (4)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait once everything is held (3)")
    parser.add_argument("--open-rate", type=float, default=50.0, help="held calls sent per second (50)")
    parser.add_argument("--concurrency", type=int, default=200, help="in flight for the comparison runs (200)")
    parser.add_argument("--timeout", type=float, default=300.0, help="limit for each phase, seconds (300)")
    parser.add_argument("--api-on-holder", action="store_true", help="send the REST calls to A, not to a second Daphne")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the server logs")
    opts = parser.parse_args()
    opts.agents = max(1, min(opts.agents, opts.calls))

    # 1,000 held streams need 1,000+ sockets in Daphne and in this process; children inherit the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile < 2 * opts.calls + 200:
        print(f"!! RLIMIT_NOFILE is {nofile}: too low for {opts.calls} held calls (raise `ulimit -n`)")

    var_dir = tempfile.mkdtemp(prefix="behavry-bench-hold-")
    env = configure_env(var_dir, opts.calls)
    logs = Path(var_dir) / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    pg: Pg | None = None

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"database {DB_NAME}: {ensure_database()}; migrating…")
        import django

        sys.path.insert(0, str(ROOT))
        django.setup()
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0, interactive=False)
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()

        up_port = free_port()
        up_log = logs / "upstream.log"
        upstream = start_process([PY, "-m", "demo.upstream", "--port", str(up_port)], env, up_log)
        procs.append(upstream)
        wait_port(upstream, up_port, up_log)
        upstream_url = f"http://127.0.0.1:{up_port}/mcp"
        t = time.perf_counter()
        tokens, admin_key = register(upstream_url, opts.agents)
        print(
            f"registered upstream, {len(tokens)} agents with fresh tokens, policies, admin key"
            f" in {time.perf_counter() - t:.1f} s"
        )
        connections.close_all()

        servers = {}
        for name in ("holder", *(() if opts.api_on_holder else ("api",))):
            port = free_port()
            log = logs / f"daphne-{name}.log"
            proc = start_process(
                [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "behavry.asgi:application"], env, log
            )
            procs.append(proc)
            servers[name] = (proc, f"http://127.0.0.1:{port}", log)
        for proc, url, log in servers.values():
            wait_http(proc, f"{url}/healthz", log)
        holder_url = servers["holder"][1]
        api_url = servers["api"][1] if "api" in servers else holder_url

        from _benchlib import pg_settings

        versions = []
        for pkg in ("django", "channels", "channels_redis", "daphne", "twisted", "httpx", "redis"):
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                versions.append(f"{pkg} {version(pkg)}")
        print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, RLIMIT_NOFILE {nofile}; {pg_settings()}")
        print("packages: " + ", ".join(versions))
        connections.close_all()
        api_where = "A" if opts.api_on_holder else f"Daphne B pid {servers['api'][0].pid} {api_url}"
        print(
            f"Daphne A (holds) pid {servers['holder'][0].pid} {holder_url}; REST calls to {api_where};"
            f" upstream {upstream_url}; BEHAVRY_MAX_HELD_REQUESTS={env['BEHAVRY_MAX_HELD_REQUESTS']}"
        )

        pg = Pg()
        watched = {"holder": servers["holder"][0].pid}
        if "api" in servers:
            watched["api"] = servers["api"][0].pid
        watched["bench"] = os.getpid()
        bench_env = Env(
            holder_url=holder_url,
            api_url=api_url,
            upstream_url=upstream_url,
            holder_pid=servers["holder"][0].pid,
            procs=watched,
            tokens=tokens,
            admin_key=admin_key,
            run=uuid.uuid4().hex[:8],
            pg=pg,
            redis=RedisStats(),
            timeout=opts.timeout,
        )

        async def go() -> None:
            bench = Bench(bench_env, opts)
            try:
                await bench.run()
            finally:
                await bench.close()

        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            runner.run(go())
        for name, (proc, _, log) in servers.items():
            if proc.poll() is not None:
                print(f"!! Daphne {name} exited with {proc.returncode}")
            report_log(name, log)
    finally:
        if pg is not None:
            pg.close()
        for proc in reversed(procs):
            stop_process(proc)
        if opts.keep_logs:
            print(f"(logs kept in {var_dir})")
        else:
            shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
