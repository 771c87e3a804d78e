#!/usr/bin/env bash
# Telemetry figures (benches/RESULTS.md, "Telemetry"), in one run:
#   - edgeinferd throughput at saturation (churn_rf, 1 row, Unix socket) with telemetry off
#     and on (mosquitto on loopback, drift counters on all 20 input features, every
#     prediction logged), alternated off/on ROUNDS times so drift of the VM hits both;
#   - outbox write cost per message, drift state memory per model version and the drift
#     counting cost per row (cargo bench -p edgeinfer-telemetry --bench costs).
#
#   benches/telemetry.sh              # 5 s per measurement, 3 rounds
#   DURATION=10 ROUNDS=5 benches/telemetry.sh
#
# Needs mosquitto (tools/ci/provision-telemetry.sh installs it) and ORT_DYLIB_PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-3}
CONC=${CONC:-32}
NAME=telemetry
# shellcheck source=benches/common.sh
source benches/common.sh
MOSQUITTO=${EDGEINFER_TEST_MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ROW20=$(python3 -c 'print(",".join(["0.5"]*20))')

MPORT=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nlog_dest none\nmax_queued_messages 0\n' "$MPORT" > "$RUN/mosquitto.conf"
"$MOSQUITTO" -c "$RUN/mosquitto.conf" & PIDS+=($!)

# A reference for all 20 inputs (deciles of standard normal samples) and a baseline.
python3 - "$RUN/churn.monitoring.json" <<'EOF'
import json, random, sys
rnd = random.Random(7)
features = []
for c in range(20):
    s = sorted(rnd.gauss(0, 1) for _ in range(5000))
    edges = [s[len(s) * d // 10] for d in range(1, 10)]
    features.append({"name": f"f{c}", "column": c, "kind": "numeric", "edges": edges,
                     "probs": [0.1] * 10 + [0.0]})
json.dump({"reference": {"features": features},
           "baseline": {"metric": "accuracy", "value": 0.9}}, open(sys.argv[1], "w"))
EOF

config() { # telemetry on/off -> config path
    local on=$1 dir=$RUN/$1
    mkdir -p "$dir"
    cat > "$dir/edgeinferd.toml" <<EOF
state_dir = "$dir/var"
log_level = "warn"
[server]
unix_socket = "$dir/d.sock"
[http]
listen = ""
[engine]
default = "ort-cpu"
[[models]]
name = "churn"
path = "$ROOT/tests/fixtures/models/churn_rf.onnx"
monitoring = "$RUN/churn.monitoring.json"
[telemetry]
enabled = $on
mqtt_url = "mqtt://127.0.0.1:$MPORT"
device_id = "bench"
interval_s = 1
EOF
    echo "$dir/edgeinferd.toml"
}

run() { # on|off, round
    local on=$1 round=$2 cfg dir pid
    cfg=$(config "$on"); dir=$(dirname "$cfg")
    "$BIN/edgeinferd" --config "$cfg" > "$dir/out.log" 2>&1 & pid=$!
    for _ in $(seq 1 600); do [ -S "$dir/d.sock" ] && break; sleep 0.05; done
    sleep 0.5
    "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup "$WARMUP" --socket "$dir/d.sock" \
        --model churn --input "$ROW20" --concurrency "$CONC" > "$OUT/sat_${on}_$round.json"
    kill -TERM "$pid"; wait "$pid" || true
}

for r in $(seq 1 "$ROUNDS"); do
    run false "$r"
    run true "$r"
done

cargo bench -q -p edgeinfer-telemetry --bench costs 2>/dev/null | tee "$OUT/costs.txt"

python3 - "$OUT" "$ROUNDS" "$DURATION" "$CONC" <<'EOF'
import json, os, subprocess, sys, statistics
out, rounds, duration, conc = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"telemetry figures: commit {commit}, {os.cpu_count()} cores, {duration} s per run, concurrency {conc}, {rounds} rounds")
ratios = []
for r in range(1, rounds + 1):
    off = json.load(open(f"{out}/sat_false_{r}.json"))
    on = json.load(open(f"{out}/sat_true_{r}.json"))
    ratio = on["throughput_rps"] / off["throughput_rps"]
    ratios.append(ratio)
    print(f"round {r}: off {off['throughput_rps']:.0f} req/s (p99 {off['p99_us']:.0f} µs), "
          f"on {on['throughput_rps']:.0f} req/s (p99 {on['p99_us']:.0f} µs), on/off {ratio:.3f}"
          + (f"  errors off {off['errors']} on {on['errors']}" if off['errors'] or on['errors'] else ""))
m = statistics.median(ratios)
print(f"telemetry cost at saturation: median on/off {m:.3f} = {100 * (1 - m):.1f}% [target ≤ 3%]")
EOF
