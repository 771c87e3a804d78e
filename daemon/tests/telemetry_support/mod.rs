//! Shared by the daemon's telemetry tests: the real `edgeinferd` with `[telemetry]` on,
//! publishing to mosquitto on a loopback port, watched by the Python consumer that
//! validates every payload against docs/telemetry/*.json; and raw PREDICT / FEEDBACK
//! exchanges that read the prediction id the client library does not surface.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;
use std::time::Duration;

use edgeinfer_client::blocking::Client;
use edgeinfer_client::{Endpoint, PredictOptions};
use edgeinfer_proto::{
    decode_message, decode_predict_response, encode_message, ErrorCode, ErrorResponse,
    FeedbackRequest, FeedbackResponse, Opcode, PredictResponse, TensorView,
};
use edgeinfer_telemetry::drift::{FeatureRef, ReferenceStats};
use edgeinfer_telemetry::ModelMonitoring;

#[path = "../appliance_support/mod.rs"]
pub mod appliance;
#[path = "../../../telemetry/tests/support/mod.rs"]
pub mod mqtt;

pub use appliance::*;
pub use mqtt::{free_port, wait_for, watchdog, Consumer, Mosquitto};

/// Columns of the churn model's `float_input`.
pub const WIDTH: usize = 20;

/// A daemon with telemetry on, its broker and the consumer.
pub struct Box1 {
    pub dir: tempfile::TempDir,
    pub daemon: Reaper,
    pub broker: Mosquitto,
    pub consumer: Consumer,
    pub socket: PathBuf,
    pub http: std::net::SocketAddr,
    pub prefix: String,
}

/// Starts mosquitto, the consumer, and `edgeinferd` serving churn with `monitoring` and
/// `[telemetry]` plus `telemetry_extra` (e.g. `interval_s = 1`).
pub fn start(monitoring: &ModelMonitoring, telemetry_extra: &str) -> Box1 {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let broker = Mosquitto::start(&broker_dir, port);
    let prefix = format!("it{}-{port}", std::process::id());
    let consumer = Consumer::start(port, &prefix);
    let mon = dir.path().join("churn.monitoring.json");
    std::fs::write(&mon, serde_json::to_vec(monitoring).unwrap()).unwrap();
    let model = repo().join("tests/fixtures/models/churn_rf.onnx");
    let extra = format!(
        "log_level = \"warn\"\n[telemetry]\nenabled = true\nmqtt_url = \"mqtt://127.0.0.1:{port}\"\n\
         device_id = \"box1\"\ntopic_prefix = \"{prefix}\"\n{telemetry_extra}\n\
         [[models]]\nname = \"churn\"\npath = \"{}\"\nmonitoring = \"{}\"\n",
        model.display(),
        mon.display()
    );
    let config = write_config(dir.path(), &extra);
    let mut notify = NotifySocket::bind(dir.path());
    let mut cmd = daemon_command(&config);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let daemon = Reaper(Some(cmd.spawn().unwrap()));
    let ready = notify.wait_for("READY=1", STARTUP);
    let status = field(&ready, "STATUS").unwrap_or(&ready).to_owned();
    let http = http_addr(&status);
    Box1 {
        socket: dir.path().join("edgeinferd.sock"),
        dir,
        daemon,
        broker,
        consumer,
        http,
        prefix,
    }
}

impl Box1 {
    pub fn client(&self) -> Client {
        let c = Client::connect(&Endpoint::Unix(self.socket.clone())).unwrap();
        c.set_timeout(Some(Duration::from_secs(30))).unwrap();
        c
    }

    /// Payloads received on one topic level (every one validated against its schema).
    pub fn payloads(&self, level: &str) -> Vec<serde_json::Value> {
        let msgs: Vec<serde_json::Value> = self
            .consumer
            .messages()
            .into_iter()
            .filter(|m| m["level"] == level)
            .collect();
        for m in &msgs {
            assert_eq!(m["valid"], true, "a {level} payload fails its schema: {m}");
        }
        msgs.into_iter().map(|m| m["payload"].clone()).collect()
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> String {
        let (code, body) = http_get(self.http, "/metrics");
        assert_eq!(code, 200);
        body
    }
}

/// A reference of `n` numeric features (columns 0..n), each from standard normal samples.
pub fn normal_reference(n: usize) -> ModelMonitoring {
    let features = (0..n)
        .map(|c| {
            let s = edgeinfer_telemetry::drift::normal_samples(20_000, 0.0, 1.0, 11 + c as u64);
            FeatureRef::numeric_from_samples(&format!("f{c}"), c, &s)
        })
        .collect();
    ModelMonitoring {
        reference: Some(ReferenceStats {
            features,
            outputs: vec![],
        }),
        ..ModelMonitoring::default()
    }
}

/// PREDICT `rows` (row-major f32, `WIDTH` wide) and the decoded answer.
pub fn predict(c: &mut Client, rows: &[f32]) -> (PredictResponse, Vec<i64>) {
    let n = rows.len() / WIDTH;
    let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
    let shape = [n as u64, WIDTH as u64];
    let view = TensorView::new("float_input", edgeinfer_proto::DType::F32, &shape, &bytes).unwrap();
    c.send_predict("churn", &[view], &PredictOptions::default())
        .unwrap();
    let (h, body) = c.recv_frame().unwrap();
    assert_eq!(
        h.opcode,
        Opcode::PredictResponse.as_u8(),
        "{:?}",
        decode_message::<ErrorResponse>(&h, body).ok()
    );
    let v = decode_predict_response(&h, body).unwrap();
    let label = v
        .outputs()
        .find(|t| t.name == "label")
        .expect("a label output")
        .to_tensor();
    let labels = label
        .data
        .chunks(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (v.response, labels)
}

/// One FEEDBACK frame (raw metadata bytes) and its answer: the response or the ERROR.
pub fn feedback_raw(c: &mut Client, meta: &[u8]) -> Result<FeedbackResponse, ErrorResponse> {
    let h = edgeinfer_proto::Header::new(Opcode::Feedback, 0, meta.len() as u32, 0);
    let mut frame = h.to_bytes().to_vec();
    frame.extend_from_slice(meta);
    c.send_frame(&mut frame).unwrap();
    let (h, body) = c.recv_frame().unwrap();
    if h.opcode == Opcode::FeedbackResponse.as_u8() {
        Ok(decode_message::<FeedbackResponse>(&h, body).unwrap())
    } else {
        assert_eq!(h.opcode, Opcode::Error.as_u8());
        Err(decode_message::<ErrorResponse>(&h, body).unwrap())
    }
}

pub fn feedback(c: &mut Client, req: &FeedbackRequest) -> Result<FeedbackResponse, ErrorResponse> {
    let mut frame = Vec::new();
    encode_message(Opcode::Feedback, 0, req, &mut frame).unwrap();
    feedback_raw(c, &frame[32..])
}

pub fn code(e: &ErrorResponse) -> Option<ErrorCode> {
    e.error_code()
}

/// The Prometheus sample `name{labels}` (exact label text), if present.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
