#!/usr/bin/env bash
# Appliance figures of the appliance issue, in one run:
#   - time from exec to READY=1 (sd_notify, a real NOTIFY_SOCKET), demo model, median of $STARTS;
#   - RSS at idle after READY=1: engine auto (the default) and ort-cpu (ORT loaded and serving);
#   - HTTP latency at concurrency 1, one row of churn_rf:
#       POST /predict with `edgeinfer bench --http` (the load generator the serving figures use),
#       beside the FastAPI peer (benches/peers) on scikit-learn and on onnxruntime, same tool;
#       /predict and KServe v2 infer (JSON tensors, and binary tensors) with one small
#       keep-alive Python client, so the three HTTP APIs are compared by the same client;
#   - the binary protocol (Unix socket) with `edgeinfer bench`, as the floor.
# Raw JSON goes to $OUT; a table to stdout.
#
#   benches/appliance.sh                # 5 s per latency measurement
#   DURATION=10 STARTS=9 benches/appliance.sh
#   PEERS=0 benches/appliance.sh        # skip the FastAPI peer
#
# Needs release builds (built here), ORT_DYLIB_PATH (default .cache/ort/...), python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
STARTS=${STARTS:-5}
PEERS=${PEERS:-1}
NAME=appliance
# shellcheck source=benches/common.sh
source benches/common.sh

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- start to READY=1, and RSS at idle -------------------------------------------------
# One helper: binds a NOTIFY_SOCKET, execs the daemon, times exec → READY=1, then (optionally)
# waits and reads VmRSS; prints JSON; leaves the daemon running when asked (for latency runs).
cat > "$RUN/start.py" <<'PY'
import json, os, socket, subprocess, sys, time
run, keep, idle_s, *cmd = sys.argv[1:]
path = os.path.join(run, f"notify-{os.getpid()}-{time.monotonic_ns()}.sock")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(path); s.settimeout(120)
env = dict(os.environ, NOTIFY_SOCKET=path, EDGEINFER_LOG="warn")
t0 = time.monotonic()
p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(run, "daemon.log"), "a"))
while True:
    msg = s.recv(4096).decode()
    if "READY=1" in msg.splitlines():
        break
ready_ms = (time.monotonic() - t0) * 1e3
status = next((l[7:] for l in msg.splitlines() if l.startswith("STATUS=")), "")
time.sleep(float(idle_s))
rss_kib = next(int(l.split()[1]) for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS:"))
print(json.dumps({"pid": p.pid, "ready_ms": ready_ms, "rss_mib": rss_kib / 1024, "status": status}), flush=True)
if keep == "0":
    p.terminate(); p.wait()
PY

daemon_args() { # sock port http_port, extra...
    local sock=$1 port=$2 http=$3; shift 3
    echo "$BIN/edgeinferd" --state-dir "$RUN/var" --unix-socket "$sock" --tcp "127.0.0.1:$port" --http "127.0.0.1:$http" "$@"
}

for i in $(seq 1 "$STARTS"); do
    python3 "$RUN/start.py" "$RUN" 0 0 $(daemon_args "$RUN/s.sock" "$(free_port)" "$(free_port)") > "$OUT/start_auto_$i.json"
    python3 "$RUN/start.py" "$RUN" 0 0 $(daemon_args "$RUN/s.sock" "$(free_port)" "$(free_port)" --engine ort-cpu) > "$OUT/start_ort_$i.json"
done
python3 "$RUN/start.py" "$RUN" 0 3 $(daemon_args "$RUN/s.sock" "$(free_port)" "$(free_port)") > "$OUT/idle_auto.json"
python3 "$RUN/start.py" "$RUN" 0 3 $(daemon_args "$RUN/s.sock" "$(free_port)" "$(free_port)" --engine ort-cpu) > "$OUT/idle_ort.json"

# --- latency at concurrency 1 ----------------------------------------------------------
# The daemon on ORT (CPU), the same engine the onnxruntime peer uses.
HTTP_PORT=$(free_port)
python3 "$RUN/start.py" "$RUN" 1 0 $(daemon_args "$RUN/d.sock" "$(free_port)" "$HTTP_PORT" --engine ort-cpu) > "$OUT/daemon.json"
PIDS+=($(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$OUT/daemon.json"))

bench() { # name, args...
    local name=$1; shift
    "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup "$WARMUP" "$@" > "$OUT/$name.json"
}
bench binary_unix --socket "$RUN/d.sock" --model churn --input "$ROW20"
bench predict_edgeinfer_bench --http "http://127.0.0.1:$HTTP_PORT/predict" --input "$ROW20"

# The same minimal keep-alive client for /predict, KServe JSON and KServe binary.
cat > "$RUN/httpbench.py" <<'PY'
import http.client, json, struct, sys, time
port, duration, warmup, kind = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
row = [0.5] * 20
if kind == "predict":
    path, headers = "/predict", {"Content-Type": "application/json"}
    body = json.dumps({"features": [row]}).encode()
elif kind == "kserve_json":
    path, headers = "/v2/models/churn/infer", {"Content-Type": "application/json"}
    body = json.dumps({"inputs": [{"name": "float_input", "shape": [1, 20], "datatype": "FP32", "data": row}],
                       "outputs": [{"name": "probabilities"}]}).encode()
else:
    path = "/v2/models/churn/infer"
    raw = struct.pack("<20f", *row)
    head = json.dumps({"inputs": [{"name": "float_input", "shape": [1, 20], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    body = head + raw
c = http.client.HTTPConnection("127.0.0.1", port)
lat, errors = [], 0
end_warm = time.monotonic() + warmup
end = end_warm + duration
while True:
    t = time.perf_counter_ns()
    c.request("POST", path, body, headers)
    r = c.getresponse(); r.read()
    dt = (time.perf_counter_ns() - t) / 1e3
    now = time.monotonic()
    if now > end:
        break
    if r.status != 200:
        errors += 1
    elif now > end_warm:
        lat.append(dt)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(json.dumps({"requests": len(lat), "errors": errors, "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99),
                  "max_us": lat[-1], "throughput_rps": len(lat) / duration}))
PY
for kind in predict kserve_json kserve_binary; do
    python3 "$RUN/httpbench.py" "$HTTP_PORT" "$DURATION" "$WARMUP" "$kind" > "$OUT/py_$kind.json"
done

# --- the FastAPI peer, same load generator -----------------------------------------------
if [ "$PEERS" = 1 ]; then
    bash benches/peers/setup.sh
    for backend in sklearn onnxruntime; do
        PORT=$(free_port)
        "$ROOT/.cache/venv-peers/bin/python" benches/peers/fastapi_server.py --backend "$backend" --port "$PORT" \
            --no-access-log > "$RUN/peer-$backend.log" 2>&1 &
        PEER=$!; PIDS+=($PEER)
        for _ in $(seq 1 600); do
            python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
            sleep 0.1
        done
        bench "peer_$backend" --http "http://127.0.0.1:$PORT/predict" --input "$ROW20"
        python3 "$RUN/httpbench.py" "$PORT" "$DURATION" "$WARMUP" predict > "$OUT/py_peer_$backend.json"
        kill "$PEER"; wait "$PEER" 2>/dev/null || true
    done
fi

python3 - "$OUT" "$DURATION" "$STARTS" <<'PY'
import json, os, statistics, subprocess, sys
out, duration, starts = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = {f[:-5]: json.load(open(os.path.join(out, f))) for f in os.listdir(out) if f.endswith(".json")}
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"edgeinfer appliance figures: commit {commit}, {os.cpu_count()} cores, release build, {duration} s per latency run")
print()
for eng in ("auto", "ort"):
    ms = sorted(r[f"start_{eng}_{i}"]["ready_ms"] for i in range(1, starts + 1))
    print(f"exec → READY=1, demo model, engine {'auto' if eng == 'auto' else 'ort-cpu'}: median {statistics.median(ms):.0f} ms"
          f" (min {ms[0]:.0f}, max {ms[-1]:.0f}, n={starts}) [target ≤ 1000 ms]")
for eng, label in (("auto", "auto (default)"), ("ort", "ort-cpu")):
    x = r[f"idle_{eng}"]
    print(f"RSS at idle, engine {label}: {x['rss_mib']:.1f} MiB [target ≤ 100 MiB with ORT loaded]   ({x['status'][:80]})")
print()
print(f"{'concurrency 1, churn_rf 1 row':58} {'p50 µs':>9} {'p99 µs':>9} {'req/s':>9}")
rows = [("binary protocol, Unix socket (edgeinfer bench)", "binary_unix"),
        ("POST /predict (edgeinfer bench --http)", "predict_edgeinfer_bench")]
rows += [(f"FastAPI peer, {b} (edgeinfer bench --http)", f"peer_{b}") for b in ("sklearn", "onnxruntime")]
rows += [("POST /predict (python keep-alive client)", "py_predict"),
         ("KServe v2 infer, JSON (python keep-alive client)", "py_kserve_json"),
         ("KServe v2 infer, binary tensors (python keep-alive client)", "py_kserve_binary")]
rows += [(f"FastAPI peer, {b} (python keep-alive client)", f"py_peer_{b}") for b in ("sklearn", "onnxruntime")]
for label, k in rows:
    if k in r:
        x = r[k]
        print(f"{label:58} {x['p50_us']:9.1f} {x['p99_us']:9.1f} {x['throughput_rps']:9.0f}" + (f"  errors {x['errors']}" if x['errors'] else ""))
print()
if "peer_sklearn" in r:
    us = r["predict_edgeinfer_bench"]["p50_us"]
    for b in ("sklearn", "onnxruntime"):
        print(f"/predict p50: FastAPI+{b} / edgeinferd = {r[f'peer_{b}']['p50_us'] / us:.1f}×")
base = r["py_predict"]["p50_us"]
for k in ("py_kserve_json", "py_kserve_binary"):
    print(f"{k[3:]} p50 / /predict p50 (same client) = {r[k]['p50_us'] / base:.2f}")
PY
