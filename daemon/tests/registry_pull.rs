//! The daemon as a pull agent, end to end: from a directory and over HTTP (a loopback static
//! server), a signed release is pulled, verified, validated on its golden samples, committed
//! and served over the real socket; an interrupted download resumes with a Range request; a
//! restart starts on the last verified version; old versions beyond `keep_versions` go.

mod registry_support;

use edgeinfer_registry::agent::AgentEvent;
use edgeinfer_registry::install::{InstallStore, MODEL_FILE};
use registry_support::*;

#[test]
fn pulls_from_a_directory_serves_it_and_restarts_on_the_last_verified_version() {
    let mut env = Env::new();
    let cfg = env.config(env.repo_dir().to_str().unwrap());
    let mut d = Daemon::start(&cfg, clock());
    expect_installed(&d, 0, "1");
    d.assert_serving("1");

    let n = d.event_count();
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    env.write();
    d.poll();
    expect_installed(&d, n, "2");
    d.assert_serving("2");
    // Version 1 is retired from the table but kept on disk (keep_versions = 2).
    let store = InstallStore::open(&env.state_dir(), 2).unwrap();
    let st = store.load_state("churn").unwrap();
    assert_eq!(st.active.as_deref(), Some("2"));
    assert!(store.version_dir("churn", "1").join(MODEL_FILE).exists());

    // A poll with nothing new changes nothing.
    let n = d.event_count();
    d.poll();
    assert!(d.events_since(n).is_empty(), "{:?}", d.events_since(n));

    // Restart with the repository gone: the daemon starts on version 2 from disk.
    d.stop();
    std::fs::remove_dir_all(env.repo_dir()).unwrap();
    let d = Daemon::start(&cfg, clock());
    assert_eq!(d.restored, ["churn@2"]);
    d.assert_serving("2");
    assert!(
        d.events_since(0)
            .iter()
            .any(|e| matches!(e, AgentEvent::Unreachable { .. })),
        "{:?}",
        d.events_since(0)
    );
    d.assert_serving("2");

    // Versions 3 and 4: only the newest two stay on disk.
    drop(d);
    env.write();
    let d = Daemon::start(&cfg, clock());
    for v in ["3", "4"] {
        let n = d.event_count();
        let c: u64 = v.parse().unwrap();
        publish_release(&mut env.repo, "churn", v, c, &churn_model());
        env.write();
        d.poll();
        expect_installed(&d, n, v);
    }
    d.assert_serving("4");
    assert!(!store.version_dir("churn", "1").exists(), "pruned");
    // 2 stays while the state's previous copy (the fallback) still names it.
    assert!(store.version_dir("churn", "2").exists());
    assert!(store.version_dir("churn", "3").exists());
    let n = d.event_count();
    publish_release(&mut env.repo, "churn", "5", 5, &churn_model());
    env.write();
    d.poll();
    expect_installed(&d, n, "5");
    assert!(!store.version_dir("churn", "2").exists(), "pruned");
}

#[test]
fn pulls_over_http_and_resumes_an_interrupted_download_with_range() {
    let mut env = Env::new();
    // The server's /repo/ is the repository directory.
    let server = StaticServer::start(&env.repo_dir());
    let cfg = env.config(&server.url());
    // The first model download is cut after 1000 bytes.
    server.set_mode(Mode::CutTargets(1000));
    let d = Daemon::start(&cfg, clock());
    assert!(
        d.events_since(0)
            .iter()
            .any(|e| matches!(e, AgentEvent::Unreachable { .. })),
        "the cut transfer is a transient failure: {:?}",
        d.events_since(0)
    );
    d.assert_serving("demo");
    server.set_mode(Mode::Normal);
    let n = d.event_count();
    d.poll();
    expect_installed(&d, n, "1");
    d.assert_serving("1");
    // The first target fetched (bundle.json) was cut at byte 1000; the next poll asked for
    // the rest of the same file only.
    let reqs = server.requests();
    let targets: Vec<_> = reqs
        .iter()
        .filter(|(p, _)| p.starts_with("/repo/targets/"))
        .collect();
    assert_eq!(targets[0].1, None, "{reqs:?}");
    let resumed = targets
        .iter()
        .find(|(p, r)| p == &targets[0].0 && r.is_some())
        .unwrap_or_else(|| panic!("no resume: {reqs:?}"));
    assert_eq!(resumed.1.as_deref(), Some("bytes=1000-"));
    assert!(
        !targets
            .iter()
            .skip(1)
            .any(|(p, r)| p == &targets[0].0 && r.is_none()),
        "not downloaded again from the start: {reqs:?}"
    );

    let n = d.event_count();
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    env.write();
    d.poll();
    expect_installed(&d, n, "2");
    d.assert_serving("2");
}

#[test]
fn a_version_whose_golden_samples_do_not_match_or_that_does_not_load_is_refused() {
    use edgeinfer_registry::agent::RejectKind;
    let mut env = Env::new();
    let d = Daemon::start(&env.config(env.repo_dir().to_str().unwrap()), clock());
    d.assert_serving("1");
    // Version 2 claims a different label for the first golden row.
    let model = churn_model();
    let mut b: serde_json::Value =
        serde_json::from_slice(&bundle_bytes("churn", "2", &model)).unwrap();
    let label = &mut b["golden"][0]["outputs"][0];
    assert_eq!(label["name"], "label");
    let l0 = label["data"][0].as_f64().unwrap();
    label["data"][0] = (1.0 - l0).into();
    add_release_files(
        &mut env.repo,
        "churn",
        "2",
        2,
        &model,
        serde_json::to_vec(&b).unwrap(),
    );
    env.repo.publish(&["targets", "snapshot", "timestamp"]);
    env.write();
    let n = d.event_count();
    d.poll();
    let why = expect_rejection(&d, n, "mismatched golden samples", |k| {
        *k == RejectKind::Validation
    });
    assert!(
        why.contains("golden sample 0") && why.contains("label"),
        "{why}"
    );
    d.assert_serving("1");
    // Refused for good: the next poll does not download or report it again.
    let n = d.event_count();
    d.poll();
    assert!(d.events_since(n).is_empty(), "{:?}", d.events_since(n));

    // Version 3: bytes that are not a model (signed, hashes match, bundle names them).
    let junk = vec![7u8; 4096];
    let b = bundle_bytes("churn", "3", &junk);
    add_release_files(&mut env.repo, "churn", "3", 3, &junk, b);
    env.repo.publish(&["targets", "snapshot", "timestamp"]);
    env.write();
    let n = d.event_count();
    d.poll();
    let why = expect_rejection(&d, n, "a model that does not load", |k| {
        *k == RejectKind::Validation
    });
    assert!(why.contains("cannot load"), "{why}");
    d.assert_serving("1");
    let store = InstallStore::open(&env.state_dir(), 2).unwrap();
    assert!(!store.version_dir("churn", "2").exists() && !store.version_dir("churn", "3").exists());
    assert_eq!(
        store.load_state("churn").unwrap().active.as_deref(),
        Some("1")
    );
}

#[test]
fn a_rollout_directive_chooses_the_version() {
    let mut env = Env::new();
    let d = Daemon::start(&env.config(env.repo_dir().to_str().unwrap()), clock());
    let n = d.event_count();
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    env.write();
    d.poll();
    expect_installed(&d, n, "2");
    // The operator rolls back to 1 with a signed directive.
    let mut directive = edgeinfer_rollout::RolloutDirective::stable_only("churn", "1");
    env.repo
        .add_target("targets", "rollout/churn.json", &directive.to_bytes());
    env.repo.publish(&["targets", "snapshot", "timestamp"]);
    env.write();
    let n = d.event_count();
    d.poll();
    expect_installed(&d, n, "1");
    d.assert_serving("1");
    // A directive whose floor is above the release it names is not followed.
    directive.stable = "2".into();
    directive.min_release_counter = 3;
    env.repo
        .add_target("targets", "rollout/churn.json", &directive.to_bytes());
    env.repo.publish(&["targets", "snapshot", "timestamp"]);
    env.write();
    let n = d.event_count();
    d.poll();
    let why = expect_rejection(&d, n, "a release below the floor", |k| {
        *k == edgeinfer_registry::agent::RejectKind::BelowReleaseFloor
    });
    assert!(why.contains("min_release_counter 3"), "{why}");
    d.assert_serving("1");
}

#[test]
fn engine_auto_decides_on_the_golden_samples_at_1_and_64_rows() {
    let ort = std::env::var_os("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must point at libonnxruntime.so.1.31.1 for this test (see README)");
    assert!(std::path::Path::new(&ort).exists());
    let env = Env::new();
    let mut cfg = env.config(env.repo_dir().to_str().unwrap());
    cfg.engine.default = edgeinfer_engine::EngineChoice::Auto;
    cfg.engine.gpu = edgeinfer_engine::GpuPolicy::Never;
    let d = Daemon::start(&cfg, clock());
    d.assert_serving("1");
    let snap = d.app.as_ref().unwrap().table().snapshot();
    let v = snap.models["churn"].default_version();
    assert_eq!(v.version, "1");
    let report = &v.model.report;
    assert_eq!(
        report.candidates.len(),
        2,
        "ort-cpu and tract timed: {report:?}"
    );
    assert!(
        report.candidates.iter().all(|c| c.matches_reference),
        "{report:?}"
    );
    assert!(
        report
            .reason
            .contains("on the given samples at 1 and 64 rows"),
        "{}",
        report.reason
    );
}
