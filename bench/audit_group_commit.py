"""Group commit of the event loop's audit appends (audit/aio.py): one busy agent, many calls at once.

C concurrent callers in one process append to ONE agent's chain through audit_record_async, each
as fast as its previous append returns, for --seconds. The same run is made with batching on
(audit.aio.BATCH_MAX as shipped) and off (BATCH_MAX = 1: each queued append waits for the one
before it, as before group commit). Printed per concurrency: events/s, append latency p50/p99,
events per transaction (PostgreSQL's xmin of the rows written), and process CPU per event.

Run:  .venv/bin/python bench/audit_group_commit.py [--concurrency 1,4,16] [--seconds 5]
Needs PostgreSQL (DATABASE_URL, default the bench database of bench/_benchlib.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _benchlib import percentile, setup_django


async def run(concurrency: int, seconds: float, agent) -> tuple[int, list[float]]:
    from audit.aio import audit_record_async
    from behavry.actors import SYSTEM

    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller(n: int) -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await audit_record_async(kind="decision", actor=SYSTEM, agent=agent, tool="echo", decision="allow")
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(caller(n) for n in range(concurrency)))
    return len(latencies), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,4,16", help="callers at once, comma list (1,4,16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per line (5)")
    opts = parser.parse_args()
    setup_django(migrate=True)
    from django.db import connection

    from agents.services import agent_create
    from audit import aio
    from audit.models import AuditEvent
    from behavry import pgpool
    from behavry.actors import SYSTEM

    if connection.vendor != "postgresql":
        raise SystemExit("group commit is PostgreSQL's path: set DATABASE_URL to a PostgreSQL database")
    shipped = aio.BATCH_MAX
    print(
        f"{'batching':>10} {'callers':>8} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'ev/txn':>7} {'CPU us/ev':>10}"
    )
    for concurrency in [int(c) for c in opts.concurrency.split(",")]:
        for batch_max in (1, shipped):
            aio.BATCH_MAX = batch_max
            agent = agent_create(name=f"group-commit-{uuid.uuid4().hex[:8]}", by=SYSTEM)
            connection.close()

            async def one_line(agent=agent, concurrency=concurrency) -> tuple[int, list[float], float]:
                await aio.audit_record_async(kind="decision", actor=SYSTEM, agent=agent, tool="warm")
                await aio.audit_record_async(kind="decision", actor=SYSTEM, agent=agent, tool="warm")
                cpu = time.process_time()
                count, latencies = await run(concurrency, opts.seconds, agent)
                cpu = time.process_time() - cpu
                await pgpool.for_running_loop().close()
                return count, latencies, cpu

            count, latencies, cpu = asyncio.run(one_line())
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*), count(DISTINCT xmin::text) FROM audit_auditevent WHERE agent_id = %s"
                    " AND tool = 'echo'",
                    [agent.pk],
                )
                events, transactions = cursor.fetchone()
            latencies.sort()
            print(
                f"{'on' if batch_max > 1 else 'off':>10} {concurrency:>8} {count / opts.seconds:>9.0f}"
                f" {percentile(latencies, 50):>7.2f} {percentile(latencies, 99):>7.2f}"
                f" {events / max(transactions, 1):>7.2f} {cpu / max(count, 1) * 1e6:>10.0f}"
            )
            assert AuditEvent.objects.filter(agent_id=agent.pk, tool="echo").count() == count
    aio.BATCH_MAX = shipped


if __name__ == "__main__":
    main()
