#!/usr/bin/env bash
# Hostile binary-protocol clients against the release daemon, each figure against a quiet
# baseline measured in the same run (issue 7, items 3 and 4):
#   - RSS of edgeinferd when idle, and after each burst: 64 connections pipelining 1,000
#     1-row PREDICTs each; 4 × 2 frames of ~63 MiB (read whole, then refused); 40 rounds of
#     2,000 connections;
#   - a victim's p50/p99 (edgeinfer bench, 1 connection, 1 row) alone, and while another
#     client sends 64 MiB PREDICTs: over the default row cap (refused from their metadata,
#     their data discarded), and with the cap raised so that they run (in chunks); and while
#     two clients send requests at the cap (65,536 rows, run in chunks), and the same with
#     chunking off (server.chunk_budget_us out of reach: each request runs whole).
# Server and clients share the machine's cores (the daemon runs on core 0 only, so the
# victim and the attacker are served by the same core).
#
#   benches/hostile.sh              # 5 s per latency measurement
#   DURATION=10 benches/hostile.sh
#   SKIP_RSS=1 benches/hostile.sh   # head-of-line figures only
#   CHUNK_BUDGET_US=50 benches/hostile.sh   # another server.chunk_budget_us (default 250)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
NAME=hostile
# shellcheck source=benches/common.sh
source benches/common.sh
ulimit -n 16384

daemon() { # extra [server] lines
    DSOCK=$RUN/d.sock
    rm -f "$DSOCK"
    cat > "$RUN/d.toml" <<EOF
state_dir = "$RUN/var"
log_level = "warn"
[server]
unix_socket = "$DSOCK"
tcp = ""
cores = [0]
$1
${CHUNK_BUDGET_US:+chunk_budget_us = $CHUNK_BUDGET_US}
[http]
listen = ""
[[models]]
name = "churn"
path = "$CHURN"
engine = "ort-cpu"
EOF
    "$BIN/edgeinferd" --config "$RUN/d.toml" 2> "$RUN/d.log" &
    DPID=$!; PIDS+=($DPID)
    for _ in $(seq 1 600); do
        "$BIN/edgeinfer" status --socket "$DSOCK" > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "hostile.sh: the daemon did not come up:" >&2; cat "$RUN/d.log" >&2; exit 1
}
stop_daemon() { kill -TERM "$DPID"; wait "$DPID" || true; }

bench() { # name, args...
    local name=$1; shift
    "$BIN/edgeinfer" bench --json --duration "$DURATION" --warmup 1 --socket "$DSOCK" --model churn "$@" > "$OUT/$name.json"
}

# --- memory --- (SKIP_RSS=1: head-of-line figures only)
if [ -z "${SKIP_RSS:-}" ]; then
    daemon ""
    python3 benches/hostile_clients.py rss "$DSOCK" "$DPID" > "$OUT/rss.json"
    stop_daemon
fi

# --- head-of-line blocking ---
daemon ""
bench victim_alone --input "$ROW20"
# 64 MiB requests (838,858 rows, one outstanding), over max_request_rows (65,536): refused
# from their metadata, the rest of each frame read and discarded.
python3 benches/hostile_clients.py attack "$DSOCK" 838858 $((DURATION + 4)) 1 > "$OUT/attacker_capped.json" &
ATT=$!; sleep 2
bench victim_vs_64mib_capped --input "$ROW20"
wait $ATT || true
# Requests at the cap (65,536 rows, 5 MiB), 2 connections.
python3 benches/hostile_clients.py attack "$DSOCK" 65536 $((DURATION + 4)) 2 > "$OUT/attacker_at_cap.json" &
ATT=$!; sleep 2
bench victim_vs_at_cap --input "$ROW20"
wait $ATT || true
stop_daemon
# The cap raised so that 64 MiB requests run (in chunks).
daemon "max_request_rows = 1000000"
python3 benches/hostile_clients.py attack "$DSOCK" 838858 $((DURATION + 6)) 1 > "$OUT/attacker_uncapped.json" &
ATT=$!; sleep 3
bench victim_vs_64mib_uncapped --input "$ROW20"
wait $ATT || true
stop_daemon
# Chunking off (a budget no request reaches): requests at the cap run whole, as before.
CHUNK_BUDGET_US=3600000000 daemon ""
python3 benches/hostile_clients.py attack "$DSOCK" 65536 $((DURATION + 4)) 2 > "$OUT/attacker_at_cap_whole.json" &
ATT=$!; sleep 2
bench victim_vs_at_cap_whole --input "$ROW20"
wait $ATT || true
stop_daemon

python3 - "$OUT" "$DURATION" <<'EOF'
import json, os, subprocess, sys
out, duration = sys.argv[1], sys.argv[2]
r = {f[:-5]: json.load(open(os.path.join(out, f))) for f in os.listdir(out) if f.endswith(".json")}
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
budget = os.environ.get("CHUNK_BUDGET_US", "250 (default)")
print(f"edgeinfer hostile-client figures: commit {commit}, {os.cpu_count()} cores, daemon on core 0, {duration} s per latency run, chunk_budget_us {budget}")
mib = lambda b: b / (1 << 20)
if "rss" in r:
    m = r["rss"]
    print(f"\nRSS (MiB)            {'after':>8} {'× idle':>7}")
    print(f"idle                 {mib(m['idle']):8.1f} {1:7.2f}")
    for k, label in (("pipelined", "64 × 1000 pipelined"), ("large", "4 × 2 frames 63 MiB"), ("churn_10", "churn, round 10"), ("churn_40", "churn, round 40")):
        print(f"{label:20} {mib(m[k]):8.1f} {m[k] / m['idle']:7.2f}")
    print(f"churn rounds (MiB): {[round(mib(x)) for x in m['churn']]}")
print(f"\nvictim, 1 row       {'p50 µs':>9} {'p99 µs':>9} {'p99 × alone':>12} {'attacker ok/err':>16}")
base = r["victim_alone"]["p99_us"]
for k, a, label in (("victim_alone", None, "alone"), ("victim_vs_64mib_capped", "attacker_capped", "vs 64 MiB, capped"),
                    ("victim_vs_at_cap", "attacker_at_cap", "vs 65,536 rows ×2"), ("victim_vs_64mib_uncapped", "attacker_uncapped", "vs 64 MiB, uncapped"),
                    ("victim_vs_at_cap_whole", "attacker_at_cap_whole", "vs 65,536 ×2, whole")):
    x = r[k]
    att = f"{r[a]['ok']}/{r[a]['errors']}" if a else ""
    print(f"{label:19} {x['p50_us']:9.1f} {x['p99_us']:9.1f} {x['p99_us'] / base:12.1f} {att:>16}")
EOF
