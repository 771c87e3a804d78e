//! Reading tree-ensemble attributes out of ONNX nodes, and the tract op that runs
//! our kernel in place of tract's own `TreeEnsembleClassifier` (which is slow,
//! refuses scikit-learn's binary gradient boosting and has no regressor).

use std::cell::RefCell;
use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_ndarray;

use super::{
    Aggregate, BuildError, ClassLabels, EnsembleKind, EnsembleSpec, NodeMode, NodeRow,
    PostTransform, Rows, Scratch, TreeEnsemble, WeightRow,
};

/// Put our kernel in the registry, replacing tract's tree ops, plus the Scaler that
/// scikit-learn pipelines put in front of trees (tract has none).
pub(crate) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("TreeEnsembleClassifier", classifier_op);
    reg.insert("TreeEnsembleRegressor", regressor_op);
    reg.insert("Scaler", super::scaler::scaler_op);
}

fn classifier_op(
    ctx: &ParsingContext,
    node: &pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build_op(ctx, node, true)
}

fn regressor_op(
    ctx: &ParsingContext,
    node: &pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build_op(ctx, node, false)
}

fn build_op(
    ctx: &ParsingContext,
    node: &pb::NodeProto,
    classifier: bool,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let spec = spec_from_node(node, classifier, &|t| {
        let tensor = ctx.load_tensor(t)?;
        let tensor = tensor.cast_to::<f64>()?;
        Ok(tensor.try_as_plain_ram()?.as_slice::<f64>()?.to_vec())
    })
    .map_err(TractError::new)?;
    let ensemble = TreeEnsemble::build(&spec).map_err(TractError::new)?;
    Ok((
        expand(TreeEnsembleExpansion {
            ensemble: Arc::new(ensemble),
        }),
        vec![],
    ))
}

// === attribute reading ===

type TensorLoader<'a> = dyn Fn(&pb::TensorProto) -> TractResult<Vec<f64>> + 'a;

fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn ints<'a>(node: &'a pb::NodeProto, name: &str) -> &'a [i64] {
    attr(node, name).map(|a| &a.ints[..]).unwrap_or(&[])
}

fn text(bytes: &[u8], name: &str) -> Result<String, BuildError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| BuildError::Invalid(format!("attribute {name} is not UTF-8")))
}

fn string(node: &pb::NodeProto, name: &str) -> Result<Option<String>, BuildError> {
    attr(node, name).map(|a| text(&a.s, name)).transpose()
}

fn strings(node: &pb::NodeProto, name: &str) -> Result<Vec<String>, BuildError> {
    attr(node, name)
        .map(|a| a.strings.iter().map(|s| text(s, name)).collect())
        .unwrap_or(Ok(Vec::new()))
}

/// A float list given either as `name` (floats) or as `name_as_tensor` (a double tensor).
fn reals(
    node: &pb::NodeProto,
    name: &str,
    load: &TensorLoader<'_>,
) -> Result<Vec<f64>, BuildError> {
    let tensor_name = format!("{name}_as_tensor");
    match (
        attr(node, name),
        attr(node, &tensor_name).and_then(|a| a.t.as_ref()),
    ) {
        (Some(a), None) => Ok(a.floats.iter().map(|&f| f as f64).collect()),
        (None, Some(t)) => {
            load(t).map_err(|e| BuildError::Invalid(format!("attribute {tensor_name}: {e:#}")))
        }
        (None, None) => Ok(Vec::new()),
        (Some(_), Some(_)) => Err(BuildError::Invalid(format!(
            "both {name} and {tensor_name} are set"
        ))),
    }
}

fn same_len(what: &str, lens: &[usize]) -> Result<usize, BuildError> {
    let n = lens[0];
    if lens.iter().any(|&l| l != n) {
        return Err(BuildError::Invalid(format!(
            "the {what} attributes have different lengths {lens:?}"
        )));
    }
    Ok(n)
}

/// Reads a `TreeEnsembleClassifier` (`classifier`) or `TreeEnsembleRegressor` node.
pub(crate) fn spec_from_node(
    node: &pb::NodeProto,
    classifier: bool,
    load: &TensorLoader<'_>,
) -> Result<EnsembleSpec, BuildError> {
    let tree = ints(node, "nodes_treeids");
    let id = ints(node, "nodes_nodeids");
    let feature = ints(node, "nodes_featureids");
    let true_id = ints(node, "nodes_truenodeids");
    let false_id = ints(node, "nodes_falsenodeids");
    let modes = strings(node, "nodes_modes")?;
    let values = reals(node, "nodes_values", load)?;
    let n = same_len(
        "nodes_*",
        &[
            tree.len(),
            id.len(),
            feature.len(),
            true_id.len(),
            false_id.len(),
            modes.len(),
            values.len(),
        ],
    )?;
    // onnxruntime treats a missing or short list as "false".
    let tracks = ints(node, "nodes_missing_value_tracks_true");
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let mode = NodeMode::parse(&modes[i])
            .ok_or_else(|| BuildError::Invalid(format!("unknown node mode {:?}", modes[i])))?;
        nodes.push(NodeRow {
            tree: tree[i],
            id: id[i],
            feature: feature[i],
            mode,
            value: values[i],
            true_id: true_id[i],
            false_id: false_id[i],
            missing_tracks_true: tracks.get(i) == Some(&1),
        });
    }

    let prefix = if classifier { "class" } else { "target" };
    let w_tree = ints(node, &format!("{prefix}_treeids"));
    let w_node = ints(node, &format!("{prefix}_nodeids"));
    let w_target = ints(node, &format!("{prefix}_ids"));
    let w_value = reals(node, &format!("{prefix}_weights"), load)?;
    let m = same_len(
        &format!("{prefix}_*"),
        &[w_tree.len(), w_node.len(), w_target.len(), w_value.len()],
    )?;
    let weights = (0..m)
        .map(|i| WeightRow {
            tree: w_tree[i],
            node: w_node[i],
            target: w_target[i],
            weight: w_value[i],
        })
        .collect();

    let post_transform = match string(node, "post_transform")? {
        None => PostTransform::None,
        Some(s) => PostTransform::parse(&s)
            .ok_or_else(|| BuildError::Invalid(format!("unknown post_transform {s:?}")))?,
    };
    let kind = if classifier {
        let label_strings = strings(node, "classlabels_strings")?;
        let label_ints = ints(node, "classlabels_int64s");
        let labels = match (label_ints.is_empty(), label_strings.is_empty()) {
            (false, true) => ClassLabels::Int64(label_ints.to_vec()),
            (true, false) => ClassLabels::Strings(label_strings),
            (true, true) => {
                return Err(BuildError::Invalid(
                    "no classlabels_int64s nor classlabels_strings".into(),
                ))
            }
            (false, false) => {
                return Err(BuildError::Invalid(
                    "both classlabels_int64s and classlabels_strings are set".into(),
                ))
            }
        };
        EnsembleKind::Classifier { labels }
    } else {
        let n_targets = attr(node, "n_targets").map(|a| a.i).unwrap_or(0);
        if n_targets <= 0 {
            return Err(BuildError::Invalid(format!("n_targets is {n_targets}")));
        }
        let aggregate = match string(node, "aggregate_function")? {
            None => Aggregate::Sum,
            Some(s) => Aggregate::parse(&s)
                .ok_or_else(|| BuildError::Invalid(format!("unknown aggregate_function {s:?}")))?,
        };
        EnsembleKind::Regressor {
            n_targets: n_targets as usize,
            aggregate,
        }
    };
    Ok(EnsembleSpec {
        kind,
        post_transform,
        base_values: reals(node, "base_values", load)?,
        nodes,
        weights,
    })
}

// === the tract op ===

/// Inference-time face of the op: declares output types and shapes, then wires
/// [`TreeEnsembleOp`] into the typed model.
#[derive(Debug, Clone)]
struct TreeEnsembleExpansion {
    ensemble: Arc<TreeEnsemble>,
}

fn label_datum_type(ensemble: &TreeEnsemble) -> DatumType {
    match ensemble.labels() {
        Some(ClassLabels::Strings(_)) => DatumType::String,
        _ => DatumType::I64,
    }
}

impl Expansion for TreeEnsembleExpansion {
    fn name(&self) -> StaticName {
        if self.ensemble.is_classifier() {
            "TreeEnsembleClassifier".into()
        } else {
            "TreeEnsembleRegressor".into()
        }
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(if self.ensemble.is_classifier() { 2 } else { 1 })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        let classifier = self.ensemble.is_classifier();
        check_output_arity(outputs, if classifier { 2 } else { 1 })?;
        let scores = &outputs[outputs.len() - 1];
        s.equals(&scores.datum_type, DatumType::F32)?;
        s.equals(&scores.rank, 2)?;
        s.equals(&scores.shape[1], self.ensemble.n_scores().to_dim())?;
        if classifier {
            s.equals(&outputs[0].datum_type, label_datum_type(&self.ensemble))?;
            s.equals(&outputs[0].rank, 1)?;
        }
        s.given(&inputs[0].rank, move |s, rank| {
            // onnxruntime reads a rank-1 input as one row.
            if rank == 1 {
                s.equals(&scores.shape[0], 1.to_dim())?;
            } else {
                s.equals(&scores.shape[0], &inputs[0].shape[0])?;
            }
            if classifier {
                s.equals(&outputs[0].shape[0], &scores.shape[0])?;
            }
            Ok(())
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(
            prefix,
            TreeEnsembleOp {
                ensemble: self.ensemble.clone(),
            },
            inputs,
        )
    }
}

/// The typed op: evaluates the whole ensemble, post-transform and labels included.
#[derive(Debug, Clone)]
pub(crate) struct TreeEnsembleOp {
    pub(crate) ensemble: Arc<TreeEnsemble>,
}

impl PartialEq for TreeEnsembleOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ensemble, &other.ensemble)
    }
}

impl Eq for TreeEnsembleOp {}

impl Op for TreeEnsembleOp {
    fn name(&self) -> StaticName {
        if self.ensemble.is_classifier() {
            "edgeinfer.TreeEnsembleClassifier".into()
        } else {
            "edgeinfer.TreeEnsembleRegressor".into()
        }
    }

    op_as_typed_op!();
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl EvalOp for TreeEnsembleOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let (n_rows, n_features) = match *input.shape() {
            [f] => (1, f),
            [n, f] => (n, f),
            _ => bail!(
                "tree ensembles take a rank-1 or rank-2 input, got shape {:?}",
                input.shape()
            ),
        };
        let e = &self.ensemble;
        let mut scores = Tensor::zero::<f32>(&[n_rows, e.n_scores()])?;
        let mut labels = vec![0i64; if e.is_classifier() { n_rows } else { 0 }];
        {
            let mut view = scores.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            let converted;
            let rows = match input.datum_type() {
                DatumType::F64 => Rows::F64(input.try_as_plain_ram()?.as_slice::<f64>()?),
                DatumType::F32 => Rows::F32(input.try_as_plain_ram()?.as_slice::<f32>()?),
                _ => {
                    // onnxruntime compares integer inputs with float thresholds.
                    converted = input.cast_to::<f32>()?.into_owned();
                    Rows::F32(converted.try_as_plain_ram()?.as_slice::<f32>()?)
                }
            };
            SCRATCH
                .with(|s| {
                    e.eval(
                        rows,
                        n_rows,
                        n_features,
                        &mut labels,
                        out,
                        &mut s.borrow_mut(),
                    )
                })
                .map_err(|m| format_err!("{m}"))?;
        }
        let scores = scores.into_tvalue();
        match e.labels() {
            None => Ok(tvec!(scores)),
            Some(ClassLabels::Int64(_)) => Ok(tvec!(
                tract_ndarray::Array1::from_vec(labels)
                    .into_tensor()
                    .into_tvalue(),
                scores
            )),
            Some(ClassLabels::Strings(names)) => {
                let names: Vec<String> =
                    labels.iter().map(|&i| names[i as usize].clone()).collect();
                Ok(tvec!(
                    tract_ndarray::Array1::from_vec(names)
                        .into_tensor()
                        .into_tvalue(),
                    scores
                ))
            }
        }
    }
}

impl TypedOp for TreeEnsembleOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = match inputs[0].rank() {
            1 => 1.to_dim(),
            2 => inputs[0].shape[0].clone(),
            r => bail!("tree ensembles take a rank-1 or rank-2 input, got rank {r}"),
        };
        let scores = f32::fact([rows.clone(), self.ensemble.n_scores().to_dim()]);
        if self.ensemble.is_classifier() {
            Ok(tvec!(
                TypedFact::dt_shape(label_datum_type(&self.ensemble), [rows]),
                scores
            ))
        } else {
            Ok(tvec!(scores))
        }
    }

    as_op!();
}
