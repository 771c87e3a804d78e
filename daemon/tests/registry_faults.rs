//! Faults on the box and on the way to it: corrupt trusted metadata, a corrupt or missing
//! install state, an installed file changed on disk, a registry that is down, and one that
//! accepts connections and never answers. In each the daemon keeps serving its last good
//! version and says what happened.

mod registry_support;

use std::time::{Duration, Instant};

use edgeinfer_registry::agent::{AgentEvent, RejectKind};
use registry_support::*;

fn dir_url(env: &Env) -> String {
    env.repo_dir().to_str().unwrap().to_owned()
}

#[test]
fn corrupt_trusted_metadata_falls_back_to_the_pinned_root_and_keeps_serving() {
    let mut env = Env::new();
    let cfg = env.config(&dir_url(&env));
    let d = Daemon::start(&cfg, clock());
    d.assert_serving("1");
    drop(d);
    let meta = env.state_dir().join("metadata");
    for f in [
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
    ] {
        std::fs::write(meta.join(f), b"\0garbage{").unwrap();
    }
    for f in [".root.json.prev", ".timestamp.json.prev"] {
        let _ = std::fs::write(meta.join(f), b"also garbage");
    }
    let d = Daemon::start(&cfg, clock());
    assert_eq!(d.restored, ["churn@1"]);
    d.assert_serving("1");
    let n = d.event_count();
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    env.write();
    d.poll();
    expect_installed(&d, n, "2");
    d.assert_serving("2");
}

#[test]
fn a_corrupt_install_state_falls_back_and_a_changed_file_is_never_loaded() {
    let mut env = Env::new();
    let cfg = env.config(&dir_url(&env));
    let d = Daemon::start(&cfg, clock());
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    env.write();
    d.poll();
    d.assert_serving("2");
    drop(d);
    let mdir = env.state_dir().join("models/churn");

    // The current state is garbage: its previous copy (version 1 active) is the truth, and
    // the agent moves on to 2 again.
    std::fs::write(mdir.join("state.json"), b"{\"model\": \"churn\", \"act").unwrap();
    let d = Daemon::start(&cfg, clock());
    assert_eq!(d.restored, ["churn@1"]);
    expect_installed(&d, 0, "2");
    d.assert_serving("2");
    drop(d);

    // An installed model file changed on disk: that version is skipped at start.
    let m2 = mdir.join("2/model.onnx");
    let mut bytes = std::fs::read(&m2).unwrap();
    bytes[200] ^= 1;
    std::fs::write(&m2, &bytes).unwrap();
    std::fs::remove_dir_all(env.repo_dir()).unwrap(); // and the registry is gone
    std::fs::create_dir_all(env.repo_dir()).unwrap();
    let d = Daemon::start(&cfg, clock());
    assert_eq!(
        d.restored,
        ["churn@1"],
        "the changed version 2 is not loaded"
    );
    d.assert_serving("1");
    drop(d);

    // Both state copies unreadable: nothing on disk is trusted; the config's model serves
    // and the agent says why, then installs afresh when the registry is back.
    std::fs::write(mdir.join("state.json"), b"garbage").unwrap();
    std::fs::write(mdir.join(".state.json.prev"), b"garbage").unwrap();
    env.write();
    let d = Daemon::start(&cfg, clock());
    assert!(d.restored.is_empty());
    expect_rejection(&d, 0, "unreadable install state", |k| {
        *k == RejectKind::LocalState
    });
    expect_installed(&d, 0, "2");
    d.assert_serving("2");
}

#[test]
fn a_registry_that_is_down_or_never_answers_does_not_stop_serving() {
    let env = Env::new();
    // A directory repository that is not there (a medium not mounted yet) is only
    // unreachable: the daemon starts and serves.
    let cfg = env.config(env.dir.path().join("not-mounted").to_str().unwrap());
    let d = Daemon::start(&cfg, clock());
    assert!(
        d.events_since(0)
            .iter()
            .any(|e| matches!(e, AgentEvent::Unreachable { .. })),
        "{:?}",
        d.events_since(0)
    );
    d.assert_serving("demo");
    drop(d);
    // Down: nothing listens. The daemon serves the configured model and says so.
    let cfg = env.config(&closed_port_url());
    let d = Daemon::start(&cfg, clock());
    let ev = d.events_since(0);
    assert!(
        ev.iter()
            .any(|e| matches!(e, AgentEvent::Unreachable { reason } if reason.contains("GET"))),
        "{ev:?}"
    );
    d.assert_serving("demo");
    drop(d);

    // Up: version 1 installs over HTTP.
    let server = StaticServer::start(&env.repo_dir());
    let cfg = env.config(&server.url());
    let d = Daemon::start(&cfg, clock());
    d.assert_serving("1");
    // Slow: the registry accepts and never answers. While the poll waits out its read
    // timeout on the agent's thread, requests are answered as usual.
    server.set_mode(Mode::Stall);
    let n = d.event_count();
    let polls = d.registry().polls();
    d.registry().poll_now();
    let t0 = Instant::now();
    let mut answered = 0;
    while d.registry().polls() == polls {
        d.assert_serving("1");
        answered += 1;
        assert!(t0.elapsed() < WAIT, "the stalled poll never ended");
    }
    assert!(answered > 0);
    let ev = d
        .registry()
        .wait_event(n, WAIT, |e| matches!(e, AgentEvent::Unreachable { .. }))
        .expect("an unreachable event");
    assert!(
        format!("{ev:?}").contains("timeout") || format!("{ev:?}").contains("imed out"),
        "{ev:?}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "the read timeout is 1 s"
    );
    d.assert_serving("1");
}
