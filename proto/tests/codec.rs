//! Codec tests: round trips of headers, messages and whole frames; every refusal's kind.

use edgeinfer_proto::*;
use proptest::prelude::*;

// === strategies ===

fn dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(DType::ALL.to_vec())
}

/// Tensors with unique names and matching data, owned.
fn tensors(max: usize) -> impl Strategy<Value = Vec<Tensor>> {
    prop::collection::vec(
        (dtype(), prop::collection::vec(0u64..5, 0..4), "[a-z]{1,8}"),
        0..max,
    )
    .prop_flat_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (dt, shape, name))| {
                let n = byte_len(dt, &shape).unwrap() as usize;
                prop::collection::vec(any::<u8>(), n).prop_map(move |data| Tensor {
                    name: format!("{name}{i}"),
                    dtype: dt,
                    shape: shape.clone(),
                    data,
                })
            })
            .collect::<Vec<_>>()
    })
}

fn opt_string() -> impl Strategy<Value = Option<String>> {
    prop::option::of("\\PC{0,12}")
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        prop::collection::vec(any::<u32>(), 0..4),
        "\\PC{0,20}",
        "\\PC{0,20}",
    )
        .prop_map(|(versions, client, token)| Hello {
            versions,
            client,
            token,
            shm_ring_bytes: 0,
        })
}

fn hello_response() -> impl Strategy<Value = HelloResponse> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        "\\PC{0,20}",
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                version,
                max_frame_bytes,
                max_in_flight,
                server,
                max_meta_bytes,
                max_tensors,
                max_rank,
            )| HelloResponse {
                version,
                max_frame_bytes,
                max_in_flight,
                server,
                max_meta_bytes,
                max_tensors,
                max_rank,
                shm_ring_bytes: 0,
            },
        )
}

fn spec() -> impl Strategy<Value = TensorSpecMsg> {
    (
        "\\PC{0,10}",
        any::<u32>(),
        prop::collection::vec(-1i64..1000, 0..4),
    )
        .prop_map(|(name, dtype, shape)| TensorSpecMsg { name, dtype, shape })
}

fn model_metadata() -> impl Strategy<Value = ModelMetadata> {
    (
        "\\PC{0,10}",
        "\\PC{0,10}",
        prop::collection::vec("\\PC{0,6}", 0..3),
        prop::collection::vec(spec(), 0..3),
        prop::collection::vec(spec(), 0..3),
        "\\PC{0,10}",
        any::<bool>(),
        "\\PC{0,30}",
    )
        .prop_map(
            |(name, version, versions, inputs, outputs, backend, ready, load_report)| {
                ModelMetadata {
                    name,
                    version,
                    versions,
                    inputs,
                    outputs,
                    backend,
                    ready,
                    load_report,
                }
            },
        )
}

fn health_response() -> impl Strategy<Value = HealthResponse> {
    let status = (
        "\\PC{0,10}",
        "\\PC{0,6}",
        "\\PC{0,8}",
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(name, version, backend, ready, default, requests, errors)| ModelStatus {
                name,
                version,
                backend,
                ready,
                default,
                requests,
                errors,
            },
        );
    (any::<bool>(), prop::collection::vec(status, 0..4))
        .prop_map(|(ready, models)| HealthResponse { ready, models })
}

fn error_response() -> impl Strategy<Value = ErrorResponse> {
    (any::<u32>(), "\\PC{0,40}", any::<u64>()).prop_map(|(code, message, retry_after_ms)| {
        ErrorResponse {
            code,
            message,
            retry_after_ms,
        }
    })
}

fn predict_request() -> impl Strategy<Value = PredictRequest> {
    (
        "\\PC{0,16}",
        opt_string(),
        prop::collection::vec("[a-z]{1,6}", 0..4),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(
            |(model, version, outputs, deadline_us, routing_key)| PredictRequest {
                model,
                version,
                inputs: Vec::new(),
                outputs,
                deadline_us,
                routing_key,
            },
        )
}

fn views(ts: &[Tensor]) -> Vec<TensorView<'_>> {
    ts.iter().map(Tensor::view).collect()
}

/// Decodes a whole frame and its payload the way a receiver would.
fn payload(frame: &[u8]) -> Result<Payload<'_>, ProtoError> {
    let f = decode_frame(frame)?;
    decode_payload(&f.header, &frame[HEADER_LEN..])
}

fn roundtrip<M: prost::Message + Default + PartialEq + std::fmt::Debug>(
    op: Opcode,
    id: u64,
    msg: &M,
    check: impl Fn(Payload<'_>) -> Option<M>,
) {
    let mut out = Vec::new();
    encode_message(op, id, msg, &mut out).unwrap();
    let h = Header::decode(&out).unwrap();
    assert_eq!(h.op().unwrap(), op);
    assert_eq!(h.request_id, id);
    assert_eq!(h.data_len, 0);
    assert_eq!(h.frame_len(), out.len() as u64);
    let got = check(payload(&out).unwrap()).expect("payload of the wrong kind");
    assert_eq!(&got, msg);
}

// === round trips ===

proptest! {
    #[test]
    fn header_roundtrip(
        opcode: u8,
        eos: bool,
        request_id: u64,
        meta_len in 0u32..=Limits::DEFAULT.max_meta_bytes,
        data_len in 0u64..(Limits::DEFAULT.max_frame_bytes - 70_000),
    ) {
        let h = Header { version: VERSION, opcode, flags: if eos { FLAG_END_OF_STREAM } else { 0 }, request_id, meta_len, data_len };
        let bytes = h.to_bytes();
        prop_assert_eq!(Header::decode(&bytes), Ok(h));
        let (off, total) = frame_layout(meta_len, data_len);
        prop_assert_eq!(total, h.frame_len());
        prop_assert!(off >= HEADER_LEN as u64 + u64::from(meta_len));
        if data_len > 0 {
            prop_assert_eq!(off % ALIGN, 0);
            prop_assert!(off - (HEADER_LEN as u64 + u64::from(meta_len)) < ALIGN);
        } else {
            prop_assert_eq!(off, HEADER_LEN as u64 + u64::from(meta_len));
        }
    }

    #[test]
    fn any_32_bytes_decode_or_refuse_and_reencode_exactly(bytes in prop::array::uniform32(any::<u8>())) {
        if let Ok(h) = Header::decode(&bytes) {
            prop_assert_eq!(h.to_bytes(), bytes);
        }
    }

    #[test]
    fn hello_roundtrip(id: u64, m in hello()) {
        roundtrip(Opcode::Hello, id, &m, |p| match p { Payload::Hello(m) => Some(m), _ => None });
    }

    #[test]
    fn hello_response_roundtrip(id: u64, m in hello_response()) {
        roundtrip(Opcode::HelloResponse, id, &m, |p| match p { Payload::HelloResponse(m) => Some(m), _ => None });
    }

    #[test]
    fn metadata_roundtrip(id: u64, model in "\\PC{0,10}", version in opt_string(), md in model_metadata()) {
        let req = MetadataRequest { model, version };
        roundtrip(Opcode::Metadata, id, &req, |p| match p { Payload::Metadata(m) => Some(m), _ => None });
        roundtrip(Opcode::MetadataResponse, id, &md, |p| match p { Payload::MetadataResponse(m) => Some(m), _ => None });
    }

    #[test]
    fn health_roundtrip(id: u64, m in health_response()) {
        roundtrip(Opcode::Health, id, &HealthRequest {}, |p| match p { Payload::Health(m) => Some(m), _ => None });
        roundtrip(Opcode::HealthResponse, id, &m, |p| match p { Payload::HealthResponse(m) => Some(m), _ => None });
    }

    #[test]
    fn feedback_roundtrip(id: u64, pid: u64, entity in "\\PC{0,10}", ts: u64, label: f64, predicted: f64) {
        let req = FeedbackRequest { prediction_id: pid, entity: entity.clone(), timestamp_ms: ts, label };
        let resp = FeedbackResponse { prediction_id: pid, model: entity, version: "2".into(), arm: "b".into(), predicted };
        // NaN never equals itself: compare the bits through a re-encode instead.
        if !label.is_nan() && !predicted.is_nan() {
            roundtrip(Opcode::Feedback, id, &req, |p| match p { Payload::Feedback(m) => Some(m), _ => None });
            roundtrip(Opcode::FeedbackResponse, id, &resp, |p| match p { Payload::FeedbackResponse(m) => Some(m), _ => None });
        }
    }

    #[test]
    fn error_roundtrip(id: u64, m in error_response()) {
        roundtrip(Opcode::Error, id, &m, |p| match p { Payload::Error(m) => Some(m), _ => None });
    }

    #[test]
    fn predict_frame_roundtrip(id: u64, mut req in predict_request(), ts in tensors(6)) {
        let mut out = Vec::new();
        encode_predict(id, &mut req, &views(&ts), &mut out).unwrap();
        let f = decode_frame(&out).unwrap();
        prop_assert_eq!(f.header.request_id, id);
        prop_assert_eq!(f.header.frame_len(), out.len() as u64);
        if f.header.data_len > 0 {
            prop_assert_eq!(f.header.data_offset() % ALIGN, 0);
        }
        let v = decode_predict(&f.header, &out[HEADER_LEN..]).unwrap();
        prop_assert_eq!(&v.request, &req);
        let got: Vec<Tensor> = v.inputs().map(|t| t.to_tensor()).collect();
        prop_assert_eq!(&got, &ts);
        for (i, m) in v.request.inputs.iter().enumerate() {
            prop_assert_eq!(m.offset % ALIGN, 0);
            prop_assert_eq!(v.input_data(i).unwrap(), &ts[i].data[..]);
        }
    }

    #[test]
    fn predict_response_roundtrip_head_plus_vectored_data(id: u64, ts in tensors(6), queue_us: u64, compute_us: u64) {
        let mut resp = PredictResponse { model: "m".into(), version: "3".into(), outputs: vec![], backend: "ort-cpu".into(), queue_us, compute_us, prediction_id: queue_us ^ compute_us };
        let mut whole = Vec::new();
        encode_predict_response(id, &mut resp, &views(&ts), &mut whole).unwrap();
        // What a server's writev produces: head, then each output and its padding but the last's.
        let mut head = Vec::new();
        let data_len = encode_predict_response_head(id, &mut resp, &views(&ts), &mut head).unwrap();
        let mut pieced = head.clone();
        for (i, t) in ts.iter().enumerate() {
            pieced.extend_from_slice(&t.data);
            if i + 1 < ts.len() { pieced.extend_from_slice(padding(t.data.len() as u64)); }
        }
        prop_assert_eq!(&pieced, &whole);
        prop_assert_eq!(head.len() as u64 + data_len, whole.len() as u64);
        match payload(&whole).unwrap() {
            Payload::PredictResponse(v) => {
                prop_assert_eq!(&v.response, &resp);
                let got: Vec<Tensor> = v.outputs().map(|t| t.to_tensor()).collect();
                prop_assert_eq!(&got, &ts);
            }
            other => prop_assert!(false, "wrong payload {:?}", other),
        }
    }

    // === never panics ===

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_frame(&bytes);
        let _ = peek_request_id(&bytes);
        // A valid header in front of arbitrary bodies exercises every body decoder.
        for op in Opcode::ALL {
            let h = Header::new(op, 7, bytes.len().min(40) as u32, bytes.len().saturating_sub(40.min(bytes.len())) as u64);
            let _ = decode_payload(&h, &bytes);
            let _ = decode_predict(&h, &bytes);
            let _ = decode_predict_response(&h, &bytes);
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(ts in tensors(4), pos: prop::sample::Index, byte: u8, cut: prop::sample::Index) {
        let mut req = PredictRequest { model: "churn".into(), ..Default::default() };
        let mut out = Vec::new();
        encode_predict(9, &mut req, &views(&ts), &mut out).unwrap();
        let i = pos.index(out.len());
        out[i] = byte;
        let _ = payload(&out);
        let c = cut.index(out.len() + 1);
        let _ = payload(&out[..c]);
    }

    #[test]
    fn tensor_metas_that_decode_always_index_in_bounds(
        metas in prop::collection::vec((0u32..8, prop::collection::vec(0u64..5, 0..10), prop::sample::select(vec![0u64, 1, 64, 128, 192, u64::MAX - 8]), prop_oneof![0u64..80, any::<u64>()]), 0..4),
        data_len in prop_oneof![0u64..300, any::<u64>()],
    ) {
        let metas: Vec<TensorMeta> = metas.into_iter().enumerate().map(|(i, (dtype, shape, offset, length))| TensorMeta { name: format!("t{i}"), dtype, shape, offset, length }).collect();
        if validate_tensors(&metas, data_len, &Limits::DEFAULT).is_ok() {
            for m in &metas {
                prop_assert!(m.offset + m.length <= data_len);
                let dt = DType::from_code(m.dtype).unwrap();
                prop_assert_eq!(byte_len(dt, &m.shape), Some(m.length));
            }
        }
    }
}

// === refusals, each with its wire code ===

fn predict_frame(inputs: &[Tensor]) -> Vec<u8> {
    let mut req = PredictRequest {
        model: "churn".into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    encode_predict(42, &mut req, &views(inputs), &mut out).unwrap();
    out
}

fn f32_tensor(name: &str, shape: Vec<u64>) -> Tensor {
    let n = element_count(&shape).unwrap() as usize;
    Tensor::from_f32(name, shape, &vec![1.5; n]).unwrap()
}

/// Re-encodes a PREDICT with hand-made tensor metadata over `data`.
fn predict_with_metas(metas: Vec<TensorMeta>, data: &[u8]) -> Vec<u8> {
    let req = PredictRequest {
        model: "m".into(),
        inputs: metas,
        ..Default::default()
    };
    let mut out = Vec::new();
    encode_frame_head(Opcode::Predict, 0, 5, &req, data.len() as u64, &mut out).unwrap();
    out.extend_from_slice(data);
    out
}

fn refused(frame: &[u8]) -> ProtoError {
    payload(frame).expect_err("frame should be refused")
}

#[test]
fn header_refusals_have_codes_and_close_the_connection() {
    let good = Header::new(Opcode::Health, 3, 0, 0).to_bytes();
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (good[..31].to_vec(), ErrorCode::BadFrame),
        (
            {
                let mut b = good;
                b[0] = b'X';
                b.to_vec()
            },
            ErrorCode::BadFrame,
        ),
        (
            {
                let mut b = good;
                b[4] = 2;
                b.to_vec()
            },
            ErrorCode::UnsupportedVersion,
        ),
        (
            {
                let mut b = good;
                b[20] = 1;
                b.to_vec()
            },
            ErrorCode::BadFrame,
        ),
        (
            {
                let mut b = good;
                b[6] = 0x02;
                b.to_vec()
            },
            ErrorCode::BadFrame,
        ),
        (
            {
                let mut b = good;
                b[7] = 0x80;
                b.to_vec()
            },
            ErrorCode::BadFrame,
        ),
        (
            Header::new(Opcode::Predict, 3, 65_537, 0)
                .to_bytes()
                .to_vec(),
            ErrorCode::FrameTooLarge,
        ),
        (
            Header::new(Opcode::Predict, 3, 10, 64 << 20)
                .to_bytes()
                .to_vec(),
            ErrorCode::FrameTooLarge,
        ),
        (
            Header::new(Opcode::Predict, 3, u32::MAX, u64::MAX)
                .to_bytes()
                .to_vec(),
            ErrorCode::FrameTooLarge,
        ),
    ];
    for (bytes, code) in cases {
        let e = Header::decode(&bytes).expect_err("refused");
        assert_eq!(e.kind(), code, "{e}");
        assert!(e.closes_connection(), "{e}");
        assert_eq!(e.to_response().error_code(), Some(code));
    }
    // The flag that is defined is accepted.
    let mut b = good;
    b[6] = FLAG_END_OF_STREAM as u8;
    assert_eq!(Header::decode(&b).unwrap().flags, FLAG_END_OF_STREAM);
}

#[test]
fn limits_are_inclusive_and_configurable() {
    let max = Limits::DEFAULT.max_frame_bytes;
    // A frame of exactly the maximum size is accepted; one byte more is not.
    let meta_len = 0;
    let data_len = max - 64;
    assert_eq!(frame_layout(meta_len, data_len).1, max);
    assert!(
        Header::decode(&Header::new(Opcode::Predict, 1, meta_len, data_len).to_bytes()).is_ok()
    );
    let e = Header::decode(&Header::new(Opcode::Predict, 1, meta_len, data_len + 1).to_bytes())
        .unwrap_err();
    assert_eq!(e, ProtoError::FrameTooLarge { len: max + 1, max });
    let tight = Limits {
        max_frame_bytes: 100,
        ..Limits::DEFAULT
    };
    assert!(Header::decode_with(&Header::new(Opcode::Health, 1, 68, 0).to_bytes(), &tight).is_ok());
    assert!(
        Header::decode_with(&Header::new(Opcode::Health, 1, 69, 0).to_bytes(), &tight).is_err()
    );
}

#[test]
fn unknown_opcode_keeps_framing() {
    let h = Header {
        opcode: 0x09,
        ..Header::new(Opcode::Health, 11, 0, 0)
    };
    let h = Header::decode(&h.to_bytes()).expect("an unknown opcode is not a header error");
    let e = decode_payload(&h, &[]).unwrap_err();
    assert_eq!(e, ProtoError::UnknownOpcode(9));
    assert_eq!(e.kind(), ErrorCode::UnknownOpcode);
    assert!(!e.closes_connection());
}

#[test]
fn body_refusals() {
    let frame = predict_frame(&[f32_tensor("x", vec![1, 3])]);
    // Truncated body.
    let e = refused(&frame[..frame.len() - 1]);
    assert!(matches!(e, ProtoError::BodyLength { .. }), "{e}");
    assert!(!e.closes_connection());
    // Trailing byte.
    let mut long = frame.clone();
    long.push(0);
    assert!(matches!(refused(&long), ProtoError::BodyLength { .. }));
    // Non-zero padding between metadata and data.
    let h = Header::decode(&frame).unwrap();
    let pad_at = h.data_offset() as usize - 1;
    assert!(
        pad_at >= HEADER_LEN + h.meta_len as usize,
        "this frame has padding"
    );
    let mut bad = frame.clone();
    bad[pad_at] = 1;
    assert_eq!(refused(&bad), ProtoError::NonZeroPadding);
    // Garbage metadata.
    let mut garbage = frame.clone();
    for b in &mut garbage[HEADER_LEN..HEADER_LEN + 4] {
        *b = 0xFF;
    }
    let e = refused(&garbage);
    assert!(matches!(e, ProtoError::Meta(_)), "{e}");
    assert_eq!(e.kind(), ErrorCode::BadFrame);
    // Wrong decoder for the opcode.
    let e = decode_predict_response(&h, &frame[HEADER_LEN..]).unwrap_err();
    assert!(matches!(
        e,
        ProtoError::WrongOpcode {
            expected: Opcode::PredictResponse,
            got: 0x02
        }
    ));
    // Tensor data on a message that takes none.
    let mut out = Vec::new();
    encode_frame_head(Opcode::Health, 0, 1, &HealthRequest {}, 8, &mut out).unwrap();
    out.extend_from_slice(&[0; 8]);
    assert_eq!(
        refused(&out),
        ProtoError::UnexpectedData {
            opcode: Opcode::Health,
            data_len: 8
        }
    );
}

fn meta(name: &str, dtype: u32, shape: Vec<u64>, offset: u64, length: u64) -> TensorMeta {
    TensorMeta {
        name: name.into(),
        dtype,
        shape,
        offset,
        length,
    }
}

#[test]
fn tensor_refusals() {
    let d = vec![0u8; 256];
    let check = |metas: Vec<TensorMeta>,
                 data: &[u8],
                 code: ErrorCode,
                 want: &dyn Fn(&ProtoError) -> bool| {
        let e = refused(&predict_with_metas(metas, data));
        assert!(want(&e), "unexpected {e:?}");
        assert_eq!(e.kind(), code, "{e}");
        assert!(!e.closes_connection());
    };
    let problem = |p: TensorProblem| move |e: &ProtoError| matches!(e, ProtoError::Tensor { problem, .. } if *problem == p);
    check(
        vec![meta("x", 99, vec![2], 0, 8)],
        &d[..8],
        ErrorCode::BadInput,
        &problem(TensorProblem::UnknownDType(99)),
    );
    check(
        vec![meta("x", 1, vec![1; 9], 0, 4)],
        &d[..4],
        ErrorCode::BadInput,
        &problem(TensorProblem::Rank { rank: 9, max: 8 }),
    );
    check(
        vec![meta("x", 1, vec![3], 0, 8)],
        &d[..8],
        ErrorCode::BadInput,
        &problem(TensorProblem::LengthMismatch {
            expected: 12,
            declared: 8,
        }),
    );
    check(
        vec![meta("x", 3, vec![u64::MAX, 2], 0, 8)],
        &d[..8],
        ErrorCode::BadInput,
        &problem(TensorProblem::SizeOverflow),
    );
    check(
        vec![meta("", 5, vec![1], 0, 1)],
        &d[..1],
        ErrorCode::BadInput,
        &problem(TensorProblem::EmptyName),
    );
    check(
        vec![meta("x", 5, vec![1], 0, 1), meta("x", 5, vec![1], 64, 1)],
        &d[..65],
        ErrorCode::BadInput,
        &problem(TensorProblem::DuplicateName),
    );
    // Misaligned, overlapping, and gapped offsets are all off the canonical layout.
    check(
        vec![meta("x", 5, vec![1], 0, 1), meta("y", 5, vec![1], 1, 1)],
        &d[..2],
        ErrorCode::BadFrame,
        &problem(TensorProblem::Misplaced {
            offset: 1,
            expected: 64,
        }),
    );
    check(
        vec![meta("x", 5, vec![1], 0, 1), meta("y", 5, vec![1], 128, 1)],
        &d[..129],
        ErrorCode::BadFrame,
        &problem(TensorProblem::Misplaced {
            offset: 128,
            expected: 64,
        }),
    );
    check(
        vec![meta("x", 5, vec![1], 64, 1)],
        &d[..65],
        ErrorCode::BadFrame,
        &problem(TensorProblem::Misplaced {
            offset: 64,
            expected: 0,
        }),
    );
    // Out of bounds and trailing data.
    check(
        vec![meta("x", 1, vec![4], 0, 16)],
        &d[..8],
        ErrorCode::BadFrame,
        &|e| {
            *e == ProtoError::DataLength {
                expected: 16,
                have: 8,
            }
        },
    );
    check(
        vec![meta("x", 1, vec![2], 0, 8)],
        &d[..9],
        ErrorCode::BadFrame,
        &|e| {
            *e == ProtoError::DataLength {
                expected: 8,
                have: 9,
            }
        },
    );
    check(vec![], &d[..1], ErrorCode::BadFrame, &|e| {
        *e == ProtoError::DataLength {
            expected: 0,
            have: 1,
        }
    });
    // Too many tensors.
    let many: Vec<TensorMeta> = (0..65)
        .map(|i| meta(&format!("t{i}"), 5, vec![0], 0, 0))
        .collect();
    check(many, &[], ErrorCode::BadInput, &|e| {
        matches!(e, ProtoError::TooManyTensors { count: 65, max: 64 })
    });
}

#[test]
fn limits_apply_to_tensor_count_and_rank() {
    let ts: Vec<Tensor> = (0..3)
        .map(|i| f32_tensor(&format!("t{i}"), vec![1, 1, 1]))
        .collect();
    let frame = predict_frame(&ts);
    let h = Header::decode(&frame).unwrap();
    let body = &frame[HEADER_LEN..];
    assert!(decode_predict(&h, body).is_ok());
    let few = Limits {
        max_tensors: 2,
        ..Limits::DEFAULT
    };
    assert!(matches!(
        decode_predict_with(&h, body, &few),
        Err(ProtoError::TooManyTensors { count: 3, max: 2 })
    ));
    let flat = Limits {
        max_rank: 2,
        ..Limits::DEFAULT
    };
    assert_eq!(
        decode_predict_with(&h, body, &flat).unwrap_err().kind(),
        ErrorCode::BadInput
    );
}

#[test]
fn encoders_refuse_what_decoders_would() {
    let t = TensorView {
        name: "x",
        dtype: DType::F32,
        shape: &[3],
        data: &[0; 8],
    };
    let mut req = PredictRequest::default();
    let e = encode_predict(1, &mut req, &[t], &mut Vec::new()).unwrap_err();
    assert!(matches!(
        e,
        ProtoError::Tensor {
            problem: TensorProblem::LengthMismatch {
                expected: 12,
                declared: 8
            },
            ..
        }
    ));
    assert!(Tensor::from_f32("x", vec![2, 2], &[1.0; 3]).is_err());
    assert!(matches!(
        encode_frame_head(
            Opcode::Health,
            0x4,
            1,
            &HealthRequest {},
            0,
            &mut Vec::new()
        ),
        Err(ProtoError::UnknownFlags(4))
    ));
}

#[test]
fn buffers_are_reused_not_appended() {
    let mut out = vec![0xAA; 1000];
    encode_message(Opcode::Health, 1, &HealthRequest {}, &mut out).unwrap();
    assert_eq!(out.len(), HEADER_LEN);
    let mut req = PredictRequest::default();
    let big = [f32_tensor("a", vec![5]), f32_tensor("b", vec![7])];
    encode_predict(1, &mut req, &views(&big), &mut out).unwrap();
    let small = [f32_tensor("c", vec![2])];
    encode_predict(2, &mut req, &views(&small), &mut out).unwrap();
    assert_eq!(req.inputs.len(), 1);
    assert_eq!(req.inputs[0].name, "c");
    match payload(&out).unwrap() {
        Payload::Predict(v) => assert_eq!(v.input(0).unwrap().to_tensor(), small[0]),
        other => panic!("{other:?}"),
    }
}

proptest! {
    /// A request decoded into a used one (a server's recycled request) is exactly the one
    /// decoded afresh: nothing of the old one survives, errors included.
    #[test]
    fn decoding_into_a_used_request_equals_a_fresh_decode(
        old in predict_request(),
        new in predict_request(),
        old_rank in 1usize..3,
        new_rank in 0usize..3,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut spare = old;
        spare.inputs = (0..old_rank).map(|i| meta("old", 1, vec![3; i + 1], 0, 12)).collect();
        let tensors: Vec<Tensor> = (0..new_rank).map(|i| f32_tensor(&format!("n{i}"), vec![i as u64 + 1])).collect();
        let mut req = new;
        let mut frame = Vec::new();
        encode_predict(9, &mut req, &views(&tensors), &mut frame).unwrap();
        let h = Header::decode(&frame).unwrap();
        let body = &frame[HEADER_LEN..];
        let fresh = decode_predict_with(&h, body, &Limits::DEFAULT).unwrap();
        let reused = decode_predict_into(&h, body, &Limits::DEFAULT, spare.clone()).unwrap();
        prop_assert_eq!(&reused.request, &fresh.request);
        prop_assert_eq!(reused.request, req);
        // A truncated body: the same refusal either way.
        let short = &body[..cut.index(body.len().max(1)).min(body.len())];
        let short_h = Header { meta_len: h.meta_len.min(short.len() as u32), data_len: 0, ..h };
        prop_assert_eq!(
            decode_predict_into(&short_h, short, &Limits::DEFAULT, spare).map(|v| v.request),
            decode_predict_with(&short_h, short, &Limits::DEFAULT).map(|v| v.request)
        );
    }
}

#[test]
fn request_id_helpers() {
    let mut frame = predict_frame(&[f32_tensor("x", vec![2])]);
    assert_eq!(peek_request_id(&frame), Some(42));
    set_request_id(&mut frame, 0xDEAD_BEEF).unwrap();
    assert_eq!(Header::decode(&frame).unwrap().request_id, 0xDEAD_BEEF);
    assert!(payload(&frame).is_ok());
    // The id of a frame with a bad version can still be answered.
    frame[4] = 9;
    assert_eq!(peek_request_id(&frame), Some(0xDEAD_BEEF));
    frame[0] = 0;
    assert_eq!(peek_request_id(&frame), None);
    assert_eq!(peek_request_id(&frame[..20]), None);
    assert!(set_request_id(&mut [0u8; 10], 1).is_err());
}

#[test]
fn codes_opcodes_and_dtypes_are_stable() {
    let codes: Vec<(u32, &str)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_u32(), c.name()))
        .collect();
    assert_eq!(
        codes,
        [
            (1, "BAD_FRAME"),
            (2, "UNSUPPORTED_VERSION"),
            (3, "UNKNOWN_OPCODE"),
            (4, "UNKNOWN_MODEL"),
            (5, "BAD_INPUT"),
            (6, "OVERLOADED"),
            (7, "DEADLINE_EXCEEDED"),
            (8, "FRAME_TOO_LARGE"),
            (9, "INTERNAL"),
            (10, "NOT_READY"),
            (11, "NOT_IMPLEMENTED"),
            (12, "SHUTTING_DOWN"),
            (13, "TOO_MANY_IN_FLIGHT"),
            (14, "UNAUTHENTICATED"),
            (15, "FEATURE_STORE"),
            (16, "UNKNOWN_REQUEST_ID"),
        ]
    );
    for c in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_u32(c.as_u32()), Some(c));
    }
    assert_eq!(ErrorCode::from_u32(0), None);
    assert_eq!(ErrorCode::from_u32(u32::MAX), None);
    for op in Opcode::ALL {
        assert_eq!(Opcode::from_u8(op.as_u8()), Some(op));
        if let Some(r) = op.response() {
            assert_eq!(r.as_u8(), op.as_u8() | 0x80);
            assert!(op.is_request() && !r.is_request());
        }
    }
    let n_known = (0..=255u8)
        .filter(|&b| Opcode::from_u8(b).is_some())
        .count();
    assert_eq!(n_known, Opcode::ALL.len());
    let dt: Vec<(u32, u64)> = DType::ALL.iter().map(|d| (d.code(), d.size())).collect();
    assert_eq!(dt, [(1, 4), (2, 8), (3, 8), (4, 4), (5, 1), (6, 1)]);
    assert_eq!(MAGIC.to_le_bytes(), *b"EINF");
}

#[test]
fn negotiation_picks_the_highest_common_version() {
    assert_eq!(negotiate(&[1]), Some(1));
    assert_eq!(negotiate(&[3, 1, 2]), Some(1));
    assert_eq!(negotiate(&[2, 3]), None);
    assert_eq!(negotiate(&[]), None);
}

#[test]
fn padding_and_alignment() {
    assert_eq!(padding(0).len(), 0);
    assert_eq!(padding(1).len(), 63);
    assert_eq!(padding(64).len(), 0);
    assert_eq!(padding(80).len(), 48);
    assert_eq!(padding(u64::MAX).len(), 1);
    assert_eq!(align_up(65), 128);
    assert_eq!(frame_layout(10, 0), (42, 42));
    assert_eq!(frame_layout(10, 5), (64, 69));
    assert_eq!(frame_layout(32, 5), (64, 69));
    assert_eq!(frame_layout(33, 5), (128, 133));
    assert_eq!(frame_layout(u32::MAX, u64::MAX).1, u64::MAX);
}

#[test]
fn tensor_helpers_convert_every_dtype() {
    let t = Tensor::from_f64_as("x", DType::I64, vec![3], &[1.0, -2.0, 3.0]).unwrap();
    assert_eq!(t.to_i64(), Some(vec![1, -2, 3]));
    assert_eq!(t.values_f64(), vec![1.0, -2.0, 3.0]);
    let e = Tensor::from_f64_as("x", DType::I32, vec![2], &[1.0, 1.5]).unwrap_err();
    assert_eq!(
        e,
        ProtoError::Value {
            index: 1,
            value: "1.5".into(),
            dtype: DType::I32
        }
    );
    assert_eq!(e.kind(), ErrorCode::BadInput);
    assert!(Tensor::from_f64_as("x", DType::U8, vec![1], &[256.0]).is_err());
    assert!(Tensor::from_f64_as("x", DType::Bool, vec![1], &[2.0]).is_err());
    let b = Tensor::from_f64_as("x", DType::Bool, vec![2], &[1.0, 0.0]).unwrap();
    assert_eq!(b.to_bool(), Some(vec![true, false]));
    assert_eq!(b.to_f32(), None);
    let f = Tensor::from_f64_as("x", DType::F32, vec![2], &[0.5, 2.0]).unwrap();
    assert_eq!(f.to_f32(), Some(vec![0.5, 2.0]));
    assert_eq!(f.data, [0, 0, 0, 0x3F, 0, 0, 0, 0x40]);
    assert_eq!("F32".parse::<DType>(), Ok(DType::F32));
    assert!("f16".parse::<DType>().is_err());
}
