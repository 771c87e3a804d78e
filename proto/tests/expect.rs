//! Expect-style checks of bytes kept outside the crate: the worked examples in
//! docs/protocol.md and the fuzz seed corpus. `UPDATE_EXPECT=1 cargo test -p edgeinfer-proto
//! --test expect` rewrites them from the encoder.

use std::path::{Path, PathBuf};

use edgeinfer_proto::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_EXPECT").is_some()
}

/// The PREDICT of the worked example: model "churn", one f32 input of shape [1, 4].
fn example_predict() -> Vec<u8> {
    let x = Tensor::from_f32("features", vec![1, 4], &[0.5, 1.0, 2.0, -1.0]).unwrap();
    let mut req = PredictRequest {
        model: "churn".into(),
        deadline_us: 2000,
        ..Default::default()
    };
    let mut out = Vec::new();
    encode_predict(1, &mut req, &[x.view()], &mut out).unwrap();
    out
}

fn example_predict_response() -> Vec<u8> {
    let y = Tensor::from_i64("label", vec![1], &[1]).unwrap();
    let p = Tensor::from_f32("probabilities", vec![1, 2], &[0.25, 0.75]).unwrap();
    let mut resp = PredictResponse {
        model: "churn".into(),
        version: "1".into(),
        backend: "ort-cpu".into(),
        queue_us: 3,
        compute_us: 6,
        ..Default::default()
    };
    let mut out = Vec::new();
    encode_predict_response(1, &mut resp, &[y.view(), p.view()], &mut out).unwrap();
    out
}

fn example_error() -> Vec<u8> {
    let mut out = Vec::new();
    encode_error(
        1,
        ErrorCode::UnknownModel,
        "no model \"chrun\"",
        0,
        &mut out,
    )
    .unwrap();
    out
}

/// HELLO asking for the shared-memory transport with rings of 1 MiB (docs/protocol.md §11).
fn example_hello_shm() -> Vec<u8> {
    let mut out = Vec::new();
    let msg = Hello {
        versions: vec![1],
        client: "cli".into(),
        shm_ring_bytes: 1 << 20,
        ..Default::default()
    };
    encode_message(Opcode::Hello, 1, &msg, &mut out).unwrap();
    out
}

/// Its grant: the server's limits and the ring size (the fds travel beside these bytes).
fn example_hello_shm_response() -> Vec<u8> {
    let mut out = Vec::new();
    let msg = HelloResponse {
        version: 1,
        max_frame_bytes: 64 << 20,
        max_in_flight: 128,
        server: "edgeinferd".into(),
        shm_ring_bytes: 1 << 20,
        ..Default::default()
    };
    encode_message(Opcode::HelloResponse, 1, &msg, &mut out).unwrap();
    out
}

/// HELLO from a client of a server configured with a token.
fn example_hello_with_token() -> Vec<u8> {
    let mut out = Vec::new();
    let msg = Hello {
        versions: vec![1],
        client: "cli".into(),
        token: "0123456789abcdef".into(),
        shm_ring_bytes: 0,
    };
    encode_message(Opcode::Hello, 1, &msg, &mut out).unwrap();
    out
}

/// The server's refusal of a wrong (or missing) token; the connection then closes.
fn example_unauthenticated() -> Vec<u8> {
    let mut out = Vec::new();
    encode_error(1, ErrorCode::Unauthenticated, "wrong token", 0, &mut out).unwrap();
    out
}

/// FEEDBACK: the true label 1 for prediction 300.
fn example_feedback() -> Vec<u8> {
    let mut out = Vec::new();
    let msg = FeedbackRequest {
        prediction_id: 300,
        label: 1.0,
        ..Default::default()
    };
    encode_message(Opcode::Feedback, 7, &msg, &mut out).unwrap();
    out
}

/// Its answer: what the label was joined to.
fn example_feedback_response() -> Vec<u8> {
    let mut out = Vec::new();
    let msg = FeedbackResponse {
        prediction_id: 300,
        model: "churn".into(),
        version: "1".into(),
        arm: "default".into(),
        predicted: 1.0,
    };
    encode_message(Opcode::FeedbackResponse, 7, &msg, &mut out).unwrap();
    out
}

/// FEEDBACK by entity: the true label 1 for `user-42`'s latest prediction at or before a time.
fn example_feedback_by_entity() -> Vec<u8> {
    let mut out = Vec::new();
    let msg = FeedbackRequest {
        entity: "user-42".into(),
        timestamp_ms: 1_764_579_600_000,
        label: 1.0,
        ..Default::default()
    };
    encode_message(Opcode::Feedback, 8, &msg, &mut out).unwrap();
    out
}

/// Its answer: row 1 of a PREDICT_BY_ENTITY that the candidate arm served.
fn example_feedback_by_entity_response() -> Vec<u8> {
    let mut out = Vec::new();
    let msg = FeedbackResponse {
        prediction_id: 301,
        model: "churn".into(),
        version: "2".into(),
        arm: "candidate".into(),
        predicted: 0.0,
    };
    encode_message(Opcode::FeedbackResponse, 8, &msg, &mut out).unwrap();
    out
}

/// FEEDBACK for a prediction the log does not hold.
fn example_unknown_request_id() -> Vec<u8> {
    let mut out = Vec::new();
    encode_error(
        7,
        ErrorCode::UnknownRequestId,
        "no prediction 300",
        0,
        &mut out,
    )
    .unwrap();
    out
}

/// `offset: hex bytes` lines of 16 bytes, grouped by 4.
fn hexdump(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        s.push_str(&format!("{:04x}:", i * 16));
        for group in line.chunks(4) {
            s.push(' ');
            for b in group {
                s.push_str(&format!("{b:02x}"));
            }
        }
        s.push('\n');
    }
    s
}

/// Checks (or rewrites) the fenced block that follows `<!-- expect:NAME -->` in the doc.
fn check_doc_block(doc: &mut String, name: &str, want: &str) -> Result<(), String> {
    let marker = format!("<!-- expect:{name} -->");
    let at = doc
        .find(&marker)
        .ok_or(format!("docs/protocol.md lacks {marker}"))?;
    let open = at
        + doc[at..]
            .find("```text\n")
            .ok_or("no ```text block after marker")?
        + "```text\n".len();
    let close = open + doc[open..].find("```").ok_or("unclosed block")?;
    if &doc[open..close] == want {
        return Ok(());
    }
    if updating() {
        doc.replace_range(open..close, want);
        return Ok(());
    }
    Err(format!(
        "{name} in docs/protocol.md is stale (UPDATE_EXPECT=1 refreshes it); encoder says:\n{want}"
    ))
}

#[test]
fn protocol_doc_examples_match_the_encoder() {
    let path = repo().join("docs/protocol.md");
    let mut doc = std::fs::read_to_string(&path).expect("docs/protocol.md");
    let before = doc.clone();
    let mut errors = Vec::new();
    for (name, frame) in [
        ("predict-frame", example_predict()),
        ("predict-response-frame", example_predict_response()),
        ("error-frame", example_error()),
        ("hello-token-frame", example_hello_with_token()),
        ("hello-shm-frame", example_hello_shm()),
        ("hello-shm-response-frame", example_hello_shm_response()),
        ("unauthenticated-frame", example_unauthenticated()),
        ("feedback-frame", example_feedback()),
        ("feedback-response-frame", example_feedback_response()),
        ("unknown-request-id-frame", example_unknown_request_id()),
        ("feedback-entity-frame", example_feedback_by_entity()),
        (
            "feedback-entity-response-frame",
            example_feedback_by_entity_response(),
        ),
    ] {
        // The examples must themselves be valid frames.
        let f = decode_frame(&frame).unwrap();
        decode_payload(&f.header, &frame[HEADER_LEN..]).unwrap();
        if let Err(e) = check_doc_block(&mut doc, name, &hexdump(&frame)) {
            errors.push(e);
        }
    }
    if doc != before {
        std::fs::write(&path, doc).unwrap();
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// One valid frame per opcode and a few shapes of PREDICT: the fuzzer's starting points.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = vec![
        ("predict_example", example_predict()),
        ("predict_response_example", example_predict_response()),
        ("error_example", example_error()),
    ];
    let mut out = Vec::new();
    let mut msg = |name, m: &dyn Fn(&mut Vec<u8>)| {
        m(&mut out);
        v.push((name, out.clone()));
    };
    msg("hello", &|o| {
        encode_message(
            Opcode::Hello,
            1,
            &Hello {
                versions: vec![1],
                client: "seed".into(),
                ..Default::default()
            },
            o,
        )
        .unwrap()
    });
    msg("hello_response", &|o| {
        let m = HelloResponse {
            version: 1,
            max_frame_bytes: Limits::DEFAULT.max_frame_bytes,
            max_in_flight: 128,
            server: "edgeinferd".into(),
            max_meta_bytes: 65536,
            max_tensors: 64,
            max_rank: 8,
            shm_ring_bytes: 0,
        };
        encode_message(Opcode::HelloResponse, 1, &m, o).unwrap()
    });
    msg("metadata", &|o| {
        let m = MetadataRequest {
            model: "churn".into(),
            version: Some("2".into()),
        };
        encode_message(Opcode::Metadata, 2, &m, o).unwrap()
    });
    msg("metadata_response", &|o| {
        let spec = TensorSpecMsg {
            name: "features".into(),
            dtype: 1,
            shape: vec![-1, 20],
        };
        let m = ModelMetadata {
            name: "churn".into(),
            version: "1".into(),
            versions: vec!["1".into()],
            inputs: vec![spec.clone()],
            outputs: vec![spec],
            backend: "tract".into(),
            ready: true,
            load_report: "{}".into(),
        };
        encode_message(Opcode::MetadataResponse, 2, &m, o).unwrap()
    });
    msg("health", &|o| {
        encode_message(Opcode::Health, 3, &HealthRequest {}, o).unwrap()
    });
    msg("health_response", &|o| {
        let s = ModelStatus {
            name: "churn".into(),
            version: "1".into(),
            backend: "ort-cpu".into(),
            ready: true,
            default: true,
            requests: 10,
            errors: 1,
        };
        encode_message(
            Opcode::HealthResponse,
            3,
            &HealthResponse {
                ready: true,
                models: vec![s],
            },
            o,
        )
        .unwrap()
    });
    msg("predict_mixed", &|o| {
        let ts = [
            Tensor::from_f64("a", vec![2, 3], &[1.0; 6]).unwrap(),
            Tensor::from_bool("b", vec![3], &[true, false, true]).unwrap(),
            Tensor::from_i32("c", vec![], &[7]).unwrap(),
            Tensor::from_u8("d", vec![0, 4], &[]).unwrap(),
        ];
        let views: Vec<_> = ts.iter().map(Tensor::view).collect();
        let mut req = PredictRequest {
            model: "m".into(),
            version: Some("3".into()),
            outputs: vec!["y".into()],
            deadline_us: 500,
            routing_key: b"user-17".to_vec(),
            ..Default::default()
        };
        encode_predict(4, &mut req, &views, o).unwrap()
    });
    msg("predict_by_entity_reserved", &|o| {
        encode_message(Opcode::PredictByEntity, 5, &HealthRequest {}, o).unwrap()
    });
    v
}

#[test]
fn fuzz_seed_corpus_is_current() {
    let dir = repo().join("fuzz/corpus/decode_frame");
    if updating() {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut stale = Vec::new();
    for (name, frame) in seeds() {
        let f = decode_frame(&frame).unwrap();
        decode_payload(&f.header, &frame[HEADER_LEN..]).unwrap();
        let path = dir.join(format!("{name}.bin"));
        if std::fs::read(&path).ok().as_deref() == Some(&frame[..]) {
            continue;
        }
        if updating() {
            std::fs::write(&path, &frame).unwrap();
        } else {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale or missing seeds (UPDATE_EXPECT=1 writes them): {stale:?}"
    );
}
