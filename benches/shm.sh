#!/usr/bin/env bash
# The shared-memory transport against the Unix socket, a std ping-pong and the in-process
# engine (issue 13 item 4), in one run on this machine: 1-row churn PREDICTs, concurrency 1,
# the daemon on one core (epoll, engine auto = tract with the tree kernel).
#
#   benches/shm.sh                              # 5 s per figure
#   DURATION=3 BIN=target/release benches/shm.sh   # binaries already built there
#
# Placement: the daemon on SERVER_CORE (0). Shared memory is built for a client on another
# core that polls while the server polls (no syscall per request), so its figure and the
# cross-core socket and ping-pong figures have the client on CLIENT_CORE (1). The socket and
# the ping-pong are also measured with the client on the daemon's core (the issue's baseline
# placement). Raw JSON goes to $OUT (target/bench-shm); a table to stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
S=${SERVER_CORE:-0}
C=${CLIENT_CORE:-1}
NAME=shm
# shellcheck source=benches/common.sh
source benches/common.sh

CHURN=tests/fixtures/models/churn_rf.onnx
ROW20=$(python3 -c 'print(",".join(["0.5"]*20))')

wait_for() { # socket path
    for _ in $(seq 1 300); do [ -S "$1" ] && return 0; sleep 0.05; done
    echo "shm.sh: nothing listens on $1" >&2; exit 1
}

bench() { # name, client core, args...
    local name=$1 core=$2; shift 2
    taskset -c "$core" "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup "$WARMUP" \
        "$@" > "$OUT/$name.json"
}

# --- baselines: the in-process engine, a std ping-pong ---
taskset -c "$S" "$BIN/edgeinfer" bench-engine --json --engine auto --model $CHURN --iters 50000 \
    > "$OUT/engine.json"
ECHO_SOCK=$RUN/echo.sock
taskset -c "$S" "$BIN/edgeinfer" echo-server --socket "$ECHO_SOCK" & PIDS+=($!)
wait_for "$ECHO_SOCK"; sleep 0.2
bench echo_cross "$C" --echo --socket "$ECHO_SOCK"
bench echo_same "$S" --echo --socket "$ECHO_SOCK"

# --- the daemon ---
DSOCK=$RUN/d.sock
EDGEINFER_LOG=warn "$BIN/edgeinferd" --cores "$S" --driver epoll --unix-socket "$DSOCK" \
    --tcp "" --http "" --model churn=$CHURN > "$RUN/d.out" & DPID=$!; PIDS+=($DPID)
wait_for "$DSOCK"; sleep 0.3
bench shm_cross "$C" --shm --socket "$DSOCK" --model churn --input "$ROW20"
bench unix_cross "$C" --socket "$DSOCK" --model churn --input "$ROW20"
bench unix_same "$S" --socket "$DSOCK" --model churn --input "$ROW20"
kill -TERM "$DPID"; wait "$DPID" || true

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
r = {n[:-5]: json.load(open(os.path.join(out, n))) for n in os.listdir(out) if n.endswith(".json")}
e = r["engine"]
print(f"{'figure':46} {'p50 µs':>8} {'p99 µs':>8} {'requests':>9}")
print(f"{'in-process engine (' + e['engine'] + ')':46} {e['p50_us']:8.2f} {e['p99_us']:8.2f}")
rows = [("echo_same", "std ping-pong 128 B, client on the server's core"),
        ("echo_cross", "std ping-pong 128 B, client on another core"),
        ("unix_same", "Unix socket, client on the daemon's core"),
        ("unix_cross", "Unix socket, client on another core"),
        ("shm_cross", "shared memory, client on another core")]
for k, label in rows:
    x = r[k]
    print(f"{label:46} {x['p50_us']:8.2f} {x['p99_us']:8.2f} {x['requests']:9}")
    if x.get("errors"):
        print(f"  {k}: {x['errors']} errors, last: {x.get('last_error')}")
shm, eng = r["shm_cross"]["p50_us"], e["p50_us"]
print(f"shared memory p50 - in-process engine p50 = {shm - eng:+.2f} µs [target ≤ +2]")
for k in ("unix_cross", "unix_same", "echo_cross", "echo_same"):
    print(f"shared memory p50 / {k} p50 = {shm / r[k]['p50_us']:.2f} [target < 1 against the socket]")
PY
