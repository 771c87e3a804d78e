//! Composes the registry's pull agent into the daemon: at startup the last verified
//! version of each followed model is loaded from the install area ([`restore`]); then the
//! agent runs on its own thread ([`start`]) and this module is its [`Deployer`]: it
//! validates a staged version in the engine (the bundle's golden samples must match within
//! tolerance, and `engine = "auto"` decides on them at 1 and at 64 rows), hands the
//! validated model to [`Control`] for the hot swap once the install is committed, and
//! reports every install and refusal (log, telemetry event, and [`Registry::events`]).
//!
//! Rollouts: a verified `rollout/<name>.json` goes to [`RolloutGlue::preview`]; the agent
//! installs every version of its `Decision::install` (stable as the default, a canary
//! candidate beside it) and then [`RolloutGlue::apply`] serves the split. A thread
//! (`edgeinfer-rollout`) closes a judging window every `[rollout] window_s` with
//! [`RolloutGlue::window`], so a failing candidate is rolled back (and recorded) by the
//! running daemon; [`Registry::rollbacks`] lists them.
//!
//! Nothing here runs on a data-path core: loading, golden runs and session warm-up happen
//! on the agent's thread, and the cores only see the new snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edgeinfer_engine::{InputTensor, LoadOptions, Model, Outputs};
use edgeinfer_registry::agent::{
    system_clock, Agent, AgentEvent, AgentHandle, Clock, Deployer, InstalledRelease, RolloutChoice,
    StagedRelease,
};
use edgeinfer_registry::install::{digest_file, InstallStore};
use edgeinfer_registry::release::bundle::Bundle;
use edgeinfer_rollout::{BadVersion, Baseline, Decision, Serve};
use edgeinfer_telemetry::events::Event;

use crate::app::Control;
use crate::config::Config;
use crate::model_table::{BatchConfig, ServingConfig};
use crate::rollout_glue::RolloutGlue;

/// Rows of the larger golden set `engine = "auto"` times (the smaller is 1 row).
pub const AUTO_BATCH_ROWS: usize = 64;

/// A version that passed validation: its engine model, ready to be swapped in.
struct Validated {
    model: Model,
    serving: ServingConfig,
    /// Its feature schema bound to the store, published with it (server::entity).
    features: Option<crate::server::entity::Binding>,
}

/// What happened, for tests and status: every [`AgentEvent`] in order, and every
/// candidate the running daemon rolled back.
#[derive(Default)]
struct EventLog {
    events: Mutex<Vec<AgentEvent>>,
    changed: Condvar,
    rollbacks: Mutex<Vec<BadVersion>>,
    rolled_back: Condvar,
}

/// Changes what the engine loaded before it is served: a test seam at the engine boundary
/// (fault injection into a registry-installed version). `(model, version, model)`.
pub type ModelHook = Arc<dyn Fn(&str, &str, Model) -> Model + Send + Sync>;

/// Each validated version's baseline for the judge (from its bundle).
type Baselines = Arc<Mutex<HashMap<(String, String), Baseline>>>;

/// The daemon's [`Deployer`].
struct DaemonDeployer {
    control: Control,
    load: LoadOptions,
    pending: Option<(String, String, Validated)>,
    /// The registry version each model serves by default (retired when the next one is).
    serving: BTreeMap<String, String>,
    /// Registry versions loaded beside the default (rollout candidates).
    beside: BTreeMap<String, BTreeSet<String>>,
    /// The rollout state; `None` at startup restore (no directive is followed there).
    rollout: Option<Arc<Mutex<RolloutGlue>>>,
    /// The last verified directive bytes of each model, and what was last applied.
    directives: BTreeMap<String, Vec<u8>>,
    applied: BTreeMap<String, (Vec<u8>, Decision)>,
    baselines: Baselines,
    hook: Option<ModelHook>,
    log: Arc<EventLog>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the judge compares a version with when the stable arm gives no reference.
fn baseline_of(bundle: &Bundle) -> Baseline {
    Baseline {
        accuracy: bundle.baseline.metrics.get("accuracy").copied(),
        ..Baseline::default()
    }
}

/// The golden samples' rows as two input sets: the first row alone, and
/// [`AUTO_BATCH_ROWS`] rows (all rows of every sample, repeated). Empty if the samples do
/// not agree on their inputs or a leading dimension is 0.
pub fn golden_sets(bundle: &Bundle) -> Vec<Vec<InputTensor>> {
    let samples: Vec<Vec<InputTensor>> = bundle.golden.iter().map(|g| g.inputs()).collect();
    let Some(first) = samples.first() else {
        return Vec::new();
    };
    // Per input: the bytes of each row, over all samples.
    let mut rows: Vec<Vec<&[u8]>> = vec![Vec::new(); first.len()];
    for s in &samples {
        if s.len() != first.len() {
            return Vec::new();
        }
        for (i, t) in s.iter().enumerate() {
            let f = &first[i];
            let n = t.shape.first().copied().unwrap_or(0);
            if t.name != f.name
                || t.dtype != f.dtype
                || t.shape.get(1..) != f.shape.get(1..)
                || n == 0
            {
                return Vec::new();
            }
            rows[i].extend(t.data.chunks_exact(t.data.len() / n));
        }
    }
    let set = |n: usize| -> Vec<InputTensor> {
        first
            .iter()
            .zip(&rows)
            .map(|(f, r)| {
                let mut shape = f.shape.clone();
                shape[0] = n;
                InputTensor {
                    name: f.name.clone(),
                    dtype: f.dtype,
                    shape,
                    data: r
                        .iter()
                        .cycle()
                        .take(n)
                        .flat_map(|b| b.iter().copied())
                        .collect(),
                }
            })
            .collect()
    };
    vec![set(1), set(AUTO_BATCH_ROWS)]
}

impl DaemonDeployer {
    /// Loads `model_bytes` as the bundle asks and runs every golden sample on it.
    fn check(
        &self,
        name: &str,
        version: &str,
        bundle_bytes: &[u8],
        model_path: &std::path::Path,
    ) -> Result<Validated, String> {
        let bundle = Bundle::from_slice(bundle_bytes).map_err(|e| format!("bundle.json: {e}"))?;
        if bundle.name != name || bundle.version != version {
            return Err(format!(
                "bundle.json is for {}@{}, not {name}@{version}",
                bundle.name, bundle.version
            ));
        }
        let digest = digest_file(model_path).map_err(|e| e.to_string())?;
        if !bundle.model.sha256.eq_ignore_ascii_case(&digest.sha256) {
            return Err(format!(
                "model.onnx has sha256 {}, bundle.json names {}",
                digest.sha256, bundle.model.sha256
            ));
        }
        let bytes =
            std::fs::read(model_path).map_err(|e| format!("{}: {e}", model_path.display()))?;
        let mut load = self.load.clone();
        if let Some(e) = bundle.model.engine {
            load.engine = e;
        }
        if let Some(g) = bundle.model.gpu {
            load.gpu = g;
        }
        let model = edgeinfer_engine::load_model_with_samples(&bytes, &load, &golden_sets(&bundle))
            .map_err(|e| format!("the engine cannot load it: {e}"))?;
        let mut session = model
            .new_session()
            .map_err(|e| format!("making a session: {e}"))?;
        for (i, g) in bundle.golden.iter().enumerate() {
            let inputs = g.inputs();
            let views: Vec<_> = inputs.iter().map(|t| t.view()).collect();
            let mut out = Outputs::for_model(&model.info);
            session
                .run(&views, &mut out)
                .map_err(|e| format!("golden sample {i} does not run: {e}"))?;
            g.check(&out)
                .map_err(|e| format!("golden sample {i} on {}: {e}", model.backend()))?;
        }
        // The bundle's feature schema (or the config's) bound now, off the data path.
        let features = crate::server::entity::prepare_binding(
            name,
            version,
            bundle.features.as_ref(),
            &model.info,
        )
        .map_err(|e| format!("features: {e:#}"))?;
        let b = bundle.model.batching;
        let serving = ServingConfig {
            batching: (b.max_batch > 1).then(|| BatchConfig {
                max_batch: b.max_batch,
                max_delay: Duration::from_micros(b.max_delay_us),
            }),
        };
        tracing::info!(model = name, version, backend = %model.backend(), samples = bundle.golden.len(), "golden samples match");
        // Drift and accuracy of this version are judged against what its bundle carries.
        let monitoring = crate::telemetry_glue::monitoring_of_bundle(&bundle);
        crate::telemetry_glue::register_version(name, version, monitoring);
        if let Ok(mut b) = self.baselines.lock() {
            b.insert((name.to_owned(), version.to_owned()), baseline_of(&bundle));
        }
        let model = match &self.hook {
            Some(h) => h(name, version, model),
            None => model,
        };
        Ok(Validated {
            model,
            serving,
            features,
        })
    }

    /// The version validated last, which must be the one the agent just committed.
    fn take_pending(
        &mut self,
        r: &InstalledRelease,
    ) -> Result<(String, String, Validated), String> {
        let Some((name, version, v)) = self.pending.take() else {
            return Err(format!(
                "{}@{} was committed without a validated version",
                r.model, r.version
            ));
        };
        if name != r.model || version != r.version {
            return Err(format!(
                "{}@{} was committed but {name}@{version} was validated",
                r.model, r.version
            ));
        }
        Ok((name, version, v))
    }

    /// After a rollout decision is served: registry versions outside `keep` are retired,
    /// `keep[0]` is the default and the rest stay beside it.
    fn settle(&mut self, name: &str, keep: &[String]) {
        let Some(default) = keep.first() else { return };
        let old = self.serving.insert(name.to_owned(), default.clone());
        let beside = self.beside.entry(name.to_owned()).or_default();
        let loaded: Vec<String> = old.iter().chain(beside.iter()).cloned().collect();
        *beside = keep[1..].iter().cloned().collect();
        for v in loaded.iter().filter(|v| !keep.contains(v)) {
            let _ = self.control.retire(name, v);
        }
        if let Some(old) = old.filter(|o| o != default) {
            crate::telemetry_glue::emit(Event::ModelSwapped {
                model: name.to_owned(),
                from: old,
                to: default.clone(),
            });
        }
    }

    /// Swaps `name`@`version` in as the default and retires the registry version it replaces.
    fn swap_in(&mut self, name: &str, version: &str, v: Validated) -> anyhow::Result<()> {
        if let Some(b) = v.features {
            crate::server::entity::install_binding(b);
        }
        self.control
            .install_model(name, version, v.model, v.serving)?;
        self.control.activate(name, version)?;
        if let Some(b) = self.beside.get_mut(name) {
            b.remove(version);
        }
        let old = self.serving.insert(name.to_owned(), version.to_owned());
        if let Some(old) = old.filter(|o| o != version) {
            // Requests admitted on it finish there; new ones already go to `version`.
            let _ = self.control.retire(name, &old);
            crate::telemetry_glue::emit(Event::ModelSwapped {
                model: name.to_owned(),
                from: old,
                to: version.to_owned(),
            });
        }
        Ok(())
    }
}

impl Deployer for DaemonDeployer {
    fn validate(&mut self, r: &StagedRelease) -> Result<(), String> {
        let bundle = std::fs::read(&r.bundle_path)
            .map_err(|e| format!("{}: {e}", r.bundle_path.display()))?;
        let v = self.check(&r.model, &r.version, &bundle, &r.model_path)?;
        self.pending = Some((r.model.clone(), r.version.clone(), v));
        Ok(())
    }

    fn activate(&mut self, r: &InstalledRelease) -> Result<(), String> {
        let (name, version, v) = self.take_pending(r)?;
        self.swap_in(&name, &version, v)
            .map_err(|e| format!("{e:#}"))
    }

    /// What the directive decides for this device ([`RolloutGlue::preview`]): stable as the
    /// default, and the candidate beside it when this device is in the canary and has not
    /// rolled it back in this trial.
    fn rollout(&mut self, model: &str, directive: &[u8]) -> Option<RolloutChoice> {
        let decided = match &self.rollout {
            Some(glue) => glue
                .lock()
                .map_err(|_| anyhow::anyhow!("the rollout state is poisoned"))
                .and_then(|g| g.preview(model, directive)),
            None => Err(anyhow::anyhow!("no rollout state")),
        };
        match decided {
            Ok(d) => {
                tracing::debug!(model, install = ?d.install, "rollout: {}", d.reason);
                self.directives.insert(model.to_owned(), directive.to_vec());
                let (version, also) = d.install.split_first()?;
                Some(RolloutChoice {
                    version: version.clone(),
                    also: also.to_vec(),
                    min_release_counter: d.min_release_counter,
                })
            }
            Err(e) => {
                tracing::warn!(model, "rollout directive refused: {e:#}");
                self.directives.remove(model);
                None
            }
        }
    }

    fn loaded(&self, model: &str, version: &str) -> bool {
        self.control
            .table()
            .snapshot()
            .models
            .get(model)
            .is_some_and(|s| s.index_of(version).is_some())
    }

    fn install_beside(&mut self, r: &InstalledRelease) -> Result<(), String> {
        let (name, version, v) = self.take_pending(r)?;
        if let Some(b) = v.features {
            crate::server::entity::install_binding(b);
        }
        // Pinnable at once; routed to only when the directive's split is served.
        self.control
            .install_model(&name, &version, v.model, v.serving)
            .map_err(|e| format!("{e:#}"))?;
        self.beside.entry(name).or_default().insert(version);
        Ok(())
    }

    fn load_installed(&mut self, r: &InstalledRelease, beside: bool) -> Result<(), String> {
        let bundle = std::fs::read(r.dir.join("bundle.json"))
            .map_err(|e| format!("{}: {e}", r.dir.display()))?;
        let v = self.check(&r.model, &r.version, &bundle, &r.dir.join("model.onnx"))?;
        if beside {
            self.pending = Some((r.model.clone(), r.version.clone(), v));
            self.install_beside(r)
        } else {
            self.swap_in(&r.model, &r.version, v)
                .map_err(|e| format!("{e:#}"))
        }
    }

    /// Serves the directive's decision once every version it installs is loaded; with its
    /// candidate missing (refused, not offered), stable alone.
    fn rollout_ready(&mut self, model: &str, ready: &[String]) -> Result<(), String> {
        let (Some(bytes), Some(glue)) = (self.directives.get(model).cloned(), self.rollout.clone())
        else {
            return Ok(());
        };
        let mut g = glue
            .lock()
            .map_err(|_| "the rollout state is poisoned".to_owned())?;
        let decision = g.preview(model, &bytes).map_err(|e| format!("{e:#}"))?;
        let keep = if decision.install.iter().all(|v| ready.contains(v)) {
            // The same directive and decision again (every poll): the window runs on.
            if self.applied.get(model) != Some(&(bytes.clone(), decision.clone())) {
                let d = g
                    .apply(model, &bytes, unix_now())
                    .map_err(|e| format!("{e:#}"))?;
                tracing::info!(model, serve = ?d.serve, "rollout: {}", d.reason);
                self.applied.insert(model.to_owned(), (bytes, d));
            }
            decision.install
        } else if ready.first() == decision.install.first() {
            let stable = decision.install[0].clone();
            self.control
                .serve_rollout(
                    model,
                    &Serve::Stable {
                        version: stable.clone(),
                    },
                )
                .map_err(|e| format!("{e:#}"))?;
            self.applied.remove(model);
            vec![stable]
        } else {
            return Ok(());
        };
        drop(g);
        self.settle(model, &keep);
        Ok(())
    }

    fn event(&mut self, ev: &AgentEvent) {
        if let Some(e) = ev.telemetry() {
            crate::telemetry_glue::emit(e);
        }
        if let Ok(mut e) = self.log.events.lock() {
            e.push(ev.clone());
        }
        self.log.changed.notify_all();
    }
}

fn deployer(cfg: &Config, control: Control) -> DaemonDeployer {
    DaemonDeployer {
        control,
        load: cfg.load_options(None),
        pending: None,
        serving: BTreeMap::new(),
        beside: BTreeMap::new(),
        rollout: None,
        directives: BTreeMap::new(),
        applied: BTreeMap::new(),
        baselines: Baselines::default(),
        hook: None,
        log: Arc::new(EventLog::default()),
    }
}

/// Startup: for each followed model, the newest verified version whose files still match
/// the install state and that still validates is installed and made the default (before
/// the cores start, so the first request already sees it). Returns `name@version` of each.
/// A model with a corrupt state or no usable version keeps what the config names.
pub fn restore(cfg: &Config, control: &Control) -> anyhow::Result<Vec<String>> {
    let r = &cfg.registry;
    if !r.enabled {
        return Ok(Vec::new());
    }
    let store = InstallStore::open(&r.state_dir(&cfg.state_dir), r.keep_versions)
        .map_err(anyhow::Error::msg)?;
    let mut d = deployer(cfg, control.clone());
    let mut out = Vec::new();
    for name in &r.models {
        let versions = match store.startable(name) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(model = %name, "registry: {e}; serving what the config names");
                crate::telemetry_glue::emit(Event::ModelRejected {
                    model: name.clone(),
                    version: String::new(),
                    reason: format!("LocalState: {e}"),
                });
                continue;
            }
        };
        for (iv, dir) in versions {
            let checked = std::fs::read(dir.join("bundle.json"))
                .map_err(|e| e.to_string())
                .and_then(|b| d.check(name, &iv.version, &b, &dir.join("model.onnx")));
            match checked.and_then(|v| {
                d.swap_in(name, &iv.version, v)
                    .map_err(|e| format!("{e:#}"))
            }) {
                Ok(()) => {
                    tracing::info!(model = %name, version = %iv.version, "registry: starting on the last verified version");
                    out.push(format!("{name}@{}", iv.version));
                    break;
                }
                Err(e) => {
                    tracing::warn!(model = %name, version = %iv.version, "registry: installed version not usable: {e}")
                }
            }
        }
    }
    Ok(out)
}

/// The running agent.
pub struct Registry {
    handle: AgentHandle,
    _windows: WindowTicker,
    log: Arc<EventLog>,
}

impl Registry {
    /// Every candidate rolled back by this daemon so far, oldest first.
    pub fn rollbacks(&self) -> Vec<BadVersion> {
        self.log
            .rollbacks
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for more than `skip` rollbacks; returns the one after `skip`.
    pub fn wait_rollback(&self, skip: usize, timeout: Duration) -> Option<BadVersion> {
        let deadline = Instant::now() + timeout;
        let mut g = self.log.rollbacks.lock().ok()?;
        loop {
            if let Some(b) = g.get(skip) {
                return Some(b.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            g = self.log.rolled_back.wait_timeout(g, left).ok()?.0;
        }
    }

    /// Every event so far, oldest first.
    pub fn events(&self) -> Vec<AgentEvent> {
        self.log
            .events
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for an event after the first `skip` to satisfy `pred`.
    pub fn wait_event(
        &self,
        skip: usize,
        timeout: Duration,
        pred: impl Fn(&AgentEvent) -> bool,
    ) -> Option<AgentEvent> {
        let deadline = Instant::now() + timeout;
        let mut g = self.log.events.lock().ok()?;
        loop {
            if let Some(e) = g.iter().skip(skip).find(|e| pred(e)) {
                return Some(e.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            g = self.log.changed.wait_timeout(g, left).ok()?.0;
        }
    }

    pub fn poll_now(&self) {
        self.handle.poll_now();
    }

    pub fn polls(&self) -> u64 {
        self.handle.polls()
    }

    /// Waits for the first poll (it starts as soon as the agent does).
    pub fn wait_first_poll(&self, timeout: Duration) -> bool {
        self.handle.wait_polls(0, timeout) > 0
    }

    /// Asks for a poll and waits for it to finish; returns false on timeout.
    pub fn poll_and_wait(&self, timeout: Duration) -> bool {
        let before = self.handle.polls();
        self.handle.poll_now();
        self.handle.wait_polls(before, timeout) > before
    }
}

/// Starts the pull agent if `[registry] enabled`, with the system clock.
pub fn start(cfg: &Config, control: Control) -> anyhow::Result<Option<Registry>> {
    start_with_clock(cfg, control, system_clock())
}

/// [`start`] with an injected clock (seconds since the epoch) for expiry tests.
pub fn start_with_clock(
    cfg: &Config,
    control: Control,
    clock: Clock,
) -> anyhow::Result<Option<Registry>> {
    start_with(cfg, control, clock, None)
}

/// [`start_with_clock`], with every version the registry installs passed through `hook`
/// after its golden samples matched (tests inject engine faults with it).
pub fn start_with(
    cfg: &Config,
    control: Control,
    clock: Clock,
    hook: Option<ModelHook>,
) -> anyhow::Result<Option<Registry>> {
    let r = &cfg.registry;
    if !r.enabled {
        return Ok(None);
    }
    let mut d = deployer(cfg, control.clone());
    d.hook = hook;
    let (glue, record_err) = RolloutGlue::open(
        &cfg.telemetry.device(),
        &cfg.rollout,
        &cfg.state_dir,
        control.clone(),
    );
    if let Some(e) = record_err {
        tracing::warn!("rollout: {e}; the next candidate is treated as bad");
    }
    let glue = Arc::new(Mutex::new(glue));
    d.rollout = Some(glue.clone());
    // What restore made the default is what the agent moves on from.
    let store = InstallStore::open(&r.state_dir(&cfg.state_dir), r.keep_versions)
        .map_err(anyhow::Error::msg)?;
    for name in &r.models {
        if let Some(a) = store.load_state(name).ok().and_then(|s| s.active) {
            if control
                .table()
                .snapshot()
                .models
                .get(name)
                .is_some_and(|s| s.index_of(&a).is_some())
            {
                d.serving.insert(name.clone(), a);
            }
        }
    }
    let log = d.log.clone();
    let windows = WindowTicker::spawn(
        glue,
        r.models.clone(),
        Duration::from_secs(cfg.rollout.window_s),
        d.baselines.clone(),
        log.clone(),
    )
    .context("spawning the rollout window thread")?;
    let agent = Agent::new(r.clone(), &r.state_dir(&cfg.state_dir), clock)
        .map_err(anyhow::Error::msg)
        .context("starting the registry agent")?;
    let handle = agent
        .spawn(Box::new(d))
        .context("spawning the registry thread")?;
    Ok(Some(Registry {
        handle,
        _windows: windows,
        log,
    }))
}

/// The thread that closes each followed model's judging window every `[rollout] window_s`
/// (off the data path: it reads the versions' counters from the table); stopped on drop.
struct WindowTicker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WindowTicker {
    fn spawn(
        glue: Arc<Mutex<RolloutGlue>>,
        models: Vec<String>,
        window: Duration,
        baselines: Baselines,
        log: Arc<EventLog>,
    ) -> std::io::Result<WindowTicker> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("edgeinfer-rollout".into())
            .spawn(move || loop {
                let Ok(g) = s.0.lock() else { return };
                match s.1.wait_timeout_while(g, window, |stopped| !*stopped) {
                    Ok((g, _)) if !*g => {}
                    _ => return,
                }
                for model in &models {
                    let Ok(mut rollout) = glue.lock() else { return };
                    let baseline = rollout
                        .candidate(model)
                        .and_then(|c| {
                            let b = baselines.lock().ok()?;
                            b.get(&(model.clone(), c)).copied()
                        })
                        .unwrap_or_default();
                    let (verdict, rollback) = rollout.window(model, &baseline, unix_now());
                    drop(rollout);
                    tracing::debug!(model = %model, ?verdict, "rollout window");
                    if let Some(rb) = rollback {
                        if let Some(e) = &rb.record_error {
                            tracing::error!(model = %model, "the rollback is not recorded on disk: {e}");
                        }
                        if let Ok(mut r) = log.rollbacks.lock() {
                            r.push(rb.bad);
                        }
                        log.rolled_back.notify_all();
                    }
                }
            })?;
        Ok(WindowTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for WindowTicker {
    fn drop(&mut self) {
        if let Ok(mut g) = self.stop.0.lock() {
            *g = true;
        }
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_sets_are_one_row_and_sixty_four_rows_of_the_samples() {
        let mut g = Vec::new();
        for s in 0..2 {
            let rows = 3;
            g.push(serde_json::json!({
                "inputs": [{"name": "x", "dtype": "f32", "shape": [rows, 2],
                            "data": (0..rows * 2).map(|i| (s * 100 + i) as f64).collect::<Vec<_>>()}],
                "outputs": [{"name": "y", "dtype": "f32", "shape": [rows], "data": vec![0.0; rows]}],
            }));
        }
        let golden: Vec<edgeinfer_registry::release::bundle::GoldenSample> =
            serde_json::from_value(serde_json::Value::Array(g)).unwrap();
        let sets = {
            let mut b: Bundle = serde_json::from_value(serde_json::json!({
                "schema_version": 1, "name": "m", "version": "1",
                "model": {"file": "model.onnx", "sha256": "0".repeat(64),
                          "inputs": [{"name": "x", "dtype": "f32", "shape": [null, 2]}],
                          "outputs": [{"name": "y", "dtype": "f32", "shape": [null]}]},
                "golden": [],
                "lineage": {"source": "t", "created": "2030-01-01T00:00:00Z", "tool": "t"}
            }))
            .unwrap();
            b.golden = golden;
            golden_sets(&b)
        };
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0][0].shape, [1, 2]);
        assert_eq!(sets[1][0].shape, [AUTO_BATCH_ROWS, 2]);
        let f = |t: &InputTensor| -> Vec<f32> {
            t.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        assert_eq!(f(&sets[0][0]), [0.0, 1.0]);
        // Rows of both samples in order (3 + 3), then again from the start.
        let big = f(&sets[1][0]);
        assert_eq!(
            &big[..14],
            &[0., 1., 2., 3., 4., 5., 100., 101., 102., 103., 104., 105., 0., 1.]
        );
        assert_eq!(big.len(), AUTO_BATCH_ROWS * 2);
    }
}
