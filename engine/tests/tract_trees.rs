//! Tree ensembles on the tract backend, on graphs built in place: the whole-model
//! fast path (zero-copy and misaligned inputs, f64 inputs, output reuse) and trees
//! inside a larger graph, which run through tract's plan with our op.

mod ort_support;
mod tract_support;

use edgeinfer_engine::{DType, Dim, Outputs, TensorView};
use ort_support::{model, node, value_info};
use tract_onnx::pb;
use tract_support::*;

/// Rows and the sum of the leaves they reach in the two stumps.
const ROWS: [([f32; 2], f64); 4] = [
    ([-1.0, 0.0], 101.0),
    ([-1.0, 1.0], 1001.0),
    ([0.5, 0.5], 110.0),
    ([0.5, 0.75], 1010.0),
];

fn flat_rows() -> Vec<f32> {
    ROWS.iter().flat_map(|(x, _)| *x).collect()
}

fn sums() -> Vec<f64> {
    ROWS.iter().map(|(_, y)| *y).collect()
}

#[test]
fn a_regressor_model_reports_its_metadata_and_runs() {
    let m = load_on_tract(&stump_regressor(DType::F32));
    assert_eq!(m.info.inputs[0].name, "x");
    assert_eq!(m.info.inputs[0].dtype, DType::F32);
    assert_eq!(m.info.inputs[0].shape, vec![Dim::Dynamic, Dim::Fixed(2)]);
    assert_eq!(m.info.outputs[0].name, "y");
    assert_eq!(m.info.outputs[0].dtype, DType::F32);
    assert_eq!(m.info.outputs[0].shape, vec![Dim::Dynamic, Dim::Fixed(1)]);

    let out = run_f32(&m, &[4, 2], &flat_rows());
    assert_eq!(out.tensors[0].shape, vec![4, 1]);
    assert_eq!(out.tensors[0].to_f64_vec(), sums());
}

#[test]
fn misaligned_input_bytes_give_the_same_answer() {
    let m = load_on_tract(&stump_regressor(DType::F32));
    let mut session = m.new_session().unwrap();
    let bytes: Vec<u8> = flat_rows().iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut backing = vec![0u8; bytes.len() + 1];
    backing[1..].copy_from_slice(&bytes);
    let misaligned = &backing[1..];
    assert_ne!(misaligned.as_ptr() as usize % 4, 0);
    let mut out = Outputs::for_model(&m.info);
    session
        .run(
            &[TensorView::new(DType::F32, &[4, 2], misaligned).unwrap()],
            &mut out,
        )
        .unwrap();
    assert_eq!(out.tensors[0].to_f64_vec(), sums());
}

#[test]
fn outputs_are_rewritten_in_place_across_batch_sizes() {
    let m = load_on_tract(&stump_regressor(DType::F32));
    let mut session = m.new_session().unwrap();
    let mut out = Outputs::for_model(&m.info);
    let x = flat_rows();
    session
        .run(&[TensorView::from_f32(&[4, 2], &x)], &mut out)
        .unwrap();
    let capacity = out.tensors[0].data.capacity();
    for n in [1, 3, 4, 2] {
        session
            .run(&[TensorView::from_f32(&[n, 2], &x[..n * 2])], &mut out)
            .unwrap();
        assert_eq!(out.tensors[0].shape, vec![n, 1]);
        assert_eq!(out.tensors[0].to_f64_vec(), sums()[..n]);
        assert_eq!(
            out.tensors[0].data.capacity(),
            capacity,
            "reuses its buffer"
        );
    }
    // An Outputs made for another model is reset to this one's outputs.
    let mut foreign = Outputs::default();
    session
        .run(&[TensorView::from_f32(&[1, 2], &x[..2])], &mut foreign)
        .unwrap();
    assert_eq!(foreign.tensors.len(), 1);
    assert_eq!(foreign.tensors[0].name, "y");
}

#[test]
fn f64_inputs_are_compared_in_f64() {
    let m = load_on_tract(&stump_regressor(DType::F64));
    let mut session = m.new_session().unwrap();
    // Just above 0.5 in f64 but 0.5 once rounded to f32: onnxruntime keeps the f64 value.
    let x = [-1.0f64, 0.5000000001, -1.0, 0.5];
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = Outputs::for_model(&m.info);
    session
        .run(
            &[TensorView::new(DType::F64, &[2, 2], &bytes).unwrap()],
            &mut out,
        )
        .unwrap();
    assert_eq!(out.tensors[0].to_f64_vec(), vec![1001.0, 101.0]);
}

/// `x` [batch, 2] → `x * 2` → TreeEnsembleClassifier → label, probabilities:
/// trees behind a tract op, so the graph runs through tract's plan.
fn scaled_classifier() -> Vec<u8> {
    let mut attrs = stump_attributes("class");
    attrs.push(ints("classlabels_int64s", &[7, 9]));
    // Turn the weights into probabilities of class 9: tree sums 0.1..0.9 per row.
    attrs[10] = floats("class_weights", &[0.05, 0.25, 0.05, 0.45]);
    let mut bytes = with_ml_opset(model(
        vec![
            node("Mul", &["x", "two"], &["scaled"]),
            ml_node(
                "TreeEnsembleClassifier",
                &["scaled"],
                &["label", "probabilities"],
                attrs,
            ),
        ],
        vec![value_info("x", DType::F32, &[None, Some(2)])],
        vec![
            value_info("label", DType::I64, &[None]),
            value_info("probabilities", DType::F32, &[None, Some(2)]),
        ],
    ));
    use prost::Message;
    let mut m = pb::ModelProto::decode(&bytes[..]).unwrap();
    m.graph.as_mut().unwrap().initializer.push(pb::TensorProto {
        name: "two".into(),
        dims: vec![1],
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: vec![2.0],
        ..Default::default()
    });
    bytes = m.encode_to_vec();
    bytes
}

#[test]
fn trees_inside_a_larger_graph_run_through_tract() {
    let m = load_on_tract(&scaled_classifier());
    assert_eq!(m.info.outputs[0].dtype, DType::I64);
    assert_eq!(m.info.outputs[1].shape, vec![Dim::Dynamic, Dim::Fixed(2)]);
    // Scaled by 2: [-0.5, 0.2] → [-1, 0.4]: leaves 0.05 + 0.05; [0.1, 0.3] → [0.2, 0.6]: 0.25 + 0.45.
    let x = [-0.5f32, 0.2, 0.1, 0.3, -0.5, 0.3];
    let out = run_f32(&m, &[3, 2], &x);
    // One weight column, all positive: scores are [1 - p, p], label 9 when p > 0.5.
    assert_eq!(out.tensors[0].to_f64_vec(), vec![7.0, 9.0, 7.0]);
    let p = out.tensors[1].to_f64_vec();
    let want = [0.9, 0.1, 0.3, 0.7, 0.5, 0.5];
    for (g, w) in p.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{p:?}");
    }
}

#[test]
fn sessions_move_across_threads() {
    let m = load_on_tract(&stump_regressor(DType::F32));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let mut session = m.new_session().unwrap();
            std::thread::spawn(move || {
                let x = flat_rows();
                let mut out = Outputs::default();
                session
                    .run(&[TensorView::from_f32(&[4, 2], &x)], &mut out)
                    .unwrap();
                out.tensors[0].to_f64_vec()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), sums());
    }
}

/// `x` → Scaler(offset, scale) → the two stumps: scikit-learn's StandardScaler + trees.
fn scaled_regressor(offset: &[f32], scale: &[f32]) -> Vec<u8> {
    let mut attrs = stump_attributes("target");
    attrs.push(int("n_targets", 1));
    with_ml_opset(model(
        vec![
            ml_node(
                "Scaler",
                &["x"],
                &["scaled"],
                vec![floats("offset", offset), floats("scale", scale)],
            ),
            ml_node("TreeEnsembleRegressor", &["scaled"], &["y"], attrs),
        ],
        vec![value_info("x", DType::F32, &[None, Some(2)])],
        vec![value_info("y", DType::F32, &[None, Some(1)])],
    ))
}

#[test]
fn a_scaler_in_front_of_trees_runs_on_tract() {
    // (x - [1, 0.5]) * [2, 4]: [0.5, 0.5] → [-1, 0]; [2, 1] → [2, 2]; [1, 0.6] → [0, 0.4];
    // [0, 0.7] → [-2, 0.8].
    let m = load_on_tract(&scaled_regressor(&[1.0, 0.5], &[2.0, 4.0]));
    let x = [0.5f32, 0.5, 2.0, 1.0, 1.0, 0.6, 0.0, 0.7];
    let out = run_f32(&m, &[4, 2], &x);
    assert_eq!(
        out.tensors[0].to_f64_vec(),
        vec![101.0, 1010.0, 101.0, 1001.0]
    );

    // One offset and one scale apply to every feature: (x - 0.25) * 2.
    let m = load_on_tract(&scaled_regressor(&[0.25], &[2.0]));
    let out = run_f32(&m, &[2, 2], &[0.0, 0.5, 1.0, 0.75]);
    assert_eq!(out.tensors[0].to_f64_vec(), vec![101.0, 1010.0]);
}

#[test]
fn a_scaler_with_the_wrong_number_of_values_is_refused() {
    let e =
        edgeinfer_engine::load_model(&scaled_regressor(&[1.0, 2.0, 3.0], &[1.0]), &tract_opts())
            .unwrap_err();
    assert_eq!(
        e.kind,
        edgeinfer_engine::ErrorKind::Unsupported,
        "{}",
        e.message
    );
    assert!(e.message.contains("offset has 3 values"), "{}", e.message);
}
