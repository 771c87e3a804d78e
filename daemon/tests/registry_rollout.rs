//! The rollout wired into the running daemon, end to end: a signed directive whose canary
//! includes this device makes the pull agent install stable and candidate and serve them
//! with a sticky split over the real socket; a candidate whose engine fails is rolled back
//! by the daemon's own window thread within one window, recorded on disk, and not
//! installed again after a restart under the same directive; a directive that lowers the
//! percent below this device's bucket returns it to stable.
//!
//! The fault is injected at the engine boundary, as in rollout_rollback.rs: the registry's
//! candidate is the real churn release, validated on its golden samples, then wrapped
//! (`registry_glue::start_with`'s hook) in sessions that fail on command.

mod fault_support;
mod registry_support;

use std::collections::BTreeMap;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use edgeinfer_client::blocking::Client;
use edgeinfer_client::{Endpoint, PredictOptions};
use edgeinfer_engine::{EngineError, ErrorKind, Model};
use edgeinfer_registry::agent::AgentEvent;
use edgeinfer_registry::install::InstallStore;
use edgeinfer_rollout::{BadRecord, Canary, Candidate, InDeviceSplit, RolloutDirective};
use edgeinferd::app::{self, App, Control};
use edgeinferd::config::Config;
use edgeinferd::registry_glue::{self, ModelHook};
use edgeinferd::server::Listeners;
use registry_support::*;

const DEVICE: &str = "edge-rollout-7";

/// Sessions fail while the switch is on.
struct Failing(Arc<AtomicBool>);

impl fault_support::Fault for Failing {
    fn before(&self) -> Option<EngineError> {
        self.0
            .load(Relaxed)
            .then(|| EngineError::new(ErrorKind::Runtime, "injected failure"))
    }
}

/// Wraps churn version 2 (the candidate) in [`Failing`] sessions.
fn hook(failing: Arc<AtomicBool>) -> ModelHook {
    Arc::new(move |_model: &str, version: &str, m: Model| {
        if version != "2" {
            return m;
        }
        fault_support::faulty(m, Arc::new(Failing(failing.clone())))
    })
}

/// This device's bucket under `salt`, and a directive whose canary just includes it
/// (`percent` = (bucket + 1) / 100) or just excludes it (bucket / 100).
fn directive(salt: &str, included: bool) -> RolloutDirective {
    let b = edgeinfer_rollout::bucket(salt.as_bytes(), DEVICE.as_bytes());
    let percent = (b + included as u32) as f64 / 100.0;
    RolloutDirective {
        model: "churn".into(),
        stable: "1".into(),
        candidate: Some(Candidate {
            version: "2".into(),
            canary: Canary {
                percent,
                salt: salt.into(),
            },
            split: Some(InDeviceSplit { percent: 50.0 }),
        }),
        min_release_counter: 0,
    }
}

fn publish_directive(env: &mut Env, d: &RolloutDirective) {
    env.repo
        .add_target("targets", "rollout/churn.json", &d.to_bytes());
    env.repo.publish(&["targets", "snapshot", "timestamp"]);
    env.write();
}

fn config(env: &Env) -> Config {
    let mut text = config_text(
        env.repo_dir().to_str().unwrap(),
        &env.root_file(),
        &env.state_dir(),
        env.dir.path(),
    );
    // Two-second windows; only the error rate is meant to decide here (latency noise on a
    // loaded box must not roll the healthy candidate back).
    text.push_str(&format!(
        "[rollout]\nwindow_s = 2\nmin_requests = 50\nmax_p99_ratio = 1000.0\n\
         [telemetry]\ndevice_id = \"{DEVICE}\"\n"
    ));
    let cfg = Config::from_toml_str(&text).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// The daemon in-process, as registry_support's `Daemon::start`, with the fault hook.
fn start(cfg: &Config, failing: &Arc<AtomicBool>) -> Daemon {
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    let table = app::load_models(&cfg.model_specs()).expect("load models");
    let restored = registry_glue::restore(cfg, &Control::new(table.clone())).unwrap();
    let sock = cfg.server.unix_socket.clone();
    let _ = std::fs::remove_file(&sock);
    let listeners = Listeners {
        unix: vec![UnixListener::bind(&sock).unwrap()],
        tcp: vec![],
    };
    let app = App::start(cfg.server_options(), table, listeners).expect("start app");
    let now = clock();
    let registry = registry_glue::start_with(
        cfg,
        app.control().clone(),
        Arc::new(move || now.load(std::sync::atomic::Ordering::SeqCst)),
        Some(hook(failing.clone())),
    )
    .unwrap()
    .expect("registry enabled");
    assert!(registry.wait_first_poll(WAIT), "first poll");
    Daemon {
        app: Some(app),
        registry: Some(registry),
        sock,
        restored,
    }
}

/// One request per key `user-0 .. user-<keys>`: the version that answered each (None =
/// the request failed).
fn traffic(d: &Daemon, keys: usize) -> BTreeMap<usize, Option<String>> {
    let mut c = Client::connect(&Endpoint::Unix(d.sock.clone())).expect("connect");
    c.set_timeout(Some(Duration::from_secs(20))).unwrap();
    let (row, _) = golden_rows(0, 1);
    (0..keys)
        .map(|i| {
            let opts = PredictOptions {
                routing_key: format!("user-{i}").into_bytes(),
                ..Default::default()
            };
            let r = c.predict("churn", &[row.view()], &opts);
            (i, r.ok().map(|r| r.version))
        })
        .collect()
}

fn count(t: &BTreeMap<usize, Option<String>>, v: Option<&str>) -> usize {
    t.values().filter(|x| x.as_deref() == v).count()
}

fn active_set(env: &Env) -> Vec<String> {
    let store = InstallStore::open(&env.state_dir(), 2).unwrap();
    let st = store.load_state("churn").unwrap();
    st.active_set().into_iter().map(str::to_owned).collect()
}

fn loaded(d: &Daemon, version: &str) -> bool {
    let snap = d.app.as_ref().unwrap().table().snapshot();
    snap.models["churn"].index_of(version).is_some()
}

#[test]
fn canary_installs_and_splits_rolls_back_a_failing_candidate_and_lowering_returns_to_stable() {
    let mut env = Env::new();
    publish_release(&mut env.repo, "churn", "2", 2, &churn_model());
    let first = directive("churn-2", true);
    publish_directive(&mut env, &first);
    let cfg = config(&env);
    let failing = Arc::new(AtomicBool::new(false));

    // The first poll installs stable (the default) and the candidate beside it.
    let mut d = start(&cfg, &failing);
    expect_installed(&d, 0, "1");
    expect_installed(&d, 0, "2");
    assert_eq!(active_set(&env), ["1", "2"]);
    let t = traffic(&d, 400);
    let on_candidate = count(&t, Some("2"));
    assert_eq!(count(&t, None), 0, "{t:?}");
    assert!(
        (120..280).contains(&on_candidate),
        "{on_candidate} of 400 keys on the candidate (split 50 %)"
    );
    // Sticky: every key lands where it landed before.
    assert_eq!(traffic(&d, 400), t, "a key keeps its arm");
    // A healthy candidate survives the windows its traffic fell in.
    std::thread::sleep(Duration::from_secs(2 * cfg.rollout.window_s) + Duration::from_millis(500));
    assert!(d.registry().rollbacks().is_empty());
    assert_eq!(count(&traffic(&d, 100), None), 0);

    // The candidate's engine fails: the daemon's window thread rolls it back by itself.
    failing.store(true, Relaxed);
    let t = traffic(&d, 400);
    let failed = count(&t, None);
    assert!((120..280).contains(&failed), "{failed} of 400 failed");
    // Within one window of the failures: the window they fell in closes at most one
    // window_s later (the slack is for a loaded box, not another window).
    let window = Duration::from_secs(cfg.rollout.window_s);
    let rb = d
        .registry()
        .wait_rollback(0, window + Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no rollback within one window of the failures"));
    assert_eq!((rb.model.as_str(), rb.version.as_str()), ("churn", "2"));
    assert!(rb.reason.contains("error rate"), "{}", rb.reason);
    let t = traffic(&d, 400);
    assert_eq!(count(&t, Some("1")), 400, "every key back on stable: {t:?}");
    let record = cfg.rollout.record_path(&cfg.state_dir);
    assert!(BadRecord::open(&record)
        .unwrap()
        .is_bad("churn", "2", "churn-2"));
    // The retained status carries it (events are not retained): stable served, 2 bad in
    // this trial, so `rollout advance` started later still sees the rollback.
    let status = edgeinferd::telemetry_glue::rollout_status();
    let churn = status
        .iter()
        .find(|s| s["model"] == "churn")
        .unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!(
        churn["serving"],
        serde_json::json!([{"version": "1", "arm": "stable"}])
    );
    let bad = &churn["bad"][0];
    assert_eq!(
        (&bad["version"], &bad["salt"]),
        (&"2".into(), &"churn-2".into())
    );
    assert!(
        bad["reason"].as_str().unwrap().contains("error rate"),
        "{bad}"
    );
    // The next poll settles the install state and unloads the candidate.
    d.poll();
    assert_eq!(active_set(&env), ["1"]);
    assert!(!loaded(&d, "2"));

    // Restart under the same directive: stable only, the candidate is not installed again.
    d.stop();
    failing.store(false, Relaxed);
    let mut d = start(&cfg, &failing);
    assert_eq!(d.restored, ["churn@1"]);
    d.poll();
    assert!(
        !d.events_since(0)
            .iter()
            .any(|e| matches!(e, AgentEvent::Installed { version, .. } if version == "2")),
        "{:?}",
        d.events_since(0)
    );
    assert!(!loaded(&d, "2"));
    assert_eq!(count(&traffic(&d, 200), Some("1")), 200);

    // A new trial (new salt) takes this device again, from the install area (the
    // candidate's files are the same inode: not downloaded and renamed in again); then the
    // percent is lowered below its bucket and it returns to stable.
    let file = InstallStore::open(&env.state_dir(), 2)
        .unwrap()
        .version_dir("churn", "2")
        .join("model.onnx");
    let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).unwrap());
    let before = inode();
    let n = d.event_count();
    publish_directive(&mut env, &directive("churn-2-b", true));
    d.poll();
    expect_installed(&d, n, "2");
    assert_eq!(inode(), before, "served from the install area");
    assert_eq!(active_set(&env), ["1", "2"]);
    let t = traffic(&d, 400);
    assert!(count(&t, Some("2")) > 100 && count(&t, None) == 0, "{t:?}");
    publish_directive(&mut env, &directive("churn-2-b", false));
    d.poll();
    assert_eq!(count(&traffic(&d, 400), Some("1")), 400);
    assert_eq!(active_set(&env), ["1"]);
    assert!(!loaded(&d, "2"));
    assert!(d.registry().rollbacks().is_empty());
    d.stop();
}
