//! Automatic rollback inside the real daemon: two versions served with a sticky split over
//! the real socket, the candidate's engine made to fail or slow down, one window judged
//! from the versions' own counters → the candidate is dropped (every key back on stable),
//! recorded as bad on disk, and not retried after a restart under the same directive.
//!
//! The fault is injected at the engine boundary: the candidate is the real churn fixture on
//! tract, behind fault_support's sessions, told to fail or to sleep.

mod fault_support;
mod serve_support;

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use edgeinfer_client::blocking::Client;
use edgeinfer_client::PredictOptions;
use edgeinfer_engine::{EngineChoice, EngineError, ErrorKind, LoadOptions, Model};
use edgeinfer_rollout::{BadRecord, Baseline, Failure, RolloutConfig, Serve, Verdict};
use edgeinferd::app::ModelSpec;
use edgeinferd::model_table::ServingConfig;
use edgeinferd::rollout_glue::RolloutGlue;
use edgeinferd::server::Driver;
use serve_support::*;

const NOW: u64 = 1_764_590_400;
const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const SLOW: u8 = 2;

const DIRECTIVE: &str = r#"{"model": "churn", "stable": "3",
  "candidate": {"version": "4", "canary": {"percent": 100, "salt": "churn-4"},
                "split": {"percent": 50}}}"#;

/// Real tract sessions of the churn fixture that obey a shared switch (slow = 20 ms more,
/// far past 1.5 × any stable p99 on a loaded box).
struct Switch(Arc<AtomicU8>);

impl fault_support::Fault for Switch {
    fn before(&self) -> Option<EngineError> {
        match self.0.load(Relaxed) {
            FAILING => Some(EngineError::new(ErrorKind::Runtime, "injected failure")),
            SLOW => {
                std::thread::sleep(Duration::from_millis(20));
                None
            }
            _ => None,
        }
    }
}

fn faulty_churn(mode: Arc<AtomicU8>) -> Model {
    let bytes = std::fs::read(model_path("churn_rf")).unwrap();
    let load = LoadOptions {
        engine: EngineChoice::Tract,
        ..LoadOptions::default()
    };
    let inner = edgeinfer_engine::load_model(&bytes, &load).unwrap();
    fault_support::faulty(inner, Arc::new(Switch(mode)))
}

fn stable_spec() -> ModelSpec {
    ModelSpec {
        version: "3".into(),
        ..spec("churn", "churn_rf", EngineChoice::Tract, None)
    }
}

/// One request per key; returns how many the candidate answered (or failed).
fn traffic(c: &mut Client, keys: usize) -> (usize, usize) {
    let row = churn_row(0.5);
    let (mut on_candidate, mut failed) = (0, 0);
    for i in 0..keys {
        let opts = PredictOptions {
            routing_key: format!("user-{i}").into_bytes(),
            ..Default::default()
        };
        match c.predict("churn", &[row.view()], &opts) {
            Ok(r) => on_candidate += (r.version == "4") as usize,
            Err(_) => failed += 1,
        }
    }
    (on_candidate, failed)
}

fn config() -> RolloutConfig {
    RolloutConfig {
        min_requests: 50,
        ..RolloutConfig::default()
    }
}

fn started(mode: Arc<AtomicU8>) -> TestServer {
    let srv = start(options(Driver::Epoll), &[stable_spec()]);
    srv.app()
        .control()
        .install_model("churn", "4", faulty_churn(mode), ServingConfig::default())
        .unwrap();
    srv
}

#[test]
fn injected_errors_roll_back_within_one_window_and_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let srv = started(mode.clone());
    let (mut glue, err) = RolloutGlue::open(
        "edge-1",
        &config(),
        state.path(),
        srv.app().control().clone(),
    );
    assert!(err.is_none());
    let preview = glue.preview("churn", DIRECTIVE.as_bytes()).unwrap();
    assert_eq!(preview.install, ["3", "4"]);
    let d = glue.apply("churn", DIRECTIVE.as_bytes(), NOW).unwrap();
    assert_eq!(d, preview);
    assert!(
        matches!(
            d.serve,
            Serve::Split {
                candidate_bp: 5000,
                ..
            }
        ),
        "{d:?}"
    );
    let mut c = srv.client();

    mode.store(FAILING, Relaxed);
    let (_, failed) = traffic(&mut c, 400);
    assert!(
        (120..280).contains(&failed),
        "{failed} of 400 failed: about half take the candidate"
    );
    let (verdict, rollback) = glue.window("churn", &Baseline::default(), NOW + 300);
    assert!(verdict.is_fail(), "{verdict:?}");
    let rb = rollback.expect("rolled back in the first window");
    assert!(
        matches!(rb.bad.evidence[0], Failure::ErrorRate { .. }),
        "{:?}",
        rb.bad.evidence
    );
    assert!(rb.record_error.is_none());

    // Every key is on stable at once, and nothing fails any more.
    let (on_candidate, failed) = traffic(&mut c, 400);
    assert_eq!((on_candidate, failed), (0, 0));

    // A restart: the record is on disk; the same directive does not bring the candidate back.
    let record = config().record_path(state.path());
    assert!(BadRecord::open(&record)
        .unwrap()
        .is_bad("churn", "4", "churn-4"));
    drop(glue);
    let (mut glue, _) = RolloutGlue::open(
        "edge-1",
        &config(),
        state.path(),
        srv.app().control().clone(),
    );
    let d = glue
        .apply("churn", DIRECTIVE.as_bytes(), NOW + 600)
        .unwrap();
    assert_eq!(
        d.serve,
        Serve::Stable {
            version: "3".into()
        }
    );
    mode.store(HEALTHY, Relaxed);
    assert_eq!(traffic(&mut c, 200), (0, 0));
    let (v, rb) = glue.window("churn", &Baseline::default(), NOW + 900);
    assert!(matches!(v, Verdict::NotJudged { .. }) && rb.is_none());
}

#[test]
fn injected_latency_rolls_back_within_one_window() {
    let state = tempfile::tempdir().unwrap();
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let srv = started(mode.clone());
    let (mut glue, _) = RolloutGlue::open(
        "edge-2",
        &config(),
        state.path(),
        srv.app().control().clone(),
    );
    glue.apply("churn", DIRECTIVE.as_bytes(), NOW).unwrap();
    let mut c = srv.client();
    mode.store(SLOW, Relaxed);
    let (on_candidate, failed) = traffic(&mut c, 300);
    assert!(
        on_candidate > 80 && failed == 0,
        "{on_candidate} on the candidate, {failed} failed"
    );
    let (verdict, rollback) = glue.window("churn", &Baseline::default(), NOW + 300);
    let rb = rollback.unwrap_or_else(|| panic!("not rolled back: {verdict:?}"));
    assert!(
        rb.bad
            .evidence
            .iter()
            .any(|f| matches!(f, Failure::P99Latency { .. })),
        "{:?}",
        rb.bad.evidence
    );
    assert_eq!(traffic(&mut c, 100).0, 0);
}
