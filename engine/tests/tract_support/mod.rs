//! Shared by the tract test binaries: tree-ensemble ONNX graphs built in place, and
//! a session runner. The committed fixtures and golden files come from `ort_support`.

#![allow(dead_code)]

use edgeinfer_engine::{load_model, DType, EngineChoice, LoadOptions, Model, Outputs, TensorView};
use tract_onnx::pb;

use crate::ort_support::{model, node, value_info};

pub fn tract_opts() -> LoadOptions {
    LoadOptions {
        engine: EngineChoice::Tract,
        ..LoadOptions::default()
    }
}

pub fn load_on_tract(bytes: &[u8]) -> Model {
    load_model(bytes, &tract_opts())
        .unwrap_or_else(|e| panic!("tract load: {:?}: {}", e.kind, e.message))
}

fn attr(name: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        ..Default::default()
    }
}

pub fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType;
    pb::AttributeProto {
        ints: v.to_vec(),
        r#type: AttributeType::Ints as i32,
        ..attr(name)
    }
}

pub fn int(name: &str, v: i64) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType;
    pb::AttributeProto {
        i: v,
        r#type: AttributeType::Int as i32,
        ..attr(name)
    }
}

pub fn floats(name: &str, v: &[f32]) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType;
    pb::AttributeProto {
        floats: v.to_vec(),
        r#type: AttributeType::Floats as i32,
        ..attr(name)
    }
}

pub fn string(name: &str, v: &str) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType;
    pb::AttributeProto {
        s: v.as_bytes().to_vec(),
        r#type: AttributeType::String as i32,
        ..attr(name)
    }
}

pub fn strings(name: &str, v: &[&str]) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType;
    pb::AttributeProto {
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        r#type: AttributeType::Strings as i32,
        ..attr(name)
    }
}

/// Two stumps over 2 features: tree 0 splits x0 <= 0, tree 1 splits x1 <= 0.5.
/// Leaf weights (one per leaf, target 0): tree 0 → 1 / 10, tree 1 → 100 / 1000, so the
/// sum tells which leaves a row reached.
pub fn stump_attributes(prefix: &str) -> Vec<pb::AttributeProto> {
    vec![
        ints("nodes_treeids", &[0, 0, 0, 1, 1, 1]),
        ints("nodes_nodeids", &[0, 1, 2, 0, 1, 2]),
        ints("nodes_featureids", &[0, 0, 0, 1, 0, 0]),
        strings(
            "nodes_modes",
            &["BRANCH_LEQ", "LEAF", "LEAF", "BRANCH_LEQ", "LEAF", "LEAF"],
        ),
        floats("nodes_values", &[0.0, 0.0, 0.0, 0.5, 0.0, 0.0]),
        ints("nodes_truenodeids", &[1, 0, 0, 1, 0, 0]),
        ints("nodes_falsenodeids", &[2, 0, 0, 2, 0, 0]),
        ints(&format!("{prefix}_treeids"), &[0, 0, 1, 1]),
        ints(&format!("{prefix}_nodeids"), &[1, 2, 1, 2]),
        ints(&format!("{prefix}_ids"), &[0, 0, 0, 0]),
        floats(&format!("{prefix}_weights"), &[1.0, 10.0, 100.0, 1000.0]),
    ]
}

pub fn ml_node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        domain: "ai.onnx.ml".into(),
        attribute: attrs,
        ..node(op, inputs, outputs)
    }
}

/// Adds the `ai.onnx.ml` opset to a model built by `ort_support::model`.
pub fn with_ml_opset(bytes: Vec<u8>) -> Vec<u8> {
    use prost::Message;
    let mut m = pb::ModelProto::decode(&bytes[..]).expect("our own model");
    m.opset_import.push(pb::OperatorSetIdProto {
        domain: "ai.onnx.ml".into(),
        version: 3,
    });
    m.encode_to_vec()
}

/// `x` [batch, 2] → TreeEnsembleRegressor (the two stumps) → `y` [batch, 1].
pub fn stump_regressor(input: DType) -> Vec<u8> {
    let mut attrs = stump_attributes("target");
    attrs.push(int("n_targets", 1));
    with_ml_opset(model(
        vec![ml_node("TreeEnsembleRegressor", &["x"], &["y"], attrs)],
        vec![value_info("x", input, &[None, Some(2)])],
        vec![value_info("y", DType::F32, &[None, Some(1)])],
    ))
}

pub fn run_f32(model: &Model, shape: &[usize], x: &[f32]) -> Outputs {
    let mut session = model.new_session().unwrap();
    let mut out = Outputs::for_model(&model.info);
    session
        .run(&[TensorView::from_f32(shape, x)], &mut out)
        .unwrap_or_else(|e| panic!("run: {:?}: {}", e.kind, e.message));
    out
}
