#!/usr/bin/env bash
# Time from a published release to serving it, for the demo model (issue 8 figure): the
# release daemon starts on a fresh state directory following demo/registry/ (churn@1),
# and its install log line gives each step: TUF refresh, download (hash-checked), validation
# (engine load with auto timed on the golden samples at 1 and 64 rows + every golden
# sample), commit (fsyncs, renames, state) and the swap (sessions warmed, published). The
# baseline, measured in the same run, is the validation step itself (the engine work any
# local load also pays): the ratio says what signing, fetching and power-safety add.
# On a running box the poll wait (poll_interval_ms + up to poll_jitter_ms) comes on top.
#
#   benches/registry_release.sh [RUNS]      (default 5; needs target/release/edgeinferd)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
runs="${1:-5}"
bin="$repo/target/release/edgeinferd"
[ -x "$bin" ] || cargo build --release -p edgeinferd
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$repo/.cache/ort/libonnxruntime.so.1.31.1}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for i in $(seq "$runs"); do
    st="$tmp/run$i"
    mkdir -p "$st"
    EDGEINFER_LOG=info "$bin" --config demo/edgeinferd.toml --state-dir "$st" \
        --unix-socket "$st/s.sock" --tcp 127.0.0.1:0 --http "" >"$st/log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        grep -q "installed and serving" "$st/log" && break
        sleep 0.1
    done
    kill "$pid"; wait "$pid" || true
    grep -o 'refresh_ms=[0-9.]* fetch_ms=[0-9.]* validate_ms=[0-9.]* commit_ms=[0-9.]* swap_ms=[0-9.]*' "$st/log" \
        || { echo "run $i: no install line"; cat "$st/log"; exit 1; }
done | awk '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] += kv[2] }
    n++
} END {
    total = v["refresh_ms"] + v["fetch_ms"] + v["validate_ms"] + v["commit_ms"] + v["swap_ms"]
    printf "runs %d, mean ms: refresh %.1f fetch %.1f validate %.1f commit %.1f swap %.1f, total %.1f\n",
        n, v["refresh_ms"]/n, v["fetch_ms"]/n, v["validate_ms"]/n, v["commit_ms"]/n, v["swap_ms"]/n, total/n
    printf "published-to-serving / validation alone = %.2f\n", total / v["validate_ms"]
}'
