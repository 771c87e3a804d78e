#!/usr/bin/env bash
# Regenerates demo/registry/ (the signed demo repository tools/run-demo.sh follows) from the
# fixture model, with the demo keys. The output is deterministic; commit it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cargo run -q -p edgeinferd --example demo_registry -- demo/registry
