"""Append throughput and commit latency of audit.services.audit_record(durable=True).

Writers are separate processes (spawn, each with its own django.setup() and DB connection), as in
production where several Daphne processes append at once. Scenarios:

  a) N writers, each on its own agent (independent chains, no shared lock)
  b) N writers on one agent (one chain: appends serialise on the chain head's row lock)
  c) paced: a fixed total rate spread over a few writers on different agents

Run:  .venv/bin/python bench/audit_append.py [--writers 8] [--events 500] [--rate 100] ...
Prints numbers only; afterwards audit_verify() checks the chains that were written.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _benchlib import db_label, percentile, pg_settings, setup_django

FULL_VERIFY_LIMIT = 300_000  # above this many events in the table, verify only the chains written here


def _worker(
    idx: int,
    agent_pk: int,
    count: int,
    warmup: int,
    interval: float,
    offset: float,
    reconnect: bool,
    barrier,
    results,
) -> None:
    setup_django(migrate=False)
    from django.db import connection

    from agents.models import Agent
    from audit.services import AuditWriteError, audit_record
    from behavry.actors import Actor

    agent = Agent.objects.get(pk=agent_pk)
    actor = Actor(kind="agent", id=str(agent.pk), name=agent.name)
    session = uuid.uuid4().hex

    def call(i: int) -> None:
        audit_record(
            kind="decision",
            actor=actor,
            agent=agent,
            session=session,
            server="files",
            tool="read_file",
            action="read",
            resource=f"/srv/data/w{idx}/file-{i}.txt",
            decision="allow",
            policy_id="bench-allow-reads",
            reason="matched rule allow-reads",
            request_id=f"{session[:8]}-{i}",
            latency_ms=1.25,
            arguments={"path": f"/srv/data/w{idx}/file-{i}.txt", "offset": i * 4096, "limit": 4096},
            trace=[{"policy": "bench-allow-reads", "rule": "allow-reads", "matched": True}],
            durable=True,
        )

    for i in range(warmup):
        call(-1 - i)
    if reconnect:
        connection.close()
    barrier.wait(timeout=300)
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0
    t0 = time.monotonic()
    for i in range(count):
        if interval:
            due = t0 + offset + i * interval
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            lags.append(max(0.0, time.monotonic() - due))
        started = time.perf_counter()
        try:
            call(i)
        except AuditWriteError:
            errors += 1
        latencies.append(time.perf_counter() - started)
        if reconnect:
            connection.close()  # CONN_MAX_AGE=0: each request opens its own connection
    t1 = time.monotonic()
    connection.close()
    results.put({"idx": idx, "t0": t0, "t1": t1, "lat": latencies, "lag": lags, "errors": errors})


def _run(
    label: str, agent_pks: list[int], count: int, warmup: int, interval: float, reconnect: bool
) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    writers = len(agent_pks)
    barrier = ctx.Barrier(writers)
    results = ctx.Queue()
    procs = []
    for idx, pk in enumerate(agent_pks):
        # Paced writers start staggered so their calls interleave evenly.
        offset = (interval / writers) * idx if interval else 0.0
        args = (idx, pk, count, warmup, interval, offset, reconnect, barrier, results)
        procs.append(ctx.Process(target=_worker, args=args, daemon=True))
    for p in procs:
        p.start()
    got = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        print(f"  !! worker exit codes: {failed}")
    latencies = [x * 1000 for r in got for x in r["lat"]]
    lags = [x * 1000 for r in got for x in r["lag"]]
    elapsed = max(r["t1"] for r in got) - min(r["t0"] for r in got)
    errors = sum(r["errors"] for r in got)
    total = len(latencies)
    out = {
        "events": total,
        "seconds": elapsed,
        "rate": total / elapsed if elapsed else float("nan"),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "mean": sum(latencies) / total,
        "errors": errors,
    }
    print(
        f"{label:<44} {total:>6} ev {elapsed:7.2f} s {out['rate']:8.0f} ev/s   "
        f"p50 {out['p50']:6.2f}  p99 {out['p99']:7.2f}  max {out['max']:7.2f} ms   errors {errors}"
    )
    if interval:
        print(
            f"{'':<44} schedule lag p50 {percentile(lags, 50):.2f} ms, p99 {percentile(lags, 99):.2f} ms, "
            f"max {max(lags):.2f} ms (how late calls started)"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=8, help="writer processes for scenarios a and b (8)")
    parser.add_argument("--events", type=int, default=500, help="events per writer in a and b (500)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed events per writer before the start (5)")
    parser.add_argument("--rate", type=float, default=100.0, help="total events/s in scenario c (100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of scenario c (10)")
    parser.add_argument("--paced-writers", type=int, default=4, help="writers in scenario c (4)")
    parser.add_argument(
        "--reconnect",
        action="store_true",
        help="also run a and c closing the DB connection after every call (CONN_MAX_AGE=0 per request)",
    )
    parser.add_argument("--only", choices=["a", "b", "c"], action="append", help="run only these scenarios")
    opts = parser.parse_args()

    setup_django()
    from agents.models import Agent
    from audit.chain import agent_chain
    from audit.models import AuditEvent
    from audit.verify import audit_verify

    print(f"database: {db_label()}")
    print(pg_settings())
    print(f"cpus: {os.cpu_count()}   writers are spawned processes, each with its own connection")
    run_id = uuid.uuid4().hex[:8]
    scenarios = opts.only or ["a", "b", "c"]
    used: list[int] = []

    def agents(tag: str, n: int) -> list[int]:
        pks = [Agent.objects.create(name=f"bench-append-{run_id}-{tag}-{i}").pk for i in range(n)]
        used.extend(pks)
        return pks

    print()
    print(f"{'scenario':<44} {'events':>9} {'elapsed':>9} {'rate':>13}   per-call latency")
    if "a" in scenarios:
        _run(
            f"a) {opts.writers} writers, {opts.writers} agents",
            agents("a", opts.writers),
            opts.events,
            opts.warmup,
            0.0,
            False,
        )
        if opts.reconnect:
            _run(
                f"a) {opts.writers} writers, {opts.writers} agents, reconnect",
                agents("ar", opts.writers),
                opts.events,
                opts.warmup,
                0.0,
                True,
            )
    if "b" in scenarios:
        one = agents("b", 1)[0]
        _run(
            f"b) {opts.writers} writers, 1 agent (one chain)",
            [one] * opts.writers,
            opts.events,
            opts.warmup,
            0.0,
            False,
        )
    if "c" in scenarios:
        per_writer_rate = opts.rate / opts.paced_writers
        count = max(1, round(per_writer_rate * opts.seconds))
        label = f"c) paced {opts.rate:g}/s, {opts.paced_writers} writers, {opts.paced_writers} agents"
        _run(label, agents("c", opts.paced_writers), count, opts.warmup, 1.0 / per_writer_rate, False)
        if opts.reconnect:
            _run(
                label + ", reconnect", agents("cr", opts.paced_writers), count, opts.warmup, 1.0 / per_writer_rate, True
            )

    print()
    table_events = AuditEvent.objects.count()
    written = AuditEvent.objects.filter(chain__in=[agent_chain(pk) for pk in set(used)]).count()
    started = time.perf_counter()
    ok = True
    for pk in sorted(set(used)):
        result = audit_verify(agent_id=pk)
        if not result.ok or result.events_checked == 0:
            ok = False
            print(f"  chain agent:{pk} BROKEN: {result.first_broken}")
    print(
        f"verify (audit_verify(agent_id=...) for the {len(set(used))} chains written, {written} events): "
        f"{'OK' if ok else 'BROKEN'} in {time.perf_counter() - started:.2f} s"
    )
    if table_events <= FULL_VERIFY_LIMIT:
        result = audit_verify()
        print(
            f"verify (audit_verify(), all {result.chains_checked} chains, {result.events_checked} events): "
            f"{'OK' if result.ok else 'BROKEN ' + str(result.first_broken)} in {result.seconds:.2f} s"
        )
    else:
        print(f"full audit_verify() skipped: table holds {table_events} events (> {FULL_VERIFY_LIMIT})")


if __name__ == "__main__":
    main()
