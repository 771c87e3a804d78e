#!/usr/bin/env bash
# Telemetry figures (benches/RESULTS.md, "Telemetry"), in one run:
#   - the throughput cost of telemetry at saturation (churn_rf, 1 row, Unix socket): two
#     edgeinferd, one with telemetry off and one on (mosquitto on loopback, drift counters on
#     all 20 input features, every prediction logged), both started once and pinned the same
#     way (the daemon and all its threads on core $DAEMON_CORE, the load generator on core
#     $CLIENT_CORE). Many short runs alternate between them in counterbalanced pairs (off-on,
#     on-off, off-on, ...) while the other daemon is stopped (SIGSTOP), so neither the VM's
#     drift nor the idle daemon's timers land on one side. Each pair gives two ratios on/off:
#       throughput  requests/s as the load generator saw them (wall clock: on a VM shared
#                   with other work this carries every neighbour's noise);
#       CPU         requests per CPU-second of the daemon (all its threads, from
#                   /proc/<pid>/task/*/schedstat in ns, so time taken by other processes
#                   does not count): the throughput of a dedicated core, the quantity the
#                   3% is about;
#     each figure is the median of its pair ratios with a 95% bootstrap confidence interval,
#     and the verdict against the 3% target is taken from the interval, not the point;
#   - outbox write cost per message, drift state memory per model version and the
#     per-request cost parts (cargo bench -p edgeinfer-telemetry --bench costs).
#
#   benches/telemetry.sh                  # 30 pairs of 2 s runs at concurrency 8
#   PAIRS=60 DURATION=1 benches/telemetry.sh
#   PERF=1 PAIRS=2 benches/telemetry.sh  # and a perf profile of the telemetry daemon
#
# Needs mosquitto (tools/ci/provision-telemetry.sh installs it), taskset and ORT_DYLIB_PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-2}
PAIRS=${PAIRS:-30}
CONC=${CONC:-8}
# Rows per request: 1 = the per-request costs at their largest share; more rows make the
# daemon's core, not the load generator's, the bottleneck.
ROWS=${ROWS:-1}
DAEMON_CORE=${DAEMON_CORE:-1}
CLIENT_CORE=${CLIENT_CORE:-0}
NAME=telemetry
# shellcheck source=benches/common.sh
source benches/common.sh
MOSQUITTO=${EDGEINFER_TEST_MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
command -v taskset >/dev/null || { echo "telemetry.sh: taskset (util-linux) is required" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

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

declare -A DPID
for on in false true; do
    cfg=$(config "$on"); dir=$(dirname "$cfg")
    taskset -c "$DAEMON_CORE" "$BIN/edgeinferd" --config "$cfg" > "$dir/out.log" 2>&1 & DPID[$on]=$!
    PIDS+=("${DPID[$on]}")
    for _ in $(seq 1 600); do [ -S "$dir/d.sock" ] && break; sleep 0.05; done
    [ -S "$dir/d.sock" ] || { echo "telemetry.sh: edgeinferd ($on) did not start" >&2; cat "$dir/out.log" >&2; exit 1; }
done
kill -STOP "${DPID[true]}" "${DPID[false]}"
# A stopped daemon would not act on the cleanup's SIGTERM: continue both first.
trap 'kill -CONT "${DPID[true]}" "${DPID[false]}" 2>/dev/null || true; cleanup' EXIT

cpu_ns() { # pid -> CPU time of all its threads so far, in ns
    # The first field of each thread's schedstat is its time on a CPU in ns (the scheduler's
    # own clock, not 10 ms ticks as /proc/PID/stat, so a short run is not quantised). The
    # daemons' threads live as long as they do, so none is missed for having exited.
    { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } | awk '{ s += $1 } END { printf "%.0f\n", s }'
}

measure() { # on|off, pair
    local on=$1 pair=$2 c0 c1
    kill -CONT "${DPID[$on]}"
    c0=$(cpu_ns "${DPID[$on]}")
    # No warm-up: every request the client makes is counted, so the daemon's CPU time over
    # the run divides by all of them.
    taskset -c "$CLIENT_CORE" "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup 0 \
        --socket "$RUN/$on/d.sock" --model churn --input "$ROW20" --rows "$ROWS" --concurrency "$CONC" \
        > "$OUT/sat_${on}_$pair.json"
    c1=$(cpu_ns "${DPID[$on]}")
    kill -STOP "${DPID[$on]}"
    echo $((c1 - c0)) > "$OUT/cpu_${on}_$pair.txt"
}

for p in $(seq 1 "$PAIRS"); do
    if (( p % 2 )); then measure false "$p"; measure true "$p"; else measure true "$p"; measure false "$p"; fi
done
# PERF=1: where the telemetry daemon's time goes, one more run of it under perf (all its
# threads; the report goes to $OUT/perf.txt, by symbol, children not counted in).
if [ "${PERF:-0}" != 0 ]; then
    kill -CONT "${DPID[true]}"
    perf record -q -F 2999 -o "$RUN/perf.data" -p "${DPID[true]}" -- sleep "$((${DURATION%.*} + 3))" 2>/dev/null &
    perfpid=$!
    sleep 0.5
    taskset -c "$CLIENT_CORE" "$BIN/edgeinfer" bench --json --duration "$((${DURATION%.*} + 2))" --warmup 0 \
        --socket "$RUN/true/d.sock" --model churn --input "$ROW20" --rows "$ROWS" --concurrency "$CONC" > /dev/null
    wait "$perfpid" || true
    { perf report -i "$RUN/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null
      perf report -i "$RUN/perf.data" --no-children --sort comm,symbol --percent-limit 0.05 --stdio -g none 2>/dev/null
    } | grep -v '^#' > "$OUT/perf.txt" || true
    mv "$RUN/perf.data" "$OUT/perf.data"
    echo "perf: $OUT/perf.txt"
fi
kill -CONT "${DPID[true]}" "${DPID[false]}"
# The telemetry daemon really published (not a silent no-op): its outbox saw messages.
grep -qiE "warn|error" "$RUN/true/out.log" && { echo "telemetry.sh: the telemetry daemon logged warnings:" >&2; tail -5 "$RUN/true/out.log" >&2; } || true

# COSTS=0 skips the cost parts (e.g. a second run of the pairs while the first compiles them).
if [ "${COSTS:-1}" != 0 ]; then
    cargo bench -q -p edgeinfer-telemetry --bench costs 2>/dev/null | tee "$OUT/costs.txt"
fi

python3 - "$OUT" "$PAIRS" "$DURATION" "$CONC" "$DAEMON_CORE" "$CLIENT_CORE" "$ROWS" <<'EOF'
import json, os, random, statistics, subprocess, sys
out, pairs, duration, conc, dcore, ccore, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"telemetry cost: commit {commit}, {os.cpu_count()} cores, daemons on core {dcore}, client on core {ccore}, "
      f"{pairs} pairs of {duration} s runs, concurrency {conc}, {rows} row(s) per request")
tput, cpu, offs, ons, cpu_off, cpu_on, errors = [], [], [], [], [], [], 0
for p in range(1, pairs + 1):
    off = json.load(open(f"{out}/sat_false_{p}.json"))
    on = json.load(open(f"{out}/sat_true_{p}.json"))
    errors += off["errors"] + on["errors"]
    offs.append(off["throughput_rps"]); ons.append(on["throughput_rps"])
    tput.append(on["throughput_rps"] / off["throughput_rps"])
    # ns of daemon CPU per request; the ratio off/on is requests per CPU-second on/off.
    c_off = int(open(f"{out}/cpu_false_{p}.txt").read()) / max(off["requests"] + off["errors"], 1)
    c_on = int(open(f"{out}/cpu_true_{p}.txt").read()) / max(on["requests"] + on["errors"], 1)
    cpu_off.append(c_off); cpu_on.append(c_on)
    cpu.append(c_off / c_on)

def figure(name, ratios):
    m = statistics.median(ratios)
    rnd = random.Random(1)
    boot = sorted(statistics.median(rnd.choices(ratios, k=len(ratios))) for _ in range(10000))
    lo, hi = boot[250], boot[9749]
    q = statistics.quantiles(ratios, n=4)
    print(f"{name}: median paired on/off {m:.4f} (95% bootstrap CI {lo:.4f} .. {hi:.4f}; "
          f"quartiles {q[0]:.3f} / {q[2]:.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}) = "
          f"cost {100 * (1 - m):.1f}% (CI {100 * (1 - hi):.1f}% .. {100 * (1 - lo):.1f}%)")
    if 1 - lo <= 0.03:
        verdict = "MET (the whole interval is within 3%)"
    elif 1 - hi > 0.03:
        verdict = "MISSED (the whole interval is above 3%)"
    else:
        verdict = "UNDECIDED (the interval straddles 3%)"
    print(f"  verdict, target ≤ 3%: {verdict}")

busy = [int(open(f"{out}/cpu_{s}_{p}.txt").read()) / 1e9 / float(duration) for s in ("false", "true") for p in range(1, pairs + 1)]
# Below 1: the daemon's core waited for the load generator, or (on a shared VM) other
# processes ran on it. A daemon with more threads gets a bigger share of a contended core,
# which is why the wall-clock ratio can favour telemetry on; the CPU ratio does not care.
print(f"CPU the daemon got per second of run (median over runs): {statistics.median(busy):.2f}")

print(f"throughput (wall clock): off median {statistics.median(offs):.0f} req/s, on {statistics.median(ons):.0f} req/s; errors {errors}")
figure("throughput", tput)
print(f"daemon CPU per request: off median {statistics.median(cpu_off):.0f} ns, on {statistics.median(cpu_on):.0f} ns: "
      f"telemetry costs {statistics.median([b - a for a, b in zip(cpu_off, cpu_on)]):.0f} ns per request (median of pairs)")
figure("requests per daemon CPU-second", cpu)
EOF
