//! The attack suite against the running daemon: each case is set up on a real signed
//! repository on disk, the agent polls it, and the daemon must keep serving its last good
//! version (asked over its Unix socket) and report a refusal naming the cause. After most
//! attacks a good release is published and installs, so a refusal never wedges the agent.

mod registry_support;

use edgeinfer_registry::agent::RejectKind;
use edgeinfer_registry::tuf::testrepo::{Signer, NOW};
use edgeinfer_registry::tuf::ErrorKind;
use registry_support::*;

fn start(env: &Env) -> Daemon {
    let d = Daemon::start(&env.config(env.repo_dir().to_str().unwrap()), clock());
    d.assert_serving("1");
    d
}

#[test]
fn tampered_and_substituted_files_are_refused() {
    let mut env = Env::new();
    let d = start(&env);
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    env.write();
    let model = env.target_file("models/churn/2/model.onnx");
    let good = std::fs::read(&model).unwrap();
    // Tampered: the same length, one byte changed.
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    std::fs::write(&model, &bad).unwrap();
    let n = d.event_count();
    d.poll();
    let why = expect_rejection(&d, n, "a tampered model", |k| {
        *k == RejectKind::Target(ErrorKind::LengthOrHash)
    });
    assert!(
        why.contains("models/churn/2/model.onnx") && why.contains("sha256"),
        "{why}"
    );
    d.assert_serving("1");
    // Substituted: version 1's bundle served as version 2's.
    std::fs::write(&model, &good).unwrap();
    let b1 = std::fs::read(env.target_file("models/churn/1/bundle.json")).unwrap();
    let b2 = env.target_file("models/churn/2/bundle.json");
    let good_bundle = std::fs::read(&b2).unwrap();
    std::fs::write(&b2, &b1).unwrap();
    let n = d.event_count();
    d.poll();
    expect_rejection(&d, n, "a substituted bundle", |k| {
        matches!(
            k,
            RejectKind::Target(ErrorKind::LengthOrHash | ErrorKind::TooLarge)
        )
    });
    d.assert_serving("1");
    // The mirror stops lying: the signed version installs.
    std::fs::write(&b2, &good_bundle).unwrap();
    release_and_serve(&mut env, &d, "3", 3);
}

#[test]
fn bad_signatures_too_few_and_a_key_counted_twice_are_refused() {
    let mut env = Env::new();
    let d = start(&env);
    // Targets signed by a key root does not name (seed 4 is the real targets key).
    env.repo
        .signers
        .insert("targets".into(), vec![Signer::new(200)]);
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    env.write();
    let n = d.event_count();
    d.poll();
    let why = expect_rejection(
        &d,
        n,
        "an unknown signing key",
        metadata_kind(ErrorKind::Signature),
    );
    assert!(why.contains("targets"), "{why}");
    d.assert_serving("1");

    // Root v2 raises targets' threshold to 2 (keys 4 and 50); sign with one of them only.
    env.repo.add_root_key("targets", Signer::new(50));
    env.repo.root()["roles"]["targets"]["threshold"] = 2.into();
    env.repo.publish(&["root"]);
    env.repo
        .signers
        .insert("targets".into(), vec![Signer::new(4)]);
    env.repo.publish(&["targets", "snapshot", "timestamp"]);
    env.write();
    let n = d.event_count();
    d.poll();
    expect_rejection(
        &d,
        n,
        "too few signatures",
        metadata_kind(ErrorKind::Signature),
    );
    d.assert_serving("1");

    // One key counted twice: two signatures under key 4 do not make a threshold of 2.
    env.repo
        .signers
        .insert("targets".into(), vec![Signer::new(4), Signer::new(4)]);
    env.repo.publish(&["targets", "snapshot", "timestamp"]);
    env.write();
    let n = d.event_count();
    d.poll();
    // The core refuses metadata with two signatures under one key id outright.
    let why = expect_rejection(&d, n, "a key counted twice", |k| {
        matches!(
            k,
            RejectKind::Metadata(ErrorKind::Signature | ErrorKind::Malformed)
        )
    });
    assert!(why.contains("more than one signature for key id"), "{why}");
    d.assert_serving("1");

    // Both real keys: accepted.
    env.repo
        .signers
        .insert("targets".into(), vec![Signer::new(4), Signer::new(50)]);
    release_and_serve(&mut env, &d, "3", 3);
}

#[test]
fn rollback_of_each_role_is_refused() {
    let mut env = Env::new();
    let d = start(&env);
    release_and_serve(&mut env, &d, "2", 2);
    let ts_now = env.repo.latest("timestamp").to_vec();

    // Timestamp: an older signed timestamp replayed.
    std::fs::write(
        env.metadata("timestamp.json"),
        env.repo.version("timestamp", 2),
    )
    .unwrap();
    let n = d.event_count();
    d.poll();
    expect_rejection(
        &d,
        n,
        "timestamp rollback",
        metadata_kind(ErrorKind::Rollback),
    );
    d.assert_serving("2");
    std::fs::write(env.metadata("timestamp.json"), &ts_now).unwrap();

    // Snapshot: a new timestamp naming an older snapshot version.
    let snap_v = env.repo.signed["snapshot"]["version"].as_u64().unwrap();
    env.repo.signed.get_mut("timestamp").unwrap()["meta"]["snapshot.json"]["version"] =
        (snap_v - 1).into();
    env.repo.publish(&["timestamp"]);
    env.write();
    let n = d.event_count();
    d.poll();
    expect_rejection(
        &d,
        n,
        "snapshot rollback",
        metadata_kind(ErrorKind::Rollback),
    );
    d.assert_serving("2");

    // Targets: a new snapshot naming an older targets version.
    let t_v = env.repo.signed["targets"]["version"].as_u64().unwrap();
    env.repo.signed.get_mut("snapshot").unwrap()["meta"]["targets.json"]["version"] =
        (t_v - 1).into();
    env.repo.publish(&["snapshot", "timestamp"]);
    env.write();
    let n = d.event_count();
    d.poll();
    expect_rejection(
        &d,
        n,
        "targets rollback",
        metadata_kind(ErrorKind::Rollback),
    );
    d.assert_serving("2");

    // Honest metadata again (versions above everything seen): the next release installs.
    release_and_serve(&mut env, &d, "3", 3);
}

#[test]
fn an_expired_timestamp_replayed_is_refused() {
    let mut env = Env::new();
    env.repo.signed.get_mut("timestamp").unwrap()["expires"] = "2030-01-01T01:00:00Z".into();
    env.repo.publish(&["timestamp"]);
    env.write();
    let now = clock();
    let d = Daemon::start(&env.config(env.repo_dir().to_str().unwrap()), now.clone());
    d.assert_serving("1");
    // The repository moves on to version 2, but a freezing mirror keeps serving the old
    // timestamp; two hours later it has expired.
    let frozen = env.repo.latest("timestamp").to_vec();
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    env.write();
    std::fs::write(env.metadata("timestamp.json"), &frozen).unwrap();
    now.store(NOW + 7200, std::sync::atomic::Ordering::SeqCst);
    let n = d.event_count();
    d.poll();
    let why = expect_rejection(
        &d,
        n,
        "a frozen timestamp",
        metadata_kind(ErrorKind::Expired),
    );
    assert!(why.contains("timestamp"), "{why}");
    d.assert_serving("1");
    // A fresh timestamp: version 2 arrives.
    env.repo.signed.get_mut("timestamp").unwrap()["expires"] = "2100-01-01T00:00:00Z".into();
    env.repo.publish(&["timestamp"]);
    release_and_serve(&mut env, &d, "3", 3);
}

#[test]
fn mix_and_match_of_targets_from_different_snapshots_is_refused() {
    let mut env = Env::new();
    let d = start(&env);
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    env.write();
    // The new snapshot names targets v3; the mirror serves the old targets under that name.
    let v = env.repo.signed["targets"]["version"].as_u64().unwrap() as usize;
    std::fs::write(
        env.metadata(&format!("{v}.targets.json")),
        env.repo.version("targets", v - 1),
    )
    .unwrap();
    let n = d.event_count();
    d.poll();
    expect_rejection(
        &d,
        n,
        "mix-and-match",
        metadata_kind(ErrorKind::VersionMismatch),
    );
    d.assert_serving("1");
    release_and_serve(&mut env, &d, "3", 3);
}

#[test]
fn endless_data_and_caps_are_refused() {
    let mut env = Env::new();
    let d = start(&env);
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    env.write();
    // More bytes than the signed length.
    let model = env.target_file("models/churn/2/model.onnx");
    let mut long = std::fs::read(&model).unwrap();
    long.extend(std::iter::repeat_n(0u8, 1 << 20));
    std::fs::write(&model, &long).unwrap();
    let n = d.event_count();
    d.poll();
    expect_rejection(&d, n, "endless data", |k| {
        *k == RejectKind::Target(ErrorKind::TooLarge)
    });
    d.assert_serving("1");
    drop(d);

    // A signed length above the configured cap is refused before anything is fetched.
    let env2 = Env::new();
    let mut cfg = env2.config(env2.repo_dir().to_str().unwrap());
    cfg.registry.max_model_bytes = churn_model().len() as u64 - 1;
    let d = Daemon::start(&cfg, clock());
    let why = expect_rejection(&d, 0, "a model over the cap", |k| {
        *k == RejectKind::Target(ErrorKind::TooLarge)
    });
    assert!(why.contains("cap"), "{why}");
    d.assert_serving("demo");
}

#[test]
fn path_traversal_and_absolute_target_names_are_refused() {
    let mut env = Env::new();
    let d = start(&env);
    let evil = env.dir.path().join("evil");
    for path in [
        format!("models/churn/9/../../../{}/model.onnx", "evil"),
        "/models/churn/9/model.onnx".to_owned(),
        "models/churn/9/sub/model.onnx".to_owned(),
    ] {
        env.repo.add_target("targets", &path, b"not a model");
    }
    env.repo.publish(&["targets", "snapshot", "timestamp"]);
    // The repository layout cannot hold these names; the metadata alone is the attack.
    env.repo
        .artifacts
        .retain(|p, _| p.starts_with("models/churn/1/"));
    env.write();
    let n = d.event_count();
    d.poll();
    let evs = d.events_since(n);
    let unsafe_paths = evs
        .iter()
        .filter(|e| rejected(e, |k| *k == RejectKind::UnsafePath))
        .count();
    assert_eq!(unsafe_paths, 3, "{evs:?}");
    d.assert_serving("1");
    assert!(!evil.exists());
    assert!(!env.state_dir().join("evil").exists());
    release_and_serve(&mut env, &d, "2", 2);
}

#[test]
fn root_rotation_with_the_threshold_going_up_and_down() {
    let mut env = Env::new();
    let d = start(&env);
    // Up: root v2 needs two root keys (1 and 60), signed by both.
    env.repo.add_root_key("root", Signer::new(60));
    env.repo.root()["roles"]["root"]["threshold"] = 2.into();
    env.repo.publish(&["root"]);
    release_and_serve(&mut env, &d, "2", 2);

    // Root v3 signed by one of the two: refused, and the daemon stays on trusted root v2.
    env.repo.root()["roles"]["root"]["threshold"] = 1.into();
    let both = env
        .repo
        .signers
        .insert("root".into(), vec![Signer::new(1)])
        .unwrap();
    env.repo.publish(&["root"]);
    env.write();
    let n = d.event_count();
    d.poll();
    expect_rejection(
        &d,
        n,
        "root below its threshold",
        metadata_kind(ErrorKind::Signature),
    );
    d.assert_serving("2");
    // Take the bad v3 back and publish a good v3 in its place.
    env.repo.published.get_mut("root").unwrap().pop();
    env.repo.signed.get_mut("root").unwrap()["version"] = 2.into();
    env.repo.signers.insert("root".into(), both);
    env.repo.publish(&["root"]);
    assert_eq!(env.repo.signed["root"]["version"], 3);
    // Down: root v3 (threshold 1 now) is signed by both, so v2's threshold of 2 is met.
    release_and_serve(&mut env, &d, "3", 3);
    // With threshold 1, root v4 signed by key 1 alone is accepted.
    env.repo.signers.insert("root".into(), vec![Signer::new(1)]);
    env.repo.publish(&["root"]);
    release_and_serve(&mut env, &d, "4", 4);
}
