#!/usr/bin/env bash
# The Python client's test venv: .cache/venv-client with pinned numpy and pytest, and the
# client itself (`pip install ./python`, as a user installs it). Idempotent: quick and
# silent when the venv holds these pins and the package sources are unchanged.
#   EDGEINFER_CLIENT_PYTHON=$repo/.cache/venv-client/bin/python   (tools/ci/test.sh sets it)
# Needs python3 with venv and pip, and PyPI the first time. PYTHON picks another interpreter.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$repo/.cache/venv-client"
python="${PYTHON:-python3}"
# pytest's own dependencies are pinned too, so a release cannot change the test run.
requirements=(
  "numpy==2.4.6"
  "pytest==9.2.0"
  "iniconfig==2.3.1"
  "packaging==26.4"
  "pluggy==1.7.0"
  "Pygments==2.21.0"
  "flit-core==4.2.0"
)
stamp="$venv/.edgeinfer-provisioned"

log() { printf 'provision-python: %s\n' "$*" >&2; }

# What the venv must hold: the pins, and a digest of the package as installed from ./python.
want() {
  printf '%s\n' "${requirements[*]}"
  (cd "$repo/python" && find pyproject.toml edgeinfer -name '*.py' -o -name '*.toml' | LC_ALL=C sort |
    xargs sha256sum) | sha256sum | cut -d' ' -f1
}

ready() {
  [[ -x $venv/bin/python && -f $stamp ]] && [[ "$(<"$stamp")" == "$(want)" ]]
}

ready && exit 0

mkdir -p "$repo/.cache"
# Parallel test runs in this checkout: one provisions while the others wait, then recheck.
if command -v flock >/dev/null; then
  exec 9>"$repo/.cache/.provision-python.lock"
  flock 9
  ready && exit 0
fi
if [[ ! -x $venv/bin/python ]]; then
  log "creating ${venv#"$repo"/}"
  # --clear also repairs a venv whose interpreter has gone away.
  "$python" -m venv --clear "$venv"
fi
log "installing ${requirements[*]} and ./python into ${venv#"$repo"/}"
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check --no-input)
"${pip[@]}" install "${requirements[@]}"
# No build isolation: the pinned flit-core above is the build backend.
"${pip[@]}" install --no-build-isolation --no-deps --force-reinstall "$repo/python"
(cd / && "$venv/bin/python" -c 'import edgeinfer, numpy, pytest')
want >"$stamp"
