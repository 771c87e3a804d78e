#!/usr/bin/env bash
# Runs edgeinferd on embedded defaults: the demo churn model on ./var/edgeinferd.sock,
# 127.0.0.1:7700 (binary protocol) and 127.0.0.1:7701 (HTTP). Fetches ONNX Runtime's
# shared library first (idempotent); without it the daemon still serves, on tract.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash tools/ci/provision.sh
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$repo/.cache/ort/libonnxruntime.so.1.31.1}"
exec cargo run --release -p edgeinferd -- "$@"
