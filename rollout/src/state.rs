//! What a device reports of its rollout in its retained `status` message
//! (`docs/telemetry/status.schema.json`, `rollout`): per model, the versions it serves in
//! which arm and the candidates recorded bad on it. `events` are not retained, so an
//! operator who subscribes after a rollback learns of it only from here; the fleet view
//! ([`crate::fleet::FleetView`]) reads the same type back.

use serde::{Deserialize, Serialize};

use crate::device::Serve;
use crate::record::BadRecord;

/// Bad candidates listed per model, newest first: the gate needs only the current trial's,
/// and the status stays small (the record keeps up to 256).
pub const MAX_BAD_LISTED: usize = 8;
/// A reason is cut to this many characters in the status; the record keeps it whole.
pub const MAX_REASON_CHARS: usize = 200;

/// One model's rollout on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    pub model: String,
    /// The versions served under the last applied directive, each with its arm.
    pub serving: Vec<ServedArm>,
    /// Candidates this device rolled back, newest first.
    pub bad: Vec<BadCandidate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedArm {
    pub version: String,
    /// `stable` or `candidate`.
    pub arm: String,
}

/// A [`crate::record::BadVersion`] as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadCandidate {
    pub version: String,
    /// The canary salt of the trial it failed in: a new salt is a new trial.
    pub salt: String,
    pub at_unix_s: u64,
    pub reason: String,
}

impl RolloutState {
    /// `model`'s state from what it serves (`None` before any directive) and the record.
    pub fn of(model: &str, serve: Option<&Serve>, record: &BadRecord) -> RolloutState {
        let arm = |version: &str, arm: &str| ServedArm {
            version: version.to_owned(),
            arm: arm.to_owned(),
        };
        let serving = match serve {
            None => Vec::new(),
            Some(Serve::Stable { version }) => vec![arm(version, "stable")],
            Some(Serve::Candidate { version }) => vec![arm(version, "candidate")],
            Some(Serve::Split {
                stable, candidate, ..
            }) => vec![arm(stable, "stable"), arm(candidate, "candidate")],
        };
        let bad = record
            .entries()
            .iter()
            .rev()
            .filter(|b| b.model == model)
            .take(MAX_BAD_LISTED)
            .map(|b| BadCandidate {
                version: b.version.clone(),
                salt: b.salt.clone(),
                at_unix_s: b.at_unix_s,
                reason: b.reason.chars().take(MAX_REASON_CHARS).collect(),
            })
            .collect();
        RolloutState {
            model: model.to_owned(),
            serving,
            bad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::BadVersion;

    fn bad(model: &str, version: &str, salt: &str, at: u64) -> BadVersion {
        BadVersion {
            model: model.into(),
            version: version.into(),
            salt: salt.into(),
            at_unix_s: at,
            reason: "x".repeat(MAX_REASON_CHARS + 50),
            evidence: Vec::new(),
        }
    }

    #[test]
    fn lists_the_models_bad_candidates_newest_first_bounded_and_the_served_arms() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = BadRecord::open(&dir.path().join("bad.json")).unwrap();
        for i in 0..(MAX_BAD_LISTED as u64 + 3) {
            r.mark_bad(bad("churn", &format!("v{i}"), "s", i)).unwrap();
        }
        r.mark_bad(bad("other", "9", "s", 100)).unwrap();
        let serve = Serve::Split {
            stable: "1".into(),
            candidate: "2".into(),
            candidate_bp: 5000,
            salt: "s".into(),
        };
        let s = RolloutState::of("churn", Some(&serve), &r);
        assert_eq!(
            s.serving,
            [
                ServedArm {
                    version: "1".into(),
                    arm: "stable".into()
                },
                ServedArm {
                    version: "2".into(),
                    arm: "candidate".into()
                }
            ]
        );
        assert_eq!(s.bad.len(), MAX_BAD_LISTED);
        assert_eq!(s.bad[0].version, format!("v{}", MAX_BAD_LISTED + 2));
        assert!(s
            .bad
            .iter()
            .all(|b| b.reason.chars().count() == MAX_REASON_CHARS));
        assert!(RolloutState::of("churn", None, &r).serving.is_empty());
        let back: RolloutState = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
