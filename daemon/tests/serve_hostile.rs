//! Hostile binary-protocol clients over real sockets, each test also checking that another
//! client keeps being served: fd exhaustion (the real daemon under a low RLIMIT_NOFILE),
//! connections past `max_connections`, a client that stops reading, buffer memory after
//! large frames and connection churn (the real daemon's RSS), the row cap, a large request
//! that runs in chunks while another client is served between them, and a request refused
//! from its metadata before its tensor bytes are sent.

mod serve_support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use edgeinfer_client::blocking::Client;
use edgeinfer_client::{Endpoint, PredictOptions};
use edgeinfer_engine::EngineChoice;
use edgeinfer_proto::{ErrorCode, Tensor};
use edgeinferd::server::{Driver, ServerOptions};
use serve_support::*;

const BIN: &str = env!("CARGO_BIN_EXE_edgeinferd");

fn churn(opts: ServerOptions) -> TestServer {
    start(
        opts,
        &[spec("churn", "churn_rf", EngineChoice::Tract, None)],
    )
}

/// `rows` churn rows as one tensor.
fn churn_rows(rows: u64) -> Tensor {
    let v: Vec<f32> = (0..rows * 20).map(|i| (i % 13) as f32 * 0.1).collect();
    Tensor::from_f32("float_input", vec![rows, 20], &v).unwrap()
}

// === the real daemon ===

/// The real binary in its own temp dir, killed on drop.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    sock: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `server_extra` in `[server]`; `nofile` caps its fds.
    fn start(server_extra: &str, nofile: Option<u64>) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sock = d.join("edgeinferd.sock");
        let model = repo().join("tests/fixtures/models/churn_rf.onnx");
        let config = d.join("edgeinferd.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{d}/var\"\n[server]\nunix_socket = \"{s}\"\ntcp = \"127.0.0.1:0\"\n\
                 shutdown_grace_ms = 1000\n{server_extra}\n[http]\nlisten = \"127.0.0.1:0\"\n\
                 [[models]]\nname = \"churn\"\npath = \"{m}\"\nengine = \"tract\"\n",
                d = d.display(),
                s = sock.display(),
                m = model.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&config);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("EDGEINFER_") || k.starts_with("LISTEN_") || k == "NOTIFY_SOCKET" {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info");
        let log = std::fs::File::create(d.join("daemon.log")).unwrap();
        let out = std::fs::File::create(d.join("daemon.out")).unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(log);
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child here.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            };
        }
        let child = cmd.spawn().unwrap();
        let mut me = Daemon { child, dir, sock };
        me.wait_serving();
        me
    }

    fn wait_serving(&mut self) {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("daemon exited ({st}) while starting:\n{}", self.log());
            }
            // The line the daemon prints once everything is up: the cores serve before the
            // HTTP thread has started, and a test that takes every fd in between would make
            // the daemon fail to start it.
            let up = std::fs::read_to_string(self.dir.path().join("daemon.out"))
                .is_ok_and(|o| o.contains("edgeinferd: serving"));
            if let Ok(mut c) = Client::connect(&self.endpoint()) {
                c.set_timeout(Some(IO_TIMEOUT)).unwrap();
                if up && c.health().is_ok_and(|h| h.ready) {
                    return;
                }
            }
            assert!(Instant::now() < end, "not serving:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.sock.clone())
    }

    fn client(&self) -> Client {
        let c = Client::connect(&self.endpoint()).unwrap();
        c.set_timeout(Some(IO_TIMEOUT)).unwrap();
        c
    }

    /// `GET /metrics` from the daemon's HTTP listener (its address is in the line the
    /// daemon prints when it serves).
    fn metrics(&self) -> String {
        use std::io::Read;
        let out = std::fs::read_to_string(self.dir.path().join("daemon.out")).unwrap();
        let addr = out
            .split("HTTP on ")
            .nth(1)
            .and_then(|rest| rest.split([' ', ',', ')']).next())
            .unwrap_or_else(|| panic!("no HTTP address in {out:?}"));
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        text
    }

    /// The value of an unlabelled metric in [`Daemon::metrics`].
    fn metric(&self, name: &str) -> u64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Resident memory, from /proc.
    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn out_of_fds_the_daemon_backs_off_logs_rarely_and_serves_again() {
    let daemon = Daemon::start("", Some(96));
    // Connected before the fds run out: must keep being served throughout.
    let mut old = daemon.client();
    served(&mut old);

    // The hog: far more connections than the daemon has fds; the rest wait in the backlog.
    let mut hog: Vec<UnixStream> = Vec::new();
    for _ in 0..110 {
        hog.push(UnixStream::connect(&daemon.sock).unwrap());
    }
    let end = Instant::now() + Duration::from_secs(20);
    while count(&daemon.log(), "accept failed") == 0 {
        assert!(
            Instant::now() < end,
            "the daemon never ran out of fds:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Exhausted for a while: accepting must not spin, and must not flood the log.
    for _ in 0..10 {
        served(&mut old);
        std::thread::sleep(Duration::from_millis(150));
    }
    // A newcomer waits in the backlog meanwhile...
    let mut late = UnixStream::connect(&daemon.sock).unwrap();
    late.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    late.write_all(&predict_frame(7, "churn", &churn_row(0.5), 0))
        .unwrap();
    // ...and is served once the hog lets go.
    drop(hog);
    let mut raw = Raw { s: late };
    match raw.read() {
        Some(Answer::Predict { id: 7, .. }) => {}
        other => panic!(
            "the late client was not served: {other:?}\n{}",
            daemon.log()
        ),
    }
    let mut fresh = daemon.client();
    served(&mut fresh);
    served(&mut old);
    let log = daemon.log();
    let lines = count(&log, "accept failed");
    // One line per listener per 10 s at most (two cores, a dup of the Unix listener each).
    assert!(
        (1..=4).contains(&lines),
        "{lines} accept-failure lines in ~2 s:\n{log}"
    );
    assert!(log.contains("Too many open files"), "{log}");
    // Exported: every failed accept is counted, however rarely it is logged.
    assert!(daemon.metric("edgeinfer_accept_fd_exhausted_total") >= lines as u64);
    assert_eq!(
        daemon.metric("edgeinfer_connections_unauthenticated_total"),
        0
    );
}

#[test]
fn past_max_connections_a_client_gets_one_error_frame() {
    let srv = churn(ServerOptions {
        max_connections: 2,
        ..options(Driver::Epoll)
    });
    let mut a = srv.client();
    let mut b = srv.client();
    served(&mut a);
    served(&mut b);
    for _ in 0..3 {
        let mut third = srv.raw();
        let answers = third.read_to_eof();
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].id(), 0);
        assert_eq!(
            answers[0].error_code(),
            Some(ErrorCode::Overloaded.as_u32())
        );
        served(&mut a);
        served(&mut b);
    }
    // Over TCP too.
    let mut tcp = std::net::TcpStream::connect(&srv.addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut tcp, &mut got).unwrap();
    let h = edgeinfer_proto::Header::decode(&got).unwrap();
    assert_eq!(h.opcode, 0xFF);
    assert_eq!(
        got.len() as u64,
        h.frame_len(),
        "exactly one frame, then EOF"
    );
    assert!(srv.app().stats().errors(ErrorCode::Overloaded) >= 4);
}

#[test]
fn a_client_that_stops_reading_is_not_killed_and_gets_every_answer() {
    // A read timeout far shorter than the time the client spends not reading: before the
    // fix it fired while the server itself had stopped reading.
    let srv = churn(ServerOptions {
        read_timeout: Duration::from_millis(300),
        ..options(Driver::Epoll)
    });
    const N: u64 = 6000;
    let mut frames = Vec::new();
    for id in 1..=N {
        frames.extend(predict_frame(id, "churn", &churn_row(0.5), 0));
    }
    let mut hog = srv.raw();
    let mut writer = hog.s.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&frames).is_ok());
    // Not reading, for many read timeouts; someone else is served meanwhile.
    let mut other = srv.client();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        served(&mut other);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        srv.app()
            .stats()
            .connections_timed_out
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nobody was timed out"
    );
    // Now read: one answer per request, none lost.
    let mut seen = vec![false; N as usize + 1];
    let mut ok = 0;
    for _ in 0..N {
        let a = hog
            .read()
            .expect("the connection stays open until every answer is read");
        let id = a.id() as usize;
        assert!(
            id >= 1 && id <= N as usize && !seen[id],
            "answer {id} twice"
        );
        seen[id] = true;
        match a {
            Answer::Predict { .. } => ok += 1,
            a => assert_eq!(
                a.error_code(),
                Some(ErrorCode::TooManyInFlight.as_u32()),
                "{a:?}"
            ),
        }
    }
    assert!(sender.join().unwrap(), "every request was written");
    // A request that arrives while max_in_flight others are admitted and unanswered is
    // refused (docs/protocol.md §7.1); the rest ran.
    assert!(ok >= 128, "only {ok} of {N} ran");
    served(&mut other);
}

#[test]
fn a_client_that_takes_no_answers_is_closed_after_the_write_timeout() {
    let srv = churn(ServerOptions {
        write_timeout: Duration::from_millis(400),
        ..options(Driver::Epoll)
    });
    let mut frames = Vec::new();
    for id in 1..=4000u64 {
        frames.extend(predict_frame(id, "churn", &churn_row(0.5), 0));
    }
    let hog = srv.raw();
    let mut writer = hog.s.try_clone().unwrap();
    // Blocks once the server stops reading; returns when the server closes.
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&frames);
    });
    let mut other = srv.client();
    let t0 = Instant::now();
    let timed_out = || {
        srv.app()
            .stats()
            .connections_timed_out
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    while timed_out() == 0 {
        served(&mut other);
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the stalled client was never closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sender.join().unwrap();
    served(&mut other);
    drop(hog);
}

#[test]
fn requests_over_the_row_cap_are_refused_with_bad_input() {
    let srv = churn(ServerOptions {
        max_request_rows: 1000,
        ..options(Driver::Epoll)
    });
    let mut c = srv.client();
    let ok = c
        .predict(
            "churn",
            &[churn_rows(1000).view()],
            &PredictOptions::default(),
        )
        .unwrap();
    assert_eq!(ok.output("probabilities").unwrap().shape, vec![1000, 2]);
    let e = c
        .predict(
            "churn",
            &[churn_rows(1001).view()],
            &PredictOptions::default(),
        )
        .unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::BadInput), "{e}");
    assert!(
        e.to_string().contains("max_request_rows"),
        "the refusal names the setting: {e}"
    );
    // The same connection goes on.
    served(&mut c);
}

#[test]
fn buffer_memory_stays_within_budget_after_large_frames_and_churn_is_flat() {
    let daemon = Daemon::start("buffer_pool_bytes = 4194304", None);
    let mut other = daemon.client();
    for _ in 0..50 {
        served(&mut other);
    }
    let idle = daemon.rss_bytes();

    // Frames of ~63 MiB on four connections at once, twice: refused after being read whole
    // (the input's name is not the model's, which only the whole frame's check sees), so
    // only the buffers are exercised.
    let mut huge = churn_rows(820_000);
    huge.name = "not_an_input".into();
    let mut frame = Vec::new();
    edgeinfer_proto::encode_predict(
        1,
        &mut edgeinfer_proto::PredictRequest {
            model: "churn".into(),
            ..Default::default()
        },
        &[huge.view()],
        &mut frame,
    )
    .unwrap();
    assert!(frame.len() > 60 << 20);
    let frame = std::sync::Arc::new(frame);
    for _ in 0..2 {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (f, sock) = (frame.clone(), daemon.sock.clone());
                std::thread::spawn(move || {
                    let mut r = Raw::unix(&sock);
                    r.send(&f);
                    r.read().and_then(|a| a.error_code())
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), Some(ErrorCode::BadInput.as_u32()));
        }
        served(&mut other);
    }
    let after_large = daemon.rss_bytes();

    // Connection churn: rounds of 200 connections, each pipelining a few small requests.
    let mut rss = Vec::new();
    for _ in 0..20 {
        let mut conns: Vec<Raw> = (0..200).map(|_| Raw::unix(&daemon.sock)).collect();
        let mut f = Vec::new();
        for id in 1..=4 {
            f.extend(predict_frame(id, "churn", &churn_row(0.5), 0));
        }
        for c in &mut conns {
            c.send(&f);
        }
        for c in &mut conns {
            for _ in 0..4 {
                assert!(matches!(c.read(), Some(Answer::Predict { .. })));
            }
        }
        drop(conns);
        served(&mut other);
        rss.push(daemon.rss_bytes());
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "RSS idle {:.1} MiB, after 64 MiB frames {:.1} MiB, churn rounds {:?}",
        mib(idle),
        mib(after_large),
        rss.iter().map(|&b| mib(b).round()).collect::<Vec<_>>()
    );
    // Two cores × a 4 MiB pool budget, plus allocator slack; before the budget about
    // 512 MiB per core stayed resident after such frames.
    assert!(
        after_large < idle + (64 << 20),
        "after large frames RSS is {:.1} MiB against {:.1} MiB idle",
        mib(after_large),
        mib(idle)
    );
    // Flat: the last rounds hold no more than the early ones.
    let early = rss[4];
    let late = *rss.last().unwrap();
    assert!(
        late < early + (8 << 20),
        "churn grows RSS: {:.1} MiB at round 5, {:.1} MiB at round 20",
        mib(early),
        mib(late)
    );
}

/// A PREDICT frame for `model` carrying `input`, and where its tensor data starts.
fn frame_and_data_offset(id: u64, model: &str, input: &Tensor) -> (Vec<u8>, usize) {
    let frame = predict_frame(id, model, input, 0);
    let h = edgeinfer_proto::Header::decode(&frame).unwrap();
    (frame, h.data_offset() as usize)
}

#[test]
fn a_request_over_the_row_cap_is_refused_before_its_tensor_bytes_are_sent() {
    let srv = churn(ServerOptions {
        max_request_rows: 1000,
        ..options(Driver::Epoll)
    });
    let mut raw = srv.raw();
    let (frame, data_at) = frame_and_data_offset(5, "churn", &churn_rows(100_000));
    assert!(frame.len() > 7 << 20);
    // Header, metadata and padding only: the client holds the 8 MB of data back until it
    // has the answer, which therefore comes from the metadata alone.
    raw.send(&frame[..data_at]);
    match raw.read() {
        Some(Answer::Error {
            id: 5,
            code,
            message,
        }) => {
            assert_eq!(code, ErrorCode::BadInput.as_u32(), "{message}");
            assert!(message.contains("max_request_rows"), "{message}");
        }
        other => panic!("expected BAD_INPUT for request 5, got {other:?}"),
    }
    // The rest of the frame is read and thrown away (the client must still send it: the
    // connection stays in step).
    raw.send(&frame[data_at..]);
    // The same holds for a model that does not exist.
    let (unknown, unknown_at) = frame_and_data_offset(6, "no_such_model", &churn_rows(60_000));
    raw.send(&unknown[..unknown_at]);
    match raw.read() {
        Some(Answer::Error { id: 6, code, .. }) => {
            assert_eq!(code, ErrorCode::UnknownModel.as_u32())
        }
        other => panic!("expected UNKNOWN_MODEL for request 6, got {other:?}"),
    }
    assert_eq!(srv.app().stats().refused_before_data.load(Relaxed), 2);
    raw.send(&unknown[unknown_at..]);
    // The connection goes on with the next request.
    raw.send(&predict_frame(7, "churn", &churn_row(0.5), 0));
    match raw.read() {
        Some(Answer::Predict { id: 7, outputs }) => {
            assert!(outputs.iter().any(|t| t.name == "probabilities"))
        }
        other => panic!("expected an answer to request 7, got {other:?}"),
    }
    // A request under the cap that arrives in two parts is served.
    let (ok, ok_at) = frame_and_data_offset(8, "churn", &churn_rows(1000));
    raw.send(&ok[..ok_at]);
    std::thread::sleep(Duration::from_millis(50));
    raw.send(&ok[ok_at..]);
    assert!(matches!(raw.read(), Some(Answer::Predict { id: 8, .. })));
    assert_eq!(srv.app().stats().refused_before_data.load(Relaxed), 2);
}

#[test]
fn a_large_request_runs_in_chunks_and_another_client_is_served_between_them() {
    const ROWS: u64 = 300_000;
    let big = churn_rows(ROWS);
    // The answer when the request runs whole: a chunk budget no request reaches.
    let whole = {
        let srv = churn(ServerOptions {
            cores: vec![0],
            max_request_rows: ROWS,
            chunk_budget: Duration::from_secs(3600),
            ..options(Driver::Epoll)
        });
        let mut c = srv.client();
        // Times the model on the core first (until then the first chunk is a few rows).
        served(&mut c);
        let r = c
            .predict("churn", &[big.view()], &PredictOptions::default())
            .unwrap();
        assert_eq!(srv.app().stats().chunked_requests.load(Relaxed), 0);
        r.outputs
    };
    // One core, so that both clients are served by the same executor.
    let srv = churn(ServerOptions {
        cores: vec![0],
        max_request_rows: ROWS,
        chunk_budget: Duration::from_micros(100),
        ..options(Driver::Epoll)
    });
    let stats = || srv.app().stats();
    let mut victim = srv.client();
    served(&mut victim);
    let mut hog = srv.raw();
    let frame = predict_frame(1, "churn", &big, 0);
    let mut writer = hog.s.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&frame).is_ok());
    // Wait until the large request is under way...
    let t0 = Instant::now();
    while stats().request_chunks.load(Relaxed) < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the large request never ran in chunks"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // ...then the victim is answered while it still has chunks to run.
    served(&mut victim);
    let chunks_when_served = stats().request_chunks.load(Relaxed);
    assert!(sender.join().unwrap());
    let outputs = match hog.read() {
        Some(Answer::Predict { id: 1, outputs }) => outputs,
        other => panic!("expected the large answer, got {other:?}"),
    };
    let chunks = stats().request_chunks.load(Relaxed);
    assert!(
        chunks > chunks_when_served,
        "the victim waited for the whole request ({chunks} chunks, {chunks_when_served} \
         before the victim's answer)"
    );
    assert_eq!(stats().chunked_requests.load(Relaxed), 1);
    // One answer, the same as the request run whole.
    assert_matches(&outputs, &whole);
    assert_eq!(outputs[0].shape[0], ROWS);
    served(&mut victim);
}
