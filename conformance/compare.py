"""Compare `conformance server -o DIR` result folders check by check, and print the scoreboard.

The expected-failures baselines work per scenario: a scenario that fails directly (a fixture name
server-everything lacks) and also fails through Behavry, but for a different reason, would pass the
baselines unnoticed. This compares, scenario by scenario, the outcome of every check and the error
text of every failed check, and exits 1 on any difference that is not explained below.

    python compare.py --direct R/direct --control R/forwarder-control --behavry R/behavry \
        --allow baseline-behavry.yml

- control (the header-injecting forwarder straight to server-everything) must equal direct exactly.
- behavry must equal direct, except for the scenarios in EXPECTED_DIFFERENCES (where Behavry is
  deliberately stricter than server-everything) and the entries of --allow's file whose comment says
  "PROXY BUG" (known proxy bugs, reported but not counted until fixed).

Its output avoids the "N passed, N failed" line form on purpose: CI reads such lines as a test
runner's verdict, and most failures here are expected ones.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

SCENARIO_DIR = re.compile(r"^server-(?P<name>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
# Text that differs between any two runs (ids the server makes up, ports, timings) and says nothing.
VOLATILE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"\d+(\.\d+)?\s?ms\b"), "<n> ms"),
]
# Scenarios where Behavry legitimately scores differently from server-everything.
EXPECTED_DIFFERENCES = {
    "dns-rebinding-protection": (
        "Behavry checks Host/Origin (proxy/endpoint.py _check_host_and_origin: 403 for Host evil.example.com);"
        " server-everything checks neither, so it fails this scenario directly"
    ),
}
# How a check counts. INFO entries are wire logs or "optional feature not used" notes: a server may
# answer a request with JSON instead of SSE (Behavry does for everything but tools/call), and then
# the suite reports its SSE-only check as INFO instead of SUCCESS. Neither is a failure.
OUTCOME = {"SUCCESS": "ok", "INFO": "ok", "WARNING": "warning", "FAILURE": "FAILURE"}


def normalise(text: str) -> str:
    for pattern, replacement in VOLATILE:
        text = pattern.sub(replacement, text)
    return text


Results = dict[str, dict[str, tuple[str, str]]]


def load(folder: Path) -> Results:
    """{scenario: {check id: (outcome, error text)}}."""
    results: Results = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = SCENARIO_DIR.match(path.name)
        if not match or not (path / "checks.json").is_file():
            continue
        checks: dict[str, tuple[str, str]] = {}
        for check in json.loads((path / "checks.json").read_text()):
            outcome = OUTCOME.get(check.get("status"), str(check.get("status")))
            if check.get("status") == "INFO" and check["id"] in ("outgoing-request", "incoming-response"):
                continue  # wire log
            error = normalise(check.get("errorMessage") or "") if outcome != "ok" else ""
            checks[check["id"]] = (outcome, error)
        results[match["name"]] = checks
    return results


def scenario_passes(checks: dict[str, tuple[str, str]]) -> bool:
    return all(outcome != "FAILURE" for outcome, _ in checks.values())


def differences(reference: Results, candidate: Results) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for scenario in sorted(set(reference) | set(candidate)):
        ref, cand = reference.get(scenario), candidate.get(scenario)
        if ref is None or cand is None:
            found[scenario] = [f"  ran only in the {'second' if ref is None else 'first'} run"]
            continue
        lines = []
        for check in sorted(set(ref) | set(cand)):
            a, b = ref.get(check, ("ok", "")), cand.get(check, ("ok", ""))  # absent = nothing wrong
            if a != b:
                lines.append(f"  {check}:")
                lines.append(f"    direct:  {a[0]} {a[1]!r}" if a[1] else f"    direct:  {a[0]}")
                lines.append(f"    other:   {b[0]} {b[1]!r}" if b[1] else f"    other:   {b[0]}")
        if lines:
            found[scenario] = lines
    return found


def known_proxy_bugs(baseline: Path) -> set[str]:
    """Scenario entries whose comment block just above them says PROXY BUG."""
    names, comment = set(), ""
    for line in baseline.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment += stripped
        elif stripped.startswith("- "):
            if "PROXY BUG" in comment:
                names.add(stripped[2:].strip())
            comment = ""
        else:
            comment = ""
    return names


def tally(results: Results) -> str:
    scenarios = sum(scenario_passes(c) for c in results.values())
    checks = sum(outcome == "ok" for c in results.values() for outcome, _ in c.values())
    total = sum(len(c) for c in results.values())
    return f"{scenarios}/{len(results)} scenarios pass ({checks}/{total} checks ok)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--direct", type=Path, required=True)
    parser.add_argument("--behavry", type=Path, required=True)
    parser.add_argument("--control", type=Path)
    parser.add_argument("--allow", type=Path, help="baseline whose PROXY BUG entries are known differences")
    ns = parser.parse_args()
    runs = {"direct": load(ns.direct), "behavry": load(ns.behavry)}
    if ns.control:
        runs["control"] = load(ns.control)
    empty = [name for name, results in runs.items() if not results]
    if empty:
        print(f"compare: no results for {', '.join(empty)}")
        return 1
    direct = runs["direct"]

    print(f"{'scenario':34} {'direct':8} {'behavry':8}" + (" control" if ns.control else ""))
    for scenario in sorted(set().union(*runs.values())):
        cells = []
        for name in ("direct", "behavry", "control"):
            if name in runs:
                checks = runs[name].get(scenario)
                cells.append("-" if checks is None else ("pass" if scenario_passes(checks) else "FAIL"))
        print(f"{scenario:34} " + " ".join(f"{cell:8}" for cell in cells).rstrip())
    for name, results in runs.items():
        print(f"compare: {name}: {tally(results)}")

    bad = 0
    allowed = known_proxy_bugs(ns.allow) if ns.allow else set()
    for scenario, lines in differences(direct, runs["behavry"]).items():
        if scenario in EXPECTED_DIFFERENCES:
            print(f"compare: expected difference, {scenario}: {EXPECTED_DIFFERENCES[scenario]}")
        elif scenario in allowed:
            print(f"compare: known proxy bug (baseline-behavry.yml), {scenario}; other = through Behavry")
            print("\n".join(lines))
        else:
            bad += 1
            print(f"compare: DIFFERENCE direct vs Behavry, {scenario}; other = through Behavry")
            print("\n".join(lines))
    if ns.control:
        for scenario, lines in differences(direct, runs["control"]).items():
            bad += 1
            print(f"compare: DIFFERENCE direct vs forwarder control, {scenario}; other = via inject_auth.py")
            print("\n".join(lines))
    print(f"compare: {bad} unexplained difference(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
