//! Per-arm telemetry on the control thread's side, through the real LMDB outbox: a
//! version's drift window carries the arm it serves in, accuracy windows are per arm, and a
//! version monitored from its bundle uses the bundle's accuracy window (labels, drop) over
//! the box's settings.

use std::sync::Arc;

use edgeinfer_telemetry::accuracy::{Baseline, Metric};
use edgeinfer_telemetry::drift::{DriftCounts, FeatureRef, ReferenceStats};
use edgeinfer_telemetry::hub::{Hub, HubSettings};
use edgeinfer_telemetry::messages::Topics;
use edgeinfer_telemetry::{ModelMonitoring, Outbox, OutboxLimits, SystemClock};

fn hub(dir: &std::path::Path) -> (Hub, Arc<Outbox>) {
    let limits = OutboxLimits {
        max_bytes: 64 << 20,
        max_age_ms: 24 * 3600 * 1000,
    };
    let outbox = Arc::new(Outbox::open(dir, limits, Arc::new(SystemClock)).unwrap());
    let settings = HubSettings {
        interval_ms: 0,
        drift_window_rows: 100,
        accuracy_window_labels: 100,
        accuracy_max_relative_drop: 0.05,
    };
    let topics = Topics {
        prefix: "t".into(),
        device: "d".into(),
    };
    (
        Hub::new(topics, outbox.clone(), Arc::new(SystemClock), settings),
        outbox,
    )
}

/// Payloads committed on `level`, in order.
fn payloads(outbox: &Outbox, level: &str) -> Vec<serde_json::Value> {
    outbox
        .next_after(None, 10_000)
        .unwrap()
        .into_iter()
        .filter(|m| m.topic == format!("t/d/{level}"))
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

fn baseline() -> Baseline {
    Baseline {
        metric: Metric::Accuracy,
        value: 0.9,
    }
}

#[test]
fn drift_windows_carry_the_arm_and_accuracy_windows_are_per_arm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut hub, outbox) = hub(dir.path());
    let labels = [0i64, 1, 1, 0, 1, 0, 0, 1];
    let reference = ReferenceStats {
        features: vec![],
        outputs: vec![FeatureRef::categorical_from_samples("label", 0, &labels, 2)],
    };
    hub.add_version("churn", "1", None, Some(baseline()));
    hub.add_version("churn", "2", Some(reference.clone()), Some(baseline()));
    hub.set_arm("churn", "1", "stable");
    hub.set_arm("churn", "2", "candidate");
    let mut c = DriftCounts::for_reference(&reference);
    for i in 0..200 {
        c.observe_row(&reference, &[], &[(i % 2) as f64]);
    }
    hub.add_drift("churn", "2", &c);
    hub.tick().unwrap();
    let drift = payloads(&outbox, "drift");
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(
        (&drift[0]["version"], &drift[0]["arm"]),
        (&"2".into(), &"candidate".into())
    );

    // 100 labels per arm close one window each; the candidate's are all wrong.
    for i in 0..100 {
        let truth = (i % 2) as f64;
        hub.feedback("churn", "1", "stable", truth, truth).unwrap();
        hub.feedback("churn", "2", "candidate", 1.0 - truth, truth)
            .unwrap();
    }
    let acc = payloads(&outbox, "accuracy");
    let arm = |a: &str| acc.iter().find(|p| p["arm"] == a).unwrap().clone();
    assert_eq!(acc.len(), 2, "{acc:?}");
    assert_eq!(
        (&arm("stable")["version"], &arm("stable")["alert"]),
        (&"1".into(), &false.into())
    );
    assert_eq!(
        (&arm("candidate")["version"], &arm("candidate")["alert"]),
        (&"2".into(), &true.into())
    );
    let alerts: Vec<_> = payloads(&outbox, "events")
        .into_iter()
        .filter(|e| e["type"] == "accuracy_alert")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["arm"], "candidate");
}

#[test]
fn a_bundle_accuracy_window_overrides_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (mut hub, outbox) = hub(dir.path());
    hub.add_monitored(
        "churn",
        "7",
        ModelMonitoring {
            baseline: Some(baseline()),
            accuracy_window_labels: Some(20),
            accuracy_max_relative_drop: Some(0.5),
            ..ModelMonitoring::default()
        },
    );
    assert_eq!(hub.accuracy_window("churn", "7"), Some((20, 0.5)));
    // 40 labels, 30 % wrong: two windows of 20 (not one of the settings' 100), and a 33 %
    // drop is within the bundle's 50 % (the settings' 5 % would alert).
    for i in 0..40u32 {
        let wrong = i % 10 < 3;
        hub.feedback("churn", "7", "default", wrong as u8 as f64, 0.0)
            .unwrap();
    }
    let acc = payloads(&outbox, "accuracy");
    assert_eq!(acc.len(), 2, "{acc:?}");
    for a in &acc {
        assert_eq!(a["labels"], 20);
        assert!((a["value"].as_f64().unwrap() - 0.7).abs() < 1e-9, "{a}");
        assert_eq!(a["alert"], false, "{a}");
    }
    // A version without its own window keeps the settings'.
    hub.add_version("churn", "8", None, Some(baseline()));
    assert_eq!(hub.accuracy_window("churn", "8"), Some((100, 0.05)));
}
