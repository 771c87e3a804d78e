//! `edgeinfer fleet simulate`: N simulated devices in one process, each with its own state
//! directory, running the pull agent (`edgeinfer_registry::agent::Agent`: TUF refresh and
//! verification, downloads, the power-safe install store), the rollout decision and the
//! per-window judge (`edgeinfer_rollout::DeviceRollout`) and the tract engine (every
//! installed version is loaded and its golden samples checked), against one HTTP TUF
//! repository and one MQTT broker. It drives a staged rollout with the operator's own
//! commands (`rollout set`, `rollout advance`, run as child processes of this binary) and
//! records, per step, the time for the fleet to converge, the bytes the repository served
//! and the messages per second the broker carried. With `--bad-candidate`, a candidate
//! whose engine answers fail (injected at the engine boundary, as the daemon's rollback
//! test does) is put in the canary: the canary devices must roll it back by themselves and
//! `rollout advance` must refuse, both while the canary runs and when started only after
//! every rollback (it then hears no event, only the devices' retained statuses).
//!
//! What is simulated, not real: the requests (each window a device draws per-arm request
//! counts, errors and a p99 from fixed distributions and runs one golden sample through
//! each loaded arm), and telemetry goes straight to the broker (one MQTT connection per
//! device, schemas of `docs/telemetry/`) without the LMDB outbox, whose fsyncs on one disk
//! would measure the disk, not the fleet. See `docs/fleet.md`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use edgeinfer_engine::{EngineChoice, InputTensor, LoadOptions, Model, Outputs};
use edgeinfer_registry::agent::config::RegistryConfig;
use edgeinfer_registry::agent::{
    system_clock, Agent, AgentEvent, Backoff, Deployer, InstalledRelease, PollOutcome,
    RolloutChoice, StagedRelease,
};
use edgeinfer_registry::install::digest_file;
use edgeinfer_registry::release::bundle::Bundle;
use edgeinfer_registry::release::Repo;
use edgeinfer_rollout::bucket::bucket;
use edgeinfer_rollout::device::decide;
use edgeinfer_rollout::{
    Arm, ArmWindow, BadRecord, Baseline, Decision, DeviceRollout, RolloutConfig, RolloutDirective,
    RolloutState, Serve, WindowStats,
};
use edgeinfer_telemetry::config::BrokerAddr;
use edgeinfer_telemetry::events::Event as TelemetryEvent;
use edgeinfer_telemetry::latency::LatencyReport;
use edgeinfer_telemetry::messages::{ModelState, OutboxState, Status, Topics};
use http_body_util::Full;
use hyper::body::Bytes;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Serialize;

#[derive(Args)]
pub struct SimulateArgs {
    /// Simulated devices (ids sim-0000, sim-0001, …).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// The release repository's working directory (`repo init`), where `rollout set` and
    /// `rollout advance` stage and sign the directive.
    #[arg(long)]
    release_dir: PathBuf,
    /// The published repository (metadata/ and targets/): served over HTTP by this
    /// process on 127.0.0.1 (a static server that counts the bytes it sends).
    #[arg(long)]
    publish: PathBuf,
    /// Online keys (targets, snapshot, timestamp) the directive is signed with (repeat).
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
    #[arg(long, default_value = "churn")]
    model: String,
    /// The version every device starts on (the directive published before the run).
    #[arg(long)]
    stable: String,
    /// The healthy candidate rolled out through --steps.
    #[arg(long)]
    candidate: String,
    /// Canary percents, in order: the first is `rollout set`, the rest `rollout advance`.
    #[arg(long, default_value = "1,10,100", value_delimiter = ',')]
    steps: Vec<f64>,
    /// After the steps: promote the candidate to stable, then put this version in the
    /// canary with failing engine answers; its devices must roll it back and
    /// `rollout advance` must refuse.
    #[arg(long)]
    bad_candidate: Option<String>,
    /// The broker the devices publish to: HOST:PORT or mqtt://HOST:PORT.
    #[arg(long)]
    broker: String,
    #[arg(long, default_value = "edgeinfer-sim")]
    prefix: String,
    /// Where each device's state directory goes (created; must be empty or absent).
    #[arg(long)]
    state: PathBuf,
    /// Each device's `registry.poll_interval_ms` and `poll_jitter_ms`.
    #[arg(long, default_value_t = 10_000)]
    poll_ms: u64,
    #[arg(long, default_value_t = 5_000)]
    jitter_ms: u64,
    /// Length of a judging window (and of a latency report).
    #[arg(long, default_value_t = 2_000)]
    window_ms: u64,
    /// Simulated requests per device per window (split over the arms served).
    #[arg(long, default_value_t = 400)]
    requests_per_window: u64,
    /// Error rate and latency factor of the bad candidate's answers.
    #[arg(long, default_value_t = 0.2)]
    bad_error_rate: f64,
    #[arg(long, default_value_t = 3.0)]
    bad_latency_factor: f64,
    /// Threads the devices share (each device belongs to one).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Skip loading each version in the engine (validation is then the bundle's
    /// name, version and model digest only).
    #[arg(long)]
    no_engine: bool,
    /// The longest a step may take to converge.
    #[arg(long, default_value_t = 180)]
    step_timeout_s: u64,
    /// Write the report as JSON here too.
    #[arg(long)]
    report: Option<PathBuf>,
}

// === the repository server ===

/// What the repository sent.
#[derive(Default)]
struct Served {
    requests: AtomicU64,
    bytes: AtomicU64,
    not_found: AtomicU64,
}

/// A static file server over `root`: GET only, no directory listing, no `..`.
async fn serve_repo(listener: tokio::net::TcpListener, root: PathBuf, served: Arc<Served>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (root, served) = (root.clone(), served.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let resp = answer(&root, &served, req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(root: &Path, served: &Served, path: &str) -> hyper::Response<Full<Bytes>> {
    served.requests.fetch_add(1, Relaxed);
    let rel = path.trim_start_matches('/');
    let safe = !rel.is_empty()
        && rel
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    match safe.then(|| std::fs::read(root.join(rel))) {
        Some(Ok(body)) => {
            served.bytes.fetch_add(body.len() as u64, Relaxed);
            hyper::Response::new(Full::new(Bytes::from(body)))
        }
        _ => {
            served.not_found.fetch_add(1, Relaxed);
            let mut r = hyper::Response::new(Full::new(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            r
        }
    }
}

// === one device's MQTT link ===

/// Messages the devices handed to the broker (QoS 1) and could not.
#[derive(Default)]
struct MqttCounts {
    published: AtomicU64,
    dropped: AtomicU64,
    connected: AtomicU64,
}

struct Link {
    client: AsyncClient,
    topics: Topics,
    seq: u64,
    counts: Arc<MqttCounts>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Link {
    /// Publishes `body` on `level` as the daemon's telemetry would (schema, device, seq, ts).
    fn send(&mut self, level: &str, body: &impl Serialize, model: Option<&str>, v: Option<&str>) {
        let mut m = self.topics.message(level, body, model, v);
        self.seq += 1;
        m.payload.insert("seq".into(), self.seq.into());
        m.payload.insert("ts".into(), unix_ms().into());
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            user_properties: m.user_properties,
            content_type: Some("application/json".into()),
            ..PublishProperties::default()
        };
        let payload = serde_json::to_vec(&m.payload).unwrap_or_default();
        match self.client.try_publish_with_properties(
            m.topic,
            QoS::AtLeastOnce,
            m.retain,
            payload,
            props,
        ) {
            Ok(()) => self.counts.published.fetch_add(1, Relaxed),
            Err(_) => self.counts.dropped.fetch_add(1, Relaxed),
        };
    }
}

// === what the coordinator sees of a device ===

#[derive(Debug, Clone, Default)]
struct Seen {
    /// What the device serves, after the last directive it applied.
    serve: Option<Serve>,
    /// (version, when it started serving it, when it rolled it back).
    rollbacks: Vec<(String, Option<Instant>, Instant)>,
    /// When the device last started serving a candidate.
    candidate_since: Option<(String, Instant)>,
    installs: u64,
    rejects: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

// === the device's deployer ===

/// A version loaded in the engine, with the golden sample its windows run.
struct Loaded {
    model: Model,
    sample: Vec<InputTensor>,
}

impl Loaded {
    /// Runs the sample once: the arm is really loaded and answers.
    fn answers(&self) -> bool {
        let Ok(mut session) = self.model.new_session() else {
            return false;
        };
        let views: Vec<_> = self.sample.iter().map(|t| t.view()).collect();
        let mut out = Outputs::for_model(&self.model.info);
        session.run(&views, &mut out).is_ok()
    }
}

/// The engine side of a device: what the daemon's deployer does, without the model table.
struct SimDeployer {
    model: String,
    engine: Option<LoadOptions>,
    rollout: DeviceRollout,
    /// Validated, not yet committed.
    pending: Option<(String, Option<Loaded>)>,
    /// Versions loaded (stable and candidate), each with its engine model.
    loaded: BTreeMap<String, Option<Loaded>>,
    directive: Option<Vec<u8>>,
    applied: Option<(Vec<u8>, Decision)>,
    link: Link,
    seen: Shared,
    started: Instant,
    /// What is served changed: a new judging window opens (as the daemon's apply marks
    /// the counters), so no window mixes two routings.
    new_window: bool,
}

impl SimDeployer {
    /// The daemon's checks of a staged version: bundle for this name and version, the
    /// model's digest, and (unless --no-engine) tract loads it and reproduces every golden
    /// sample.
    fn check(&self, version: &str, bundle: &Path, model: &Path) -> Result<Option<Loaded>, String> {
        let bytes = std::fs::read(bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
        let b = Bundle::from_slice(&bytes).map_err(|e| format!("bundle.json: {e}"))?;
        if b.name != self.model || b.version != version {
            return Err(format!("bundle.json is for {}@{}", b.name, b.version));
        }
        let digest = digest_file(model).map_err(|e| e.to_string())?;
        if !b.model.sha256.eq_ignore_ascii_case(&digest.sha256) {
            return Err("model.onnx does not match the bundle's sha256".into());
        }
        let Some(load) = &self.engine else {
            return Ok(None);
        };
        let onnx = std::fs::read(model).map_err(|e| format!("{}: {e}", model.display()))?;
        let m = edgeinfer_engine::load_model(&onnx, load).map_err(|e| e.to_string())?;
        let mut session = m.new_session().map_err(|e| e.to_string())?;
        for (i, g) in b.golden.iter().enumerate() {
            let inputs = g.inputs();
            let views: Vec<_> = inputs.iter().map(|t| t.view()).collect();
            let mut out = Outputs::for_model(&m.info);
            session
                .run(&views, &mut out)
                .map_err(|e| format!("golden sample {i}: {e}"))?;
            g.check(&out)
                .map_err(|e| format!("golden sample {i}: {e}"))?;
        }
        let sample = b.golden.first().map(|g| g.inputs()).unwrap_or_default();
        Ok(Some(Loaded { model: m, sample }))
    }

    fn preview(&self, bytes: &[u8]) -> Result<Decision, String> {
        let d = RolloutDirective::parse_for(&self.model, bytes).map_err(|e| e.to_string())?;
        Ok(decide(
            &d,
            self.rollout.device_id(),
            self.rollout.record(),
            self.rollout.config(),
        ))
    }

    /// Serves `serve`: the coordinator's view and the retained status follow.
    fn serve(&mut self, serve: Serve) {
        let now = Instant::now();
        {
            let mut s = self.seen.lock().expect("the device view is never poisoned");
            match serve.candidate() {
                Some(c) if s.candidate_since.as_ref().map(|x| x.0.as_str()) != Some(c) => {
                    s.candidate_since = Some((c.to_owned(), now));
                }
                Some(_) => {}
                None => s.candidate_since = None,
            }
            s.serve = Some(serve.clone());
        }
        self.new_window = true;
        let models = match &serve {
            Serve::Stable { version } | Serve::Candidate { version } => vec![version.clone()],
            Serve::Split {
                stable, candidate, ..
            } => vec![stable.clone(), candidate.clone()],
        };
        let status = Status {
            state: "online",
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            models: models
                .iter()
                .enumerate()
                .map(|(i, v)| ModelState {
                    name: self.model.clone(),
                    version: v.clone(),
                    backend: if self.engine.is_some() {
                        "tract"
                    } else {
                        "none"
                    }
                    .into(),
                    default: i == 0,
                })
                .collect(),
            outbox: OutboxState {
                messages: 0,
                bytes: 0,
                dropped: 0,
            },
            // As the daemon's: the arms and the bad candidates, retained.
            rollout: serde_json::to_value(RolloutState::of(
                &self.model,
                Some(&serve),
                self.rollout.record(),
            ))
            .into_iter()
            .collect(),
        };
        self.link.send("status", &status, None, None);
    }

    fn emit(&mut self, ev: TelemetryEvent) {
        let (m, v) = ev.subject();
        let (m, v) = (m.map(str::to_owned), v.map(str::to_owned));
        self.link.send("events", &ev, m.as_deref(), v.as_deref());
    }
}

impl Deployer for SimDeployer {
    fn validate(&mut self, r: &StagedRelease) -> Result<(), String> {
        let m = self.check(&r.version, &r.bundle_path, &r.model_path)?;
        self.pending = Some((r.version.clone(), m));
        Ok(())
    }

    fn activate(&mut self, r: &InstalledRelease) -> Result<(), String> {
        match self.pending.take() {
            Some((v, m)) if v == r.version => {
                self.loaded.insert(v, m);
                Ok(())
            }
            _ => Err(format!("{} was committed without validation", r.version)),
        }
    }

    fn rollout(&mut self, _model: &str, directive: &[u8]) -> Option<RolloutChoice> {
        match self.preview(directive) {
            Ok(d) => {
                self.directive = Some(directive.to_vec());
                let (version, also) = d.install.split_first()?;
                Some(RolloutChoice {
                    version: version.clone(),
                    also: also.to_vec(),
                    min_release_counter: d.min_release_counter,
                })
            }
            Err(e) => {
                self.directive = None;
                self.seen.lock().unwrap().rejects.push(e);
                None
            }
        }
    }

    fn loaded(&self, _model: &str, version: &str) -> bool {
        self.loaded.contains_key(version)
    }

    fn load_installed(&mut self, r: &InstalledRelease, _beside: bool) -> Result<(), String> {
        let m = self.check(
            &r.version,
            &r.dir.join("bundle.json"),
            &r.dir.join("model.onnx"),
        )?;
        self.loaded.insert(r.version.clone(), m);
        Ok(())
    }

    /// As the daemon: serve the decision once all its versions are loaded, else stable.
    fn rollout_ready(&mut self, _model: &str, ready: &[String]) -> Result<(), String> {
        let Some(bytes) = self.directive.clone() else {
            return Ok(());
        };
        let decision = self.preview(&bytes)?;
        let keep = if decision.install.iter().all(|v| ready.contains(v)) {
            if self.applied.as_ref() != Some(&(bytes.clone(), decision.clone())) {
                let d =
                    RolloutDirective::parse_for(&self.model, &bytes).map_err(|e| e.to_string())?;
                let (d, err) = self.rollout.apply(d, unix_ms() / 1000);
                if let Some(e) = err {
                    self.seen.lock().unwrap().rejects.push(e.to_string());
                }
                self.serve(d.serve.clone());
                self.applied = Some((bytes, d));
            }
            decision.install
        } else if ready.first() == decision.install.first() {
            let stable = decision.install[0].clone();
            self.serve(Serve::Stable {
                version: stable.clone(),
            });
            self.applied = None;
            vec![stable]
        } else {
            return Ok(());
        };
        self.loaded.retain(|v, _| keep.contains(v));
        Ok(())
    }

    fn event(&mut self, ev: &AgentEvent) {
        let Some(e) = ev.telemetry() else { return };
        match &e {
            TelemetryEvent::ModelInstalled { .. } => self.seen.lock().unwrap().installs += 1,
            TelemetryEvent::ModelRejected { reason, .. } => {
                self.seen.lock().unwrap().rejects.push(reason.clone())
            }
            _ => {}
        }
        self.emit(e);
    }
}

// === one device ===

struct Device {
    agent: Agent,
    d: SimDeployer,
    backoff: Backoff,
    next_poll: Instant,
    next_window: Instant,
}

/// How the simulated requests behave.
#[derive(Clone)]
struct Traffic {
    requests: u64,
    window: Duration,
    poll: Duration,
    jitter_ms: u64,
    bad: Option<String>,
    bad_error_rate: f64,
    bad_latency_factor: f64,
    /// Polls completed, fleet-wide.
    polls: Arc<AtomicU64>,
}

impl Traffic {
    /// One arm's window: `n` requests, errors drawn at the version's rate, a p99 around
    /// 1 ms (±10 %), the bad version's slower; each loaded arm also runs a golden sample.
    fn arm(&self, version: &str, n: u64, loaded: Option<&Loaded>) -> ArmWindow {
        let bad = self.bad.as_deref() == Some(version);
        let rate = if bad { self.bad_error_rate } else { 0.001 };
        let mut errors = (0..n).filter(|_| fastrand::f64() < rate).count() as u64;
        if n > 0 && loaded.is_some_and(|l| !l.answers()) {
            errors = n;
        }
        let factor = if bad { self.bad_latency_factor } else { 1.0 };
        let p99 = (1000.0 * factor * (0.9 + 0.2 * fastrand::f64())) as u64;
        ArmWindow {
            requests: n,
            errors,
            p99_us: (n > 0).then_some(p99),
            ..ArmWindow::default()
        }
    }
}

impl Device {
    fn tick(&mut self, now: Instant, t: &Traffic) {
        if now >= self.next_poll {
            let wait = match self.agent.poll_once(&mut self.d) {
                PollOutcome::Done { .. } => {
                    self.backoff.reset();
                    t.poll + Duration::from_millis(fastrand::u64(0..=t.jitter_ms))
                }
                _ => self.backoff.next_wait(),
            };
            t.polls.fetch_add(1, Relaxed);
            self.next_poll = Instant::now() + wait;
            if std::mem::take(&mut self.d.new_window) {
                self.next_window = Instant::now() + t.window;
            }
        }
        if now >= self.next_window {
            self.next_window = now + t.window;
            self.window(t);
        }
    }

    /// Closes one window: latency reports per arm to the broker, the real judge on the
    /// candidate, a rollback (recorded, evented, status) when it fails.
    fn window(&mut self, t: &Traffic) {
        let Some(serve) = self.d.seen.lock().unwrap().serve.clone() else {
            return;
        };
        let model = self.d.model.clone();
        let arm_of = |version: &str, n: u64| {
            let l = self.d.loaded.get(version).and_then(|m| m.as_ref());
            t.arm(version, n, l)
        };
        let (stable, candidate) = match &serve {
            Serve::Stable { version } => ((version.clone(), arm_of(version, t.requests)), None),
            Serve::Candidate { version } => {
                let stable_v = self.d.applied.as_ref().map(|(_, d)| d.install[0].clone());
                let c = arm_of(version, t.requests);
                (
                    (stable_v.unwrap_or_default(), ArmWindow::default()),
                    Some((version.clone(), c)),
                )
            }
            Serve::Split {
                stable,
                candidate,
                candidate_bp,
                ..
            } => {
                let nc = t.requests * *candidate_bp as u64 / 10_000;
                let s = arm_of(stable, t.requests - nc);
                let c = arm_of(candidate, nc);
                ((stable.clone(), s), Some((candidate.clone(), c)))
            }
        };
        for (version, arm, w) in std::iter::once((&stable.0, Arm::Stable, &stable.1))
            .chain(candidate.as_ref().map(|(v, w)| (v, Arm::Candidate, w)))
        {
            if w.requests == 0 {
                continue;
            }
            let p99 = w.p99_us.unwrap_or(0);
            let mut errors = BTreeMap::new();
            if w.errors > 0 {
                errors.insert("3".to_owned(), w.errors); // ENGINE
            }
            let report = LatencyReport {
                model: model.clone(),
                version: version.clone(),
                arm: arm.as_str().into(),
                count: w.requests,
                ok: w.requests - w.errors,
                p50_us: p99 / 2,
                p90_us: p99 * 3 / 4,
                p99_us: p99,
                max_us: p99 + p99 / 5,
                queue_p50_us: 20,
                queue_p99_us: 80,
                compute_p50_us: p99 / 2 - 20,
                compute_p99_us: p99 - 80,
                errors,
            };
            self.d
                .link
                .send("latency", &report, Some(&model), Some(version));
        }
        let Some((_, cw)) = candidate else {
            return;
        };
        let stats = WindowStats {
            stable: matches!(serve, Serve::Split { .. }).then_some(stable.1),
            candidate: cw,
        };
        let (_, rollback) =
            self.d
                .rollout
                .window(&model, &stats, &Baseline::default(), unix_ms() / 1000);
        let Some(rb) = rollback else { return };
        let now = Instant::now();
        {
            let mut s = self.d.seen.lock().unwrap();
            let since = s.candidate_since.take().map(|x| x.1);
            s.rollbacks.push((rb.bad.version.clone(), since, now));
        }
        let to = match &rb.decision.serve {
            Serve::Stable { version } | Serve::Candidate { version } => version.clone(),
            Serve::Split { stable, .. } => stable.clone(),
        };
        self.d.emit(TelemetryEvent::ModelRolledBack {
            model: model.clone(),
            from: rb.bad.version.clone(),
            to,
            reason: rb.bad.reason.clone(),
        });
        self.d.serve(rb.decision.serve.clone());
        if let Some(bytes) = self.d.directive.clone() {
            self.d.applied = Some((bytes, rb.decision));
        }
    }
}

/// The lines of `rollout advance`'s output from its refusal on; empty if it did not refuse.
fn refusal_of(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("refusing to advance"))
        .collect();
    lines.join("\n")
}

// === the run ===

#[derive(Debug, Clone, Serialize)]
struct StepReport {
    step: String,
    /// The directive published at the step's start, in words.
    directive: String,
    /// Devices whose decision includes the candidate (the canary).
    canary_devices: usize,
    converged: bool,
    /// From the directive's publication to the last device serving what it decides.
    convergence_s: f64,
    /// Polls the devices completed during the step.
    polls: u64,
    repo_requests: u64,
    repo_bytes: u64,
    /// Messages the devices published per second over the step (QoS 1, all topics).
    device_msgs_per_s: f64,
    /// The broker's own count ($SYS/broker/publish/messages/received), per second.
    broker_received_per_s: Option<f64>,
    broker_sent_per_s: Option<f64>,
    /// The `rollout advance` (or `set`) that published this step: its exit and last lines.
    command: String,
    command_ok: bool,
    command_tail: String,
}

#[derive(Debug, Clone, Serialize)]
struct BadReport {
    version: String,
    canary_devices: usize,
    rolled_back: usize,
    /// From serving the bad candidate to rolling it back, per device: max and median.
    serve_to_rollback_max_s: f64,
    serve_to_rollback_median_s: f64,
    /// From the directive's publication to the last canary device rolling back.
    publish_to_last_rollback_s: f64,
    advance_refused: bool,
    advance_refusal: String,
    /// A second `rollout advance`, started after every canary device rolled back: no
    /// rollback event is published while it listens, only the retained statuses tell.
    late_advance_refused: bool,
    late_advance_refusal: String,
    records_on_disk: usize,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    devices: usize,
    workers: usize,
    poll_ms: u64,
    jitter_ms: u64,
    window_ms: u64,
    engine: bool,
    steps: Vec<StepReport>,
    bad: Option<BadReport>,
    mqtt_dropped: u64,
    rejects: Vec<String>,
}

/// The broker's $SYS counters, when it publishes them.
#[derive(Default)]
struct SysCounters {
    received: Option<u64>,
    sent: Option<u64>,
}

struct Sim {
    a: SimulateArgs,
    seen: Vec<(String, Shared)>,
    served: Arc<Served>,
    polls: Arc<AtomicU64>,
    counts: Arc<MqttCounts>,
    sys: Arc<Mutex<SysCounters>>,
    state: PathBuf,
    thresholds: PathBuf,
}

pub fn simulate(mut a: SimulateArgs) -> Result<()> {
    ensure!(a.devices > 0, "--devices must be at least 1");
    ensure!(!a.steps.is_empty(), "--steps names no percent");
    ensure!(a.workers > 0, "--workers must be at least 1");
    let url = if a.broker.contains("://") {
        a.broker.clone()
    } else {
        format!("mqtt://{}", a.broker)
    };
    let broker = BrokerAddr::parse(&url).map_err(anyhow::Error::msg)?;
    a.broker = url; // `rollout advance` takes the URL form
    ensure!(!broker.tls, "{}: mqtts:// is not simulated", a.broker);
    if a.state.exists() && std::fs::read_dir(&a.state)?.next().is_some() {
        bail!(
            "--state {} is not empty: devices start fresh",
            a.state.display()
        );
    }
    std::fs::create_dir_all(&a.state)?;
    let state = a.state.canonicalize()?;
    let root_file = a.publish.join("metadata/1.root.json");
    ensure!(root_file.is_file(), "{} is missing", root_file.display());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served = Arc::new(Served::default());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let repo_addr: SocketAddr = listener.local_addr()?;
    rt.spawn(serve_repo(
        listener,
        a.publish.canonicalize()?,
        served.clone(),
    ));
    let url = format!("http://{repo_addr}/");
    eprintln!("repository {} served at {url}", a.publish.display());

    // The judge's thresholds, shared by the devices and `rollout advance`.
    let cfg = RolloutConfig {
        window_s: a.window_ms.div_ceil(1000).max(1),
        min_requests: (a.requests_per_window / 4).max(1),
        ..RolloutConfig::default()
    };
    let thresholds = state.join("thresholds.toml");
    std::fs::write(
        &thresholds,
        format!("[rollout]\nmin_requests = {}\n", cfg.min_requests),
    )?;

    let counts = Arc::new(MqttCounts::default());
    let sys = Arc::new(Mutex::new(SysCounters::default()));
    let stop = Arc::new(AtomicBool::new(false));
    monitor(&rt, &broker, &a.prefix, sys.clone(), stop.clone());

    let traffic = Traffic {
        requests: a.requests_per_window,
        window: Duration::from_millis(a.window_ms),
        poll: Duration::from_millis(a.poll_ms),
        jitter_ms: a.jitter_ms,
        bad: a.bad_candidate.clone(),
        bad_error_rate: a.bad_error_rate,
        bad_latency_factor: a.bad_latency_factor,
        polls: Arc::default(),
    };
    let engine = (!a.no_engine).then(|| LoadOptions {
        engine: EngineChoice::Tract,
        ..LoadOptions::default()
    });
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut devices = Vec::new();
    let mut clients = Vec::new();
    for i in 0..a.devices {
        let id = format!("sim-{i:04}");
        let dir = state.join(&id);
        let reg = RegistryConfig {
            enabled: true,
            url: Some(url.clone()),
            root_file: Some(root_file.clone()),
            models: vec![a.model.clone()],
            poll_interval_ms: a.poll_ms,
            poll_jitter_ms: a.jitter_ms,
            retry_initial_ms: 500,
            ..RegistryConfig::default()
        };
        let agent = Agent::new(reg, &dir.join("registry"), system_clock())
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("device {id}"))?;
        let (record, _) = BadRecord::open_or_distrust(&cfg.record_path(&dir));
        let topics = Topics {
            prefix: a.prefix.clone(),
            device: id.clone(),
        };
        let client = connect(&rt, &broker, &topics, counts.clone());
        clients.push(client.clone());
        let shared: Shared = Arc::default();
        seen.push((id.clone(), shared.clone()));
        // Devices boot at random points of one poll interval, as a real fleet does.
        let first = start + Duration::from_millis(fastrand::u64(0..=a.poll_ms.min(2_000)));
        devices.push(Device {
            agent,
            d: SimDeployer {
                model: a.model.clone(),
                engine: engine.clone(),
                rollout: DeviceRollout::new(id, cfg.clone(), record),
                pending: None,
                loaded: BTreeMap::new(),
                directive: None,
                applied: None,
                link: Link {
                    client,
                    topics,
                    seq: 0,
                    counts: counts.clone(),
                },
                seen: shared,
                started: Instant::now(),
                new_window: false,
            },
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_millis(a.poll_ms)),
            next_poll: first,
            next_window: first + traffic.window,
        });
    }
    let t0 = Instant::now();
    while counts.connected.load(Relaxed) < a.devices as u64 {
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "only {} of {} devices connected to the broker {}",
            counts.connected.load(Relaxed),
            a.devices,
            a.broker
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "{} devices connected to {} in {:.1} s",
        a.devices,
        a.broker,
        t0.elapsed().as_secs_f64()
    );

    // Worker threads: device i belongs to worker i mod W.
    let mut shards: Vec<Vec<Device>> = (0..a.workers).map(|_| Vec::new()).collect();
    for (i, d) in devices.into_iter().enumerate() {
        shards[i % a.workers].push(d);
    }
    let mut threads = Vec::new();
    for (w, mut shard) in shards.into_iter().enumerate() {
        let (stop, t) = (stop.clone(), traffic.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("fleet-sim-{w}"))
                .spawn(move || {
                    while !stop.load(Relaxed) {
                        let now = Instant::now();
                        let mut next = now + Duration::from_millis(50);
                        for d in shard.iter_mut() {
                            d.tick(now, &t);
                            next = next.min(d.next_poll).min(d.next_window);
                        }
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                })?,
        );
    }

    let sim = Sim {
        a,
        seen,
        served,
        polls: traffic.polls.clone(),
        counts,
        sys,
        state,
        thresholds,
    };
    let result = sim.run();
    stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    for c in clients {
        let _ = c.try_disconnect();
    }
    std::thread::sleep(Duration::from_millis(200));
    rt.shutdown_timeout(Duration::from_secs(2));
    let report = result?;
    if let Some(p) = &sim.a.report {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    print_report(&report);
    if !report.steps.iter().all(|s| s.converged && s.command_ok) {
        bail!("a step did not converge or its command failed (see above)");
    }
    if let Some(b) = &report.bad {
        ensure!(
            b.rolled_back == b.canary_devices && b.advance_refused && b.late_advance_refused,
            "the bad candidate was not handled: {} of {} canary devices rolled back, advance refused: {}, advance started after the rollbacks refused: {}",
            b.rolled_back,
            b.canary_devices,
            b.advance_refused,
            b.late_advance_refused
        );
    }
    Ok(())
}

/// One MQTT connection per device, driven by its own task on the shared runtime.
fn connect(
    rt: &tokio::runtime::Runtime,
    broker: &BrokerAddr,
    topics: &Topics,
    counts: Arc<MqttCounts>,
) -> AsyncClient {
    let mut o = MqttOptions::new(
        format!("{}-{}", topics.prefix, topics.device),
        &broker.host,
        broker.port,
    );
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(true);
    o.set_last_will(LastWill::new(
        topics.topic("status"),
        topics.offline_payload(),
        QoS::AtLeastOnce,
        true,
        None,
    ));
    let (client, mut el) = AsyncClient::new(o, 256);
    rt.spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    counts.connected.fetch_add(1, Relaxed);
                }
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    });
    client
}

/// Reads the broker's $SYS message counters (mosquitto publishes them every
/// `sys_interval`).
fn monitor(
    rt: &tokio::runtime::Runtime,
    broker: &BrokerAddr,
    prefix: &str,
    sys: Arc<Mutex<SysCounters>>,
    stop: Arc<AtomicBool>,
) {
    let mut o = MqttOptions::new(format!("{prefix}-monitor"), &broker.host, broker.port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 16);
    rt.spawn(async move {
        for t in [
            "$SYS/broker/publish/messages/received",
            "$SYS/broker/publish/messages/sent",
        ] {
            let _ = client.subscribe(t, QoS::AtMostOnce).await;
        }
        while !stop.load(Relaxed) {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v = std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok());
                    let mut s = sys.lock().unwrap();
                    if p.topic.ends_with(b"/received") {
                        s.received = v.or(s.received);
                    } else {
                        s.sent = v.or(s.sent);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    });
}

/// What a step's start looks like to the counters.
struct Mark {
    at: Instant,
    polls: u64,
    requests: u64,
    bytes: u64,
    published: u64,
    sys_received: Option<u64>,
    sys_sent: Option<u64>,
}

impl Sim {
    fn mark(&self) -> Mark {
        let s = self.sys.lock().unwrap();
        Mark {
            at: Instant::now(),
            polls: self.polls.load(Relaxed),
            requests: self.served.requests.load(Relaxed),
            bytes: self.served.bytes.load(Relaxed),
            published: self.counts.published.load(Relaxed),
            sys_received: s.received,
            sys_sent: s.sent,
        }
    }

    /// `edgeinfer ARGS` (this binary), its success and the last lines it printed.
    fn edgeinfer(&self, args: &[String]) -> Result<(bool, String)> {
        let out = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running edgeinfer")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    fn signing(&self) -> Vec<String> {
        let mut v = vec![
            "--dir".to_owned(),
            self.a.release_dir.display().to_string(),
            "--model".into(),
            self.a.model.clone(),
        ];
        for k in &self.a.keys {
            v.extend(["--key".into(), k.display().to_string()]);
        }
        v.extend(["--publish".into(), self.a.publish.display().to_string()]);
        v
    }

    fn broker_args(&self, listen_s: u64) -> Vec<String> {
        vec![
            "--broker".into(),
            self.a.broker.clone(),
            "--prefix".into(),
            self.a.prefix.clone(),
            "--listen-s".into(),
            listen_s.to_string(),
        ]
    }

    fn directive(&self) -> Result<RolloutDirective> {
        let repo = Repo::open(&self.a.release_dir)?;
        let bytes = repo.read_target(&format!("rollout/{}.json", self.a.model))?;
        Ok(RolloutDirective::parse_for(&self.a.model, &bytes)?)
    }

    /// The first salt `<base>-k` whose canary at `percent` is not empty: what an operator
    /// checks with `rollout show --device` before a small first step.
    fn salt_for(&self, base: &str, percent: f64) -> String {
        let bp = (percent * 100.0).round() as u32;
        (0..10_000)
            .map(|k| format!("{base}-{k}"))
            .find(|s| {
                self.seen
                    .iter()
                    .any(|(id, _)| bucket(s.as_bytes(), id.as_bytes()) < bp)
            })
            .unwrap_or_else(|| format!("{base}-0"))
    }

    /// Waits until every device serves what `want(id)` says; the time it took from `m`.
    fn converge(&self, m: &Mark, want: impl Fn(&str) -> Serve) -> (bool, f64) {
        let deadline = m.at + Duration::from_secs(self.a.step_timeout_s);
        loop {
            let pending = self
                .seen
                .iter()
                .filter(|(id, s)| s.lock().unwrap().serve.as_ref() != Some(&want(id)))
                .count();
            if pending == 0 {
                return (true, m.at.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                eprintln!("{pending} devices did not converge");
                return (false, m.at.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn step_report(
        &self,
        step: &str,
        m: &Mark,
        converged: (bool, f64),
        command: (String, bool, String),
    ) -> Result<StepReport> {
        let d = self.directive()?;
        let empty = BadRecord::open(&self.state.join("none.json"))?;
        let cfg = RolloutConfig::default();
        let canary = self
            .seen
            .iter()
            .filter(|(id, _)| decide(&d, id, &empty, &cfg).install.len() > 1)
            .count();
        let end = self.mark();
        let secs = (end.at - m.at).as_secs_f64().max(1e-3);
        let rate = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if b > a => Some((b - a) as f64 / secs),
            _ => None,
        };
        let tail: Vec<&str> = command.2.lines().rev().take(6).collect();
        Ok(StepReport {
            step: step.to_owned(),
            directive: describe(&d),
            canary_devices: canary,
            converged: converged.0,
            convergence_s: converged.1,
            polls: end.polls - m.polls,
            repo_requests: end.requests - m.requests,
            repo_bytes: end.bytes - m.bytes,
            device_msgs_per_s: (end.published - m.published) as f64 / secs,
            broker_received_per_s: rate(m.sys_received, end.sys_received),
            broker_sent_per_s: rate(m.sys_sent, end.sys_sent),
            command: command.0,
            command_ok: command.1,
            command_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }

    /// Runs `rollout ARGS`, then waits for the fleet to serve what the new directive
    /// decides for each device (none has a bad record in these steps).
    fn step(&self, name: &str, args: Vec<String>) -> Result<StepReport> {
        let m = self.mark();
        let (ok, text) = self.edgeinfer(&args)?;
        let published = self.mark();
        let cmd = format!("edgeinfer {}", args.join(" "));
        if !ok {
            eprintln!("{cmd} failed:\n{text}");
            return self.step_report(name, &m, (false, 0.0), (cmd, false, text));
        }
        let d = self.directive()?;
        let empty = BadRecord::open(&self.state.join("none.json"))?;
        let cfg = RolloutConfig::default();
        let conv = self.converge(&published, |id| decide(&d, id, &empty, &cfg).serve);
        eprintln!("{name}: {} in {:.1} s", describe(&d), conv.1);
        self.step_report(name, &published, conv, (cmd, true, text))
    }

    fn run(&self) -> Result<Report> {
        let a = &self.a;
        let mut steps = Vec::new();
        // Boot: every device installs stable from the directive already published.
        let m = self.mark();
        let d0 = self.directive()?;
        ensure!(
            d0.candidate.is_none() && d0.stable == a.stable,
            "publish `rollout set --stable {}` (no candidate) before the run; the repository says: {}",
            a.stable,
            describe(&d0)
        );
        let stable = Serve::Stable {
            version: a.stable.clone(),
        };
        let conv = self.converge(&m, |_| stable.clone());
        eprintln!(
            "boot: {} devices on {} in {:.1} s",
            self.seen.len(),
            a.stable,
            conv.1
        );
        steps.push(self.step_report(
            "boot",
            &m,
            conv,
            ("(devices start)".into(), true, String::new()),
        )?);
        // Nothing changes for one poll period: what an idle fleet costs.
        let m = self.mark();
        std::thread::sleep(Duration::from_millis(a.poll_ms + a.jitter_ms));
        let idle = (true, m.at.elapsed().as_secs_f64());
        let quiet = ("(no change)".into(), true, String::new());
        steps.push(self.step_report("idle", &m, idle, quiet)?);

        let salt = self.salt_for("fleet", a.steps[0]);
        let listen = (a.window_ms * 3).div_ceil(1000) + 2;
        for (i, p) in a.steps.iter().enumerate() {
            let mut args: Vec<String> = vec!["rollout".into()];
            if i == 0 {
                args.extend(["set".into()]);
                args.extend(self.signing());
                args.extend([
                    "--stable".into(),
                    a.stable.clone(),
                    "--candidate".into(),
                    a.candidate.clone(),
                    "--percent".into(),
                    p.to_string(),
                    "--salt".into(),
                    salt.clone(),
                ]);
            } else {
                args.extend(["advance".into()]);
                args.extend(self.signing());
                args.extend(["--to".into(), p.to_string()]);
                args.extend(self.broker_args(listen));
                args.extend(["--thresholds".into(), self.thresholds.display().to_string()]);
            }
            let r = self.step(&format!("{p}%"), args)?;
            let failed = !(r.converged && r.command_ok);
            steps.push(r);
            if failed {
                return Ok(self.report(steps, None));
            }
        }
        let Some(bad) = a.bad_candidate.clone() else {
            return Ok(self.report(steps, None));
        };
        // Promote the candidate, then a new trial with the bad one (split, so the judge
        // has the device's own stable arm to compare with).
        let mut args: Vec<String> = vec!["rollout".into(), "set".into()];
        args.extend(self.signing());
        args.extend(["--stable".into(), a.candidate.clone()]);
        let r = self.step("promote", args)?;
        let failed = !(r.converged && r.command_ok);
        steps.push(r);
        if failed {
            return Ok(self.report(steps, None));
        }
        let bad_report = self.bad_trial(&bad)?;
        Ok(self.report(steps, Some(bad_report)))
    }

    fn bad_trial(&self, bad: &str) -> Result<BadReport> {
        let a = &self.a;
        let first = a.steps[0];
        let salt = self.salt_for("bad", first);
        let mut set: Vec<String> = vec!["rollout".into(), "set".into()];
        set.extend(self.signing());
        set.extend([
            "--stable".into(),
            a.candidate.clone(),
            "--candidate".into(),
            bad.to_owned(),
            "--percent".into(),
            first.to_string(),
            "--salt".into(),
            salt.clone(),
            "--split".into(),
            "50".into(),
        ]);
        let (ok, text) = self.edgeinfer(&set)?;
        ensure!(ok, "rollout set for the bad candidate failed:\n{text}");
        let published = Instant::now();
        let bp = (first * 100.0).round() as u32;
        let canary: Vec<&Shared> = self
            .seen
            .iter()
            .filter(|(id, _)| bucket(salt.as_bytes(), id.as_bytes()) < bp)
            .map(|(_, s)| s)
            .collect();
        // The operator tries to advance while the canary runs: it must refuse. It listens
        // long enough for every canary device to poll, install, judge and roll back.
        let listen = (a.poll_ms + a.jitter_ms + 3 * a.window_ms).div_ceil(1000) + 3;
        let advance = |listen_s: u64| {
            let mut adv: Vec<String> = vec!["rollout".into(), "advance".into()];
            adv.extend(self.signing());
            adv.extend([
                "--to".into(),
                a.steps.get(1).copied().unwrap_or(100.0).to_string(),
            ]);
            adv.extend(self.broker_args(listen_s));
            adv.extend(["--thresholds".into(), self.thresholds.display().to_string()]);
            adv
        };
        let adv = advance(listen);
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .args(&adv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let deadline = published + Duration::from_secs(a.step_timeout_s);
        let stable = Serve::Stable {
            version: a.candidate.clone(),
        };
        let mut last_rollback = published;
        loop {
            let done: Vec<bool> = canary
                .iter()
                .map(|s| {
                    let s = s.lock().unwrap();
                    s.rollbacks.iter().any(|r| r.0 == bad) && s.serve.as_ref() == Some(&stable)
                })
                .collect();
            if done.iter().all(|d| *d) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let mut serve_to_rb = Vec::new();
        let mut rolled_back = 0;
        for s in &canary {
            let s = s.lock().unwrap();
            if let Some(r) = s.rollbacks.iter().find(|r| r.0 == bad) {
                rolled_back += 1;
                last_rollback = last_rollback.max(r.2);
                if let Some(since) = r.1 {
                    serve_to_rb.push((r.2 - since).as_secs_f64());
                }
            }
        }
        serve_to_rb.sort_by(f64::total_cmp);
        let out = child.wait_with_output()?;
        let refusal = refusal_of(&out);
        // Retained statuses arrive at subscription: a short listen is enough.
        let late_out = Command::new(std::env::current_exe()?)
            .args(advance(2))
            .stdin(Stdio::null())
            .output()?;
        let late_refusal = refusal_of(&late_out);
        let records = self
            .seen
            .iter()
            .filter(|(id, _)| {
                BadRecord::open(&RolloutConfig::default().record_path(&self.state.join(id)))
                    .map(|r| r.is_bad(&a.model, bad, &salt))
                    .unwrap_or(false)
            })
            .count();
        Ok(BadReport {
            version: bad.to_owned(),
            canary_devices: canary.len(),
            rolled_back,
            serve_to_rollback_max_s: serve_to_rb.last().copied().unwrap_or(0.0),
            serve_to_rollback_median_s: serve_to_rb
                .get(serve_to_rb.len() / 2)
                .copied()
                .unwrap_or(0.0),
            publish_to_last_rollback_s: (last_rollback - published).as_secs_f64(),
            advance_refused: out.status.code() == Some(1) && !refusal.is_empty(),
            advance_refusal: refusal,
            late_advance_refused: late_out.status.code() == Some(1) && !late_refusal.is_empty(),
            late_advance_refusal: late_refusal,
            records_on_disk: records,
        })
    }

    fn report(&self, steps: Vec<StepReport>, bad: Option<BadReport>) -> Report {
        let rejects: Vec<String> = self
            .seen
            .iter()
            .flat_map(|(id, s)| {
                let s = s.lock().unwrap();
                s.rejects
                    .iter()
                    .map(|r| format!("{id}: {r}"))
                    .collect::<Vec<_>>()
            })
            .take(20)
            .collect();
        Report {
            devices: self.a.devices,
            workers: self.a.workers,
            poll_ms: self.a.poll_ms,
            jitter_ms: self.a.jitter_ms,
            window_ms: self.a.window_ms,
            engine: !self.a.no_engine,
            steps,
            bad,
            mqtt_dropped: self.counts.dropped.load(Relaxed),
            rejects,
        }
    }
}

fn describe(d: &RolloutDirective) -> String {
    match &d.candidate {
        None => format!("stable {}", d.stable),
        Some(c) => format!(
            "stable {}, candidate {} at {}% (salt {})",
            d.stable, c.version, c.canary.percent, c.canary.salt
        ),
    }
}

fn print_report(r: &Report) {
    println!(
        "fleet simulation: {} devices on {} threads, poll {} ms + up to {} ms jitter, window {} ms, engine {}",
        r.devices,
        r.workers,
        r.poll_ms,
        r.jitter_ms,
        r.window_ms,
        if r.engine { "tract" } else { "none" }
    );
    println!("step     canary  converged  seconds  polls  repo_requests  repo_bytes  dev_msg/s  broker_in/s  broker_out/s");
    for s in &r.steps {
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        println!(
            "{:<8} {:>6}  {:>9}  {:>7.1}  {:>5}  {:>13}  {:>10}  {:>9.0}  {:>11}  {:>12}",
            s.step,
            s.canary_devices,
            s.converged,
            s.convergence_s,
            s.polls,
            s.repo_requests,
            s.repo_bytes,
            s.device_msgs_per_s,
            opt(s.broker_received_per_s),
            opt(s.broker_sent_per_s)
        );
    }
    if let Some(b) = &r.bad {
        println!(
            "bad candidate {}: {} of {} canary devices rolled back ({} recorded on disk); serve -> rollback max {:.1} s, median {:.1} s; publish -> last rollback {:.1} s",
            b.version,
            b.rolled_back,
            b.canary_devices,
            b.records_on_disk,
            b.serve_to_rollback_max_s,
            b.serve_to_rollback_median_s,
            b.publish_to_last_rollback_s
        );
        println!(
            "rollout advance refused: {}\n{}",
            b.advance_refused, b.advance_refusal
        );
        println!(
            "rollout advance started after the rollbacks refused: {}\n{}",
            b.late_advance_refused, b.late_advance_refusal
        );
    }
    if r.mqtt_dropped > 0 {
        println!(
            "MQTT messages dropped (client queue full): {}",
            r.mqtt_dropped
        );
    }
    for x in &r.rejects {
        println!("refused: {x}");
    }
}
