#!/usr/bin/env bash
# The MLflow venv for tools/tests/release_mlflow.rs: .cache/venv-mlflow with pinned
# mlflow (the server and the client an ML team uses), onnx and onnxruntime (mlflow.onnx).
# Idempotent: quick and silent when the venv holds these pins. ~1 min and ~950 MB cold.
#   EDGEINFER_TEST_MLFLOW=$repo/.cache/venv-mlflow/bin/python   (tools/ci/test.sh sets it)
# Needs python3 with venv and pip, and PyPI the first time. PYTHON picks another interpreter.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$repo/.cache/venv-mlflow"
python="${PYTHON:-python3}"
# onnx and protobuf match tests/fixtures/requirements.txt (the fixtures were written with them).
requirements=(
  "mlflow==3.17.2"
  "onnx==1.23.2"
  # mlflow.onnx.log_model validates session options with onnxruntime; the same release
  # as the shared library the engine loads.
  "onnxruntime==1.31.1"
  "protobuf==7.36.2"
  "numpy==2.4.6"
)
stamp="$venv/.edgeinfer-provisioned"

log() { printf 'provision-mlflow: %s\n' "$*" >&2; }

ready() {
  [[ -x $venv/bin/python && -x $venv/bin/mlflow && -f $stamp ]] &&
    [[ "$(<"$stamp")" == "${requirements[*]}" ]]
}

ready && exit 0

mkdir -p "$repo/.cache"
# Parallel test runs in this checkout: one provisions while the others wait, then recheck.
if command -v flock >/dev/null; then
  exec 9>"$repo/.cache/.provision-mlflow.lock"
  flock 9
  ready && exit 0
fi
if [[ ! -x $venv/bin/python ]]; then
  log "creating ${venv#"$repo"/}"
  "$python" -m venv --clear "$venv"
fi
log "installing ${requirements[*]} into ${venv#"$repo"/}"
"$venv/bin/python" -m pip --quiet --disable-pip-version-check --no-input install "${requirements[@]}"
(cd / && "$venv/bin/python" -c 'import mlflow, mlflow.onnx, onnx, onnxruntime')
printf '%s' "${requirements[*]}" >"$stamp"
