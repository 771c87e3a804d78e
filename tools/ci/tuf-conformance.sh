#!/usr/bin/env bash
# Run the official TUF client conformance suite (../shared/tuf-conformance, read
# only in CI) against `edgeinfer tuf` (target/debug/edgeinfer, via tools/ci/tuf-client).
# Installs what it needs, idempotently: a venv under .cache/ with the suite's pinned
# requirements (from its pyproject.toml) and Debian's faketime. Exits non-zero if
# any test fails (an expected failure must be listed, with its reason, in
# tools/ci/tuf-client.xfails). Extra arguments go to pytest (e.g. -k name -rA).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
suite_src="${TUF_CONFORMANCE_DIR:-$repo/../shared/tuf-conformance}"
venv="$repo/.cache/venv-tufc"
work="$repo/.cache/tuf-conformance"

if [ ! -f "$suite_src/pyproject.toml" ]; then
    echo "tuf-conformance: suite not found at $suite_src" >&2
    exit 1
fi

# The suite's pinned dependencies, read from its pyproject.toml.
reqs="$(python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$suite_src/pyproject.toml")"
if [ ! -x "$venv/bin/pytest" ] || [ "$(cat "$venv/.pinned" 2>/dev/null)" != "$reqs" ]; then
    echo "== tuf-conformance: venv with $(echo "$reqs" | tr '\n' ' ')"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    echo "$reqs" | xargs "$venv/bin/pip" install -q
    echo "$reqs" > "$venv/.pinned"
fi

if ! command -v faketime >/dev/null 2>&1; then
    echo "== tuf-conformance: installing faketime"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q faketime
fi

# The binary `cargo test --workspace` already built (tools' integration tests need it),
# with the workspace's unified features: after the test command this is a no-op, where
# `cargo build -p edgeinfer` would recompile tract, heed and rumqttc with fewer features.
echo "== tuf-conformance: cargo test --workspace --no-run (builds target/debug/edgeinfer)"
cargo test --workspace --no-run --locked -q
export EDGEINFER_BIN="$repo/target/debug/edgeinfer"

# CI's copy of ../shared has no write bits; pytest and the suite write next to it.
rm -rf "$work"
cp -r "$suite_src" "$work"
chmod -R u+w "$work"

echo "== tuf-conformance: pytest against $EDGEINFER_BIN"
cd "$work"
"$venv/bin/pytest" tuf_conformance \
    --entrypoint "$repo/tools/ci/tuf-client" \
    -p no:cacheprovider -q -rfEX "$@"
