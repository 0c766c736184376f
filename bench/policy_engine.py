"""Policy engine speed: decisions per second and p50/p99 per decision, on one core, by rule count.

Usage:  .venv/bin/python bench/policy_engine.py [--calls 20000] [--seed 7]

Pure engine (`build_engine` + `PolicyEngine.decide`), no database: the rules are policy bodies
as `policies.selectors.policy_engine_load` would hand them over. Two rule sets per size:

- realistic: ~95% of rules name literal servers and/or tools (the index finds them by key),
  ~5% use globs (`srv-1*`, `read_*`, a few `*`), about a fifth carry argument conditions and a
  quarter are limited to agent roles;
- all-wildcard: every rule has glob servers and tools, so the index cannot skip any, and each
  fails only at its last matcher (an argument condition) - every decision walks the whole list.

`django.setup()` is needed only because the engine imports `django.utils.timezone`; every call
passes `CallContext.now`, so no clock or database is touched while timing.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SIZES = (10, 1_000, 10_000)
SERVERS = [f"srv-{i:02d}" for i in range(60)]
VERBS = ("read", "list", "write", "delete", "send", "run")
TOOLS = [f"{verb}_{noun}" for verb in VERBS for noun in ("file", "dir", "row", "issue", "mail", "job", "page")]
ACTION_OF = {"read": "read", "list": "read", "write": "write", "delete": "delete", "send": "send", "run": "execute"}
ROLES = ("ops", "support", "ci", "analytics", "interns")
CONDITIONS = (
    {"arg": "size", "op": "gt", "value": 1_000_000},
    {"arg": "options.recursive", "op": "eq", "value": True},
    {"arg": "path", "op": "glob", "value": "/etc/*"},
    {"arg": "path", "op": "regex", "value": r"\.(pem|key)$"},
    {"arg": "to", "op": "in", "value": ["ceo@example.com", "all@example.com"]},
    {"arg": "files.0.path", "op": "ne", "value": "/work/scratch"},
)


def setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "behavry.settings")
    os.environ.setdefault("BEHAVRY_VAR_DIR", str(Path(tempfile.gettempdir()) / "behavry-bench-var"))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to CPU {core}"
    return "not pinned (no sched_setaffinity)"


def _base(i: int, rng: random.Random) -> dict:
    return {
        "id": i,
        "slug": f"rule-{i}",
        "name": f"rule {i}",
        "effect": rng.choices(("allow", "escalate", "deny"), weights=(60, 25, 15))[0],
        "mode": "shadow" if rng.random() < 0.03 else "enforce",
        "priority": rng.randint(0, 200),
        "enabled": True,
        "reason": "",
        "agents": [],
        "roles": [],
        "servers": [],
        "tools": [],
        "actions": [],
        "resources": [],
        "risk_tiers": [],
        "conditions": [],
        "time_window": None,
    }


def realistic_rules(n: int, rng: random.Random) -> list[dict]:
    rules = []
    for i in range(1, n + 1):
        body = _base(i, rng)
        server = rng.choice(SERVERS)
        roll = rng.random()
        if roll < 0.05:  # glob rules, mostly with one literal side the index can still use
            kind = rng.random()
            if kind < 0.45:
                body["servers"], body["tools"] = [f"srv-{rng.randint(0, 5)}*"], [rng.choice(TOOLS)]
            elif kind < 0.9:
                body["servers"], body["tools"] = [server], [f"{rng.choice(VERBS)}_*"]
            else:
                body["servers"], body["tools"] = ["*"], [f"{rng.choice(VERBS)}_*"]
        elif roll < 0.75:
            body["servers"], body["tools"] = [server], [rng.choice(TOOLS)]
        elif roll < 0.85:
            body["servers"] = [server]
            body["actions"] = [rng.choice(("write", "delete", "execute"))]
        else:
            body["servers"], body["tools"] = [server, rng.choice(SERVERS)], rng.sample(TOOLS, 3)
        if rng.random() < 0.25:
            body["roles"] = [rng.choice(ROLES)]
        if rng.random() < 0.2:
            body["conditions"] = [rng.choice(CONDITIONS)]
        if rng.random() < 0.05:
            body["resources"] = ["/srv/data/*"]
        rules.append(body)
    return rules


def wildcard_rules(n: int, rng: random.Random) -> list[dict]:
    rules = []
    for i in range(1, n + 1):
        body = _base(i, rng)
        body["mode"] = "enforce"
        body["servers"], body["tools"] = ["srv-*"], ["*_*"]
        body["conditions"] = [{"arg": "size", "op": "gt", "value": 10**12}]  # never holds: every rule is walked
        rules.append(body)
    return rules


def calls(count: int, rng: random.Random) -> list:
    from policies.engine import CallContext

    out = []
    for _ in range(count):
        tool = rng.choice(TOOLS)
        path = rng.choice(("/srv/data/report.csv", "/etc/passwd", "/srv/keys/id.pem", "/work/scratch"))
        out.append(
            CallContext(
                agent_id=rng.randint(1, 50),
                server=rng.choice(SERVERS),
                tool=tool,
                action=ACTION_OF[tool.split("_")[0]],
                resource=path,
                arguments={
                    "path": path,
                    "size": rng.randint(0, 2_000_000),
                    "options": {"recursive": rng.random() < 0.3},
                    "to": rng.choice(("a@example.com", "ceo@example.com")),
                    "files": [{"path": "/work/scratch"}],
                },
                roles=frozenset(rng.sample(ROLES, rng.randint(0, 2))),
                risk_tier=rng.choice(("low", "low", "medium", "high")),
                now=NOW,
            )
        )
    return out


def percentile(sorted_values: list[int], pct: float) -> float:
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def measure(rules: list[dict], contexts: list, max_calls: int, budget_s: float) -> dict:
    from policies.engine import build_engine

    started = time.perf_counter()
    engine = build_engine(rules)
    compile_ms = (time.perf_counter() - started) * 1000
    decide = engine.decide

    for ctx in contexts[:500]:  # warm-up
        decide(ctx)
    probe = time.perf_counter_ns()
    for ctx in contexts[:50]:
        decide(ctx)
    per_call_ns = max(1, (time.perf_counter_ns() - probe) // 50)
    n = max(300, min(max_calls, int(budget_s * 1e9 / per_call_ns)))
    sample = [contexts[i % len(contexts)] for i in range(n)]

    gc.collect()
    timings = []
    candidates = 0
    clock = time.perf_counter_ns
    for ctx in sample:
        t0 = clock()
        decision = decide(ctx)
        timings.append(clock() - t0)
        candidates += len(decision.trace)

    started = time.perf_counter()  # throughput without the per-call timer in the loop
    for ctx in sample:
        decide(ctx)
    throughput = n / (time.perf_counter() - started)

    timings.sort()
    return {
        "rules": len(rules),
        "calls": n,
        "compile_ms": compile_ms,
        "candidates": candidates / n,
        "per_s": throughput,
        "p50": percentile(timings, 50) / 1000,
        "p99": percentile(timings, 99) / 1000,
        "mean": statistics.fmean(timings) / 1000,
    }


def table(title: str, rows: list[dict]) -> str:
    head = (
        f"{title}\n"
        f"{'rules':>7} {'calls':>7} {'compile ms':>10} {'rules looked at':>15} "
        f"{'decisions/s':>12} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8}\n"
    )
    lines = [
        f"{r['rules']:>7,} {r['calls']:>7,} {r['compile_ms']:>10.1f} {r['candidates']:>15.1f} "
        f"{r['per_s']:>12,.0f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['mean']:>8.1f}"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="timed decisions per row (fewer if slow)")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timed decisions per row at most")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    setup()
    pinned = pin_to_one_core()
    print(f"Python {platform.python_version()} on {platform.machine()}, {pinned}; seed {args.seed}")
    contexts = calls(5_000, random.Random(args.seed + 1))

    realistic = [
        measure(realistic_rules(n, random.Random(args.seed)), contexts, args.calls, args.budget) for n in SIZES
    ]
    print(table("\nRealistic mix (95% literal server/tool, 5% globs, 20% conditions, 25% role-limited):", realistic))
    wild = [measure(wildcard_rules(n, random.Random(args.seed)), contexts, args.calls, args.budget) for n in SIZES]
    print(table("All rules wildcard (nothing for the index to skip; every rule evaluated):", wild))

    small, mid, big = realistic
    print(
        "Growth, realistic mix, 10 -> 1,000 -> 10,000 rules: rules looked at {:.1f} -> {:.1f} -> {:.1f}; "
        "p50 x{:.1f} then x{:.1f}; mean x{:.1f} then x{:.1f} (rules x100 then x10).".format(
            small["candidates"],
            mid["candidates"],
            big["candidates"],
            mid["p50"] / small["p50"],
            big["p50"] / mid["p50"],
            mid["mean"] / small["mean"],
            big["mean"] / mid["mean"],
        )
    )
    print(f"At 10,000 rules the all-wildcard mean is x{wild[2]['mean'] / big['mean']:.0f} the indexed one.")
    verdict = "meets" if mid["p99"] <= 50 and mid["per_s"] >= 20_000 else "misses"
    print(
        f"Target at 1,000 rules (p99 <= 50 µs, >= 20,000 decisions/s): {verdict} "
        f"(p99 {mid['p99']:.1f} µs, {mid['per_s']:,.0f}/s)."
    )


if __name__ == "__main__":
    main()
