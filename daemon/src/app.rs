//! The app: load and warm the models into a [`ModelTable`], then start the data path on
//! listeners handed in (bound by `main`, by systemd socket activation, or by a test).
//!
//! Also owns the embedded demo model, so `edgeinferd` with no arguments serves something.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edgeinfer_engine::{synth_inputs, LoadOptions, Outputs};

use crate::config::ReloadPlan;
use crate::heartbeat::Heartbeats;
use crate::model_table::{ModelSlot, ModelTable, ModelVersion, Routing, ServingConfig, Snapshot};
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

/// Loads one version on the engine its options ask for and warms it: one run of a
/// synthesised sample input on a fresh session, after which it is marked ready.
pub fn load_version(spec: &ModelSpec) -> anyhow::Result<Arc<ModelVersion>> {
    let artifact = match &spec.source {
        ModelSource::Embedded(bytes) => {
            edgeinfer_registry::embedded(&spec.name, &spec.version, bytes)
        }
        ModelSource::File(path) => edgeinfer_registry::read_local(&spec.name, &spec.version, path)?,
    };
    let model = edgeinfer_engine::load_model(&artifact.bytes, &spec.load).with_context(|| {
        format!(
            "loading model {:?} version {:?} ({})",
            spec.name, spec.version, artifact.origin
        )
    })?;
    for f in &model.report.fallbacks {
        tracing::warn!(model = %spec.name, backend = %f.backend, "not using {}: {}", f.backend, f.reason);
    }
    tracing::info!(model = %spec.name, version = %spec.version, backend = %model.backend(), "{}", model.report.reason);
    let mut session = model
        .new_session()
        .with_context(|| format!("model {:?}: making a session", spec.name))?;
    let sample = synth_inputs(&model.info, 1, 0x5eed);
    let views: Vec<_> = sample.iter().map(|t| t.view()).collect();
    let mut out = Outputs::for_model(&model.info);
    session
        .run(&views, &mut out)
        .with_context(|| format!("model {:?}: warming up on a sample input", spec.name))?;
    let v = ModelVersion::new(
        spec.name.clone(),
        spec.version.clone(),
        model,
        spec.serving.clone(),
    );
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
            Some(slot) => slot.versions.push(v),
            None => {
                snap.models.insert(spec.name.clone(), ModelSlot::single(v));
            }
        }
    }
    Ok(Arc::new(ModelTable::new(snap)))
}

/// Applies the model changes of a SIGHUP reload: loads and warms new versions first (the
/// cores keep serving the old table meanwhile), then publishes one new snapshot. Requests
/// that already resolved a version finish on it. On any load error nothing changes.
pub fn apply_reload(table: &ModelTable, plan: &ReloadPlan) -> anyhow::Result<()> {
    let loaded = plan
        .add
        .iter()
        .chain(&plan.reload)
        .map(load_version)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut next = Snapshot::clone(&table.snapshot());
    for (name, version) in &plan.remove {
        if let Some(slot) = next.models.get_mut(name) {
            slot.versions.retain(|v| &v.version != version);
            slot.routing = Routing::Single(0);
            if slot.versions.is_empty() {
                next.models.remove(name);
            }
        }
    }
    let rebatched = plan.rebatch.iter().filter_map(|spec| {
        let old = next
            .models
            .get(&spec.name)?
            .versions
            .iter()
            .find(|v| v.version == spec.version)?
            .clone();
        // Same engine model, new batching: nothing to load or warm.
        let v = ModelVersion::new(
            spec.name.clone(),
            spec.version.clone(),
            old.model.clone(),
            spec.serving.clone(),
        );
        v.ready.store(true, Relaxed);
        Some(Arc::new(v))
    });
    for v in rebatched.collect::<Vec<_>>().into_iter().chain(loaded) {
        match next.models.get_mut(&v.name) {
            Some(slot) => match slot.versions.iter_mut().find(|o| o.version == v.version) {
                Some(o) => *o = v,
                None => slot.versions.push(v),
            },
            None => {
                next.models.insert(v.name.clone(), ModelSlot::single(v));
            }
        }
    }
    table.publish(next);
    Ok(())
}

/// The running daemon data path.
pub struct App;

impl App {
    /// Starts one runtime per core on `listeners`, serving `table`.
    pub fn start(
        opts: ServerOptions,
        table: Arc<ModelTable>,
        listeners: Listeners,
    ) -> anyhow::Result<AppHandle> {
        let server =
            server::start(opts, table.clone(), listeners).context("starting the server")?;
        Ok(AppHandle { server, table })
    }
}

pub struct AppHandle {
    server: ServerHandle,
    table: Arc<ModelTable>,
}

impl AppHandle {
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
