"""What 2025-era session upkeep costs: the touch on each legacy call, the per-agent cap at
initialize, the ticker's UPDATE and the idle-expiry job's queries.

Run:  .venv/bin/python bench/sessions.py [--open 10000] [--ended 100000] [--calls 200000]

Set-up: the bench database (bench/_benchlib.py; DATABASE_URL wins), migrated. It fills
agents_agentsession with --ended ended and --open open sessions (1 % of them idle) over 100 agents
on one upstream, runs the measurements, and deletes what it made. Prints numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _benchlib import db_label, percentile, pg_settings, setup_django

AGENTS = 100
SLUG = "bench-sessions"


def fill(n_open: int, n_ended: int) -> tuple[list, object]:
    from django.utils import timezone

    from agents.models import Agent, AgentSession
    from proxy.models import UpstreamServer

    server, _ = UpstreamServer.objects.get_or_create(
        slug=SLUG, defaults={"name": SLUG, "url": "http://127.0.0.1:9/mcp"}
    )
    agents = [Agent.objects.get_or_create(name=f"{SLUG}-{n}")[0] for n in range(AGENTS)]
    now = timezone.now()
    rows = []
    for n in range(n_ended):
        rows.append(
            AgentSession(
                id=f"{SLUG}-ended-{n}",
                agent=agents[n % AGENTS],
                server=server,
                last_seen_at=now - timedelta(days=2),
                ended_at=now - timedelta(days=1),
                end_reason="closed by client",
            )
        )
    for n in range(n_open):
        idle = n % 100 == 50  # agent 50's: the cap measurement below uses agent 0
        rows.append(
            AgentSession(
                id=f"{SLUG}-open-{n}",
                agent=agents[n % AGENTS],
                server=server,
                last_seen_at=now - (timedelta(days=1) if idle else timedelta(seconds=n % 600)),
            )
        )
    AgentSession.objects.bulk_create(rows, batch_size=5000)
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE agents_agentsession")
    return agents, server


def clean() -> None:
    from agents.models import Agent, AgentSession
    from proxy.models import UpstreamServer

    AgentSession.objects.filter(server__slug=SLUG).delete()
    Agent.objects.filter(name__startswith=f"{SLUG}-").delete()
    UpstreamServer.objects.filter(slug=SLUG).delete()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def touch_cost(calls: int) -> None:
    """CPU per call of proxy.sessions.touch_if_due on a row seen just now: all a legacy call adds."""
    from django.utils import timezone

    from agents.models import AgentSession
    from proxy import sessions

    row = AgentSession(id="x", last_seen_at=timezone.now() + timedelta(days=1))  # never due in the run

    async def run() -> float:
        touch = sessions.touch_if_due
        start = time.process_time()
        for _ in range(calls):
            touch(row)
        spent = time.process_time() - start
        await sessions.stop_ticking()
        return spent

    spent = asyncio.run(run())
    print(f"touch_if_due, row fresh (every legacy call): {spent / calls * 1e6:.2f} us CPU per call ({calls} calls)")


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def report(label: str, samples: list[float]) -> None:
    print(f"{label}: p50 {ms(statistics.median(samples))} ms, p95 {ms(percentile(samples, 95))} ms, n={len(samples)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--open", type=int, default=10_000, help="open sessions (10000; 1 %% idle)")
    parser.add_argument("--ended", type=int, default=100_000, help="ended sessions (100000)")
    parser.add_argument("--calls", type=int, default=200_000, help="touch_if_due calls timed (200000)")
    parser.add_argument("--repeat", type=int, default=200, help="repetitions of each database step (200)")
    ns = parser.parse_args()
    setup_django()
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from agents.models import AgentSession
    from agents.services import agent_session_expire_idle, agent_session_open, agent_session_touch

    print(db_label())
    print(pg_settings())
    touch_cost(ns.calls)
    clean()
    agents, server = fill(ns.open, ns.ended)
    try:
        print(f"rows: {ns.ended} ended, {ns.open} open over {AGENTS} agents ({ns.open // 100} idle)")
        # The ticker's UPDATE for 500 sessions in use, none due (a second tick inside the window).
        ids = [f"{SLUG}-open-{n}" for n in range(1, ns.open, max(1, ns.open // 500))][:500]
        agent_session_touch(session_ids=ids)
        report(
            f"agent_session_touch, {len(ids)} ids, none due", timed(lambda: agent_session_touch(session_ids=ids), 50)
        )

        # initialize: one agent at the cap (64 open), so every open evicts one.
        settings.BEHAVRY_MCP_MAX_SESSIONS_PER_AGENT = 64
        agent = agents[0]
        for _ in range(64):  # to the cap exactly, whatever the fill left this agent
            agent_session_open(
                agent_id=agent.pk, server_id=server.pk, era="legacy", protocol_version="x", client_info={}
            )

        def open_one() -> None:
            _session, evicted = agent_session_open(
                agent_id=agent.pk, server_id=server.pk, era="legacy", protocol_version="x", client_info={}
            )
            assert len(evicted) == 1

        report(
            "agent_session_open at the cap (insert + cap query + 1 eviction, one transaction)",
            timed(open_one, ns.repeat),
        )

        def open_below_cap() -> None:
            _session, evicted = agent_session_open(
                agent_id=agents[2].pk, server_id=server.pk, era="legacy", protocol_version="x", client_info={}
            )
            assert not evicted

        settings.BEHAVRY_MCP_MAX_SESSIONS_PER_AGENT = 1_000_000
        report(
            "agent_session_open below the cap (insert + cap query, one transaction)", timed(open_below_cap, ns.repeat)
        )
        settings.BEHAVRY_MCP_MAX_SESSIONS_PER_AGENT = 64

        def plain_insert() -> None:  # what agent_session_open did before the cap
            import secrets

            AgentSession.objects.create(id=secrets.token_urlsafe(24), agent_id=agents[1].pk, server_id=server.pk)

        report("plain insert (the open before the cap, for comparison)", timed(plain_insert, ns.repeat))

        # The beat job: one batch, then a run with nothing idle left.
        settings.BEHAVRY_MCP_SESSION_IDLE_SECONDS = 3600
        start = time.perf_counter()
        ended = agent_session_expire_idle(limit=500)
        print(
            f"agent_session_expire_idle, one batch (limit 500): {len(ended)} ended"
            f" in {ms(time.perf_counter() - start)} ms"
        )
        while len(agent_session_expire_idle(limit=500)) == 500:
            pass
        report("agent_session_expire_idle, nothing idle", timed(agent_session_expire_idle, 50))
        if connection.vendor == "postgresql":
            cutoff = timezone.now() - timedelta(hours=1)
            query = AgentSession.objects.filter(ended_at__isnull=True, last_seen_at__lt=cutoff).order_by("last_seen_at")
            print("plan of the job's scan:", query.values_list("pk", flat=True)[:500].explain().replace("\n", " | "))
    finally:
        clean()


if __name__ == "__main__":
    main()
