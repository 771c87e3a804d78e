//! Model changes while serving, through the app's control path (`Control`, which SIGHUP
//! reload uses): sessions are built on the control thread, never on a core; a batching
//! change keeps sessions and counters; versions switched under full pipelined load fail no
//! request; pinning a version that is not loaded is a typed error.
//!
//! The app runs in-process on real listeners with the real churn fixture on tract. A
//! session factory wrapping the real engine model records which thread built each session
//! and can hold a build open, so "not on a core" is asserted by thread name, not by timing.

mod serve_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use edgeinfer_client::blocking::Client;
use edgeinfer_client::PredictOptions;
use edgeinfer_engine::{EngineChoice, LoadOptions, Model, Session, SessionFactory};
use edgeinfer_proto::ErrorCode;
use edgeinferd::app::{self, ModelSpec};
use edgeinferd::config::ReloadPlan;
use edgeinferd::model_table::{ModelVersion, ServingConfig};
use edgeinferd::server::Driver;
use serve_support::*;

/// Bound on every wait for something the daemon does by itself (a tick, a reap).
const WAIT: Duration = Duration::from_secs(20);

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn churn_spec(version: &str) -> ModelSpec {
    ModelSpec {
        version: version.into(),
        ..spec("churn", "churn_rf", EngineChoice::Tract, None)
    }
}

/// Makes real churn_rf tract sessions, noting the building thread; while the gate is
/// closed, each build waits for it.
struct Recorder {
    inner: Model,
    threads: Mutex<Vec<String>>,
    open: Mutex<bool>,
    opened: Condvar,
}

impl Recorder {
    fn churn(gate_open: bool) -> (Arc<Recorder>, Model) {
        let bytes = std::fs::read(model_path("churn_rf")).unwrap();
        let load = LoadOptions {
            engine: EngineChoice::Tract,
            ..LoadOptions::default()
        };
        let inner = edgeinfer_engine::load_model(&bytes, &load).unwrap();
        let r = Arc::new(Recorder {
            inner: inner.clone(),
            threads: Mutex::new(Vec::new()),
            open: Mutex::new(gate_open),
            opened: Condvar::new(),
        });
        let model = Model::new(inner.info.clone(), inner.report.clone(), r.clone());
        (r, model)
    }

    fn open_gate(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn threads(&self) -> Vec<String> {
        self.threads.lock().unwrap().clone()
    }
}

impl SessionFactory for Recorder {
    fn new_session(&self) -> edgeinfer_engine::Result<Box<dyn Session>> {
        let me = std::thread::current();
        self.threads
            .lock()
            .unwrap()
            .push(me.name().unwrap_or("<unnamed>").to_owned());
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        drop(open);
        self.inner.new_session()
    }
}

fn predict(c: &mut Client, pin: Option<&str>) -> Result<String, edgeinfer_client::ClientError> {
    let row = churn_row(0.5);
    let opts = PredictOptions {
        version: pin.map(Into::into),
        ..Default::default()
    };
    c.predict("churn", &[row.view()], &opts).map(|r| r.version)
}

#[test]
fn sessions_for_a_new_version_are_built_off_the_cores_while_they_keep_serving() {
    let server = start(options(Driver::Epoll), &[churn_spec("1")]);
    let app = server.app();
    let cores = app.cores().len();
    let (rec, model) = Recorder::churn(false);

    let control = app.control().clone();
    let install = std::thread::Builder::new()
        .name("control-test".into())
        .spawn(move || control.install_model("churn", "2", model, ServingConfig::default()))
        .unwrap();
    wait_for("the install to start building a session", || {
        !rec.threads().is_empty()
    });
    let blocked_at = Instant::now();

    // The install is held inside a session build: the cores serve on, and beat.
    let mut c = server.client();
    let mut answered = 0;
    while blocked_at.elapsed() < Duration::from_secs(1) {
        assert_eq!(predict(&mut c, None).unwrap(), "1");
        answered += 1;
    }
    assert!(answered > 0);
    let held = blocked_at.elapsed();
    for (cpu, age) in app.heartbeats().ages() {
        let age = age.expect("every core has beaten");
        assert!(
            age < held,
            "core {cpu} has not beaten since the install blocked ({age:?} ago, blocked {held:?} ago)"
        );
    }
    // Not published until every core's session is ready.
    let e = predict(&mut c, Some("2")).unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::UnknownModel));

    rec.open_gate();
    let v = install.join().unwrap().expect("install");
    // Each core takes its session at its next tick or request; none builds one.
    wait_for("every core to take its session", || {
        v.sessions.taken() == cores
    });
    assert_eq!(predict(&mut c, Some("2")).unwrap(), "2");
    assert_eq!(
        predict(&mut c, None).unwrap(),
        "1",
        "install does not activate"
    );
    app.control().activate("churn", "2").unwrap();
    for _ in 0..20 {
        assert_eq!(predict(&mut c, None).unwrap(), "2");
    }
    let threads = rec.threads();
    assert_eq!(
        threads.len(),
        cores,
        "one session per core, built once: {threads:?}"
    );
    assert!(
        threads.iter().all(|t| t == "control-test"),
        "sessions built on {threads:?}"
    );
}

#[test]
fn a_batching_only_reload_keeps_sessions_and_counters() {
    let server = start(options(Driver::Epoll), &[churn_spec("1")]);
    let app = server.app();
    let cores = app.cores().len();
    let (rec, model) = Recorder::churn(true);
    let before = app
        .control()
        .install_model("churn", "2", model, ServingConfig::default())
        .unwrap();
    app.control().activate("churn", "2").unwrap();
    let mut c = server.client();
    for _ in 0..10 {
        assert_eq!(predict(&mut c, None).unwrap(), "2");
    }
    assert_eq!(before.stats.total(), 10);

    // What SIGHUP applies when only `max_batch`/`max_delay_us` changed.
    let plan = ReloadPlan {
        rebatch: vec![ModelSpec {
            serving: ServingConfig {
                batching: batching(4, Duration::from_millis(500)),
            },
            ..churn_spec("2")
        }],
        ..ReloadPlan::default()
    };
    app::apply_reload(app.table(), &plan).unwrap();
    let snap = app.table().snapshot();
    let after = snap.resolve("churn", None, b"").unwrap();
    assert!(Arc::ptr_eq(&before, after), "same version identity");
    assert_eq!(after.stats.total(), 10, "counters kept");

    // Four pipelined rows now run as one batch.
    let row = churn_row(0.25);
    for _ in 0..4 {
        c.send_predict("churn", &[row.view()], &PredictOptions::default())
            .unwrap();
    }
    for _ in 0..4 {
        let (_, r) = c.recv().unwrap();
        assert_eq!(r.unwrap().version, "2");
    }
    let (runs, _) = after.stats.batch_rows.cumulative();
    let multi_row_runs = runs.last().unwrap() - runs[0];
    assert!(multi_row_runs >= 1, "the new batching applies: {runs:?}");
    assert_eq!(after.stats.total(), 14);
    assert_eq!(rec.threads().len(), cores, "no session was rebuilt");
}

#[test]
fn ten_version_switches_under_pipelined_load_fail_no_request() {
    const SWITCHES: usize = 10;
    const WINDOW: usize = 16;
    let server = start(options(Driver::Epoll), &[churn_spec("v0")]);
    let app = server.app();
    let stop = Arc::new(AtomicBool::new(false));
    let newest_seen = Arc::new(AtomicUsize::new(0));

    // Two pipelined clients at full rate; each notes the version of every answer.
    let loaders: Vec<_> = (0..2)
        .map(|_| {
            let mut c = server.client();
            let (stop, newest_seen) = (stop.clone(), newest_seen.clone());
            std::thread::spawn(move || {
                let row = churn_row(0.5);
                let opts = PredictOptions::default();
                let mut seen = Vec::new();
                let mut failed = Vec::new();
                for _ in 0..WINDOW {
                    c.send_predict("churn", &[row.view()], &opts).unwrap();
                }
                let mut in_flight = WINDOW;
                while in_flight > 0 {
                    let (_, r) = c.recv().expect("the connection stays up");
                    in_flight -= 1;
                    match r {
                        Ok(r) => {
                            let i: usize = r.version[1..].parse().unwrap();
                            newest_seen.fetch_max(i, SeqCst);
                            seen.push(i);
                        }
                        Err(e) => failed.push(format!("{e:#}")),
                    }
                    if !stop.load(SeqCst) {
                        c.send_predict("churn", &[row.view()], &opts).unwrap();
                        in_flight += 1;
                    }
                }
                (seen, failed)
            })
        })
        .collect();

    let mut retired: Vec<Weak<ModelVersion>> = Vec::new();
    for i in 1..=SWITCHES {
        let old = app.table().snapshot();
        let old = old.resolve("churn", None, b"").unwrap();
        retired.push(Arc::downgrade(old));
        let plan = ReloadPlan {
            add: vec![churn_spec(&format!("v{i}"))],
            remove: vec![("churn".into(), format!("v{}", i - 1))],
            ..ReloadPlan::default()
        };
        app::apply_reload(app.table(), &plan).unwrap();
        wait_for("the new version to answer", || {
            newest_seen.load(SeqCst) >= i
        });
    }
    stop.store(true, SeqCst);
    let mut all_seen = std::collections::BTreeSet::new();
    for l in loaders {
        let (seen, failed) = l.join().unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "on one connection, an older version answered after a newer one"
        );
        all_seen.extend(seen);
    }
    assert_eq!(all_seen.len(), SWITCHES + 1, "versions seen: {all_seen:?}");
    assert_eq!(app.stats().errors(ErrorCode::UnknownModel), 0);
    // Retired versions (and their sessions) are released once no job holds them.
    wait_for("retired versions to be dropped", || {
        retired.iter().all(|w| w.upgrade().is_none())
    });
}

#[test]
fn pinning_a_version_that_is_not_loaded_is_a_typed_error() {
    let server = start(options(Driver::Epoll), &[churn_spec("1")]);
    let app = server.app();
    let mut c = server.client();
    let e = predict(&mut c, Some("7")).unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::UnknownModel));
    let msg = format!("{e:#}");
    assert!(msg.contains("\"7\"") && msg.contains("loaded: 1"), "{msg}");

    // Installed but not active: pinnable, not the default.
    let v2 = app::load_version(&churn_spec("2")).unwrap();
    let model = v2.model.clone();
    drop(v2);
    app.control()
        .install_model("churn", "2", model, ServingConfig::default())
        .unwrap();
    assert_eq!(predict(&mut c, Some("2")).unwrap(), "2");
    assert_eq!(predict(&mut c, None).unwrap(), "1");
    app.control().activate("churn", "2").unwrap();
    app.control().retire("churn", "1").unwrap();
    assert_eq!(predict(&mut c, None).unwrap(), "2");
    let e = predict(&mut c, Some("1")).unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::UnknownModel));
    assert!(format!("{e:#}").contains("loaded: 2"), "{e:#}");

    // The control API refuses the same way, naming what is loaded.
    let err = app.control().activate("churn", "9").unwrap_err();
    assert!(format!("{err:#}").contains("loaded: 2"), "{err:#}");
    let err = app.control().retire("nope", "1").unwrap_err();
    assert!(format!("{err:#}").contains("loaded: churn"), "{err:#}");
}
