#!/usr/bin/env bash
# Hot swap figure of the registry issue (item 7), in one run against one daemon:
#   - steady state: `edgeinfer bench` on churn_rf (1 row, closed loop, $CONC connections);
#   - during swaps: the same bench while the config's model version is switched $SWAPS
#     times (rewrite the file, SIGHUP, wait for the reload's log line), one every $GAP s;
#   - the ratio of the two p99s (target <= 2x) and the failed requests (target 0).
# Raw JSON goes to $OUT; a table to stdout.
#
#   benches/hot_swap.sh
#   DURATION=8 SWAPS=20 ENGINE=auto benches/hot_swap.sh
#
# Needs release builds (built here) and ORT_DYLIB_PATH (default .cache/ort/...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-6}
SWAPS=${SWAPS:-10}
GAP=${GAP:-0.4}
CONC=${CONC:-2}
ENGINE=${ENGINE:-tract}
NAME=hot_swap
# shellcheck source=benches/common.sh
source benches/common.sh

SOCK=$RUN/edgeinferd.sock
CONF=$RUN/edgeinferd.toml
write_config() { # version
    cat > "$CONF.tmp" <<EOF
state_dir = "$RUN/var"
log_level = "info"
[server]
unix_socket = "$SOCK"
tcp = ""
[http]
listen = ""
[engine]
default = "$ENGINE"
[[models]]
name = "churn"
version = "$1"
path = "$ROOT/tests/fixtures/models/churn_rf.onnx"
EOF
    mv "$CONF.tmp" "$CONF"
}

write_config v0
"$BIN/edgeinferd" --config "$CONF" >"$RUN/daemon.out" 2>"$RUN/daemon.log" &
DAEMON=$!
PIDS+=("$DAEMON")
for _ in $(seq 1 200); do [ -S "$SOCK" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || { echo "hot_swap.sh: the daemon did not start" >&2; cat "$RUN/daemon.log" >&2; exit 1; }

bench() {
    "$BIN/edgeinfer" bench --socket "$SOCK" --model churn --concurrency "$CONC" \
        --duration "$DURATION" --warmup 1 --json
}

bench >"$OUT/steady.json"

# The same bench again, with swaps inside its measured window.
bench >"$OUT/swap.json" &
BENCH=$!
sleep 1.5 # past the bench's warm-up
for i in $(seq 1 "$SWAPS"); do
    done_before=$(grep -c 'SIGHUP:' "$RUN/daemon.log" || true)
    write_config "v$i"
    kill -HUP "$DAEMON"
    for _ in $(seq 1 400); do
        [ "$(grep -c 'SIGHUP:' "$RUN/daemon.log" || true)" -gt "$done_before" ] && break
        sleep 0.005
    done
    sleep "$GAP"
done
wait "$BENCH"
grep 'SIGHUP:' "$RUN/daemon.log" >"$OUT/reloads.log" || true
reloads=$(grep -c 'add churn@' "$OUT/reloads.log" || true)
failed_reloads=$(grep -c 'reload failed' "$OUT/reloads.log" || true)

python3 - "$OUT" "$SWAPS" "$reloads" "$failed_reloads" <<'PY'
import json, sys
out, swaps, reloads, failed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = json.load(open(f"{out}/steady.json"))
w = json.load(open(f"{out}/swap.json"))
print(f"| measurement | p50 µs | p99 µs | max µs | requests | errors |")
print(f"|---|---:|---:|---:|---:|---:|")
for name, r in (("steady state (baseline)", s), (f"during {swaps} swaps", w)):
    print(f"| {name} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['max_us']:.0f} | {r['requests']} | {r['errors']} |")
ratio = w["p99_us"] / s["p99_us"]
print(f"\np99 during swaps / steady: {ratio:.2f}x (target <= 2x: {'met' if ratio <= 2 else 'MISSED'})")
print(f"reloads applied: {reloads} of {swaps}; failed reloads: {failed}; failed requests: {w['errors']}")
json.dump({"steady": s, "swap": w, "p99_ratio": ratio, "swaps": swaps, "reloads": reloads,
           "failed_reloads": failed}, open(f"{out}/summary.json", "w"), indent=1)
PY
