//! Composes the telemetry crate into the daemon: what the data-path cores keep per core
//! (thread-local latency histograms, drift bin counters per model version, a block of
//! prediction ids; no lock, no shared cache line per request), the control thread that
//! merges them and publishes status, latency, drift, accuracy, GPU and events through the
//! outbox, the prediction log and FEEDBACK's join against it, and the event API the rest
//! of the daemon calls.
//!
//! The data path touches this module only through [`record_prediction`], [`record_ok`],
//! [`record_error`] and [`feedback`]; when telemetry is off each costs one relaxed load.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use edgeinfer_engine::{DType, OutputTensor, TensorView};
use edgeinfer_proto::{ErrorCode, FeedbackRequest, FeedbackResponse};
use edgeinfer_telemetry::config::BrokerAddr;
use edgeinfer_telemetry::drift::{CoreCounts, DriftCounts, ReferenceStats};
use edgeinfer_telemetry::events::Event;
use edgeinfer_telemetry::gpu::{FileSource, GpuSource, NvmlSource, Transition};
use edgeinfer_telemetry::hub::{Hub, HubSettings};
use edgeinfer_telemetry::latency::{CoreRecorder, LatencyReport, Series};
use edgeinfer_telemetry::messages::{ModelState, OutboxState, Status, Topics};
use edgeinfer_telemetry::outbox::{Outbox, OutboxLimits};
use edgeinfer_telemetry::predlog::{FeedbackKey, LogRow, PredictionLog};
use edgeinfer_telemetry::publisher::{Publisher, PublisherConfig, PublisherStats};
use edgeinfer_telemetry::sparkplug::{NodeConfig, NodeTopics, SparkplugFeed, SparkplugNode};
use edgeinfer_telemetry::{Clock, ErrorKind, ModelMonitoring, SystemClock};
use smallvec::SmallVec;

use crate::config::Config;
use crate::metrics::escape;
use crate::model_table::ModelTable;

/// A/B arm labels. A version is in one arm at a time: `stable` or `candidate` while a
/// rollout directive names it ([`serve_arms`]), `default` otherwise. Static strings, so a
/// core labels a request without allocating.
pub const ARM_DEFAULT: &str = edgeinfer_telemetry::hub::DEFAULT_ARM;
pub const ARM_STABLE: &str = "stable";
pub const ARM_CANDIDATE: &str = "candidate";
/// Prediction ids a core takes from the shared counter at once (one atomic per block).
const ID_BLOCK: u64 = 4096;
/// Rows of one request that go into the prediction log; FEEDBACK on later rows of a huge
/// request is answered UNKNOWN_REQUEST_ID (docs/telemetry.md).
const LOG_ROWS_MAX: usize = 1024;
/// Predictions the control thread buffers before writing them to LMDB in one commit (at
/// 1,024 a saturated core made some 30 commits a second, each a few syscalls).
const LOG_BATCH: usize = 4096;
const LOG_FLUSH: Duration = Duration::from_millis(100);
/// The control thread takes the cores' batches this often. Between two, it waits on its
/// channel, which carries no per-request message any more (records are batched), so a
/// sender's wake-up is per interval, per event or per FEEDBACK, and a FEEDBACK is joined as
/// soon as it arrives. Each wake-up of this thread preempts the serving core it shares a
/// CPU with: at 2 ms they were most of its 3 % of the daemon's CPU. A core's batch holds
/// [`BATCH_RECS`] records, 400k requests a second over one poll.
const POLL: Duration = Duration::from_millis(20);

/// The answer the control thread sends back for one FEEDBACK.
pub type FeedbackReply = Result<FeedbackResponse, (ErrorCode, String)>;

/// What reaches the control thread on its channel. Prediction records do not: each core
/// batches them ([`Batch`]) and the control thread collects the batches.
enum Msg {
    Latency(Vec<Series>),
    Drift(Vec<(u32, DriftCounts)>),
    /// A version's arm changed (a rollout decision was served).
    Arm(u32, &'static str),
    Event(Event),
    /// A version installed while serving (registry), with what it is monitored against.
    Version(String, String, Box<ModelMonitoring>),
    Feedback(FeedbackRequest, mpsc::SyncSender<FeedbackReply>),
    Connected,
    /// What the status says changed (a model's rollout state): publish it now.
    StatusChanged,
}

/// Where every thread sends; set once when telemetry starts. Bounded: a control thread that
/// falls behind costs counted drops ([`DROPPED`]), never unbounded memory or a blocked core.
/// Per interval and per event, never per request.
static SINK: OnceLock<SyncSender<Msg>> = OnceLock::new();
const CHANNEL: usize = 16_384;
/// Messages (prediction records, histograms, events) dropped because the channel was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Sends without waiting; a full channel drops the message and counts it.
fn offer(tx: &SyncSender<Msg>, m: Msg) -> bool {
    match tx.try_send(m) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            DROPPED.fetch_add(1, Relaxed);
            false
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}
/// Bumped by the control thread each interval; a core that sees a new value hands over.
static EPOCH: AtomicU64 = AtomicU64::new(0);
static ON: AtomicBool = AtomicBool::new(false);
/// Next free prediction id (cores take blocks of [`ID_BLOCK`]).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Model versions by index, with their reference statistics. Locked only when a core meets
/// a version for the first time or [`VERSIONS_GEN`] moves, never per request.
static VERSIONS: Mutex<Vec<VersionEntry>> = Mutex::new(Vec::new());
static VERSIONS_GEN: AtomicU64 = AtomicU64::new(0);

struct VersionEntry {
    model: String,
    version: String,
    reference: Option<Arc<ReferenceStats>>,
    arm: &'static str,
}

/// What a core caches of one version: its index, reference and arm.
type VersionInfo = (u32, Option<Arc<ReferenceStats>>, &'static str);

/// The index of (model, version), interning it.
fn version_index(model: &str, version: &str) -> VersionInfo {
    let mut v = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = v
        .iter()
        .position(|e| e.model == model && e.version == version)
    {
        return (i as u32, v[i].reference.clone(), v[i].arm);
    }
    v.push(VersionEntry {
        model: model.into(),
        version: version.into(),
        reference: None,
        arm: ARM_DEFAULT,
    });
    ((v.len() - 1) as u32, None, ARM_DEFAULT)
}

/// Labels `model`'s versions with the arms `serve` puts them in (every other version of
/// the model is `default` again). Called whenever a rollout decision is served; cores pick
/// the labels up on their next request, the control thread labels drift and the log.
pub fn serve_arms(model: &str, serve: &edgeinfer_rollout::Serve) {
    use edgeinfer_rollout::Serve;
    let named: SmallVec<[(&str, &'static str); 2]> = match serve {
        Serve::Stable { version } => [(version.as_str(), ARM_STABLE)].into_iter().collect(),
        Serve::Candidate { version } => [(version.as_str(), ARM_CANDIDATE)].into_iter().collect(),
        Serve::Split {
            stable, candidate, ..
        } => [
            (stable.as_str(), ARM_STABLE),
            (candidate.as_str(), ARM_CANDIDATE),
        ]
        .into_iter()
        .collect(),
    };
    for (version, _) in &named {
        version_index(model, version);
    }
    let mut changed: SmallVec<[(u32, &'static str); 4]> = SmallVec::new();
    {
        let mut v = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
        for (i, e) in v.iter_mut().enumerate().filter(|(_, e)| e.model == model) {
            let arm = named
                .iter()
                .find(|n| n.0 == e.version)
                .map_or(ARM_DEFAULT, |n| n.1);
            if e.arm != arm {
                e.arm = arm;
                changed.push((i as u32, arm));
            }
        }
    }
    if changed.is_empty() {
        return;
    }
    VERSIONS_GEN.fetch_add(1, Relaxed);
    if let Some(tx) = SINK.get() {
        for (i, arm) in changed {
            // Rare and needed (drift messages are labelled by it): wait for room.
            let _ = tx.send(Msg::Arm(i, arm));
        }
    }
}

/// The arm `model`@`version` serves in now.
pub fn arm_of(model: &str, version: &str) -> &'static str {
    let v = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
    v.iter()
        .find(|e| e.model == model && e.version == version)
        .map_or(ARM_DEFAULT, |e| e.arm)
}

fn version_names(i: u32) -> Option<(String, String)> {
    let v = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
    v.get(i as usize)
        .map(|e| (e.model.clone(), e.version.clone()))
}

/// Gives a version its reference statistics (on install); cores pick it up on their next
/// request for it.
fn set_reference(model: &str, version: &str, r: Option<ReferenceStats>) {
    let (i, _, _) = version_index(model, version);
    let mut v = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
    v[i as usize].reference = r.map(Arc::new);
    VERSIONS_GEN.fetch_add(1, Relaxed);
}

// === the cores' side ===

/// One request's prediction record as its core batches it: its rows' first outputs are
/// `outputs[out_at..out_at + rows]` of the batch, and with entity keys (PREDICT_BY_ENTITY)
/// row k's key is the k-th of `ent_lens[ent_at..]` over `ent_bytes`.
#[derive(Clone, Copy)]
struct Rec {
    first_id: u64,
    ts_ms: u64,
    ver: u32,
    rows: u32,
    out_at: u32,
    ent_at: u32,
    /// Rows with an entity key (0 for PREDICT).
    ents: u32,
    arm: &'static str,
}

/// A core's prediction records since the control thread last took them. The core appends
/// under the batch's own lock (uncontended: the control thread holds it only to swap the
/// buffers, every [`POLL`]), so a request costs no channel send and no wake-up, and the
/// control thread handles one batch per core per poll instead of one message per request.
/// The control thread also takes every batch before it joins a FEEDBACK, so a prediction
/// answered on any core is joinable as soon as its answer is out: the record is appended
/// before the answer is encoded, and the lock orders the two. An idle core's records wait
/// at most one poll (≤ [`POLL`] plus the control thread's own work) for the log.
#[derive(Default)]
struct Batch {
    recs: Vec<Rec>,
    outputs: Vec<f64>,
    ent_lens: Vec<u32>,
    ent_bytes: Vec<u8>,
}

/// Records one batch holds at most: a control thread that falls behind by this much costs
/// counted drops ([`DROPPED`]), never memory or an allocation on the core. Reserved at the
/// core's first request; a poll takes a few hundred at saturation.
const BATCH_RECS: usize = 8192;

impl Batch {
    fn with_capacity() -> Batch {
        Batch {
            recs: Vec::with_capacity(BATCH_RECS),
            outputs: Vec::with_capacity(BATCH_RECS),
            ent_lens: Vec::new(),
            ent_bytes: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.recs.clear();
        self.outputs.clear();
        self.ent_lens.clear();
        self.ent_bytes.clear();
    }
}

/// A core's [`Batch`] behind a spin lock the core takes once per request. Not a `Mutex`:
/// its unlock is a locked exchange (it must look for waiters to wake), which drained the
/// core's store buffer and measured as a fifth of the recording's time; this unlock is a
/// plain release store. The other side is the control thread, which holds it only to swap
/// two buffers; a core that finds it held yields (the control thread may share its CPU).
struct CoreBatch {
    held: AtomicBool,
    batch: std::cell::UnsafeCell<Batch>,
}

// SAFETY: `batch` is reached only through `CoreBatch::lock`, which `held` makes exclusive.
unsafe impl Sync for CoreBatch {}

/// [`CoreBatch`] held; released on drop.
struct BatchGuard<'a>(&'a CoreBatch);

impl CoreBatch {
    fn new() -> CoreBatch {
        CoreBatch {
            held: AtomicBool::new(false),
            batch: std::cell::UnsafeCell::new(Batch::with_capacity()),
        }
    }

    fn lock(&self) -> BatchGuard<'_> {
        let mut spins = 0u32;
        while self
            .held
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        BatchGuard(self)
    }
}

impl std::ops::Deref for BatchGuard<'_> {
    type Target = Batch;
    fn deref(&self) -> &Batch {
        // SAFETY: this guard holds `held` (set by `lock`), so no other reference exists.
        unsafe { &*self.0.batch.get() }
    }
}

impl std::ops::DerefMut for BatchGuard<'_> {
    fn deref_mut(&mut self) -> &mut Batch {
        // SAFETY: as in `deref`; `&mut self` makes this the only one from this guard.
        unsafe { &mut *self.0.batch.get() }
    }
}

impl Drop for BatchGuard<'_> {
    fn drop(&mut self) {
        self.0.held.store(false, Release);
    }
}

/// Every core's batch, for the control thread to take. A core's entry outlives its thread
/// until its last records are taken.
static BATCHES: Mutex<Vec<Arc<CoreBatch>>> = Mutex::new(Vec::new());

/// One version as a core sees it: its index and, with a reference, its bin counters.
struct CoreVersion {
    model: String,
    version: String,
    idx: u32,
    reference: Option<Arc<ReferenceStats>>,
    counts: Option<CoreCounts>,
    arm: &'static str,
}

struct CoreState {
    rec: CoreRecorder,
    epoch: u64,
    gen: u64,
    tx: SyncSender<Msg>,
    batch: Arc<CoreBatch>,
    versions: Vec<CoreVersion>,
    next_id: u64,
    end_id: u64,
}

impl CoreState {
    fn version(&mut self, model: &str, version: &str) -> &mut CoreVersion {
        let g = VERSIONS_GEN.load(Relaxed);
        if g != self.gen {
            self.gen = g;
            for v in &mut self.versions {
                let (_, r, arm) = version_index(&v.model, &v.version);
                if v.arm != arm {
                    // A window's bins belong to one arm: hand the old arm's over first.
                    hand_over_drift(&self.tx, v);
                    v.arm = arm;
                }
                if !same_ref(&v.reference, &r) {
                    hand_over_drift(&self.tx, v);
                    v.counts = r.as_deref().map(CoreCounts::for_reference);
                    v.reference = r;
                }
            }
        }
        let i = match self
            .versions
            .iter()
            .position(|v| v.model == model && v.version == version)
        {
            Some(i) => i,
            None => {
                let (idx, reference, arm) = version_index(model, version);
                self.versions.push(CoreVersion {
                    model: model.into(),
                    version: version.into(),
                    idx,
                    counts: reference.as_deref().map(CoreCounts::for_reference),
                    reference,
                    arm,
                });
                self.versions.len() - 1
            }
        };
        &mut self.versions[i]
    }

    fn take_ids(&mut self, n: u64) -> u64 {
        if self.next_id + n > self.end_id {
            let take = n.max(ID_BLOCK);
            self.next_id = NEXT_ID.fetch_add(take, Relaxed);
            self.end_id = self.next_id + take;
        }
        let id = self.next_id;
        self.next_id += n;
        id
    }
}

fn same_ref(a: &Option<Arc<ReferenceStats>>, b: &Option<Arc<ReferenceStats>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn hand_over_drift(tx: &SyncSender<Msg>, v: &mut CoreVersion) {
    if let Some(c) = v.counts.as_mut().filter(|c| !c.is_empty()) {
        offer(tx, Msg::Drift(vec![(v.idx, c.take())]));
    }
}

thread_local! {
    static CORE: RefCell<Option<CoreState>> = const { RefCell::new(None) };
}

fn with_core<R>(f: impl FnOnce(&mut CoreState) -> R) -> Option<R> {
    if !ON.load(Relaxed) {
        return None;
    }
    CORE.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            let tx = SINK.get()?;
            let batch = Arc::new(CoreBatch::new());
            BATCHES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(batch.clone());
            *c = Some(CoreState {
                rec: CoreRecorder::default(),
                epoch: EPOCH.load(Relaxed),
                gen: VERSIONS_GEN.load(Relaxed),
                tx: tx.clone(),
                batch,
                versions: Vec::new(),
                next_id: 0,
                end_id: 0,
            });
        }
        let st = c.as_mut()?;
        let e = EPOCH.load(Relaxed);
        if e != st.epoch {
            st.epoch = e;
            offer(&st.tx, Msg::Latency(st.rec.take()));
            let drift: Vec<(u32, DriftCounts)> = st
                .versions
                .iter_mut()
                .filter_map(|v| {
                    let c = v.counts.as_mut().filter(|c| !c.is_empty())?;
                    Some((v.idx, c.take()))
                })
                .collect();
            if !drift.is_empty() {
                offer(&st.tx, Msg::Drift(drift));
            }
        }
        Some(f(st))
    })
}

/// Element `i` of little-endian `N`-byte values; NaN when out of range.
#[inline]
fn read_at<const N: usize>(data: &[u8], i: usize, conv: impl Fn([u8; N]) -> f64) -> f64 {
    data.get(i * N..i * N + N)
        .map_or(f64::NAN, |b| conv(b.try_into().unwrap()))
}

/// Element `i` of little-endian tensor bytes as f64; NaN when out of range.
fn element(dtype: DType, data: &[u8], i: usize) -> f64 {
    match dtype {
        DType::F32 => read_at(data, i, |b| f32::from_le_bytes(b) as f64),
        DType::F64 => read_at(data, i, f64::from_le_bytes),
        DType::I64 => read_at(data, i, |b| i64::from_le_bytes(b) as f64),
        DType::I32 => read_at(data, i, |b| i32::from_le_bytes(b) as f64),
        DType::U8 | DType::Bool => read_at(data, i, |[b]| b as f64),
    }
}

/// Counts `rows` rows of `input` (row-major, `width` values a row) into `c`, reading each
/// value with `read`: one instance per dtype, so the per-value dtype match is out of the
/// loop.
#[inline]
fn count_rows(
    c: &mut CoreCounts,
    data: &[u8],
    width: usize,
    rows: usize,
    read: impl Fn(&[u8], usize) -> f64,
    out_at: impl Fn(usize, usize) -> f64,
) {
    for row in 0..rows {
        let in_at = |col: usize| {
            if col < width {
                read(data, row * width + col)
            } else {
                f64::NAN
            }
        };
        c.observe_with(in_at, |col| out_at(row, col));
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall clock in ms as the control thread last read it (every [`POLL`]): a core stamps
/// each prediction from here instead of reading the clock per request. A stamp is early by
/// one poll (20 ms) plus the control thread's own work at most, never late, so a FEEDBACK
/// by entity and time still finds it.
static COARSE_MS: AtomicU64 = AtomicU64::new(0);

fn coarse_ms() -> u64 {
    match COARSE_MS.load(Relaxed) {
        0 => wall_ms(),
        ms => ms,
    }
}

/// A request about to be answered: counts its rows into the version's drift bins (first
/// input against the reference features, first output against the reference outputs),
/// queues its rows for the prediction log with the version's arm (and, for
/// PREDICT_BY_ENTITY, each row's entity key, so FEEDBACK can name an entity and a time),
/// and returns the id of its first row (0 when telemetry is off). Called by the core that
/// answers, before it encodes the answer.
pub fn record_prediction(
    model: &str,
    version: &str,
    input: Option<&TensorView<'_>>,
    output: Option<&OutputTensor>,
    rows: usize,
    entity_keys: Option<&[Vec<u8>]>,
) -> u64 {
    with_core(|st| {
        let rows = rows.max(1);
        let first_id = st.take_ids(rows as u64);
        let out_dt = output.and_then(|o| o.dtype);
        let out_width = output.map_or(0, |o| o.shape.iter().product::<usize>() / rows);
        let out_at = |row: usize, col: usize| match (output, out_dt) {
            (Some(o), Some(dt)) if col < out_width => element(dt, &o.data, row * out_width + col),
            _ => f64::NAN,
        };
        let v = st.version(model, version);
        let (idx, arm) = (v.idx, v.arm);
        if let Some(c) = v.counts.as_mut() {
            let (data, width) = input.map_or((&[][..], 0), |t| {
                (t.data, t.shape.iter().product::<usize>() / rows)
            });
            match input.map(|t| t.dtype) {
                Some(DType::F32) => count_rows(
                    c,
                    data,
                    width,
                    rows,
                    |d, i| read_at(d, i, |b| f32::from_le_bytes(b) as f64),
                    out_at,
                ),
                Some(DType::F64) => count_rows(
                    c,
                    data,
                    width,
                    rows,
                    |d, i| read_at(d, i, f64::from_le_bytes),
                    out_at,
                ),
                Some(dt) => count_rows(c, data, width, rows, |d, i| element(dt, d, i), out_at),
                None => count_rows(c, data, 0, rows, |_, _| f64::NAN, out_at),
            }
        }
        let logged = rows.min(LOG_ROWS_MAX);
        let ts_ms = coarse_ms();
        let mut b = st.batch.lock();
        if b.recs.len() >= BATCH_RECS {
            DROPPED.fetch_add(1, Relaxed);
            return first_id;
        }
        let out_at_batch = b.outputs.len() as u32;
        b.outputs.extend((0..logged).map(|r| out_at(r, 0)));
        // A key that is not UTF-8 cannot be named by FEEDBACK's string entity: logged
        // without one (its row is still joinable by id).
        let ent_at = b.ent_lens.len() as u32;
        for k in entity_keys.unwrap_or_default().iter().take(logged) {
            let k: &[u8] = if std::str::from_utf8(k).is_ok() {
                k
            } else {
                b""
            };
            b.ent_lens.push(k.len() as u32);
            b.ent_bytes.extend_from_slice(k);
        }
        let ents = b.ent_lens.len() as u32 - ent_at;
        b.recs.push(Rec {
            first_id,
            ts_ms,
            ver: idx,
            rows: logged as u32,
            out_at: out_at_batch,
            ent_at,
            ents,
            arm,
        });
        first_id
    })
    .unwrap_or(0)
}

/// A request answered: called by the core that answered it.
pub fn record_ok(model: &str, version: &str, total: Duration, queue: Duration, compute: Duration) {
    with_core(|st| {
        let arm = st.version(model, version).arm;
        st.rec.record_ok(
            model,
            version,
            arm,
            total.as_micros() as u64,
            queue.as_micros() as u64,
            compute.as_micros() as u64,
        )
    });
}

/// A request failed with wire error `code`.
pub fn record_error(model: &str, version: &str, code: u32, total: Duration) {
    with_core(|st| {
        let arm = st.version(model, version).arm;
        st.rec
            .record_error(model, version, arm, code, total.as_micros() as u64)
    });
}

/// Hands a FEEDBACK to the control thread for the join; the receiver yields its answer
/// (polled by the core: a monoio core takes no wake-ups from other threads).
/// Refused at once (the typed error to send) when it names nothing or telemetry is off.
pub fn feedback(req: FeedbackRequest) -> Result<Receiver<FeedbackReply>, (ErrorCode, String)> {
    let tx = match (ON.load(Relaxed), SINK.get()) {
        (true, Some(tx)) => tx,
        _ => {
            return Err((
                ErrorCode::NotImplemented,
                "FEEDBACK needs telemetry: this server runs with [telemetry] enabled = false"
                    .into(),
            ))
        }
    };
    if req.prediction_id == 0 && req.entity.is_empty() {
        return Err((
            ErrorCode::BadInput,
            "FEEDBACK names no prediction: set prediction_id, or entity (and timestamp_ms)".into(),
        ));
    }
    if !req.label.is_finite() {
        return Err((
            ErrorCode::BadInput,
            format!("FEEDBACK label {} is not a finite number", req.label),
        ));
    }
    let (reply, rx) = mpsc::sync_channel(1);
    match tx.try_send(Msg::Feedback(req, reply)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            DROPPED.fetch_add(1, Relaxed);
            return Err((
                ErrorCode::Overloaded,
                "telemetry is behind on this server: send the FEEDBACK again later".into(),
            ));
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err((ErrorCode::ShuttingDown, "telemetry has stopped".into()))
        }
    }
    Ok(rx)
}

/// Per model, the rollout state the retained status carries ([`rollout_state`]). Kept with
/// telemetry off or not yet started too, so the first status has it.
static ROLLOUT: Mutex<BTreeMap<String, serde_json::Value>> = Mutex::new(BTreeMap::new());

/// Sets `state.model`'s rollout state in the status (the rollout glue calls it whenever a
/// directive is served or a candidate rolled back) and, when it changed, republishes the
/// retained status at once: `events` are not retained, so an operator who subscribes after
/// a rollback learns of it from the status.
pub fn rollout_state(state: &edgeinfer_rollout::RolloutState) {
    let Ok(v) = serde_json::to_value(state) else {
        return;
    };
    let before = ROLLOUT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(state.model.clone(), v.clone());
    if before.as_ref() != Some(&v) {
        if let Some(tx) = SINK.get() {
            // Rare and needed (the gate of `rollout advance` reads it): wait for room.
            let _ = tx.send(Msg::StatusChanged);
        }
    }
}

/// The status's `rollout` entries now, one per model (what [`rollout_state`] last set).
pub fn rollout_status() -> Vec<serde_json::Value> {
    let states = ROLLOUT.lock().unwrap_or_else(|e| e.into_inner());
    states.values().cloned().collect()
}

/// Events reported before telemetry started (engine fallbacks while the models load):
/// published once it has. Bounded; a daemon with telemetry off never drains it.
static EARLY: Mutex<Vec<Event>> = Mutex::new(Vec::new());
const EARLY_MAX: usize = 256;

/// Reports an event (model lifecycle, engine fallback, …). Before [`start`] it is kept for
/// it; with telemetry off it goes nowhere.
pub fn emit(ev: Event) {
    match SINK.get() {
        Some(tx) => {
            offer(tx, Msg::Event(ev));
        }
        None => {
            let mut early = EARLY.lock().unwrap_or_else(|e| e.into_inner());
            if early.len() < EARLY_MAX {
                early.push(ev);
            }
        }
    }
}

/// What a signed bundle says a version is monitored against (its reference statistics,
/// with the bundle's default drift thresholds on features that carry none, and its primary
/// baseline metric): the same type a `[[models]]` monitoring file is read into.
pub fn monitoring_of_bundle(b: &edgeinfer_registry::release::bundle::Bundle) -> ModelMonitoring {
    let mut reference = b.reference.clone();
    for f in reference
        .features
        .iter_mut()
        .chain(reference.outputs.iter_mut())
    {
        f.thresholds.get_or_insert(b.thresholds.drift);
    }
    let empty = reference.features.is_empty() && reference.outputs.is_empty();
    ModelMonitoring {
        reference: (!empty).then_some(reference),
        baseline: b.baseline.primary,
        // The signed bundle's accuracy window, not the box's config: the release decides
        // how many labels make a window and what drop is a degradation for this version.
        accuracy_window_labels: Some(b.thresholds.accuracy_window_labels),
        accuracy_max_relative_drop: Some(b.thresholds.max_relative_drop),
    }
}

/// Registers a version installed while serving (the registry agent calls it with
/// [`monitoring_of_bundle`]): its drift windows and accuracy baseline start now.
pub fn register_version(model: &str, version: &str, mon: ModelMonitoring) {
    set_reference(model, version, mon.reference.clone());
    // Kept for [`start`]: a version restored or installed before telemetry starts (the
    // registry comes up first) is monitored against its bundle all the same.
    REGISTERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((model.into(), version.into()), mon.clone());
    if let Some(tx) = SINK.get() {
        // From a control thread, rare and needed: wait for room rather than drop it.
        let _ = tx.send(Msg::Version(model.into(), version.into(), Box::new(mon)));
    }
}

/// What [`register_version`] was told, by (model, version).
static REGISTERED: Mutex<BTreeMap<(String, String), ModelMonitoring>> = Mutex::new(BTreeMap::new());

// === latency mirror for /metrics ===

/// Per series, the latest interval's latency report, for `/metrics` (the same numbers as
/// the `latency` topic, so a scrape and a subscriber agree).
static LAST_LATENCY: Mutex<Vec<LatencyReport>> = Mutex::new(Vec::new());

/// Appends the latency mirror in Prometheus text format (nothing while telemetry is off).
pub fn write_metrics(out: &mut String) {
    use std::fmt::Write as _;
    if SINK.get().is_some() {
        let name = "edgeinfer_telemetry_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Telemetry messages (prediction records, histograms, events, FEEDBACK) dropped because the control thread was behind."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", DROPPED.load(Relaxed));
        let name = "edgeinfer_feedback_unknown_total";
        let _ = writeln!(
            out,
            "# HELP {name} FEEDBACK that named no logged prediction (answered UNKNOWN_REQUEST_ID), by how it named it."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for (i, by) in ["id", "entity"].iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{by=\"{by}\"}} {}",
                FEEDBACK_UNKNOWN[i].load(Relaxed)
            );
        }
    }
    write_accuracy_metrics(out);
    write_drift_metrics(out);
    let reports = LAST_LATENCY.lock().unwrap_or_else(|e| e.into_inner());
    if reports.is_empty() {
        return;
    }
    let name = "edgeinfer_telemetry_latency_us";
    let _ = writeln!(
        out,
        "# HELP {name} Request latency over the last telemetry interval (as published on the latency topic), by quantile."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for r in reports.iter() {
        for (q, v) in [
            ("0.5", r.p50_us),
            ("0.9", r.p90_us),
            ("0.99", r.p99_us),
            ("1", r.max_us),
        ] {
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",version=\"{}\",arm=\"{}\",quantile=\"{q}\"}} {v}",
                escape(&r.model),
                escape(&r.version),
                escape(&r.arm)
            );
        }
    }
    let name = "edgeinfer_telemetry_interval_requests";
    let _ = writeln!(
        out,
        "# HELP {name} Requests in the last telemetry interval."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for r in reports.iter() {
        let _ = writeln!(
            out,
            "{name}{{model=\"{}\",version=\"{}\",arm=\"{}\"}} {}",
            escape(&r.model),
            escape(&r.version),
            escape(&r.arm),
            r.count
        );
    }
}

/// The accuracy mirror: per (model, version, arm), the latest closed window's metric (as
/// published on the accuracy topic) and its baseline.
fn write_accuracy_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let last = LAST_ACCURACY.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_empty() {
        return;
    }
    for (name, help) in [
        (
            "edgeinfer_telemetry_accuracy",
            "Online accuracy metric of the last closed window of joined FEEDBACK labels.",
        ),
        (
            "edgeinfer_telemetry_accuracy_baseline",
            "The baseline the online accuracy window is judged against.",
        ),
        (
            "edgeinfer_telemetry_accuracy_labels",
            "Labels in the last closed online accuracy window.",
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for a in last.iter() {
            let v = match name {
                "edgeinfer_telemetry_accuracy" => a.value,
                "edgeinfer_telemetry_accuracy_baseline" => a.baseline,
                _ => a.labels as f64,
            };
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",version=\"{}\",arm=\"{}\",metric=\"{}\"}} {v}",
                escape(&a.model),
                escape(&a.version),
                escape(&a.arm),
                a.metric
            );
        }
    }
}

// === GPU failover ===

/// What the control thread calls on a GPU health transition (set once by `main`).
type GpuHandler = Box<dyn Fn(&Transition) + Send + Sync>;
static GPU_HANDLER: OnceLock<GpuHandler> = OnceLock::new();
/// Versions moved off the GPU, to move back on recovery.
static FAILED_OVER: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Sets what a GPU transition does (see [`gpu_failover`]).
pub fn on_gpu_transition(f: GpuHandler) {
    let _ = GPU_HANDLER.set(f);
}

/// The failover itself, on its own thread (loading and warming take seconds; the control
/// thread keeps publishing): on `FailOver`, every version serving on `ort-cuda` is reloaded on
/// `ort-cpu` and swapped in under the same name and version; on `Recover`, those go back to
/// the engine their spec asks for. Each move is an `engine_fallback` event. Requests keep
/// being served throughout (the swap is `Control`'s: nothing is refused).
pub fn gpu_failover(control: crate::app::Control, specs: Vec<crate::app::ModelSpec>) -> GpuHandler {
    use edgeinfer_engine::{Backend, EngineChoice};
    let specs = Arc::new(specs);
    Box::new(move |t: &Transition| {
        let (control, specs, t) = (control.clone(), specs.clone(), t.clone());
        let _ = std::thread::Builder::new()
            .name("edgeinfer-gpu-failover".into())
            .spawn(move || {
                let snap = control.table().snapshot();
                let backend_of = |name: &str, version: &str| {
                    snap.versions()
                        .find(|v| v.name == name && v.version == version)
                        .map(|v| v.model.backend())
                };
                for spec in specs.iter() {
                    let (name, version) = (spec.name.clone(), spec.version.clone());
                    let (engine, reason) = match &t {
                        Transition::FailOver { reason } => {
                            if backend_of(&name, &version) != Some(Backend::OrtCuda) {
                                continue;
                            }
                            (EngineChoice::OrtCpu, reason.clone())
                        }
                        Transition::Recover => {
                            let mut moved = FAILED_OVER.lock().unwrap_or_else(|e| e.into_inner());
                            let Some(i) = moved.iter().position(|m| *m == (name.clone(), version.clone()))
                            else {
                                continue;
                            };
                            moved.remove(i);
                            (spec.load.engine, "the GPU is healthy again".to_owned())
                        }
                    };
                    let from = backend_of(&name, &version).map_or("?", |b| b.name());
                    match control.reload_on(spec, engine) {
                        Ok(v) => {
                            if matches!(t, Transition::FailOver { .. }) {
                                FAILED_OVER
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push((name.clone(), version.clone()));
                            }
                            emit(Event::EngineFallback {
                                model: name,
                                version,
                                from: from.to_owned(),
                                to: v.model.backend().name().to_owned(),
                                reason,
                            });
                        }
                        Err(e) => tracing::error!(model = %name, version = %version, "GPU failover: {e:#}"),
                    }
                }
            });
    })
}

// === start ===

/// Running telemetry: dropping it stops the control thread and the MQTT task.
pub struct Telemetry {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<PublisherStats>,
    outbox: Arc<Outbox>,
}

impl Telemetry {
    pub fn publisher_stats(&self) -> &PublisherStats {
        &self.stats
    }
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads a model's monitoring file (reference statistics and baseline).
pub fn read_monitoring(path: &Path) -> anyhow::Result<ModelMonitoring> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ModelMonitoring::from_json(&bytes).with_context(|| format!("{}", path.display()))
}

/// Starts telemetry if `[telemetry] enabled`; `None` otherwise. Nothing here can stop the
/// daemon from serving once started: broker trouble only fills the outbox.
pub fn start(cfg: &Config, table: Arc<ModelTable>) -> anyhow::Result<Option<Telemetry>> {
    let t = &cfg.telemetry;
    if !t.enabled {
        return Ok(None);
    }
    let url = t.mqtt_url.as_deref().context("telemetry.mqtt_url")?;
    let broker = BrokerAddr::parse(url).map_err(anyhow::Error::msg)?;
    let device = t.device();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let limits = OutboxLimits {
        max_bytes: t.outbox_max_bytes,
        max_age_ms: t.outbox_max_age_s.saturating_mul(1000),
    };
    let dir = t.outbox_dir(&cfg.state_dir);
    let outbox = Arc::new(
        Outbox::open(&dir, limits, clock.clone())
            .with_context(|| format!("telemetry outbox {}", dir.display()))?,
    );
    let log_dir = t.prediction_log_dir(&cfg.state_dir);
    let predlog = PredictionLog::open(
        &log_dir,
        t.prediction_log_max_bytes,
        t.prediction_log_ttl_s.saturating_mul(1000),
        clock.clone(),
    )
    .with_context(|| format!("telemetry prediction log {}", log_dir.display()))?;
    // Ids continue above anything logged before (a restart must never reuse an id that a
    // client may still send FEEDBACK for), and above the wall clock in µs, so a log lost
    // with its directory still does not bring old ids back within the TTL.
    let floor = predlog.max_id().ok().flatten().unwrap_or(0) + ID_BLOCK;
    NEXT_ID.store(floor.max(wall_ms().saturating_mul(1000)), Relaxed);

    let mut monitoring = BTreeMap::new();
    for m in &cfg.models {
        if let Some(p) = &m.monitoring {
            let mon = read_monitoring(p)
                .with_context(|| format!("model {:?} version {:?}", m.name, m.version))?;
            monitoring.insert((m.name.clone(), m.version.clone()), mon);
        }
    }

    let topics = Topics {
        prefix: t.topic_prefix.clone(),
        device: device.clone(),
    };
    let credentials = match (&t.username, &t.password_file) {
        (Some(u), Some(p)) => {
            let pw = std::fs::read_to_string(p)
                .with_context(|| format!("telemetry.password_file {}", p.display()))?;
            Some((u.clone(), pw.trim_end_matches(['\n', '\r']).to_owned()))
        }
        (Some(u), None) => Some((u.clone(), String::new())),
        _ => None,
    };
    let tls_ca_pem = match &t.tls_ca_file {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("telemetry.tls_ca_file {}", p.display()))?,
        ),
        None => None,
    };
    let pcfg = PublisherConfig {
        broker,
        client_id: t
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edgeinfer-{device}")),
        credentials,
        tls_ca_pem,
        topics: topics.clone(),
        message_expiry_s: t.message_expiry_s,
        keep_alive: Duration::from_secs(30),
        reconnect_min: Duration::from_millis(500),
        reconnect_max: Duration::from_secs(30),
    };
    let settings = HubSettings {
        interval_ms: t.interval_s.saturating_mul(1000),
        drift_window_rows: t.drift_window_rows,
        accuracy_window_labels: t.accuracy_window_labels,
        accuracy_max_relative_drop: t.accuracy_max_relative_drop,
    };
    let mut hub = Hub::new(topics, outbox.clone(), clock.clone(), settings);
    let registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for v in table.snapshot().versions() {
        let key = (v.name.clone(), v.version.clone());
        // A `[[models]]` monitoring file, else what the registry registered (its bundle).
        let mon = monitoring
            .remove(&key)
            .or_else(|| registered.get(&key).cloned())
            .unwrap_or_default();
        set_reference(&v.name, &v.version, mon.reference.clone());
        hub.add_monitored(&v.name, &v.version, mon);
        hub.set_arm(&v.name, &v.version, arm_of(&v.name, &v.version));
    }
    let sparkplug = start_sparkplug(cfg, &pcfg, limits, clock.clone(), &table)?;
    let (tx, rx) = mpsc::sync_channel::<Msg>(CHANNEL);
    let _ = SINK.set(tx);
    // Registered between the snapshot above and the sink: hand them over now.
    let late: Vec<_> = REGISTERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(k, _)| !registered.contains_key(*k))
        .map(|(k, m)| (k.clone(), m.clone()))
        .collect();
    if let Some(tx) = SINK.get() {
        for ((m, v), mon) in late {
            let _ = tx.send(Msg::Version(m, v, Box::new(mon)));
        }
    }
    // A fresh `online` after every CONNACK replaces the retained Last Will.
    let publisher = Publisher::spawn(
        pcfg,
        outbox.clone(),
        clock,
        Box::new(|| {
            if let Some(tx) = SINK.get() {
                offer(tx, Msg::Connected);
            }
        }),
    )?;
    hub.set_waker(publisher.waker());
    let stats = publisher.stats().clone();

    COARSE_MS.store(wall_ms(), Relaxed);
    ON.store(true, Relaxed);
    for ev in std::mem::take(&mut *EARLY.lock().unwrap_or_else(|e| e.into_inner())) {
        emit(ev);
    }
    for v in table.snapshot().versions() {
        emit(Event::ModelInstalled {
            model: v.name.clone(),
            version: v.version.clone(),
        });
    }
    let gpu: Box<dyn GpuSource> = match &t.gpu_readings_file {
        Some(p) => Box::new(FileSource(p.clone())),
        None => Box::new(NvmlSource),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let interval = Duration::from_secs(t.interval_s.max(1));
    let thread = std::thread::Builder::new()
        .name("edgeinfer-telemetry".into())
        .spawn(move || {
            Control {
                hub,
                gpu,
                predlog,
                pending: Vec::new(),
                spare: Batch::with_capacity(),
                names: Vec::new(),
                last_flush: Instant::now(),
                sparkplug,
            }
            .run(publisher, table, interval, s, rx)
        })
        .context("telemetry thread")?;
    Ok(Some(Telemetry {
        stop,
        thread: Some(thread),
        stats,
        outbox,
    }))
}

/// The Sparkplug B node, when `[telemetry.sparkplug]` is set: its own outbox directory and
/// MQTT connection (same broker, credentials and TLS as the JSON publisher), every served
/// model registered as a device.
fn start_sparkplug(
    cfg: &Config,
    pcfg: &PublisherConfig,
    limits: OutboxLimits,
    clock: Arc<dyn Clock>,
    table: &ModelTable,
) -> anyhow::Result<Option<(SparkplugFeed, SparkplugNode)>> {
    let Some(sp) = &cfg.telemetry.sparkplug else {
        return Ok(None);
    };
    let dir = sp.outbox_dir(&cfg.state_dir);
    let outbox = Arc::new(
        Outbox::open(&dir, limits, clock.clone())
            .with_context(|| format!("Sparkplug outbox {}", dir.display()))?,
    );
    let edge_node = sp.edge_node(&pcfg.topics.device);
    let ncfg = NodeConfig {
        broker: pcfg.broker.clone(),
        client_id: sp
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edgeinfer-spb-{edge_node}")),
        credentials: pcfg.credentials.clone(),
        tls_ca_pem: pcfg.tls_ca_pem.clone(),
        topics: NodeTopics {
            group: sp.group_id.clone(),
            edge_node,
        },
        keep_alive: pcfg.keep_alive,
        reconnect_min: pcfg.reconnect_min,
        reconnect_max: pcfg.reconnect_max,
    };
    let node = SparkplugNode::spawn(ncfg, outbox, clock)?;
    let feed = node.feed();
    for v in table.snapshot().versions() {
        feed.add_device(&v.name);
    }
    Ok(Some((feed, node)))
}

fn status(table: &ModelTable, outbox: &Outbox, started: Instant) -> Status {
    let snap = table.snapshot();
    let models = snap
        .models
        .values()
        .flat_map(|slot| {
            let default = slot.default_version().version.clone();
            slot.versions.iter().map(move |v| ModelState {
                name: v.name.clone(),
                version: v.version.clone(),
                backend: v.model.backend().name().to_owned(),
                default: v.version == default,
            })
        })
        .collect();
    let st = outbox.stats();
    Status {
        state: "online",
        daemon_version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: started.elapsed().as_secs(),
        models,
        outbox: OutboxState {
            messages: st.len.load(Relaxed),
            bytes: st.bytes.load(Relaxed),
            dropped: st.dropped_age.load(Relaxed)
                + st.dropped_bytes.load(Relaxed)
                + st.dropped_too_large.load(Relaxed),
        },
        rollout: rollout_status(),
    }
}

// === the control thread ===

/// A prediction not yet written to the log.
struct PendingRow {
    ver: u32,
    id: u64,
    ts_ms: u64,
    output: f64,
    arm: &'static str,
    entity: String,
}

/// What the rollout judge reads of one version, cumulative since it was first seen (the
/// judge diffs two readings to get its window): labels joined by FEEDBACK and how many the
/// version got right, and its predictions counted into its reference's output bins.
#[derive(Debug, Clone, Default)]
pub struct VersionQuality {
    pub labelled: u64,
    pub correct: u64,
    /// Rows counted into `outputs`.
    pub rows: u64,
    /// Per reference output, its bin counts.
    pub outputs: Vec<Vec<u64>>,
    /// The reference the bins are of (`None`: the version has no output reference).
    pub reference: Option<Arc<ReferenceStats>>,
}

impl VersionQuality {
    /// PSI of the predictions between `then` and `self` (the larger over the reference's
    /// outputs) against the reference, when at least `min_rows` were counted in between.
    pub fn prediction_psi_since(&self, then: &VersionQuality, min_rows: u64) -> Option<f64> {
        let r = self.reference.as_deref()?;
        let same_bins = then
            .reference
            .as_ref()
            .is_none_or(|t| self.reference.as_ref().is_some_and(|s| Arc::ptr_eq(s, t)));
        let (then_rows, then_outputs) = if same_bins {
            (then.rows, then.outputs.as_slice())
        } else {
            (0, &[][..])
        };
        let rows = self.rows.saturating_sub(then_rows);
        if rows < min_rows.max(1) || r.outputs.is_empty() {
            return None;
        }
        r.outputs
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let now = self.outputs.get(k).map_or(&[][..], Vec::as_slice);
                let was = then_outputs.get(k).map_or(&[][..], Vec::as_slice);
                let delta: Vec<u64> = (0..f.dist.bins())
                    .map(|b| {
                        now.get(b)
                            .copied()
                            .unwrap_or(0)
                            .saturating_sub(was.get(b).copied().unwrap_or(0))
                    })
                    .collect();
                f.evaluate(&delta).psi
            })
            .reduce(f64::max)
    }
}

/// Per (model, version), what [`quality`] reads; written by the control thread only.
static QUALITY: Mutex<BTreeMap<(String, String), VersionQuality>> = Mutex::new(BTreeMap::new());

/// `model`@`version`'s cumulative labels and prediction bins (rollout judge); `None` before
/// any were counted or with telemetry off.
pub fn quality(model: &str, version: &str) -> Option<VersionQuality> {
    let q = QUALITY.lock().unwrap_or_else(|e| e.into_inner());
    q.get(&(model.to_owned(), version.to_owned())).cloned()
}

fn add_quality(model: &str, version: &str, f: impl FnOnce(&mut VersionQuality)) {
    let mut q = QUALITY.lock().unwrap_or_else(|e| e.into_inner());
    f(q.entry((model.to_owned(), version.to_owned())).or_default());
}

/// Counts a core's prediction bins for the judge (the output part of its drift counters).
fn add_prediction_bins(model: &str, version: &str, c: &DriftCounts) {
    let (_, reference, _) = version_index(model, version);
    add_quality(model, version, |q| {
        if !same_ref(&q.reference, &reference) {
            // New reference, new bins: what was counted against the old one is not
            // comparable (the judge restarts its window on it).
            q.reference = reference;
            q.rows = 0;
            q.outputs.clear();
        }
        if q.reference.is_none() {
            return;
        }
        q.rows += c.rows;
        if q.outputs.len() < c.outputs.len() {
            q.outputs.resize(c.outputs.len(), Vec::new());
        }
        for (acc, bins) in q.outputs.iter_mut().zip(&c.outputs) {
            if acc.len() < bins.len() {
                acc.resize(bins.len(), 0);
            }
            for (a, b) in acc.iter_mut().zip(bins) {
                *a += b;
            }
        }
    });
}

/// Per (model, version, arm), the latest closed accuracy window, for `/metrics`.
static LAST_ACCURACY: Mutex<Vec<AccuracyMirror>> = Mutex::new(Vec::new());

struct AccuracyMirror {
    model: String,
    version: String,
    arm: String,
    metric: &'static str,
    value: f64,
    baseline: f64,
    labels: u64,
}

/// Per (model, version, part, feature), the latest closed drift window, for `/metrics`.
static LAST_DRIFT: Mutex<Vec<DriftMirror>> = Mutex::new(Vec::new());

struct DriftMirror {
    model: String,
    version: String,
    arm: &'static str,
    /// `input` (a feature) or `output` (prediction drift).
    part: &'static str,
    feature: String,
    psi: f64,
    alert: bool,
}

/// Keeps the closed drift windows' PSI per feature, labelled with the version's arm now.
fn mirror_drift(closed: &[(String, String, edgeinfer_telemetry::drift::DriftReport)]) {
    if closed.is_empty() {
        return;
    }
    let mut last = LAST_DRIFT.lock().unwrap_or_else(|e| e.into_inner());
    for (model, version, rep) in closed {
        let arm = arm_of(model, version);
        for (part, list) in [("input", &rep.features), ("output", &rep.outputs)] {
            for f in list {
                let m = DriftMirror {
                    model: model.clone(),
                    version: version.clone(),
                    arm,
                    part,
                    feature: f.name.clone(),
                    psi: f.psi,
                    alert: f.level == edgeinfer_telemetry::drift::Level::Alert,
                };
                let same = |o: &&mut DriftMirror| {
                    (&o.model, &o.version, o.part, &o.feature)
                        == (&m.model, &m.version, m.part, &m.feature)
                };
                match last.iter_mut().find(same) {
                    Some(o) => *o = m,
                    None => last.push(m),
                }
            }
        }
    }
}

/// The drift mirror: per version (with its arm) and feature, the latest closed window's
/// PSI and whether it alerted.
fn write_drift_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let last = LAST_DRIFT.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_empty() {
        return;
    }
    for (name, help) in [
        (
            "edgeinfer_telemetry_drift_psi",
            "PSI of the last closed drift window against the version's reference, per input feature or output (prediction drift).",
        ),
        (
            "edgeinfer_telemetry_drift_alert",
            "1 when the last closed drift window of the feature alerted.",
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for d in last.iter() {
            let v = if name == "edgeinfer_telemetry_drift_psi" {
                d.psi
            } else {
                d.alert as u8 as f64
            };
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",version=\"{}\",arm=\"{}\",part=\"{}\",feature=\"{}\"}} {v}",
                escape(&d.model),
                escape(&d.version),
                d.arm,
                d.part,
                escape(&d.feature)
            );
        }
    }
}

/// FEEDBACK that named no logged prediction, by how it named it (`id`, `entity`).
static FEEDBACK_UNKNOWN: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

struct Control {
    hub: Hub,
    gpu: Box<dyn GpuSource>,
    predlog: PredictionLog,
    /// Predictions not yet written to the log.
    pending: Vec<PendingRow>,
    /// The empty batch swapped in for a core's full one ([`Control::collect`]).
    spare: Batch,
    /// Names of the version indices seen (a copy, so a flush takes no lock).
    names: Vec<Option<(String, String)>>,
    last_flush: Instant,
    /// The Sparkplug B node and its feed when `[telemetry.sparkplug]` is set; dropped with
    /// the control thread, which publishes its NDEATH.
    sparkplug: Option<(SparkplugFeed, SparkplugNode)>,
}

fn report(r: edgeinfer_telemetry::Result<()>) {
    if let Err(e) = r {
        tracing::warn!("telemetry: {e}");
    }
}

impl Control {
    /// Messages as they come, everything else once per interval.
    fn run(
        mut self,
        publisher: Publisher,
        table: Arc<ModelTable>,
        interval: Duration,
        stop: Arc<AtomicBool>,
        rx: Receiver<Msg>,
    ) {
        let started = Instant::now();
        let mut next = Instant::now() + interval;
        report(self.hub.status(&status(&table, self.hub.outbox(), started)));
        let mut collect_at = Instant::now() + POLL;
        'run: while !stop.load(Relaxed) {
            // Wait for the first message or the next collection, then take what came.
            let mut first =
                match rx.recv_timeout(collect_at.saturating_duration_since(Instant::now())) {
                    Ok(m) => Some(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break 'run,
                };
            COARSE_MS.store(wall_ms(), Relaxed);
            loop {
                match first.take().map_or_else(|| rx.try_recv(), Ok) {
                    Ok(Msg::Connected | Msg::StatusChanged) => {
                        report(self.hub.status(&status(&table, self.hub.outbox(), started)))
                    }
                    Ok(m) => self.handle(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break 'run,
                }
            }
            if Instant::now() >= collect_at {
                collect_at = Instant::now() + POLL;
                self.collect();
            }
            if !self.pending.is_empty()
                && (self.pending.len() >= LOG_BATCH || self.last_flush.elapsed() >= LOG_FLUSH)
            {
                self.flush();
            }
            if Instant::now() >= next {
                next += interval;
                // Cores hand over on their next request after the bump; what an idle core
                // holds is reported with its next interval.
                EPOCH.fetch_add(1, Relaxed);
                match self.hub.tick() {
                    Ok((lat, drift)) => {
                        if let Some((feed, _)) = &self.sparkplug {
                            report(feed.tick(&lat, &drift));
                        }
                        mirror_drift(&drift);
                        // Per series, the latest interval that saw requests.
                        let mut last = LAST_LATENCY.lock().unwrap_or_else(|e| e.into_inner());
                        for r in lat {
                            let same = |o: &LatencyReport| {
                                (&o.model, &o.version, &o.arm) == (&r.model, &r.version, &r.arm)
                            };
                            match last.iter_mut().find(|o| same(o)) {
                                Some(o) => *o = r,
                                None => last.push(r),
                            }
                        }
                    }
                    Err(e) => tracing::warn!("telemetry: {e}"),
                }
                match self.hub.gpu(&self.gpu.read()) {
                    Ok(Some(t)) => {
                        if let Some(h) = GPU_HANDLER.get() {
                            h(&t);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("telemetry: {e}"),
                }
                report(self.hub.status(&status(&table, self.hub.outbox(), started)));
            }
        }
        self.collect();
        self.flush();
        ON.store(false, Relaxed);
        publisher.stop();
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Latency(s) => self.hub.add_latency(s),
            Msg::Drift(d) => {
                for (i, c) in d {
                    if let Some((m, v)) = version_names(i) {
                        self.hub.add_drift(&m, &v, &c);
                        add_prediction_bins(&m, &v, &c);
                    }
                }
            }
            Msg::Event(ev) => report(self.hub.emit(ev)),
            Msg::Version(m, v, mon) => {
                let arm = arm_of(&m, &v);
                if let Some((feed, _)) = &self.sparkplug {
                    feed.add_device(&m);
                }
                self.hub.add_monitored(&m, &v, *mon);
                self.hub.set_arm(&m, &v, arm);
            }
            Msg::Arm(ver, arm) => {
                if let Some((m, v)) = version_names(ver) {
                    self.hub.set_arm(&m, &v, arm);
                }
            }
            Msg::Feedback(req, reply) => {
                let answer = self.join(&req);
                let _ = reply.send(answer);
            }
            Msg::Connected | Msg::StatusChanged => {}
        }
    }

    /// Takes every core's batch (swapping in the empty spare, so neither side allocates)
    /// into `pending`; forgets a core whose thread has ended once its last batch is taken.
    fn collect(&mut self) {
        // Cores take this lock only at their first request: holding it costs them nothing.
        let mut all = BATCHES.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|core| {
            {
                let mut b = core.lock();
                if !b.recs.is_empty() {
                    std::mem::swap(&mut *b, &mut self.spare);
                }
            }
            if !self.spare.recs.is_empty() {
                self.take_spare();
            }
            // Only this list holds it once its core's thread has ended: nothing more comes.
            Arc::strong_count(core) > 1
        });
    }

    /// The records of [`Control::spare`] into `pending`; the spare is empty again after.
    fn take_spare(&mut self) {
        let b = &self.spare;
        let mut ent_bytes = 0usize;
        let mut ent_seen = 0usize;
        for r in &b.recs {
            let i = r.ver as usize;
            if self.names.get(i).is_none_or(Option::is_none) {
                self.names.resize(self.names.len().max(i + 1), None);
                self.names[i] = version_names(r.ver);
            }
            // Entity keys lie in record order: skip to this record's.
            for &l in &b.ent_lens[ent_seen..r.ent_at as usize] {
                ent_bytes += l as usize;
            }
            ent_seen = r.ent_at as usize;
            let outputs = &b.outputs[r.out_at as usize..(r.out_at + r.rows) as usize];
            for (k, &output) in outputs.iter().enumerate() {
                let entity = if k < r.ents as usize {
                    let l = b.ent_lens[ent_seen] as usize;
                    let e = String::from_utf8_lossy(&b.ent_bytes[ent_bytes..ent_bytes + l]);
                    ent_seen += 1;
                    ent_bytes += l;
                    e.into_owned()
                } else {
                    String::new()
                };
                self.pending.push(PendingRow {
                    ver: r.ver,
                    id: r.first_id + k as u64,
                    ts_ms: r.ts_ms,
                    output,
                    arm: r.arm,
                    entity,
                });
            }
        }
        self.spare.clear();
    }

    fn flush(&mut self) {
        self.last_flush = Instant::now();
        if self.pending.is_empty() {
            return;
        }
        // In id order, LMDB's inserts walk the B-tree's right edge (cores' blocks interleave).
        self.pending.sort_unstable_by_key(|p| p.id);
        let names = &self.names;
        let rows: Vec<LogRow<'_>> = self
            .pending
            .iter()
            .filter_map(|p| {
                let (model, version) = names.get(p.ver as usize)?.as_ref()?;
                Some(LogRow {
                    id: p.id,
                    ts_ms: p.ts_ms,
                    model,
                    version,
                    arm: p.arm,
                    entity: &p.entity,
                    output: p.output,
                })
            })
            .collect();
        if let Err(e) = self.predlog.insert_rows(&rows) {
            tracing::warn!("telemetry: prediction log: {e}");
        }
        self.pending.clear();
    }

    /// FEEDBACK joined to the log, counted in its accuracy window.
    fn join(&mut self, req: &FeedbackRequest) -> FeedbackReply {
        // Whatever was answered before this FEEDBACK was sent, on any core, is in a core's
        // batch by now (appended before its answer was encoded): take them all first.
        self.collect();
        self.flush();
        let key = if req.prediction_id != 0 {
            FeedbackKey::RequestId(req.prediction_id)
        } else {
            FeedbackKey::Entity {
                entity: &req.entity,
                ts_ms: if req.timestamp_ms == 0 {
                    wall_ms()
                } else {
                    req.timestamp_ms
                },
            }
        };
        let rec = self.predlog.lookup(&key).map_err(|e| {
            let code = match e.kind() {
                ErrorKind::UnknownRequestId => {
                    let by = matches!(key, FeedbackKey::Entity { .. }) as usize;
                    FEEDBACK_UNKNOWN[by].fetch_add(1, Relaxed);
                    ErrorCode::UnknownRequestId
                }
                ErrorKind::InvalidInput => ErrorCode::BadInput,
                _ => ErrorCode::Internal,
            };
            (code, e.to_string())
        })?;
        if rec.output.is_nan() {
            return Err((
                ErrorCode::BadInput,
                format!(
                    "prediction {} has no numeric first output to compare a label with",
                    rec.id
                ),
            ));
        }
        let outcome = self
            .hub
            .feedback(&rec.model, &rec.version, &rec.arm, rec.output, req.label)
            .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        if let (Some((feed, _)), Some(r)) = (&self.sparkplug, &outcome.report) {
            report(feed.accuracy(&rec.model, &rec.version, &rec.arm, r));
        }
        // Right = the same class (the accuracy metric's rule), for the rollout judge.
        let right = rec.output.round() == req.label.round();
        add_quality(&rec.model, &rec.version, |q| {
            q.labelled += 1;
            q.correct += right as u64;
        });
        if let Some(r) = outcome.report {
            let mut last = LAST_ACCURACY.lock().unwrap_or_else(|e| e.into_inner());
            let m = AccuracyMirror {
                model: rec.model.clone(),
                version: rec.version.clone(),
                arm: rec.arm.clone(),
                metric: r.metric.as_str(),
                value: r.value,
                baseline: r.baseline,
                labels: r.labels,
            };
            let same = |o: &&mut AccuracyMirror| {
                (&o.model, &o.version, &o.arm) == (&m.model, &m.version, &m.arm)
            };
            match last.iter_mut().find(same) {
                Some(o) => *o = m,
                None => last.push(m),
            }
        }
        Ok(FeedbackResponse {
            prediction_id: rec.id,
            model: rec.model,
            version: rec.version,
            arm: rec.arm,
            predicted: rec.output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_gives_its_reference_default_thresholds_and_primary_baseline() {
        use edgeinfer_telemetry::drift::FeatureRef;
        let samples: Vec<f64> = (0..100).map(f64::from).collect();
        let mut own = FeatureRef::numeric_from_samples("own", 1, &samples);
        own.thresholds = Some(edgeinfer_telemetry::drift::Thresholds {
            psi_alert: 0.5,
            ..Default::default()
        });
        let j = serde_json::json!({
            "schema_version": 1, "name": "churn", "version": "2",
            "model": {"file": "model.onnx", "sha256": "00", "inputs": [], "outputs": []},
            "reference": {"features": [FeatureRef::numeric_from_samples("x", 0, &samples), own]},
            "thresholds": {"drift": {"psi_warn": 0.05, "psi_alert": 0.07, "js_alert": 0.06, "linf_alert": 0.1},
                "accuracy_window_labels": 250, "max_relative_drop": 0.1},
            "baseline": {"metrics": {"accuracy": 0.93}, "primary": {"metric": "accuracy", "value": 0.93}},
            "golden": [],
            "lineage": {"source": "x.onnx", "created": "2026-12-01T00:00:00Z", "tool": "t"}
        });
        let b: edgeinfer_registry::release::bundle::Bundle = serde_json::from_value(j).unwrap();
        let m = monitoring_of_bundle(&b);
        let r = m.reference.unwrap();
        assert_eq!(
            r.features[0].thresholds.unwrap().psi_alert,
            0.07,
            "bundle default"
        );
        assert_eq!(
            r.features[1].thresholds.unwrap().psi_alert,
            0.5,
            "its own kept"
        );
        assert_eq!(m.baseline.unwrap().value, 0.93);
        // The accuracy window is the bundle's, not the config's.
        assert_eq!(m.accuracy_window_labels, Some(250));
        assert_eq!(m.accuracy_max_relative_drop, Some(0.1));
        let empty: edgeinfer_registry::release::bundle::Bundle = serde_json::from_value(
            serde_json::json!({"schema_version": 1, "name": "a", "version": "1",
                "model": {"file": "m", "sha256": "00", "inputs": [], "outputs": []}, "golden": [],
                "lineage": {"source": "s", "created": "c", "tool": "t"}}),
        )
        .unwrap();
        let m = monitoring_of_bundle(&empty);
        assert_eq!((m.reference, m.baseline), (None, None));
        // A bundle that names no window still carries the release defaults.
        assert_eq!(m.accuracy_window_labels, Some(1000));
    }

    #[test]
    fn prediction_psi_is_of_the_rows_between_two_readings() {
        use edgeinfer_telemetry::drift::FeatureRef;
        let reference = Arc::new(ReferenceStats {
            features: vec![],
            outputs: vec![FeatureRef::categorical_from_samples(
                "label",
                0,
                &[0, 0, 1, 1],
                2,
            )],
        });
        let reading = |rows: u64, zeros: u64| VersionQuality {
            rows,
            outputs: vec![vec![zeros, rows - zeros, 0]],
            reference: Some(reference.clone()),
            ..VersionQuality::default()
        };
        // 1,000 balanced rows, then 400 more of one class only.
        let then = reading(1000, 500);
        let now = reading(1400, 900);
        let psi = now.prediction_psi_since(&then, 100).unwrap();
        assert!(psi > 1.0, "one class against a balanced reference: {psi}");
        let balanced = reading(1400, 700).prediction_psi_since(&then, 100).unwrap();
        assert!(balanced < 0.01, "{balanced}");
        assert_eq!(now.prediction_psi_since(&then, 500), None, "too few rows");
        // A new reference: the earlier bins do not count against it.
        let mut other = then.clone();
        other.reference = Some(Arc::new((*reference).clone()));
        let fresh = now.prediction_psi_since(&other, 100).unwrap();
        assert!(fresh < psi, "all 1,400 rows: {fresh}");
        assert_eq!(
            VersionQuality::default().prediction_psi_since(&then, 1),
            None
        );
    }

    #[test]
    fn elements_are_read_little_endian_by_dtype_and_nan_past_the_end() {
        let f: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(element(DType::F32, &f, 1), -2.0);
        assert!(element(DType::F32, &f, 2).is_nan());
        let i: Vec<u8> = [7i64, -3].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(element(DType::I64, &i, 1), -3.0);
        assert_eq!(element(DType::U8, &[9], 0), 9.0);
        assert_eq!(element(DType::F64, &4.25f64.to_le_bytes(), 0), 4.25);
        assert_eq!(element(DType::I32, &(-5i32).to_le_bytes(), 0), -5.0);
    }
}
