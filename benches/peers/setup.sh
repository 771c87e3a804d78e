#!/usr/bin/env bash
# Creates .cache/venv-peers, the venv for the FastAPI peer (fastapi_server.py),
# from benches/peers/requirements.txt. It is idempotent, and silent when the venv
# already matches the requirements. Set PYTHON to use an interpreter other than
# python3 (3.11 expected).
# Then: .cache/venv-peers/bin/python benches/peers/fastapi_server.py --backend sklearn|onnxruntime
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-python3}"
venv="$repo/.cache/venv-peers"
requirements="$repo/benches/peers/requirements.txt"
# The stamp holds the requirements' hash. Editing the pins makes the venv stale.
stamp="$venv/.edgeinfer-provisioned"

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -x $venv/bin/python && -f $stamp && "$(<"$stamp")" == "$want" ]]; then
  exit 0
fi

printf 'peers: installing %s into %s\n' "${requirements#"$repo"/}" "${venv#"$repo"/}" >&2
if [[ ! -x $venv/bin/python ]]; then
  "$python" -m venv --clear "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
"$venv/bin/python" -c 'import fastapi, uvicorn, prometheus_client, sklearn, onnxruntime, numpy'
printf '%s\n' "$want" >"$stamp"
