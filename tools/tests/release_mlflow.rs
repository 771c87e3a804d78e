//! End to end with a real MLflow: a model registered from Python as an ML team would
//! (`mlflow.onnx.log_model`, `register_model`, `set_registered_model_alias`), released
//! with `edgeinfer release create --from-mlflow`, signed by two target key holders,
//! published into MLflow's artifact store, and verified by our TUF client — which must
//! also refuse a file tampered with through the store's open PUT endpoint. Then the real
//! daemon binary (`target/debug/edgeinferd`, built by `cargo test --workspace`), with
//! `[registry] url` on the artifact store, pulls the release from there and serves it over
//! its Unix socket.
//!
//! Needs `EDGEINFER_TEST_MLFLOW` (tools/ci/test.sh sets it from
//! tools/ci/provision-mlflow.sh): the venv's python, with `mlflow` beside it. Missing,
//! the test fails.

mod cli_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::{checkout, fails, ok};
use edgeinfer_registry::release::Bundle;

fn venv_python() -> PathBuf {
    let p = std::env::var_os("EDGEINFER_TEST_MLFLOW")
        .map(PathBuf::from)
        .expect(
            "EDGEINFER_TEST_MLFLOW is not set: run tools/ci/provision-mlflow.sh and export \
         EDGEINFER_TEST_MLFLOW=$PWD/.cache/venv-mlflow/bin/python (tools/ci/test.sh does both)",
        );
    assert!(
        p.is_file(),
        "EDGEINFER_TEST_MLFLOW={} does not exist",
        p.display()
    );
    p
}

/// `mlflow server`, in its own process group so its workers go with it.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                // The group may still hold workers: make sure they are gone too.
                let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
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

/// One HTTP/1.1 request on loopback: (status, body).
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(resp.len(), |i| i + 4);
    Ok((status, resp[split..].to_vec()))
}

fn start_mlflow(python: &Path, dir: &Path) -> Server {
    use std::os::unix::process::CommandExt;
    let mlflow = python.with_file_name("mlflow");
    assert!(mlflow.is_file(), "{} is missing", mlflow.display());
    let port = free_port();
    let log = std::fs::File::create(dir.join("mlflow.log")).unwrap();
    let child = Command::new(&mlflow)
        .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--backend-store-uri")
        .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
        .arg("--artifacts-destination")
        .arg(dir.join("artifacts"))
        .args(["--workers", "1"])
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("starting mlflow server");
    let server = Server { child, port };
    // /health answers after ~12 s on the CI VM; bounded at 120 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok((200, _)) = http(port, "GET", "/health", b"") {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "mlflow server did not answer /health in 120 s: {}",
            std::fs::read_to_string(dir.join("mlflow.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What an ML team runs: log the ONNX model with metrics in a run, register it, alias it.
const REGISTER: &str = r#"
import sys, mlflow, onnx
from mlflow import MlflowClient
uri, model_path, name, alias = sys.argv[1:5]
mlflow.set_tracking_uri(uri)
mlflow.set_experiment("churn-edge")
with mlflow.start_run() as run:
    mlflow.log_param("dataset_version", "churn-2026-11")
    mlflow.log_metric("accuracy", 0.91)
    mlflow.log_metric("f1", 0.83)
    info = mlflow.onnx.log_model(onnx.load(model_path), name="model")
mv = mlflow.register_model(info.model_uri, name)
MlflowClient().set_registered_model_alias(name, alias, mv.version)
print(run.info.run_id, mv.version, info.model_uri)
"#;

/// The churn fixture's 64 golden rows as a reference data CSV.
fn write_reference_csv(path: &Path) {
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(checkout().join("tests/fixtures/golden/churn_rf.json")).unwrap(),
    )
    .unwrap();
    let x = &g["inputs"][0];
    let w = x["shape"][1].as_u64().unwrap() as usize;
    let data: Vec<f64> = x["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mut csv: String = (0..w)
        .map(|i| format!("f{i}"))
        .collect::<Vec<_>>()
        .join(",");
    csv.push('\n');
    for row in data.chunks(w) {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    std::fs::write(path, csv).unwrap();
}

/// The real daemon binary, stopped (SIGTERM, then SIGKILL) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `target/debug/edgeinferd`, beside this test's own directory (`target/debug/deps/`).
fn edgeinferd() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("edgeinferd");
    assert!(
        p.is_file(),
        "{} is missing: `cargo test --workspace` builds it (or `cargo build -p edgeinferd`)",
        p.display()
    );
    p
}

/// Starts `edgeinferd` following churn from MLflow's artifact store (`dest`, an
/// `mlflow+http://` location, read through its plain artifact URLs) with `root` pinned, and
/// waits until its socket answers churn with version 1 and the golden labels.
fn serve_from_mlflow(t: &Path, dest: &str, root: &Path) {
    use edgeinfer_client::{blocking::Client, Endpoint, PredictOptions};
    let (meta, targets) = edgeinfer_registry::mlflow::repo_urls(dest).unwrap();
    let base = meta.strip_suffix("metadata/").expect("a metadata URL");
    assert_eq!(targets, format!("{base}targets/"));
    let b = t.join("box-daemon");
    std::fs::create_dir_all(&b).unwrap();
    let sock = b.join("edgeinferd.sock");
    let config = format!(
        r#"state_dir = "{b}/var"
[server]
unix_socket = "{sock}"
tcp = ""
cores = "0"
[http]
listen = ""
[engine]
default = "tract"
[registry]
enabled = true
url = "{base}"
root_file = "{root}"
models = ["churn"]
poll_interval_ms = 3600000
poll_jitter_ms = 0
"#,
        b = b.display(),
        sock = sock.display(),
        root = root.display(),
    );
    let cfg = b.join("edgeinferd.toml");
    std::fs::write(&cfg, config).unwrap();
    let log = b.join("edgeinferd.log");
    let child = Command::new(edgeinferd())
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(b.join("edgeinferd.err")).unwrap())
        .spawn()
        .expect("starting edgeinferd");
    let _daemon = Daemon(child);

    // The committed golden file: the first 4 rows and their labels.
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(checkout().join("tests/fixtures/golden/churn_rf.json")).unwrap(),
    )
    .unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let x = &g["inputs"][0];
    let w = x["shape"][1].as_u64().unwrap();
    let input = edgeinfer_proto::Tensor::from_f64_as(
        x["name"].as_str().unwrap(),
        edgeinfer_proto::DType::F32,
        vec![4, w],
        &floats(&x["data"])[..4 * w as usize],
    )
    .unwrap();
    let label = g["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .unwrap();
    let want = edgeinfer_proto::Tensor::from_f64_as(
        "label",
        edgeinfer_proto::DType::I64,
        vec![4],
        &floats(&label["data"])[..4],
    )
    .unwrap();

    // Bounded: pull, verify, golden samples, commit and swap take seconds.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = Client::connect(&Endpoint::Unix(sock.clone()))
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                c.set_timeout(Some(Duration::from_secs(20)))
                    .map_err(|e| e.to_string())?;
                c.predict("churn", &[input.view()], &PredictOptions::default())
                    .map_err(|e| e.to_string())
            });
        let last = match answer {
            Ok(r) if r.version == "1" => {
                let got = r.output("label").expect("a label output");
                assert_eq!(got, &want, "labels of the version pulled from MLflow");
                break;
            }
            Ok(r) => format!("answered by version {:?}", r.version),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "edgeinferd did not serve churn 1 from MLflow in 90 s (last: {last}):\n{}{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(b.join("edgeinferd.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // It came through the pull agent (EDGEINFER_LOG unset: the configured info level).
    let err = std::fs::read_to_string(b.join("edgeinferd.err")).unwrap_or_default();
    assert!(err.contains("registry: installed and serving"), "{err}");
}

#[test]
fn release_from_mlflow_publish_into_its_artifact_store_and_verify() {
    let python = venv_python();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let server = start_mlflow(&python, t);
    let url = format!("http://127.0.0.1:{}", server.port);
    let model_path = checkout().join("tests/fixtures/models/churn_rf.onnx");

    // The ML team's side.
    let reg = Command::new(&python)
        .arg("-c")
        .arg(REGISTER)
        .args([
            url.as_str(),
            model_path.to_str().unwrap(),
            "churn",
            "champion",
        ])
        .env("MLFLOW_TRACKING_URI", &url)
        // mlflow 3.17's usage telemetry sets and unsets `_MLFLOW_TELEMETRY_SESSION_ID` in
        // os.environ from a thread while requests iterates os.environ: a KeyError, now and
        // then, out of `set_experiment`. Nothing here may phone home anyway.
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .current_dir(t)
        .output()
        .unwrap();
    assert!(
        reg.status.success(),
        "registering the model failed: {}",
        String::from_utf8_lossy(&reg.stderr)
    );
    let printed = String::from_utf8_lossy(&reg.stdout);
    let fields: Vec<&str> = printed.split_whitespace().collect();
    let [run_id, version, model_uri] = fields[fields.len() - 3..] else {
        panic!("unexpected output {printed:?}");
    };
    assert_eq!(version, "1");
    assert!(model_uri.starts_with("models:/m-"), "{model_uri}");

    // Keys: root, two target holders, snapshot, the online timestamp key.
    let keys = t.join("keys");
    let keys_s = keys.to_str().unwrap();
    for k in ["root", "alice", "bob", "snapshot", "timestamp"] {
        ok(&["keys", "gen", "--out", keys_s, "--name", k]);
    }
    let key = |n: &str, kind: &str| keys.join(format!("{n}.{kind}.json")).display().to_string();
    let work = t.join("work");
    let w = work.to_str().unwrap();
    ok(&[
        "repo",
        "init",
        "--dir",
        w,
        "--root-key",
        &key("root", "pub"),
        "--targets-key",
        &key("alice", "pub"),
        "--targets-key",
        &key("bob", "pub"),
        "--targets-threshold",
        "2",
        "--snapshot-key",
        &key("snapshot", "pub"),
        "--timestamp-key",
        &key("timestamp", "pub"),
    ]);

    // An alias that does not exist is a clear error, and stages nothing.
    let reference = t.join("reference.csv");
    write_reference_csv(&reference);
    let r = reference.to_str().unwrap();
    let e = fails(&[
        "release",
        "create",
        "--dir",
        w,
        "--from-mlflow",
        &url,
        "--name",
        "churn",
        "--alias",
        "nosuch",
        "--reference-data",
        r,
    ]);
    assert!(e.contains("nosuch"), "{e}");

    let out = ok(&[
        "release",
        "create",
        "--dir",
        w,
        "--from-mlflow",
        &url,
        "--name",
        "churn",
        "--alias",
        "champion",
        "--reference-data",
        r,
        "--gpu",
        "preferred",
    ]);
    assert!(out.contains("models/churn/1/model.onnx"), "{out}");
    assert!(out.contains("targets v1: 0/2"), "{out}");

    // Alice signs (with the root, snapshot and timestamp keys held with her): not enough.
    ok(&[
        "release",
        "sign",
        "--dir",
        w,
        "--key",
        &key("alice", "key"),
        "--key",
        &key("root", "key"),
        "--key",
        &key("snapshot", "key"),
        "--key",
        &key("timestamp", "key"),
    ]);
    let dest = format!("mlflow+{url}/edgeinfer/tuf");
    let e = fails(&["release", "publish", "--dir", w, "--repo", &dest]);
    assert!(e.contains("targets v1: 1/2"), "{e}");
    // Bob signs on his machine: now it publishes into MLflow's artifact store.
    ok(&["release", "sign", "--dir", w, "--key", &key("bob", "key")]);
    let out = ok(&["release", "publish", "--dir", w, "--repo", &dest]);
    assert!(out.contains("9 files"), "{out}");

    // A box: trust root v1 and verify everything through MLflow.
    let root = work.join("metadata/1.root.json");
    let root_s = root.to_str().unwrap();
    let out = ok(&["verify", "--repo", &dest, "--root", root_s]);
    assert!(out.contains("ok   models/churn/1/model.onnx"), "{out}");
    assert!(out.contains("release 1, 2 golden samples"), "{out}");

    // The daemon on a box pulls the release from the artifact store and serves it.
    serve_from_mlflow(t, &dest, &root);

    // The same with the conformance CLI the daemon's code backs, and the bytes match.
    let meta_url = format!("{url}/api/2.0/mlflow-artifacts/artifacts/edgeinfer/tuf/metadata/");
    let targets_url = format!("{url}/api/2.0/mlflow-artifacts/artifacts/edgeinfer/tuf/targets/");
    let md = t.join("box/metadata");
    let md_s = md.to_str().unwrap();
    ok(&["tuf", "--metadata-dir", md_s, "init", root_s]);
    let td = t.join("box/targets");
    let td_s = td.to_str().unwrap();
    let download = |target: &str| {
        vec![
            "tuf".to_string(),
            "--metadata-dir".into(),
            md_s.into(),
            "--metadata-url".into(),
            meta_url.clone(),
            "--target-name".into(),
            target.into(),
            "--target-base-url".into(),
            targets_url.clone(),
            "--target-dir".into(),
            td_s.into(),
            "download".into(),
        ]
    };
    let args = download("models/churn/1/bundle.json");
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let bundle =
        Bundle::from_slice(&std::fs::read(td.join("models%2Fchurn%2F1%2Fbundle.json")).unwrap())
            .unwrap();
    assert_eq!(bundle.lineage.mlflow_run_id.as_deref(), Some(run_id));
    assert_eq!(
        bundle.lineage.dataset_version.as_deref(),
        Some("churn-2026-11")
    );
    assert_eq!(bundle.lineage.source, model_uri);
    assert_eq!(
        bundle
            .lineage
            .mlflow_model
            .as_ref()
            .unwrap()
            .alias
            .as_deref(),
        Some("champion")
    );
    assert_eq!(bundle.baseline.metrics["accuracy"], 0.91);
    assert_eq!(bundle.baseline.primary.unwrap().value, 0.91);
    assert_eq!(
        bundle.golden.iter().map(|g| g.rows()).collect::<Vec<_>>(),
        [1, 64]
    );
    assert_eq!(bundle.reference.features.len(), 20);
    let model = std::fs::read(&model_path).unwrap();
    let args = download("models/churn/1/model.onnx");
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        std::fs::read(td.join("models%2Fchurn%2F1%2Fmodel.onnx")).unwrap(),
        model
    );

    // Anyone can PUT into the artifact store: substitute the model file.
    let sha = edgeinfer_registry::release::repo::sha256_hex(&model);
    let put = format!(
        "/api/2.0/mlflow-artifacts/artifacts/edgeinfer/tuf/targets/models/churn/1/{sha}.model.onnx"
    );
    let mut evil = model.clone();
    evil[model.len() / 2] ^= 0xff;
    assert_eq!(http(server.port, "PUT", &put, &evil).unwrap().0, 200);
    let out = fails(&["verify", "--repo", &dest, "--root", root_s]);
    assert!(out.contains("FAIL models/churn/1/model.onnx"), "{out}");
    assert!(out.contains("ok   models/churn/1/bundle.json"), "{out}");
    let fresh = t.join("box2/targets");
    let mut args = download("models/churn/1/model.onnx");
    args[10] = fresh.to_str().unwrap().into();
    let e = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("sha256"), "{e}");
    assert!(!fresh.join("models%2Fchurn%2F1%2Fmodel.onnx").exists());

    // And a timestamp whose content changed under its signatures.
    let ts_path = "/api/2.0/mlflow-artifacts/artifacts/edgeinfer/tuf/metadata/timestamp.json";
    let (status, body) = http(server.port, "GET", ts_path, b"").unwrap();
    assert_eq!(status, 200);
    let mut ts: serde_json::Value = serde_json::from_slice(&body).unwrap();
    ts["signed"]["version"] = 7.into();
    let forged = serde_json::to_vec(&ts).unwrap();
    assert_eq!(http(server.port, "PUT", ts_path, &forged).unwrap().0, 200);
    let e = fails(&["verify", "--repo", &dest, "--root", root_s]);
    assert!(e.contains("timestamp was signed by 0/1"), "{e}");
    drop(server);
}
