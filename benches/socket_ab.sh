#!/usr/bin/env bash
# Concurrency-1 latency on one core, before and after, interleaved in one run (issue 13, the
# socket's latency targets): each round measures the std ping-pong baseline (128 B over Unix,
# `edgeinfer echo-server` + `bench --echo`) and then, for each build in $BINS, a fresh
# edgeinferd (`--cores $PIN_CORE`, $DRIVER) answering 1-row churn_rf PREDICTs over the Unix
# socket, client on the same core. The in-process engine that `auto` picks (tract, churn_rf,
# 1 row) is measured once. Prints each round, then per build the median p50 over rounds, its
# ratio to (ping-pong + engine) [target <= 1.3] and its overhead over ping-pong + engine
# [target <= 3 us], and the daemon's CPU time per request.
#
#   BINS="before=/tmp/before-1b1b432 after=target/release" benches/socket_ab.sh
#   ROUNDS=6 DURATION=3 DRIVER=io_uring BINS="..." benches/socket_ab.sh
#
# Without BINS: the release build of this tree alone (built here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-2}
DRIVER=${DRIVER:-epoll}
PIN=${PIN_CORE:-0}
NAME=socket_ab
if [ -z "${BINS:-}" ]; then
    # shellcheck source=benches/common.sh
    source benches/common.sh
    BINS="this=$BIN"
else
    BIN=${BINS%% *}; BIN=${BIN#*=}
    # shellcheck source=benches/common.sh
    source benches/common.sh
fi

ESOCK=$RUN/echo.sock
taskset -c "$PIN" "$BIN/edgeinfer" echo-server --socket "$ESOCK" > /dev/null & PIDS+=($!)
wait_for "$ESOCK"
echo "socket_ab.sh: commit $(git rev-parse --short HEAD), driver $DRIVER, core $PIN, $ROUNDS rounds of $DURATION s; load before $(cut -d' ' -f1-3 /proc/loadavg)"
taskset -c "$PIN" "$BIN/edgeinfer" bench-engine --json --engine tract --model $CHURN --rows 1 --iters 200000 > "$OUT/engine.json"
for r in $(seq 1 "$ROUNDS"); do
    taskset -c "$PIN" "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup 0.5 --echo --socket "$ESOCK" > "$OUT/echo_$r.json"
    for spec in $BINS; do
        label=${spec%%=*} dir=${spec#*=}
        sock=$RUN/d-$label.sock
        rm -f "$sock"
        EDGEINFER_LOG=warn taskset -c "$PIN" "$dir/edgeinferd" --driver "$DRIVER" --cores "$PIN" \
            --unix-socket "$sock" --http "" --model churn=$CHURN > "$RUN/d-$label.out" 2>&1 &
        dpid=$!; PIDS+=($dpid)
        wait_for "$sock"
        taskset -c "$PIN" "$dir/edgeinfer" bench --json --duration 0.5 --warmup 0 --socket "$sock" \
            --model churn --input "$ROW20" > /dev/null
        t0=$(awk '{print $14 + $15}' "/proc/$dpid/stat")
        taskset -c "$PIN" "$dir/edgeinfer" bench --json --duration "$DURATION" --warmup 0 --socket "$sock" \
            --model churn --input "$ROW20" > "$OUT/${label}_$r.json"
        t1=$(awk '{print $14 + $15}' "/proc/$dpid/stat")
        echo "$t0 $t1" > "$OUT/${label}_$r.cpu"
        kill -TERM "$dpid"; wait "$dpid" || true
    done
done
python3 - "$OUT" "$ROUNDS" "$TICKS" "$BINS" << 'PY'
import json, os, statistics, sys
out, rounds, ticks, bins = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
j = lambda n: json.load(open(os.path.join(out, n + ".json")))
labels = [b.split("=", 1)[0] for b in bins]
eng = j("engine")["p50_us"]
for r in range(1, rounds + 1):
    print(f"round {r}: ping-pong {j(f'echo_{r}')['p50_us']:6.2f}"
          + "".join(f" | {l} {j(f'{l}_{r}')['p50_us']:6.2f}" for l in labels))
echo = statistics.median(j(f"echo_{r}")["p50_us"] for r in range(1, rounds + 1))
print(f"medians: ping-pong {echo:.2f} us, in-process engine {eng:.2f} us (base {echo + eng:.2f})")
for l in labels:
    p = statistics.median(j(f"{l}_{r}")["p50_us"] for r in range(1, rounds + 1))
    cpu = []
    for r in range(1, rounds + 1):
        t0, t1 = map(int, open(os.path.join(out, f"{l}_{r}.cpu")).read().split())
        n = j(f"{l}_{r}")["requests"]
        cpu.append((t1 - t0) / ticks / n * 1e6 if n else float("nan"))
    print(f"{l:8} p50 {p:6.2f} us = {p / (echo + eng):.2f} x (ping-pong + engine) [<= 1.3]; "
          f"{p - echo - eng:+.2f} us over ping-pong + engine [<= 3]; {p - echo:+.2f} us over the ping-pong; "
          f"daemon CPU {statistics.median(cpu):.2f} us/request")
PY
echo "load after $(cut -d' ' -f1-3 /proc/loadavg)"
