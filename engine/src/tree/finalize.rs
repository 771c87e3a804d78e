//! From summed leaf weights to output scores and labels, exactly as onnxruntime
//! does it (`tree_ensemble_aggregator.h`: `FinalizeScores`, `FinalizeScores1`,
//! `_set_score_binary`; `ml_common.h`: `write_scores` and the transforms).
//!
//! The odd corners are deliberate copies, not bugs of ours: a score with no leaf
//! contribution reads as 0 even after a base value was added to it; a binary
//! classifier whose trees only vote for one class gets its second column derived
//! (`1 - p`, `-s` or `logistic(-s)`); the non-"binary case" two-class label is the
//! literal 1 or 0. Models are checked against onnxruntime's outputs, so matching
//! its behaviour is the specification.

use super::forest::{Accumulate, Real};
use super::{
    invalid, Aggregate, BuildError, ClassLabels, EnsembleKind, EnsembleSpec, PostTransform,
};

/// onnxruntime's `ScoreValue`: a running score and whether any leaf contributed to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Score<T> {
    pub score: T,
    pub has: bool,
}

impl<T: Real> Default for Score<T> {
    fn default() -> Self {
        Score {
            score: T::ZERO,
            has: false,
        }
    }
}

impl<T: Real> Score<T> {
    /// `operator T()`: the score only counts if something contributed to it.
    fn value(self) -> T {
        if self.has {
            self.score
        } else {
            T::ZERO
        }
    }
}

#[derive(Debug, Clone)]
enum Role {
    Classifier {
        /// `class_labels_`: the int64 labels, or `0..n` for string labels.
        labels: Vec<i64>,
        /// Two classes and leaf weights for only one of them.
        binary_case: bool,
        weights_all_positive: bool,
    },
    Regressor {
        aggregate: Aggregate,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Finalizer {
    role: Role,
    n_outputs: usize,
    n_trees: usize,
    post: PostTransform,
    base: Vec<f64>,
}

impl Finalizer {
    pub(super) fn new(
        spec: &EnsembleSpec,
        n_outputs: usize,
        n_trees: usize,
    ) -> Result<Finalizer, BuildError> {
        let role = match &spec.kind {
            EnsembleKind::Classifier { labels } => {
                let labels = match labels {
                    ClassLabels::Int64(v) => v.clone(),
                    ClassLabels::Strings(v) => (0..v.len() as i64).collect(),
                };
                // Both flags are computed over the raw attribute lists, as onnxruntime does.
                let mut classes: Vec<i64> = spec.weights.iter().map(|w| w.target).collect();
                classes.sort_unstable();
                classes.dedup();
                Role::Classifier {
                    binary_case: n_outputs == 2 && classes.len() == 1,
                    weights_all_positive: spec.weights.iter().all(|w| w.weight >= 0.0),
                    labels,
                }
            }
            EnsembleKind::Regressor { aggregate, .. } => Role::Regressor {
                aggregate: *aggregate,
            },
        };
        // onnxruntime's load-time checks (`TreeEnsembleAttributesV3`).
        let n_base = spec.base_values.len();
        let base_ok = match role {
            Role::Classifier { .. } if n_outputs <= 2 => n_base <= 2,
            _ => n_base == 0 || n_base == n_outputs,
        };
        if !base_ok {
            return invalid(format!("{n_base} base values for {n_outputs} outputs"));
        }
        if let Some(w) = spec
            .weights
            .iter()
            .find(|w| w.target < 0 || w.target as usize >= n_outputs)
        {
            return invalid(format!(
                "a weight targets output {}, but there are {n_outputs}",
                w.target
            ));
        }
        Ok(Finalizer {
            role,
            n_outputs,
            n_trees,
            post: spec.post_transform,
            base: spec.base_values.clone(),
        })
    }

    pub(super) fn n_outputs(&self) -> usize {
        self.n_outputs
    }

    pub(super) fn accumulate(&self) -> Accumulate {
        match self.role {
            Role::Regressor {
                aggregate: Aggregate::Min,
            } => Accumulate::Min,
            Role::Regressor {
                aggregate: Aggregate::Max,
            } => Accumulate::Max,
            _ => Accumulate::Sum,
        }
    }

    fn base<T: Real>(&self, i: usize) -> T {
        T::from_f64(self.base[i])
    }

    /// Turns one row's running scores into `z` (`n_outputs` values) and returns its label
    /// (meaningless for regressors).
    pub(super) fn finish<T: Real>(&self, preds: &mut [Score<T>], z: &mut [f32]) -> i64 {
        z.fill(0.0);
        match &self.role {
            Role::Regressor { aggregate } if self.n_outputs == 1 => {
                z[0] = self.finish_one_target(*aggregate, preds[0]);
                0
            }
            Role::Regressor { aggregate } => {
                self.finish_targets(*aggregate, preds, z);
                0
            }
            Role::Classifier {
                labels,
                binary_case,
                weights_all_positive,
            } => self.finish_classes(labels, *binary_case, *weights_all_positive, preds, z),
        }
    }

    /// `FinalizeScores1` of the sum, average, min and max aggregators.
    fn finish_one_target<T: Real>(&self, aggregate: Aggregate, p: Score<T>) -> f32 {
        let origin: T = if self.base.len() == 1 {
            self.base(0)
        } else {
            T::ZERO
        };
        let score = match aggregate {
            Aggregate::Sum => p.score + origin,
            Aggregate::Average => p.score / T::from_usize(self.n_trees) + origin,
            Aggregate::Min | Aggregate::Max => {
                if p.has {
                    p.score + origin
                } else {
                    origin
                }
            }
        };
        if self.post == PostTransform::Probit {
            probit(score.to_f32())
        } else {
            score.to_f32()
        }
    }

    /// `FinalizeScores` of the regression aggregators.
    fn finish_targets<T: Real>(&self, aggregate: Aggregate, preds: &mut [Score<T>], z: &mut [f32]) {
        let use_base = self.base.len() == self.n_outputs;
        for (j, p) in preds.iter_mut().enumerate() {
            match aggregate {
                Aggregate::Sum => {
                    if use_base {
                        p.score = p.score + self.base(j);
                    }
                }
                Aggregate::Average => {
                    let mean = p.score / T::from_usize(self.n_trees);
                    p.score = if use_base { mean + self.base(j) } else { mean };
                }
                Aggregate::Min | Aggregate::Max => {
                    let b = if use_base { self.base(j) } else { T::ZERO };
                    p.score = b + p.value();
                }
            }
        }
        write_scores(preds, self.post, z, -1);
    }

    /// `TreeAggregatorClassifier::FinalizeScores`.
    fn finish_classes<T: Real>(
        &self,
        labels: &[i64],
        binary_case: bool,
        all_positive: bool,
        preds: &mut [Score<T>],
        z: &mut [f32],
    ) -> i64 {
        if self.n_outputs > 2 {
            for (k, p) in preds.iter_mut().enumerate().take(self.base.len()) {
                if p.has {
                    p.score = p.score + self.base(k);
                } else {
                    *p = Score {
                        score: self.base(k),
                        has: true,
                    };
                }
            }
            let mut best: Option<(usize, T)> = None;
            for (i, p) in preds.iter().enumerate() {
                if p.has && best.is_none_or(|(_, w)| p.score > w) {
                    best = Some((i, p.score));
                }
            }
            write_scores(preds, self.post, z, -1);
            return labels[best.map_or(0, |(i, _)| i)];
        }

        let mut add_second_class = -1;
        let mut len = 2;
        match self.base.len() {
            2 => {
                if preds[1].has {
                    // onnxruntime: "base_value_[0] is not used", and the class-0 sum is the score.
                    preds[1].score = self.base::<T>(1) + preds[0].score;
                    preds[0].score = -preds[1].score;
                    preds[1].has = true;
                } else {
                    preds[1].score = preds[1].score + self.base(1);
                    preds[0].score = preds[0].score + self.base(0);
                }
            }
            1 => {
                preds[0].score = preds[0].score + self.base(0);
                if !preds[1].has {
                    len = 1;
                }
            }
            0 => {
                add_second_class = 3;
                if !preds[1].has {
                    len = 1;
                }
            }
            _ => {}
        }
        let (s0, h0) = (preds[0].score, preds[0].has);
        let (s1, h1) = if len == 2 && preds[1].has {
            (preds[1].score, true)
        } else {
            (T::ZERO, false)
        };
        let pos_weight = if h1 {
            s1
        } else if h0 {
            s0
        } else {
            T::ZERO
        };
        let label = if binary_case {
            let (positive, code) = if all_positive {
                (pos_weight > T::from_f64(0.5), 0)
            } else {
                (pos_weight > T::ZERO, 2)
            };
            add_second_class = if positive { code } else { code + 1 };
            labels[positive as usize]
        } else {
            // onnxruntime's `positive_label_` / `negative_label_`: literally 1 and 0.
            (pos_weight > T::ZERO) as i64
        };
        write_scores(&preds[..len], self.post, z, add_second_class);
        label
    }
}

/// `write_scores`: applies the post-transform and writes the scores of one row.
fn write_scores<T: Real>(
    preds: &[Score<T>],
    post: PostTransform,
    z: &mut [f32],
    add_second_class: i32,
) {
    if preds.len() >= 2 {
        for (o, p) in z.iter_mut().zip(preds) {
            *o = p.value().to_f32();
        }
        let z = &mut z[..preds.len()];
        match post {
            PostTransform::Probit => z.iter_mut().for_each(|v| *v = probit(*v)),
            PostTransform::Logistic => z.iter_mut().for_each(|v| *v = logistic(*v)),
            PostTransform::Softmax => softmax(z),
            PostTransform::SoftmaxZero => softmax_zero(z),
            PostTransform::None => {}
        }
        return;
    }
    let Some(p) = preds.first() else { return };
    let v = p.value().to_f32();
    if post == PostTransform::Probit {
        z[0] = probit(v);
        return;
    }
    // onnxruntime 1.31 applies the logistic in cases 0 and 1 too (older sources did not);
    // measured against its Python wheel.
    match add_second_class {
        0..=3 if post == PostTransform::Logistic => {
            z[0] = logistic(-v);
            z[1] = logistic(v);
        }
        0 | 1 => {
            z[0] = 1.0 - v;
            z[1] = v;
        }
        2 | 3 => {
            z[0] = -v;
            z[1] = v;
        }
        _ => z[0] = v,
    }
}

/// `ComputeLogistic`.
pub(super) fn logistic(v: f32) -> f32 {
    let e = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 {
        1.0 - e
    } else {
        e
    }
}

/// `ErfInv`: onnxruntime's closed-form approximation, copied for identical results.
fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}

/// `ComputeProbit`.
pub(super) fn probit(v: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * v - 1.0)
}

/// `ComputeSoftmax`, in `f32` as onnxruntime computes it.
fn softmax(z: &mut [f32]) {
    let max = z
        .iter()
        .copied()
        .fold(-f32::MAX, |m, v| if v > m { v } else { m });
    let mut sum = 0.0f32;
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    z.iter_mut().for_each(|v| *v /= sum);
}

/// `ComputeSoftmaxZero`: like softmax, but exact zeros stay zero.
fn softmax_zero(z: &mut [f32]) {
    let max = z
        .iter()
        .copied()
        .fold(-f32::MAX, |m, v| if v > m { v } else { m });
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0f32;
    for v in z.iter_mut() {
        if *v > 0.000_000_1 || *v < -0.000_000_1 {
            *v = (*v - max).exp();
            sum += *v;
        } else {
            *v *= exp_neg_max;
        }
    }
    z.iter_mut().for_each(|v| *v /= sum);
}
