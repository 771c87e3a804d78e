//! The Python client (`python/`, installed with `pip install ./python` into .cache/venv-client
//! by tools/ci/provision-python.sh) against the real daemon binary: this test starts
//! `edgeinferd` on the fixture models and another on the embedded demo model, then runs pytest
//! on python/tests, which checks goldens, typed errors, pipelining and client-side refusals
//! (and starts daemons of its own, from this binary, for the limits these two must not have).

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's interpreter: `EDGEINFER_CLIENT_PYTHON`, else where provision-python.sh puts it.
/// Missing is a failure, never a skip.
fn python() -> PathBuf {
    let p = std::env::var_os("EDGEINFER_CLIENT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/venv-client/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run tools/ci/provision-python.sh (tools/ci/test.sh does)",
        p.display()
    );
    p
}

fn require_ort() {
    let p = std::env::var_os("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must point at libonnxruntime.so.1.31.1 (tools/ci/test.sh sets it)");
    assert!(
        Path::new(&p).exists(),
        "ORT_DYLIB_PATH={p:?} does not exist"
    );
}

/// A daemon process, killed (and reaped) on drop.
struct Daemon {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &Path, name: &str, tcp: &str, args: &[String]) -> Daemon {
    let sock = dir.join(format!("{name}.sock"));
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_edgeinferd"))
        .arg("--state-dir")
        .arg(dir.join(format!("{name}-var")))
        .arg("--unix-socket")
        .arg(&sock)
        .args(["--tcp", tcp, "--http", ""])
        .args(args)
        .env("EDGEINFER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting edgeinferd");
    let mut d = Daemon { child, sock, log };
    let deadline = Instant::now() + Duration::from_secs(60);
    while UnixStream::connect(&d.sock).is_err() {
        if let Some(status) = d.child.try_wait().unwrap() {
            panic!(
                "edgeinferd ({name}) exited with {status}:\n{}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "edgeinferd ({name}) did not listen within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

fn model(name: &str, stem: &str) -> [String; 2] {
    let path = repo().join(format!("tests/fixtures/models/{stem}.onnx"));
    ["--model".into(), format!("{name}={}", path.display())]
}

#[test]
fn python_client_tests_pass_against_the_daemon() {
    require_ort();
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let tcp = format!("127.0.0.1:{port}");
    // The names python/tests/conftest.py (MODELS) expects; churn has two versions.
    let mut args: Vec<String> = vec!["--max-in-flight".into(), "1024".into()];
    for (name, stem) in [
        ("churn", "churn_rf"),
        ("churn@2", "churn_rf"),
        ("logreg", "logreg"),
        ("mlp", "mlp"),
        ("cnn", "cnn"),
        ("identity", "identity"),
        ("gb_binary", "gb_binary"),
        ("gb_multiclass", "gb_multiclass"),
        ("rf_regressor", "rf_regressor"),
        ("svm", "tract_unsupported_svm"),
    ] {
        args.extend(model(name, stem));
    }
    let main = start(dir.path(), "main", &tcp, &args);
    let demo = start(dir.path(), "demo", "", &[]);

    let mut child = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "-rA"])
        .arg(repo().join("python/tests"))
        .current_dir(dir.path())
        .env("EDGEINFER_TEST_SOCKET", &main.sock)
        .env("EDGEINFER_TEST_TCP", &tcp)
        .env("EDGEINFER_TEST_DEMO_SOCKET", &demo.sock)
        .env("EDGEINFER_DAEMON", env!("CARGO_BIN_EXE_edgeinferd"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running pytest");
    // Bounded: pytest's own calls time out, but a hang must still fail this test.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        (o, e)
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = reader.join().unwrap();
    let logs = format!(
        "--- pytest stdout\n{stdout}\n--- pytest stderr\n{stderr}\n--- main daemon log\n{}",
        std::fs::read_to_string(&main.log).unwrap_or_default()
    );
    let status = status.unwrap_or_else(|| panic!("pytest ran past 600 s\n{logs}"));
    assert!(status.success(), "pytest failed ({status})\n{logs}");
    // Every test module ran (a collection problem must not pass as "nothing failed").
    for module in [
        "test_vectors.py",
        "test_sync.py",
        "test_errors.py",
        "test_async.py",
        "test_shm.py",
    ] {
        assert!(stdout.contains(module), "{module} did not run:\n{stdout}");
    }
    // pytest's summary ("111 passed in 2.5s") names skips, and -rA lists them as SKIPPED.
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed"))
        .unwrap_or_else(|| panic!("no pytest summary:\n{stdout}"));
    assert!(
        !summary.contains("skipped") && !stdout.lines().any(|l| l.starts_with("SKIPPED")),
        "no test may skip:\n{stdout}"
    );
}
