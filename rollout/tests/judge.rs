//! The per-window judge on synthetic windows: broken candidates fail within one window,
//! a healthy one survives 20 windows of reference traffic.

use edgeinfer_rollout::judge::judge;
use edgeinfer_rollout::{ArmWindow, Baseline, Failure, RolloutConfig, Verdict, WindowStats};

/// How an arm behaves: the truth the synthetic window samples from.
#[derive(Clone, Copy)]
struct Behaviour {
    error_rate: f64,
    p99_us: u64,
    accuracy: f64,
    psi: f64,
}

const REFERENCE: Behaviour = Behaviour {
    error_rate: 0.005,
    p99_us: 800,
    accuracy: 0.90,
    psi: 0.03,
};

/// One window of `requests` requests (a fifth of them labelled) drawn from `b`.
fn sample(rng: &mut fastrand::Rng, b: Behaviour, requests: u64) -> ArmWindow {
    let bernoulli =
        |rng: &mut fastrand::Rng, n: u64, p: f64| (0..n).filter(|_| rng.f64() < p).count() as u64;
    let labelled = requests / 5;
    // p99 of a healthy arm wanders ±15 % from window to window.
    let jitter = 0.85 + 0.30 * rng.f64();
    ArmWindow {
        requests,
        errors: bernoulli(rng, requests, b.error_rate),
        p99_us: Some((b.p99_us as f64 * jitter) as u64),
        labelled,
        correct: bernoulli(rng, labelled, b.accuracy),
        prediction_psi: Some(b.psi * (0.5 + rng.f64())),
    }
}

fn window(rng: &mut fastrand::Rng, candidate: Behaviour) -> WindowStats {
    WindowStats {
        stable: Some(sample(rng, REFERENCE, 4000)),
        candidate: sample(rng, candidate, 2000),
    }
}

fn failures(v: Verdict) -> Vec<Failure> {
    match v {
        Verdict::Fail { failures } => failures,
        other => panic!("expected a failed window, got {other:?}"),
    }
}

#[test]
fn healthy_candidate_survives_twenty_windows() {
    let cfg = RolloutConfig::default();
    for seed in 0..10 {
        let mut rng = fastrand::Rng::with_seed(seed);
        for w in 0..20 {
            let v = judge(&window(&mut rng, REFERENCE), &Baseline::default(), &cfg);
            assert_eq!(v, Verdict::Pass, "seed {seed}, window {w}");
        }
    }
}

#[test]
fn healthy_candidate_against_the_bundle_baseline_survives() {
    // A device serving the candidate alone: no stable arm, the bundle's numbers instead.
    let cfg = RolloutConfig::default();
    let baseline = Baseline {
        accuracy: Some(0.90),
        error_rate: Some(0.005),
        p99_us: Some(800),
    };
    let mut rng = fastrand::Rng::with_seed(7);
    for w in 0..20 {
        let stats = WindowStats {
            stable: None,
            candidate: sample(&mut rng, REFERENCE, 2000),
        };
        assert_eq!(judge(&stats, &baseline, &cfg), Verdict::Pass, "window {w}");
    }
}

#[test]
fn injected_errors_fail_in_one_window() {
    let mut rng = fastrand::Rng::with_seed(1);
    let bad = Behaviour {
        error_rate: 0.05,
        ..REFERENCE
    };
    let f = failures(judge(
        &window(&mut rng, bad),
        &Baseline::default(),
        &RolloutConfig::default(),
    ));
    assert!(
        matches!(f.as_slice(), [Failure::ErrorRate { candidate, limit, .. }] if candidate > limit),
        "{f:?}"
    );
}

#[test]
fn injected_latency_fails_in_one_window() {
    let mut rng = fastrand::Rng::with_seed(2);
    let slow = Behaviour {
        p99_us: 2000,
        ..REFERENCE
    };
    let f = failures(judge(
        &window(&mut rng, slow),
        &Baseline::default(),
        &RolloutConfig::default(),
    ));
    assert!(
        matches!(f.as_slice(), [Failure::P99Latency { .. }]),
        "{f:?}"
    );
}

#[test]
fn wrong_predictions_fail_in_one_window() {
    let mut rng = fastrand::Rng::with_seed(3);
    let wrong = Behaviour {
        accuracy: 0.78,
        ..REFERENCE
    };
    let f = failures(judge(
        &window(&mut rng, wrong),
        &Baseline::default(),
        &RolloutConfig::default(),
    ));
    assert!(matches!(f.as_slice(), [Failure::Accuracy { .. }]), "{f:?}");
}

#[test]
fn prediction_drift_of_the_candidate_alone_fails() {
    let mut rng = fastrand::Rng::with_seed(4);
    let drifting = Behaviour {
        psi: 0.5,
        ..REFERENCE
    };
    let mut stats = window(&mut rng, drifting);
    stats.candidate.prediction_psi = Some(0.4);
    let cfg = RolloutConfig::default();
    let f = failures(judge(&stats, &Baseline::default(), &cfg));
    assert!(
        matches!(f.as_slice(), [Failure::PredictionDrift { .. }]),
        "{f:?}"
    );
    // Drift both arms share is the input's, not the candidate's.
    stats.stable.as_mut().unwrap().prediction_psi = Some(0.35);
    assert_eq!(judge(&stats, &Baseline::default(), &cfg), Verdict::Pass);
}

#[test]
fn thresholds_are_configurable() {
    let mut rng = fastrand::Rng::with_seed(5);
    let slow = Behaviour {
        p99_us: 2000,
        ..REFERENCE
    };
    let stats = window(&mut rng, slow);
    let lenient = RolloutConfig {
        max_p99_ratio: 4.0,
        ..RolloutConfig::default()
    };
    assert_eq!(judge(&stats, &Baseline::default(), &lenient), Verdict::Pass);
}

#[test]
fn a_thin_window_is_not_judged() {
    let stats = WindowStats {
        stable: None,
        candidate: ArmWindow {
            requests: 50,
            errors: 50,
            ..ArmWindow::default()
        },
    };
    assert!(matches!(
        judge(&stats, &Baseline::default(), &RolloutConfig::default()),
        Verdict::NotJudged { .. }
    ));
}

#[test]
fn one_error_over_a_spotless_stable_arm_is_not_a_rollback() {
    let stats = WindowStats {
        stable: Some(ArmWindow {
            requests: 5000,
            ..ArmWindow::default()
        }),
        candidate: ArmWindow {
            requests: 1000,
            errors: 1,
            ..ArmWindow::default()
        },
    };
    assert_eq!(
        judge(&stats, &Baseline::default(), &RolloutConfig::default()),
        Verdict::Pass
    );
}

#[test]
fn accuracy_is_judged_against_the_stable_arm_when_it_has_labels() {
    // Live accuracy below the offline baseline on both arms (label delay, a new season) is
    // the traffic's: a candidate as good as stable passes, one well below stable fails.
    let cfg = RolloutConfig::default();
    let offline = Baseline {
        accuracy: Some(0.95),
        ..Baseline::default()
    };
    let live = Behaviour {
        accuracy: 0.85,
        ..REFERENCE
    };
    for seed in 0..10 {
        let mut rng = fastrand::Rng::with_seed(100 + seed);
        for w in 0..20 {
            let stats = WindowStats {
                stable: Some(sample(&mut rng, live, 4000)),
                candidate: sample(&mut rng, live, 2000),
            };
            assert_eq!(
                judge(&stats, &offline, &cfg),
                Verdict::Pass,
                "seed {seed}, window {w}"
            );
        }
    }
    let mut rng = fastrand::Rng::with_seed(9);
    let stats = WindowStats {
        stable: Some(sample(&mut rng, live, 4000)),
        candidate: sample(
            &mut rng,
            Behaviour {
                accuracy: 0.72,
                ..REFERENCE
            },
            2000,
        ),
    };
    let f = failures(judge(&stats, &offline, &cfg));
    match f.as_slice() {
        [Failure::Accuracy { baseline, .. }] => {
            assert!(
                (baseline - 0.85).abs() < 0.05,
                "judged against stable: {f:?}"
            )
        }
        _ => panic!("{f:?}"),
    }
    // Without enough stable labels the bundle's baseline is the reference.
    let mut few = stats;
    few.stable.as_mut().unwrap().labelled = cfg.min_labels - 1;
    few.candidate = sample(&mut rng, live, 2000);
    let f = failures(judge(&few, &offline, &cfg));
    assert!(
        matches!(f.as_slice(), [Failure::Accuracy { baseline, .. }] if *baseline == 0.95),
        "{f:?}"
    );
}
