#!/usr/bin/env bash
# Shared start of the benchmark scripts: checks ORT, builds the release binaries, and
# sets up $OUT (raw JSON), $RUN (scratch) and $PIDS (background processes killed on exit).
# Source it after setting NAME (the script's name, used in messages and $OUT).
ROOT=$PWD
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ROOT/.cache/ort/libonnxruntime.so.1.31.1}
[ -f "$ORT_DYLIB_PATH" ] || { echo "$NAME.sh: ORT_DYLIB_PATH=$ORT_DYLIB_PATH does not exist" >&2; exit 1; }

# BIN=DIR: binaries already built there (a snapshot taken while others keep building).
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p edgeinferd -p edgeinfer
    BIN=$ROOT/target/release
fi
OUT=${OUT:-$ROOT/target/bench-$NAME}
rm -rf "$OUT" && mkdir -p "$OUT"
RUN=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

# What most serving benches send: the churn model and one row of 20 features.
CHURN=$ROOT/tests/fixtures/models/churn_rf.onnx
ROW20=$(python3 -c 'print(",".join(["0.5"]*20))')
TICKS=$(getconf CLK_TCK)
wait_for() { # socket path
    for _ in $(seq 1 300); do [ -S "$1" ] && return 0; sleep 0.05; done
    echo "$NAME.sh: nothing listens on $1" >&2; exit 1
}
