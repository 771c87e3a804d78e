//! Our own `ai.onnx.ml` tree-ensemble kernel (TreeEnsembleClassifier and
//! TreeEnsembleRegressor), numerically faithful to ONNX Runtime and laid out for
//! fast evaluation.
//!
//! The attributes of one ONNX node are first read into an [`EnsembleSpec`] (plain
//! Rust, no tract or protobuf types, so the kernel can be unit-tested directly),
//! then compiled into a [`TreeEnsemble`]:
//! - every tree is re-laid out depth-first into one flat node array (16-byte nodes
//!   for `f32`: threshold, feature, true child, false child, as `u32` indices);
//! - leaves point to themselves on both branches, so a tree is walked for exactly
//!   its depth with no leaf test in the loop, and several walks (several trees for
//!   one row, or one tree for several rows) advance in lock-step to hide the
//!   latency of each dependent load;
//! - what happens after the walk (how leaf weights are added up, base values,
//!   post-transforms, the binary special cases and labels) mirrors onnxruntime's
//!   `tree_ensemble_aggregator.h` and `ml_common.h` line by line, because models
//!   are validated against onnxruntime's outputs ([`finalize`]).

mod finalize;
mod forest;
pub(crate) mod onnx;
mod scaler;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::OnceLock;

pub(crate) use forest::Scratch;

use finalize::Finalizer;
use forest::{Forest, Layout};

/// How an inner node compares its feature to its threshold (the `nodes_modes` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum NodeMode {
    BranchLeq,
    BranchLt,
    BranchGte,
    BranchGt,
    BranchEq,
    BranchNeq,
    Leaf,
}

impl NodeMode {
    pub(crate) fn parse(s: &str) -> Option<NodeMode> {
        Some(match s {
            "BRANCH_LEQ" => NodeMode::BranchLeq,
            "BRANCH_LT" => NodeMode::BranchLt,
            "BRANCH_GTE" => NodeMode::BranchGte,
            "BRANCH_GT" => NodeMode::BranchGt,
            "BRANCH_EQ" => NodeMode::BranchEq,
            "BRANCH_NEQ" => NodeMode::BranchNeq,
            "LEAF" => NodeMode::Leaf,
            _ => return None,
        })
    }
}

/// The `post_transform` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum PostTransform {
    #[default]
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
    Probit,
}

impl PostTransform {
    pub(crate) fn parse(s: &str) -> Option<PostTransform> {
        Some(match s {
            "NONE" => PostTransform::None,
            "SOFTMAX" => PostTransform::Softmax,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            _ => return None,
        })
    }
}

/// The regressor's `aggregate_function` attribute. Classifiers always sum (as onnxruntime does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum Aggregate {
    #[default]
    Sum,
    Average,
    Min,
    Max,
}

impl Aggregate {
    pub(crate) fn parse(s: &str) -> Option<Aggregate> {
        Some(match s {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClassLabels {
    Int64(Vec<i64>),
    Strings(Vec<String>),
}

impl ClassLabels {
    pub(crate) fn len(&self) -> usize {
        match self {
            ClassLabels::Int64(v) => v.len(),
            ClassLabels::Strings(v) => v.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EnsembleKind {
    Classifier {
        labels: ClassLabels,
    },
    Regressor {
        n_targets: usize,
        aggregate: Aggregate,
    },
}

/// One entry of the `nodes_*` attribute arrays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NodeRow {
    pub tree: i64,
    pub id: i64,
    pub feature: i64,
    pub mode: NodeMode,
    pub value: f64,
    pub true_id: i64,
    pub false_id: i64,
    pub missing_tracks_true: bool,
}

/// One entry of the `class_*` / `target_*` attribute arrays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WeightRow {
    pub tree: i64,
    pub node: i64,
    pub target: i64,
    pub weight: f64,
}

/// The attributes of one tree-ensemble node, as ONNX states them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EnsembleSpec {
    pub kind: EnsembleKind,
    pub post_transform: PostTransform,
    pub base_values: Vec<f64>,
    pub nodes: Vec<NodeRow>,
    pub weights: Vec<WeightRow>,
}

/// Why an ensemble could not be built. `Invalid` means the attributes contradict
/// themselves (a bad model); `Unsupported` a valid model we do not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BuildError {
    Invalid(String),
    Unsupported(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Invalid(m) => write!(f, "invalid tree ensemble: {m}"),
            BuildError::Unsupported(m) => write!(f, "unsupported tree ensemble: {m}"),
        }
    }
}

impl std::error::Error for BuildError {}

fn invalid<T>(msg: impl Into<String>) -> Result<T, BuildError> {
    Err(BuildError::Invalid(msg.into()))
}

/// Scores per row we accept: `n_targets` is a bare integer in the model, and scratch
/// space is allocated from it.
const MAX_OUTPUTS: usize = 1 << 16;

/// Input rows the kernel reads: `f32`, or `f64` (thresholds then compared in `f64`,
/// as onnxruntime does for double inputs).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rows<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// A compiled tree ensemble, ready to evaluate. Immutable and shared by all sessions.
#[derive(Debug)]
pub(crate) struct TreeEnsemble {
    layout: Layout,
    finalizer: Finalizer,
    labels: Option<ClassLabels>,
    forest32: Forest<f32>,
    forest64: OnceLock<Forest<f64>>,
}

impl TreeEnsemble {
    pub(crate) fn build(spec: &EnsembleSpec) -> Result<TreeEnsemble, BuildError> {
        let (n_outputs, labels) = match &spec.kind {
            EnsembleKind::Classifier { labels } => {
                if labels.len() < 2 {
                    // onnxruntime writes two scores per row into a one-column output here.
                    return Err(BuildError::Unsupported(format!(
                        "classifier with {} class label(s); at least 2 are needed",
                        labels.len()
                    )));
                }
                (labels.len(), Some(labels.clone()))
            }
            EnsembleKind::Regressor { n_targets, .. } => {
                if *n_targets == 0 {
                    return invalid("n_targets must be at least 1");
                }
                (*n_targets, None)
            }
        };
        if n_outputs > MAX_OUTPUTS {
            return Err(BuildError::Unsupported(format!(
                "{n_outputs} outputs per row (at most {MAX_OUTPUTS})"
            )));
        }
        if spec.nodes.is_empty() {
            return invalid("the ensemble has no nodes");
        }
        let layout = Layout::build(spec, n_outputs)?;
        let finalizer = Finalizer::new(spec, n_outputs, layout.n_trees())?;
        let forest32 = Forest::<f32>::from_layout(&layout);
        Ok(TreeEnsemble {
            layout,
            finalizer,
            labels,
            forest32,
            forest64: OnceLock::new(),
        })
    }

    /// Number of features a row must have at least (highest feature index used + 1).
    pub(crate) fn min_features(&self) -> usize {
        self.layout.min_features()
    }

    /// Number of score columns per row.
    pub(crate) fn n_scores(&self) -> usize {
        self.finalizer.n_outputs()
    }

    pub(crate) fn is_classifier(&self) -> bool {
        self.labels.is_some()
    }

    pub(crate) fn labels(&self) -> Option<&ClassLabels> {
        self.labels.as_ref()
    }

    /// Evaluate `n_rows` rows of `n_features` values each. For a classifier, `labels`
    /// receives one label per row (the class label for `classlabels_int64s`, the class
    /// index for `classlabels_strings`); `scores` receives `n_scores()` values per row.
    pub(crate) fn eval(
        &self,
        rows: Rows<'_>,
        n_rows: usize,
        n_features: usize,
        labels: &mut [i64],
        scores: &mut [f32],
        scratch: &mut Scratch,
    ) -> Result<(), String> {
        if n_features < self.min_features() {
            return Err(format!(
                "the trees read feature {} but rows have {n_features} feature(s)",
                self.min_features() - 1
            ));
        }
        let n_scores = self.n_scores();
        if scores.len() != n_rows * n_scores || (self.is_classifier() && labels.len() != n_rows) {
            return Err("output buffers do not match the number of rows".into());
        }
        match rows {
            Rows::F32(x) => {
                if x.len() != n_rows * n_features {
                    return Err("input length does not match rows × features".into());
                }
                self.forest32.eval(
                    &self.layout,
                    &self.finalizer,
                    x,
                    n_rows,
                    n_features,
                    labels,
                    scores,
                    &mut scratch.f32,
                )
            }
            Rows::F64(x) => {
                if x.len() != n_rows * n_features {
                    return Err("input length does not match rows × features".into());
                }
                let forest = self
                    .forest64
                    .get_or_init(|| Forest::<f64>::from_layout(&self.layout));
                forest.eval(
                    &self.layout,
                    &self.finalizer,
                    x,
                    n_rows,
                    n_features,
                    labels,
                    scores,
                    &mut scratch.f64,
                )
            }
        }
        Ok(())
    }
}

/// Maps `(tree id, node id)` to the position of the node in the attribute arrays.
fn index_nodes(nodes: &[NodeRow]) -> Result<HashMap<(i64, i64), usize>, BuildError> {
    let mut index = HashMap::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        if index.insert((n.tree, n.id), i).is_some() {
            return invalid(format!("node {} of tree {} is listed twice", n.id, n.tree));
        }
    }
    Ok(index)
}
