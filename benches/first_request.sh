#!/usr/bin/env bash
# The first requests after READY against later ones (issue 7 item 7): starts the release
# daemon on embedded defaults (demo churn model, every allowed core), waits for its
# "serving" line (printed right before READY=1), then makes ROUNDS rounds of one fresh
# `edgeinfer predict --json` connection each, and prints each round's queue_us and
# compute_us as the daemon reported them. Rounds 1..cores are each core's first request.
#   bash benches/first_request.sh            # ROUNDS=12 by default
# Writes $OUT/first_request.json (one line per round).
set -euo pipefail
NAME=first_request
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-12}
ROW=0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6,1.7,1.8,1.9,2.0

"$BIN/edgeinferd" --unix-socket "$RUN/d.sock" --tcp "" --http "" --state-dir "$RUN/var" \
    >"$RUN/stdout" 2>"$RUN/stderr" &
PIDS+=($!)
for _ in $(seq 600); do grep -q serving "$RUN/stdout" 2>/dev/null && break; sleep 0.1; done
grep -q serving "$RUN/stdout" || { cat "$RUN/stderr" >&2; exit 1; }
for i in $(seq "$ROUNDS"); do
    "$BIN/edgeinfer" predict --socket "$RUN/d.sock" --model churn --input "$ROW" --json \
        | python3 -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"round": int(sys.argv[1]), "queue_us": r["queue_us"], "compute_us": r["compute_us"], "latency_us": r["latency_us"]}))' "$i"
done | tee "$OUT/first_request.json"
