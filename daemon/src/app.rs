//! The app: load and warm the models into a [`ModelTable`], then start the data path on
//! listeners handed in (bound by `main`, by systemd socket activation, or by a test); and
//! [`Control`], the one way models change while serving (SIGHUP reload today, the registry
//! pull agent next): engine sessions are built and warmed here, on the caller's control
//! thread, and the cores only take them.
//!
//! Also owns the embedded demo model, so `edgeinferd` with no arguments serves something.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edgeinfer_engine::{synth_inputs, LoadOptions, Model, Outputs, Session};
use edgeinfer_registry::ModelArtifact;

use crate::config::ReloadPlan;
use crate::heartbeat::Heartbeats;
use crate::model_table::{
    ModelSlot, ModelTable, ModelVersion, Retired, Routing, ServingConfig, Snapshot,
};
use crate::server::{self, Listeners, ServerHandle, ServerOptions, ServerStats, Trigger};

/// The demo model compiled into the daemon: the churn RandomForest from the test fixtures.
pub const DEMO_MODEL: &[u8] = include_bytes!("../../tests/fixtures/models/churn_rf.onnx");
pub const DEMO_NAME: &str = "churn";
pub const DEMO_VERSION: &str = "demo";

/// Where a model's bytes come from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Embedded(&'static [u8]),
    File(PathBuf),
}

/// One model version to load.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub source: ModelSource,
    pub load: LoadOptions,
    pub serving: ServingConfig,
}

impl ModelSpec {
    /// The embedded demo model with default engine choice and no batching.
    pub fn demo() -> ModelSpec {
        ModelSpec {
            name: DEMO_NAME.into(),
            version: DEMO_VERSION.into(),
            source: ModelSource::Embedded(DEMO_MODEL),
            load: LoadOptions::default(),
            serving: ServingConfig::default(),
        }
    }
}

/// Reads a spec's bytes: the registry source layer decides what a file or embedded model is.
fn read_artifact(spec: &ModelSpec) -> anyhow::Result<ModelArtifact> {
    Ok(match &spec.source {
        ModelSource::Embedded(bytes) => {
            edgeinfer_registry::embedded(&spec.name, &spec.version, bytes)
        }
        ModelSource::File(path) => edgeinfer_registry::read_local(&spec.name, &spec.version, path)?,
    })
}

/// Loads an artifact on the engine `load` asks for, saying which engine and why.
fn load_engine_model(artifact: &ModelArtifact, load: &LoadOptions) -> anyhow::Result<Model> {
    let (name, version) = (&artifact.name, &artifact.version);
    let model = edgeinfer_engine::load_model(&artifact.bytes, load).with_context(|| {
        format!(
            "loading model {name:?} version {version:?} ({})",
            artifact.origin
        )
    })?;
    for f in &model.report.fallbacks {
        tracing::warn!(model = %name, backend = %f.backend, "not using {}: {}", f.backend, f.reason);
        crate::telemetry_glue::emit(edgeinfer_telemetry::events::Event::EngineFallback {
            model: name.clone(),
            version: version.clone(),
            from: f.backend.name().to_owned(),
            to: model.backend().name().to_owned(),
            reason: f.reason.clone(),
        });
    }
    tracing::info!(model = %name, version = %version, backend = %model.backend(), "{}", model.report.reason);
    Ok(model)
}

/// A new session that has run once on a synthesised sample input: its first run allocates
/// its buffers, which a core must not pay for on its first request.
pub fn warm_session(name: &str, model: &Model) -> anyhow::Result<Box<dyn Session>> {
    let mut session = model
        .new_session()
        .with_context(|| format!("model {name:?}: making a session"))?;
    let sample = synth_inputs(&model.info, 1, 0x5eed);
    let views: Vec<_> = sample.iter().map(|t| t.view()).collect();
    let mut out = Outputs::for_model(&model.info);
    session
        .run(&views, &mut out)
        .with_context(|| format!("model {name:?}: warming up on a sample input"))?;
    Ok(session)
}

/// Loads one version on the engine its options ask for and warms one session (left for
/// core 0), after which it is marked ready. [`Control::prepare`] makes the other cores'.
pub fn load_version(spec: &ModelSpec) -> anyhow::Result<Arc<ModelVersion>> {
    let model = load_engine_model(&read_artifact(spec)?, &spec.load)?;
    new_version(&spec.name, &spec.version, model)
}

fn new_version(name: &str, version: &str, model: Model) -> anyhow::Result<Arc<ModelVersion>> {
    let session = warm_session(name, &model)?;
    let v = ModelVersion::new(name, version, model);
    v.sessions.offer(0, session);
    v.ready.store(true, Relaxed);
    Ok(Arc::new(v))
}

/// Loads and warms every model; versions of the same name share a slot, the first one
/// listed serving requests without a version pin.
pub fn load_models(specs: &[ModelSpec]) -> anyhow::Result<Arc<ModelTable>> {
    let mut snap = Snapshot::default();
    for spec in specs {
        let v = load_version(spec)?;
        match snap.models.get_mut(&spec.name) {
            Some(slot) => slot.put(v, spec.serving.clone()),
            None => {
                snap.models.insert(
                    spec.name.clone(),
                    ModelSlot::single(v, spec.serving.clone()),
                );
            }
        }
    }
    Ok(Arc::new(ModelTable::new(snap)))
}

/// Applies the model changes of a SIGHUP reload through [`Control::apply_reload`].
pub fn apply_reload(table: &Arc<ModelTable>, plan: &ReloadPlan) -> anyhow::Result<()> {
    Control::new(table.clone()).apply_reload(plan)
}

// === impl Control ===

/// The control side of the model table: what SIGHUP reload and the registry pull agent
/// call, on their own threads, never on a data-path core.
///
/// Every change builds and warms what it needs first (one session per serving core, left
/// in the version for its core to take), then publishes one new snapshot. The cores keep
/// serving the old snapshot meanwhile; a request that resolved a version finishes on it,
/// requests resolved after the publish go to the new one, and nothing is ever refused
/// because of a change. On any error nothing is published.
#[derive(Debug, Clone)]
pub struct Control {
    table: Arc<ModelTable>,
}

impl Control {
    pub fn new(table: Arc<ModelTable>) -> Control {
        Control { table }
    }

    pub fn table(&self) -> &Arc<ModelTable> {
        &self.table
    }

    /// Builds and warms, on the calling thread, a session for every serving core that has
    /// none waiting in `v`.
    pub fn prepare(&self, v: &ModelVersion) -> anyhow::Result<()> {
        for core in v.sessions.missing(self.table.cores()) {
            let s = warm_session(&v.name, &v.model)
                .with_context(|| format!("version {:?}, session for core {core}", v.version))?;
            v.sessions.offer(core, s);
        }
        Ok(())
    }

    /// [`Control::install_model`] from an artifact (a registry download or a local file).
    pub fn install_version(
        &self,
        artifact: &ModelArtifact,
        load: &LoadOptions,
        serving: ServingConfig,
    ) -> anyhow::Result<Arc<ModelVersion>> {
        let model = load_engine_model(artifact, load)?;
        self.install_model(&artifact.name, &artifact.version, model, serving)
    }

    /// Warms `model` on every core's session, then publishes it as `name`@`version`:
    /// pinnable at once, and the default only if `name` is new (see [`Control::activate`]).
    /// A version of the same name already loaded is replaced (its counters start over).
    pub fn install_model(
        &self,
        name: &str,
        version: &str,
        model: Model,
        serving: ServingConfig,
    ) -> anyhow::Result<Arc<ModelVersion>> {
        let v = new_version(name, version, model)?;
        self.prepare(&v)?;
        self.change(|next| {
            put(next, v.clone(), serving);
            Ok(())
        })?;
        Ok(v)
    }

    /// Loads `spec` again on `engine` and swaps it in under the same name and version (GPU
    /// failover and back); its routing is kept, requests already admitted finish on the old.
    pub fn reload_on(
        &self,
        spec: &ModelSpec,
        engine: edgeinfer_engine::EngineChoice,
    ) -> anyhow::Result<Arc<ModelVersion>> {
        let load = LoadOptions {
            engine,
            ..spec.load.clone()
        };
        let model = load_engine_model(&read_artifact(spec)?, &load)?;
        self.install_model(&spec.name, &spec.version, model, spec.serving.clone())
    }

    /// Routes `name`'s unpinned requests to `version` (already installed).
    pub fn activate(&self, name: &str, version: &str) -> anyhow::Result<()> {
        self.change(|next| {
            let slot = slot_mut(next, name)?;
            let i = version_index(slot, version)?;
            slot.routing = Routing::Single(i);
            Ok(())
        })
    }

    /// Routes `name`'s requests as a rollout decision says (its versions already
    /// installed): one version alone, or stable and candidate split sticky by routing key.
    pub fn serve_rollout(
        &self,
        name: &str,
        serve: &edgeinfer_rollout::Serve,
    ) -> anyhow::Result<()> {
        self.change(|next| Ok(slot_mut(next, name)?.serve(serve)?))?;
        // Telemetry labels each version's latency, drift and accuracy with its arm.
        crate::telemetry_glue::serve_arms(name, serve);
        Ok(())
    }

    /// Unloads `name`@`version`. Requests already admitted on it finish; its sessions are
    /// dropped on a control thread once the last of them is answered.
    pub fn retire(&self, name: &str, version: &str) -> anyhow::Result<()> {
        self.change(|next| {
            version_index(slot_mut(next, name)?, version)?;
            remove(next, name, version);
            Ok(())
        })
    }

    /// Changes `name`@`version`'s batching: same sessions, same counters.
    pub fn set_serving(
        &self,
        name: &str,
        version: &str,
        serving: ServingConfig,
    ) -> anyhow::Result<()> {
        self.change(|next| {
            let slot = slot_mut(next, name)?;
            version_index(slot, version)?;
            slot.serving.insert(version.to_owned(), serving);
            Ok(())
        })
    }

    /// Applies the model changes of a SIGHUP reload: loads and warms new versions (every
    /// core's session) first, then publishes one snapshot with every change. A version
    /// whose batching alone changed keeps its identity, sessions and counters.
    pub fn apply_reload(&self, plan: &ReloadPlan) -> anyhow::Result<()> {
        let loaded = plan
            .add
            .iter()
            .chain(&plan.reload)
            .map(|spec| {
                let v = load_version(spec)?;
                self.prepare(&v)?;
                Ok((v, spec.serving.clone()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.change(|next| {
            for (name, version) in &plan.remove {
                remove(next, name, version);
            }
            for spec in &plan.rebatch {
                if let Some(slot) = next.models.get_mut(&spec.name) {
                    if slot.index_of(&spec.version).is_some() {
                        slot.serving
                            .insert(spec.version.clone(), spec.serving.clone());
                    }
                }
            }
            for (v, serving) in loaded {
                put(next, v, serving);
            }
            Ok(())
        })
    }

    /// Makes every version in the table ready for every core (at startup, before the cores
    /// run, and for tables built by hand).
    pub fn prepare_all(&self) -> anyhow::Result<()> {
        let snap = self.table.snapshot();
        for v in snap.versions() {
            self.prepare(v)?;
        }
        Ok(())
    }

    /// One change, serialised with every other writer: edit a copy of the current
    /// snapshot, then publish it whole.
    fn change(&self, edit: impl FnOnce(&mut Snapshot) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let _writer = self.table.writer();
        let mut next = Snapshot::clone(&self.table.snapshot());
        edit(&mut next)?;
        self.table.publish(next);
        Ok(())
    }
}

fn slot_mut<'a>(snap: &'a mut Snapshot, name: &str) -> anyhow::Result<&'a mut ModelSlot> {
    let loaded = snap.models.keys().cloned().collect::<Vec<_>>().join(", ");
    snap.models
        .get_mut(name)
        .with_context(|| format!("no model {name:?} is loaded (loaded: {loaded})"))
}

fn version_index(slot: &ModelSlot, version: &str) -> anyhow::Result<usize> {
    slot.index_of(version).with_context(|| {
        format!(
            "model {:?} has no version {version:?} (loaded: {})",
            slot.name,
            slot.loaded()
        )
    })
}

fn put(snap: &mut Snapshot, v: Arc<ModelVersion>, serving: ServingConfig) {
    match snap.models.get_mut(&v.name) {
        Some(slot) => slot.put(v, serving),
        None => {
            snap.models
                .insert(v.name.clone(), ModelSlot::single(v, serving));
        }
    }
}

/// Drops `name`@`version` from the snapshot, keeping routing pointed at the same versions
/// (indices shift); a default that was removed falls back to the first version left.
fn remove(snap: &mut Snapshot, name: &str, version: &str) {
    let Some(slot) = snap.models.get_mut(name) else {
        return;
    };
    let Some(gone) = slot.index_of(version) else {
        return;
    };
    slot.versions.remove(gone);
    slot.serving.remove(version);
    if slot.versions.is_empty() {
        snap.models.remove(name);
        return;
    }
    let shift = |i: usize| if i > gone { i - 1 } else { i };
    slot.routing = match &slot.routing {
        Routing::Single(i) if *i == gone => Routing::Single(0),
        Routing::Single(i) => Routing::Single(shift(*i)),
        Routing::Split(arms) => {
            let arms: Vec<_> = arms
                .iter()
                .filter(|a| a.0 != gone)
                .map(|&(i, w)| (shift(i), w))
                .collect();
            if arms.is_empty() {
                Routing::Single(0)
            } else {
                Routing::Split(arms)
            }
        }
    };
}

/// The running daemon data path.
pub struct App;

impl App {
    /// Starts one runtime per core on `listeners`, serving `table`: first every core's
    /// session for every version is made here (the cores only take them), and a reaper
    /// thread is started to drop what the cores retire.
    pub fn start(
        mut opts: ServerOptions,
        table: Arc<ModelTable>,
        listeners: Listeners,
    ) -> anyhow::Result<AppHandle> {
        if opts.cores.is_empty() {
            opts.cores =
                edgeinfer_engine::cores::allowed_cores().context("finding the allowed cores")?;
        }
        table.set_cores(opts.cores.len());
        let (tx, rx) = std::sync::mpsc::channel::<Retired>();
        if table.set_graveyard(tx) {
            std::thread::Builder::new()
                .name("edgeinfer-reaper".into())
                // Ends when the table (and with it the sender) is dropped.
                .spawn(move || rx.into_iter().for_each(drop))
                .context("spawning the reaper thread")?;
        }
        let control = Control::new(table.clone());
        control.prepare_all()?;
        let server =
            server::start(opts, table.clone(), listeners).context("starting the server")?;
        Ok(AppHandle {
            server,
            table,
            control,
        })
    }
}

pub struct AppHandle {
    server: ServerHandle,
    table: Arc<ModelTable>,
    control: Control,
}

impl AppHandle {
    /// Installs, activates and retires model versions while serving (see [`Control`]).
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Begins a graceful shutdown: stop accepting, answer what is queued, close each
    /// connection when its work is done; after `grace`, close what is left.
    pub fn shutdown(&self, grace: Duration) {
        self.server.shutdown(grace);
    }

    /// A handle that can start shutdown from another thread.
    pub fn trigger(&self) -> Arc<Trigger> {
        self.server.trigger()
    }

    /// Waits until every core has finished (call [`AppHandle::shutdown`] first).
    pub fn wait(self) -> anyhow::Result<()> {
        self.server.wait().map_err(anyhow::Error::msg)
    }

    /// Per-core liveness, for the systemd watchdog.
    pub fn heartbeats(&self) -> Arc<Heartbeats> {
        self.server.heartbeats().clone()
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.server.stats().clone()
    }

    pub fn table(&self) -> &Arc<ModelTable> {
        &self.table
    }

    pub fn cores(&self) -> &[usize] {
        self.server.cores()
    }

    pub fn driver(&self) -> server::Driver {
        self.server.driver()
    }
}
