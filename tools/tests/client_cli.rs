//! The `edgeinfer` client commands as a user runs them: the real binary, real sockets.
//! `echo-server` + `bench --echo` over Unix and TCP; `predict`, `status` and `bench --model`
//! against an in-test server speaking the protocol through the real codec; `bench --http`
//! against an in-test HTTP/1.1 server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use edgeinfer_proto::*;
use serde_json::Value;

fn edgeinfer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
}

/// A socket path in a fresh temp dir, removed with the dir when the test ends.
struct TempSocket {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TempSocket {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempSocket {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

fn temp_socket(tag: &str) -> TempSocket {
    let dir = tempfile::Builder::new()
        .prefix(&format!("edgeinfer-cli-{tag}-"))
        .tempdir()
        .unwrap();
    TempSocket {
        path: dir.path().join(format!("{tag}.sock")),
        _dir: dir,
    }
}

/// A child process killed (by its own id) when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `edgeinfer echo-server` and returns it with the endpoint it printed.
fn echo_server(flag: &str, value: &str) -> (Running, String) {
    let mut child = edgeinfer()
        .args(["echo-server", flag, value])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("echo-server said {line:?}"))
        .to_owned();
    (Running(child), endpoint)
}

fn run(args: &[&str]) -> Output {
    edgeinfer().args(args).output().unwrap()
}

fn run_json(args: &[&str]) -> Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "edgeinfer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The fields the issue promises, consistent with each other.
fn check_report(r: &Value, duration: f64) {
    for k in [
        "requests",
        "errors",
        "p50_us",
        "p90_us",
        "p99_us",
        "max_us",
        "throughput_rps",
    ] {
        assert!(r[k].is_number(), "{k} missing in {r}");
    }
    let f = |k: &str| r[k].as_f64().unwrap();
    assert!(f("requests") > 50.0, "{r}");
    assert_eq!(f("errors"), 0.0, "{r}");
    assert!(f("p50_us") > 0.0, "{r}");
    assert!(
        f("p50_us") <= f("p90_us") && f("p90_us") <= f("p99_us") && f("p99_us") <= f("max_us"),
        "{r}"
    );
    let rps = f("requests") / duration;
    assert!((f("throughput_rps") - rps).abs() < 1.0, "{r}");
}

#[test]
fn echo_bench_over_a_unix_socket() {
    let path = temp_socket("echo");
    let (_server, endpoint) = echo_server("--socket", path.to_str().unwrap());
    assert_eq!(endpoint, format!("unix:{}", path.display()));
    let r = run_json(&[
        "bench",
        "--echo",
        "--socket",
        path.to_str().unwrap(),
        "--concurrency",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--json",
    ]);
    check_report(&r, 1.0);
    assert_eq!(
        (r["mode"].as_str(), r["loop"].as_str()),
        (Some("echo"), Some("closed"))
    );
    assert_eq!(r["concurrency"], 2);
}

#[test]
fn echo_bench_over_tcp() {
    let (_server, endpoint) = echo_server("--addr", "127.0.0.1:0");
    let addr = endpoint.strip_prefix("tcp:").unwrap();
    let r = run_json(&[
        "bench",
        "--echo",
        "--addr",
        addr,
        "--concurrency",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--json",
    ]);
    check_report(&r, 1.0);
    assert_eq!(r["target"], endpoint);
}

#[test]
fn open_loop_offers_the_requested_rate() {
    let path = temp_socket("rate");
    let (_server, _) = echo_server("--socket", path.to_str().unwrap());
    let r = run_json(&[
        "bench",
        "--echo",
        "--socket",
        path.to_str().unwrap(),
        "--concurrency",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--rate",
        "2000",
        "--json",
    ]);
    check_report(&r, 1.0);
    assert_eq!(r["loop"], "open");
    // The schedule, not the server, sets the count: 2000 intended sends in the window.
    let n = r["requests"].as_f64().unwrap();
    assert!((1990.0..=2010.0).contains(&n), "{r}");
}

#[test]
fn echo_server_leaves_a_live_socket_and_other_files_alone() {
    let path = temp_socket("busy");
    let (_server, _) = echo_server("--socket", path.to_str().unwrap());
    let out = run(&["echo-server", "--socket", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already serving"));

    let file = temp_socket("file");
    std::fs::write(&file, "not a socket").unwrap();
    let out = run(&["echo-server", "--socket", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket");
}

#[test]
fn bench_needs_a_target() {
    let out = run(&["bench", "--echo", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--socket PATH or --addr HOST:PORT"));
    // clap refuses contradictory targets: usage error, exit 2.
    let out = run(&["bench", "--echo", "--socket", "a", "--addr", "b:1"]);
    assert_eq!(out.status.code(), Some(2));
}

// === against a protocol server ===

/// Serves model "double" (input `x`, f32, shape [-1, 3]; output `x2` = 2·x) with METADATA
/// and HEALTH; anything else is UNKNOWN_MODEL.
fn protocol_server() -> TempSocket {
    fn serve(mut s: std::os::unix::net::UnixStream) {
        let mut out = Vec::new();
        loop {
            let mut hb = [0u8; HEADER_LEN];
            if s.read_exact(&mut hb).is_err() {
                return;
            }
            let h = Header::decode(&hb).unwrap();
            let mut body = vec![0u8; h.body_len() as usize];
            s.read_exact(&mut body).unwrap();
            let id = h.request_id;
            match decode_payload(&h, &body).unwrap() {
                Payload::Hello(_) => {
                    let r = HelloResponse {
                        version: 1,
                        server: "cli-test".into(),
                        max_in_flight: 8,
                        ..Default::default()
                    };
                    encode_message(Opcode::HelloResponse, id, &r, &mut out).unwrap();
                }
                Payload::Metadata(m) if m.model == "double" => {
                    let spec = |n: &str| TensorSpecMsg {
                        name: n.into(),
                        dtype: 1,
                        shape: vec![-1, 3],
                    };
                    let md = ModelMetadata {
                        name: m.model,
                        version: "1".into(),
                        inputs: vec![spec("x")],
                        outputs: vec![spec("x2")],
                        ready: true,
                        ..Default::default()
                    };
                    encode_message(Opcode::MetadataResponse, id, &md, &mut out).unwrap();
                }
                Payload::Predict(v) if v.request.model == "double" => {
                    let t = v.input(0).unwrap().to_tensor();
                    let y: Vec<f32> = t.to_f32().unwrap().iter().map(|x| x * 2.0).collect();
                    let y = Tensor::from_f32("x2", t.shape.clone(), &y).unwrap();
                    let mut resp = PredictResponse {
                        model: "double".into(),
                        version: "1".into(),
                        backend: "test".into(),
                        compute_us: 5,
                        ..Default::default()
                    };
                    encode_predict_response(id, &mut resp, &[y.view()], &mut out).unwrap();
                }
                Payload::Health(_) => {
                    let m = ModelStatus {
                        name: "double".into(),
                        version: "1".into(),
                        backend: "test".into(),
                        ready: true,
                        default: true,
                        requests: 3,
                        errors: 0,
                    };
                    encode_message(
                        Opcode::HealthResponse,
                        id,
                        &HealthResponse {
                            ready: true,
                            models: vec![m],
                        },
                        &mut out,
                    )
                    .unwrap();
                }
                _ => {
                    encode_error(id, ErrorCode::UnknownModel, "no such model", 0, &mut out).unwrap()
                }
            }
            if s.write_all(&out).is_err() {
                return;
            }
        }
    }
    let path = temp_socket("proto");
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let s = s.unwrap();
            std::thread::spawn(move || serve(s));
        }
    });
    path
}

#[test]
fn predict_prints_outputs_using_the_models_metadata() {
    let sock = protocol_server();
    let s = sock.to_str().unwrap();
    let r = run_json(&[
        "predict", "--socket", s, "--model", "double", "--input", "1,-2.5,3", "--json",
    ]);
    assert_eq!(r["model"], "double");
    assert_eq!(r["backend"], "test");
    assert_eq!(r["compute_us"], 5);
    assert_eq!(r["outputs"][0]["name"], "x2");
    assert_eq!(r["outputs"][0]["dtype"], "f32");
    assert_eq!(r["outputs"][0]["shape"], serde_json::json!([1, 3]));
    assert_eq!(
        r["outputs"][0]["values"],
        serde_json::json!([2.0, -5.0, 6.0])
    );

    // Two rows, repeated twice: a batch of 4.
    let r = run_json(&[
        "predict", "--socket", s, "--model", "double", "--input", "1,2,3", "--input", "4,5,6",
        "--rows", "2", "--json",
    ]);
    assert_eq!(r["outputs"][0]["shape"], serde_json::json!([4, 3]));
    assert_eq!(r["outputs"][0]["values"][11], 12.0);

    let out = run(&[
        "predict", "--socket", s, "--model", "double", "--input", "1,2,3",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("double version 1 on test") && text.contains("x2 f32 [1, 3]: [2.0,4.0,6.0]"),
        "{text}"
    );
}

#[test]
fn predict_reports_refusals_and_bad_input() {
    let sock = protocol_server();
    let s = sock.to_str().unwrap();
    // Names and dtype given: no METADATA, so the server's refusal is the PREDICT's.
    let out = run(&[
        "predict",
        "--socket",
        s,
        "--model",
        "nope",
        "--input",
        "1",
        "--input-name",
        "x",
        "--dtype",
        "f32",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PREDICT \"nope\"") && err.contains("UNKNOWN_MODEL (4): no such model"),
        "{err}"
    );
    // Without them, METADATA is asked first and fails the same way.
    let out = run(&["predict", "--socket", s, "--model", "nope", "--input", "1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("metadata"),
        "{out:?}"
    );
    let out = run(&[
        "predict", "--socket", s, "--model", "double", "--input", "1,x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"x\" is not a number"));
    let out = run(&[
        "predict",
        "--socket",
        "/nonexistent/sock",
        "--model",
        "double",
        "--input",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to unix:/nonexistent/sock"));
}

#[test]
fn status_lists_models() {
    let sock = protocol_server();
    let s = sock.to_str().unwrap();
    let r = run_json(&["status", "--socket", s, "--json"]);
    assert_eq!(r["server"], "cli-test");
    assert_eq!(r["ready"], true);
    assert_eq!(r["models"][0]["name"], "double");
    assert_eq!(r["models"][0]["default"], true);
    assert_eq!(r["models"][0]["requests"], 3);
    let out = run(&["status", "--socket", s]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cli-test at unix:") && text.contains("ready"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["double", "1", "test", "yes", "yes", "3", "0"]),
        "{text}"
    );
}

#[test]
fn bench_predicts_with_inputs_from_metadata() {
    let sock = protocol_server();
    let s = sock.to_str().unwrap();
    let r = run_json(&[
        "bench",
        "--socket",
        s,
        "--model",
        "double",
        "--concurrency",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.1",
        "--rows",
        "4",
        "--json",
    ]);
    check_report(&r, 1.0);
    assert_eq!(
        (r["mode"].as_str(), r["rows"].as_u64()),
        (Some("predict"), Some(4))
    );
    let out = run(&[
        "bench",
        "--socket",
        s,
        "--model",
        "nope",
        "--duration",
        "1",
        "--input-name",
        "x",
        "--dtype",
        "f32",
        "--input",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNKNOWN_MODEL"));
}

#[test]
fn bench_keeps_several_requests_outstanding_with_pipeline() {
    let sock = protocol_server();
    let s = sock.to_str().unwrap();
    // Two connections on one poll(2) thread, four requests outstanding on each: every
    // answer must match an outstanding id (the generator fails otherwise).
    let r = run_json(&[
        "bench",
        "--socket",
        s,
        "--model",
        "double",
        "--concurrency",
        "2",
        "--threads",
        "1",
        "--pipeline",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0.1",
        "--json",
    ]);
    check_report(&r, 1.0);
    assert_eq!(r["pipeline"].as_u64(), Some(4), "{r}");
    // Pipelining is the poll generator's: without --threads it is refused.
    let out = run(&[
        "bench",
        "--socket",
        s,
        "--model",
        "double",
        "--pipeline",
        "4",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--threads"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// === HTTP ===

/// A keep-alive HTTP/1.1 server answering `{"predictions": [0]}` and keeping each request body.
fn http_server(chunked: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/predict", l.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let s = s.unwrap();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    assert_eq!(line, "POST /predict HTTP/1.1\r\n");
                    let mut len = 0;
                    loop {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    seen.lock().unwrap().push(String::from_utf8(body).unwrap());
                    let answer = r#"{"predictions":[0],"model_version":"1","latency_ms":0.1}"#;
                    let msg = if chunked {
                        format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n", 10, &answer[..10], answer.len() - 10, &answer[10..])
                    } else {
                        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}", answer.len())
                    };
                    if w.write_all(msg.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, bodies)
}

#[test]
fn http_bench_posts_features_over_keep_alive() {
    for chunked in [false, true] {
        let (url, bodies) = http_server(chunked);
        let r = run_json(&[
            "bench",
            "--http",
            &url,
            "--concurrency",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.1",
            "--json",
        ]);
        check_report(&r, 1.0);
        assert_eq!(r["mode"], "http");
        let bodies = bodies.lock().unwrap();
        let first: Value = serde_json::from_str(&bodies[0]).unwrap();
        let rows = first["features"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].as_array().unwrap().len(), 20);
        // The probe, the warm-up and the measured requests all arrived.
        assert!(
            bodies.len() as f64 > r["requests"].as_f64().unwrap(),
            "{}",
            bodies.len()
        );
    }
}

#[test]
fn http_bench_refuses_a_url_that_does_not_predict() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let _ = w.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found");
    });
    let out = run(&["bench", "--http", &url, "--duration", "1", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("answered 404"),
        "{out:?}"
    );
}
