//! The device side of a rollout: given a directive, this device's id and its bad-version
//! record, which versions to install and how to serve them; given a judged window, whether
//! to roll the candidate back.
//!
//! The rules, in order:
//! 1. no candidate → serve stable;
//! 2. the candidate failed on this device in this trial (same version, same salt) → stable:
//!    no retry until a new directive (a new version or a new salt) arrives;
//! 3. the device's bucket is not below the canary percent → stable (so a directive that
//!    lowers the percent returns devices above the new percent to stable);
//! 4. otherwise install the candidate beside stable and serve it, alone or split by routing
//!    key (the directive's split, else `rollout.split_percent`, else the candidate alone).
//!
//! Stable stays installed in every case, so a rollback is a routing change, not a download.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bucket::{bucket, BUCKETS};
use crate::config::RolloutConfig;
use crate::directive::RolloutDirective;
use crate::error::Error;
use crate::judge::{judge, Baseline, Failure, Verdict, WindowStats};
use crate::record::{BadRecord, BadVersion};

/// How a model's requests are served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "serve", rename_all = "snake_case")]
pub enum Serve {
    Stable {
        version: String,
    },
    Candidate {
        version: String,
    },
    /// Both, sticky by routing key: a key whose bucket under `salt` is below
    /// `candidate_bp` takes the candidate.
    Split {
        stable: String,
        candidate: String,
        candidate_bp: u32,
        salt: String,
    },
}

impl Serve {
    /// The candidate version this serves, if any.
    pub fn candidate(&self) -> Option<&str> {
        match self {
            Serve::Stable { .. } => None,
            Serve::Candidate { version } => Some(version),
            Serve::Split { candidate, .. } => Some(candidate),
        }
    }
}

/// What a device does for one model under one directive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub model: String,
    /// Versions to have installed (stable first); others may be retired.
    pub install: Vec<String>,
    pub serve: Serve,
    /// Passed on to the installer: releases below this counter are refused.
    pub min_release_counter: u64,
    /// Why, in words, for logs and events.
    pub reason: String,
}

/// Decides what `device_id` does under `d`, given its `record` (a pure function).
pub fn decide(
    d: &RolloutDirective,
    device_id: &str,
    record: &BadRecord,
    cfg: &RolloutConfig,
) -> Decision {
    let stable_only = |reason: String| Decision {
        model: d.model.clone(),
        install: vec![d.stable.clone()],
        serve: Serve::Stable {
            version: d.stable.clone(),
        },
        min_release_counter: d.min_release_counter,
        reason,
    };
    let Some(c) = &d.candidate else {
        return stable_only("the directive names no candidate".into());
    };
    let salt = &c.canary.salt;
    if record.is_bad(&d.model, &c.version, salt) {
        let why = match record.find(&d.model, &c.version, salt) {
            Some(b) => format!("rolled back on this device in this trial: {}", b.reason),
            None => "the bad-version record was unreadable".to_owned(),
        };
        return stable_only(format!(
            "candidate {:?} is not retried: {why}; a new version or salt starts a new trial",
            c.version
        ));
    }
    let b = bucket(salt.as_bytes(), device_id.as_bytes());
    let bp = c.canary_bp();
    if b >= bp {
        return stable_only(format!(
            "not in the canary: bucket {b} is not below {bp} of {BUCKETS}"
        ));
    }
    let install = vec![d.stable.clone(), c.version.clone()];
    let reason = format!("in the canary: bucket {b} is below {bp} of {BUCKETS}");
    let serve = match c.split_bp().or(cfg.split_bp()) {
        None | Some(BUCKETS) => Serve::Candidate {
            version: c.version.clone(),
        },
        Some(candidate_bp) => Serve::Split {
            stable: d.stable.clone(),
            candidate: c.version.clone(),
            candidate_bp,
            salt: salt.clone(),
        },
    };
    Decision {
        model: d.model.clone(),
        install,
        serve,
        min_release_counter: d.min_release_counter,
        reason,
    }
}

/// A candidate rolled back after a failed window: the evidence for the event, and what to
/// serve now.
#[derive(Debug)]
pub struct Rollback {
    pub bad: BadVersion,
    pub decision: Decision,
    /// Writing the record failed: the rollback holds in this process, but a restart might
    /// retry the candidate. The daemon reports it in the event.
    pub record_error: Option<Error>,
}

// === impl DeviceRollout ===

/// One device's rollout state across its models.
#[derive(Debug)]
pub struct DeviceRollout {
    device_id: String,
    cfg: RolloutConfig,
    record: BadRecord,
    directives: BTreeMap<String, RolloutDirective>,
}

impl DeviceRollout {
    pub fn new(device_id: impl Into<String>, cfg: RolloutConfig, record: BadRecord) -> Self {
        DeviceRollout {
            device_id: device_id.into(),
            cfg,
            record,
            directives: BTreeMap::new(),
        }
    }

    pub fn record(&self) -> &BadRecord {
        &self.record
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn config(&self) -> &RolloutConfig {
        &self.cfg
    }

    /// Takes a (verified, validated) directive and decides. A distrusting record (see
    /// [`crate::record`]) writes the directive's candidate down as bad first; an error doing
    /// so is handed back, and the decision still serves stable.
    pub fn apply(&mut self, d: RolloutDirective, now_unix_s: u64) -> (Decision, Option<Error>) {
        let mut err = None;
        if let (true, Some(c)) = (self.record.distrusting(), &d.candidate) {
            err = self
                .record
                .mark_bad(BadVersion {
                    model: d.model.clone(),
                    version: c.version.clone(),
                    salt: c.canary.salt.clone(),
                    at_unix_s: now_unix_s,
                    reason: "the bad-version record was unreadable: the candidate in flight \
                             is treated as bad"
                        .into(),
                    evidence: Vec::new(),
                })
                .err();
        }
        let decision = decide(&d, &self.device_id, &self.record, &self.cfg);
        self.directives.insert(d.model.clone(), d);
        (decision, err)
    }

    /// The current decision for `model`, if a directive for it has been applied.
    pub fn decision(&self, model: &str) -> Option<Decision> {
        let d = self.directives.get(model)?;
        Some(decide(d, &self.device_id, &self.record, &self.cfg))
    }

    /// Judges one window of `model`'s arms. `None` when nothing is rolled back (no
    /// candidate served, or the window passed or could not be judged); the verdict is
    /// returned either way for metrics.
    pub fn window(
        &mut self,
        model: &str,
        stats: &WindowStats,
        baseline: &Baseline,
        now_unix_s: u64,
    ) -> (Verdict, Option<Rollback>) {
        let Some(current) = self.decision(model) else {
            return (
                Verdict::NotJudged {
                    reason: format!("no directive for model {model:?}"),
                },
                None,
            );
        };
        let Some(candidate) = current.serve.candidate().map(str::to_owned) else {
            return (
                Verdict::NotJudged {
                    reason: "no candidate is served".into(),
                },
                None,
            );
        };
        let verdict = judge(stats, baseline, &self.cfg);
        let Verdict::Fail { failures } = &verdict else {
            return (verdict, None);
        };
        let salt = self.directives[model]
            .candidate
            .as_ref()
            .map(|c| c.canary.salt.clone())
            .unwrap_or_default();
        let bad = BadVersion {
            model: model.to_owned(),
            version: candidate,
            salt,
            at_unix_s: now_unix_s,
            reason: describe(failures),
            evidence: failures.clone(),
        };
        let record_error = self.record.mark_bad(bad.clone()).err();
        let decision = self.decision(model).expect("the directive was found above");
        (
            verdict,
            Some(Rollback {
                bad,
                decision,
                record_error,
            }),
        )
    }
}

/// One line naming each failed signal.
fn describe(failures: &[Failure]) -> String {
    let parts: Vec<String> = failures
        .iter()
        .map(|f| match f {
            Failure::ErrorRate {
                candidate, limit, ..
            } => format!("error rate {candidate:.4} above {limit:.4}"),
            Failure::P99Latency {
                candidate_us,
                limit_us,
                ..
            } => format!("p99 {candidate_us} µs above {limit_us} µs"),
            Failure::Accuracy {
                candidate, limit, ..
            } => format!("accuracy {candidate:.4} below {limit:.4}"),
            Failure::PredictionDrift {
                candidate_psi,
                limit,
                ..
            } => format!("prediction PSI {candidate_psi:.3} at or above {limit:.3}"),
        })
        .collect();
    parts.join("; ")
}
