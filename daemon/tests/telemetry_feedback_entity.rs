//! FEEDBACK by entity and timestamp against the real `edgeinferd`: PREDICT_BY_ENTITY
//! predictions are logged with their entity keys, and a FEEDBACK that names an entity and a
//! time is joined to that entity's latest prediction at or before it (row k of a
//! multi-entity request is its own prediction). An unknown entity, or a time before any of
//! its predictions, is UNKNOWN_REQUEST_ID, counted by how the FEEDBACK named it; the daemon
//! serves on. Real LMDB feature store, real logreg fixture, real mosquitto.

mod telemetry_support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeinfer_client::blocking::Client;
use edgeinfer_proto::*;
use telemetry_support::appliance::{
    daemon_command, field, http_addr, http_get, repo, write_config, NotifySocket, Reaper, STARTUP,
};
use telemetry_support::{code, feedback, free_port, sample, watchdog, Mosquitto, WIDTH};

/// Between the times the test names: the log stamps a prediction with a clock the control
/// thread refreshes, a little early on a loaded box, never late.
const STAMP_SLACK: Duration = Duration::from_millis(250);

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Box2 {
    _dir: tempfile::TempDir,
    _daemon: Reaper,
    _broker: Mosquitto,
    socket: std::path::PathBuf,
    http: std::net::SocketAddr,
}

/// logreg as `lr` with a 20-field feature schema, the feature cache and telemetry on.
fn start() -> Box2 {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let broker = Mosquitto::start(&broker_dir, port);
    let model = repo().join("tests/fixtures/models/logreg.onnx");
    let mut extra = format!(
        "log_level = \"warn\"\n[cache]\nenabled = true\nttl_s = 0\n\
         [telemetry]\nenabled = true\nmqtt_url = \"mqtt://127.0.0.1:{port}\"\ndevice_id = \"box2\"\n\
         topic_prefix = \"fe{}\"\ninterval_s = 1\n\
         [[models]]\nname = \"lr\"\npath = \"{}\"\n[models.features]\nversion = 1\n",
        std::process::id(),
        model.display()
    );
    for i in 0..WIDTH {
        extra.push_str(&format!(
            "[[models.features.fields]]\nname = \"f{i}\"\ndtype = \"f32\"\ndefault = 0.0\n"
        ));
    }
    let config = write_config(dir.path(), &extra);
    let mut notify = NotifySocket::bind(dir.path());
    let mut cmd = daemon_command(&config);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let daemon = Reaper(Some(cmd.spawn().unwrap()));
    let ready = notify.wait_for("READY=1", STARTUP);
    let status = field(&ready, "STATUS").unwrap_or(&ready).to_owned();
    Box2 {
        socket: dir.path().join("edgeinferd.sock"),
        http: http_addr(&status),
        _dir: dir,
        _daemon: daemon,
        _broker: broker,
    }
}

fn client(b: &Box2) -> Client {
    let c = Client::connect(&edgeinfer_client::Endpoint::Unix(b.socket.clone())).unwrap();
    c.set_timeout(Some(Duration::from_secs(30))).unwrap();
    c
}

/// One request, its answer: the response frame or the ERROR.
fn call<M: prost::Message>(c: &mut Client, op: Opcode, msg: &M) -> (Header, Vec<u8>) {
    let mut f = Vec::new();
    encode_message(op, 7, msg, &mut f).unwrap();
    c.send_frame(&mut f).unwrap();
    let (h, body) = c.recv_frame().unwrap();
    if h.opcode == Opcode::Error.as_u8() {
        let e: ErrorResponse = decode_message(&h, body).unwrap();
        panic!("{op} refused: {:?} {}", e.error_code(), e.message);
    }
    (h, body.to_vec())
}

fn put(c: &mut Client, entity: &str, x: f64) {
    let row = FeatureRowMsg {
        entity: entity.as_bytes().to_vec(),
        event_ts_ms: wall_ms() as i64,
        values: (0..WIDTH)
            .map(|i| FeatureValue {
                name: format!("f{i}"),
                value: if i % 2 == 0 { x } else { -x },
            })
            .collect(),
    };
    call(
        c,
        Opcode::PutFeatures,
        &PutFeaturesRequest {
            schema_version: 1,
            rows: vec![row],
        },
    );
}

/// PREDICT_BY_ENTITY: the first row's prediction id and each row's label.
fn by_entity(c: &mut Client, keys: &[&str]) -> (u64, Vec<i64>) {
    let req = PredictByEntityRequest {
        model: "lr".into(),
        keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        ..Default::default()
    };
    let (h, body) = call(c, Opcode::PredictByEntity, &req);
    let v = decode_predict_by_entity_response(&h, &body, &Limits::DEFAULT).unwrap();
    let p = v.prediction();
    let i = p.outputs.iter().position(|o| o.name == "label").unwrap();
    let labels = v
        .output(i)
        .unwrap()
        .data
        .chunks(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (p.prediction_id, labels)
}

fn by(entity: &str, timestamp_ms: u64, label: f64) -> FeedbackRequest {
    FeedbackRequest {
        entity: entity.into(),
        timestamp_ms,
        label,
        ..Default::default()
    }
}

#[test]
fn feedback_by_entity_joins_the_latest_prediction_at_or_before_its_time() {
    watchdog("telemetry_feedback_entity", 240);
    let b = start();
    let mut c = client(&b);
    for (k, x) in [("u1", 2.0), ("u2", -2.0), ("u3", 0.5)] {
        put(&mut c, k, x);
    }
    let before = wall_ms();
    std::thread::sleep(STAMP_SLACK);
    let (first, labels) = by_entity(&mut c, &["u1", "u2"]);
    assert_ne!(first, 0, "PREDICT_BY_ENTITY answers carry a prediction id");
    assert_eq!(labels.len(), 2);
    std::thread::sleep(STAMP_SLACK);
    let between = wall_ms();
    std::thread::sleep(STAMP_SLACK);
    let (second, _) = by_entity(&mut c, &["u2"]);
    assert!(second > first + 1, "{second} after {first}");

    // Row 1 of the first request is u2's prediction up to `between`; its latest after.
    let r = feedback(&mut c, &by("u2", between, labels[1] as f64)).unwrap();
    assert_eq!(r.prediction_id, first + 1, "{r:?}");
    assert_eq!((r.model.as_str(), r.version.as_str()), ("lr", "1"));
    assert_eq!(r.predicted, labels[1] as f64);
    assert_eq!(r.arm, "default", "not in a rollout");
    let r = feedback(&mut c, &by("u2", 0, 1.0)).unwrap();
    assert_eq!(r.prediction_id, second, "timestamp 0 = now: {r:?}");
    let r = feedback(&mut c, &by("u1", wall_ms(), labels[0] as f64)).unwrap();
    assert_eq!((r.prediction_id, r.predicted), (first, labels[0] as f64));

    // An entity never predicted (u3 has features, but no prediction), one unknown to the
    // store, and a time before the entity's first prediction.
    for req in [
        by("u3", 0, 1.0),
        by("nobody", 0, 1.0),
        by("u1", before, 1.0),
    ] {
        let e = feedback(&mut c, &req).unwrap_err();
        assert_eq!(
            code(&e),
            Some(ErrorCode::UnknownRequestId),
            "{req:?}: {e:?}"
        );
    }
    let e = feedback(&mut c, &by("bad\0entity", 0, 1.0)).unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadInput), "{e:?}");
    // An unknown id is counted apart from the entities.
    let e = feedback(
        &mut c,
        &FeedbackRequest {
            prediction_id: second + 1_000_000,
            label: 1.0,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::UnknownRequestId));

    // The daemon serves on, and the errors are counted.
    let (third, _) = by_entity(&mut c, &["u3"]);
    assert!(third > second);
    let r = feedback(&mut c, &by("u3", 0, 0.0)).unwrap();
    assert_eq!(r.prediction_id, third);
    let (status, m) = http_get(b.http, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&m, "edgeinfer_feedback_unknown_total{by=\"entity\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "edgeinfer_feedback_unknown_total{by=\"id\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "edgeinfer_protocol_errors_total{code=\"UNKNOWN_REQUEST_ID\"}"
        ),
        Some(4.0)
    );
}
