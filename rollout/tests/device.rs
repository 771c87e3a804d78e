//! The device state machine and the bad-version record: canary membership, lowering the
//! percent, rollback within one window, no retry, and a record that survives a restart.

use std::path::Path;

use edgeinfer_rollout::bucket::bucket;
use edgeinfer_rollout::device::decide;
use edgeinfer_rollout::{
    ArmWindow, BadRecord, BadVersion, Baseline, Canary, Candidate, DeviceRollout, ErrorKind,
    InDeviceSplit, RolloutConfig, RolloutDirective, Serve, Verdict, WindowStats,
};

const NOW: u64 = 1_764_590_400;

fn directive(percent: f64, salt: &str, split: Option<f64>) -> RolloutDirective {
    RolloutDirective {
        model: "churn".into(),
        stable: "3".into(),
        candidate: Some(Candidate {
            version: "4".into(),
            canary: Canary {
                percent,
                salt: salt.into(),
            },
            split: split.map(|percent| InDeviceSplit { percent }),
        }),
        min_release_counter: 12,
    }
}

/// A device id whose bucket under `salt` is in `lo .. hi`.
fn device_in(salt: &str, lo: u32, hi: u32) -> String {
    (0..100_000)
        .map(|i| format!("box-{i}"))
        .find(|id| (lo..hi).contains(&bucket(salt.as_bytes(), id.as_bytes())))
        .expect("some device falls in the range")
}

fn record(dir: &Path) -> BadRecord {
    BadRecord::open(&dir.join("rollout/bad_versions.json")).expect("record opens")
}

/// A window in which the candidate errors on a tenth of its requests.
fn failing_window() -> WindowStats {
    WindowStats {
        stable: Some(ArmWindow {
            requests: 4000,
            errors: 20,
            p99_us: Some(800),
            ..ArmWindow::default()
        }),
        candidate: ArmWindow {
            requests: 2000,
            errors: 200,
            p99_us: Some(800),
            ..ArmWindow::default()
        },
    }
}

#[test]
fn canary_devices_take_the_candidate_and_the_rest_stay_on_stable() {
    let dir = tempfile::tempdir().unwrap();
    let rec = record(dir.path());
    let cfg = RolloutConfig::default();
    let d = directive(10.0, "churn-4", None);
    let inside = device_in("churn-4", 0, 1000);
    let outside = device_in("churn-4", 1000, 10_000);
    let a = decide(&d, &inside, &rec, &cfg);
    assert_eq!(
        a.serve,
        Serve::Candidate {
            version: "4".into()
        }
    );
    assert_eq!(
        a.install,
        ["3", "4"],
        "stable stays installed for a quick rollback"
    );
    assert_eq!(a.min_release_counter, 12);
    let b = decide(&d, &outside, &rec, &cfg);
    assert_eq!(
        b.serve,
        Serve::Stable {
            version: "3".into()
        }
    );
    assert_eq!(b.install, ["3"]);
}

#[test]
fn the_split_comes_from_the_directive_else_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let rec = record(dir.path());
    let id = device_in("s", 0, 5000);
    let with_config = RolloutConfig {
        split_percent: Some(20.0),
        ..RolloutConfig::default()
    };
    let split = |candidate_bp| Serve::Split {
        stable: "3".into(),
        candidate: "4".into(),
        candidate_bp,
        salt: "s".into(),
    };
    let d = decide(&directive(50.0, "s", Some(30.0)), &id, &rec, &with_config);
    assert_eq!(d.serve, split(3000));
    let d = decide(&directive(50.0, "s", None), &id, &rec, &with_config);
    assert_eq!(d.serve, split(2000));
}

#[test]
fn lowering_the_percent_returns_devices_to_stable() {
    let dir = tempfile::tempdir().unwrap();
    let rec = record(dir.path());
    let cfg = RolloutConfig::default();
    let fleet: Vec<String> = (0..1000).map(|i| format!("edge-{i:04}")).collect();
    let on_candidate = |percent: f64| -> Vec<&String> {
        let d = directive(percent, "churn-4", None);
        fleet
            .iter()
            .filter(|id| decide(&d, id, &rec, &cfg).serve.candidate().is_some())
            .collect()
    };
    let at_50 = on_candidate(50.0);
    let at_10 = on_candidate(10.0);
    assert!((400..600).contains(&at_50.len()), "{} at 50 %", at_50.len());
    assert!((60..140).contains(&at_10.len()), "{} at 10 %", at_10.len());
    // Every device still on the candidate at 10 % was on it at 50 %; the others went back.
    assert!(at_10.iter().all(|id| at_50.contains(id)));
    assert!(on_candidate(0.0).is_empty());
    // And a directive with no candidate at all returns every device to stable.
    let none = RolloutDirective::stable_only("churn", "3");
    assert!(fleet.iter().all(|id| decide(&none, id, &rec, &cfg).serve
        == Serve::Stable {
            version: "3".into()
        }));
}

#[test]
fn a_failed_window_rolls_back_and_the_candidate_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let id = device_in("churn-4", 0, 1000);
    let mut dev = DeviceRollout::new(&id, RolloutConfig::default(), record(dir.path()));
    let (d, err) = dev.apply(directive(10.0, "churn-4", Some(50.0)), NOW);
    assert!(err.is_none());
    assert_eq!(d.serve.candidate(), Some("4"));

    let (verdict, rollback) = dev.window("churn", &failing_window(), &Baseline::default(), NOW);
    assert!(verdict.is_fail());
    let rb = rollback.expect("the candidate is rolled back in the first failed window");
    assert!(rb.record_error.is_none());
    assert_eq!(
        rb.decision.serve,
        Serve::Stable {
            version: "3".into()
        }
    );
    assert_eq!(rb.bad.version, "4");
    assert!(rb.bad.reason.contains("error rate"), "{}", rb.bad.reason);
    assert!(!rb.bad.evidence.is_empty());

    // Advancing the percent is not a new trial: still stable.
    let (d, _) = dev.apply(directive(50.0, "churn-4", Some(50.0)), NOW);
    assert_eq!(
        d.serve,
        Serve::Stable {
            version: "3".into()
        }
    );
    assert!(d.reason.contains("not retried"), "{}", d.reason);
    // Nothing to judge any more.
    let (v, rb) = dev.window("churn", &failing_window(), &Baseline::default(), NOW);
    assert!(matches!(v, Verdict::NotJudged { .. }) && rb.is_none());

    // A new salt is a new trial; the device is in it if its bucket under the new salt is.
    let new_salt = (0..1000)
        .map(|i| format!("churn-4-retry-{i}"))
        .find(|s| bucket(s.as_bytes(), id.as_bytes()) < 1000)
        .unwrap();
    let (d, _) = dev.apply(directive(10.0, &new_salt, None), NOW);
    assert_eq!(
        d.serve,
        Serve::Candidate {
            version: "4".into()
        }
    );
}

#[test]
fn a_rollback_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = device_in("churn-4", 0, 1000);
    {
        let mut dev = DeviceRollout::new(&id, RolloutConfig::default(), record(dir.path()));
        dev.apply(directive(10.0, "churn-4", None), NOW);
        let (_, rb) = dev.window("churn", &failing_window(), &Baseline::default(), NOW);
        assert!(rb.is_some());
    }
    // A new process: only the file carries the memory.
    let rec = record(dir.path());
    assert!(rec.is_bad("churn", "4", "churn-4"));
    assert!(!rec.is_bad("churn", "4", "another-salt"));
    assert_eq!(rec.entries()[0].at_unix_s, NOW);
    let mut dev = DeviceRollout::new(&id, RolloutConfig::default(), rec);
    let (d, _) = dev.apply(directive(10.0, "churn-4", None), NOW);
    assert_eq!(
        d.serve,
        Serve::Stable {
            version: "3".into()
        }
    );
    // No temp file left behind by the atomic write.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("rollout"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["bad_versions.json"]);
}

#[test]
fn a_corrupt_record_is_a_typed_error_and_fails_safe_towards_stable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad_versions.json");
    std::fs::write(&path, b"{\"format\":1,\"bad\":[{\"model\":\"churn\",\"vers").unwrap();
    let err = BadRecord::open(&path).expect_err("a torn record does not open");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("bad_versions.json"), "{err}");

    let (rec, err) = BadRecord::open_or_distrust(&path);
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Corrupt));
    assert!(rec.distrusting());
    // A restart before any directive would find the same unreadable file: still distrusting.
    assert!(BadRecord::open_or_distrust(&path).0.distrusting());

    let id = device_in("churn-4", 0, 1000);
    let mut dev = DeviceRollout::new(&id, RolloutConfig::default(), rec);
    let (d, err) = dev.apply(directive(10.0, "churn-4", None), NOW);
    assert!(err.is_none());
    assert_eq!(
        d.serve,
        Serve::Stable {
            version: "3".into()
        }
    );
    assert!(d.reason.contains("unreadable"), "{}", d.reason);
    // The record is readable again, names the candidate, and the torn file was kept aside.
    let reopened = BadRecord::open(&path).expect("rewritten record opens");
    assert!(reopened.is_bad("churn", "4", "churn-4"));
    assert!(!reopened.distrusting());
    assert!(dir.path().join("bad_versions.json.corrupt").exists());
    // A later candidate is trialled normally.
    let mut next = directive(10.0, "churn-4", None);
    next.candidate.as_mut().unwrap().version = "5".into();
    let (d, _) = dev.apply(next, NOW);
    assert_eq!(
        d.serve,
        Serve::Candidate {
            version: "5".into()
        }
    );
}

#[test]
fn a_record_with_an_unknown_format_is_corrupt_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    std::fs::write(&path, b"{\"format\":9,\"bad\":[]}").unwrap();
    assert_eq!(
        BadRecord::open(&path).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
}

#[test]
fn marking_bad_twice_keeps_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = record(dir.path());
    let bad = BadVersion {
        model: "churn".into(),
        version: "4".into(),
        salt: "s".into(),
        at_unix_s: NOW,
        reason: "test".into(),
        evidence: Vec::new(),
    };
    rec.mark_bad(bad.clone()).unwrap();
    rec.mark_bad(bad).unwrap();
    assert_eq!(record(dir.path()).entries().len(), 1);
}
