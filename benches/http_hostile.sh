#!/usr/bin/env bash
# HTTP under hostile clients (issue 7 item 1), one run, one daemon: RSS after held uploads and
# after 1,100 half-sent heads against idle, and /healthz p50/p99 while a slow model runs
# against quiet. The driver is benches/http_hostile.py (python3 stdlib); raw JSON to $OUT.
#
#   benches/http_hostile.sh                  # release build
#   PROFILE=dev benches/http_hostile.sh      # the test build (deps optimised, daemon not)
#   HELD=96 HEADS=1100 SAMPLES=2000 SLOW_ROWS=1500 benches/http_hostile.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROFILE=${PROFILE:-release}
cargo build --profile "$PROFILE" -q -p edgeinferd
case $PROFILE in dev) DIR=debug ;; *) DIR=$PROFILE ;; esac
OUT=${OUT:-$PWD/target/bench-http-hostile}
mkdir -p "$OUT"
python3 benches/http_hostile.py "$PWD/target/$DIR/edgeinferd" | tee "$OUT/http_hostile.json"
echo "commit $(git rev-parse --short HEAD), profile $PROFILE, $(nproc) cores" | tee -a "$OUT/http_hostile.json.txt"
