"""Django admin pages with 100k rows per table: server time, SQL count and the slowest query.

Fills (or reuses) 100k agents, tokens, sessions, alerts, escalations, policy exceptions and audit
events in `behavry_admin_bench` (rows are inserted with bulk_create; the audit chain is not
meaningful here, only the row count is), then renders each admin changelist, a filtered and a
searched changelist, the last page, and change/add forms through Django's test client as a
superuser. Prints the median and worst wall time of `--repeat` renders, the number of SQL queries,
and the slowest single query.

    createdb -h 127.0.0.1 -U postgres behavry_admin_bench     # once
    .venv/bin/python bench/admin_pages.py --rows 100000       # ~2 min to fill, then ~1 min
    .venv/bin/python bench/admin_pages.py --reuse             # skip the fill when the rows are there
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/behavry_admin_bench")

from _benchlib import db_label, pg_settings, setup_django

BATCH = 5000


def fill(rows: int) -> None:
    from django.db import connection
    from django.utils import timezone

    from agents.models import Agent, AgentSession, AgentToken
    from alerts.models import Alert
    from audit.models import AuditEvent
    from escalations.models import Escalation
    from policies.models import PolicyException
    from proxy.models import UpstreamServer

    tables = [Agent, AgentToken, AgentSession, Alert, Escalation, PolicyException, AuditEvent]
    with connection.cursor() as cursor:
        names = ", ".join(m._meta.db_table for m in tables)
        cursor.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    now = timezone.now()
    servers = [
        UpstreamServer.objects.get_or_create(
            slug=f"bench-{i}", defaults={"name": f"Bench {i}", "url": f"http://127.0.0.1:{9000 + i}/mcp"}
        )[0]
        for i in range(8)
    ]
    started = time.perf_counter()

    def bulk(model, make) -> None:
        for start in range(0, rows, BATCH):
            model.objects.bulk_create([make(i) for i in range(start, min(rows, start + BATCH))])
        print(f"  {model.__name__}: {rows} rows ({time.perf_counter() - started:.0f}s)", flush=True)

    bulk(Agent, lambda i: Agent(name=f"agent-{i:06d}", owner=f"team-{i % 50}", risk_tier=["low", "medium"][i % 2]))
    agent_ids = list(Agent.objects.order_by("pk").values_list("pk", flat=True))

    def agent(i: int) -> int:
        return agent_ids[(i * 7919) % len(agent_ids)]

    bulk(
        AgentToken,
        lambda i: AgentToken(agent_id=agent(i), label=f"t{i}", prefix=f"bhv_{i:08d}", token_hash=f"{i:064x}"),
    )
    bulk(
        AgentSession,
        lambda i: AgentSession(id=f"s{i:020d}", agent_id=agent(i), server=servers[i % 8], era="legacy"),
    )
    bulk(
        Alert,
        lambda i: Alert(
            agent_id=agent(i),
            type=["anomaly", "dlp_violation", "drift"][i % 3],
            severity=["info", "warning", "critical"][i % 3],
            status=["open", "acknowledged", "resolved"][i % 3],
            title=f"alert {i}",
            dedup_key=f"k{i}",
        ),
    )
    bulk(
        Escalation,
        lambda i: Escalation(
            agent_id=agent(i),
            status=["pending", "approved", "denied", "expired"][i % 4],
            server=servers[i % 8].slug,
            tool=f"tool_{i % 40}",
            action="write",
            call_hash=f"{i:064x}",
            policy_id="bench.escalate",
            risk_tier="medium",
            deadline=now + timedelta(minutes=30),
            decided_at=None if i % 4 == 0 else now,
        ),
    )
    bulk(
        PolicyException,
        lambda i: PolicyException(
            agent_id=agent(i), server=servers[i % 8].slug, tool=f"tool_{i % 40}", resource=f"r{i}", created_by="bench"
        ),
    )
    bulk(
        AuditEvent,
        lambda i: AuditEvent(
            chain=f"agent:{agent(i % 1000)}",
            seq=i,
            timestamp=now - timedelta(seconds=rows - i),
            kind=["decision", "outcome", "admin"][i % 3],
            agent_name=f"agent-{i % 1000:06d}",
            server=servers[i % 8].slug,
            tool=f"tool_{i % 40}",
            action="read",
            decision=["allow", "deny", "escalate"][i % 3],
            policy_id="bench.rule",
            request_id=f"req-{i}",
            actor="agent:bench",
            previous_hash="0" * 64,
            event_hash=f"{i:064x}",
        ),
    )
    with connection.cursor() as cursor:
        for model in tables:
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")


def pages() -> list[tuple[str, str]]:
    from django.urls import reverse

    from agents.models import Agent, AgentSession, AgentToken
    from alerts.models import Alert
    from audit.models import AuditEvent
    from escalations.models import Escalation
    from policies.models import PolicyException

    out: list[tuple[str, str]] = []
    for model, filt, search in [
        (Agent, "status__exact=active", "agent-0500"),
        (AgentToken, "revoked=no", "bhv_0000"),
        (AgentSession, "era__exact=legacy", "agent-0042"),
        (Alert, "severity__exact=critical&status__exact=open", "alert 999"),
        (Escalation, "status__exact=pending", "tool_7"),
        (PolicyException, "server=bench-3", "r4242"),
        (AuditEvent, "decision=deny&server=bench-2", "req-4242"),
    ]:
        name = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        changelist = reverse(f"{name}_changelist")
        pk = model.objects.order_by("pk").values_list("pk", flat=True)[50_000 % max(1, model.objects.count())]
        label = model.__name__
        out += [
            (f"{label} list", changelist),
            (f"{label} list, filtered", f"{changelist}?{filt}"),
            (f"{label} list, search", f"{changelist}?q={search}"),
            (f"{label} list, page 900", f"{changelist}?p=900"),
            (f"{label} change form", reverse(f"{name}_change", args=[pk])),
        ]
    out += [
        ("AgentToken add form", reverse("admin:agents_agenttoken_add")),
        ("AuditEvent list, last 24 hours", reverse("admin:audit_auditevent_changelist") + "?timestamp_within=24h"),
        (
            "Agent autocomplete",
            reverse("admin:autocomplete") + "?app_label=agents&model_name=agenttoken&field_name=agent&term=agent-01",
        ),
    ]
    return out


def measure(repeat: int) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user, _ = get_user_model().objects.get_or_create(username="bench-admin", defaults={"is_superuser": True})
    user.is_superuser = user.is_staff = True
    user.save()
    client = Client()
    client.force_login(user)
    print(f"{'page':<38} {'status':>6} {'p50 ms':>8} {'max ms':>8} {'queries':>8} {'slowest query ms':>17} {'KB':>6}")
    for label, url in pages():
        times = []
        for _ in range(repeat):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - started) * 1000)
        slowest = max((float(q["time"]) * 1000 for q in queries.captured_queries), default=0.0)
        print(
            f"{label:<38} {response.status_code:>6} {statistics.median(times):>8.1f} {max(times):>8.1f}"
            f" {len(queries):>8} {slowest:>17.1f} {len(response.content) / 1024:>6.0f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="keep the rows already in the database")
    args = parser.parse_args()
    os.environ.setdefault("BEHAVRY_DEBUG", "false")
    setup_django()
    print(db_label())
    print(pg_settings())
    from agents.models import Agent

    if not (args.reuse and Agent.objects.count() >= args.rows):
        print(f"filling {args.rows} rows per table")
        fill(args.rows)
    measure(args.repeat)


if __name__ == "__main__":
    main()
