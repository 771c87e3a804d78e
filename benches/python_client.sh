#!/usr/bin/env bash
# Python client figures of issue 12, in one run against one release daemon (the embedded
# demo model, churn, one row of 20 features; daemon pinned to core 0, every client to core 1):
#   - Client.predict (Unix socket), concurrency 1: p50/p99, beside `edgeinfer bench` (the Rust
#     client, the baseline) and tritonclient.http over our KServe v2 endpoint;
#   - AsyncClient pipelined throughput, $WINDOW requests in flight on one connection;
#   - the client's per-call codec work by hand against the `protobuf` package (upb).
# Raw JSON goes to $OUT; a table to stdout.
#
#   benches/python_client.sh                 # 5 s per measurement
#   DURATION=10 WINDOW=256 benches/python_client.sh
#
# Needs release builds (built here), ORT_DYLIB_PATH (default .cache/ort/...), python3; the
# venvs come from tools/ci/provision*.sh, plus .cache/venv-client-bench for protobuf.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
WINDOW=${WINDOW:-128}
NAME=python_client
# shellcheck source=benches/common.sh
source benches/common.sh

bash tools/ci/provision.sh          # .cache/venv-test: tritonclient[http]
bash tools/ci/provision-python.sh   # .cache/venv-client: the client
PY=$ROOT/.cache/venv-client/bin/python
TRITON_PY=$ROOT/.cache/venv-test/bin/python
BENCH=$ROOT/.cache/venv-client-bench
if [ ! -x "$BENCH/bin/python" ]; then python3 -m venv "$BENCH"; fi
"$BENCH/bin/python" -m pip install -q --disable-pip-version-check numpy==2.4.6 protobuf==7.36.2 flit-core==4.2.0
"$BENCH/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall ./python

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port)
SOCK=$RUN/d.sock
EDGEINFER_LOG=warn taskset -c 0 "$BIN/edgeinferd" --state-dir "$RUN/var" --unix-socket "$SOCK" --tcp "" \
    --http "127.0.0.1:$HTTP_PORT" --cores 0 > "$RUN/daemon.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 600); do
    python3 -c "import socket,sys; socket.socket(socket.AF_UNIX).connect('$SOCK'); socket.create_connection(('127.0.0.1', $HTTP_PORT), 0.2)" 2>/dev/null && break
    sleep 0.1
done
# The row python_client.py sends: i / 20 for i in 0..20.
ROW20=$(python3 -c 'print(",".join(str(i / 20) for i in range(20)))')

taskset -c 1 "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup "$WARMUP" \
    --socket "$SOCK" --model churn --input "$ROW20" > "$OUT/rust.json"
taskset -c 1 "$PY" benches/python_client.py sync "$SOCK" "$DURATION" "$WARMUP" > "$OUT/python_sync.json"
taskset -c 1 "$TRITON_PY" benches/python_client.py triton "127.0.0.1:$HTTP_PORT" "$DURATION" "$WARMUP" > "$OUT/triton.json"
taskset -c 1 "$PY" benches/python_client.py async "$SOCK" "$DURATION" "$WARMUP" "$WINDOW" > "$OUT/python_async.json"
taskset -c 1 "$BENCH/bin/python" benches/python_client.py codec 20000 > "$OUT/codec.json"

python3 - "$OUT" "$DURATION" <<'PY'
import json, os, subprocess, sys
out, duration = sys.argv[1], sys.argv[2]
r = {f[:-5]: json.load(open(os.path.join(out, f))) for f in os.listdir(out) if f.endswith(".json")}
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"edgeinfer Python client figures: commit {commit}, {os.cpu_count()} cores, release build, {duration} s per run")
print()
print(f"{'concurrency 1, churn 1 row, Unix socket unless said':58} {'p50 µs':>9} {'p99 µs':>9} {'req/s':>9}")
for label, k in [("edgeinfer bench (Rust client), baseline", "rust"),
                 ("edgeinfer Client.predict (Python)", "python_sync"),
                 ("tritonclient.http, KServe v2 binary tensors, TCP", "triton")]:
    x = r[k]
    print(f"{label:58} {x['p50_us']:9.1f} {x['p99_us']:9.1f} {x['throughput_rps']:9.0f}"
          + (f"  errors {x['errors']}" if x.get("errors") else ""))
a = r["python_async"]
print(f"{'AsyncClient, ' + str(a['window']) + ' in flight on one connection':58} {'':>9} {'':>9} {a['throughput_rps']:9.0f}")
print()
py, rust, tri = r["python_sync"]["p50_us"], r["rust"]["p50_us"], r["triton"]["p50_us"]
print(f"Python p50 / Rust p50 = {py / rust:.2f}x  [target <= 2x: {'met' if py <= 2 * rust else 'MISSED'}]")
print(f"tritonclient p50 / Python p50 = {tri / py:.1f}x  [target >= 5x: {'met' if tri >= 5 * py else 'MISSED'}]")
print(f"AsyncClient throughput / sync Client throughput = {a['throughput_rps'] / r['python_sync']['throughput_rps']:.1f}x")
c = r["codec"]
print(f"per-call codec work (encode PREDICT with checks + decode PREDICT_RESPONSE): by hand {c['hand_us']:.2f} µs,"
      f" protobuf {c['protobuf_version']} ({c['protobuf_backend']}) {c['protobuf_us']:.2f} µs")
PY
