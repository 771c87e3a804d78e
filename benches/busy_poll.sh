#!/usr/bin/env bash
# Busy-polling (`server.busy_poll_us`, issue 13 item 2) and the concurrency-1 latency figures,
# in one run against baselines measured beside them:
#   - a std blocking ping-pong of 128 B over a Unix socket (`edgeinfer echo-server` +
#     `bench --echo`) and the in-process engine that `auto` picks (tract, churn_rf, 1 row);
#   - edgeinferd (`--cores $DAEMON_CPU`, epoll and io_uring), 1-row churn PREDICTs over Unix:
#     client on the daemon's core ("one core") and on the other core ("across cores"), with
#     busy-polling off and at each of $WINDOWS µs;
#   - the daemon's CPU time (utime + stime from /proc/PID/stat) per second of each run: what
#     busy-polling costs.
#
#   benches/busy_poll.sh                       # 5 s per measurement
#   DURATION=3 WINDOWS="20 50 100" BIN=target/release benches/busy_poll.sh
#
# Raw JSON to $OUT; a table to stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
WINDOWS=${WINDOWS:-20 50 100}
DRIVERS=${DRIVERS:-epoll io_uring}
DAEMON_CPU=${DAEMON_CPU:-0}
OTHER_CPU=${OTHER_CPU:-1}
NAME=busy_poll
# shellcheck source=benches/common.sh
source benches/common.sh

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # name, client cpu, bench args...
    local name=$1 cpu=$2; shift 2
    local t0 t1
    t0=$(cpu_ticks "$DPID")
    taskset -c "$cpu" "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup "$WARMUP" "$@" > "$OUT/$name.json"
    t1=$(cpu_ticks "$DPID")
    # Daemon CPU per wall second over warm-up and measurement, in % of one core.
    python3 -c "import sys; print(round(100 * ($t1 - $t0) / $TICKS / ($DURATION + $WARMUP), 1))" > "$OUT/$name.cpu"
}

# --- baselines ---
ESOCK=$RUN/echo.sock
taskset -c "$DAEMON_CPU" "$BIN/edgeinfer" echo-server --socket "$ESOCK" & PIDS+=($!); DPID=$!
wait_for "$ESOCK"; sleep 0.2
run echo_one "$DAEMON_CPU" --echo --socket "$ESOCK"
run echo_across "$OTHER_CPU" --echo --socket "$ESOCK"
taskset -c "$DAEMON_CPU" "$BIN/edgeinfer" bench-engine --json --engine tract --model $CHURN --rows 1 --iters 200000 > "$OUT/engine.json"

for driver in $DRIVERS; do
    for w in 0 $WINDOWS; do
        DSOCK=$RUN/d-$driver-$w.sock
        EDGEINFER_LOG=warn "$BIN/edgeinferd" --driver "$driver" --cores "$DAEMON_CPU" --busy-poll-us "$w" \
            --unix-socket "$DSOCK" --http "" --model churn=$CHURN > "$RUN/d-$driver-$w.out" 2>&1 &
        DPID=$!; PIDS+=($DPID)
        wait_for "$DSOCK"; sleep 0.3
        run "one_${driver}_$w" "$DAEMON_CPU" --socket "$DSOCK" --model churn --input "$ROW20"
        run "across_${driver}_$w" "$OTHER_CPU" --socket "$DSOCK" --model churn --input "$ROW20"
        # Idle: what a busy-polling daemon costs with no client at all.
        t0=$(cpu_ticks "$DPID"); sleep 2; t1=$(cpu_ticks "$DPID")
        python3 -c "print(round(100 * ($t1 - $t0) / $TICKS / 2, 1))" > "$OUT/idle_${driver}_$w.cpu"
        kill -TERM "$DPID"; wait "$DPID" || true
    done
done

python3 - "$OUT" "$DURATION" "$DRIVERS" "0 $WINDOWS" << 'PY'
import json, os, subprocess, sys
out, duration, drivers, windows = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
j = lambda n: json.load(open(os.path.join(out, n + ".json")))
cpu = lambda n: float(open(os.path.join(out, n + ".cpu")).read())
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"busy_poll.sh: commit {commit}, {duration} s per run; uptime: {open('/proc/loadavg').read().split()[:3]}")
e1, ea, eng = j("echo_one"), j("echo_across"), j("engine")
print(f"baseline ping-pong 128 B Unix: one core p50 {e1['p50_us']} p99 {e1['p99_us']}; across cores p50 {ea['p50_us']} p99 {ea['p99_us']}")
print(f"baseline in-process tract churn_rf 1 row: p50 {eng['p50_us']} µs")
print(f"{'driver':9} {'busy µs':>7} | {'one core p50':>12} {'p99':>7} {'cpu%':>5} | {'across p50':>10} {'p99':>7} {'cpu%':>5} {'req/s':>7} | {'idle cpu%':>9}")
for d in drivers:
    for w in windows:
        o, a = j(f"one_{d}_{w}"), j(f"across_{d}_{w}")
        print(f"{d:9} {w:>7} | {o['p50_us']:12.1f} {o['p99_us']:7.1f} {cpu(f'one_{d}_{w}'):5.1f} | "
              f"{a['p50_us']:10.1f} {a['p99_us']:7.1f} {cpu(f'across_{d}_{w}'):5.1f} {a['throughput_rps']:7.0f} | {cpu(f'idle_{d}_{w}'):9.1f}")
for d in drivers:
    for where, echo in (("one", e1), ("across", ea)):
        for w in windows:
            p = j(f"{where}_{d}_{w}")["p50_us"]
            base = echo["p50_us"] + eng["p50_us"]
            print(f"{d:9} {where:6} busy {w:>3}: p50 {p:.1f} = {p / base:.2f} x (ping-pong {echo['p50_us']} + engine {eng['p50_us']}) [<= 1.3]; "
                  f"{p - echo['p50_us']:+.1f} us over the ping-pong [<= 3 + engine]")
PY
