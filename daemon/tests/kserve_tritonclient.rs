//! KServe v2 from a real, independent client: `tests/kserve/infer.py` drives the HTTP server
//! with `tritonclient[http]` (from PyPI, installed into .cache/venv-test by
//! tools/ci/provision.sh) and checks the demo model's outputs against the golden file, over
//! JSON and binary tensors, and the errors it gets for bad requests.

mod http_support;

use std::process::Command;

use edgeinferd::app::ModelSpec;
use edgeinferd::config::Config;
use http_support::*;

/// The venv's interpreter: `EDGEINFER_TEST_PYTHON`, else the one provision.sh makes. Missing
/// is a failure, never a skip.
fn python() -> std::path::PathBuf {
    let p = std::env::var_os("EDGEINFER_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/venv-test/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run tools/ci/provision.sh (it installs tritonclient[http])",
        p.display()
    );
    p
}

#[test]
fn tritonclient_infers_the_demo_model() {
    require_ort();
    let python = python();
    // The embedded demo model, loaded as `edgeinferd` with no arguments loads it.
    let t = table(&[ModelSpec::demo()]);
    let h = serve(&Config::default(), t.clone());
    let out = Command::new(&python)
        .arg(repo().join("tests/kserve/infer.py"))
        .args(["--url", &h.local_addr().to_string(), "--model", "churn"])
        .arg("--golden")
        .arg(repo().join("tests/fixtures/golden/churn_rf.json"))
        .output()
        .expect("running tests/kserve/infer.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "infer.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(line["ok"], true);
    assert_eq!(line["rows"], 64);
    assert_eq!(line["model_version"], "demo");
    // The client's requests were served by the model table's version and counted there.
    let snap = t.snapshot();
    let v = snap.resolve("churn", None, b"").unwrap();
    assert_eq!(v.stats.count(edgeinferd::model_table::Outcome::Ok), 3);
    assert!(v.stats.count(edgeinferd::model_table::Outcome::BadInput) >= 2);
}
