//! The rollout judge fed by telemetry's quality signals, in the running daemon: the registry
//! installs a candidate from a signed bundle that carries its baseline accuracy, its
//! accuracy window and the reference distribution of its predictions; telemetry labels each
//! version with its arm (latency, accuracy and drift on MQTT, checked by the Python consumer
//! against the JSON Schemas), joins FEEDBACK to the logged predictions, and counts the
//! predictions into the reference's bins; the daemon's own window thread judges each window.
//!
//! - a healthy candidate is not rolled back over 20 windows of reference traffic;
//! - a candidate whose predictions turn wrong (FEEDBACK shows the accuracy drop) is rolled
//!   back within one window of wrong predictions;
//! - in a new trial, a candidate whose predictions drift (no FEEDBACK at all) is rolled back.
//!
//! The fault is injected at the engine boundary, after install validated the real churn
//! release on its golden samples (`registry_glue::start_with`'s hook): the candidate's
//! sessions run the real model, then flip or fix its `label` output on command.
//!
//! One test: telemetry is one per process (its control thread and data-path sink).

mod fault_support;
#[path = "../../telemetry/tests/support/mod.rs"]
mod mqtt;
mod registry_support;

use std::collections::BTreeMap;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeinfer_client::blocking::Client;
use edgeinfer_client::{Endpoint, PredictOptions};
use edgeinfer_engine::{EngineChoice, LoadOptions, Model, Outputs};
use edgeinfer_proto::{
    decode_message, decode_predict_response, encode_message, ErrorResponse, FeedbackRequest,
    FeedbackResponse, Opcode,
};
use edgeinfer_rollout::{Canary, Candidate, Failure, InDeviceSplit, RolloutDirective};
use edgeinfer_telemetry::drift::{FeatureRef, ReferenceStats};
use edgeinferd::app::{self, App, Control};
use edgeinferd::config::Config;
use edgeinferd::registry_glue::{self, ModelHook};
use edgeinferd::server::Listeners;
use registry_support::release::{add_release_files, bundle_bytes};
use registry_support::*;

const DEVICE: &str = "edge-quality-3";
const WIDTH: usize = 20;
const WINDOW_S: u64 = 2;

const HEALTHY: u8 = 0;
/// The candidate answers the other class: every prediction wrong.
const WRONG: u8 = 1;
/// The candidate answers [`Mode::constant`] whatever the input: its predictions drift.
const CONSTANT: u8 = 2;

/// The candidate's behaviour, switched by the test.
struct Mode {
    now: AtomicU8,
    constant: AtomicU64,
}

impl fault_support::Fault for Mode {
    fn after(&self, out: &mut Outputs) {
        let mode = self.now.load(Relaxed);
        let constant = self.constant.load(Relaxed) as i64;
        if let Some(t) = out.tensors.iter_mut().find(|t| t.name == "label") {
            for b in t.data.chunks_exact_mut(8) {
                let l = i64::from_le_bytes(b.try_into().unwrap());
                let l = match mode {
                    WRONG => 1 - l,
                    CONSTANT => constant,
                    _ => l,
                };
                b.copy_from_slice(&l.to_le_bytes());
            }
        }
    }
}

fn hook(mode: Arc<Mode>) -> ModelHook {
    Arc::new(move |_model: &str, version: &str, m: Model| {
        if version != "2" {
            return m;
        }
        fault_support::faulty(m, mode.clone())
    })
}

/// `n` rows of the traffic every phase draws from (the reference's distribution): rows of
/// the committed golden inputs (churn-like data, both classes) picked at random, plus a
/// little noise.
fn rows(n: usize, seed: u64) -> Vec<f32> {
    static GOLDEN: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let golden = GOLDEN.get_or_init(|| {
        golden_json()["inputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    });
    let golden_rows = golden.len() / WIDTH;
    let noise = edgeinfer_telemetry::drift::normal_samples(n * (WIDTH + 1), 0.0, 0.05, seed);
    let noise = &noise;
    (0..n)
        .flat_map(|r| {
            let pick = ((noise[n * WIDTH + r].abs() * 1e6) as usize) % golden_rows;
            (0..WIDTH).map(move |c| (golden[pick * WIDTH + c] + noise[r * WIDTH + c]) as f32)
        })
        .collect()
}

/// The real model's labels on `x` (tract, in the test): what the reference is made of.
fn labels_of(x: &[f32]) -> Vec<i64> {
    let m = edgeinfer_engine::load_model(
        &churn_model(),
        &LoadOptions {
            engine: EngineChoice::Tract,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let mut s = m.new_session().unwrap();
    let mut out = Outputs::for_model(&m.info);
    let shape = [x.len() / WIDTH, WIDTH];
    let view = edgeinfer_engine::TensorView {
        dtype: edgeinfer_engine::DType::F32,
        shape: &shape,
        data: bytemuck::cast_slice(x),
    };
    s.run(&[view], &mut out).unwrap();
    let t = out.tensors.iter().find(|t| t.name == "label").unwrap();
    t.data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// churn `version`'s bundle as release tooling makes it, plus its monitoring: the reference
/// distribution of `label`, the baseline accuracy, a 100-label accuracy window.
fn bundle(version: &str, reference: &ReferenceStats) -> Vec<u8> {
    let mut b: serde_json::Value =
        serde_json::from_slice(&bundle_bytes("churn", version, &churn_model())).unwrap();
    b["reference"] = serde_json::to_value(reference).unwrap();
    b["baseline"] = serde_json::json!({
        "metrics": {"accuracy": 0.9},
        "primary": {"metric": "accuracy", "value": 0.9}
    });
    b["thresholds"] = serde_json::json!({"accuracy_window_labels": 100, "max_relative_drop": 0.05});
    let bytes = serde_json::to_vec_pretty(&b).unwrap();
    edgeinfer_registry::release::bundle::Bundle::from_slice(&bytes).expect("a valid bundle");
    bytes
}

fn directive(salt: &str) -> RolloutDirective {
    let b = edgeinfer_rollout::bucket(salt.as_bytes(), DEVICE.as_bytes());
    RolloutDirective {
        model: "churn".into(),
        stable: "1".into(),
        candidate: Some(Candidate {
            version: "2".into(),
            canary: Canary {
                percent: (b + 1) as f64 / 100.0,
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

/// Traffic on one connection until stopped: PREDICT 4 rows under a fresh routing key, then
/// (if `labels` is on) one FEEDBACK per row with the true label, which is what the real
/// model says (so a wrong candidate's answers are wrong).
struct Traffic {
    stop: Arc<AtomicBool>,
    labels: Arc<AtomicBool>,
    /// Per version: requests answered and labels sent.
    seen: Arc<Mutex<BTreeMap<String, (u64, u64)>>>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(sock: std::path::PathBuf, mode: Arc<Mode>) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let labels = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, l, sn, f) = (stop.clone(), labels.clone(), seen.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            let mut c = Client::connect(&Endpoint::Unix(sock)).unwrap();
            c.set_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut n = 0u64;
            while !s.load(Relaxed) {
                n += 1;
                let x = rows(4, 1000 + n);
                let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
                let shape = [4u64, WIDTH as u64];
                let view = edgeinfer_proto::TensorView::new(
                    "float_input",
                    edgeinfer_proto::DType::F32,
                    &shape,
                    &bytes,
                )
                .unwrap();
                let opts = PredictOptions {
                    routing_key: format!("user-{n}").into_bytes(),
                    ..Default::default()
                };
                c.send_predict("churn", &[view], &opts).unwrap();
                let (h, body) = c.recv_frame().unwrap();
                if h.opcode != Opcode::PredictResponse.as_u8() {
                    let e = decode_message::<ErrorResponse>(&h, body).unwrap();
                    f.lock().unwrap().push(e.message);
                    continue;
                }
                let v = decode_predict_response(&h, body).unwrap();
                let (id, version) = (v.response.prediction_id, v.response.version.clone());
                let got: Vec<i64> = v
                    .outputs()
                    .find(|t| t.name == "label")
                    .unwrap()
                    .to_tensor()
                    .data
                    .chunks(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                let send_labels = l.load(Relaxed);
                let flipped = version == "2" && mode.now.load(Relaxed) == WRONG;
                if send_labels {
                    for (k, label) in got.iter().enumerate() {
                        let truth = if flipped { 1 - label } else { *label };
                        let req = FeedbackRequest {
                            prediction_id: id + k as u64,
                            label: truth as f64,
                            ..Default::default()
                        };
                        if let Err(e) = feedback(&mut c, &req) {
                            f.lock().unwrap().push(format!("FEEDBACK: {}", e.message));
                        }
                    }
                }
                let mut seen = sn.lock().unwrap();
                let e = seen.entry(version).or_insert((0, 0));
                e.0 += 1;
                e.1 += if send_labels { got.len() as u64 } else { 0 };
            }
        });
        Traffic {
            stop,
            labels,
            seen,
            failures,
            thread: Some(thread),
        }
    }

    /// Counts so far, zeroed.
    fn take(&self) -> BTreeMap<String, (u64, u64)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn stop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let f = self.failures.lock().unwrap();
        assert!(f.is_empty(), "requests failed: {f:?}");
    }
}

fn feedback(c: &mut Client, req: &FeedbackRequest) -> Result<FeedbackResponse, ErrorResponse> {
    let mut frame = Vec::new();
    encode_message(Opcode::Feedback, 0, req, &mut frame).unwrap();
    c.send_frame(&mut frame).unwrap();
    let (h, body) = c.recv_frame().unwrap();
    if h.opcode == Opcode::FeedbackResponse.as_u8() {
        Ok(decode_message::<FeedbackResponse>(&h, body).unwrap())
    } else {
        Err(decode_message::<ErrorResponse>(&h, body).unwrap())
    }
}

#[test]
fn the_judge_rolls_back_on_feedback_accuracy_and_prediction_drift_but_not_a_healthy_candidate() {
    mqtt::watchdog("rollout_quality", 420);
    // The reference: the real model's predictions on traffic like the test's.
    let labels = labels_of(&rows(2000, 1));
    let reference = ReferenceStats {
        features: vec![],
        outputs: vec![FeatureRef::categorical_from_samples("label", 0, &labels, 2)],
    };
    let ones = labels.iter().filter(|&&l| l == 1).count() as f64 / labels.len() as f64;
    assert!(
        (0.05..0.95).contains(&ones),
        "both classes in the reference: {ones}"
    );
    let minority = (ones < 0.5) as u64;

    // The repository: churn 1 (stable) and 2 (candidate), both with their monitoring.
    let mut repo = edgeinfer_registry::tuf::testrepo::Repo::new();
    for (v, counter) in [("1", 1), ("2", 2)] {
        add_release_files(
            &mut repo,
            "churn",
            v,
            counter,
            &churn_model(),
            bundle(v, &reference),
        );
    }
    repo.publish(&["targets", "snapshot", "timestamp"]);
    let mut env = Env {
        dir: tempfile::tempdir().unwrap(),
        repo,
    };
    env.write();
    std::fs::write(env.root_file(), env.repo.version("root", 1)).unwrap();
    publish_directive(&mut env, &directive("churn-2"));

    let port = mqtt::free_port();
    let broker_dir = env.dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let _broker = mqtt::Mosquitto::start(&broker_dir, port);
    let prefix = format!("rq{}", std::process::id());
    let consumer = mqtt::Consumer::start(port, &prefix);

    let mut text = config_text(
        env.repo_dir().to_str().unwrap(),
        &env.root_file(),
        &env.state_dir(),
        env.dir.path(),
    );
    // Short windows; latency is not what this test judges (a loaded box's p99 noise must
    // not decide), and a window needs 40 candidate requests and 40 labels to be judged.
    text.push_str(&format!(
        "[rollout]\nwindow_s = {WINDOW_S}\nmin_requests = 40\nmin_labels = 40\nmax_p99_ratio = 1000.0\n\
         [telemetry]\nenabled = true\nmqtt_url = \"mqtt://127.0.0.1:{port}\"\ndevice_id = \"{DEVICE}\"\n\
         topic_prefix = \"{prefix}\"\ninterval_s = 1\n"
    ));
    let cfg = Config::from_toml_str(&text).unwrap();
    cfg.validate().unwrap();

    // The daemon in-process, in `main`'s order: cores, the registry agent and its windows,
    // then telemetry.
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    let mode = Arc::new(Mode {
        now: AtomicU8::new(HEALTHY),
        constant: AtomicU64::new(minority),
    });
    let table = app::load_models(&cfg.model_specs()).expect("load models");
    registry_glue::restore(&cfg, &Control::new(table.clone())).unwrap();
    let sock = cfg.server.unix_socket.clone();
    let _ = std::fs::remove_file(&sock);
    let listeners = Listeners {
        unix: vec![UnixListener::bind(&sock).unwrap()],
        tcp: vec![],
    };
    let app = App::start(cfg.server_options(), table.clone(), listeners).expect("start app");
    let now = clock();
    let registry = registry_glue::start_with(
        &cfg,
        app.control().clone(),
        Arc::new(move || now.load(std::sync::atomic::Ordering::SeqCst)),
        Some(hook(mode.clone())),
    )
    .unwrap()
    .expect("registry enabled");
    assert!(registry.wait_first_poll(WAIT), "first poll");
    // Telemetry last, as `main` starts it: the versions the first poll installed (and their
    // arms) were registered before it ran, and are monitored from their bundles all the same.
    let telemetry = edgeinferd::telemetry_glue::start(&cfg, table.clone())
        .unwrap()
        .expect("telemetry on");
    let snap = table.snapshot();
    let loaded: Vec<&str> = snap.models["churn"]
        .versions
        .iter()
        .map(|v| v.version.as_str())
        .collect();
    assert!(
        loaded.contains(&"1") && loaded.contains(&"2"),
        "stable and candidate installed: {loaded:?}"
    );
    drop(snap);

    // Healthy: 20 windows of reference traffic with feedback on every prediction.
    let mut traffic = Traffic::start(sock.clone(), mode.clone());
    let window = Duration::from_secs(WINDOW_S);
    std::thread::sleep(window * 20 + Duration::from_millis(500));
    let seen = traffic.take();
    assert!(
        registry.rollbacks().is_empty(),
        "{:?} after {seen:?}",
        registry.rollbacks()
    );
    let (cand_requests, cand_labels) = seen.get("2").copied().unwrap_or_default();
    assert!(
        cand_requests >= 20 * 40 && cand_labels >= 20 * 40,
        "enough candidate traffic for 20 judged windows: {seen:?}"
    );

    // Per-arm messages: latency for both arms with their versions, accuracy per arm from
    // the bundles' 100-label windows, drift labelled with the arm; every one schema-valid.
    let published = |level: &str| -> Vec<serde_json::Value> {
        consumer
            .messages()
            .into_iter()
            .filter(|m| m["level"] == level)
            .inspect(|m| assert_eq!(m["valid"], true, "a {level} payload fails its schema: {m}"))
            .map(|m| m["payload"].clone())
            .collect()
    };
    let arms_of = |level: &str| -> std::collections::BTreeSet<(String, String)> {
        published(level)
            .iter()
            .filter(|p| p["model"] == "churn")
            .map(|p| {
                (
                    p["version"].as_str().unwrap().to_owned(),
                    p["arm"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let both: std::collections::BTreeSet<(String, String)> = [("1", "stable"), ("2", "candidate")]
        .iter()
        .map(|(v, a)| (v.to_string(), a.to_string()))
        .collect();
    for level in ["latency", "accuracy", "drift"] {
        mqtt::wait_for(
            &format!("{level} messages of both arms"),
            Duration::from_secs(30),
            || (arms_of(level) == both).then_some(()),
        );
    }
    for a in published("accuracy") {
        assert_eq!(
            a["labels"], 100,
            "the bundle's window, not the config's: {a}"
        );
        assert_eq!(a["alert"], false, "{a}");
    }
    let mut metrics = String::new();
    edgeinferd::telemetry_glue::write_metrics(&mut metrics);
    for arm in ["stable", "candidate"] {
        let v = if arm == "stable" { "1" } else { "2" };
        let series = format!(
            "edgeinfer_telemetry_accuracy{{model=\"churn\",version=\"{v}\",arm=\"{arm}\",metric=\"accuracy\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
        // Prediction drift per arm, healthy: a small PSI, no alert.
        let drift = format!(
            "edgeinfer_telemetry_drift_alert{{model=\"churn\",version=\"{v}\",arm=\"{arm}\",part=\"output\",feature=\"label\"}} 0"
        );
        assert!(metrics.contains(&drift), "{drift} in\n{metrics}");
    }

    // Wrong predictions: FEEDBACK shows the candidate's accuracy fall; rolled back by the
    // daemon within one window of them (the window the switch falls in may be half healthy:
    // the next is all wrong).
    let switched = Instant::now();
    mode.now.store(WRONG, Relaxed);
    let rb = registry
        .wait_rollback(0, window * 2 + Duration::from_secs(2))
        .unwrap_or_else(|| panic!("no rollback within a window of wrong predictions"));
    let took = switched.elapsed();
    assert_eq!((rb.model.as_str(), rb.version.as_str()), ("churn", "2"));
    assert!(
        rb.evidence
            .iter()
            .any(|f| matches!(f, Failure::Accuracy { candidate, .. } if *candidate < 0.8)),
        "{rb:?}"
    );
    // A request answered just before the switch may be counted just after it: skip one
    // round, then every request is stable's.
    std::thread::sleep(Duration::from_millis(300));
    let _ = traffic.take();
    std::thread::sleep(Duration::from_millis(500));
    let after = traffic.take();
    assert!(
        after.keys().all(|v| v == "1"),
        "every request back on stable: {after:?}"
    );
    mqtt::wait_for(
        "the candidate's accuracy alert",
        Duration::from_secs(30),
        || {
            published("events").into_iter().find(|e| {
                e["type"] == "accuracy_alert" && e["version"] == "2" && e["arm"] == "candidate"
            })
        },
    );
    mqtt::wait_for("the rollback event", Duration::from_secs(30), || {
        published("events")
            .into_iter()
            .find(|e| e["type"] == "model_rolled_back" && e["from"] == "2")
    });
    // The retained status tells it too (events are not retained, an operator may subscribe
    // later): stable served, 2 recorded bad in this trial, and schema-valid.
    let lists_rollback = |s: &serde_json::Value| {
        s["rollout"].as_array().is_some_and(|r| {
            r.iter().any(|m| {
                m["model"] == "churn"
                    && m["serving"] == serde_json::json!([{"version": "1", "arm": "stable"}])
                    && m["bad"][0]["version"] == "2"
                    && m["bad"][0]["salt"] == "churn-2"
            })
        })
    };
    mqtt::wait_for(
        "the status listing the rollback",
        Duration::from_secs(30),
        || published("status").into_iter().find(lists_rollback),
    );

    // A new trial, drifting predictions and no FEEDBACK: rolled back on drift alone.
    traffic.labels.store(false, Relaxed);
    mode.now.store(CONSTANT, Relaxed);
    publish_directive(&mut env, &directive("churn-2-b"));
    assert!(registry.poll_and_wait(WAIT), "poll");
    let switched = Instant::now();
    let rb = registry
        .wait_rollback(1, window * 2 + Duration::from_secs(2))
        .unwrap_or_else(|| panic!("no rollback within a window of drifting predictions"));
    let took_drift = switched.elapsed();
    assert_eq!((rb.version.as_str(), rb.salt.as_str()), ("2", "churn-2-b"));
    assert!(
        matches!(rb.evidence.as_slice(), [Failure::PredictionDrift { candidate_psi, stable_psi: Some(s), .. }] if *candidate_psi >= 0.25 && *s < 0.25),
        "{rb:?}"
    );
    traffic.stop();
    eprintln!("rolled back {took:?} after wrong predictions, {took_drift:?} after drift");
    drop(registry);
    drop(telemetry);
    app.shutdown(Duration::from_secs(5));
    app.wait().expect("clean stop");
    let _ = std::fs::remove_file(&sock);
}
