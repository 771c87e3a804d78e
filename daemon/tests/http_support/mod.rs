//! Shared by the HTTP, KServe and appliance tests: fixture models loaded into a real model
//! table, the HTTP server started in-process on 127.0.0.1:0, and a minimal HTTP/1.1 client
//! over a real socket (so the tests need no HTTP client crate).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edgeinfer_engine::{EngineChoice, LoadOptions};
use edgeinferd::app::{self, ModelSource, ModelSpec};
use edgeinferd::config::Config;
use edgeinferd::http::{self, HttpHandle};
use edgeinferd::model_table::{ModelTable, ServingConfig};

pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn model_path(stem: &str) -> PathBuf {
    repo()
        .join("tests/fixtures/models")
        .join(format!("{stem}.onnx"))
}

/// The ORT library the engines issue pins; tests that need ORT fail without it.
pub fn require_ort() -> PathBuf {
    let p = std::env::var_os("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must point at libonnxruntime.so.1.31.1 for this test (tools/ci/test.sh sets it)");
    let p = PathBuf::from(p);
    assert!(p.exists(), "ORT_DYLIB_PATH={} does not exist", p.display());
    p
}

/// A fixture model, version "1", on an explicit engine.
pub fn spec(name: &str, stem: &str, engine: EngineChoice) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        version: "1".into(),
        source: ModelSource::File(model_path(stem)),
        load: LoadOptions {
            engine,
            ..LoadOptions::default()
        },
        serving: ServingConfig::default(),
    }
}

pub fn table(specs: &[ModelSpec]) -> Arc<ModelTable> {
    app::load_models(specs).expect("loading fixture models")
}

/// The HTTP server, in-process on 127.0.0.1:0.
pub fn serve(cfg: &Config, table: Arc<ModelTable>) -> HttpHandle {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    http::spawn(cfg, table, None, l).expect("starting HTTP")
}

/// One HTTP exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `{"error": "…"}` message of an error reply.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" in {}", self.text()))
            .to_owned()
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"")
}

pub fn post_json(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Reply {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the whole reply.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("reply has a header");
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

/// A golden file of tests/fixtures/golden: inputs and the outputs onnxruntime gave.
pub struct Golden {
    pub rows: Vec<Vec<f32>>,
    pub label: Vec<i64>,
    pub probabilities: Vec<Vec<f32>>,
}

pub fn churn_golden() -> Golden {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/golden/churn_rf.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let input = &g["inputs"][0];
    let cols = input["shape"][1].as_u64().unwrap() as usize;
    let flat: Vec<f32> = input["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let out = |name: &str| {
        g["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap()
            .clone()
    };
    let label = out("label")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let p: Vec<f32> = out("probabilities")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    Golden {
        rows: flat.chunks(cols).map(<[f32]>::to_vec).collect(),
        label,
        probabilities: p.chunks(2).map(<[f32]>::to_vec).collect(),
    }
}

/// Engines agree with onnxruntime's golden outputs to this much.
pub const TOLERANCE: f32 = 1e-4;

pub fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOLERANCE, "{what}[{i}]: got {g}, want {w}");
    }
}
