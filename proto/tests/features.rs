//! The feature-cache messages (PREDICT_BY_ENTITY, PUT_FEATURES, GET_FEATURES): round trips
//! through `decode_payload`, refusals, and the worked examples in docs/protocol.md §10
//! (`<!-- expect-features:NAME -->` blocks; `UPDATE_EXPECT=1` rewrites them).

use std::path::Path;

use edgeinfer_proto::*;

fn example_predict_by_entity() -> Vec<u8> {
    let req = PredictByEntityRequest {
        model: "churn".into(),
        keys: vec![b"c-1".to_vec(), b"c-2".to_vec()],
        overrides: vec![FeatureOverride {
            row: 1,
            feature: "age".into(),
            value: 41.0,
        }],
        schema_version: 3,
        ..Default::default()
    };
    let mut out = Vec::new();
    encode_message(Opcode::PredictByEntity, 1, &req, &mut out).unwrap();
    out
}

fn example_predict_by_entity_response() -> Vec<u8> {
    let p = Tensor::from_f32("probabilities", vec![2, 2], &[0.25, 0.75, 0.5, 0.5]).unwrap();
    let mut resp = PredictByEntityResponse {
        prediction: Some(PredictResponse {
            model: "churn".into(),
            version: "1".into(),
            backend: "tract".into(),
            compute_us: 4,
            ..Default::default()
        }),
        rows: vec![
            EntityRowReport {
                found: true,
                stale: vec![1],
                defaulted: vec![1],
                event_ts_ms: 1_764_579_600_000,
                ..Default::default()
            },
            EntityRowReport {
                defaulted: vec![0, 1],
                ..Default::default()
            },
        ],
        schema_version: 3,
    };
    let mut out = Vec::new();
    encode_predict_by_entity_response(1, &mut resp, &[p.view()], &mut out).unwrap();
    out
}

fn example_put_features() -> Vec<u8> {
    let req = PutFeaturesRequest {
        schema_version: 3,
        rows: vec![FeatureRowMsg {
            entity: b"c-1".to_vec(),
            event_ts_ms: 1_764_579_600_000,
            values: vec![
                FeatureValue {
                    name: "age".into(),
                    value: 41.0,
                },
                FeatureValue {
                    name: "score".into(),
                    value: 0.5,
                },
            ],
        }],
    };
    let mut out = Vec::new();
    encode_message(Opcode::PutFeatures, 2, &req, &mut out).unwrap();
    out
}

fn example_put_features_response() -> Vec<u8> {
    let mut out = Vec::new();
    let m = PutFeaturesResponse {
        written: 1,
        skipped_older: 0,
    };
    encode_message(Opcode::PutFeaturesResponse, 2, &m, &mut out).unwrap();
    out
}

fn example_get_features() -> Vec<u8> {
    let mut out = Vec::new();
    let m = GetFeaturesRequest {
        entities: vec![b"c-1".to_vec()],
    };
    encode_message(Opcode::GetFeatures, 3, &m, &mut out).unwrap();
    out
}

fn example_get_features_response() -> Vec<u8> {
    let mut out = Vec::new();
    let m = GetFeaturesResponse {
        rows: vec![StoredFeatures {
            found: true,
            event_ts_ms: 1_764_579_600_000,
            schema_version: 3,
            values: vec![FeatureValue {
                name: "age".into(),
                value: 41.0,
            }],
        }],
    };
    encode_message(Opcode::GetFeaturesResponse, 3, &m, &mut out).unwrap();
    out
}

fn example_map_full() -> Vec<u8> {
    let mut out = Vec::new();
    encode_error(2, ErrorCode::FeatureStore, "map full", 0, &mut out).unwrap();
    out
}

fn payload(frame: &[u8]) -> Payload<'_> {
    let h = Header::decode(frame).unwrap();
    decode_payload(&h, &frame[HEADER_LEN..]).unwrap()
}

#[test]
fn every_message_round_trips_through_decode_payload() {
    let f = example_predict_by_entity();
    match payload(&f) {
        Payload::PredictByEntity(m) => {
            assert_eq!(m.keys, [b"c-1".to_vec(), b"c-2".to_vec()]);
            assert_eq!(m.overrides[0].feature, "age");
            assert_eq!(m.schema_version, 3);
        }
        other => panic!("{other:?}"),
    }
    let f = example_predict_by_entity_response();
    match payload(&f) {
        Payload::PredictByEntityResponse(v) => {
            assert_eq!(v.prediction().model, "churn");
            assert_eq!(v.response.rows[0].stale, [1]);
            assert_eq!(v.response.rows[1].defaulted, [0, 1]);
            let t = v.output(0).unwrap();
            assert_eq!((t.name, t.shape), ("probabilities", &[2u64, 2][..]));
            assert_eq!(t.data.len(), 16);
            assert_eq!(&t.data[4..8], &0.75f32.to_le_bytes());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(payload(&example_put_features()), Payload::PutFeatures(m) if m.rows[0].values.len() == 2)
    );
    assert!(
        matches!(payload(&example_put_features_response()), Payload::PutFeaturesResponse(m) if m.written == 1)
    );
    assert!(
        matches!(payload(&example_get_features()), Payload::GetFeatures(m) if m.entities.len() == 1)
    );
    assert!(
        matches!(payload(&example_get_features_response()), Payload::GetFeaturesResponse(m) if m.rows[0].found)
    );
    match payload(&example_map_full()) {
        Payload::Error(e) => assert_eq!(e.error_code(), Some(ErrorCode::FeatureStore)),
        other => panic!("{other:?}"),
    }
    for op in [
        Opcode::PredictByEntity,
        Opcode::PutFeatures,
        Opcode::GetFeatures,
    ] {
        assert!(op.is_request() && !op.is_reserved());
        assert_eq!(op.response().unwrap().as_u8(), op.as_u8() | 0x80);
    }
    assert_eq!(ErrorCode::from_u32(15), Some(ErrorCode::FeatureStore));
    assert!(!ErrorCode::FeatureStore.is_retryable());
}

#[test]
fn bad_frames_are_refused_with_their_codes() {
    // Tensor data on a request that takes none.
    let mut f = Vec::new();
    encode_frame_head(
        Opcode::PredictByEntity,
        0,
        1,
        &PredictByEntityRequest::default(),
        4,
        &mut f,
    )
    .unwrap();
    f.extend_from_slice(&[0; 4]);
    let h = Header::decode(&f).unwrap();
    let e = decode_payload(&h, &f[HEADER_LEN..]).unwrap_err();
    assert_eq!(e.kind(), ErrorCode::BadFrame);
    // A response whose outputs do not match its data section.
    let mut f = example_predict_by_entity_response();
    f.truncate(f.len() - 4);
    let mut h = Header::decode(&f).unwrap();
    h.data_len -= 4;
    f[..HEADER_LEN].copy_from_slice(&h.to_bytes());
    let e = decode_predict_by_entity_response(&h, &f[HEADER_LEN..], &Limits::DEFAULT).unwrap_err();
    assert_eq!(e.kind(), ErrorCode::BadFrame, "{e}");
    // Metadata that does not decode, and the wrong opcode.
    let mut f = example_get_features();
    let last = f.len() - 1;
    f[last] = 0xff;
    f[HEADER_LEN] = 0x0a;
    f[HEADER_LEN + 1] = 0x7f;
    let h = Header::decode(&f).unwrap();
    assert_eq!(
        decode_payload(&h, &f[HEADER_LEN..]).unwrap_err().kind(),
        ErrorCode::BadFrame
    );
    let f = example_get_features_response();
    let h = Header::decode(&f).unwrap();
    assert!(decode_predict_by_entity_response(&h, &f[HEADER_LEN..], &Limits::DEFAULT).is_err());
}

/// `offset: hex bytes` lines of 16 bytes, grouped by 4 (the doc's format).
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

#[test]
fn protocol_doc_feature_examples_match_the_encoder() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    let mut doc = std::fs::read_to_string(&path).unwrap();
    let before = doc.clone();
    let updating = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut errors = Vec::new();
    for (name, frame) in [
        ("predict-by-entity-frame", example_predict_by_entity()),
        (
            "predict-by-entity-response-frame",
            example_predict_by_entity_response(),
        ),
        ("put-features-frame", example_put_features()),
        (
            "put-features-response-frame",
            example_put_features_response(),
        ),
        ("get-features-frame", example_get_features()),
        (
            "get-features-response-frame",
            example_get_features_response(),
        ),
        ("feature-store-error-frame", example_map_full()),
    ] {
        let want = hexdump(&frame);
        let marker = format!("<!-- expect-features:{name} -->");
        let Some(at) = doc.find(&marker) else {
            errors.push(format!("docs/protocol.md lacks {marker}"));
            continue;
        };
        let open = at + doc[at..].find("```text\n").unwrap() + "```text\n".len();
        let close = open + doc[open..].find("```").unwrap();
        if doc[open..close] != want {
            if updating {
                doc.replace_range(open..close, &want);
            } else {
                errors.push(format!(
                    "{name} is stale (UPDATE_EXPECT=1 refreshes it):\n{want}"
                ));
            }
        }
    }
    if doc != before {
        std::fs::write(&path, doc).unwrap();
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
