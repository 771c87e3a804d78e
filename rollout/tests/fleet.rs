//! The operator's fleet view from telemetry messages, and the gates of `rollout advance`.

use edgeinfer_rollout::fleet::{check_gates, FleetSummary, FleetView, Gates};
use edgeinfer_rollout::{Canary, Candidate, RolloutConfig, RolloutDirective};
use serde_json::json;

fn directive() -> RolloutDirective {
    RolloutDirective {
        model: "churn".into(),
        stable: "3".into(),
        candidate: Some(Candidate {
            version: "4".into(),
            canary: Canary {
                percent: 10.0,
                salt: "s".into(),
            },
            split: None,
        }),
        min_release_counter: 0,
    }
}

fn send(view: &mut FleetView, device: &str, level: &str, body: serde_json::Value) -> bool {
    view.ingest(
        &format!("edgeinfer/{device}/{level}"),
        body.to_string().as_bytes(),
    )
}

/// `devices` devices on `version`, each reporting `requests` requests with `errors` errors,
/// p99 `p99_us`, and accuracy `acc` over 300 labels.
fn report(
    view: &mut FleetView,
    first: usize,
    devices: usize,
    version: &str,
    errors: u64,
    p99_us: u64,
    acc: f64,
) {
    for i in first..first + devices {
        let dev = format!("edge-{i:04}");
        let status = json!({"state": "online", "models": [{"name": "churn", "version": version, "default": true}]});
        assert!(send(view, &dev, "status", status));
        let latency = json!({"model": "churn", "version": version, "arm": "default",
                             "count": 1000, "ok": 1000 - errors, "p99_us": p99_us});
        assert!(send(view, &dev, "latency", latency));
        let accuracy = json!({"model": "churn", "version": version, "arm": "default",
                              "value": acc, "labels": 300});
        assert!(send(view, &dev, "accuracy", accuracy));
    }
}

#[test]
fn the_documented_telemetry_examples_are_understood() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/telemetry/examples");
    let mut view = FleetView::new("churn");
    for level in ["status", "latency", "accuracy"] {
        let bytes = std::fs::read(format!("{dir}/{level}.json")).unwrap();
        assert!(
            view.ingest(&format!("edgeinfer/edge-0042/{level}"), &bytes),
            "{level}"
        );
    }
    let s = view.summary();
    let v3 = &s.versions["3"];
    assert_eq!(
        (s.devices, v3.devices, v3.requests, v3.errors),
        (1, 1, 1523, 2)
    );
    assert_eq!(v3.p99_us, Some(410));
    assert_eq!(v3.labels, 500);
    // The status's rollout state: arms, and the candidate it recorded bad.
    assert_eq!(v3.arms["candidate"], 1);
    assert_eq!(s.rollbacks.len(), 1, "{:?}", s.rollbacks);
    let rb = &s.rollbacks[0];
    assert_eq!(
        (rb.from.as_str(), rb.to.as_str(), rb.salt.as_deref()),
        ("2", "", Some("2026-11-a"))
    );
}

#[test]
fn a_healthy_canary_passes_the_gates() {
    let mut view = FleetView::new("churn");
    report(&mut view, 0, 90, "3", 2, 400, 0.90);
    report(&mut view, 90, 10, "4", 2, 420, 0.91);
    // Noise from elsewhere on the broker is ignored.
    assert!(!send(
        &mut view,
        "edge-0001",
        "latency",
        json!({"model": "fraud", "version": "1", "count": 9})
    ));
    assert!(!view.ingest("edgeinfer/edge-0001/latency", b"not json"));
    let s = view.summary();
    assert_eq!(
        (s.devices, s.versions["3"].devices, s.versions["4"].devices),
        (100, 90, 10)
    );
    let refusals = check_gates(
        &s,
        &directive(),
        &RolloutConfig::default(),
        &Gates::default(),
    );
    assert!(refusals.is_empty(), "{refusals:?}");
}

#[test]
fn a_rollback_anywhere_stops_the_rollout() {
    let mut view = FleetView::new("churn");
    report(&mut view, 0, 90, "3", 2, 400, 0.90);
    report(&mut view, 90, 10, "4", 2, 420, 0.90);
    send(
        &mut view,
        "edge-0093",
        "events",
        json!({"type": "model_rolled_back", "model": "churn",
         "from": "4", "to": "3", "reason": "p99 2100 µs above 1200 µs"}),
    );
    let s = view.summary();
    assert_eq!(s.rollbacks.len(), 1);
    let refusals = check_gates(
        &s,
        &directive(),
        &RolloutConfig::default(),
        &Gates::default(),
    );
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0].contains("edge-0093") && refusals[0].contains("p99"),
        "{refusals:?}"
    );
}

#[test]
fn a_worse_candidate_fails_the_fleet_wide_judge() {
    let mut view = FleetView::new("churn");
    report(&mut view, 0, 90, "3", 2, 400, 0.90);
    report(&mut view, 90, 10, "4", 2, 400, 0.70);
    let refusals = check_gates(
        &view.summary(),
        &directive(),
        &RolloutConfig::default(),
        &Gates::default(),
    );
    assert!(
        refusals.iter().any(|r| r.contains("accuracy")),
        "{refusals:?}"
    );
}

#[test]
fn no_evidence_is_a_refusal_not_a_pass() {
    let mut view = FleetView::new("churn");
    report(&mut view, 0, 90, "3", 2, 400, 0.90);
    let refusals = check_gates(
        &view.summary(),
        &directive(),
        &RolloutConfig::default(),
        &Gates::default(),
    );
    assert!(
        refusals
            .iter()
            .any(|r| r.contains("fewer than the 1 required")),
        "{refusals:?}"
    );
    assert!(
        refusals.iter().any(|r| r.contains("not enough evidence")),
        "{refusals:?}"
    );
    let none = RolloutDirective::stable_only("churn", "3");
    assert_eq!(
        check_gates(
            &view.summary(),
            &none,
            &RolloutConfig::default(),
            &Gates::default()
        )
        .len(),
        1
    );
}

#[test]
fn an_offline_device_is_counted_as_such() {
    let mut view = FleetView::new("churn");
    report(&mut view, 0, 2, "3", 0, 400, 0.9);
    send(
        &mut view,
        "edge-0001",
        "status",
        json!({"state": "offline"}),
    );
    let s = view.summary();
    assert_eq!((s.devices, s.offline), (2, 1));
}

/// A canary device's retained status after it rolled `4` back in the trial salted `salt`.
fn rolled_back_status(salt: &str) -> serde_json::Value {
    json!({"state": "online",
           "models": [{"name": "churn", "version": "3", "default": true}],
           "rollout": [
               {"model": "fraud", "serving": [], "bad": [
                   {"version": "4", "salt": "s", "at_unix_s": 1, "reason": "other model"}]},
               {"model": "churn",
                "serving": [{"version": "3", "arm": "stable"}],
                "bad": [{"version": "4", "salt": salt, "at_unix_s": 1764579700,
                         "reason": "error rate 0.2 above 0.004"}]}]})
}

/// 90 devices on stable 3, 10 on a healthy candidate 4.
fn healthy_canary() -> FleetView {
    let mut view = FleetView::new("churn");
    report(&mut view, 0, 90, "3", 2, 400, 0.90);
    report(&mut view, 90, 10, "4", 2, 420, 0.91);
    view
}

fn default_gates(s: &FleetSummary) -> Vec<String> {
    check_gates(
        s,
        &directive(),
        &RolloutConfig::default(),
        &Gates::default(),
    )
}

#[test]
fn a_rollback_only_the_retained_status_tells_of_stops_the_rollout() {
    // The operator subscribed after the rollback: no event, only the retained status.
    let mut view = healthy_canary();
    assert!(send(
        &mut view,
        "edge-0093",
        "status",
        rolled_back_status("s")
    ));
    let s = view.summary();
    assert_eq!(s.rollbacks.len(), 1, "{:?}", s.rollbacks);
    let rb = &s.rollbacks[0];
    assert_eq!(
        (rb.device.as_str(), rb.from.as_str(), rb.to.as_str()),
        ("edge-0093", "4", "3")
    );
    assert_eq!(
        (rb.salt.as_deref(), rb.at_unix_s),
        (Some("s"), Some(1764579700))
    );
    assert_eq!(s.versions["3"].arms["stable"], 1);
    let refusals = default_gates(&s);
    assert!(
        refusals
            .iter()
            .any(|r| r.contains("rolled candidate 4 back: edge-0093") && r.contains("error rate")),
        "{refusals:?}"
    );

    // The device going offline (its Last Will replaces the retained status) keeps what its
    // last online status recorded.
    send(
        &mut view,
        "edge-0093",
        "status",
        json!({"state": "offline"}),
    );
    assert_eq!(view.summary().rollbacks.len(), 1);
}

#[test]
fn the_same_rollback_heard_live_and_retained_counts_once() {
    let mut view = FleetView::new("churn");
    send(
        &mut view,
        "edge-0093",
        "events",
        json!({"type": "model_rolled_back", "model": "churn",
               "from": "4", "to": "3", "reason": "error rate 0.2 above 0.004"}),
    );
    send(&mut view, "edge-0093", "status", rolled_back_status("s"));
    let s = view.summary();
    assert_eq!(s.rollbacks.len(), 1, "{:?}", s.rollbacks);
    assert_eq!(s.rollbacks[0].salt.as_deref(), Some("s"));
}

#[test]
fn a_rollback_recorded_in_an_earlier_trial_does_not_block_a_new_one() {
    let mut view = healthy_canary();
    send(
        &mut view,
        "edge-0093",
        "status",
        rolled_back_status("old-salt"),
    );
    let s = view.summary();
    assert_eq!(s.rollbacks.len(), 1);
    let refusals = default_gates(&s);
    assert!(refusals.is_empty(), "{refusals:?}");
}
