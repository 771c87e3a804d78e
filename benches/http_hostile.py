#!/usr/bin/env python3
"""HTTP under hostile clients (issue 7 item 1), one run against its quiet baseline.

Started by benches/http_hostile.sh with the daemon binary; stdlib only. Phases, one daemon:
  idle          RSS after READY (the baseline of the memory figures)
  held uploads  48 connections `POST /predict` with Content-Length 15 MiB, send one byte
                short, hold: RSS while held (peak, sampled every 10 ms) and after the server
                has closed them all (body timeout / budget)
  half heads    1,100 connections each send `GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n` and hold,
                under the daemon's own `ulimit -n 1024`: its open fds and RSS while held, a
                fresh /healthz during the attack, and RSS once the header timeout closed them
  latency       /healthz p50/p99 over one keep-alive connection, quiet, then while a slow
                model (tests/fixtures/models/slow_mlp.onnx) runs /predict back to back
Prints one JSON document.
"""

import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELD = int(os.environ.get("HELD", "48"))
DECLARED = 15 << 20
HEADS = int(os.environ.get("HEADS", "1100"))
SAMPLES = int(os.environ.get("SAMPLES", "2000"))
SLOW_ROWS = int(os.environ.get("SLOW_ROWS", "1500"))
HEADER_TIMEOUT_MS = 2000
BODY_TIMEOUT_MS = 5000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def status(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def mib(b):
    return round(b / (1 << 20), 1)


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def get(port, path, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


class Sampler:
    """Peak VmRSS of `pid`, sampled every 10 ms while running."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                self.peak = max(self.peak, status(self.pid, "VmRSS"))
            except (OSError, KeyError):
                pass
            time.sleep(0.01)

    def done(self):
        self.stop = True
        self.t.join()
        return self.peak


def wait_closed(socks, limit):
    """Seconds until the server closed every socket (None if some stayed open past limit)."""
    t0 = time.monotonic()
    open_ = list(socks)
    while open_ and time.monotonic() - t0 < limit:
        still = []
        for s in open_:
            try:
                s.setblocking(False)
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
            except BlockingIOError:
                still.append(s)
                continue
            except OSError:
                pass
        open_ = still
        time.sleep(0.02)
    return None if open_ else time.monotonic() - t0


def settle_rss(pid, seconds=3.0):
    time.sleep(seconds)
    return status(pid, "VmRSS")


def held_uploads(pid, port):
    sampler = Sampler(pid)
    socks = []

    def one():
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
        head = (
            "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {DECLARED}\r\n\r\n"
        ).encode()
        chunk = b" " * (64 << 10)
        left = DECLARED - 1
        try:
            s.sendall(head)
            while left > 0:
                n = min(left, len(chunk))
                s.sendall(chunk[:n])
                left -= n
        except OSError:
            pass  # refused (503) and closed by the server mid-body

    threads = [threading.Thread(target=one) for _ in range(HELD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = status(pid, "VmRSS")
    closed_s = wait_closed(socks, BODY_TIMEOUT_MS / 1000 + 20)
    peak = sampler.done()
    for s in socks:
        s.close()
    return {
        "connections": HELD,
        "rss_held_mib": mib(held),
        "rss_peak_mib": mib(peak),
        "all_closed_by_server_after_s": closed_s,
        "rss_after_mib": mib(settle_rss(pid)),
    }


def half_heads(pid, port, log_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, HEADS + 256)), hard))
    socks = []
    t0 = time.monotonic()
    for _ in range(HEADS):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    time.sleep(0.3)
    during_fds = fds(pid)
    during_rss = status(pid, "VmRSS")
    # A fresh client during the attack: answered (503 while every slot is held), not hung.
    t1 = time.monotonic()
    try:
        code = get(port, "/healthz", timeout=5)
    except OSError as e:
        code = f"error: {e}"
    fresh_ms = (time.monotonic() - t1) * 1e3
    closed_s = wait_closed(socks, HEADER_TIMEOUT_MS / 1000 + 30)
    for s in socks:
        s.close()
    after_code = get(port, "/healthz")
    log = open(log_path).read()
    return {
        "connections": HEADS,
        "daemon_nofile": 1024,
        "daemon_fds_during": during_fds,
        "rss_during_mib": mib(during_rss),
        "fresh_healthz_during": code,
        "fresh_healthz_during_ms": round(fresh_ms, 2),
        "all_closed_after_s": closed_s,
        "seconds_since_first_connect": round(time.monotonic() - t0, 2),
        "healthz_after": after_code,
        "accept_failed_log_lines": log.count("accept failed"),
        "rss_after_mib": mib(settle_rss(pid)),
    }


def latencies(port, n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c.request("GET", "/healthz")
        r = c.getresponse()
        r.read()
        out.append(time.perf_counter() - t)
        assert r.status == 200, r.status
    c.close()
    out.sort()
    return {
        "n": n,
        "p50_us": round(out[len(out) // 2] * 1e6, 1),
        "p99_us": round(out[int(len(out) * 0.99)] * 1e6, 1),
        "max_us": round(out[-1] * 1e6, 1),
    }


def healthz_under_slow_model(port):
    quiet = latencies(port, SAMPLES)
    rows = [[((i * 64 + j) % 17) * 0.1 for j in range(64)] for i in range(SLOW_ROWS)]
    body = json.dumps({"features": rows}).encode()
    stop = threading.Event()
    runs = []

    def slow():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while not stop.is_set():
            t = time.perf_counter()
            c.request("POST", "/predict", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status
            runs.append(time.perf_counter() - t)
        c.close()

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.5)
    busy = latencies(port, SAMPLES)
    stop.set()
    th.join()
    return {
        "slow_rows": SLOW_ROWS,
        "slow_predict_s_median": round(statistics.median(runs), 3) if runs else None,
        "slow_predicts": len(runs),
        "quiet": quiet,
        "while_slow": busy,
        "p50_ratio": round(busy["p50_us"] / quiet["p50_us"], 2),
        "p99_ratio": round(busy["p99_us"] / quiet["p99_us"], 2),
    }


def main():
    run = tempfile.mkdtemp(prefix="http-hostile-")
    port, tcp = free_port(), free_port()
    cfg = os.path.join(run, "edgeinferd.toml")
    with open(cfg, "w") as f:
        f.write(
            f'state_dir = "{run}/var"\nlog_level = "warn"\n'
            f'[server]\nunix_socket = "{run}/edgeinferd.sock"\ntcp = "127.0.0.1:{tcp}"\n'
            f'[http]\nlisten = "127.0.0.1:{port}"\npredict_model = "slow"\n'
            f"header_read_timeout_ms = {HEADER_TIMEOUT_MS}\nbody_read_timeout_ms = {BODY_TIMEOUT_MS}\n"
            f'[[models]]\nname = "churn"\npath = "{ROOT}/tests/fixtures/models/churn_rf.onnx"\nengine = "tract"\n'
            f'[[models]]\nname = "slow"\npath = "{ROOT}/tests/fixtures/models/slow_mlp.onnx"\nengine = "tract"\n'
        )
    log_path = os.path.join(run, "daemon.log")

    def limit_fds():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    p = subprocess.Popen(
        [BIN, "--config", cfg],
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "w"),
        preexec_fn=limit_fds,
    )
    try:
        t0 = time.monotonic()
        while True:
            try:
                if get(port, "/readyz", timeout=1) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() - t0 > 120 or p.poll() is not None:
                raise SystemExit("daemon did not become ready: " + open(log_path).read())
            time.sleep(0.1)
        idle = settle_rss(p.pid, 1.0)
        out = {"idle_rss_mib": mib(idle)}
        out["held_uploads"] = held_uploads(p.pid, port)
        out["half_sent_headers"] = half_heads(p.pid, port, log_path)
        out["healthz_latency"] = healthz_under_slow_model(port)
        out["config"] = {
            "header_read_timeout_ms": HEADER_TIMEOUT_MS,
            "body_read_timeout_ms": BODY_TIMEOUT_MS,
            "other http keys": "defaults (max_connections 256, body_budget_bytes 64 MiB, infer_threads 1)",
        }
        print(json.dumps(out, indent=2))
    finally:
        p.terminate()
        p.wait()
        subprocess.run(["rm", "-rf", run])


if __name__ == "__main__":
    main()
