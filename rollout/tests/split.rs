//! The in-device split: sticky by routing key, converging to the configured ratio.

use edgeinfer_rollout::bucket::{random_point, Arm};

/// χ² (one degree of freedom) of `candidate` hits among `n` against share `p`.
fn chi2(candidate: u64, n: u64, p: f64) -> f64 {
    let (c, s) = (candidate as f64, (n - candidate) as f64);
    let (ec, es) = (p * n as f64, (1.0 - p) * n as f64);
    (c - ec).powi(2) / ec + (s - es).powi(2) / es
}

#[test]
fn keyed_split_converges_to_the_ratio() {
    let n = 100_000u64;
    for bp in [5000u32, 1000, 100, 9000] {
        let cand = (0..n)
            .filter(|i| {
                Arm::for_key("salt-1", format!("user-{i}").as_bytes(), bp) == Arm::Candidate
            })
            .count() as u64;
        let x = chi2(cand, n, bp as f64 / 10_000.0);
        // 10.83 is χ²(1) at p = 0.001: the keys are fixed, so this is deterministic.
        assert!(
            x < 10.83,
            "{bp} bp: {cand} of {n} on the candidate, χ² = {x:.2}"
        );
    }
}

#[test]
fn unkeyed_split_converges_to_the_ratio() {
    let n = 100_000u64;
    let bp = 2500u32;
    let cand = (0..n)
        .filter(|_| Arm::for_key("salt-1", b"", bp) == Arm::Candidate)
        .count() as u64;
    let x = chi2(cand, n, 0.25);
    // Random draws: 23.9 is χ²(1) at p = 1e-6, so a correct generator fails once in a million runs.
    assert!(x < 23.9, "{cand} of {n} on the candidate, χ² = {x:.2}");
    assert!(random_point(0) == 0);
}

#[test]
fn a_key_always_gets_the_same_arm() {
    for i in 0..2_000 {
        let key = format!("user-{i}");
        let first = Arm::for_key("salt-1", key.as_bytes(), 5000);
        for _ in 0..5 {
            assert_eq!(Arm::for_key("salt-1", key.as_bytes(), 5000), first, "{key}");
        }
        // Raising the candidate's share never moves a key back to stable.
        if first == Arm::Candidate {
            assert_eq!(Arm::for_key("salt-1", key.as_bytes(), 7500), Arm::Candidate);
        }
    }
}

#[test]
fn both_arms_are_used_and_the_salt_redraws_them() {
    let arms = |salt: &str| -> Vec<Arm> {
        (0..1000)
            .map(|i| Arm::for_key(salt, format!("user-{i}").as_bytes(), 5000))
            .collect()
    };
    let a = arms("one");
    assert!(a.contains(&Arm::Stable) && a.contains(&Arm::Candidate));
    let moved = a.iter().zip(arms("two")).filter(|(x, y)| **x != *y).count();
    // A fresh salt re-draws about half the keys.
    assert!(
        (350..650).contains(&moved),
        "{moved} of 1000 keys changed arm"
    );
}
