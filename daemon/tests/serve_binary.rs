//! The real `edgeinferd` binary: the embedded default (no arguments) and a SIGTERM drain.

mod serve_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use edgeinfer_client::blocking::Client;
use edgeinfer_client::{Endpoint, PredictOptions};
use serve_support::*;

/// Starts the daemon in `dir` and returns it with the line it printed on stdout.
fn spawn(dir: &Path, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeinferd"))
        .args(args)
        .current_dir(dir)
        .env("ORT_DYLIB_PATH", require_ort())
        .env("EDGEINFER_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("EDGEINFER_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run edgeinferd");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        // Keep draining so the daemon never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => (child, line),
        Err(_) => {
            let _ = child.kill();
            panic!("edgeinferd printed nothing within 60 s: {:?}", child.wait());
        }
    }
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            panic!("edgeinferd did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn predict_demo(endpoint: &Endpoint) {
    let mut c = Client::connect(endpoint).unwrap();
    c.set_timeout(Some(IO_TIMEOUT)).unwrap();
    let g = golden("churn_rf");
    let r = c
        .predict("churn", &[g.input.view()], &PredictOptions::default())
        .unwrap();
    assert_eq!(r.version, "demo");
    assert_matches(&r.outputs, &g.outputs);
}

#[test]
fn no_arguments_serves_the_embedded_demo_model() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, line) = spawn(dir.path(), &[]);
    assert!(line.contains("churn (demo"), "{line}");
    assert!(line.contains("unix:./var/edgeinferd.sock"), "{line}");
    assert!(line.contains("tcp:127.0.0.1:7700"), "{line}");
    let sock = dir.path().join("var/edgeinferd.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    predict_demo(&Endpoint::Unix(sock.clone()));
    predict_demo(&Endpoint::Tcp("127.0.0.1:7700".into()));
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
    assert!(!sock.exists(), "the socket file is removed on exit");
}

#[test]
fn sigterm_answers_queued_work_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let (mut child, line) = spawn(
        dir.path(),
        &[
            "--unix-socket",
            sock.to_str().unwrap(),
            "--tcp",
            "127.0.0.1:0",
            "--http",
            "",
            "--model",
            &format!("churn={}", model_path("churn_rf").display()),
            "--engine",
            "tract",
            "--max-batch",
            "32",
            // Requests wait long for company: SIGTERM must not make them wait that long.
            "--max-delay-us",
            "1000000",
            "--shutdown-grace-ms",
            "8000",
        ],
    );
    let addr = line
        .split("tcp:")
        .nth(1)
        .and_then(|s| s.split(|c: char| c.is_whitespace() || c == ',').next())
        .expect(&line)
        .to_owned();
    let mut raw = Raw::unix(&sock);
    let mut frames = Vec::new();
    for id in 1..=5u64 {
        frames.extend(predict_frame(id, "churn", &churn_row(0.2 * id as f32), 0));
    }
    raw.send(&frames);
    // Let the daemon read them, then stop it while they wait for their batch.
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    sigterm(&child);
    let answers = raw.read_to_eof();
    assert_eq!(answers.len(), 5, "{answers:?}");
    assert!(
        answers.iter().all(|a| matches!(a, Answer::Predict { .. })),
        "{answers:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(700),
        "the queued batch waited out its delay: {:?}",
        t0.elapsed()
    );
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "still accepting after exit"
    );
    assert!(!sock.exists());
}
