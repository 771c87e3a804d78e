//! The daemon's `[rollout]` section is the rollout crate's type: its keys parse, its
//! unknown keys are refused, and its validation problems come out of the daemon's config
//! validation under their full key.

use edgeinferd::config::{Config, RolloutConfig};

#[test]
fn rollout_section_parses_into_the_crate_type() {
    let c = Config::from_toml_str("[rollout]\nwindow_s = 60\nsplit_percent = 25.0\n").unwrap();
    assert_eq!(c.rollout.window_s, 60);
    assert_eq!(c.rollout.split_bp(), Some(2500));
    assert_eq!(
        c.rollout.max_p99_ratio,
        RolloutConfig::default().max_p99_ratio
    );
    c.validate().expect("a valid [rollout] section");
    // An absent section is the defaults.
    assert_eq!(
        Config::from_toml_str("").unwrap().rollout,
        RolloutConfig::default()
    );
}

#[test]
fn unknown_rollout_keys_are_refused() {
    let e = Config::from_toml_str("[rollout]\nwindow = 60\n").unwrap_err();
    assert!(format!("{e:#}").contains("window"), "{e:#}");
}

#[test]
fn rollout_problems_surface_in_daemon_validation() {
    let c =
        Config::from_toml_str("[rollout]\nmax_p99_ratio = 0.9\nsplit_percent = 100.001\n").unwrap();
    let e = c.validate().unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["rollout.max_p99_ratio", "rollout.split_percent"]);
}
