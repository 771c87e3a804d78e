//! The HTTP server under hostile clients, over real sockets: held uploads stay within the
//! body budget and give their memory back (the spawned daemon's VmRSS), half-sent headers
//! are closed after the header timeout and cannot take more than `max_connections` fds,
//! extra connections are refused while existing ones are served, `/healthz` answers while a
//! slow model runs, and a tiny KServe body with a huge declared shape reserves nothing.

#[path = "appliance_support/mod.rs"]
mod appliance_support;
mod http_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appliance_support::{daemon_command, http_addr, NotifySocket, Reaper, STARTUP};
use edgeinfer_engine::EngineChoice;
use edgeinferd::config::Config;
use http_support::*;
use serde_json::json;

const MIB: u64 = 1 << 20;

// === helpers ===

/// The real daemon in `dir` with the demo model and these extra `[http]` keys.
struct Daemon {
    proc: Reaper,
    http: SocketAddr,
    config: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, http_keys: &str) -> Daemon {
        let config = dir.join("edgeinferd.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{d}/var\"\nlog_level = \"warn\"\n[server]\nunix_socket = \"{d}/edgeinferd.sock\"\n\
                 tcp = \"127.0.0.1:0\"\nshutdown_grace_ms = 2000\n[http]\nlisten = \"127.0.0.1:0\"\n{http_keys}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut notify = NotifySocket::bind(dir);
        let mut cmd = daemon_command(&config);
        cmd.env("NOTIFY_SOCKET", &notify.path);
        let proc = Reaper(Some(cmd.spawn().unwrap()));
        let ready = notify.wait_for("READY=1", STARTUP);
        let status = appliance_support::field(&ready, "STATUS").unwrap_or_default();
        Daemon {
            http: http_addr(status),
            proc,
            config,
        }
    }

    /// A `/proc/<pid>/status` field in bytes (`VmRSS`, `VmPeak`, …).
    fn status_bytes(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid())).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }

    fn rss(&self) -> u64 {
        self.status_bytes("VmRSS")
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.proc.pid()))
            .unwrap()
            .count()
    }

    fn log(&self) -> String {
        appliance_support::daemon_log(&self.config)
    }
}

/// The status code of a raw HTTP reply, if it has one.
fn status_of(raw: &[u8]) -> Option<u16> {
    let line = raw.split(|&b| b == b'\r').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Reads one response (head and `content-length` body) from a kept-alive connection.
fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("reading a response head");
        assert_eq!(
            n,
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status_of(head.as_bytes()).unwrap(), head, body)
}

/// Until the server closes `s` (or `limit` passes): what it sent, and whether it closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, false)
            }
            // A reset is a close too: the server did not read what was still in flight.
            Err(_) => return (out, true),
        }
    }
}

// === held uploads ===

#[test]
fn held_uploads_stay_within_the_body_budget_and_give_their_memory_back() {
    const BUDGET: u64 = 32 * MIB;
    const DECLARED: usize = 15 << 20;
    const CLIENTS: usize = 48;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &format!("body_budget_bytes = {BUDGET}\nbody_read_timeout_ms = 3000\n"),
    );
    let idle = d.rss();

    // Each client declares 15 MiB, sends all but the last byte as fast as it can, and holds.
    let addr = d.http;
    let sent_all = Arc::new(std::sync::Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let sent_all = sent_all.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let head = format!(
                    "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {DECLARED}\r\n\r\n"
                );
                let chunk = vec![b' '; 64 << 10];
                let mut left = DECLARED - 1;
                let mut ok = s.write_all(head.as_bytes()).is_ok();
                while ok && left > 0 {
                    let n = left.min(chunk.len());
                    ok = s.write_all(&chunk[..n]).is_ok();
                    left -= n;
                }
                sent_all.wait();
                let start = Instant::now();
                let (raw, closed) = read_until_closed(&mut s, Duration::from_secs(30));
                (status_of(&raw), closed, ok, start.elapsed())
            })
        })
        .collect();

    // While the uploads arrive and are held: resident memory stays within the budget.
    let mut peak = 0;
    let sampler_done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = sampler_done.clone();
        let pid = d.proc.pid();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !done.load(SeqCst) {
                if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kb) = t
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    {
                        peak = peak.max(kb * 1024);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    sent_all.wait();
    let held = d.rss();
    let outcomes: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    sampler_done.store(true, SeqCst);
    peak = peak.max(sampler.join().unwrap());

    let slack = 24 * MIB;
    assert!(
        peak <= idle + BUDGET + slack,
        "peak RSS {} MiB with {CLIENTS} held uploads; idle {} MiB, budget {} MiB",
        peak / MIB,
        idle / MIB,
        BUDGET / MIB
    );
    // Every connection was closed by the server: 408 for the held ones (body timeout), 503
    // (budget) or a reset for the rest.
    for (i, (status, closed, _, _)) in outcomes.iter().enumerate() {
        assert!(closed, "client {i} still open after 30 s ({status:?})");
        assert!(
            matches!(status, None | Some(408) | Some(503)),
            "client {i}: {status:?}"
        );
    }
    let timed_out = outcomes.iter().filter(|o| o.0 == Some(408)).count();
    let refused = CLIENTS - timed_out;
    assert!(
        timed_out >= 1,
        "no upload was held to its timeout: {outcomes:?}"
    );
    assert!(
        timed_out <= (BUDGET as usize / (DECLARED - 1)),
        "{timed_out} uploads held at once within a {BUDGET}-byte budget"
    );
    assert!(refused >= CLIENTS - 2, "{outcomes:?}");

    // Closed connections give their memory back.
    let settle = Instant::now();
    let after = loop {
        let rss = d.rss();
        if rss <= idle + 16 * MIB || settle.elapsed() > Duration::from_secs(10) {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        after <= idle + 16 * MIB,
        "RSS {} MiB after the uploads closed; idle {} MiB (held {} MiB)",
        after / MIB,
        idle / MIB,
        held / MIB
    );
    // …and the daemon serves on.
    assert_eq!(get(d.http, "/healthz").status, 200);
    let r = post_json(d.http, "/predict", &json!({"features": [vec![0.5; 20]]}));
    assert_eq!(r.status, 200, "{}", r.text());
    let m = get(d.http, "/metrics").text();
    assert!(
        m.lines()
            .any(|l| l == "edgeinfer_http_body_bytes_in_flight 0"),
        "{m}"
    );
    assert!(
        !m.lines()
            .any(|l| l == "edgeinfer_http_body_budget_refused_total 0"),
        "the budget refused nobody:\n{m}"
    );
}

// === half-sent headers ===

#[test]
fn half_sent_headers_are_closed_after_the_header_timeout_within_max_connections() {
    const MAX: usize = 32;
    const CLIENTS: usize = 300;
    let timeout = Duration::from_millis(1000);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &format!(
            "max_connections = {MAX}\nheader_read_timeout_ms = {}\nkeep_alive_idle_ms = 60000\n",
            timeout.as_millis()
        ),
    );
    let idle_fds = d.fds();

    // On a quiet daemon, one half-sent head is closed by the header timeout and not before.
    let mut one = TcpStream::connect(d.http).unwrap();
    let t0 = Instant::now();
    one.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (got, closed) = read_until_closed(&mut one, timeout + Duration::from_secs(10));
    let took = t0.elapsed();
    assert!(
        closed && got.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        took >= timeout.mul_f32(0.9) && took <= timeout + Duration::from_secs(5),
        "a half-sent head was closed after {took:?}; header_read_timeout_ms is {timeout:?}"
    );

    // Each socket with what the server sent and how long after its connect it was closed.
    let mut socks: Vec<(TcpStream, Vec<u8>, Instant, Option<Duration>)> = (0..CLIENTS)
        .map(|_| {
            let mut s = TcpStream::connect(d.http).unwrap();
            let at = Instant::now();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s.set_nonblocking(true).unwrap();
            (s, Vec::new(), at, None)
        })
        .collect();
    let start = Instant::now();
    let mut most_fds = 0;
    let deadline = start + timeout + Duration::from_secs(10);
    while socks.iter().any(|s| s.3.is_none()) && Instant::now() < deadline {
        most_fds = most_fds.max(d.fds());
        for (s, got, at, closed) in socks.iter_mut().filter(|s| s.3.is_none()) {
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => *closed = Some(at.elapsed()),
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => *closed = Some(at.elapsed()),
                }
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each connection was closed: refused at once (503, or closed unanswered when too many
    // refusals were being written), or, if admitted, by the header timeout.
    for (i, (_, got, _, closed)) in socks.iter().enumerate() {
        closed.unwrap_or_else(|| panic!("connection {i} still open at {deadline:?}"));
        match status_of(got) {
            Some(503) => {
                let text = String::from_utf8_lossy(got);
                assert!(text.contains("http.max_connections = 32"), "{text}");
                assert!(text.to_lowercase().contains("retry-after: 1"), "{text}");
            }
            None => {}
            other => panic!(
                "connection {i}: {other:?}: {}",
                String::from_utf8_lossy(got)
            ),
        }
    }
    let refused_503 = socks
        .iter()
        .filter(|s| status_of(&s.1) == Some(503))
        .count();
    assert!(
        // At most 64 refusals are written at once (each waits up to 500 ms for the client's
        // request); the others are closed unanswered. At least one full round is answered.
        refused_503 >= 64,
        "only {refused_503} of {CLIENTS} got 503"
    );
    // Never more fds than the connection limit, the refusals being written, and the listeners.
    assert!(
        most_fds <= idle_fds + MAX + 64 + 8,
        "{most_fds} fds open (idle {idle_fds}) with {CLIENTS} half-sent heads"
    );
    drop(socks);
    assert_eq!(get(d.http, "/healthz").status, 200);
    let log = d.log();
    assert!(!log.contains("accept failed"), "{log}");
}

// === max_connections ===

#[test]
fn max_connections_refuses_extras_while_an_existing_client_is_served() {
    let mut cfg = Config::default();
    cfg.http.max_connections = 2;
    let h = serve(&cfg, std::sync::Arc::new(Default::default()));
    let a = h.local_addr();
    let ask = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut kept = TcpStream::connect(a).unwrap();
    kept.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    kept.write_all(ask).unwrap();
    assert_eq!(read_response(&mut kept).0, 200);
    // A second connection that sends nothing takes the last slot.
    let silent = TcpStream::connect(a).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let mut extra = TcpStream::connect(a).unwrap();
    let (raw, closed) = read_until_closed(&mut extra, IO_TIMEOUT);
    assert!(closed);
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(status_of(&raw), Some(503), "{text}");
    assert!(text.contains("http.max_connections = 2"), "{text}");

    // The kept-alive client is still served on its connection.
    kept.write_all(ask).unwrap();
    assert_eq!(read_response(&mut kept).0, 200);

    // Once a slot frees, a new client gets in.
    drop(silent);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(ask).unwrap();
        let (raw, _) = read_until_closed(&mut s, IO_TIMEOUT);
        match status_of(&raw) {
            Some(200) => break,
            Some(503) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("after a slot freed: {other:?}"),
        }
    }
}

// === a slow model ===

/// Rows of the slow fixture: ~33.6 MFLOP each, so this request runs for seconds.
const SLOW_ROWS: usize = 4000;

#[test]
fn healthz_and_metrics_answer_while_a_slow_model_runs_predict() {
    let mut cfg = Config::default();
    cfg.http.predict_model = Some("slow".into());
    // One inference thread and no waiting room: a second request is refused while one runs.
    cfg.http.infer_threads = 1;
    cfg.http.infer_queue = 0;
    let t = table(&[spec("slow", "slow_mlp", EngineChoice::Tract)]);
    let h = serve(&cfg, t);
    let a = h.local_addr();

    let done = Arc::new(AtomicBool::new(false));
    let slow = {
        let done = done.clone();
        std::thread::spawn(move || {
            let rows: Vec<Vec<f32>> = (0..SLOW_ROWS)
                .map(|i| (0..64).map(|j| ((i * 64 + j) % 17) as f32 * 0.1).collect())
                .collect();
            let r = post_json(a, "/predict", &json!({ "features": rows }));
            done.store(true, SeqCst);
            r
        })
    };
    // /metrics answers while the model runs, and says so.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let m = get(a, "/metrics");
        assert_eq!(m.status, 200);
        if m.text()
            .lines()
            .any(|l| l == "edgeinfer_http_infer_running 1")
        {
            break;
        }
        assert!(
            !done.load(SeqCst),
            "the slow request finished before it was seen running"
        );
        assert!(Instant::now() < end, "the slow request never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut answered = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        assert_eq!(get(a, "/healthz").status, 200);
        answered.push(t0.elapsed());
        assert!(
            !done.load(SeqCst),
            "the slow model finished before /healthz was checked: raise SLOW_ROWS"
        );
    }
    // The pool is busy and has no queue: another inference is refused at once, with a retry hint.
    let r = post_json(a, "/predict", &json!({"features": [vec![0.1; 64]]}));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.error().contains("http.infer_queue = 0"), "{}", r.error());
    assert!(
        !done.load(SeqCst),
        "the slow model finished before the refusal was checked: raise SLOW_ROWS"
    );

    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["predictions"].as_array().unwrap().len(), SLOW_ROWS);
    eprintln!("/healthz while the slow model ran: {answered:?}");
    // Free again: a small request is served.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post_json(a, "/predict", &json!({"features": [vec![0.1; 64]]}));
        if r.status == 200 {
            break;
        }
        assert!(r.status == 503 && Instant::now() < end, "{}", r.text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

// === KServe: check before allocating ===

#[test]
fn a_tiny_kserve_body_with_a_huge_declared_shape_reserves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), "");
    let before = d.status_bytes("VmPeak");
    // 13,421,772 x 20 f32 is just under 1 GiB, declared in a body of about 150 bytes.
    let body = json!({"inputs": [{"name": "float_input", "shape": [13_421_772, 20], "datatype": "FP32", "data": [1, 2]}]});
    for _ in 0..3 {
        let r = post_json(d.http, "/v2/models/churn/infer", &body);
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.error().contains("2 values"), "{}", r.error());
    }
    let grew = d.status_bytes("VmPeak").saturating_sub(before);
    assert!(
        grew < 256 * MIB,
        "peak virtual memory grew {} MiB for three tiny bodies",
        grew / MIB
    );
}
