//! The tract backend refuses bad models and bad inputs with typed errors and keeps
//! serving afterwards; it never panics.

mod ort_support;
mod tract_support;

use edgeinfer_engine::{load_model, Backend, DType, ErrorKind, Outputs, TensorView};
use ort_support::{add_f32, model, node, value_info};
use tract_support::*;

fn load_err(bytes: &[u8]) -> edgeinfer_engine::EngineError {
    match load_model(bytes, &tract_opts()) {
        Ok(m) => panic!("loaded {:?}", m.info),
        Err(e) => e,
    }
}

#[test]
fn garbage_bytes_are_a_bad_model() {
    for bytes in [
        &b"definitely not protobuf \xff\xfe\x00\x01"[..],
        &[0xffu8; 64][..],
        &[][..],
        &add_f32()[..10],
    ] {
        let e = load_err(bytes);
        assert_eq!(e.kind, ErrorKind::BadModel, "{bytes:?}: {}", e.message);
    }
}

#[test]
fn an_operator_tract_lacks_is_unsupported_and_named() {
    let bytes = model(
        vec![node("NoSuchOperator", &["x"], &["y"])],
        vec![value_info("x", DType::F32, &[None, Some(4)])],
        vec![value_info("y", DType::F32, &[None, Some(4)])],
    );
    let e = load_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("NoSuchOperator"), "{}", e.message);
}

#[test]
fn a_tree_ensemble_with_contradictory_attributes_is_a_bad_model() {
    let mut attrs = stump_attributes("target");
    attrs.push(int("n_targets", 1));
    // A branch pointing at a node its tree does not have.
    attrs[5] = ints("nodes_truenodeids", &[1, 0, 0, 9, 0, 0]);
    let bytes = with_ml_opset(model(
        vec![ml_node("TreeEnsembleRegressor", &["x"], &["y"], attrs)],
        vec![value_info("x", DType::F32, &[None, Some(2)])],
        vec![value_info("y", DType::F32, &[None, Some(1)])],
    ));
    let e = load_err(&bytes);
    assert_eq!(e.kind, ErrorKind::BadModel, "{}", e.message);
    assert!(e.message.contains("node 9"), "{}", e.message);
}

#[test]
fn string_class_labels_are_unsupported_as_an_output() {
    let mut attrs = stump_attributes("class");
    attrs.push(strings("classlabels_strings", &["stay", "churn"]));
    let bytes = with_ml_opset(model(
        vec![ml_node(
            "TreeEnsembleClassifier",
            &["x"],
            &["label", "probabilities"],
            attrs,
        )],
        vec![value_info("x", DType::F32, &[None, Some(2)])],
        vec![
            // ONNX STRING: a dtype the engine boundary does not carry.
            pb_string_output("label"),
            value_info("probabilities", DType::F32, &[None, Some(2)]),
        ],
    ));
    let e = load_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Unsupported, "{}", e.message);
    assert!(e.message.contains("STRING"), "{}", e.message);
}

fn pb_string_output(name: &str) -> tract_onnx::pb::ValueInfoProto {
    let mut v = value_info(name, DType::I64, &[None]);
    if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = tract_onnx::pb::tensor_proto::DataType::String as i32;
    }
    v
}

#[test]
fn bad_inputs_are_typed_errors_and_the_session_keeps_working() {
    for (what, bytes) in [
        ("tree path", stump_regressor(DType::F32)),
        ("tract plan", add_one()),
    ] {
        let m = load_on_tract(&bytes);
        assert_eq!(m.backend(), Backend::Tract);
        let mut session = m.new_session().unwrap();
        assert_eq!(session.backend(), Backend::Tract);
        let mut out = Outputs::for_model(&m.info);
        let good = [0.5f32, 1.0, -0.5, 0.0];

        let wrong_width = [0.0f32; 6];
        let e = session
            .run(&[TensorView::from_f32(&[2, 3], &wrong_width)], &mut out)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadInput, "{what}: {}", e.message);
        assert!(e.message.contains("shape"), "{what}: {}", e.message);

        let e = session
            .run(&[TensorView::from_f32(&[4], &good)], &mut out)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadInput, "{what}: rank: {}", e.message);

        let as_f64: Vec<u8> = good
            .iter()
            .flat_map(|v| (*v as f64).to_le_bytes())
            .collect();
        let e = session
            .run(
                &[TensorView::new(DType::F64, &[2, 2], &as_f64).unwrap()],
                &mut out,
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadInput, "{what}: {}", e.message);
        assert!(e.message.contains("dtype"), "{what}: {}", e.message);

        for bad in [f32::NAN, f32::INFINITY] {
            let x = [0.5f32, bad, -0.5, 0.0];
            let e = session
                .run(&[TensorView::from_f32(&[2, 2], &x)], &mut out)
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadInput, "{what}: {}", e.message);
            assert!(e.message.contains("element 1"), "{what}: {}", e.message);
        }

        let e = session.run(&[], &mut out).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadInput, "{what}: {}", e.message);
        let e = session
            .run(
                &[
                    TensorView::from_f32(&[2, 2], &good),
                    TensorView::from_f32(&[2, 2], &good),
                ],
                &mut out,
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadInput, "{what}: {}", e.message);

        // After all that, the same session still answers.
        session
            .run(&[TensorView::from_f32(&[2, 2], &good)], &mut out)
            .unwrap();
        assert_eq!(out.tensors[0].shape[0], 2, "{what}");
    }
}

#[test]
fn non_finite_inputs_pass_when_the_model_allows_them() {
    let opts = edgeinfer_engine::LoadOptions {
        allow_non_finite: true,
        ..tract_opts()
    };
    let m = load_model(&stump_regressor(DType::F32), &opts).unwrap();
    let mut session = m.new_session().unwrap();
    let mut out = Outputs::for_model(&m.info);
    // NaN compares false: both stumps take their false branch.
    let x = [f32::NAN, f32::NAN];
    session
        .run(&[TensorView::from_f32(&[1, 2], &x)], &mut out)
        .unwrap();
    assert_eq!(out.tensors[0].to_f64_vec(), vec![1010.0]);
}

/// `y = x + 1` on f32 [batch, 2]: a model that runs through tract's plan.
fn add_one() -> Vec<u8> {
    use tract_onnx::pb;
    let mut bytes = model(
        vec![node("Add", &["x", "one"], &["y"])],
        vec![value_info("x", DType::F32, &[None, Some(2)])],
        vec![value_info("y", DType::F32, &[None, Some(2)])],
    );
    use prost::Message;
    let mut m = pb::ModelProto::decode(&bytes[..]).unwrap();
    m.graph.as_mut().unwrap().initializer.push(pb::TensorProto {
        name: "one".into(),
        dims: vec![1],
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: vec![1.0],
        ..Default::default()
    });
    bytes = m.encode_to_vec();
    bytes
}
