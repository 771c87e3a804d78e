#!/usr/bin/env bash
# Runs edgeinferd on embedded defaults: the demo churn model on ./var/edgeinferd.sock,
# 127.0.0.1:7700 (binary protocol) and 127.0.0.1:7701 (HTTP), with the pull agent following
# demo/registry/ (demo/edgeinferd.toml), which replaces it with the signed churn@1.
#
# First fetches ONNX Runtime's shared library into .cache/ort/ (idempotent; only the
# library: the tests' Python venv is tools/ci/test.sh's business). Without it the daemon
# still serves, on tract. Then builds both binaries in ONE cargo invocation: cargo
# unifies features over the packages it builds together, so building them apart would
# compile ~37 crates twice. Afterwards use target/release/edgeinfer directly (README).
#
# The daemon and `edgeinfer doctor` find the library by the same search (engine.ort_library,
# ORT_DYLIB_PATH, then <checkout>/.cache/ort/ and /usr/lib/edgeinfer/), so nothing is
# exported here.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash tools/ci/provision.sh --ort-only
cargo build --release -p edgeinferd -p edgeinfer
# Unless told otherwise, follow the signed demo repository (demo/registry/, demo keys): the
# first run shows pull -> verify -> install -> serve of churn@1 (demo/README.md).
args=("$@")
case " $* " in
*" --config"*) ;;
*) args=(--config "$repo/demo/edgeinferd.toml" "$@") ;;
esac
exec "$repo/target/release/edgeinferd" "${args[@]}"
