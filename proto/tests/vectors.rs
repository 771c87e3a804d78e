//! Conformance vectors shared with the Python client: every frame under proto/tests/vectors/
//! is encoded from its fields and decoded back to them by this codec, byte for byte, and
//! python/tests/test_vectors.py does the same with the Python codec, so the two cannot drift.
//! Refusal vectors must be refused with their code. `UPDATE_EXPECT=1` rewrites the frames of
//! the valid vectors from this encoder. The worked examples in docs/protocol.md must be
//! vectors too.
//!
//! The feature-cache messages (PREDICT_BY_ENTITY, PUT_FEATURES, GET_FEATURES) have their
//! vectors in proto/tests/vectors/features/, checked here the same way against the §10.9-13
//! examples (`<!-- expect-features:NAME -->`). They sit in a directory of their own (they
//! came after the Python client); python/tests/test_vectors.py reads both.

use std::path::{Path, PathBuf};

use edgeinfer_proto::*;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn vectors() -> Vec<(PathBuf, Value)> {
    vectors_in("proto/tests/vectors", 20)
}

fn feature_vectors() -> Vec<(PathBuf, Value)> {
    vectors_in("proto/tests/vectors/features", 8)
}

/// The `*.json` vectors of one directory, at least `min` of them.
fn vectors_in(rel: &str, min: usize) -> Vec<(PathBuf, Value)> {
    let dir = repo().join(rel);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= min,
        "only {} vectors in {}",
        paths.len(),
        dir.display()
    );
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect()
}

/// `0000: 45494e46 01020000 …` lines (the doc's format) to bytes.
fn unhex(lines: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines.as_array().expect("frame is a list of lines") {
        let line = line.as_str().unwrap();
        let (_, hex) = line.split_once(": ").unwrap_or(("", line));
        let hex: String = hex.split_whitespace().collect();
        for i in (0..hex.len()).step_by(2) {
            out.push(u8::from_str_radix(&hex[i..i + 2], 16).unwrap());
        }
    }
    out
}

fn hexdump(bytes: &[u8]) -> Vec<String> {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, line)| {
            let groups: Vec<String> = line
                .chunks(4)
                .map(|g| g.iter().map(|b| format!("{b:02x}")).collect())
                .collect();
            format!("{:04x}: {}", i * 16, groups.join(" "))
        })
        .collect()
}

fn s(v: &Value) -> String {
    v.as_str().expect("a string").to_owned()
}

fn u(v: &Value) -> u64 {
    v.as_u64().expect("an unsigned integer")
}

fn list<T>(v: &Value, f: impl Fn(&Value) -> T) -> Vec<T> {
    v.as_array().expect("a list").iter().map(f).collect()
}

fn unhex_str(v: &Value) -> Vec<u8> {
    unhex(&json!([s(v)]))
}

fn hex_str(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// === fields <-> messages ===

fn tensor_meta_json(m: &TensorMeta) -> Value {
    json!({"name": m.name, "dtype": m.dtype, "shape": m.shape, "offset": m.offset,
           "length": m.length})
}

fn spec(v: &Value) -> TensorSpecMsg {
    TensorSpecMsg {
        name: s(&v["name"]),
        dtype: u(&v["dtype"]) as u32,
        shape: list(&v["shape"], |d| d.as_i64().unwrap()),
    }
}

fn spec_json(m: &TensorSpecMsg) -> Value {
    json!({"name": m.name, "dtype": m.dtype, "shape": m.shape})
}

fn status(v: &Value) -> ModelStatus {
    ModelStatus {
        name: s(&v["name"]),
        version: s(&v["version"]),
        backend: s(&v["backend"]),
        ready: v["ready"].as_bool().unwrap(),
        default: v["default"].as_bool().unwrap(),
        requests: u(&v["requests"]),
        errors: u(&v["errors"]),
    }
}

fn status_json(m: &ModelStatus) -> Value {
    json!({"name": m.name, "version": m.version, "backend": m.backend, "ready": m.ready,
           "default": m.default, "requests": m.requests, "errors": m.errors})
}

fn hexes(v: &Value) -> Vec<Vec<u8>> {
    list(v, unhex_str)
}

fn hexes_json(b: &[Vec<u8>]) -> Vec<String> {
    b.iter().map(|k| hex_str(k)).collect()
}

fn feature_value(v: &Value) -> FeatureValue {
    FeatureValue {
        name: s(&v["name"]),
        value: v["value"].as_f64().unwrap(),
    }
}

fn feature_values_json(m: &[FeatureValue]) -> Value {
    Value::from(
        m.iter()
            .map(|x| json!({"name": x.name, "value": x.value}))
            .collect::<Vec<_>>(),
    )
}

fn row_report(v: &Value) -> EntityRowReport {
    EntityRowReport {
        found: v["found"].as_bool().unwrap(),
        version_mismatch: v["version_mismatch"].as_bool().unwrap(),
        defaulted: list(&v["defaulted"], |x| u(x) as u32),
        stale: list(&v["stale"], |x| u(x) as u32),
        event_ts_ms: v["event_ts_ms"].as_i64().unwrap(),
    }
}

fn row_report_json(m: &EntityRowReport) -> Value {
    json!({"found": m.found, "version_mismatch": m.version_mismatch, "defaulted": m.defaulted,
           "stale": m.stale, "event_ts_ms": m.event_ts_ms})
}

fn predict_response_json(r: &PredictResponse) -> Value {
    json!({"model": r.model, "version": r.version,
        "outputs": r.outputs.iter().map(tensor_meta_json).collect::<Vec<_>>(),
        "backend": r.backend, "queue_us": r.queue_us, "compute_us": r.compute_us,
        "prediction_id": r.prediction_id})
}

/// A PredictResponse from its fields, outputs left for the encoder to lay out.
fn predict_response(f: &Value) -> PredictResponse {
    PredictResponse {
        model: s(&f["model"]),
        version: s(&f["version"]),
        outputs: Vec::new(),
        backend: s(&f["backend"]),
        queue_us: u(&f["queue_us"]),
        compute_us: u(&f["compute_us"]),
        prediction_id: f.get("prediction_id").map_or(0, u),
    }
}

fn tensors(v: &Value) -> Vec<Tensor> {
    list(v, |t| {
        let dtype: DType = s(&t["dtype"]).parse().unwrap();
        let values = list(&t["values"], |x| x.as_f64().unwrap());
        Tensor::from_f64_as(s(&t["name"]), dtype, list(&t["shape"], u), &values).unwrap()
    })
}

/// Encodes a valid vector from its header, message fields and tensors.
fn encode(v: &Value) -> Vec<u8> {
    let h = &v["header"];
    let (op, flags, id) = (
        u(&h["opcode"]) as u8,
        u(&h["flags"]) as u16,
        u(&h["request_id"]),
    );
    let op = Opcode::from_u8(op).expect("a known opcode");
    let f = &v["message"]["fields"];
    let mut out = Vec::new();
    let head = |m: &dyn Fn(&mut Vec<u8>) -> Result<(), ProtoError>, out: &mut Vec<u8>| {
        m(out).unwrap();
    };
    match s(&v["message"]["type"]).as_str() {
        "PredictRequest" => {
            assert_eq!(flags, 0, "encode_predict sends no flags");
            let ts = tensors(&v["tensors"]);
            let views: Vec<_> = ts.iter().map(Tensor::view).collect();
            let mut req = PredictRequest {
                model: s(&f["model"]),
                version: f["version"].as_str().map(str::to_owned),
                inputs: Vec::new(),
                outputs: list(&f["outputs"], s),
                deadline_us: u(&f["deadline_us"]),
                routing_key: unhex_str(&f["routing_key"]),
            };
            encode_predict(id, &mut req, &views, &mut out).unwrap();
            assert_eq!(
                Value::from(req.inputs.iter().map(tensor_meta_json).collect::<Vec<_>>()),
                f["inputs"],
                "the layout of the inputs"
            );
        }
        "PredictResponse" => {
            assert_eq!(flags, 0, "encode_predict_response sends no flags");
            let ts = tensors(&v["tensors"]);
            let views: Vec<_> = ts.iter().map(Tensor::view).collect();
            let mut resp = PredictResponse {
                model: s(&f["model"]),
                version: s(&f["version"]),
                outputs: Vec::new(),
                backend: s(&f["backend"]),
                queue_us: u(&f["queue_us"]),
                compute_us: u(&f["compute_us"]),
                prediction_id: f.get("prediction_id").map_or(0, u),
            };
            encode_predict_response(id, &mut resp, &views, &mut out).unwrap();
            assert_eq!(
                Value::from(
                    resp.outputs
                        .iter()
                        .map(tensor_meta_json)
                        .collect::<Vec<_>>()
                ),
                f["outputs"],
                "the layout of the outputs"
            );
        }
        "ErrorResponse" => {
            let m = ErrorResponse {
                code: u(&f["code"]) as u32,
                message: s(&f["message"]),
                retry_after_ms: u(&f["retry_after_ms"]),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "Hello" => {
            let m = Hello {
                versions: list(&f["versions"], |x| u(x) as u32),
                client: s(&f["client"]),
                token: s(&f["token"]),
                shm_ring_bytes: u(&f["shm_ring_bytes"]),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "HelloResponse" => {
            let m = HelloResponse {
                version: u(&f["version"]) as u32,
                max_frame_bytes: u(&f["max_frame_bytes"]),
                max_in_flight: u(&f["max_in_flight"]) as u32,
                server: s(&f["server"]),
                max_meta_bytes: u(&f["max_meta_bytes"]) as u32,
                max_tensors: u(&f["max_tensors"]) as u32,
                max_rank: u(&f["max_rank"]) as u32,
                shm_ring_bytes: u(&f["shm_ring_bytes"]),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "MetadataRequest" => {
            let m = MetadataRequest {
                model: s(&f["model"]),
                version: f["version"].as_str().map(str::to_owned),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "ModelMetadata" => {
            let m = ModelMetadata {
                name: s(&f["name"]),
                version: s(&f["version"]),
                versions: list(&f["versions"], s),
                inputs: list(&f["inputs"], spec),
                outputs: list(&f["outputs"], spec),
                backend: s(&f["backend"]),
                ready: f["ready"].as_bool().unwrap(),
                load_report: s(&f["load_report"]),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "FeedbackRequest" => {
            let m = FeedbackRequest {
                prediction_id: u(&f["prediction_id"]),
                entity: s(&f["entity"]),
                timestamp_ms: u(&f["timestamp_ms"]),
                label: f["label"].as_f64().unwrap(),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "FeedbackResponse" => {
            let m = FeedbackResponse {
                prediction_id: u(&f["prediction_id"]),
                model: s(&f["model"]),
                version: s(&f["version"]),
                arm: s(&f["arm"]),
                predicted: f["predicted"].as_f64().unwrap(),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "PredictByEntityRequest" => {
            let m = PredictByEntityRequest {
                model: s(&f["model"]),
                version: f["version"].as_str().map(str::to_owned),
                keys: hexes(&f["keys"]),
                outputs: list(&f["outputs"], s),
                deadline_us: u(&f["deadline_us"]),
                routing_key: unhex_str(&f["routing_key"]),
                overrides: list(&f["overrides"], |o| FeatureOverride {
                    row: u(&o["row"]) as u32,
                    feature: s(&o["feature"]),
                    value: o["value"].as_f64().unwrap(),
                }),
                schema_version: u(&f["schema_version"]) as u32,
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "PredictByEntityResponse" => {
            assert_eq!(flags, 0, "the response encoder sends no flags");
            let ts = tensors(&v["tensors"]);
            let views: Vec<_> = ts.iter().map(Tensor::view).collect();
            let mut resp = PredictByEntityResponse {
                prediction: Some(predict_response(&f["prediction"])),
                rows: list(&f["rows"], row_report),
                schema_version: u(&f["schema_version"]) as u32,
            };
            encode_predict_by_entity_response(id, &mut resp, &views, &mut out).unwrap();
            let p = resp.prediction.as_ref().unwrap();
            assert_eq!(
                Value::from(p.outputs.iter().map(tensor_meta_json).collect::<Vec<_>>()),
                f["prediction"]["outputs"],
                "the layout of the outputs"
            );
        }
        "PutFeaturesRequest" => {
            let m = PutFeaturesRequest {
                schema_version: u(&f["schema_version"]) as u32,
                rows: list(&f["rows"], |r| FeatureRowMsg {
                    entity: unhex_str(&r["entity"]),
                    event_ts_ms: r["event_ts_ms"].as_i64().unwrap(),
                    values: list(&r["values"], feature_value),
                }),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "PutFeaturesResponse" => {
            let m = PutFeaturesResponse {
                written: u(&f["written"]),
                skipped_older: u(&f["skipped_older"]),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "GetFeaturesRequest" => {
            let m = GetFeaturesRequest {
                entities: hexes(&f["entities"]),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "GetFeaturesResponse" => {
            let m = GetFeaturesResponse {
                rows: list(&f["rows"], |r| StoredFeatures {
                    found: r["found"].as_bool().unwrap(),
                    event_ts_ms: r["event_ts_ms"].as_i64().unwrap(),
                    schema_version: u(&r["schema_version"]) as u32,
                    values: list(&r["values"], feature_value),
                }),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        "HealthRequest" => {
            head(
                &|o| encode_frame_head(op, flags, id, &HealthRequest {}, 0, o),
                &mut out,
            );
        }
        "HealthResponse" => {
            let m = HealthResponse {
                ready: f["ready"].as_bool().unwrap(),
                models: list(&f["models"], status),
            };
            head(&|o| encode_frame_head(op, flags, id, &m, 0, o), &mut out);
        }
        other => panic!("no encoder for message type {other}"),
    }
    out
}

/// Decodes a frame into (header JSON, message type, fields JSON, tensors).
fn decode(frame: &[u8]) -> Result<(Value, &'static str, Value, Vec<Tensor>), ProtoError> {
    let f = decode_frame(frame)?;
    let h = json!({"opcode": f.header.opcode, "flags": f.header.flags,
                   "request_id": f.header.request_id});
    let body = &frame[HEADER_LEN..];
    let opt = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| json!(s));
    Ok(match decode_payload(&f.header, body)? {
        Payload::Predict(view) => {
            let ts = view.inputs().map(|t| t.to_tensor()).collect();
            let r = &view.request;
            let fields = json!({"model": r.model, "version": opt(&r.version),
                "inputs": r.inputs.iter().map(tensor_meta_json).collect::<Vec<_>>(),
                "outputs": r.outputs, "deadline_us": r.deadline_us,
                "routing_key": hex_str(&r.routing_key)});
            (h, "PredictRequest", fields, ts)
        }
        Payload::PredictResponse(view) => {
            let ts = view.outputs().map(|t| t.to_tensor()).collect();
            let r = &view.response;
            let fields = json!({"model": r.model, "version": r.version,
                "outputs": r.outputs.iter().map(tensor_meta_json).collect::<Vec<_>>(),
                "backend": r.backend, "queue_us": r.queue_us, "compute_us": r.compute_us,
                "prediction_id": r.prediction_id});
            (h, "PredictResponse", fields, ts)
        }
        Payload::Error(m) => (
            h,
            "ErrorResponse",
            json!({"code": m.code, "message": m.message, "retry_after_ms": m.retry_after_ms}),
            vec![],
        ),
        Payload::Hello(m) => {
            let f = json!({"versions": m.versions, "client": m.client, "token": m.token,
                           "shm_ring_bytes": m.shm_ring_bytes});
            (h, "Hello", f, vec![])
        }
        Payload::HelloResponse(m) => {
            let f = json!({"version": m.version, "max_frame_bytes": m.max_frame_bytes,
                   "max_in_flight": m.max_in_flight, "server": m.server,
                   "max_meta_bytes": m.max_meta_bytes, "max_tensors": m.max_tensors,
                   "max_rank": m.max_rank, "shm_ring_bytes": m.shm_ring_bytes});
            (h, "HelloResponse", f, vec![])
        }
        Payload::Metadata(m) => (
            h,
            "MetadataRequest",
            json!({"model": m.model, "version": opt(&m.version)}),
            vec![],
        ),
        Payload::MetadataResponse(m) => (
            h,
            "ModelMetadata",
            json!({"name": m.name, "version": m.version, "versions": m.versions,
                   "inputs": m.inputs.iter().map(spec_json).collect::<Vec<_>>(),
                   "outputs": m.outputs.iter().map(spec_json).collect::<Vec<_>>(),
                   "backend": m.backend, "ready": m.ready, "load_report": m.load_report}),
            vec![],
        ),
        Payload::Health(_) => (h, "HealthRequest", json!({}), vec![]),
        Payload::Feedback(m) => (
            h,
            "FeedbackRequest",
            json!({"prediction_id": m.prediction_id, "entity": m.entity,
                   "timestamp_ms": m.timestamp_ms, "label": m.label}),
            vec![],
        ),
        Payload::FeedbackResponse(m) => (
            h,
            "FeedbackResponse",
            json!({"prediction_id": m.prediction_id, "model": m.model, "version": m.version,
                   "arm": m.arm, "predicted": m.predicted}),
            vec![],
        ),
        Payload::HealthResponse(m) => (
            h,
            "HealthResponse",
            json!({"ready": m.ready,
                   "models": m.models.iter().map(status_json).collect::<Vec<_>>()}),
            vec![],
        ),
        Payload::PredictByEntity(m) => (
            h,
            "PredictByEntityRequest",
            json!({"model": m.model, "version": opt(&m.version), "keys": hexes_json(&m.keys),
                   "outputs": m.outputs, "deadline_us": m.deadline_us,
                   "routing_key": hex_str(&m.routing_key),
                   "overrides": m.overrides.iter()
                       .map(|o| json!({"row": o.row, "feature": o.feature, "value": o.value}))
                       .collect::<Vec<_>>(),
                   "schema_version": m.schema_version}),
            vec![],
        ),
        Payload::PredictByEntityResponse(v) => {
            let ts = (0..v.prediction().outputs.len())
                .map(|i| v.output(i).expect("checked when decoding").to_tensor())
                .collect();
            let r = &v.response;
            let fields = json!({"prediction": predict_response_json(v.prediction()),
                "rows": r.rows.iter().map(row_report_json).collect::<Vec<_>>(),
                "schema_version": r.schema_version});
            (h, "PredictByEntityResponse", fields, ts)
        }
        Payload::PutFeatures(m) => (
            h,
            "PutFeaturesRequest",
            json!({"schema_version": m.schema_version,
                   "rows": m.rows.iter().map(|r| json!({"entity": hex_str(&r.entity),
                       "event_ts_ms": r.event_ts_ms, "values": feature_values_json(&r.values)}))
                       .collect::<Vec<_>>()}),
            vec![],
        ),
        Payload::PutFeaturesResponse(m) => (
            h,
            "PutFeaturesResponse",
            json!({"written": m.written, "skipped_older": m.skipped_older}),
            vec![],
        ),
        Payload::GetFeatures(m) => (
            h,
            "GetFeaturesRequest",
            json!({"entities": hexes_json(&m.entities)}),
            vec![],
        ),
        Payload::GetFeaturesResponse(m) => (
            h,
            "GetFeaturesResponse",
            json!({"rows": m.rows.iter().map(|r| json!({"found": r.found,
                       "event_ts_ms": r.event_ts_ms, "schema_version": r.schema_version,
                       "values": feature_values_json(&r.values)}))
                   .collect::<Vec<_>>()}),
            vec![],
        ),
        Payload::Reserved { opcode, .. } => panic!("no vector uses reserved opcode {opcode}"),
        #[allow(unreachable_patterns)]
        _ => panic!("a payload this test does not know: add it"),
    })
}

#[test]
fn valid_vectors_encode_and_decode_byte_for_byte() {
    let count = check_valid(vectors());
    assert!(count >= 15, "only {count} valid vectors");
}

#[test]
fn feature_vectors_encode_decode_and_refuse_like_the_others() {
    let count = check_valid(feature_vectors());
    assert!(count >= 7, "only {count} valid feature vectors");
    let count = check_refused(feature_vectors());
    assert!(count >= 3, "only {count} feature refusal vectors");
}

/// Encodes each valid vector from its fields and decodes its frame back to them; returns
/// how many there were.
fn check_valid(vs: Vec<(PathBuf, Value)>) -> usize {
    let updating = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    let mut count = 0;
    for (path, mut v) in vs {
        if v.get("refused").is_some() {
            continue;
        }
        count += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let want = unhex(&v["frame"]);
        let got = encode(&v);
        if got != want {
            if updating {
                v["frame"] = json!(hexdump(&got));
                let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
                std::fs::write(&path, text).unwrap();
            } else {
                failures.push(format!(
                    "{name}: the encoder says\n{}",
                    hexdump(&got).join("\n")
                ));
            }
            continue;
        }
        match decode(&want) {
            Ok((h, ty, fields, ts)) => {
                assert_eq!(h, v["header"], "{name}: header");
                assert_eq!(ty, v["message"]["type"], "{name}: message type");
                assert_eq!(fields, v["message"]["fields"], "{name}: fields");
                let want_ts = v.get("tensors").map(tensors).unwrap_or_default();
                assert_eq!(ts, want_ts, "{name}: tensors");
            }
            Err(e) => failures.push(format!("{name}: does not decode: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    count
}

#[test]
fn refusal_vectors_are_refused_with_their_code() {
    let count = check_refused(vectors());
    assert!(count >= 10, "only {count} refusal vectors");
}

/// Decodes each refusal vector, which must fail with its code; returns how many there were.
fn check_refused(vs: Vec<(PathBuf, Value)>) -> usize {
    let mut count = 0;
    for (path, v) in vs {
        let Some(r) = v.get("refused") else { continue };
        count += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let err = match decode(&unhex(&v["frame"])) {
            Ok(_) => panic!("{name}: decodes, but must be refused with {}", r["name"]),
            Err(e) => e,
        };
        assert_eq!(
            u64::from(err.kind().as_u32()),
            u(&r["code"]),
            "{name}: refused as {err}"
        );
        assert_eq!(err.kind().name(), r["name"], "{name}");
        assert_eq!(
            err.closes_connection(),
            r["closes"].as_bool().unwrap(),
            "{name}: closes the connection? ({err})"
        );
    }
    count
}

/// The blocks after `<!-- expect:NAME -->` in docs/protocol.md, by name.
fn doc_blocks() -> Vec<(String, Vec<String>)> {
    doc_blocks_tagged("<!-- expect:")
}

/// The blocks after `{tag}NAME -->` in docs/protocol.md, by name.
fn doc_blocks_tagged(tag: &str) -> Vec<(String, Vec<String>)> {
    let doc = std::fs::read_to_string(repo().join("docs/protocol.md")).unwrap();
    let mut out = Vec::new();
    let mut rest = doc.as_str();
    while let Some(at) = rest.find(tag) {
        let after = &rest[at + tag.len()..];
        let name = after[..after.find(" -->").unwrap()].to_owned();
        let open = after.find("```text\n").unwrap() + "```text\n".len();
        let close = open + after[open..].find("```").unwrap();
        let lines = after[open..close].lines().map(str::to_owned).collect();
        out.push((name, lines));
        rest = &after[close..];
    }
    out
}

#[test]
fn every_worked_example_of_the_spec_is_a_vector() {
    examples_are_vectors(doc_blocks(), vectors(), "expect");
}

#[test]
fn every_feature_example_of_the_spec_is_a_feature_vector() {
    let blocks = doc_blocks_tagged("<!-- expect-features:");
    assert!(blocks.len() >= 7, "{} feature examples", blocks.len());
    examples_are_vectors(blocks, feature_vectors(), "expect-features");
}

/// Each doc block is the frame of the vector naming it in `"doc"`, and each such vector's
/// block exists.
fn examples_are_vectors(blocks: Vec<(String, Vec<String>)>, vs: Vec<(PathBuf, Value)>, tag: &str) {
    assert!(
        blocks.len() >= 3,
        "docs/protocol.md has {} examples",
        blocks.len()
    );
    for (name, lines) in &blocks {
        let v = vs
            .iter()
            .map(|(_, v)| v)
            .find(|v| v.get("doc").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no vector in proto/tests/vectors has \"doc\": {name:?}"));
        assert_eq!(&Value::from(lines.clone()), &v["frame"], "{name}");
    }
    for (path, v) in &vs {
        if let Some(doc) = v.get("doc").and_then(Value::as_str) {
            assert!(
                blocks.iter().any(|(n, _)| n == doc),
                "{}: docs/protocol.md has no <!-- {tag}:{doc} -->",
                path.display()
            );
        }
    }
}

/// The §7.2 table of docs/protocol.md lists exactly this codec's codes, names and retry
/// flags (python/tests/test_vectors.py checks the Python exceptions against the same table).
#[test]
fn the_spec_error_table_is_this_codecs() {
    let doc = std::fs::read_to_string(repo().join("docs/protocol.md")).unwrap();
    let start = doc.find("### 7.2").expect("§7.2 in docs/protocol.md");
    let mut rows = Vec::new();
    for line in doc[start..].lines().skip(1) {
        if line.starts_with("###") {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 6 {
            if let Ok(code) = cells[1].parse::<u32>() {
                let retry = cells[cells.len() - 2].starts_with("yes");
                rows.push((code, cells[2].trim_matches('`').to_owned(), retry));
            }
        }
    }
    let ours: Vec<(u32, String, bool)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_u32(), c.name().to_owned(), c.is_retryable()))
        .collect();
    assert_eq!(rows, ours);
}
