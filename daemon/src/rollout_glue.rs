//! The device side of a rollout inside the daemon: a verified directive in (the registry
//! agent hands over the bytes of `rollout/<name>.json`), the model table's routing out
//! ([`Control::serve_rollout`]), and every window the candidate arm judged against the
//! stable arm from the versions' own counters. A failed window rolls back at once (a
//! routing change: stable never left the table), is written to the bad-version record
//! before this returns, and is reported as a `model_rolled_back` event with its evidence.
//!
//! What is judged here, per arm (a version is in one arm at a time):
//! - error rate (engine errors and deadline misses, not the client's bad input) and p99
//!   latency, from the version's [`VersionStats`];
//! - accuracy from feedback: the labels FEEDBACK joined to the version's logged
//!   predictions in the window and how many it got right ([`telemetry_glue::quality`]);
//! - prediction drift: PSI of the version's predictions in the window against its bundle's
//!   output reference, from the same bins the drift windows count.
//!
//! The last two exist only with `[telemetry] enabled` (FEEDBACK and the drift counters are
//! telemetry's); without it they are not judged. [`RolloutGlue::window_with`] lets a
//! caller override them.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use edgeinfer_rollout::{
    ArmWindow, BadRecord, Baseline, Decision, DeviceRollout, Rollback, RolloutConfig,
    RolloutDirective, RolloutState, Serve, Verdict, WindowStats,
};

use crate::app::Control;
use crate::model_table::{Outcome, VersionStats, LATENCY_BOUNDS_S};
use crate::telemetry_glue::{self, VersionQuality};

/// A version's counters when its window opened.
#[derive(Debug, Clone, Default)]
struct Mark {
    requests: u64,
    errors: u64,
    latency: Vec<u64>,
    quality: VersionQuality,
}

impl Mark {
    fn of(model: &str, version: &str, s: &VersionStats) -> Mark {
        Mark {
            requests: s.total(),
            errors: version_errors(s),
            latency: s.latency.cumulative().0,
            quality: telemetry_glue::quality(model, version).unwrap_or_default(),
        }
    }
}

/// Failures a version is to blame for: not bad input, overload or shutdown.
fn version_errors(s: &VersionStats) -> u64 {
    s.count(Outcome::EngineError) + s.count(Outcome::DeadlineExceeded)
}

/// The p99 of the requests between two cumulative histograms, interpolated inside its
/// bucket; `None` without requests.
fn p99_us(now: &[u64], then: &[u64]) -> Option<u64> {
    let delta: Vec<u64> = now
        .iter()
        .enumerate()
        .map(|(i, c)| c.saturating_sub(then.get(i).copied().unwrap_or(0)))
        .collect();
    let total = *delta.last()?;
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * 0.99).ceil() as u64;
    let i = delta.iter().position(|&c| c >= rank)?;
    let upper = |i: usize| {
        LATENCY_BOUNDS_S
            .get(i)
            .copied()
            .unwrap_or(LATENCY_BOUNDS_S[LATENCY_BOUNDS_S.len() - 1] * 2.0)
            * 1e6
    };
    let (lo, hi) = (if i == 0 { 0.0 } else { upper(i - 1) }, upper(i));
    let below = if i == 0 { 0 } else { delta[i - 1] };
    let in_bucket = (delta[i] - below).max(1) as f64;
    Some((lo + (hi - lo) * (rank - below) as f64 / in_bucket) as u64)
}

/// The rollout state of this device, bound to its model table.
pub struct RolloutGlue {
    device: DeviceRollout,
    control: Control,
    marks: HashMap<(String, String), Mark>,
}

impl RolloutGlue {
    /// Opens the bad-version record (`[rollout] record_file`, else under `state_dir`); an
    /// unreadable one makes the device distrust the next candidate (see
    /// `edgeinfer_rollout::record`) and is handed back for the event log.
    pub fn open(
        device_id: &str,
        cfg: &RolloutConfig,
        state_dir: &Path,
        control: Control,
    ) -> (RolloutGlue, Option<edgeinfer_rollout::Error>) {
        let (record, err) = BadRecord::open_or_distrust(&cfg.record_path(state_dir));
        let glue = RolloutGlue {
            device: DeviceRollout::new(device_id, cfg.clone(), record),
            control,
            marks: HashMap::new(),
        };
        (glue, err)
    }

    pub fn record(&self) -> &BadRecord {
        self.device.record()
    }

    /// The candidate `model` serves now under the last applied directive, if any.
    pub fn candidate(&self, model: &str) -> Option<String> {
        let d = self.device.decision(model)?;
        d.serve.candidate().map(str::to_owned)
    }

    /// What the verified bytes of `rollout/<model>.json` decide for this device, without
    /// serving it or touching the record: for the registry agent, which installs every
    /// version in `Decision::install` before calling [`RolloutGlue::apply`].
    pub fn preview(&self, model: &str, bytes: &[u8]) -> anyhow::Result<Decision> {
        let d = RolloutDirective::parse_for(model, bytes)
            .with_context(|| format!("rollout/{model}.json"))?;
        Ok(edgeinfer_rollout::device::decide(
            &d,
            self.device.device_id(),
            self.device.record(),
            self.device.config(),
        ))
    }

    /// Takes the verified bytes of `rollout/<model>.json` and serves what they decide for
    /// this device. Every version in the decision's `install` must be in the table (the
    /// agent installs them first); otherwise nothing changes and the error says which.
    pub fn apply(
        &mut self,
        model: &str,
        bytes: &[u8],
        now_unix_s: u64,
    ) -> anyhow::Result<Decision> {
        let d = RolloutDirective::parse_for(model, bytes)
            .with_context(|| format!("rollout/{model}.json"))?;
        let (decision, record_err) = self.device.apply(d, now_unix_s);
        if let Some(e) = record_err {
            tracing::warn!(model, "writing the bad-version record: {e}");
        }
        self.control
            .serve_rollout(model, &decision.serve)
            .with_context(|| {
                format!(
                    "serving {model} as the directive says ({})",
                    decision.reason
                )
            })?;
        self.mark(model);
        self.report_state(model);
        Ok(decision)
    }

    /// Hands `model`'s arms and bad candidates to the retained status.
    fn report_state(&self, model: &str) {
        let serve = self.device.decision(model).map(|d| d.serve);
        let state = RolloutState::of(model, serve.as_ref(), self.device.record());
        crate::telemetry_glue::rollout_state(&state);
    }

    /// Starts a new window for `model`'s versions.
    fn mark(&mut self, model: &str) {
        let snap = self.control.table().snapshot();
        if let Some(slot) = snap.models.get(model) {
            for v in &slot.versions {
                self.marks.insert(
                    (model.to_owned(), v.version.clone()),
                    Mark::of(model, &v.version, &v.stats),
                );
            }
        }
    }

    /// `version`'s counts since its window opened.
    fn arm(&self, model: &str, version: &str) -> Option<ArmWindow> {
        let snap = self.control.table().snapshot();
        let v = snap
            .models
            .get(model)?
            .versions
            .iter()
            .find(|v| v.version == version)?;
        let key = (model.to_owned(), version.to_owned());
        let then = self.marks.get(&key).cloned().unwrap_or_default();
        let now = Mark::of(model, version, &v.stats);
        // Prediction drift is judged on no fewer rows than a window's requests, so a
        // handful of predictions cannot make a PSI past the limit by chance.
        let min_rows = self.device.config().min_requests;
        let (q, was) = (&now.quality, &then.quality);
        Some(ArmWindow {
            requests: now.requests.saturating_sub(then.requests),
            errors: now.errors.saturating_sub(then.errors),
            p99_us: p99_us(&now.latency, &then.latency),
            labelled: q.labelled.saturating_sub(was.labelled),
            correct: q.correct.saturating_sub(was.correct),
            prediction_psi: q.prediction_psi_since(was, min_rows),
        })
    }

    /// Closes `model`'s window: judges it from the versions' counters and rolls back on
    /// failure. Returns the verdict and, on a rollback, its evidence; a new window opens.
    pub fn window(
        &mut self,
        model: &str,
        baseline: &Baseline,
        now_unix_s: u64,
    ) -> (Verdict, Option<Rollback>) {
        self.window_with(model, baseline, now_unix_s, |_, _| {})
    }

    /// [`RolloutGlue::window`], letting `fill` add what the counters here do not hold
    /// (accuracy from feedback, prediction drift) to the stable and candidate arms.
    pub fn window_with(
        &mut self,
        model: &str,
        baseline: &Baseline,
        now_unix_s: u64,
        fill: impl FnOnce(&mut Option<ArmWindow>, &mut ArmWindow),
    ) -> (Verdict, Option<Rollback>) {
        let serve = self.device.decision(model).map(|d| d.serve);
        let (stable, candidate) = match &serve {
            Some(Serve::Split {
                stable, candidate, ..
            }) => (Some(stable.as_str()), candidate.as_str()),
            Some(Serve::Candidate { version }) => (None, version.as_str()),
            _ => {
                self.mark(model);
                return (
                    Verdict::NotJudged {
                        reason: "no candidate is served".into(),
                    },
                    None,
                );
            }
        };
        let mut stats = WindowStats {
            stable: stable.and_then(|s| self.arm(model, s)),
            candidate: self.arm(model, candidate).unwrap_or_default(),
        };
        fill(&mut stats.stable, &mut stats.candidate);
        let (verdict, rollback) = self.device.window(model, &stats, baseline, now_unix_s);
        if let Some(rb) = &rollback {
            if let Err(e) = self.control.serve_rollout(model, &rb.decision.serve) {
                tracing::error!(model, "rolling back to stable: {e:#}");
            }
            tracing::warn!(model, version = %rb.bad.version, "candidate rolled back: {}", rb.bad.reason);
            // The event carries the evidence in words (the failed signals and their limits);
            // the record on disk keeps it structured.
            let to = match &rb.decision.serve {
                Serve::Stable { version } | Serve::Candidate { version } => version.clone(),
                Serve::Split { stable, .. } => stable.clone(),
            };
            crate::telemetry_glue::emit(edgeinfer_telemetry::events::Event::ModelRolledBack {
                model: model.to_owned(),
                from: rb.bad.version.clone(),
                to,
                reason: rb.bad.reason.clone(),
            });
            self.report_state(model);
        }
        self.mark(model);
        (verdict, rollback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_read_from_the_bucket_deltas() {
        // 100 requests in the 20..30 µs bucket, then 100 more of which one is slow (≤ 1 s).
        let n = LATENCY_BOUNDS_S.len() + 1;
        let mut then = vec![0u64; n];
        for c in then.iter_mut().skip(4) {
            *c = 100;
        }
        let mut now = then.clone();
        for (i, c) in now.iter_mut().enumerate() {
            if i >= 4 {
                *c += 99;
            }
            if i >= 17 {
                *c += 1;
            }
        }
        let p = p99_us(&now, &then).unwrap();
        assert!((20..=30).contains(&p), "{p}");
        assert_eq!(p99_us(&then, &then), None);
    }
}
