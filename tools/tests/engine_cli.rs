//! `edgeinfer doctor` and `edgeinfer bench-engine`, run as the built binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn ort_lib() -> String {
    std::env::var("ORT_DYLIB_PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .expect("ORT_DYLIB_PATH must point at libonnxruntime.so.1.31.1 (the test script sets it)")
}

fn edgeinfer(args: &[&str], ort: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeinfer"));
    cmd.args(args);
    match ort {
        Some(p) => cmd.env("ORT_DYLIB_PATH", p),
        None => cmd.env_remove("ORT_DYLIB_PATH"),
    };
    cmd.output().expect("run edgeinfer")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn fixture_models() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    models.sort();
    assert!(!models.is_empty(), "no fixture models in {}", dir.display());
    models
}

/// A fixture that every engine serves with a dynamic batch: the logistic regression.
fn small_fixture() -> PathBuf {
    let models = fixture_models();
    models
        .iter()
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_lowercase();
            name.contains("logistic") || name.contains("logreg")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no logistic-regression fixture among {models:?}"))
}

#[test]
fn doctor_json_reports_cores_gpu_ort_and_tract() {
    let lib = ort_lib();
    let v = json_of(&edgeinfer(&["doctor", "--json"], Some(&lib)));
    let cores = v["cores"]["allowed"].as_array().unwrap();
    assert!(!cores.is_empty());
    assert_eq!(v["cores"]["error"], Value::Null);
    // Whatever the machine has, the GPU section is a finding: no driver is a reason, a
    // driver lists its GPUs (and each unusable one says why).
    let gpu = &v["gpu"];
    let gpus = gpu["gpus"].as_array().expect("gpu.gpus is a list");
    if gpu["nvml_available"] == false {
        assert!(gpus.is_empty(), "{gpu}");
        assert!(
            gpu["error"].as_str().unwrap().contains("NVML unavailable"),
            "{gpu}"
        );
    } else {
        assert_eq!(gpu["nvml_available"], true, "{gpu}");
        for g in gpus {
            assert!(
                g["name"].is_string() && g["memory_total_bytes"].is_u64(),
                "{g}"
            );
        }
    }
    assert!(
        v["ort"]["version"].as_str().unwrap().starts_with("1.31."),
        "{v}"
    );
    assert_eq!(v["ort"]["expected_version"], "1.31");
    assert!(v["ort"]["path"]
        .as_str()
        .unwrap()
        .ends_with("libonnxruntime.so.1.31.1"));
    assert_eq!(v["ort"]["error"], Value::Null);
    assert_eq!(v["tract"]["version"], "0.23");
}

/// Without `ORT_DYLIB_PATH` doctor searches where the daemon does: this binary was built
/// in the checkout's `target/`, so `.cache/ort/libonnxruntime.so.1.31.1` (provisioned by
/// tools/ci/provision.sh) is found. daemon/tests/newcomer_cli.rs shows the daemon
/// finding the same file.
#[test]
fn doctor_finds_ort_in_the_checkout_cache_without_ort_dylib_path() {
    let v = json_of(&edgeinfer(&["doctor", "--json"], None));
    let want = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(".cache/ort/libonnxruntime.so.1.31.1");
    assert_eq!(v["ort"]["path"], want.to_str().unwrap(), "{v}");
    assert_eq!(v["ort"]["error"], Value::Null, "{v}");
    assert!(
        v["ort"]["version"].as_str().unwrap().starts_with("1.31."),
        "{v}"
    );
}

#[test]
fn doctor_without_ort_exits_zero_and_says_why() {
    let missing = "/nonexistent/edgeinfer/libonnxruntime.so.1.31.1";
    let v = json_of(&edgeinfer(&["doctor", "--json"], Some(missing)));
    assert_eq!(v["ort"]["version"], Value::Null);
    let why = v["ort"]["error"].as_str().unwrap();
    assert!(why.contains(missing) && why.contains("not found"), "{v}");

    let v = json_of(&edgeinfer(
        &[
            "doctor",
            "--json",
            "--ort-library",
            "/nonexistent/libonnxruntime.so",
        ],
        None,
    ));
    let why = v["ort"]["error"].as_str().unwrap();
    assert!(
        why.contains("/nonexistent/libonnxruntime.so") && why.contains("not found"),
        "{why}"
    );

    let text = edgeinfer(&["doctor"], Some(missing));
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("cores:")
            && text.contains("onnxruntime:  unavailable")
            && text.contains("tract:"),
        "{text}"
    );
}

/// Whether this machine could run ORT on CUDA, by `doctor`'s own findings: a usable GPU
/// and a library built with the CUDA provider.
fn cuda_possible() -> bool {
    let v = json_of(&edgeinfer(&["doctor", "--json"], Some(&ort_lib())));
    let usable_gpu = v["gpu"]["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["problem"].is_null());
    usable_gpu && v["ort"]["cuda_provider_built"] == true
}

fn bench(model: &Path, engine: &str, rows: usize) -> Value {
    let model = model.to_str().unwrap();
    let rows = rows.to_string();
    let args = [
        "bench-engine",
        "--model",
        model,
        "--engine",
        engine,
        "--rows",
        &rows,
        "--iters",
        "50",
        "--json",
    ];
    json_of(&edgeinfer(&args, Some(&ort_lib())))
}

fn assert_timings(v: &Value, rows: usize) {
    assert_eq!(v["rows"], rows as u64);
    let p50 = v["p50_us"].as_f64().unwrap();
    let p99 = v["p99_us"].as_f64().unwrap();
    let mean = v["mean_us"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99 && mean > 0.0, "{v}");
    assert!(v["model"].as_str().unwrap().ends_with(".onnx"));
}

#[test]
fn bench_engine_json_on_each_explicit_engine() {
    let model = small_fixture();
    for (engine, rows) in [("ort-cpu", 1), ("ort-cpu", 64), ("tract", 1), ("tract", 64)] {
        let v = bench(&model, engine, rows);
        assert_eq!(v["engine"], engine);
        assert_timings(&v, rows);
        assert_eq!(v.get("choice"), None, "only auto prints its choice");
    }
    // ort-cuda says in "engine" where it really ran: on CPU unless the probe found a
    // usable GPU and the library has the CUDA provider.
    let v = bench(&model, "ort-cuda", 1);
    assert_eq!(v["requested"], "ort-cuda");
    if cuda_possible() {
        assert!(v["engine"] == "ort-cuda" || v["engine"] == "ort-cpu", "{v}");
    } else {
        assert_eq!(v["engine"], "ort-cpu", "{v}");
    }
}

#[test]
fn bench_engine_auto_prints_its_choice() {
    let v = bench(&small_fixture(), "auto", 1);
    assert_timings(&v, 1);
    let choice = &v["choice"];
    assert_eq!(choice["backend"], v["engine"]);
    assert!(
        choice["reason"]
            .as_str()
            .unwrap()
            .contains("fastest matching"),
        "{v}"
    );
    let candidates: Vec<&str> = choice["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["backend"].as_str().unwrap())
        .collect();
    assert!(
        candidates.contains(&"ort-cpu") && candidates.contains(&"tract"),
        "{v}"
    );
    // CUDA is either a candidate or a fallback with its reason, never silently absent.
    let cuda_fallback = choice["fallbacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["backend"] == "ort-cuda");
    match cuda_fallback {
        Some(f) => assert!(!f["reason"].as_str().unwrap().is_empty(), "{v}"),
        None => assert!(candidates.contains(&"ort-cuda"), "{v}"),
    }
    if !cuda_possible() {
        assert!(cuda_fallback.is_some(), "{v}");
    }
}

#[test]
fn bench_engine_errors_are_clear() {
    let out = edgeinfer(
        &["bench-engine", "--model", "/nonexistent.onnx", "--json"],
        Some(&ort_lib()),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent.onnx"));

    let model = small_fixture();
    let out = edgeinfer(
        &[
            "bench-engine",
            "--model",
            model.to_str().unwrap(),
            "--engine",
            "gpu-magic",
        ],
        Some(&ort_lib()),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown engine"));
}
