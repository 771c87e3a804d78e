#!/usr/bin/env bash
# Syscalls per request on the daemon at concurrency 1 (issue 13 item 1), for both core
# drivers, counted twice: by perf's syscall tracepoints (`perf stat -p`, which does not stop
# the daemon: the figure to go by) and by `strace -c -f` (which stops it at every syscall and
# so changes the interleaving with the client: reads that would fail find their data). Each
# count is taken while `edgeinfer bench` sends 1-row churn PREDICTs over the Unix socket,
# minus an idle baseline of the same length on the same daemon, divided by the requests the
# bench counted. The p50s: from an untraced run, and from the perf-counted one.
#
#   benches/syscalls.sh                       # 5 s traced per driver
#   DURATION=3 BIN=target/release benches/syscalls.sh   # binaries already built there
#
# Daemon and client share one core (PIN_CORE, default 0), as in serve.sh. Per-syscall rows
# and the totals go to stdout; raw strace tables and bench JSON to $OUT.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
PIN=${PIN_CORE:-0}
DRIVERS=${DRIVERS:-epoll io_uring}
NAME=syscalls
# shellcheck source=benches/common.sh
source benches/common.sh

# strace from Debian, once.
if ! command -v strace > /dev/null || ! command -v perf > /dev/null; then
    apt-get update -qq && apt-get install -y -qq strace linux-perf > /dev/null
fi

bench() { # json file, seconds, warm-up seconds
    taskset -c "$PIN" "$BIN/edgeinfer" bench --json --duration "$2" --warmup "$3" \
        --socket "$DSOCK" --model churn --input "$ROW20" > "$1"
}

# perf's tracepoint counters do not stop the daemon: its counts are the ones to trust (strace
# stops the traced thread at every syscall, which lets the client run ahead, so a read that
# would fail finds its data). Events named here, then every syscall and every EAGAIN.
PERF_EVENTS=raw_syscalls:sys_enter
for s in recvfrom recvmsg read epoll_wait epoll_pwait writev write sendmsg sendto io_uring_enter futex; do
    PERF_EVENTS+=,syscalls:sys_enter_$s
done
count() { # output file, then the command to count under
    local out=$1; shift
    perf stat -x, -e "$PERF_EVENTS" -e raw_syscalls:sys_exit --filter 'ret == -11' \
        -p "$DPID" -o "$out" & local ppid=$!
    sleep 0.3
    "$@"
    kill -INT "$ppid"; wait "$ppid" || true
}

trace() { # output file, then the command to trace under (run while strace is attached)
    local out=$1; shift
    strace -c -f -p "$DPID" -o "$out" 2> "$out.log" & local spid=$!
    # Attached to every thread once it says so.
    for _ in $(seq 1 100); do grep -q "attached" "$out.log" 2>/dev/null && break; sleep 0.05; done
    sleep 0.2
    "$@"
    kill -INT "$spid"; wait "$spid" || true
}

printf '%-9s %-28s %s\n' driver syscall "per request (calls, errors)"
for driver in $DRIVERS; do
    DSOCK=$RUN/d-$driver.sock
    EDGEINFER_LOG=warn taskset -c "$PIN" "$BIN/edgeinferd" --driver "$driver" --cores "$PIN" \
        --unix-socket "$DSOCK" --http "" --model churn=$CHURN > "$RUN/d-$driver.out" 2>&1 &
    DPID=$!; PIDS+=($DPID)
    wait_for "$DSOCK"
    # Warm (sessions, buffers, the branch predictor) and take the untraced p50.
    bench "$OUT/p50_$driver.json" 3 1
    count "$OUT/idle_$driver.perf" sleep "$DURATION"
    count "$OUT/load_$driver.perf" bench "$OUT/perf_$driver.json" "$DURATION" 0
    trace "$OUT/idle_$driver.strace" sleep "$DURATION"
    trace "$OUT/load_$driver.strace" bench "$OUT/load_$driver.json" "$DURATION" 0
    kill -TERM "$DPID"; wait "$DPID" || true
    python3 - "$driver" "$OUT/idle_$driver.strace" "$OUT/load_$driver.strace" \
        "$OUT/load_$driver.json" "$OUT/p50_$driver.json" \
        "$OUT/idle_$driver.perf" "$OUT/load_$driver.perf" "$OUT/perf_$driver.json" \
        > "$OUT/summary_$driver.txt" << 'EOF'
import json, sys

driver, idle_f, load_f, load_j, p50_j, idle_p, load_p, perf_j = sys.argv[1:]

def table(path):
    """strace -c's table: syscall -> (calls, errors)."""
    rows = {}
    for line in open(path):
        f = line.split()
        if len(f) < 5 or not f[-1].isidentifier() or f[-1] == "total" or not f[3].isdigit():
            continue
        errors = int(f[4]) if len(f) == 6 else 0
        rows[f[-1]] = (int(f[3]), errors)
    return rows

def counts(path):
    """perf stat -x, output: event -> count (the EAGAIN exits keyed as 'EAGAIN')."""
    rows = {}
    for line in open(path):
        f = line.strip().split(",")
        if len(f) < 3 or not f[0].isdigit():
            continue
        name = f[2].split(":")[-1].removeprefix("sys_enter_")
        rows["EAGAIN" if name == "sys_exit" else name] = int(f[0])
    return rows

def requests(path):
    run = json.load(open(path))
    n = run["requests"] + run["errors"]
    if n == 0:
        sys.exit(f"syscalls.sh: {driver}: the measured run completed no requests")
    return n

pi, pl, pn = counts(idle_p), counts(load_p), requests(perf_j)
# Either lengths match (both DURATION) or near enough: the baseline is a few hundred a second.
per = {k: (pl.get(k, 0) - pi.get(k, 0)) / pn for k in pl}
# Three decimals: the target (<= 3) was once missed by 0.01.
named = "  ".join(f"{k} {v:.3f}" for k, v in sorted(per.items())
                  if k not in ("sys_enter", "EAGAIN") and abs(v) >= 0.0005)
print(f"{driver:<9} {'perf: ' + named}")
print(f"{driver:<9} {'PERF TOTAL':<28} {per.get('sys_enter', 0):6.3f} "
      f"({per.get('EAGAIN', 0):.3f} EAGAIN) over {pn} requests; "
      f"p50 {json.load(open(perf_j))['p50_us']} us in that run")

idle, load = table(idle_f), table(load_f)
n = requests(load_j)
total = total_err = 0.0
for name in sorted(set(idle) | set(load)):
    c = (load.get(name, (0, 0))[0] - idle.get(name, (0, 0))[0]) / n
    e = (load.get(name, (0, 0))[1] - idle.get(name, (0, 0))[1]) / n
    if abs(c) < 0.005:
        continue
    total += c
    total_err += e
    print(f"{driver:<9} strace {name:<21} {c:6.2f} ({e:.2f} failed)")
p50 = json.load(open(p50_j))["p50_us"]
print(f"{driver:<9} {'STRACE TOTAL':<28} {total:6.2f} ({total_err:.2f} failed) "
      f"over {n} requests traced; untraced p50 {p50} us")
EOF
    cat "$OUT/summary_$driver.txt"
done
echo "binaries: $BIN; commit $(git rev-parse --short HEAD)$(git diff --quiet -- daemon || echo ' + uncommitted daemon changes')"
