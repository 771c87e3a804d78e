#!/usr/bin/env bash
# Feature-store figures (benches/RESULTS.md, "Feature store"): LMDB lookup + assembly at
# 10k and 1M entities, one Redis GET of the same row over loopback, CSV import rows/s, and
# end-to-end PREDICT_BY_ENTITY vs PREDICT (by tensor) over the daemon's Unix socket.
# Installs and starts Debian's redis-server itself (bench only; tests never need it).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if ! command -v redis-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize no \
    >"$dir/redis.log" 2>&1 &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

echo "commit $(git rev-parse --short HEAD)$(git diff --quiet -- features daemon/src/server/entity.rs || echo '+dirty')  machine: $(nproc) cores, $(uname -r)"
echo "redis $(redis-server --version | awk '{print $3}')"
EDGEINFER_BENCH_REDIS="127.0.0.1:$port" cargo bench -p edgeinfer-features --bench lookup -- --bench
echo
# The daemon (release) with the logreg fixture, stores filled by the bench, one core: this
# build on a key-order store and on a shuffled-order one, interleaved request by request;
# EDGEINFER_BENCH_BEFORE_DAEMON=/path/to/an/older/edgeinferd runs that binary beside them
# (f32 rows; EDGEINFER_BENCH_BEFORE_ROWS=f64 for one older than the f32 format): a
# before/after in the same run. Then this build alone with server.busy_poll_us = 50.
if [ -n "${EDGEINFER_BENCH_BEFORE_DAEMON:-}" ]; then
    echo "before daemon: $EDGEINFER_BENCH_BEFORE_DAEMON"
fi
cargo bench -p edgeinferd --bench entity_e2e -- --bench
