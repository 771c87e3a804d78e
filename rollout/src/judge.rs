//! The per-window judge: one window of per-arm statistics (from the daemon's per-arm
//! counters and the telemetry crate's latency, accuracy and drift), a verdict out.
//!
//! The candidate is compared with the stable arm of the same device and window when that
//! arm saw enough traffic (same inputs, same load, same box), else with the bundle's
//! baseline. Rates are judged with a one-sided interval (`confidence_z`), so a healthy
//! candidate's sampling noise does not roll it back while a broken one fails at once.
//! No clock and no IO: the caller cuts the windows.

use serde::{Deserialize, Serialize};

use crate::config::RolloutConfig;

/// One arm's counts over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmWindow {
    pub requests: u64,
    /// Requests answered with an engine error, a deadline miss or an internal error (not
    /// the client's bad input, which says nothing about the version).
    pub errors: u64,
    /// p99 of request latency; `None` when no request completed.
    pub p99_us: Option<u64>,
    /// Predictions that got feedback, and how many of them were right.
    pub labelled: u64,
    pub correct: u64,
    /// PSI of this arm's predictions against the bundle's reference distribution.
    pub prediction_psi: Option<f64>,
}

impl ArmWindow {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors.min(self.requests) as f64 / self.requests as f64
        }
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct.min(self.labelled) as f64 / self.labelled as f64)
    }
}

/// Both arms of one window. `stable` is `None` on a device that serves the candidate alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    pub stable: Option<ArmWindow>,
    pub candidate: ArmWindow,
}

/// What the candidate's bundle promises (its `baseline metrics`), used when the stable arm
/// gives no reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub accuracy: Option<f64>,
    pub error_rate: Option<f64>,
    pub p99_us: Option<u64>,
}

/// One signal past its threshold: the evidence an event carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum Failure {
    ErrorRate {
        candidate: f64,
        reference: Option<f64>,
        limit: f64,
        requests: u64,
    },
    P99Latency {
        candidate_us: u64,
        reference_us: u64,
        limit_us: u64,
    },
    Accuracy {
        candidate: f64,
        /// What it was judged against: the stable arm's accuracy in the window, else the
        /// bundle's baseline.
        baseline: f64,
        limit: f64,
        labelled: u64,
    },
    PredictionDrift {
        candidate_psi: f64,
        stable_psi: Option<f64>,
        limit: f64,
    },
}

/// The judgement of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Every signal that could be judged is within its threshold.
    Pass,
    /// Too little candidate traffic to say anything; the window neither passes nor fails.
    NotJudged { reason: String },
    /// Roll back: every failed signal with its numbers.
    Fail { failures: Vec<Failure> },
}

impl Verdict {
    pub fn is_fail(&self) -> bool {
        matches!(self, Verdict::Fail { .. })
    }
}

/// Standard error of a proportion `p` over `n` trials.
fn std_err(p: f64, n: u64) -> f64 {
    (p * (1.0 - p) / n.max(1) as f64).sqrt()
}

/// Judges one window of `stats` under `cfg`'s thresholds.
pub fn judge(stats: &WindowStats, baseline: &Baseline, cfg: &RolloutConfig) -> Verdict {
    let c = &stats.candidate;
    if c.requests < cfg.min_requests {
        return Verdict::NotJudged {
            reason: format!(
                "{} candidate requests in the window, fewer than rollout.min_requests = {}",
                c.requests, cfg.min_requests
            ),
        };
    }
    // The stable arm is a reference only when it saw enough traffic itself.
    let stable = stats.stable.filter(|s| s.requests >= cfg.min_requests);
    let z = cfg.confidence_z;
    let mut failures = Vec::new();

    // Error rate: above ratio × reference and above the floor, beyond sampling noise.
    let reference = stable.map(|s| s.error_rate()).or(baseline.error_rate);
    let limit = reference
        .map(|r| r * cfg.max_error_rate_ratio)
        .unwrap_or(0.0)
        .max(cfg.error_rate_floor);
    let rate = c.error_rate();
    if rate - z * std_err(rate, c.requests) > limit {
        failures.push(Failure::ErrorRate {
            candidate: rate,
            reference,
            limit,
            requests: c.requests,
        });
    }

    // p99 latency against the stable arm's (same box, same window), else the baseline's.
    let reference_p99 = stable.and_then(|s| s.p99_us).or(baseline.p99_us);
    if let (Some(cand), Some(reference_us)) = (c.p99_us, reference_p99) {
        let limit_us = (reference_us as f64 * cfg.max_p99_ratio) as u64;
        if cand > limit_us {
            failures.push(Failure::P99Latency {
                candidate_us: cand,
                reference_us,
                limit_us,
            });
        }
    }

    // Accuracy from feedback against the stable arm's in the same window (same inputs, same
    // label delay) when it has enough labels, else against the bundle's baseline. A live
    // accuracy below the offline one on both arms is the traffic's, not the candidate's.
    // Against the stable arm both sides are samples: their standard errors add.
    let stable_acc = stable
        .filter(|s| s.labelled >= cfg.min_labels)
        .and_then(|s| s.accuracy().map(|a| (a, std_err(a, s.labelled))));
    let reference = stable_acc.or(baseline.accuracy.map(|b| (b, 0.0)));
    if let (Some((base, base_err)), Some(acc)) = (
        reference,
        c.accuracy().filter(|_| c.labelled >= cfg.min_labels),
    ) {
        let keep = 1.0 - cfg.max_accuracy_drop;
        let limit = base * keep;
        let err = std_err(acc, c.labelled).hypot(base_err * keep);
        if acc + z * err < limit {
            failures.push(Failure::Accuracy {
                candidate: acc,
                baseline: base,
                limit,
                labelled: c.labelled,
            });
        }
    }

    // Prediction drift the stable arm does not share.
    if let Some(psi) = c.prediction_psi {
        let stable_psi = stable.and_then(|s| s.prediction_psi);
        if psi >= cfg.max_prediction_psi && stable_psi.is_none_or(|s| s < cfg.max_prediction_psi) {
            failures.push(Failure::PredictionDrift {
                candidate_psi: psi,
                stable_psi,
                limit: cfg.max_prediction_psi,
            });
        }
    }

    if failures.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail { failures }
    }
}
