//! `[rollout]`: defaults as documented, unknown keys refused, every problem reported.

use edgeinfer_rollout::RolloutConfig;

#[derive(serde::Deserialize)]
struct File {
    rollout: RolloutConfig,
}

#[test]
fn the_documented_section_parses_to_the_defaults() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/rollout.md"))
        .unwrap();
    let start = doc
        .find("```toml\n[rollout]")
        .expect("the [rollout] example")
        + 8;
    let end = start + doc[start..].find("```").unwrap();
    let f: File = toml::from_str(&doc[start..end]).expect("the documented section parses");
    assert_eq!(f.rollout, RolloutConfig::default());
    assert!(f.rollout.validate().is_empty());
}

#[test]
fn unknown_keys_are_refused() {
    let e = toml::from_str::<File>("[rollout]\nmax_p99_ration = 2.0\n")
        .err()
        .unwrap();
    assert!(e.to_string().contains("max_p99_ration"), "{e}");
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let f: File = toml::from_str(
        "[rollout]\nwindow_s = 0\nmin_requests = 0\nmax_p99_ratio = 0.5\nmax_accuracy_drop = 1.5\n\
         split_percent = 120.0\nconfidence_z = -1.0\nmax_prediction_psi = 0.0\n",
    )
    .unwrap();
    let keys: Vec<&str> = f.rollout.validate().iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        [
            "rollout.window_s",
            "rollout.min_requests",
            "rollout.max_p99_ratio",
            "rollout.max_accuracy_drop",
            "rollout.max_prediction_psi",
            "rollout.confidence_z",
            "rollout.split_percent",
        ]
    );
}

#[test]
fn the_record_lives_under_the_state_dir_by_default() {
    let c = RolloutConfig::default();
    assert_eq!(
        c.record_path(std::path::Path::new("/var/lib/edgeinfer")),
        std::path::Path::new("/var/lib/edgeinfer/rollout/bad_versions.json")
    );
}
