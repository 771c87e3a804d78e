//! The fleet as the operator sees it: telemetry messages in (`<prefix>/<device>/status`,
//! `latency`, `accuracy`, `events`, as `docs/telemetry/` specifies them), a summary per
//! version out, and the gates `edgeinfer rollout advance` checks before it signs the next
//! step. No IO: the CLI subscribes to the broker and feeds [`FleetView::ingest`].
//!
//! The gates, like hawkBit's and Greengrass's abort thresholds but on model quality too:
//! 1. no device reported rolling the candidate back: live, by a `model_rolled_back` event,
//!    or in its retained status's `rollout.bad` (so a rollback is seen by an operator who
//!    subscribes after it happened; a recorded rollback counts only for the trial's salt);
//! 2. at least `min_canary_devices` devices report serving the candidate;
//! 3. the candidate's fleet-wide counts, judged against the stable version's by the same
//!    [`crate::judge::judge`] (and thresholds) the devices use, pass; too little traffic
//!    to judge is a refusal, not a pass.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::RolloutConfig;
use crate::directive::RolloutDirective;
use crate::judge::{judge, ArmWindow, Baseline, Verdict, WindowStats};
use crate::state::{BadCandidate, RolloutState, ServedArm};

/// Everything heard about one model's fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    model: String,
    devices: BTreeMap<String, DeviceSeen>,
}

#[derive(Debug, Clone, Default)]
struct DeviceSeen {
    online: bool,
    /// Versions of the model the device's last status listed.
    serving: BTreeSet<String>,
    /// Per version: (requests, errors, request-weighted p99 sum) over latency reports.
    latency: BTreeMap<String, (u64, u64, f64)>,
    /// Per version: (labels, correct) over accuracy reports.
    accuracy: BTreeMap<String, (u64, f64)>,
    rollbacks: Vec<RollbackSeen>,
    /// The last online status's `rollout` entry for the model: arms served, bad candidates.
    arms: Vec<ServedArm>,
    recorded: Vec<BadCandidate>,
}

/// A rollback: a `model_rolled_back` event heard live, or a bad candidate the device's
/// retained status lists (then `salt` and `at_unix_s` are known), or both.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollbackSeen {
    pub device: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    /// The trial's canary salt, from the status; `None` when only the event was heard.
    pub salt: Option<String>,
    pub at_unix_s: Option<u64>,
}

/// One version across the fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VersionSummary {
    /// Devices whose last status lists it.
    pub devices: u64,
    pub requests: u64,
    pub errors: u64,
    /// Request-weighted mean of the devices' p99 latencies.
    pub p99_us: Option<u64>,
    pub labels: u64,
    /// Label-weighted accuracy from feedback.
    pub accuracy: Option<f64>,
    /// Devices serving it, per arm (`stable`, `candidate`), from their statuses.
    pub arms: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetSummary {
    pub model: String,
    pub devices: u64,
    pub offline: u64,
    pub versions: BTreeMap<String, VersionSummary>,
    pub rollbacks: Vec<RollbackSeen>,
}

impl FleetView {
    pub fn new(model: &str) -> FleetView {
        FleetView {
            model: model.to_owned(),
            devices: BTreeMap::new(),
        }
    }

    /// Takes one message; messages about other models, other levels or that do not parse
    /// are ignored (the broker is shared and not every publisher is ours). Returns whether
    /// the message counted.
    pub fn ingest(&mut self, topic: &str, payload: &[u8]) -> bool {
        let mut levels = topic.rsplit('/');
        let (Some(level), Some(device)) = (levels.next(), levels.next()) else {
            return false;
        };
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return false;
        };
        let str_of = |k: &str| v.get(k).and_then(Value::as_str);
        let u64_of = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let ours = str_of("model") == Some(self.model.as_str());
        let d = self.devices.entry(device.to_owned()).or_default();
        match level {
            "status" => {
                d.online = str_of("state") != Some("offline");
                // The Last Will (`offline`) says nothing of the rollout: keep what the last
                // online status said. An online one without `rollout` has none.
                if d.online {
                    let state = v
                        .get("rollout")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|r| RolloutState::deserialize(r).ok())
                        .find(|r| r.model == self.model);
                    (d.arms, d.recorded) = state.map(|r| (r.serving, r.bad)).unwrap_or_default();
                }
                if let Some(models) = v.get("models").and_then(Value::as_array) {
                    d.serving = models
                        .iter()
                        .filter(|m| m.get("name").and_then(Value::as_str) == Some(&self.model))
                        .filter_map(|m| m.get("version").and_then(Value::as_str).map(Into::into))
                        .collect();
                }
                true
            }
            "latency" if ours => {
                let Some(version) = str_of("version") else {
                    return false;
                };
                let (count, ok) = (u64_of("count"), u64_of("ok"));
                let e = d.latency.entry(version.into()).or_default();
                e.0 += count;
                e.1 += count.saturating_sub(ok);
                e.2 += u64_of("p99_us") as f64 * count as f64;
                true
            }
            "accuracy" if ours => {
                let (Some(version), Some(value)) =
                    (str_of("version"), v.get("value").and_then(Value::as_f64))
                else {
                    return false;
                };
                let labels = u64_of("labels");
                let e = d.accuracy.entry(version.into()).or_default();
                e.0 += labels;
                e.1 += value * labels as f64;
                true
            }
            "events" if ours && str_of("type") == Some("model_rolled_back") => {
                d.rollbacks.push(RollbackSeen {
                    device: device.to_owned(),
                    from: str_of("from").unwrap_or_default().into(),
                    to: str_of("to").unwrap_or_default().into(),
                    reason: str_of("reason").unwrap_or_default().into(),
                    salt: None,
                    at_unix_s: None,
                });
                true
            }
            _ => false,
        }
    }

    pub fn summary(&self) -> FleetSummary {
        let mut s = FleetSummary {
            model: self.model.clone(),
            ..FleetSummary::default()
        };
        let mut p99_weight: BTreeMap<String, f64> = BTreeMap::new();
        let mut correct: BTreeMap<String, f64> = BTreeMap::new();
        for (id, d) in &self.devices {
            s.devices += 1;
            s.offline += (!d.online) as u64;
            for v in &d.serving {
                s.versions.entry(v.clone()).or_default().devices += 1;
            }
            for a in &d.arms {
                let e = s.versions.entry(a.version.clone()).or_default();
                *e.arms.entry(a.arm.clone()).or_default() += 1;
            }
            for (v, (req, err, p99w)) in &d.latency {
                let e = s.versions.entry(v.clone()).or_default();
                e.requests += req;
                e.errors += err;
                *p99_weight.entry(v.clone()).or_default() += p99w;
            }
            for (v, (labels, c)) in &d.accuracy {
                s.versions.entry(v.clone()).or_default().labels += labels;
                *correct.entry(v.clone()).or_default() += c;
            }
            s.rollbacks.extend(d.rollbacks_with_recorded(id));
        }
        for (v, e) in s.versions.iter_mut() {
            if e.requests > 0 {
                e.p99_us =
                    Some((p99_weight.get(v).copied().unwrap_or(0.0) / e.requests as f64) as u64);
            }
            if e.labels > 0 {
                e.accuracy = Some(correct.get(v).copied().unwrap_or(0.0) / e.labels as f64);
            }
        }
        s
    }
}

impl DeviceSeen {
    /// The rollbacks heard live, each completed by the status's record of it, then those
    /// only the record tells of.
    fn rollbacks_with_recorded(&self, device: &str) -> Vec<RollbackSeen> {
        let mut out = self.rollbacks.clone();
        let stable = self.arms.iter().find(|a| a.arm == "stable");
        for b in &self.recorded {
            match out
                .iter_mut()
                .find(|r| r.from == b.version && r.salt.is_none())
            {
                Some(r) => {
                    r.salt = Some(b.salt.clone());
                    r.at_unix_s = Some(b.at_unix_s);
                }
                None => out.push(RollbackSeen {
                    device: device.to_owned(),
                    from: b.version.clone(),
                    to: stable.map(|a| a.version.clone()).unwrap_or_default(),
                    reason: b.reason.clone(),
                    salt: Some(b.salt.clone()),
                    at_unix_s: Some(b.at_unix_s),
                }),
            }
        }
        out
    }
}

impl VersionSummary {
    /// This version's fleet-wide counts as one judging window.
    pub fn as_window(&self) -> ArmWindow {
        ArmWindow {
            requests: self.requests,
            errors: self.errors,
            p99_us: self.p99_us,
            labelled: self.labels,
            correct: self
                .accuracy
                .map(|a| (a * self.labels as f64).round() as u64)
                .unwrap_or(0),
            prediction_psi: None,
        }
    }
}

/// What `rollout advance` requires besides the judge's thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Gates {
    pub min_canary_devices: u64,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            min_canary_devices: 1,
        }
    }
}

/// Why the next step may not be signed; empty = it may.
pub fn check_gates(
    summary: &FleetSummary,
    directive: &RolloutDirective,
    cfg: &RolloutConfig,
    gates: &Gates,
) -> Vec<String> {
    let mut refusals = Vec::new();
    let Some(c) = &directive.candidate else {
        refusals.push("the directive has no candidate to advance".into());
        return refusals;
    };
    let rolled_back: Vec<&RollbackSeen> = summary
        .rollbacks
        .iter()
        // A recorded rollback from an earlier trial (another salt) does not block this one.
        .filter(|r| r.from == c.version && r.salt.as_ref().is_none_or(|s| *s == c.canary.salt))
        .collect();
    if !rolled_back.is_empty() {
        let devices: Vec<&str> = rolled_back.iter().map(|r| r.device.as_str()).collect();
        refusals.push(format!(
            "{} device(s) rolled candidate {} back: {} (first reason: {})",
            rolled_back.len(),
            c.version,
            devices.join(", "),
            rolled_back[0].reason
        ));
    }
    let none = VersionSummary::default();
    let cand = summary.versions.get(&c.version).unwrap_or(&none);
    if cand.devices < gates.min_canary_devices {
        refusals.push(format!(
            "{} device(s) report serving candidate {}, fewer than the {} required",
            cand.devices, c.version, gates.min_canary_devices
        ));
    }
    let stable = summary.versions.get(&directive.stable);
    let window = WindowStats {
        stable: stable.map(VersionSummary::as_window),
        candidate: cand.as_window(),
    };
    match judge(&window, &Baseline::default(), cfg) {
        Verdict::Pass => {}
        Verdict::NotJudged { reason } => refusals.push(format!(
            "not enough evidence on candidate {}: {reason}",
            c.version
        )),
        Verdict::Fail { failures } => {
            for f in failures {
                refusals.push(format!(
                    "candidate {} fails across the fleet: {}",
                    c.version,
                    serde_json::to_string(&f).unwrap_or_default()
                ));
            }
        }
    }
    refusals
}
