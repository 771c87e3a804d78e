//! The daemon as a pull agent, end to end: from a directory and over HTTP (a loopback static
//! server), a signed release is pulled, verified, validated on its golden samples, committed
//! and served over the real socket; an interrupted download resumes with a Range request; a
//! restart starts on the last verified version; old versions beyond `keep_versions` go.

mod registry_support;

use edgeinfer_registry::agent::AgentEvent;
use edgeinfer_registry::install::{InstallStore, MODEL_FILE};
use registry_support::*;

fn installed(d: &Daemon, from: usize, version: &str) {
    d.registry()
        .wait_event(
            from,
            WAIT,
            |e| matches!(e, AgentEvent::Installed { version: v, .. } if v == version),
        )
        .unwrap_or_else(|| panic!("{version} not installed: {:?}", d.events_since(from)));
}

#[test]
fn pulls_from_a_directory_serves_it_and_restarts_on_the_last_verified_version() {
    let mut env = Env::new();
    let cfg = env.config(env.repo_dir().to_str().unwrap());
    let mut d = Daemon::start(&cfg, clock());
    installed(&d, 0, "1");
    d.assert_serving("1");

    let n = d.event_count();
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    env.write();
    d.poll();
    installed(&d, n, "2");
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
        installed(&d, n, v);
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
    installed(&d, n, "5");
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
    installed(&d, n, "1");
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
    installed(&d, n, "2");
    d.assert_serving("2");
}
