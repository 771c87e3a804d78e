#!/usr/bin/env bash
# Throughput with 1-row requests on every core (issue 13 item 5): edgeinferd on all cores,
# `edgeinfer bench` on the same cores, closed loop, churn_rf 1 row per PREDICT over Unix.
# Each run prints rows/s, p50/p99 and the daemon's CPU per request (utime + stime from
# /proc/PID/stat over the run), for the default generator (one blocking thread per
# connection) and the poll(2) one (`--threads`), unbatched and batched (16 rows, 100 µs);
# and, on their own lines beside the unpipelined ones, the poll(2) generator with several
# requests outstanding per connection (`--pipeline D`: each still a 1-row PREDICT answered on
# its own).
#
#   benches/throughput.sh                 # 4 s per run
#   DURATION=3 BIN=target/release benches/throughput.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-4}
NAME=throughput
# shellcheck source=benches/common.sh
source benches/common.sh

run() { # label, daemon flags (one word or ""), bench flags...
    local label=$1 dx=$2; shift 2
    local sock=$RUN/d.sock t0 t1 s0 s1
    rm -f "$sock"
    # shellcheck disable=SC2086 # $dx: flags, word-split on purpose
    EDGEINFER_LOG=warn "$BIN/edgeinferd" --unix-socket "$sock" --http "" --model churn=$CHURN $dx \
        > "$RUN/d.out" 2>&1 &
    local dpid=$!; PIDS+=($dpid)
    for _ in $(seq 1 300); do [ -S "$sock" ] && break; sleep 0.05; done
    sleep 0.3
    t0=$(awk '{print $14 + $15}' "/proc/$dpid/stat"); s0=$(date +%s.%N)
    "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup 0.5 --socket "$sock" \
        --model churn --input "$ROW20" "$@" > "$OUT/run.json"
    t1=$(awk '{print $14 + $15}' "/proc/$dpid/stat"); s1=$(date +%s.%N)
    kill -TERM "$dpid"; wait "$dpid" || true
    python3 - "$OUT/run.json" "$label" "$t0" "$t1" "$s0" "$s1" "$TICKS" << 'PY'
import json, sys
f, label, t0, t1, s0, s1, ticks = sys.argv[1:]
d = json.load(open(f))
cores = (int(t1) - int(t0)) / int(ticks) / (float(s1) - float(s0))
rps = max(d["throughput_rps"], 1)
print(f"{label:46} rows/s {d['throughput_rps']:8.0f}  p50 {d['p50_us']:7.1f}  p99 {d['p99_us']:8.1f}"
      f"  errors {d['errors']}  daemon {cores:.2f} cores = {cores * 1e6 / rps:.1f} µs CPU/request")
PY
}

echo "throughput.sh: commit $(git rev-parse --short HEAD), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
run "c=32, thread per connection" "" --concurrency 32
run "c=32, thread per connection, batched 16/100us" "--max-batch 16 --max-delay-us 100" --concurrency 32
run "c=32, --threads 2" "" --concurrency 32 --threads 2
run "c=16, --threads 2" "" --concurrency 16 --threads 2
run "c=8, --threads 1" "" --concurrency 8 --threads 1
run "c=16, --threads 2, busy-poll 50 us" "--busy-poll-us 50" --concurrency 16 --threads 2
run "c=32, --threads 2, batched 16/100us" "--max-batch 16 --max-delay-us 100" --concurrency 32 --threads 2
# Pipelined: 1-row requests, each answered on its own, several outstanding per connection.
run "c=16, --threads 2, pipeline 4" "" --concurrency 16 --threads 2 --pipeline 4
run "c=8, --threads 2, pipeline 8" "" --concurrency 8 --threads 2 --pipeline 8
run "c=16, --threads 2, pipeline 8" "" --concurrency 16 --threads 2 --pipeline 8
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
