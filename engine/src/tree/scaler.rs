//! `ai.onnx.ml` Scaler, which tract lacks: scikit-learn pipelines put a
//! StandardScaler in front of their trees, and without it those pipelines would not
//! load on tract at all. Expanded into tract's own cast, subtract and multiply.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb;
use tract_onnx::tract_hir::internal::*;

pub(crate) fn scaler_op(
    _ctx: &ParsingContext,
    node: &pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let floats = |name: &str| -> Vec<f32> {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.floats.clone())
            .unwrap_or_default()
    };
    let (offset, scale) = (floats("offset"), floats("scale"));
    // onnxruntime: each list has one value (for every feature) or one per feature;
    // the per-feature count is checked against the input when the graph is typed.
    for (name, v) in [("offset", &offset), ("scale", &scale)] {
        if v.is_empty() {
            bail!("Scaler: attribute {name} is empty");
        }
    }
    Ok((expand(Scaler { offset, scale }), vec![]))
}

/// `y = (float(x) - offset) * scale`, per feature (the last axis).
#[derive(Debug, Clone)]
struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

impl Expansion for Scaler {
    fn name(&self) -> StaticName {
        "Scaler".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let fact = model.outlet_fact(inputs[0])?.clone();
        let rank = fact.rank();
        ensure!(rank >= 1, "Scaler needs at least one axis");
        let features = fact.shape[rank - 1].to_usize().ok();
        let mut x = inputs[0];
        if fact.datum_type != DatumType::F32 {
            x = model.wire_node(
                format!("{prefix}.cast"),
                tract_onnx::tract_core::ops::cast::cast(DatumType::F32),
                &[x],
            )?[0];
        }
        let constant = |values: &[f32], what: &str| -> TractResult<Tensor> {
            ensure!(
                values.len() == 1 || Some(values.len()) == features,
                "Scaler: {what} has {} values for {features:?} features",
                values.len()
            );
            let mut shape = vec![1; rank];
            shape[rank - 1] = values.len();
            Tensor::from_shape(&shape, values)
        };
        let offset = model.add_const(
            format!("{prefix}.offset"),
            constant(&self.offset, "offset")?,
        )?;
        let scale = model.add_const(format!("{prefix}.scale"), constant(&self.scale, "scale")?)?;
        let centred = model.wire_node(
            format!("{prefix}.sub"),
            tract_onnx::tract_core::ops::math::sub(),
            &[x, offset],
        )?;
        model.wire_node(
            format!("{prefix}.mul"),
            tract_onnx::tract_core::ops::math::mul(),
            &[centred[0], scale],
        )
    }
}
