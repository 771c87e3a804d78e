#!/usr/bin/env bash
# Serving figures of the serving issue, in one run, against baselines measured beside them:
#   - loopback ping-pong (edgeinfer echo-server + bench --echo), Unix and TCP;
#   - in-process ONNX Runtime (edgeinfer bench-engine --engine ort-cpu);
#   - edgeinferd (ORT on CPU) at concurrency 1: churn RandomForest 1 row, identity model,
#     over Unix and TCP, on the epoll and io_uring drivers;
#   - throughput at saturation with and without dynamic batching.
# Prints a table and the ratios the targets are stated in; raw JSON goes to $OUT.
#
#   benches/serve.sh                 # 5 s per measurement
#   DURATION=10 benches/serve.sh
#
# Needs release builds (built here) and ORT_DYLIB_PATH (default: .cache/ort/...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SAT_CONC=${SAT_CONC:-32}
# Concurrency-1 runs put the server and the load generator on one core: on this VM a
# cross-core wakeup alone costs ~30 µs and varies run to run, which would swamp what is
# measured. Saturation runs use every core.
PIN=${PIN_CORE:-0}
NAME=serve
# shellcheck source=benches/common.sh
source benches/common.sh

IDENT=tests/fixtures/models/identity.onnx
ROW32=$(python3 -c 'print(",".join(["0.25"]*32))')

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bench() { # name, args...
    local name=$1; shift
    taskset -c "${CLIENT_CPUS:-$PIN}" "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup "$WARMUP" "$@" > "$OUT/$name.json"
}

# --- baselines ---
ECHO_SOCK=$RUN/echo.sock ECHO_PORT=$(free_port)
taskset -c "$PIN" "$BIN/edgeinfer" echo-server --socket "$ECHO_SOCK" & PIDS+=($!)
taskset -c "$PIN" "$BIN/edgeinfer" echo-server --addr "127.0.0.1:$ECHO_PORT" & PIDS+=($!)
wait_for "$ECHO_SOCK"; sleep 0.2
bench echo_unix --echo --socket "$ECHO_SOCK"
bench echo_tcp --echo --addr "127.0.0.1:$ECHO_PORT"
taskset -c "$PIN" "$BIN/edgeinfer" bench-engine --json --engine ort-cpu --model $CHURN --iters 20000 > "$OUT/engine_churn.json"
taskset -c "$PIN" "$BIN/edgeinfer" bench-engine --json --engine ort-cpu --model $IDENT --iters 20000 > "$OUT/engine_identity.json"

# --- the daemon, one driver at a time ---
daemon() { # driver, extra args...
    local driver=$1; shift
    DSOCK=$RUN/d-$driver.sock DPORT=$(free_port)
    EDGEINFER_LOG=warn "$BIN/edgeinferd" --driver "$driver" --engine ort-cpu \
        --unix-socket "$DSOCK" --tcp "127.0.0.1:$DPORT" \
        --http "" --model churn=$CHURN --model identity=$IDENT "$@" > "$RUN/d-$driver.out" &
    DPID=$!; PIDS+=($DPID)
    wait_for "$DSOCK"; sleep 0.3
}
stop_daemon() { kill -TERM "$DPID"; wait "$DPID" || true; }

ALL=$(seq -s, 0 $(( $(nproc) - 1 )))
for driver in epoll io_uring; do
    daemon $driver --cores "$PIN"
    bench "churn_unix_$driver" --socket "$DSOCK" --model churn --input "$ROW20"
    bench "churn_tcp_$driver" --addr "127.0.0.1:$DPORT" --model churn --input "$ROW20"
    bench "identity_unix_$driver" --socket "$DSOCK" --model identity --input "$ROW32"
    bench "identity_tcp_$driver" --addr "127.0.0.1:$DPORT" --model identity --input "$ROW32"
    stop_daemon
    daemon $driver
    CLIENT_CPUS=$ALL bench "sat_unix_$driver" --socket "$DSOCK" --model churn --input "$ROW20" --concurrency "$SAT_CONC"
    stop_daemon
done

# Saturation with batching (epoll, the default).
daemon epoll --max-batch 16 --max-delay-us 100
CLIENT_CPUS=$ALL bench sat_batched_unix --socket "$DSOCK" --model churn --input "$ROW20" --concurrency "$SAT_CONC"
CLIENT_CPUS=$ALL bench sat_batched_rows8_unix --socket "$DSOCK" --model churn --input "$ROW20" --rows 8 --concurrency "$SAT_CONC"
stop_daemon

python3 - "$OUT" "$DURATION" "$SAT_CONC" <<'EOF'
import json, sys, os, subprocess
out, duration, conc = sys.argv[1], sys.argv[2], sys.argv[3]
r = {f[:-5]: json.load(open(os.path.join(out, f))) for f in os.listdir(out) if f.endswith(".json")}
def p(name, q="p50_us"): return r[name][q]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"edgeinfer serving figures: commit {commit}, {os.cpu_count()} cores, {duration} s per run, saturation concurrency {conc}")
print("concurrency 1: server and client on one core; saturation: every core")
print()
print(f"{'measurement':44} {'p50 µs':>9} {'p99 µs':>9} {'req/s':>10}")
rows = [
    ("echo ping-pong 128 B, Unix", "echo_unix"), ("echo ping-pong 128 B, TCP", "echo_tcp"),
]
for d in ("epoll", "io_uring"):
    rows += [(f"churn_rf 1 row, Unix, {d}", f"churn_unix_{d}"), (f"churn_rf 1 row, TCP, {d}", f"churn_tcp_{d}"),
             (f"identity [1,32], Unix, {d}", f"identity_unix_{d}"), (f"identity [1,32], TCP, {d}", f"identity_tcp_{d}"),
             (f"churn_rf saturation c={conc}, Unix, {d}", f"sat_unix_{d}")]
rows += [(f"churn_rf saturation c={conc}, batched (16, 100 µs)", "sat_batched_unix"),
         (f"churn_rf 8 rows/req c={conc}, batched", "sat_batched_rows8_unix")]
for label, k in rows:
    x = r[k]
    print(f"{label:44} {x['p50_us']:9.1f} {x['p99_us']:9.1f} {x['throughput_rps']:10.0f}" + (f"   errors {x['errors']}" if x['errors'] else ""))
for k in ("engine_churn", "engine_identity"):
    x = r[k]
    print(f"{'in-process ' + x['engine'] + ' ' + os.path.basename(x['model']):44} {x['p50_us']:9.1f} {x['p99_us']:9.1f}")
print()
ort = r["engine_churn"]["p50_us"]
for d in ("epoll", "io_uring"):
    for t in ("unix", "tcp"):
        base = p(f"echo_{t}") + ort
        got = p(f"churn_{t}_{d}")
        print(f"churn {t:4} {d:8}: p50 {got:.1f} µs = {got/base:.2f} × (ping-pong {p(f'echo_{t}'):.1f} + ORT {ort:.1f}) [target ≤ 1.3];"
              f" p99/p50 {p(f'churn_{t}_{d}', 'p99_us')/got:.2f} [≤ 3]")
        ident = p(f"identity_{t}_{d}")
        print(f"identity {t:4} {d:8}: {ident - p(f'echo_{t}'):+.1f} µs over ping-pong (in-process ORT identity {r['engine_identity']['p50_us']:.1f} µs) [target ≤ 3]")
print(f"rows/s at saturation: unbatched {r['sat_unix_epoll']['throughput_rps']:.0f}, batched {r['sat_batched_unix']['throughput_rps']:.0f},"
      f" batched 8 rows/request {8 * r['sat_batched_rows8_unix']['throughput_rps']:.0f} [target ≥ 150000 with batching]")
EOF
