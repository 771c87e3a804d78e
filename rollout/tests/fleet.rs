//! The operator's fleet view from telemetry messages, and the gates of `rollout advance`.

use edgeinfer_rollout::fleet::{check_gates, FleetView, Gates};
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
