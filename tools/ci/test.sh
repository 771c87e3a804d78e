#!/usr/bin/env bash
# The one command that runs every test (README "Set up"; .ci/run calls it).
# It installs what the tests need itself, idempotently: ORT's shared library from
# the onnxruntime wheel on PyPI and a Python venv with tritonclient, under .cache/.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

bash tools/ci/provision.sh
bash tools/ci/provision-python.sh
bash tools/ci/provision-telemetry.sh
bash tools/ci/provision-mlflow.sh

export ORT_DYLIB_PATH="$repo/.cache/ort/libonnxruntime.so.1.31.1"
export EDGEINFER_TEST_PYTHON="$repo/.cache/venv-test/bin/python"
export EDGEINFER_CLIENT_PYTHON="$repo/.cache/venv-client/bin/python"
export EDGEINFER_TEST_MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
export EDGEINFER_TEST_MQTT_PYTHON="$repo/.cache/venv-mqtt/bin/python"
export EDGEINFER_TEST_MLFLOW="$repo/.cache/venv-mlflow/bin/python"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked "$@"
