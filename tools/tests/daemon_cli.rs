//! The `edgeinfer` binary against the real daemon (edgeinferd's app in this process, one
//! per test on a temp-dir Unix socket, serving the demo churn model as configured by
//! default):
//! the error texts a newcomer meets, and `status` showing the engine's fallbacks.
//!
//! The daemon is told to load ONNX Runtime from a path that does not exist, so `auto`
//! serves on tract with exactly one recorded fallback (ort-cpu, "not found") whatever the
//! machine has; `status` must show it with its reason.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use edgeinferd::app::{self, App, AppHandle};
use edgeinferd::config::Config;
use edgeinferd::server::{self, Listeners};
use serde_json::Value;

const MISSING_ORT: &str = "/nonexistent/edgeinfer/libonnxruntime.so.1.31.1";

struct Daemon {
    sock: PathBuf,
    app: Option<AppHandle>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn sock(&self) -> &str {
        self.sock.to_str().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown(Duration::from_secs(2));
            let _ = app.wait();
        }
    }
}

/// A daemon of its own for each test, on one core, in a temp dir removed afterwards.
fn daemon() -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("edgeinfer-daemon-cli-")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("edgeinferd.sock");
    let cfg = Config::default();
    let mut specs = cfg.model_specs();
    for s in &mut specs {
        s.load.ort_library = Some(PathBuf::from(MISSING_ORT));
    }
    let table = app::load_models(&specs).expect("load the demo model");
    let mut listeners = Listeners::default();
    listeners
        .unix
        .push(server::bind_unix(&sock, 0o600, None).unwrap());
    let mut opts = cfg.server_options();
    opts.cores = vec![edgeinfer_engine::cores::allowed_cores().unwrap()[0]];
    let app = App::start(opts, table, listeners).expect("start the app");
    Daemon {
        sock,
        app: Some(app),
        _dir: dir,
    }
}

fn edgeinfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
        .args(args)
        .output()
        .expect("run edgeinfer")
}

fn fails_saying(out: &Output, what: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for w in what {
        assert!(stderr.contains(w), "{w:?} not in: {stderr}");
    }
    assert!(
        !stderr.contains("Fixed(") && !stderr.contains("Dynamic"),
        "Rust debug shapes in: {stderr}"
    );
    stderr
}

const TWENTY: &str =
    "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6,1.7,1.8,1.9,2.0";

#[test]
fn the_readme_predict_works() {
    let d = daemon();
    let out = edgeinfer(&[
        "predict",
        "--socket",
        d.sock(),
        "--model",
        "churn",
        "--input",
        TWENTY,
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("churn version demo on tract:"), "{text}");
}

#[test]
fn a_short_row_says_how_many_values_a_row_needs() {
    let d = daemon();
    // Checked by the CLI from the model's METADATA...
    let out = edgeinfer(&[
        "predict",
        "--socket",
        d.sock(),
        "--model",
        "churn",
        "--input",
        "1,2,3",
    ]);
    fails_saying(&out, &["expected 20 values per row, got 3"]);
    // ...and by the daemon itself, when the CLI is told the input and skips METADATA.
    let out = edgeinfer(&[
        "predict",
        "--socket",
        d.sock(),
        "--model",
        "churn",
        "--input-name",
        "float_input",
        "--dtype",
        "f32",
        "--input",
        "1,2,3",
    ]);
    fails_saying(&out, &["expected 20 values per row, got 3", "BAD_INPUT"]);
}

#[test]
fn an_unknown_model_lists_the_loaded_ones() {
    let d = daemon();
    let out = edgeinfer(&[
        "predict",
        "--socket",
        d.sock(),
        "--model",
        "nope",
        "--input",
        "1",
    ]);
    fails_saying(&out, &["nope", "the daemon serves: churn"]);
}

#[test]
fn a_missing_socket_says_the_daemon_may_not_be_running() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("edgeinferd.sock");
    for cmd in ["predict", "status"] {
        let mut args = vec![cmd, "--socket", missing.to_str().unwrap()];
        if cmd == "predict" {
            args.extend(["--model", "churn", "--input", "1"]);
        }
        fails_saying(
            &edgeinfer(&args),
            &[
                "edgeinferd may not be running",
                &missing.display().to_string(),
            ],
        );
    }
}

#[test]
fn status_shows_the_engine_choice_and_its_fallbacks() {
    let d = daemon();
    let out = edgeinfer(&["status", "--socket", d.sock(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let churn = &v["models"][0];
    assert_eq!(churn["name"], "churn");
    assert_eq!(churn["backend"], "tract");
    let fallbacks = churn["fallbacks"].as_array().expect("fallbacks listed");
    assert_eq!(fallbacks.len(), 1, "{v}");
    assert_eq!(fallbacks[0]["backend"], "ort-cpu");
    let reason = fallbacks[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(MISSING_ORT) && reason.contains("not found"),
        "{reason}"
    );

    let out = edgeinfer(&["status", "--socket", d.sock()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("churn demo: engine tract: the only engine that loaded")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("fallback ort-cpu: ") && l.contains(MISSING_ORT)),
        "{text}"
    );
}
