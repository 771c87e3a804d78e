#!/usr/bin/env bash
# The fleet simulation (issue 11 item 5): N devices in one process, each with its own state
# directory running the real pull agent (TUF over HTTP, downloads, the install store), the
# tract engine (every installed version loaded, golden samples checked) and the rollout
# decision and judge, against one HTTP TUF repository (served and byte-counted by the
# simulation) and one mosquitto. Steps 1% -> 10% -> 100% (`rollout set`, then
# `rollout advance`, which checks its gates on the broker), a promotion, then a bad
# candidate in a 1% canary: its devices must roll back by themselves and `rollout advance`
# must refuse. Prints, per step: convergence time, repository bytes and requests, messages
# per second (devices' publishes and the broker's own $SYS counters).
#
#   benches/fleet.sh [N ...]            (default: 100 1000)
#   POLL_MS=10000 JITTER_MS=5000 WINDOW_MS=2000 WORKERS=8 PROFILE=release benches/fleet.sh
#
# PROFILE=release builds target/release/edgeinfer if missing (BIN=path uses a prebuilt
# one); PROFILE=debug uses the test build (its dependencies are optimised too).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(100 1000)
profile="${PROFILE:-release}"
bin="${BIN:-$repo/target/$profile/edgeinfer}"
if [[ -z "${BIN:-}" ]]; then
    if [[ "$profile" == release ]]; then cargo build -q --release -p edgeinfer; else cargo build -q -p edgeinfer; fi
fi
mosq="${EDGEINFER_TEST_MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}"
[[ -x "$mosq" ]] || bash tools/ci/provision-telemetry.sh
poll="${POLL_MS:-10000}" jitter="${JITTER_MS:-5000}" window="${WINDOW_MS:-2000}" workers="${WORKERS:-8}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

# One signed repository: churn 1, 2 (healthy candidate) and 3 (the bad one), same model.
keys="$tmp/keys" work="$tmp/work" served="$tmp/served"
for k in root targets snapshot timestamp; do "$bin" keys gen --out "$keys" --name "$k" >/dev/null; done
"$bin" repo init --dir "$work" --root-key "$keys/root.pub.json" --targets-key "$keys/targets.pub.json" \
    --snapshot-key "$keys/snapshot.pub.json" --timestamp-key "$keys/timestamp.pub.json" >/dev/null
python3 - "$tmp/ref.csv" <<'EOF'
import json, sys
g = json.load(open("tests/fixtures/golden/logreg.json"))
d = g["inputs"][0]["data"]
with open(sys.argv[1], "w") as f:
    f.write(",".join(f"f{i}" for i in range(20)) + "\n")
    for i in range(0, len(d), 20):
        f.write(",".join(repr(float(x)) for x in d[i:i + 20]) + "\n")
EOF
for v in 1 2 3; do
    "$bin" release create --dir "$work" --model tests/fixtures/models/logreg.onnx --name churn \
        --version "$v" --reference-data "$tmp/ref.csv" >/dev/null
done
online=(--key "$keys/targets.key.json" --key "$keys/snapshot.key.json" --key "$keys/timestamp.key.json")
"$bin" release sign --dir "$work" --key "$keys/root.key.json" "${online[@]}" >/dev/null
"$bin" release publish --dir "$work" --repo "$served" >/dev/null

commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- tools rollout registry-sync || echo '+dirty')"
echo "fleet simulation: commit $commit, $(nproc) cores, $(uname -r), profile $profile"
for n in "${sizes[@]}"; do
    run="$tmp/n$n"
    mkdir -p "$run"
    cp -a "$work" "$run/work"
    cp -a "$served" "$run/served"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nlog_dest none\nsys_interval 1\nmax_queued_messages 0\n' "$port" >"$run/mosquitto.conf"
    "$mosq" -c "$run/mosquitto.conf" &
    pids+=($!)
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    "$bin" rollout set --dir "$run/work" --model churn --stable 1 "${online[@]}" --publish "$run/served" >/dev/null
    echo "== N=$n"
    "$bin" fleet simulate --devices "$n" --release-dir "$run/work" --publish "$run/served" "${online[@]}" \
        --stable 1 --candidate 2 --bad-candidate 3 --broker "127.0.0.1:$port" --state "$run/state" \
        --poll-ms "$poll" --jitter-ms "$jitter" --window-ms "$window" --workers "$workers" \
        --report "$run/report.json" 2>"$run/stderr" || { tail -40 "$run/stderr"; exit 1; }
    grep -E '^(boot|[0-9.]+%|promote):' "$run/stderr" | sed 's/^/  /' || true
    kill "${pids[-1]}" 2>/dev/null || true
done
