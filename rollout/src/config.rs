//! `[rollout]`: the daemon's rollout settings (judge thresholds, window, split default,
//! where the bad-version record lives), owned and validated here; the daemon composes it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::directive::percent_to_bp;

/// `[rollout]`. Every key has a default, so an absent section is a valid one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Length of one judging window, seconds.
    pub window_s: u64,
    /// A window with fewer candidate requests than this is not judged (neither passes nor fails).
    pub min_requests: u64,
    /// Accuracy is judged only on windows with at least this many labelled candidate predictions.
    pub min_labels: u64,
    /// The candidate fails when its error rate is above this × the stable arm's ...
    pub max_error_rate_ratio: f64,
    /// ... and above this absolute rate (so a stable arm with no errors does not make one
    /// error a rollback).
    pub error_rate_floor: f64,
    /// The candidate fails when its p99 latency is above this × the stable arm's.
    pub max_p99_ratio: f64,
    /// The candidate fails when its accuracy is more than this fraction below the baseline
    /// (the bundle's, else the stable arm's): 0.05 = 5 % below.
    pub max_accuracy_drop: f64,
    /// The candidate fails when its prediction PSI reaches this while the stable arm's
    /// does not (drift both arms share is the input's, not the candidate's).
    pub max_prediction_psi: f64,
    /// Rates (errors, accuracy) fail only when even the favourable end of a one-sided
    /// interval of this many standard errors is past the limit: sampling noise in a healthy
    /// window must not roll a candidate back. 1.645 ≈ 95 %.
    pub confidence_z: f64,
    /// The candidate's share of a canary device's traffic when the directive names no split;
    /// absent = the canary device serves the candidate alone.
    pub split_percent: Option<f64>,
    /// The bad-version record; absent = `<state_dir>/rollout/bad_versions.json`.
    pub record_file: Option<PathBuf>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            window_s: 300,
            min_requests: 200,
            min_labels: 200,
            max_error_rate_ratio: 2.0,
            error_rate_floor: 0.01,
            max_p99_ratio: 1.5,
            max_accuracy_drop: 0.05,
            max_prediction_psi: 0.25,
            confidence_z: 1.645,
            split_percent: None,
            record_file: None,
        }
    }
}

/// One problem with the section: the full key (`rollout.max_p99_ratio`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: &'static str,
    pub message: String,
}

impl RolloutConfig {
    /// Every problem at once, so an operator fixes the file in one go.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |key: &'static str, message: String| out.push(ConfigProblem { key, message });
        if !(1..=86_400).contains(&self.window_s) {
            bad(
                "rollout.window_s",
                format!("{} is out of range: 1 ..= 86400 s", self.window_s),
            );
        }
        if self.min_requests == 0 {
            bad(
                "rollout.min_requests",
                "must be at least 1: an empty window proves nothing".into(),
            );
        }
        let ratios = [
            ("rollout.max_error_rate_ratio", self.max_error_rate_ratio),
            ("rollout.max_p99_ratio", self.max_p99_ratio),
        ];
        for (key, v) in ratios {
            if !v.is_finite() || v < 1.0 {
                bad(key, format!("{v} must be a finite ratio of at least 1"));
            }
        }
        let fractions = [
            ("rollout.error_rate_floor", self.error_rate_floor),
            ("rollout.max_accuracy_drop", self.max_accuracy_drop),
        ];
        for (key, v) in fractions {
            if !v.is_finite() || !(0.0..1.0).contains(&v) {
                bad(key, format!("{v} must be a fraction in 0 ..< 1"));
            }
        }
        if !self.max_prediction_psi.is_finite() || self.max_prediction_psi <= 0.0 {
            bad(
                "rollout.max_prediction_psi",
                format!("{} must be above 0", self.max_prediction_psi),
            );
        }
        if !self.confidence_z.is_finite() || !(0.0..=6.0).contains(&self.confidence_z) {
            bad(
                "rollout.confidence_z",
                format!("{} is out of range: 0 ..= 6", self.confidence_z),
            );
        }
        if let Some(p) = self.split_percent {
            if let Err(e) = percent_to_bp("rollout.split_percent", p) {
                bad("rollout.split_percent", e.to_string());
            }
        }
        out
    }

    /// The configured split in basis points (validated config).
    pub fn split_bp(&self) -> Option<u32> {
        self.split_percent
            .and_then(|p| percent_to_bp("rollout.split_percent", p).ok())
    }

    /// Where the bad-version record lives.
    pub fn record_path(&self, state_dir: &Path) -> PathBuf {
        self.record_file
            .clone()
            .unwrap_or_else(|| state_dir.join("rollout").join("bad_versions.json"))
    }
}
