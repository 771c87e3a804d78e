//! ONNX Runtime on CPU, on graphs built in place: every carried dtype in and out,
//! metadata, zero-copy and misaligned inputs, output buffer reuse, typed errors.

mod ort_support;

use edgeinfer_engine::{
    expected_ort_version, load_model, ort_status, Backend, DType, Dim, EngineChoice, ErrorKind,
    Outputs, TensorView,
};
use ort_support::*;

fn le<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|v| to(*v)).collect()
}

#[test]
fn status_reports_the_library_and_its_version() {
    let status = ort_status(&ort_opts(EngineChoice::OrtCpu));
    assert_eq!(status.error, None);
    assert_eq!(status.expected_version, "1.31");
    assert_eq!(expected_ort_version(), "1.31");
    let version = status.version.expect("version");
    assert!(version.starts_with("1.31."), "{version}");
    assert_eq!(
        status.path.unwrap(),
        std::path::absolute(ort_lib()).unwrap()
    );
    // The PyPI wheel is a CPU build: the CUDA provider is not in it.
    assert_eq!(status.cuda_provider_built, Some(false));
}

#[test]
fn every_dtype_round_trips_through_identity() {
    let model = load_model(&identity_all_dtypes(), &ort_opts(EngineChoice::OrtCpu)).unwrap();
    assert_eq!(model.backend(), Backend::OrtCpu);
    assert_eq!(model.report.reason, "engine = \"ort-cpu\"");
    assert_eq!(model.info.inputs.len(), 6);
    for (spec, d) in model.info.inputs.iter().zip(DType::ALL) {
        assert_eq!(spec.name, format!("x_{d}"));
        assert_eq!(spec.dtype, d);
        assert_eq!(spec.shape, vec![Dim::Dynamic, Dim::Fixed(3)]);
    }
    for (spec, d) in model.info.outputs.iter().zip(DType::ALL) {
        assert_eq!(spec.name, format!("y_{d}"));
        assert_eq!(spec.dtype, d);
    }

    let shape = [2usize, 3];
    let data: Vec<Vec<u8>> = vec![
        le(&[1.5f32, -2.0, 3.25, 0.0, 1e-3, 7.0], f32::to_le_bytes),
        le(&[1.5f64, -2.0, 3.25, 0.0, 1e-300, 7.0], f64::to_le_bytes),
        le(&[i64::MIN, -1, 0, 1, 42, i64::MAX], i64::to_le_bytes),
        le(&[i32::MIN, -1, 0, 1, 42, i32::MAX], i32::to_le_bytes),
        vec![0, 1, 2, 127, 128, 255],
        vec![1, 0, 0, 1, 1, 0],
    ];
    let views: Vec<TensorView<'_>> = DType::ALL
        .iter()
        .zip(&data)
        .map(|(d, bytes)| TensorView::new(*d, &shape, bytes).unwrap())
        .collect();
    let mut session = model.new_session().unwrap();
    assert_eq!(session.backend(), Backend::OrtCpu);
    let mut out = Outputs::for_model(&model.info);
    session.run(&views, &mut out).unwrap();
    for ((t, d), bytes) in out.tensors.iter().zip(DType::ALL).zip(&data) {
        assert_eq!(t.dtype, Some(d));
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(&t.data, bytes, "{d}");
    }
}

#[test]
fn misaligned_inputs_are_copied_and_give_the_same_answer() {
    let model = load_model(&add_f32(), &ort_opts(EngineChoice::OrtCpu)).unwrap();
    let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.5).collect();
    let y: Vec<f32> = (0..8).map(|i| 10.0 - i as f32).collect();
    let shape = [2usize, 4];
    let mut session = model.new_session().unwrap();
    let mut aligned = Outputs::for_model(&model.info);
    session
        .run(
            &[
                TensorView::from_f32(&shape, &x),
                TensorView::from_f32(&shape, &y),
            ],
            &mut aligned,
        )
        .unwrap();
    let want: Vec<f64> = x.iter().zip(&y).map(|(a, b)| (a + b) as f64).collect();
    assert_eq!(aligned.tensors[0].to_f64_vec(), want);

    // Shift the bytes by one so they cannot be viewed as f32 in place.
    let mut buf = [0u8; 2 + 32];
    let offset = if buf.as_ptr() as usize % 4 == 3 { 2 } else { 1 };
    buf[offset..offset + 32].copy_from_slice(bytemuck::cast_slice(&x));
    let shifted = &buf[offset..offset + 32];
    assert_ne!(
        shifted.as_ptr() as usize % 4,
        0,
        "the test needs a misaligned slice"
    );
    let mut misaligned = Outputs::for_model(&model.info);
    session
        .run(
            &[
                TensorView::new(DType::F32, &shape, shifted).unwrap(),
                TensorView::from_f32(&shape, &y),
            ],
            &mut misaligned,
        )
        .unwrap();
    assert_eq!(misaligned.tensors[0].data, aligned.tensors[0].data);
}

#[test]
fn output_buffers_are_reused_across_runs() {
    let model = load_model(&add_f32(), &ort_opts(EngineChoice::OrtCpu)).unwrap();
    let mut session = model.new_session().unwrap();
    let mut out = Outputs::for_model(&model.info);
    let big: Vec<f32> = vec![1.0; 64 * 4];
    session
        .run(
            &[
                TensorView::from_f32(&[64, 4], &big),
                TensorView::from_f32(&[64, 4], &big),
            ],
            &mut out,
        )
        .unwrap();
    let (ptr, cap) = (out.tensors[0].data.as_ptr(), out.tensors[0].data.capacity());
    let small: Vec<f32> = vec![2.0; 4];
    for _ in 0..100 {
        session
            .run(
                &[
                    TensorView::from_f32(&[1, 4], &small),
                    TensorView::from_f32(&[1, 4], &small),
                ],
                &mut out,
            )
            .unwrap();
        assert_eq!(out.tensors[0].to_f64_vec(), vec![4.0; 4]);
        assert_eq!(out.tensors[0].shape, vec![1, 4]);
        assert_eq!(
            out.tensors[0].data.as_ptr(),
            ptr,
            "output buffer reallocated"
        );
        assert_eq!(out.tensors[0].data.capacity(), cap);
    }
    // An empty Outputs is filled in rather than rejected.
    let mut fresh = Outputs::default();
    session
        .run(
            &[
                TensorView::from_f32(&[1, 4], &small),
                TensorView::from_f32(&[1, 4], &small),
            ],
            &mut fresh,
        )
        .unwrap();
    assert_eq!(fresh.tensors[0].name, "z");
}

#[test]
fn sessions_are_independent_and_send() {
    let model = load_model(&add_f32(), &ort_opts(EngineChoice::OrtCpu)).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|k| {
            let mut session = model.new_session().unwrap();
            let info = model.info.clone();
            std::thread::spawn(move || {
                let x = vec![k as f32; 4];
                let mut out = Outputs::for_model(&info);
                for _ in 0..50 {
                    session
                        .run(
                            &[
                                TensorView::from_f32(&[1, 4], &x),
                                TensorView::from_f32(&[1, 4], &x),
                            ],
                            &mut out,
                        )
                        .unwrap();
                }
                out.tensors[0].to_f64_vec()
            })
        })
        .collect();
    for (k, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), vec![2.0 * k as f64; 4]);
    }
}

#[test]
fn garbage_model_bytes_are_a_bad_model() {
    for bytes in [&b"definitely not an onnx model"[..], &[], &[0xff; 64]] {
        let err = load_model(bytes, &ort_opts(EngineChoice::OrtCpu)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadModel, "{err}");
        assert!(
            err.message.contains("ONNX Runtime cannot load the model"),
            "{err}"
        );
    }
    // A valid model cut short.
    let whole = add_f32();
    let err = load_model(&whole[..whole.len() / 2], &ort_opts(EngineChoice::OrtCpu)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadModel, "{err}");
}

#[test]
fn bad_inputs_are_typed_errors() {
    let model = load_model(&add_f32(), &ort_opts(EngineChoice::OrtCpu)).unwrap();
    let mut session = model.new_session().unwrap();
    let mut out = Outputs::for_model(&model.info);
    let ok = vec![1.0f32; 8];
    let good = TensorView::from_f32(&[2, 4], &ok);

    // Wrong shape: 3 columns where the model declares 4.
    let three = vec![1.0f32; 6];
    let err = session
        .run(&[TensorView::from_f32(&[2, 3], &three), good], &mut out)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadInput);
    assert!(err.message.contains("shape"), "{err}");

    // Wrong rank.
    let err = session
        .run(&[TensorView::from_f32(&[8], &ok), good], &mut out)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadInput);

    // Wrong dtype: f64 bytes where f32 is declared.
    let doubles = le(&[1.0f64; 8], f64::to_le_bytes);
    let err = session
        .run(
            &[
                TensorView::new(DType::F64, &[2, 4], &doubles).unwrap(),
                good,
            ],
            &mut out,
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadInput);
    assert!(err.message.contains("dtype"), "{err}");

    // NaN and infinity.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = ok.clone();
        v[5] = bad;
        let err = session
            .run(&[TensorView::from_f32(&[2, 4], &v), good], &mut out)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadInput);
        assert!(err.message.contains("element 5"), "{err}");
    }

    // Wrong input count.
    let err = session.run(&[good], &mut out).unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadInput);
    assert!(err.message.contains("2 input(s), got 1"), "{err}");

    // Batches of 3 and 2 each fit the declaration but cannot be added; ORT's refusal comes back typed.
    let three_rows = vec![1.0f32; 12];
    let err = session
        .run(
            &[TensorView::from_f32(&[3, 4], &three_rows), good],
            &mut out,
        )
        .unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::BadInput | ErrorKind::Runtime),
        "{err:?}"
    );

    // After all that the session still serves.
    session.run(&[good, good], &mut out).unwrap();
    assert_eq!(out.tensors[0].to_f64_vec(), vec![2.0; 8]);
}

#[test]
fn non_finite_inputs_pass_when_allowed() {
    let mut opts = ort_opts(EngineChoice::OrtCpu);
    opts.allow_non_finite = true;
    let model = load_model(&add_f32(), &opts).unwrap();
    let mut session = model.new_session().unwrap();
    let mut out = Outputs::for_model(&model.info);
    let v = [f32::NAN, 1.0, f32::INFINITY, 0.0];
    session
        .run(
            &[
                TensorView::from_f32(&[1, 4], &v),
                TensorView::from_f32(&[1, 4], &[1.0; 4]),
            ],
            &mut out,
        )
        .unwrap();
    let got = out.tensors[0].to_f64_vec();
    assert!(got[0].is_nan() && got[1] == 2.0 && got[2].is_infinite());
}

#[test]
fn bool_bytes_other_than_zero_or_one_are_rejected() {
    let bytes = model(
        vec![node("Not", &["b"], &["nb"])],
        vec![value_info("b", DType::Bool, &[None])],
        vec![value_info("nb", DType::Bool, &[None])],
    );
    let model = load_model(&bytes, &ort_opts(EngineChoice::OrtCpu)).unwrap();
    let mut session = model.new_session().unwrap();
    let mut out = Outputs::for_model(&model.info);
    session
        .run(
            &[TensorView::new(DType::Bool, &[3], &[1, 0, 1]).unwrap()],
            &mut out,
        )
        .unwrap();
    assert_eq!(out.tensors[0].data, vec![0, 1, 0]);
    let err = session
        .run(
            &[TensorView::new(DType::Bool, &[3], &[1, 7, 1]).unwrap()],
            &mut out,
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadInput);
}

#[test]
fn string_inputs_are_unsupported_at_load() {
    use tract_onnx::pb;
    let mut input = value_info("s", DType::F32, &[None]);
    if let Some(pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(t)),
        ..
    }) = input.r#type.as_mut()
    {
        t.elem_type = pb::tensor_proto::DataType::String as i32;
    }
    let mut output = input.clone();
    output.name = "t".into();
    let bytes = model(
        vec![node("Identity", &["s"], &["t"])],
        vec![input],
        vec![output],
    );
    let err = load_model(&bytes, &ort_opts(EngineChoice::OrtCpu)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported, "{err}");
    assert!(err.message.contains("input \"s\""), "{err}");
}
