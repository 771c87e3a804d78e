#!/usr/bin/env bash
# Sets up what the tests need under the repo's git-ignored .cache/. It is
# idempotent, and silent and quick when everything is already in place.
#   - ONNX Runtime's shared library, taken from the onnxruntime wheel on PyPI (the
#     Rust engine loads it with `ort`'s load-dynamic):
#       ORT_DYLIB_PATH=$repo/.cache/ort/libonnxruntime.so.1.31.1
#   - .cache/venv-test, a Python venv with tritonclient[http] and numpy, used by
#     the KServe v2 test as an independent client:
#       EDGEINFER_TEST_PYTHON=$repo/.cache/venv-test/bin/python
# It exports nothing: the caller (tools/ci/test.sh) sets those variables.
# With --ort-only (tools/run-demo.sh) it provisions ONNX Runtime's library and nothing else.
# The first run needs python3 with pip and venv, and network access to PyPI.
# Set PYTHON to use an interpreter other than python3.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="$repo/.cache"
python="${PYTHON:-python3}"

ort_version=1.31.1
ort_dir="$cache/ort"
ort_libs=("libonnxruntime.so.$ort_version" "libonnxruntime_providers_shared.so")

test_venv="$cache/venv-test"
# The KServe test talks to edgeinferd via tritonclient's HTTP client. Its direct
# dependencies are pinned as well, so a new release cannot change the client.
test_requirements=(
  "tritonclient[http]==2.73.0"
  "numpy==2.4.6"
  "geventhttpclient==2.6.1"
  "python-rapidjson==1.25"
  "urllib3==2.8.0"
  "aiohttp==3.14.5"
)
# The stamp records what the venv holds. A change to the pins makes it stale.
test_stamp="$test_venv/.edgeinfer-provisioned"

log() { printf 'provision: %s\n' "$*" >&2; }

ort_ready() {
  local lib
  for lib in "${ort_libs[@]}"; do
    [[ -f $ort_dir/$lib ]] || return 1
  done
}

test_venv_ready() {
  [[ -x $test_venv/bin/python && -f $test_stamp ]] &&
    [[ "$(<"$test_stamp")" == "${test_requirements[*]}" ]]
}

provision_ort() {
  # One wheel directory per interpreter and machine: pip picks the wheel for this
  # Python, and that directory then holds exactly one onnxruntime wheel.
  local tag wheels
  tag="$("$python" -c 'import platform, sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')"
  wheels="$cache/wheels/$tag"
  mkdir -p "$wheels" "$ort_dir"
  log "downloading onnxruntime==$ort_version ($tag) from PyPI into ${wheels#"$repo"/}"
  "$python" -m pip download --quiet --disable-pip-version-check --no-input \
    --no-deps --only-binary=:all: --dest "$wheels" "onnxruntime==$ort_version"
  log "extracting ${ort_libs[*]} into ${ort_dir#"$repo"/}"
  # zipfile rather than unzip, which a minimal image may lack.
  "$python" - "$wheels" "$ort_dir" "$ort_version" "${ort_libs[@]}" <<'PY'
import glob, os, shutil, sys, zipfile

wheels, dest, version, *libs = sys.argv[1:]
found = sorted(glob.glob(os.path.join(wheels, f"onnxruntime-{version}-*.whl")))
if len(found) != 1:
    sys.exit(f"provision: expected one onnxruntime {version} wheel in {wheels}, found {found}")
with zipfile.ZipFile(found[0]) as wheel:
    for lib in libs:
        member = f"onnxruntime/capi/{lib}"
        try:
            info = wheel.getinfo(member)
        except KeyError:
            sys.exit(f"provision: {found[0]} has no {member}")
        target = os.path.join(dest, lib)
        # Write beside the target and rename, so an interrupted run never leaves a
        # truncated library that looks provisioned.
        part = target + ".part"
        with wheel.open(info) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out)
        os.chmod(part, 0o755)
        os.replace(part, target)
PY
}

provision_test_venv() {
  log "installing ${test_requirements[*]} into ${test_venv#"$repo"/}"
  if [[ ! -x $test_venv/bin/python ]]; then
    # --clear also repairs a venv whose interpreter has gone away.
    "$python" -m venv --clear "$test_venv"
  fi
  "$test_venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "${test_requirements[@]}"
  "$test_venv/bin/python" -c 'import numpy, tritonclient.http'
  printf '%s\n' "${test_requirements[*]}" >"$test_stamp"
}

ort_only=false
[[ ${1:-} == --ort-only ]] && ort_only=true

if ort_ready && { $ort_only || test_venv_ready; }; then
  exit 0
fi

mkdir -p "$cache"
# Several test runs in this checkout may start at once. One provisions while the
# others wait; each then rechecks and skips what is already done.
if command -v flock >/dev/null; then
  exec 9>"$cache/.provision.lock"
  flock 9
fi
ort_ready || provision_ort
$ort_only || test_venv_ready || provision_test_venv
