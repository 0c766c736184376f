"""Speed of audit.verify.audit_verify() on a large, correctly chained audit table.

1. Wipes the audit tables (TRUNCATE; the append-only trigger is row-level UPDATE/DELETE only).
2. Generates N events over C agent chains exactly as audit_record would build them (same field
   set, redaction, canonical JSON, event_hash onto previous_hash, increasing timestamps) and
   COPYs them into audit_auditevent; writes correctly signed chain heads.
3. Times audit_verify() over everything (must be ok) and audit_verify(agent_id=...) for one agent.

Run:  .venv/bin/python bench/audit_verify.py [--events 1000000] [--chains 50] [--keep] [--reuse]
--keep leaves the data in place (bench/audit_export.py uses it); without it the tables are wiped
at the end. --reuse skips steps 1-2 when the table already holds the generated events.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _benchlib import db_label, pg_settings, setup_django

AGENT_PREFIX = "bench-verify-"
STEP = timedelta(milliseconds=7)  # time between consecutive events (all chains interleaved)


def copy_columns() -> tuple[str, ...]:
    """The stored columns, in the order audit.chain hashes them (importable once Django is set up)."""
    from audit.chain import HASHED_FIELDS

    return (*HASHED_FIELDS, "previous_hash", "event_hash")


TOOLS = (
    ("files", "read_file", "read"),
    ("files", "write_file", "write"),
    ("files", "list_directory", "read"),
    ("github", "create_issue", "write"),
    ("github", "search_code", "read"),
    ("db", "run_query", "read"),
    ("mail", "send_email", "send"),
)


def wipe() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE audit_auditevent, audit_auditchainhead, audit_auditcheckpoint RESTART IDENTITY")


def bench_agents(chains: int):
    from agents.models import Agent

    return [Agent.objects.get_or_create(name=f"{AGENT_PREFIX}{i:03d}")[0] for i in range(chains)]


def generated_count() -> int:
    from audit.models import AuditEvent

    return AuditEvent.objects.filter(agent_name__startswith=AGENT_PREFIX).count()


def _event_fields(i: int, agent, chain: str, seq: int, timestamp: datetime) -> dict:
    """The `fields` dict audit_record builds for a decision event (before hashing)."""
    from audit.redaction import redact_arguments

    server, tool, action = TOOLS[i % len(TOOLS)]
    deny = i % 17 == 0
    session = f"s{agent.pk:04d}{seq // 200:06d}"
    arguments = {"path": f"/srv/data/project-{i % 97}/file-{i}.txt", "offset": (i % 64) * 4096, "limit": 4096}
    if action == "write":
        arguments["content"] = f"line {i}\n" * 3
    if tool == "send_email":
        arguments = {"to": f"user{i % 50}@example.com", "subject": f"report {i}", "api_key": "sk-live-abc"}
    trace = [
        {"policy": "default-deny", "rule": "deny-all", "matched": deny},
        {
            "policy": "allow-reads",
            "rule": f"allow-{action}",
            "matched": not deny,
            "score": round(0.5 + (i % 7) / 10, 2),
        },
    ]
    return {
        "chain": chain,
        "kind": "decision",
        "agent_id": agent.pk,
        "agent_name": agent.name,
        "session": session,
        "server": server,
        "tool": tool,
        "action": action,
        "resource": arguments.get("path", arguments.get("to", "")),
        "decision": "deny" if deny else "allow",
        "policy_id": "default-deny" if deny else "allow-reads",
        "reason": "no rule allows this tool" if deny else f"matched rule allow-{action}",
        "request_id": f"req-{i:09d}",
        "actor": f"agent:{agent.name}",
        "latency_ms": 0.5 + (i % 1000) / 7.0,
        "arguments": redact_arguments(arguments, []),
        "trace": redact_arguments(trace, []),
        "dlp_findings": [],
        "details": redact_arguments({}, []),
        "seq": seq,
        "timestamp": timestamp,
    }


def _copy_text(value) -> str:
    """One field in COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        value = value.isoformat()
    elif isinstance(value, float):
        value = repr(value)
    elif not isinstance(value, str):
        value = str(value)
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _hash_worker(
    slot: int, workers: int, events: int, agents: list[tuple[int, str]], block: int, start_ts, out
) -> None:
    """Build and hash the events of the chains with index % workers == slot, in blocks of global order.

    For each block of `block` consecutive events, puts the COPY lines of this worker's events
    (in increasing global index) on `out`; at the end puts {chain: (seq, last_hash)}.
    """
    setup_django(migrate=False)
    from types import SimpleNamespace

    from audit.chain import JSON_FIELDS, agent_chain, canonical_json, event_hash
    from audit.models import GENESIS_HASH

    columns = copy_columns()

    chains = len(agents)
    objs = [SimpleNamespace(pk=pk, name=name) for pk, name in agents]
    names = [agent_chain(pk) for pk, _ in agents]
    last_hash = dict.fromkeys(names, GENESIS_HASH)
    last_seq = dict.fromkeys(names, 0)
    hashing = 0.0
    for first in range(0, events, block):
        lines = []
        t = time.perf_counter()
        for i in range(first, min(events, first + block)):
            c = i % chains
            if c % workers != slot:
                continue
            chain = names[c]
            seq = last_seq[chain] + 1
            fields = _event_fields(i, objs[c], chain, seq, start_ts + STEP * i)
            previous = last_hash[chain]
            digest = event_hash(fields, previous)  # the real audit.chain hashing
            last_hash[chain], last_seq[chain] = digest, seq
            fields["previous_hash"], fields["event_hash"] = previous, digest
            lines.append(
                "\t".join(_copy_text(canonical_json(fields[k]) if k in JSON_FIELDS else fields[k]) for k in columns)
                + "\n"
            )
        hashing += time.perf_counter() - t
        out.put(lines)
    out.put({"heads": {n: (last_seq[n], last_hash[n]) for n in names}, "seconds": hashing})


def generate(events: int, chains: int, workers: int, block: int = 10_000) -> dict[str, float]:
    """Hash events round-robin over `chains` agent chains in `workers` processes and COPY them in order."""
    import multiprocessing as mp

    from django.db import connection, transaction

    from audit.chain import head_signature
    from audit.models import AuditChainHead

    agents = [(a.pk, a.name) for a in bench_agents(chains)]
    start_ts = datetime.now(UTC).replace(microsecond=0) - STEP * events - timedelta(hours=1)
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue(maxsize=8) for _ in range(workers)]
    procs = [
        ctx.Process(target=_hash_worker, args=(k, workers, events, agents, block, start_ts, queues[k]), daemon=True)
        for k in range(workers)
    ]
    for p in procs:
        p.start()
    sql = f"COPY audit_auditevent ({', '.join(copy_columns())}) FROM STDIN"
    started = time.perf_counter()
    copy_seconds = 0.0
    with transaction.atomic():
        raw = connection.cursor().connection  # the psycopg connection under Django's
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            for first in range(0, events, block):
                parts = [iter(q.get(timeout=600)) for q in queues]
                t = time.perf_counter()
                # Interleave the workers' lines back into global order: event i is on chain
                # i % chains, which worker (i % chains) % workers built.
                copy.write(
                    "".join(next(parts[(i % chains) % workers]) for i in range(first, min(events, first + block)))
                )
                copy_seconds += time.perf_counter() - t
                if (first + block) % 200_000 == 0:
                    print(f"  ... {first + block} events ({time.perf_counter() - started:.1f} s)", flush=True)
        ends = [q.get(timeout=600) for q in queues]
        heads = {name: head for end in ends for name, head in end["heads"].items() if head[0]}
        end_ts = start_ts + STEP * events
        AuditChainHead.objects.bulk_create(
            [
                AuditChainHead(
                    chain=name,
                    seq=seq,
                    last_hash=last_hash,
                    signature=head_signature(name, seq, last_hash),
                    updated_at=end_ts,
                )
                for name, (seq, last_hash) in heads.items()
            ]
        )
        t = time.perf_counter()
    copy_seconds += time.perf_counter() - t  # commit
    total = time.perf_counter() - started
    for p in procs:
        p.join(timeout=60)
    t = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) audit_auditevent")
        cursor.execute("ANALYZE audit_auditchainhead")
    return {
        "total": total,
        "hash": max(e["seconds"] for e in ends),
        "hash_cpu": sum(e["seconds"] for e in ends),
        "copy": copy_seconds,
        "analyze": time.perf_counter() - t,
    }


def table_size() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_size_pretty(pg_relation_size('audit_auditevent')),"
            " pg_size_pretty(pg_total_relation_size('audit_auditevent'))"
        )
        heap, total = cursor.fetchone()
    return f"heap {heap}, with indexes and toast {total}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events to generate (1,000,000)")
    parser.add_argument("--chains", type=int, default=50, help="agent chains to spread them over (50)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="hashing processes for generation (cpu count)"
    )
    parser.add_argument("--keep", action="store_true", help="leave the data in place for audit_export.py")
    parser.add_argument("--reuse", action="store_true", help="skip generation if the events are already there")
    parser.add_argument("--no-verify", action="store_true", help="only generate (used by audit_export.py)")
    opts = parser.parse_args()

    setup_django()
    from audit.models import AuditChainHead, AuditEvent
    from audit.verify import audit_verify

    print(f"database: {db_label()}")
    print(pg_settings())

    existing = generated_count() if opts.reuse else 0
    if opts.reuse and existing >= opts.events:
        print(f"reusing {existing} generated events already in the table")
    else:
        wipe()
        print(f"generating {opts.events} events over {opts.chains} chains ...", flush=True)
        timing = generate(opts.events, opts.chains, opts.workers)
        print(
            f"generation: {timing['total']:.1f} s wall ({opts.events / timing['total']:,.0f} ev/s); "
            f"building+hashing {timing['hash_cpu']:.1f} s CPU in {opts.workers} processes "
            f"({opts.events / timing['hash_cpu']:,.0f} ev/s per process), COPY write+commit in main "
            f"{timing['copy']:.1f} s; then VACUUM ANALYZE {timing['analyze']:.1f} s"
        )
    print(f"audit_auditevent: {AuditEvent.objects.count()} rows, {table_size()}")

    if not opts.no_verify:
        result = audit_verify()
        rate = result.events_checked / result.seconds if result.seconds else float("nan")
        print(
            f"audit_verify():            ok={result.ok}  chains={result.chains_checked}  "
            f"events={result.events_checked}  {result.seconds:.2f} s  {rate:,.0f} ev/s"
        )
        if not result.ok:
            print(f"  first broken: {result.first_broken}")
        one = AuditChainHead.objects.filter(chain__startswith="agent:").order_by("chain").first()
        if one is not None:
            agent_id = int(one.chain.split(":", 1)[1])
            result = audit_verify(agent_id=agent_id)
            rate = result.events_checked / result.seconds if result.seconds else float("nan")
            print(
                f"audit_verify(agent_id={agent_id}): ok={result.ok}  events={result.events_checked}  "
                f"{result.seconds:.2f} s  {rate:,.0f} ev/s"
            )

    if not opts.keep:
        wipe()
        print("wiped the audit tables (use --keep to leave the data for audit_export.py)")


if __name__ == "__main__":
    main()
