//! The daemon's side of the feature cache: PREDICT_BY_ENTITY (assemble the model's feature
//! rows from the store on the core, then run like a PREDICT), GET_FEATURES (a read on the
//! core) and PUT_FEATURES (a write on the `features-writer` thread, so a commit's fsync
//! never holds a core), plus the store's `/metrics` lines.
//!
//! The store is opened once, by [`start`], before the cores: the map size from `[cache]`,
//! `max_readers` sized to the cores, read transactions without TLS, stale readers cleared.
//! Each core keeps one read transaction between requests ([`HeldReader`]), renewed after
//! every write this process commits and every [`HELD_TXN_AGE`], and let go when idle.
//!
//! A model version's feature schema comes from its signed bundle (`Bundle::features`,
//! bound by [`prepare_binding`] and [`install_binding`] when the registry installs the
//! version, before it is served) or else from its config (`[models.features]`, the same
//! [`FeatureSchema`] type), bound at start; a config schema also serves registry versions
//! of that model whose bundle carries none.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use edgeinfer_engine::{validate_inputs, DType, Dim, ModelInfo, TensorView};
use edgeinfer_features::housekeeping::{self, Expiry};
use edgeinfer_features::mqtt::Subscriber;
use edgeinfer_features::update::{self, NamedUpdate, MAX_PAYLOAD_ROWS};
use edgeinfer_features::{
    Assembler, CacheConfig, ErrorKind, FeatureError, FeatureSchema, FeatureStore, HeldReader,
    RoTxn, RowReport, StoreOptions, WithoutTls,
};
use edgeinfer_proto::{
    self as proto, decode_message, encode_predict_by_entity_response_head, EntityRowReport,
    ErrorCode, FeatureValue, GetFeaturesRequest, GetFeaturesResponse, Header, Opcode,
    PredictByEntityRequest, PredictByEntityResponse, PredictRequest, PredictResponse,
    PutFeaturesRequest, PutFeaturesResponse, StoredFeatures,
};
use monoio::io::AsyncReadRent;
use smallvec::SmallVec;

use super::conn::Conn;
use super::core::{outcome_of, Core, FrameAction, JobParts, Refusal};
use crate::config::Config;
use crate::model_table::{ModelTable, ModelVersion};

/// PUT_FEATURES waiting for the writer; more are refused with OVERLOADED.
const WRITE_QUEUE: usize = 64;

/// How long a core's held read transaction lives at most: what a write by another process
/// (`edgeinfer features import`) may wait to be seen, and how long an idle core pins pages.
pub const HELD_TXN_AGE: Duration = Duration::from_millis(10);

thread_local! {
    /// This core's held read transaction (cores are threads; monoio tasks never move).
    static READER: RefCell<Option<HeldReader>> = const { RefCell::new(None) };
}

/// Assemblers by model name, then version.
type Assemblers = HashMap<String, HashMap<String, Arc<Assembler>>>;

/// The process's feature cache, set once by [`start`]; unset = `cache.enabled = false`.
static FEATURES: OnceLock<Features> = OnceLock::new();

/// The opened store, the models' assemblers and the writer.
pub struct Features {
    store: FeatureStore,
    /// By model name, then version: read by the cores on every request, replaced whole
    /// (under `binding`) when the registry installs a version.
    assemblers: ArcSwap<Assemblers>,
    binding: Mutex<()>,
    /// `[models.features]` by model name: for registry versions whose bundle has none
    /// (replaced by a SIGHUP reload, [`rebind_config`]).
    config_schemas: Mutex<HashMap<String, FeatureSchema>>,
    writer: Mutex<SyncSender<WriteJob>>,
    max_key_bytes: usize,
    _expiry: Option<Expiry>,
    _mqtt: Option<Subscriber>,
}

/// What a PREDICT_BY_ENTITY job carries instead of tensor bytes in its frame.
pub(crate) struct EntityJob {
    /// The assembled `[rows, width]` f32 matrix.
    values: Vec<f32>,
    shape: [usize; 2],
    /// The row reports, already in their wire type (moved into the answer's message and
    /// back when it is encoded, never copied).
    rows: Cell<Vec<EntityRowReport>>,
    schema_version: u32,
    /// The request's entity keys, row by row: the prediction log keeps them so that a
    /// FEEDBACK can name an entity and a time (telemetry_glue::record_prediction).
    keys: Vec<Vec<u8>>,
}

impl EntityJob {
    /// Row k's entity key.
    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// The feature input, as the engine takes it.
    pub fn input(&self) -> TensorView<'_> {
        TensorView {
            dtype: DType::F32,
            shape: &self.shape,
            data: bytemuck::cast_slice(&self.values),
        }
    }

    /// The PREDICT_BY_ENTITY_RESPONSE head around `meta` (the PREDICT_RESPONSE the core
    /// filled) and this job's row reports. `meta` is moved into the message and back, not
    /// cloned: its strings and output list are the core's, reused from request to request.
    /// The row reports are moved the same way.
    pub fn encode_head(
        &self,
        request_id: u64,
        meta: &mut PredictResponse,
        outputs: &[proto::TensorView<'_>],
        out: &mut Vec<u8>,
    ) -> Result<u64, proto::ProtoError> {
        let mut msg = PredictByEntityResponse {
            prediction: Some(std::mem::take(meta)),
            rows: self.rows.take(),
            schema_version: self.schema_version,
        };
        let result = encode_predict_by_entity_response_head(request_id, &mut msg, outputs, out);
        *meta = msg.prediction.take().unwrap_or_default();
        self.rows.set(msg.rows);
        result
    }
}

/// One PUT_FEATURES for the writer thread; the answer goes back through `done` and a byte
/// on `wake`, which the core's task awaits.
struct WriteJob {
    updates: Vec<NamedUpdate>,
    done: Arc<Mutex<Option<Result<PutFeaturesResponse, FeatureError>>>>,
    wake: StdUnixStream,
}

/// Opens the store and binds every configured model's feature schema; a no-op when
/// `cache.enabled = false`. Call once, before the cores start.
pub fn start(cfg: &Config, table: &ModelTable, cores: usize) -> anyhow::Result<()> {
    let c = &cfg.cache;
    if !c.enabled {
        return Ok(());
    }
    let features = open(cfg, c, cores)?;
    for v in table.snapshot().versions() {
        features.check_model(v)?;
    }
    FEATURES
        .set(features)
        .map_err(|_| anyhow::anyhow!("the feature store is already open in this process"))
}

fn open(cfg: &Config, c: &CacheConfig, cores: usize) -> anyhow::Result<Features> {
    let path = c.path_in(&cfg.state_dir);
    let mut opts = StoreOptions::new(&path, c.max_bytes, cores);
    opts.max_key_bytes = c.max_key_bytes as usize;
    let store = FeatureStore::open(&opts)
        .with_context(|| format!("opening the feature store at {}", path.display()))?;
    if store.stale_readers_cleared > 0 {
        tracing::info!(
            cleared = store.stale_readers_cleared,
            "cleared stale feature-store readers"
        );
    }
    let mut assemblers = Assemblers::new();
    let mut config_schemas = HashMap::new();
    for m in &cfg.models {
        let Some(schema) = &m.features else { continue };
        let a = Assembler::new(&store, schema_of(schema))
            .with_context(|| format!("models.{}.features", m.name))?;
        assemblers
            .entry(m.name.clone())
            .or_default()
            .insert(m.version.clone(), Arc::new(a));
        config_schemas.insert(m.name.clone(), schema.clone());
    }
    let (tx, rx) = mpsc::sync_channel::<WriteJob>(WRITE_QUEUE);
    let writer_store = store.clone();
    std::thread::Builder::new()
        .name("features-writer".into())
        .spawn(move || {
            for mut job in rx {
                let result =
                    update::apply(&writer_store, &job.updates).map(|o| PutFeaturesResponse {
                        written: o.written,
                        skipped_older: o.skipped_older,
                    });
                *job.done.lock().expect("poisoned") = Some(result);
                // The core may be gone (shutdown): nobody to wake.
                let _ = job.wake.write_all(&[1]);
            }
        })
        .context("starting the features-writer thread")?;
    let expiry = (c.ttl_s > 0)
        .then(|| {
            Expiry::spawn(
                store.clone(),
                Duration::from_secs(c.ttl_s),
                Duration::from_secs(c.expiry_interval_s),
                c.expiry_batch as usize,
                housekeeping::system_clock,
            )
        })
        .transpose()?;
    let mqtt = c
        .mqtt
        .clone()
        .map(|m| Subscriber::spawn(store.clone(), m))
        .transpose()?;
    Ok(Features {
        store,
        assemblers: ArcSwap::from_pointee(assemblers),
        binding: Mutex::new(()),
        config_schemas: Mutex::new(config_schemas),
        writer: Mutex::new(tx),
        max_key_bytes: c.max_key_bytes as usize,
        _expiry: expiry,
        _mqtt: mqtt,
    })
}

/// The schema as the features crate takes it. The model config and the signed bundle
/// (`edgeinfer_registry::release::bundle::Bundle::features`) both carry this very type, so
/// there is nothing to convert yet; a bundle-side change of type is converted here, keeping
/// the features crate free of registry-sync.
fn schema_of(s: &FeatureSchema) -> FeatureSchema {
    s.clone()
}

impl Features {
    /// Checks at startup that a model can be fed by its schema: the feature input is the
    /// model's only input, f32, `[rows, width]`.
    fn check_model(&self, v: &ModelVersion) -> anyhow::Result<()> {
        match self
            .assemblers
            .load()
            .get(&v.name)
            .and_then(|m| m.get(&v.version))
        {
            Some(a) => check_input(&v.name, &v.version, a, &v.model.info),
            None => Ok(()),
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Refusal> {
        if key.is_empty() {
            return Err(Refusal::new(ErrorCode::BadInput, "an entity key is empty"));
        }
        if key.len() > self.max_key_bytes {
            return Err(Refusal::new(
                ErrorCode::BadInput,
                format!(
                    "an entity key of {} bytes; at most {} are accepted (cache.max_key_bytes)",
                    key.len(),
                    self.max_key_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Checks that `a`'s schema can feed the model: the feature input is the model's only
/// input, f32, `[rows, width]`.
fn check_input(name: &str, version: &str, a: &Assembler, info: &ModelInfo) -> anyhow::Result<()> {
    let want = a.schema().input.as_deref();
    let ok = match (info.inputs.as_slice(), want) {
        ([only], None) => Some(only),
        ([only], Some(n)) if only.name == n => Some(only),
        _ => None,
    };
    let Some(spec) = ok else {
        anyhow::bail!(
            "model {:?} version {:?}: PREDICT_BY_ENTITY needs the feature input to be the \
         model's only input (the model has {:?}, the schema names {:?})",
            name,
            version,
            info.inputs.iter().map(|s| &s.name).collect::<Vec<_>>(),
            want
        );
    };
    let width_ok = match spec.shape.as_slice() {
        [_, Dim::Fixed(w)] => *w == a.width(),
        [_, Dim::Dynamic] => true,
        _ => false,
    };
    anyhow::ensure!(
        spec.dtype == DType::F32 && width_ok,
        "model {:?} version {:?}: input {:?} is {} {:?}; its feature schema assembles f32 \
     [rows, {}]",
        name,
        version,
        spec.name,
        spec.dtype,
        spec.shape,
        a.width()
    );
    Ok(())
}

/// The wire code for a store error: the request's fault, or the store's.
fn refusal_of(e: &FeatureError) -> Refusal {
    let code = match e.kind() {
        ErrorKind::Schema | ErrorKind::InvalidValue | ErrorKind::Oversized => ErrorCode::BadInput,
        ErrorKind::Malformed
        | ErrorKind::MapFull
        | ErrorKind::Config
        | ErrorKind::Io
        | ErrorKind::Store => ErrorCode::FeatureStore,
    };
    Refusal::new(code, e.to_string())
}

fn features() -> Result<&'static Features, Refusal> {
    FEATURES.get().ok_or_else(|| {
        Refusal::new(
            ErrorCode::NotImplemented,
            "this server has no feature store (cache.enabled = false)",
        )
    })
}

fn now_ms() -> i64 {
    housekeeping::system_clock()
}

/// Runs `read` in this core's held read transaction (begun on first use). The first use on
/// a core also starts the task that lets the transaction go once the core is idle.
fn with_reader<T>(
    f: &'static Features,
    now: Instant,
    read: impl FnOnce(&RoTxn<'static, WithoutTls>) -> Result<T, FeatureError>,
) -> Result<T, FeatureError> {
    READER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let held = match slot.as_mut() {
            Some(h) => h,
            None => {
                let h = slot.insert(HeldReader::new(f.store.clone(), HELD_TXN_AGE));
                monoio::spawn(release_when_idle());
                h
            }
        };
        let txn = held.txn(now)?;
        read(txn)
    })
}

/// Every [`HELD_TXN_AGE`], lets this core's held transaction go once it is older than that
/// (no request renewed it): an idle core must not keep LMDB from reusing freed pages.
/// Ends when it has let go; the next request starts another.
async fn release_when_idle() {
    loop {
        monoio::time::sleep(HELD_TXN_AGE).await;
        let held = READER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let still = slot
                .as_mut()
                .is_some_and(|h| h.release_if_old(Instant::now()));
            if !still {
                *slot = None;
            }
            still
        });
        if !held {
            return;
        }
    }
}

// === schemas of registry-installed versions ===

/// What [`prepare_binding`] decided for one version, for [`install_binding`].
pub struct Binding {
    name: String,
    version: String,
    assembler: Option<Arc<Assembler>>,
}

/// Binds the feature schema of `name`@`version` to the store, off the data path (the
/// registry agent's thread), and checks that it can feed the model: `schema` is the signed
/// bundle's (`Bundle::features`); without one the model's `[models.features]` from the
/// config is used if it fits, else the version is predicted by tensor only. A bundle
/// schema that does not fit the model, or clashes with the store's stored layout of its
/// version, is an error: the install is refused. Nothing is served until
/// [`install_binding`]. `Ok(None)` when the store is not enabled.
pub fn prepare_binding(
    name: &str,
    version: &str,
    schema: Option<&FeatureSchema>,
    info: &ModelInfo,
) -> anyhow::Result<Option<Binding>> {
    let Some(f) = FEATURES.get() else {
        if schema.is_some() {
            tracing::warn!(
                model = name,
                version,
                "the bundle has a feature schema but cache.enabled = false"
            );
        }
        return Ok(None);
    };
    let assembler = match schema {
        Some(s) => {
            let a = Assembler::new(&f.store, schema_of(s))
                .with_context(|| format!("{name}@{version}: the bundle's feature schema"))?;
            check_input(name, version, &a, info)?;
            Some(Arc::new(a))
        }
        None => config_schema(f, name).and_then(|s| {
            let a = Assembler::new(&f.store, schema_of(&s))
                .map(Arc::new)
                .map_err(anyhow::Error::from)
                .and_then(|a| check_input(name, version, &a, info).map(|()| a));
            match a {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(model = name, version, "the config's feature schema does not fit this version, which is predicted by tensor only: {e:#}");
                    None
                }
            }
        }),
    };
    Ok(Some(Binding {
        name: name.to_owned(),
        version: version.to_owned(),
        assembler,
    }))
}

/// The config's schema for model `name`, if any.
fn config_schema(f: &Features, name: &str) -> Option<FeatureSchema> {
    let schemas = f.config_schemas.lock().unwrap_or_else(|p| p.into_inner());
    schemas.get(name).cloned()
}

/// After a SIGHUP reload (the new versions already in `table`): binds the
/// `[models.features]` of every configured version again from `cfg`, so a table that was
/// added or changed takes effect, and a removed one unbinds its version. A table that does
/// not bind or fit its model is logged and leaves that version predicted by tensor only;
/// the rest of the reload stands. Versions from the registry keep their bundle's schema.
pub fn rebind_config(cfg: &Config, table: &ModelTable) {
    let Some(f) = FEATURES.get() else { return };
    let snap = table.snapshot();
    let mut schemas = HashMap::new();
    for m in &cfg.models {
        let info = snap
            .versions()
            .find(|v| v.name == m.name && v.version == m.version)
            .map(|v| v.model.info.clone());
        let assembler = match (&m.features, info) {
            (Some(schema), Some(info)) => {
                schemas.insert(m.name.clone(), schema.clone());
                let a = Assembler::new(&f.store, schema_of(schema))
                    .map_err(anyhow::Error::from)
                    .and_then(|a| check_input(&m.name, &m.version, &a, &info).map(|()| a));
                match a {
                    Ok(a) => Some(Arc::new(a)),
                    Err(e) => {
                        tracing::warn!(model = %m.name, version = %m.version, "reload: models.features not bound, predicted by tensor only: {e:#}");
                        None
                    }
                }
            }
            _ => None,
        };
        install_binding(Binding {
            name: m.name.clone(),
            version: m.version.clone(),
            assembler,
        });
    }
    *f.config_schemas.lock().unwrap_or_else(|p| p.into_inner()) = schemas;
}

/// Publishes a prepared binding: PREDICT_BY_ENTITY for `name`@`version` assembles with it
/// from the next request on (call it before the version is published in the model table).
/// A version without a schema loses any binding an earlier install of it had.
pub fn install_binding(b: Binding) {
    let Some(f) = FEATURES.get() else { return };
    let _one_writer = f.binding.lock().unwrap_or_else(|p| p.into_inner());
    let mut next = Assemblers::clone(&f.assemblers.load());
    match b.assembler {
        Some(a) => {
            next.entry(b.name).or_default().insert(b.version, a);
        }
        None => {
            if let Some(m) = next.get_mut(&b.name) {
                m.remove(&b.version);
            }
        }
    }
    f.assemblers.store(Arc::new(next));
}

// === PREDICT_BY_ENTITY ===

/// Admits a PREDICT_BY_ENTITY: the rows are assembled now, on the core, inside one short
/// read transaction; the job then queues and runs like a PREDICT.
pub(crate) fn admit(
    core: &Core,
    conn: &Rc<Conn>,
    header: &Header,
    body: &[u8],
    now: Instant,
) -> FrameAction {
    match check(core, conn, header, body, now) {
        Ok(parts) => FrameAction::Admit(parts),
        Err((r, version)) => {
            if let Some(v) = version {
                v.stats.record(outcome_of(r.code));
            }
            conn.push(core.error_response(header.request_id, r.code, &r.message));
            FrameAction::Done
        }
    }
}

#[allow(clippy::type_complexity)]
fn check(
    core: &Core,
    conn: &Conn,
    header: &Header,
    body: &[u8],
    now: Instant,
) -> Result<Box<JobParts>, (Refusal, Option<Arc<ModelVersion>>)> {
    core.may_admit(conn).map_err(|r| (r, None))?;
    let f = features().map_err(|r| (r, None))?;
    let req = decode_message::<PredictByEntityRequest>(header, body)
        .map_err(|e| (Refusal::new(e.kind(), e.to_string()), None))?;
    let model = core
        .resolve(&req.model, req.version.as_deref(), &req.routing_key)
        .map_err(|r| (r, None))?;
    let v = &model.version;
    let fail = |r: Refusal| (r, Some(v.clone()));
    let bad = |msg: String| fail(Refusal::new(ErrorCode::BadInput, msg));
    Core::ready(v).map_err(fail)?;
    let assemblers = f.assemblers.load();
    let Some(a) = assemblers.get(&v.name).and_then(|m| m.get(&v.version)) else {
        return Err(bad(format!(
            "model {:?} version {:?} has no feature schema ([models.features]): predict it by \
             tensor",
            v.name, v.version
        )));
    };
    let schema = a.schema();
    if req.schema_version != 0 && req.schema_version != schema.version {
        return Err(bad(format!(
            "the request expects feature schema version {}; model {:?} version {:?} uses {}",
            req.schema_version, v.name, v.version, schema.version
        )));
    }
    let rows = req.keys.len();
    let max_rows = core.opts().max_request_rows;
    if rows == 0 {
        return Err(bad("PREDICT_BY_ENTITY needs at least one entity key".into()));
    }
    if rows as u64 > max_rows {
        return Err(bad(format!(
            "{rows} entity keys; this server runs at most {max_rows} rows per request \
             (server.max_request_rows): split it into several requests"
        )));
    }
    for k in &req.keys {
        f.check_key(k).map_err(fail)?;
    }
    let mut overrides = Vec::with_capacity(req.overrides.len());
    for o in &req.overrides {
        if o.row as usize >= rows {
            return Err(bad(format!(
                "an override names row {} of a request with {rows} keys",
                o.row
            )));
        }
        let o = a
            .override_by_name(o.row as usize, &o.feature, o.value)
            .map_err(|e| fail(refusal_of(&e)))?;
        overrides.push(o);
    }
    let info = &v.model.info;
    let mut sel: SmallVec<[u8; 8]> = SmallVec::new();
    if req.outputs.is_empty() {
        sel.extend((0..info.outputs.len()).map(|i| i as u8));
    } else {
        for name in &req.outputs {
            match info.outputs.iter().position(|s| &s.name == name) {
                Some(k) => sel.push(k as u8),
                None => return Err(bad(format!("model {:?} has no output {name:?}", v.name))),
            }
        }
    }
    if core.waiting.get() >= core.opts().queue_depth {
        let msg = format!(
            "this core's queue is full ({} requests waiting)",
            core.waiting.get()
        );
        return Err(fail(Refusal::new(ErrorCode::Overloaded, msg)));
    }
    // Assembly: in this core's held read transaction, never blocked by writers (LMDB
    // readers do not wait).
    let keys: SmallVec<[&[u8]; 8]> = req.keys.iter().map(Vec::as_slice).collect();
    let mut values = Vec::new();
    let mut reports = Vec::new();
    // The wall clock only for a schema whose values can go stale.
    let clock = if a.uses_clock() { now_ms() } else { 0 };
    with_reader(f, now, |txn| {
        a.assemble(
            &f.store,
            txn,
            &keys,
            &overrides,
            clock,
            &mut values,
            &mut reports,
        )
    })
    .map_err(|e| fail(refusal_of(&e)))?;
    drop(keys);
    let job = EntityJob {
        values,
        shape: [rows, a.width()],
        rows: Cell::new(reports.into_iter().map(wire_report).collect()),
        schema_version: schema.version,
        keys: req.keys,
    };
    // The NaN policy is the engine's: a schema may allow NaN that the engine refuses.
    validate_inputs(info, &[job.input()], true).map_err(|e| bad(e.message))?;
    let deadline = (req.deadline_us > 0).then(|| now + Duration::from_micros(req.deadline_us));
    Ok(Box::new(JobParts {
        request_id: header.request_id,
        data_offset: 0,
        request: PredictRequest {
            model: req.model,
            version: req.version,
            inputs: Vec::new(),
            outputs: Vec::new(),
            deadline_us: req.deadline_us,
            routing_key: req.routing_key,
        },
        order: SmallVec::from_slice(&[0]),
        sel,
        rows,
        model,
        arrived: now,
        deadline,
        entity: Some(Box::new(job)),
    }))
}

/// A row report in its wire type: the fields moved, nothing copied (the collect reuses the
/// reports' allocation, the two types having one layout).
fn wire_report(r: RowReport) -> EntityRowReport {
    EntityRowReport {
        found: r.found,
        version_mismatch: r.version_mismatch,
        defaulted: r.defaulted,
        stale: r.stale,
        event_ts_ms: r.event_ts_ms,
    }
}

// === GET_FEATURES ===

/// GET_FEATURES: the stored rows, by feature name, read on the core.
pub(crate) fn get(header: &Header, body: &[u8]) -> Result<GetFeaturesResponse, Refusal> {
    let f = features()?;
    let req = decode_message::<GetFeaturesRequest>(header, body)
        .map_err(|e| Refusal::new(e.kind(), e.to_string()))?;
    if req.entities.len() > MAX_PAYLOAD_ROWS {
        return Err(Refusal::new(
            ErrorCode::BadInput,
            format!(
                "{} entities in one GET_FEATURES; at most {MAX_PAYLOAD_ROWS}",
                req.entities.len()
            ),
        ));
    }
    for k in &req.entities {
        f.check_key(k)?;
    }
    let txn = f.store.read_txn().map_err(|e| refusal_of(&e))?;
    let mut rows = Vec::with_capacity(req.entities.len());
    for k in &req.entities {
        let row = f.store.get(&txn, k).map_err(|e| refusal_of(&e))?;
        rows.push(match row {
            None => StoredFeatures::default(),
            Some(r) => {
                let layout = f.store.schema(r.schema_version);
                let values = (0..r.len())
                    .filter_map(|i| {
                        let value = r.get(i)?;
                        let name = layout
                            .as_ref()
                            .and_then(|s| s.fields.get(i))
                            .map_or_else(|| format!("#{i}"), |fs| fs.name.clone());
                        Some(FeatureValue { name, value })
                    })
                    .collect();
                StoredFeatures {
                    found: true,
                    event_ts_ms: r.event_ts_ms,
                    schema_version: r.schema_version,
                    values,
                }
            }
        });
    }
    Ok(GetFeaturesResponse { rows })
}

// === PUT_FEATURES ===

/// PUT_FEATURES: checked for shape here, validated and written on the writer thread (one
/// transaction, all or nothing); the answer is pushed when the commit is done, and the core
/// serves other requests meanwhile. Counted in flight like a PREDICT.
pub(crate) fn put(core: &Core, conn: &Rc<Conn>, header: &Header, body: &[u8]) -> FrameAction {
    let id = header.request_id;
    match send_put(conn, header, body) {
        Ok(wake) => {
            conn.job_started();
            let conn = conn.clone();
            monoio::spawn(async move { finish_put(conn, id, wake).await });
        }
        Err(r) => conn.push(core.error_response(id, r.code, &r.message)),
    }
    FrameAction::Done
}

type Slot = Arc<Mutex<Option<Result<PutFeaturesResponse, FeatureError>>>>;

fn send_put(
    conn: &Conn,
    header: &Header,
    body: &[u8],
) -> Result<(monoio::net::UnixStream, Slot), Refusal> {
    let f = features()?;
    conn.core.under_in_flight_limit(conn)?;
    let req = decode_message::<PutFeaturesRequest>(header, body)
        .map_err(|e| Refusal::new(e.kind(), e.to_string()))?;
    if req.rows.len() > MAX_PAYLOAD_ROWS {
        return Err(Refusal::new(
            ErrorCode::BadInput,
            format!(
                "{} rows in one PUT_FEATURES; at most {MAX_PAYLOAD_ROWS}",
                req.rows.len()
            ),
        ));
    }
    let schema_version = req.schema_version;
    let mut updates = Vec::with_capacity(req.rows.len());
    for r in req.rows {
        f.check_key(&r.entity)?;
        updates.push(NamedUpdate {
            key: r.entity,
            event_ts_ms: r.event_ts_ms,
            schema_version,
            values: r.values.into_iter().map(|v| (v.name, v.value)).collect(),
        });
    }
    let internal = |e: std::io::Error| {
        Refusal::new(
            ErrorCode::Internal,
            format!("a wake socket for PUT_FEATURES: {e}"),
        )
    };
    let (ours, theirs) = StdUnixStream::pair().map_err(internal)?;
    ours.set_nonblocking(true).map_err(internal)?;
    let ours = monoio::net::UnixStream::from_std(ours).map_err(internal)?;
    let done: Slot = Arc::new(Mutex::new(None));
    let job = WriteJob {
        updates,
        done: done.clone(),
        wake: theirs,
    };
    match f.writer.lock().expect("poisoned").try_send(job) {
        Ok(()) => Ok((ours, done)),
        Err(TrySendError::Full(_)) => Err(Refusal::new(
            ErrorCode::Overloaded,
            format!("{WRITE_QUEUE} feature writes are already waiting"),
        )),
        Err(TrySendError::Disconnected(_)) => Err(Refusal::new(
            ErrorCode::FeatureStore,
            "the feature writer has stopped",
        )),
    }
}

async fn finish_put(conn: Rc<Conn>, id: u64, (mut wake, done): (monoio::net::UnixStream, Slot)) {
    // One byte (or EOF if the writer died) says the slot is filled.
    let _ = wake.read(vec![0u8; 1]).await;
    let result = done.lock().expect("poisoned").take();
    let core = conn.core.clone();
    let r = match result {
        Some(Ok(msg)) => core.message_response(Opcode::PutFeaturesResponse, id, &msg),
        Some(Err(e)) => {
            let r = refusal_of(&e);
            core.error_response(id, r.code, &r.message)
        }
        None => core.error_response(id, ErrorCode::Internal, "the feature writer stopped"),
    };
    conn.push(r);
    conn.job_finished();
}

// === metrics ===

/// The store's lines for `/metrics`; nothing when the store is not enabled.
pub fn render_metrics(out: &mut String) {
    let Some(f) = FEATURES.get() else { return };
    let m = f.store.metrics();
    for (name, help, v) in [
        (
            "edgeinfer_features_lookups_total",
            "Entity rows assembled for PREDICT_BY_ENTITY.",
            &m.lookups,
        ),
        (
            "edgeinfer_features_missing_entity_total",
            "Entities not in the store (every feature defaulted).",
            &m.missing_entity,
        ),
        (
            "edgeinfer_features_missing_feature_total",
            "Features absent from a stored row (defaulted).",
            &m.missing_feature,
        ),
        (
            "edgeinfer_features_stale_total",
            "Feature values older than their max age (served per the stale policy).",
            &m.stale,
        ),
        (
            "edgeinfer_features_defaulted_total",
            "Features served as their default after overrides (missing entity or feature, stale).",
            &m.defaulted,
        ),
        (
            "edgeinfer_features_version_mismatch_total",
            "Stored rows of another schema version (every feature defaulted).",
            &m.version_mismatch,
        ),
        (
            "edgeinfer_features_map_full_total",
            "Writes refused because the LMDB map is full.",
            &m.map_full,
        ),
        (
            "edgeinfer_features_rows_written_total",
            "Feature rows written (import, MQTT, PUT_FEATURES).",
            &m.rows_written,
        ),
        (
            "edgeinfer_features_rows_rejected_total",
            "Feature rows refused as invalid.",
            &m.rows_rejected,
        ),
        (
            "edgeinfer_features_rows_expired_total",
            "Feature rows deleted by TTL expiry.",
            &m.rows_expired,
        ),
        (
            "edgeinfer_features_mqtt_messages_total",
            "MQTT feature-update messages received.",
            &m.mqtt_messages,
        ),
        (
            "edgeinfer_features_mqtt_bad_payloads_total",
            "MQTT feature-update messages refused as bad.",
            &m.mqtt_bad_payloads,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Relaxed)
        );
    }
    if let Ok(s) = f.store.stats() {
        for (name, help, v) in [
            (
                "edgeinfer_features_entities",
                "Entities in the feature store.",
                s.entities as f64,
            ),
            (
                "edgeinfer_features_map_size_bytes",
                "The LMDB map size (cache.max_bytes).",
                s.map_size as f64,
            ),
            (
                "edgeinfer_features_used_bytes",
                "Bytes of the LMDB map in use.",
                s.used_bytes as f64,
            ),
            (
                "edgeinfer_features_fill_ratio",
                "Used bytes over the map size.",
                s.fill_ratio,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    }
}
