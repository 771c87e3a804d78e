#!/usr/bin/env bash
# The shared-memory transport against the Unix socket, a std ping-pong and the in-process
# engine (issue 13 item 4), all in one run on this machine: 1-row churn PREDICTs at
# concurrency 1, the daemon on one core (epoll, engine auto = tract with the tree kernel).
#
#   benches/shm.sh                                  # 5 s per figure
#   DURATION=3 BIN=target/release benches/shm.sh    # binaries already built there
#
# Placements (the daemon on SERVER_CORE, 0):
#   - "across cores": the client on CLIENT_CORE (1). This is the configuration the target is
#     about: both sides poll the rings (server.shm.spin_us and the client's spin, 50 µs each),
#     so a request should cost no syscall at all;
#   - "same core": the client on the daemon's core. Neither side can run while the other
#     spins, so both see the peer's CPU in the control page and sleep on the doorbell at once;
#   - "other core, client spin 0" (`bench --shm-spin-us 0`): what the client's polling buys.
# For each shared-memory run the daemon's and the client's syscalls, context switches and
# CPU time per request are counted (perf stat; "n/a" where perf is not installed).
# Raw JSON goes to $OUT (target/bench-shm); a table to stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
S=${SERVER_CORE:-0}
C=${CLIENT_CORE:-1}
NAME=shm
# shellcheck source=benches/common.sh
source benches/common.sh

PERF=$(command -v perf || true)

# counted PID NAME: syscalls, context switches and CPU time (task-clock) of PID over the
# measured seconds (started after the warm-up), into $OUT/NAME.perf; nothing without perf.
counted() {
    local pid=$1 name=$2
    sleep "$WARMUP"
    [ -n "$PERF" ] || return 0
    "$PERF" stat -x, -e raw_syscalls:sys_enter,context-switches,task-clock -p "$pid" \
        -- sleep "$DURATION" 2> "$OUT/$name.perf" || true
}

bench() { # name, client core, args...
    local name=$1 core=$2; shift 2
    taskset -c "$core" "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup "$WARMUP" \
        "$@" > "$OUT/$name.json"
}

# A bench run with the daemon's and the client's costs counted beside it.
bench_counted() { # name, client core, args...
    local name=$1 core=$2; shift 2
    taskset -c "$core" "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup "$WARMUP" \
        "$@" > "$OUT/$name.json" & local bp=$!
    counted "$DPID" "${name}.daemon" & local cd=$!
    counted "$bp" "${name}.client" & local cc=$!
    wait "$bp"; wait "$cd" "$cc" || true
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
bench_counted shm_cross "$C" --shm --socket "$DSOCK" --model churn --input "$ROW20"
bench_counted shm_same "$S" --shm --socket "$DSOCK" --model churn --input "$ROW20"
# What the client's polling buys: across cores, the client sleeping on the doorbell at once
# (skipped for an older client without the flag, so earlier binaries can run beside).
if "$BIN/edgeinfer" bench --help | grep -q -- --shm-spin-us; then
    bench_counted shm_cross_nospin "$C" --shm --shm-spin-us 0 --socket "$DSOCK" \
        --model churn --input "$ROW20"
fi
bench unix_cross "$C" --socket "$DSOCK" --model churn --input "$ROW20"
bench unix_same "$S" --socket "$DSOCK" --model churn --input "$ROW20"
kill -TERM "$DPID"; wait "$DPID" || true

python3 - "$OUT" "$DURATION" <<'PY'
import json, os, subprocess, sys
out, duration = sys.argv[1], float(sys.argv[2])
r = {n[:-5]: json.load(open(os.path.join(out, n))) for n in os.listdir(out) if n.endswith(".json")}
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
print(f"shm.sh: commit {commit}, {duration:g} s per figure, load average "
      f"{' '.join(open('/proc/loadavg').read().split()[:3])}")
e = r["engine"]
print(f"{'figure':50} {'p50 µs':>8} {'p99 µs':>8} {'requests':>9}")
print(f"{'in-process engine (' + e['engine'] + ')':50} {e['p50_us']:8.2f} {e['p99_us']:8.2f}")
rows = [("echo_same", "std ping-pong 128 B, client on the server's core"),
        ("echo_cross", "std ping-pong 128 B, client on another core"),
        ("unix_same", "Unix socket, client on the daemon's core"),
        ("unix_cross", "Unix socket, client on another core"),
        ("shm_same", "shared memory, client on the daemon's core"),
        ("shm_cross", "shared memory, client on another core (spinning)"),
        ("shm_cross_nospin", "shared memory, other core, client spin 0")]
for k, label in rows:
    if k not in r:
        continue
    x = r[k]
    print(f"{label:50} {x['p50_us']:8.2f} {x['p99_us']:8.2f} {x['requests']:9}")
    if x.get("errors"):
        print(f"  {k}: {x['errors']} errors, last: {x.get('last_error')}")

def costs(name):
    """Syscalls, context switches and CPU µs per request of the measured window ("n/a"
    without perf)."""
    served = r[name.split(".")[0]]["throughput_rps"] * duration
    got = {}
    try:
        for line in open(os.path.join(out, name + ".perf")):
            f = line.strip().split(",")
            if len(f) > 2 and f[0].replace(".", "").isdigit():
                got[f[2].split(":")[0]] = float(f[0])
    except FileNotFoundError:
        pass
    per = lambda k, scale=1: (f"{got[k] * scale / served:.3f}" if k in got and served
                              else "n/a")
    # task-clock is in ms.
    return per("raw_syscalls"), per("context-switches"), per("task-clock", 1e3)

print(f"{'per request':50} {'syscalls':>9} {'ctx sw':>8} {'CPU µs':>8}")
for k in [k for k in ("shm_cross", "shm_same", "shm_cross_nospin") if k in r]:
    for side in ("daemon", "client"):
        s, c, u = costs(f"{k}.{side}")
        print(f"  {k + ' ' + side:48} {s:>9} {c:>8} {u:>8}")
shm, eng = r["shm_cross"]["p50_us"], e["p50_us"]
print(f"shared memory across cores p50 - in-process engine p50 = {shm - eng:+.2f} µs [target ≤ +2]")
for k in ("echo_cross", "echo_same", "unix_cross", "unix_same"):
    print(f"shared memory across cores p50 / {k} p50 = {shm / r[k]['p50_us']:.2f} [target < 1]")
print(f"shared memory same core p50 / unix_same p50 = "
      f"{r['shm_same']['p50_us'] / r['unix_same']['p50_us']:.2f}")
PY
