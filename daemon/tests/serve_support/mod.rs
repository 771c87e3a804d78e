//! Shared by the serve tests: start the app in-process on listeners bound here (a temp-dir
//! Unix socket and 127.0.0.1:0), load fixture models, and talk raw frames over real sockets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeinfer_client::blocking::Client;
use edgeinfer_client::Endpoint;
use edgeinfer_engine::{EngineChoice, LoadOptions};
use edgeinfer_proto::{
    decode_message, decode_predict_response, encode_predict, ErrorResponse, Header, Opcode,
    PredictRequest, Tensor, HEADER_LEN,
};
use edgeinferd::app::{self, App, AppHandle, ModelSource, ModelSpec};
use edgeinferd::model_table::{BatchConfig, ServingConfig};
use edgeinferd::server::{Driver, Listeners, ServerOptions, TcpGroup};

/// Every socket operation in the tests gives up after this long, so a hang is a failure.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn model_path(stem: &str) -> PathBuf {
    repo()
        .join("tests/fixtures/models")
        .join(format!("{stem}.onnx"))
}

/// A fixture model on an explicit engine.
pub fn spec(
    name: &str,
    stem: &str,
    engine: EngineChoice,
    batching: Option<BatchConfig>,
) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        version: "1".into(),
        source: ModelSource::File(model_path(stem)),
        load: LoadOptions {
            engine,
            ..LoadOptions::default()
        },
        serving: ServingConfig { batching },
    }
}

pub fn batching(max_batch: usize, max_delay: Duration) -> Option<BatchConfig> {
    Some(BatchConfig {
        max_batch,
        max_delay,
    })
}

/// The ORT library the engines issue pins; tests that need ORT fail without it.
pub fn require_ort() -> PathBuf {
    let p = std::env::var_os("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must point at libonnxruntime.so.1.31.1 for this test (see README)");
    let p = PathBuf::from(p);
    assert!(p.exists(), "ORT_DYLIB_PATH={} does not exist", p.display());
    p
}

pub struct TestServer {
    pub app: Option<AppHandle>,
    pub sock: PathBuf,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn unix(&self) -> Endpoint {
        Endpoint::Unix(self.sock.clone())
    }

    pub fn tcp(&self) -> Endpoint {
        Endpoint::Tcp(self.addr.clone())
    }

    pub fn client(&self) -> Client {
        let c = Client::connect(&self.unix()).expect("connect over unix");
        c.set_timeout(Some(IO_TIMEOUT)).unwrap();
        c
    }

    pub fn raw(&self) -> Raw {
        Raw::unix(&self.sock)
    }

    pub fn app(&self) -> &AppHandle {
        self.app.as_ref().expect("running")
    }

    /// Graceful shutdown, waiting for the cores.
    pub fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown(Duration::from_secs(5));
            app.wait().expect("clean stop");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Test defaults: small limits so the limits are quick to reach.
pub fn options(driver: Driver) -> ServerOptions {
    ServerOptions {
        driver,
        read_timeout: Duration::from_secs(10),
        ..ServerOptions::default()
    }
}

/// Starts the app on a fresh temp-dir Unix socket and a shared 127.0.0.1:0 TCP listener.
pub fn start(opts: ServerOptions, models: &[ModelSpec]) -> TestServer {
    let table = app::load_models(models).expect("load models");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("edgeinferd.sock");
    let unix = UnixListener::bind(&sock).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let listeners = Listeners {
        unix: vec![unix],
        tcp: vec![TcpGroup::Shared(tcp)],
    };
    let app = App::start(opts, table, listeners).expect("start app");
    TestServer {
        app: Some(app),
        sock,
        addr,
        _dir: dir,
    }
}

// === golden files ===

pub struct Golden {
    pub input: Tensor,
    pub outputs: Vec<Tensor>,
}

pub fn golden(stem: &str) -> Golden {
    let text = std::fs::read_to_string(
        repo()
            .join("tests/fixtures/golden")
            .join(format!("{stem}.json")),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tensor = |t: &serde_json::Value| {
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let data: Vec<f64> = t["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_f64().unwrap())
            .collect();
        let dtype = t["dtype"].as_str().unwrap().parse().unwrap();
        Tensor::from_f64_as(t["name"].as_str().unwrap(), dtype, shape, &data).unwrap()
    };
    let input = tensor(&v["inputs"][0]);
    let outputs = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(tensor)
        .collect();
    Golden { input, outputs }
}

/// Rows `[from, to)` of a golden tensor (leading dimension).
pub fn rows(t: &Tensor, from: usize, to: usize) -> Tensor {
    let n = t.shape[0] as usize;
    let row = t.data.len() / n;
    let mut shape = t.shape.clone();
    shape[0] = (to - from) as u64;
    Tensor::new(
        t.name.clone(),
        t.dtype,
        shape,
        t.data[from * row..to * row].to_vec(),
    )
    .unwrap()
}

/// Labels exactly, floats within 1e-4 (the fixtures' README).
pub fn assert_matches(got: &[Tensor], want: &[Tensor]) {
    assert_eq!(got.len(), want.len(), "output count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.name, w.name);
        assert_eq!(g.shape, w.shape, "shape of {}", w.name);
        assert_eq!(g.dtype, w.dtype, "dtype of {}", w.name);
        for (i, (a, b)) in g.values_f64().iter().zip(w.values_f64()).enumerate() {
            assert!((a - b).abs() <= 1e-4, "{}[{i}]: got {a}, want {b}", w.name);
        }
    }
}

// === raw frames ===

/// A raw socket to send arbitrary bytes and read answers frame by frame.
pub struct Raw {
    pub s: UnixStream,
}

#[derive(Debug)]
pub enum Answer {
    Predict { id: u64, outputs: Vec<Tensor> },
    Error { id: u64, code: u32, message: String },
    Other { id: u64, opcode: u8, body: Vec<u8> },
}

impl Answer {
    pub fn id(&self) -> u64 {
        match self {
            Answer::Predict { id, .. } | Answer::Error { id, .. } | Answer::Other { id, .. } => *id,
        }
    }

    pub fn error_code(&self) -> Option<u32> {
        match self {
            Answer::Error { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl Raw {
    pub fn unix(path: &Path) -> Raw {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Raw { s }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next answer, or `None` at a clean EOF.
    pub fn read(&mut self) -> Option<Answer> {
        let mut hb = [0u8; HEADER_LEN];
        match self.s.read_exact(&mut hb) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading an answer: {e}"),
        }
        let h = Header::decode(&hb).expect("the server sends valid headers");
        let mut body = vec![0u8; h.body_len() as usize];
        self.s.read_exact(&mut body).expect("a whole answer");
        Some(match Opcode::from_u8(h.opcode) {
            Some(Opcode::PredictResponse) => {
                let v = decode_predict_response(&h, &body).expect("valid predict response");
                Answer::Predict {
                    id: h.request_id,
                    outputs: v.outputs().map(|t| t.to_tensor()).collect(),
                }
            }
            Some(Opcode::Error) => {
                let e: ErrorResponse = decode_message(&h, &body).expect("valid error");
                Answer::Error {
                    id: h.request_id,
                    code: e.code,
                    message: e.message,
                }
            }
            _ => Answer::Other {
                id: h.request_id,
                opcode: h.opcode,
                body,
            },
        })
    }

    /// Reads until EOF, which must come within the timeout; returns what came before it.
    pub fn read_to_eof(&mut self) -> Vec<Answer> {
        let mut out = Vec::new();
        while let Some(a) = self.read() {
            out.push(a);
        }
        out
    }
}

/// A PREDICT frame for `model` with one input.
pub fn predict_frame(id: u64, model: &str, input: &Tensor, deadline_us: u64) -> Vec<u8> {
    let mut req = PredictRequest {
        model: model.into(),
        deadline_us,
        ..Default::default()
    };
    let mut out = Vec::new();
    encode_predict(id, &mut req, &[input.view()], &mut out).unwrap();
    out
}

/// `n` features of 0.5 as a [1, n] f32 tensor named `float_input`.
pub fn churn_row(value: f32) -> Tensor {
    Tensor::from_f32("float_input", vec![1, 20], &[value; 20]).unwrap()
}

/// One churn row through `c`; panics unless it is answered with probabilities.
pub fn served(c: &mut Client) {
    let r = c
        .predict(
            "churn",
            &[churn_row(0.25).view()],
            &edgeinfer_client::PredictOptions::default(),
        )
        .expect("the client is served");
    assert!(r.output("probabilities").is_some());
}
