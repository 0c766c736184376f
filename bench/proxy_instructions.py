"""Instructions per allowed tools/call in process, counted by valgrind's callgrind, and Python
function calls per tool call, counted by cProfile: measures of Behavry's own work that this host's
noise does not move.

CPU time per call on this VM moves by ±30 % between runs of the same code (steal time, the other
processes on the two cores); an instruction count moves by well under 1 %, so a change of a few
percent in the work a call does shows. Instructions are not time: a C function that touches
every byte (JSON quoting, hashing) costs more instructions per microsecond than the interpreter's
dispatch, and cache misses and syscalls cost time but few instructions. Use this to compare
versions of the code, and bench/proxy_overhead.py for what a call costs.

Run:  .venv/bin/python bench/proxy_instructions.py [--calls 100] [--top 25] [--no-valgrind]

Set-up: the same database, upstream and allow policy as bench/proxy_overhead.py (database
`behavry_bench_proxy`, created if missing, migrated; the demo upstream on a free port). The calls go
through McpEndpoint in one process, as proxy_overhead.py's in-process line does: the audit appends
on the loop's own PostgreSQL connections, the upstream through proxy/http1.py, no HTTP server.

Callgrind runs the process twice, with --calls and with twice --calls calls after the same warm-up
(30 calls); the difference divided by --calls is the count per call, so start-up, warm-up and
anything done once on the first measured call cancel out. C functions are matched by name only:
callgrind may name the object of the same OpenSSL code differently in two runs (libcrypto.so.3 in
one, cryptography's _rust.abi3.so, which carries the same symbols, in the other), and matching by
object put start-up work of ~80 M instructions at the top of the per-call list. Under
callgrind a call takes about 50 times longer, so the per-process caches (identity and upstream 1 s,
policy version 0.5 s, tool catalog 1 s) are made to last the run: otherwise every few calls would
also count a refresh, which a server at 100 calls/s does a few times a second in all.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import proxy_overhead as po
from _benchlib import ROOT

WARM_UP = 30


def child(token: str, calls: int, profile: str | None) -> None:
    """Run in the measured process: warm up, then `calls` calls (under cProfile if `profile`)."""
    import django

    django.setup()
    import policies.engine
    import proxy.classify
    import proxy.generation
    import proxy.identity
    from proxy.endpoint import McpEndpoint

    proxy.identity.CACHE_SECONDS = policies.engine.REFRESH_SECONDS = proxy.classify._CACHE_SECONDS = 1e9
    proxy.generation.BOUND_SECONDS = 1e9
    endpoint = McpEndpoint()

    async def run() -> None:
        for i in range(WARM_UP):
            await checked(i)
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        for i in range(calls):
            await checked(1000 + i)
        if profiler and profile:
            profiler.disable()
            profiler.dump_stats(profile)

    async def checked(msg_id: int) -> None:
        status, body = await po.endpoint_call(endpoint, token, msg_id)
        problem = po.check_answer(status, {"content-type": "application/json"}, body, msg_id)
        if problem:
            raise SystemExit(f"call {msg_id} failed ({problem}): {body[:300]!r}")

    import uvloop

    uvloop.run(run())


def callgrind(env: dict[str, str], token: str, calls: int, out: Path) -> int:
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", po.PY, __file__]
    cmd += ["--child", token, "--calls", str(calls)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    collected = re.search(r"Collected : ([\d,]+)", done.stderr)
    if done.returncode != 0 or collected is None:
        raise SystemExit(f"callgrind run failed:\n{done.stderr[-3000:]}")
    return int(collected.group(1).replace(",", ""))


def functions(out: Path) -> dict[str, int]:
    """Exclusive instructions per C function name (callgrind_annotate's listing), over all objects."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(out)], capture_output=True, text=True
    ).stdout
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) \([^)]*\)\s+(\S.*?)(?: \[(.*)\])?$", line)
        if match and "PROGRAM TOTALS" not in line:
            name = match.group(2).rsplit(":", 1)[-1].removesuffix("'2")  # recursion level, same function
            counts[name] = counts.get(name, 0) + int(match.group(1).replace(",", ""))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="measured calls (100; callgrind runs 100 and 200)")
    parser.add_argument("--top", type=int, default=25, help="C functions and Python functions listed (25)")
    parser.add_argument("--no-valgrind", action="store_true", help="only the cProfile count")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (callgrind files) and print it")
    parser.add_argument("--child", metavar="TOKEN", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(opts.child, opts.calls, opts.profile)
        return
    if not opts.no_valgrind and not (shutil.which("valgrind") and shutil.which("callgrind_annotate")):
        parser.error("valgrind is not installed (apt install valgrind), or pass --no-valgrind")

    work = Path(tempfile.mkdtemp(prefix="behavry-bench-instr-"))
    env = po.configure_env(str(work))
    upstream = None
    try:
        print(f"database {po.DB_NAME}: {po.ensure_database()}; migrating…")
        subprocess.run([po.PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        import django

        sys.path.insert(0, str(ROOT))
        django.setup()
        port = po.free_port()
        log = work / "upstream.log"
        upstream = po.start_process([po.PY, "-m", "demo.upstream", "--port", str(port)], env, log)
        po.wait_port(upstream, port, log)
        token = po.register(f"http://127.0.0.1:{port}/mcp")[0]
        from django.db import connections

        connections.close_all()

        prof = work / "calls.prof"
        base = [po.PY, __file__, "--child", token]
        subprocess.run([*base, "--calls", "0"], env=env, cwd=ROOT, check=True)  # first contact: catalog, era
        subprocess.run([*base, "--calls", str(opts.calls), "--profile", str(prof)], env=env, cwd=ROOT, check=True)
        stats = pstats.Stats(str(prof))
        per_call = stats.total_calls / opts.calls  # type: ignore[attr-defined]
        print(f"\nPython function calls per tool call (cProfile, {opts.calls} calls): {per_call:,.0f}")
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][1])[: opts.top]  # type: ignore[attr-defined]
        for (path, line, name), (_, ncalls, *_rest) in rows:
            where = f"{Path(path).parent.name}/{Path(path).name}:{line}" if path != "~" else "builtin"
            print(f"  {ncalls / opts.calls:8.1f}  {name} ({where})")

        if opts.no_valgrind:
            return
        base_out, run_out = work / f"callgrind.{opts.calls}", work / f"callgrind.{2 * opts.calls}"
        empty = callgrind(env, token, opts.calls, base_out)
        full = callgrind(env, token, 2 * opts.calls, run_out)
        print(
            f"\nInstructions per tool call (callgrind, {2 * opts.calls} calls minus {opts.calls}):"
            f" {(full - empty) / opts.calls:,.0f}"
        )
        before, after = functions(base_out), functions(run_out)
        by_function = {name: (count - before.get(name, 0)) / opts.calls for name, count in after.items()}
        print(f"  top {opts.top} C functions by exclusive instructions per call:")
        for name, count in sorted(by_function.items(), key=lambda kv: -kv[1])[: opts.top]:
            print(f"  {count:10,.0f}  {name}")
    finally:
        po.stop_process(upstream)
        if opts.keep:
            print(f"work directory kept: {work} (callgrind_annotate --tree=caller {work}/callgrind.N)")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
