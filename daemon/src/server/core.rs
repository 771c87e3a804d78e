//! One core's serving state: its engine sessions (one per model version, refreshed when the
//! model table's generation changes), its bounded run queue, per-model dynamic batching, and
//! the answers it encodes.
//!
//! Everything here runs on the core's own thread; engine runs are synchronous and never
//! hold a `RefCell` borrow across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeinfer_engine::{
    validate_inputs, Dim, ErrorKind as EngineErrorKind, Outputs, Session, TensorView,
};
use edgeinfer_proto::{
    self as proto, decode_message, decode_predict_into, encode_error, encode_message,
    encode_predict_response_head, negotiate, ErrorCode, Header, HealthResponse, Hello,
    HelloResponse, MetadataRequest, ModelMetadata, ModelStatus, Opcode, PredictRequest,
    PredictResponse, TensorSpecMsg,
};
use smallvec::SmallVec;

use super::buf::FrameBuf;
use super::conn::Conn;
use super::notify::{BusyPoll, Latch, Notify};
use super::response::Response;
use super::{ServerOptions, ServerStats};
use crate::heartbeat::Heartbeats;
use crate::model_table::{ModelTable, ModelVersion, Outcome, ServingConfig, Snapshot};

const _: () = assert!(
    std::mem::size_of::<usize>() == 8,
    "tensor shapes are viewed as u64 and usize alike"
);

/// Engine outputs and answers kept per model / per core for reuse.
const OUTPUTS_POOL_MAX: usize = 256;
const RESPONSE_POOL_MAX: usize = 4096;
/// The UNAUTHENTICATED message for a HELLO with a missing or wrong token.
const WRONG_TOKEN: &str = "the HELLO carries no token or the wrong one";
/// Hint for clients that got OVERLOADED or TOO_MANY_IN_FLIGHT.
const RETRY_AFTER_MS: u64 = 1;
/// Rows in a large request's first chunk while this core has not timed the model yet.
const FIRST_CHUNK_ROWS: usize = 64;
/// Connections that may go ahead of large jobs between two of their chunks.
const JUMP_LIMIT: usize = 16;

/// What every core shares.
pub(crate) struct Shared {
    pub opts: ServerOptions,
    pub table: Arc<ModelTable>,
    pub stats: Arc<ServerStats>,
    pub heartbeats: Arc<Heartbeats>,
    /// When shutdown must be complete; set once when shutdown begins.
    pub grace_deadline: Mutex<Option<Instant>>,
    /// The token every connection must present in HELLO (`server.auth_token_file`).
    pub token: Option<crate::security::Token>,
}

/// A refusal to answer a request normally: the ERROR to send.
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// What the reader should do after handing a frame to the core.
pub(crate) enum FrameAction {
    /// Answered (or refused) already.
    Done,
    /// Answered with an error that ends the connection.
    Close,
    /// An admitted PREDICT: give it the frame's bytes and enqueue it.
    Admit(Box<JobParts>),
}

/// Everything about an admitted PREDICT except the frame it arrived in.
pub(crate) struct JobParts {
    pub request_id: u64,
    pub data_offset: usize,
    pub request: PredictRequest,
    /// For model input `i`, the index of the request tensor that feeds it.
    pub order: SmallVec<[u8; 8]>,
    /// Model output indices to send back, in order.
    pub sel: SmallVec<[u8; 8]>,
    /// Leading dimension shared by every input (what batching concatenates), or 0.
    pub rows: usize,
    pub model: Rc<CoreModel>,
    pub arrived: Instant,
    pub deadline: Option<Instant>,
    /// PREDICT_BY_ENTITY: the assembled feature input (the frame holds no tensor data).
    pub entity: Option<Box<super::entity::EntityJob>>,
}

/// Decoded PREDICT requests kept per core thread for the next frame's decode
/// (`decode_predict_into`): the model name, the inputs list and the inputs' names and
/// shapes then do not allocate per request. Bounded in count, and in what each may keep
/// (a model or input name up to 256 bytes, up to 16 inputs), so a large request is not
/// hoarded.
const SPARE_REQUESTS_MAX: usize = 64;
const SPARE_KEEP_NAME_BYTES: usize = 256;
const SPARE_KEEP_INPUTS: usize = 16;

thread_local! {
    static SPARE_REQUESTS: RefCell<Vec<PredictRequest>> = const { RefCell::new(Vec::new()) };
}

/// A request to decode the next PREDICT into (a default one when none is spare).
fn spare_request() -> PredictRequest {
    SPARE_REQUESTS
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

impl Drop for JobParts {
    fn drop(&mut self) {
        let PredictRequest { model, inputs, .. } = std::mem::take(&mut self.request);
        if model.capacity() > SPARE_KEEP_NAME_BYTES
            || inputs.capacity() > SPARE_KEEP_INPUTS
            || inputs
                .iter()
                .any(|m| m.name.capacity() > SPARE_KEEP_NAME_BYTES)
        {
            return;
        }
        let _ = SPARE_REQUESTS.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_REQUESTS_MAX {
                s.push(PredictRequest {
                    model,
                    inputs,
                    ..PredictRequest::default()
                });
            }
        });
    }
}

/// An admitted PREDICT waiting to run: the frame bytes stay where they were read.
pub(crate) struct Job {
    pub conn: Rc<Conn>,
    pub frame: FrameBuf,
    pub p: Box<JobParts>,
}

impl Job {
    /// Model input `i` as a view into the frame (no copy).
    fn input(&self, i: usize) -> TensorView<'_> {
        if let Some(e) = &self.p.entity {
            return e.input();
        }
        let m = &self.p.request.inputs[self.p.order[i] as usize];
        let start = self.p.data_offset + m.offset as usize;
        TensorView {
            dtype: edgeinfer_engine::DType::from_code(m.dtype as u8)
                .expect("validated at admission"),
            shape: bytemuck::cast_slice(&m.shape),
            data: &self.frame[start..start + m.length as usize],
        }
    }

    fn inputs(&self) -> SmallVec<[TensorView<'_>; 8]> {
        (0..self.p.order.len()).map(|i| self.input(i)).collect()
    }
}

/// How far a large job has got. It runs in chunks of rows, and between chunks it waits in
/// its connection's turn (`Conn::resume`), so other connections' requests run in between
/// instead of behind the whole job; the client still gets one answer.
pub(crate) struct Progress {
    /// Rows run so far.
    done: usize,
    /// The whole answer, filled chunk by chunk.
    out: Outputs,
    /// One chunk's outputs, reused from chunk to chunk.
    part: Outputs,
    /// When the first chunk started (the end of the job's queueing).
    started: Instant,
    /// Engine time over all chunks.
    compute: Duration,
}

/// One model version's per-core state under one batching setting. A batching change makes
/// a new `CoreModel` over the same [`CoreEngine`]; jobs already queued keep the old one.
pub(crate) struct CoreModel {
    pub version: Arc<ModelVersion>,
    engine: Rc<CoreEngine>,
    serving: ServingConfig,
    batch: Option<Batcher>,
    /// Every input has a dynamic leading dimension and every output a shape: rows can be
    /// run in several runs (chunks) as well as concatenated (batching).
    by_rows: bool,
}

/// This core's engine session for one version, taken ready from the version's prepared
/// sessions; when the last job lets go of it, it goes back to a control thread to drop.
struct CoreEngine {
    version: Arc<ModelVersion>,
    session: RefCell<Option<Box<dyn Session>>>,
    session_error: Option<String>,
    outputs: RefCell<Vec<Outputs>>,
    table: Arc<ModelTable>,
    /// Engine nanoseconds per row, as measured on this core (0 = not measured yet): sizes
    /// the chunks a large request is split into.
    row_ns: Cell<u64>,
    /// False once the model's outputs turned out not to follow its input rows (a chunked
    /// run could not be put back together): its requests then run whole.
    splits_by_rows: Cell<bool>,
    /// Rows per chunk (0 = not chosen yet): a power of two that changes only when the
    /// estimate moves well away from it, so chunk shapes repeat and the engine's input
    /// buffers are reused (tract keeps last call's input tensor when the shape repeats).
    chunk: Cell<usize>,
}

impl Drop for CoreEngine {
    fn drop(&mut self) {
        // Releasing a session (and maybe the version's engine model with it) is control
        // work: hand both over instead of paying for it between two requests.
        let session = self.session.get_mut().take();
        self.table.retire(Box::new((session, self.version.clone())));
    }
}

struct Batcher {
    max_batch: usize,
    max_delay: Duration,
    pending: RefCell<VecDeque<Job>>,
    rows: Cell<usize>,
    timer_armed: Cell<bool>,
    /// A run of this batch is already in the core's queue.
    queued: Cell<bool>,
    staging: RefCell<Staging>,
}

#[derive(Default)]
struct Staging {
    jobs: Vec<Job>,
    inputs: Vec<Vec<u8>>,
    shapes: Vec<SmallVec<[usize; 8]>>,
    out: Outputs,
}

impl CoreEngine {
    /// Takes core `core`'s prepared session. A version published without one for this core
    /// (by a writer that bypassed the app's control path) is refused with a clear error
    /// rather than built here, on the data path.
    fn take(version: &Arc<ModelVersion>, core: usize, table: &Arc<ModelTable>) -> CoreEngine {
        let session = version.sessions.take(core);
        let session_error = session.is_none().then(|| {
            tracing::error!(model = %version.name, version = %version.version, core, "no prepared engine session for this core");
            format!(
                "model {:?} version {:?} was published without a session for core {core}",
                version.name, version.version
            )
        });
        CoreEngine {
            version: version.clone(),
            session: RefCell::new(session),
            session_error,
            outputs: RefCell::new(Vec::new()),
            table: table.clone(),
            row_ns: Cell::new(0),
            splits_by_rows: Cell::new(true),
            chunk: Cell::new(0),
        }
    }

    /// Folds one run's time per row into the estimate that sizes chunks.
    fn note_row_time(&self, rows: usize, took: Duration) {
        if rows == 0 {
            return;
        }
        let x = (took.as_nanos() / rows as u128).clamp(1, u64::MAX as u128) as u64;
        let old = self.row_ns.get();
        self.row_ns
            .set(if old == 0 { x } else { (old / 4) * 3 + x / 4 });
    }
}

impl CoreModel {
    fn new(
        version: Arc<ModelVersion>,
        engine: Rc<CoreEngine>,
        serving: ServingConfig,
    ) -> CoreModel {
        let info = &version.model.info;
        let batchable = !info.inputs.is_empty()
            && info
                .inputs
                .iter()
                .all(|s| s.shape.first() == Some(&Dim::Dynamic))
            && info.outputs.iter().all(|s| !s.shape.is_empty());
        let batch = match serving.batching {
            Some(b) if b.max_batch > 1 && batchable => Some(Batcher {
                max_batch: b.max_batch,
                max_delay: b.max_delay,
                pending: RefCell::new(VecDeque::new()),
                rows: Cell::new(0),
                timer_armed: Cell::new(false),
                queued: Cell::new(false),
                staging: RefCell::new(Staging {
                    inputs: vec![Vec::new(); info.inputs.len()],
                    shapes: vec![SmallVec::new(); info.inputs.len()],
                    out: Outputs::for_model(info),
                    jobs: Vec::new(),
                }),
            }),
            Some(_) if !batchable => {
                tracing::warn!(model = %version.name, "batching is configured but the model's inputs have no dynamic leading dimension: running requests alone");
                None
            }
            _ => None,
        };
        CoreModel {
            version,
            engine,
            serving,
            batch,
            by_rows: batchable,
        }
    }

    fn take_outputs(&self) -> Outputs {
        self.engine
            .outputs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Outputs::for_model(&self.version.model.info))
    }

    pub fn give_outputs(&self, out: Outputs) {
        let mut pool = self.engine.outputs.borrow_mut();
        if pool.len() < OUTPUTS_POOL_MAX {
            pool.push(out);
        }
    }

    fn run(&self, inputs: &[TensorView<'_>], out: &mut Outputs) -> Result<(), Refusal> {
        let mut s = self.engine.session.borrow_mut();
        let Some(session) = s.as_mut() else {
            return Err(Refusal::new(
                ErrorCode::Internal,
                format!(
                    "no engine session on this core: {}",
                    self.engine.session_error.as_deref().unwrap_or("unknown")
                ),
            ));
        };
        session.run(inputs, out).map_err(|e| {
            let code = match e.kind {
                EngineErrorKind::BadInput => ErrorCode::BadInput,
                _ => ErrorCode::Internal,
            };
            Refusal::new(code, e.message)
        })
    }
}

/// Work for the core's executor.
enum Work {
    /// A lane's job, with its progress when it is a large job between two chunks.
    Job(Job, Option<Progress>),
    /// Run (part of) this model's forming batch.
    Batch(Rc<CoreModel>),
}

/// The models this core has sessions for, as of one table generation.
#[derive(Default)]
struct ModelCache {
    generation: Option<u64>,
    models: Vec<Rc<CoreModel>>,
}

pub(crate) struct Core {
    pub index: usize,
    pub shared: Arc<Shared>,
    cache: RefCell<ModelCache>,
    queue: RefCell<VecDeque<Work>>,
    /// Connections with jobs in their lane (`Conn::lane`), served round-robin so that one
    /// client's pipelined or large requests cannot keep another's waiting behind all of them.
    ready: RefCell<VecDeque<Rc<Conn>>>,
    /// The executor alternates between batches and lanes; true = a lane's turn next.
    lane_turn: Cell<bool>,
    /// Large jobs between two chunks (`Conn::resume`), and connections put at the front of
    /// `ready` since a chunk last ran (see [`Core::enqueue`]).
    parked: Cell<usize>,
    jumps: Cell<usize>,
    /// Jobs waiting: in the queue plus in forming batches.
    pub(super) waiting: Cell<usize>,
    exec_wake: Notify,
    responses: RefCell<Vec<Response>>,
    meta: RefCell<PredictResponse>,
    pub conns: RefCell<slab::Slab<Rc<Conn>>>,
    pub conns_changed: Notify,
    pub shutting_down: Cell<bool>,
    /// Set when shutdown begins: accept loops stop.
    pub stop_accepting: Latch,
    /// Set when this core is done (drained, or the grace period ran out).
    pub finished: Latch,
    /// A reader writes its connection's answers itself when the writer is idle
    /// (`Conn::flush_deferred`).
    pub inline_writes: bool,
    /// `server.busy_poll_us`: the read loops note their reads here.
    pub busy_poll: BusyPoll,
}

impl Core {
    pub fn new(index: usize, shared: Arc<Shared>) -> Core {
        Core {
            index,
            // On io_uring the writer's writev goes into the ring with the next read (one
            // io_uring_enter for both); a sendmsg of its own would add a syscall there.
            inline_writes: shared.opts.driver.effective() == super::Driver::Epoll,
            busy_poll: BusyPoll::new(shared.opts.busy_poll),
            shared,
            cache: RefCell::new(ModelCache::default()),
            queue: RefCell::new(VecDeque::new()),
            ready: RefCell::new(VecDeque::new()),
            lane_turn: Cell::new(false),
            parked: Cell::new(0),
            jumps: Cell::new(0),
            waiting: Cell::new(0),
            exec_wake: Notify::default(),
            responses: RefCell::new(Vec::new()),
            meta: RefCell::new(PredictResponse::default()),
            conns: RefCell::new(slab::Slab::new()),
            conns_changed: Notify::default(),
            shutting_down: Cell::new(false),
            stop_accepting: Latch::default(),
            finished: Latch::default(),
        }
    }

    pub fn opts(&self) -> &ServerOptions {
        &self.shared.opts
    }

    fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    // === models ===

    /// Catches up with the current table: takes the prepared session of each version new
    /// to this core, keeps the engines of those it knows (a batching change only makes a
    /// new batcher), and lets go of the rest. Only pointer moves: sessions were built and
    /// warmed by a control thread before the table was published.
    pub fn refresh_models(&self) {
        let snap = self.shared.table.load();
        self.refresh_from(&snap);
    }

    fn refresh_from(&self, snap: &Snapshot) {
        let mut cache = self.cache.borrow_mut();
        if cache.generation == Some(snap.generation) {
            return;
        }
        let old = std::mem::take(&mut cache.models);
        let mut models = Vec::with_capacity(old.len() + 1);
        for slot in snap.models.values() {
            for v in &slot.versions {
                let serving = slot.serving_of(&v.version);
                let known = old.iter().find(|m| Arc::ptr_eq(&m.version, v));
                let m = match known {
                    Some(m) if m.serving == serving => m.clone(),
                    Some(m) => Rc::new(CoreModel::new(v.clone(), m.engine.clone(), serving)),
                    None => {
                        let engine = CoreEngine::take(v, self.index, &self.shared.table);
                        Rc::new(CoreModel::new(v.clone(), Rc::new(engine), serving))
                    }
                };
                models.push(m);
            }
        }
        cache.models = models;
        cache.generation = Some(snap.generation);
    }

    pub(super) fn resolve(
        &self,
        model: &str,
        pin: Option<&str>,
        key: &[u8],
    ) -> Result<Rc<CoreModel>, Refusal> {
        let snap = self.shared.table.load();
        if self.cache.borrow().generation != Some(snap.generation) {
            self.refresh_from(&snap);
        }
        let v = snap
            .resolve(model, pin, key)
            .map_err(|e| Refusal::new(ErrorCode::UnknownModel, e.to_string()))?;
        let cache = self.cache.borrow();
        cache
            .models
            .iter()
            .find(|m| Arc::ptr_eq(&m.version, v))
            .cloned()
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::Internal,
                    "model version missing from this core's cache",
                )
            })
    }

    // === answers ===

    fn response(&self) -> Response {
        self.responses
            .borrow_mut()
            .pop()
            .unwrap_or_else(Response::new)
    }

    pub fn recycle(&self, mut r: Response) {
        r.recycle();
        let mut pool = self.responses.borrow_mut();
        if pool.len() < RESPONSE_POOL_MAX {
            pool.push(r);
        }
    }

    pub fn error_response(&self, request_id: u64, code: ErrorCode, message: &str) -> Response {
        self.stats().count_error(code);
        let mut r = self.response();
        let retry = match code {
            ErrorCode::Overloaded | ErrorCode::TooManyInFlight => RETRY_AFTER_MS,
            _ => 0,
        };
        if encode_error(request_id, code, message, retry, &mut r.head).is_err() {
            // Only a >4 GiB message could fail; send the code alone.
            let _ = encode_error(request_id, code, "", retry, &mut r.head);
        }
        r
    }

    pub(super) fn message_response<M: proto::prost::Message>(
        &self,
        op: Opcode,
        request_id: u64,
        msg: &M,
    ) -> Response {
        let mut r = self.response();
        if let Err(e) = encode_message(op, request_id, msg, &mut r.head) {
            self.recycle(r);
            return self.error_response(
                request_id,
                ErrorCode::Internal,
                &format!("encoding the answer: {e}"),
            );
        }
        r
    }

    // === frames ===

    /// Handles one whole frame read on `conn`; `body` is everything after the header.
    pub fn on_frame(
        &self,
        conn: &Rc<Conn>,
        header: &Header,
        body: &[u8],
        now: Instant,
    ) -> FrameAction {
        // This core is the counter's only writer: a plain load and store, not a locked add.
        let requests = &self.stats().cores[self.index].requests;
        requests.store(requests.load(Relaxed) + 1, Relaxed);
        let id = header.request_id;
        let op = Opcode::from_u8(header.opcode);
        if !conn.authenticated.get() {
            // A server with a token answers nothing but HELLO until it has seen the token.
            if let Err(why) = self.authenticate(conn, op, header, body) {
                self.stats()
                    .connections_unauthenticated
                    .fetch_add(1, Relaxed);
                conn.push(self.error_response(id, ErrorCode::Unauthenticated, why));
                return FrameAction::Close;
            }
        }
        let answer = match op {
            Some(Opcode::Predict) => return self.admit_predict(conn, header, body, now),
            Some(Opcode::Hello) => match decode_message::<Hello>(header, body) {
                Ok(h)
                    if self
                        .shared
                        .token
                        .as_ref()
                        .is_some_and(|t| !t.matches(h.token.as_bytes())) =>
                {
                    // A later HELLO is checked like the first one.
                    self.stats()
                        .connections_unauthenticated
                        .fetch_add(1, Relaxed);
                    conn.push(self.error_response(id, ErrorCode::Unauthenticated, WRONG_TOKEN));
                    return FrameAction::Close;
                }
                Ok(h) => match negotiate(&h.versions) {
                    Some(version) => {
                        let l = &self.opts().limits;
                        let msg = HelloResponse {
                            version,
                            max_frame_bytes: l.max_frame_bytes,
                            max_in_flight: l.max_in_flight,
                            server: self.opts().server_name.clone(),
                            max_meta_bytes: l.max_meta_bytes,
                            max_tensors: l.max_tensors,
                            max_rank: l.max_rank,
                            shm_ring_bytes: 0,
                        };
                        if h.shm_ring_bytes > 0 {
                            // The shared-memory transport: the grant goes out with its fds.
                            return super::shm::grant(conn, id, msg, h.shm_ring_bytes);
                        }
                        Ok(self.message_response(Opcode::HelloResponse, id, &msg))
                    }
                    None => {
                        let msg = format!(
                            "no common protocol version: the client speaks {:?}, this server {:?}",
                            h.versions,
                            proto::SUPPORTED_VERSIONS
                        );
                        conn.push(self.error_response(id, ErrorCode::UnsupportedVersion, &msg));
                        return FrameAction::Close;
                    }
                },
                Err(e) => Err(Refusal::new(e.kind(), e.to_string())),
            },
            Some(Opcode::Metadata) => decode_message::<MetadataRequest>(header, body)
                .map_err(|e| Refusal::new(e.kind(), e.to_string()))
                .and_then(|m| self.metadata(&m))
                .map(|msg| self.message_response(Opcode::MetadataResponse, id, &msg)),
            Some(Opcode::Health) => decode_message::<proto::HealthRequest>(header, body)
                .map_err(|e| Refusal::new(e.kind(), e.to_string()))
                .map(|_| self.message_response(Opcode::HealthResponse, id, &self.health())),
            Some(Opcode::Feedback) => return self.feedback(conn, header, body),
            Some(Opcode::PredictByEntity) => {
                return super::entity::admit(self, conn, header, body, now)
            }
            Some(Opcode::PutFeatures) => return super::entity::put(self, conn, header, body),
            Some(Opcode::GetFeatures) => super::entity::get(header, body)
                .map(|msg| self.message_response(Opcode::GetFeaturesResponse, id, &msg)),
            Some(op) if op.is_reserved() && op.is_request() => Err(Refusal::new(
                ErrorCode::NotImplemented,
                format!("{op} is reserved in protocol v1 and not implemented by this server yet"),
            )),
            Some(op) => Err(Refusal::new(
                ErrorCode::UnknownOpcode,
                format!("{op} is not a request"),
            )),
            None => Err(Refusal::new(
                ErrorCode::UnknownOpcode,
                format!("unknown opcode {:#04x}", header.opcode),
            )),
        };
        let r = answer.unwrap_or_else(|r| self.error_response(id, r.code, &r.message));
        conn.push(r);
        FrameAction::Done
    }

    /// FEEDBACK: the join runs on the telemetry control thread (it must see every
    /// prediction logged before it); the answer is pushed when it comes back, so the core
    /// serves others meanwhile. Counted in flight like a PREDICT.
    fn feedback(&self, conn: &Rc<Conn>, header: &Header, body: &[u8]) -> FrameAction {
        let id = header.request_id;
        let rx = decode_message::<proto::FeedbackRequest>(header, body)
            .map_err(|e| (e.kind(), e.to_string()))
            .and_then(crate::telemetry_glue::feedback);
        let rx = match rx {
            Ok(rx) => rx,
            Err((code, msg)) => {
                conn.push(self.error_response(id, code, &msg));
                return FrameAction::Done;
            }
        };
        conn.job_started();
        let conn = conn.clone();
        monoio::spawn(async move {
            let core = conn.core.clone();
            // The join takes the control thread tens of µs: a few turns of this core, then
            // millisecond naps (a core takes no wake-ups from other threads).
            let mut turns = 0u32;
            let answer = loop {
                match rx.try_recv() {
                    Err(std::sync::mpsc::TryRecvError::Empty) if turns < 32 => {
                        turns += 1;
                        super::notify::yield_now().await;
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        monoio::time::sleep(Duration::from_millis(1)).await
                    }
                    Ok(a) => break Some(a),
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => break None,
                }
            };
            let r = match answer {
                Some(Ok(msg)) => core.message_response(Opcode::FeedbackResponse, id, &msg),
                Some(Err((code, msg))) => core.error_response(id, code, &msg),
                None => core.error_response(id, ErrorCode::ShuttingDown, "telemetry stopped"),
            };
            conn.push(r);
            conn.job_finished();
        });
        FrameAction::Done
    }

    /// Checks the first frame of a connection to a server with a token: it must be a HELLO
    /// that carries the token. On success the connection is marked authenticated (the HELLO
    /// is then answered as usual).
    fn authenticate(
        &self,
        conn: &Conn,
        op: Option<Opcode>,
        header: &Header,
        body: &[u8],
    ) -> Result<(), &'static str> {
        let Some(token) = &self.shared.token else {
            conn.authenticated.set(true);
            return Ok(());
        };
        if op != Some(Opcode::Hello) {
            return Err("this server requires a HELLO carrying its token before any other request");
        }
        let hello = decode_message::<Hello>(header, body)
            .map_err(|_| "the HELLO does not decode, so it carries no token")?;
        if !token.matches(hello.token.as_bytes()) {
            return Err(WRONG_TOKEN);
        }
        conn.authenticated.set(true);
        Ok(())
    }

    fn metadata(&self, m: &MetadataRequest) -> Result<ModelMetadata, Refusal> {
        let snap = self.shared.table.load();
        let v = snap
            .describe(&m.model, m.version.as_deref())
            .map_err(|e| Refusal::new(ErrorCode::UnknownModel, e.to_string()))?;
        let spec = |s: &edgeinfer_engine::TensorSpec| TensorSpecMsg {
            name: s.name.clone(),
            dtype: s.dtype as u32,
            shape: s
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n as i64,
                    Dim::Dynamic => -1,
                })
                .collect(),
        };
        let info = &v.model.info;
        Ok(ModelMetadata {
            name: v.name.clone(),
            version: v.version.clone(),
            versions: snap
                .models
                .get(&m.model)
                .map(|s| s.versions.iter().map(|v| v.version.clone()).collect())
                .unwrap_or_default(),
            inputs: info.inputs.iter().map(spec).collect(),
            outputs: info.outputs.iter().map(spec).collect(),
            backend: v.model.backend().name().to_owned(),
            ready: v.is_ready(),
            load_report: serde_json::to_string(&v.model.report).unwrap_or_default(),
        })
    }

    fn health(&self) -> HealthResponse {
        let snap = self.shared.table.load();
        let mut models = Vec::new();
        let mut ready = !snap.models.is_empty();
        for slot in snap.models.values() {
            let default = slot.default_version();
            ready &= default.is_ready();
            for v in &slot.versions {
                models.push(ModelStatus {
                    name: v.name.clone(),
                    version: v.version.clone(),
                    backend: v.model.backend().name().to_owned(),
                    ready: v.is_ready(),
                    default: Arc::ptr_eq(v, default),
                    requests: v.stats.total(),
                    errors: v.stats.errors(),
                });
            }
        }
        HealthResponse { ready, models }
    }

    // === admission ===

    fn admit_predict(
        &self,
        conn: &Rc<Conn>,
        header: &Header,
        body: &[u8],
        now: Instant,
    ) -> FrameAction {
        let id = header.request_id;
        match self.check_predict(conn, header, body, now) {
            Ok(parts) => FrameAction::Admit(parts),
            Err((refusal, version)) => {
                if let Some(v) = version {
                    v.stats.record(outcome_of(refusal.code));
                }
                conn.push(self.error_response(id, refusal.code, &refusal.message));
                FrameAction::Done
            }
        }
    }

    /// What every inference request must pass before it is decoded: the server is not
    /// shutting down and the connection is under its in-flight limit.
    pub(super) fn may_admit(&self, conn: &Conn) -> Result<(), Refusal> {
        if self.shutting_down.get() {
            return Err(Refusal::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ));
        }
        self.under_in_flight_limit(conn)
    }

    /// The connection's in-flight limit (`limits.max_in_flight`).
    pub(super) fn under_in_flight_limit(&self, conn: &Conn) -> Result<(), Refusal> {
        let max = self.opts().limits.max_in_flight;
        if conn.in_flight() >= max as usize {
            let msg = format!("more than {max} requests in flight on this connection");
            return Err(Refusal::new(ErrorCode::TooManyInFlight, msg));
        }
        Ok(())
    }

    /// A version that is still loading refuses requests with NOT_READY.
    pub(super) fn ready(v: &ModelVersion) -> Result<(), Refusal> {
        if v.is_ready() {
            return Ok(());
        }
        Err(Refusal::new(
            ErrorCode::NotReady,
            format!(
                "model {:?} version {:?} is still loading",
                v.name, v.version
            ),
        ))
    }

    #[allow(clippy::type_complexity)]
    fn check_predict(
        &self,
        conn: &Conn,
        header: &Header,
        body: &[u8],
        now: Instant,
    ) -> Result<Box<JobParts>, (Refusal, Option<Arc<ModelVersion>>)> {
        let limits = &self.opts().limits;
        self.may_admit(conn).map_err(|r| (r, None))?;
        let view = decode_predict_into(header, body, limits, spare_request())
            .map_err(|e| (Refusal::new(e.kind(), e.to_string()), None))?;
        let req = &view.request;
        let model = self
            .resolve(&req.model, req.version.as_deref(), &req.routing_key)
            .map_err(|r| (r, None))?;
        let v = &model.version;
        let fail = |code, msg: String| (Refusal::new(code, msg), Some(v.clone()));
        Self::ready(v).map_err(|r| (r, Some(v.clone())))?;
        let info = &v.model.info;
        // Inputs by name, in the model's order.
        let mut order: SmallVec<[u8; 8]> = SmallVec::new();
        for spec in &info.inputs {
            match req.inputs.iter().position(|m| m.name == spec.name) {
                Some(i) => order.push(i as u8),
                None => {
                    return Err(fail(
                        ErrorCode::BadInput,
                        format!(
                            "model {:?} takes input {:?}, which the request does not carry ({})",
                            v.name,
                            spec.name,
                            input_names(info)
                        ),
                    ))
                }
            }
        }
        if req.inputs.len() != info.inputs.len() {
            let extra = req
                .inputs
                .iter()
                .find(|m| !info.inputs.iter().any(|s| s.name == m.name));
            let name = extra.map(|m| m.name.as_str()).unwrap_or("?");
            return Err(fail(
                ErrorCode::BadInput,
                format!(
                    "model {:?} has no input {name:?} ({})",
                    v.name,
                    input_names(info)
                ),
            ));
        }
        let mut views: SmallVec<[TensorView<'_>; 8]> = SmallVec::new();
        for &i in &order {
            let m = &req.inputs[i as usize];
            let data = view.input_data(i as usize).unwrap_or(&[]);
            views.push(TensorView {
                dtype: edgeinfer_engine::DType::from_code(m.dtype as u8)
                    .expect("checked by the codec"),
                shape: bytemuck::cast_slice(&m.shape),
                data,
            });
        }
        // Rows are checked before the values are: a huge request is refused without a scan.
        if let Some(r) = self.over_row_cap(info, &req.inputs) {
            return Err((r, Some(v.clone())));
        }
        // The NaN policy is the engine's; it applies it when the request runs.
        validate_inputs(info, &views, true).map_err(|e| fail(ErrorCode::BadInput, e.message))?;
        let rows = match views.first().and_then(|v| v.shape.first()) {
            Some(&n) if views.iter().all(|v| v.shape.first() == Some(&n)) => n,
            _ => 0,
        };
        let mut sel: SmallVec<[u8; 8]> = SmallVec::new();
        if req.outputs.is_empty() {
            sel.extend((0..info.outputs.len()).map(|i| i as u8));
        } else {
            for name in &req.outputs {
                match info.outputs.iter().position(|s| &s.name == name) {
                    Some(k) => sel.push(k as u8),
                    None => {
                        let have: Vec<&str> =
                            info.outputs.iter().map(|s| s.name.as_str()).collect();
                        return Err(fail(
                            ErrorCode::BadInput,
                            format!(
                                "model {:?} has no output {name:?} (outputs: {have:?})",
                                v.name
                            ),
                        ));
                    }
                }
            }
        }
        if self.waiting.get() >= self.opts().queue_depth {
            let msg = format!(
                "this core's queue is full ({} requests waiting)",
                self.waiting.get()
            );
            return Err(fail(ErrorCode::Overloaded, msg));
        }
        let deadline = (req.deadline_us > 0).then(|| now + Duration::from_micros(req.deadline_us));
        drop(views);
        Ok(Box::new(JobParts {
            request_id: header.request_id,
            data_offset: header.data_offset() as usize,
            request: view.into_request(),
            order,
            sel,
            rows,
            model,
            arrived: now,
            deadline,
            entity: None,
        }))
    }

    /// The refusal for a request with more rows than `server.max_request_rows`, from its
    /// metadata alone.
    fn over_row_cap(
        &self,
        info: &edgeinfer_engine::ModelInfo,
        inputs: &[proto::TensorMeta],
    ) -> Option<Refusal> {
        let max_rows = self.opts().max_request_rows;
        info.inputs.iter().find_map(|spec| {
            let m = inputs.iter().find(|m| m.name == spec.name)?;
            let leading = m.shape.first().copied().unwrap_or(0);
            (spec.shape.first() == Some(&Dim::Dynamic) && leading > max_rows).then(|| {
                Refusal::new(
                    ErrorCode::BadInput,
                    format!(
                        "input {:?} has {leading} rows; this server runs at most {max_rows} rows per \
                         request (server.max_request_rows): split it into several requests",
                        spec.name
                    ),
                )
            })
        })
    }

    /// Called by the reader when a PREDICT's metadata has arrived but not all of its tensor
    /// bytes: refuses the request now if its metadata alone decides it (an unknown model,
    /// more rows than the cap), so the reader can discard the bytes still to come instead of
    /// buffering them. True = refused and answered.
    pub fn refuse_early(&self, conn: &Conn, header: &Header, meta: &[u8]) -> bool {
        if header.opcode != Opcode::Predict.as_u8() {
            return false;
        }
        // What does not decode is left to the whole-frame path and its exact error.
        let Ok(req) = <PredictRequest as proto::prost::Message>::decode(meta) else {
            return false;
        };
        let (refusal, version) =
            match self.resolve(&req.model, req.version.as_deref(), &req.routing_key) {
                Err(r) => (r, None),
                Ok(model) => match self.over_row_cap(&model.version.model.info, &req.inputs) {
                    Some(r) => (r, Some(model.version.clone())),
                    None => return false,
                },
            };
        self.stats().cores[self.index]
            .requests
            .fetch_add(1, Relaxed);
        self.stats().refused_before_data.fetch_add(1, Relaxed);
        if let Some(v) = version {
            v.stats.record(outcome_of(refusal.code));
        }
        conn.push(self.error_response(header.request_id, refusal.code, &refusal.message));
        true
    }

    /// Queues an admitted job (or adds it to its model's forming batch).
    pub fn enqueue(self: &Rc<Self>, job: Job) {
        job.conn.job_started();
        self.set_waiting(self.waiting.get() + 1);
        let model = job.p.model.clone();
        if let Some(b) = &model.batch {
            if job.p.rows > 0 && job.p.rows < b.max_batch {
                let first = b.pending.borrow().is_empty();
                let arrived = job.p.arrived;
                b.rows.set(b.rows.get() + job.p.rows);
                b.pending.borrow_mut().push_back(job);
                if b.rows.get() >= b.max_batch || b.max_delay.is_zero() || self.shutting_down.get()
                {
                    self.queue_batch(&model);
                } else if first {
                    self.arm_batch_timer(&model, arrived + b.max_delay);
                }
                return;
            }
        }
        let conn = job.conn.clone();
        let idle = conn.lane.borrow().is_empty() && conn.resume.borrow().is_none();
        conn.lane.borrow_mut().push_back(job);
        if idle {
            // While large jobs wait between chunks, a connection that had nothing queued
            // goes first, so a client with one request waits for the chunk running now, not
            // for a chunk of every large job; at most JUMP_LIMIT connections jump ahead
            // between two chunks, so large jobs keep moving.
            let jumps = self.jumps.get();
            if self.parked.get() > 0 && jumps < JUMP_LIMIT {
                self.jumps.set(jumps + 1);
                self.ready.borrow_mut().push_front(conn);
            } else {
                self.ready.borrow_mut().push_back(conn);
            }
        }
        self.exec_wake.notify();
    }

    /// Runs an admitted job at once on the reader's task when nothing else waits on this
    /// core and the job is small (one step, not batched): no hop through the executor, so
    /// a lone request costs one task wake-up, not three, and the runtime does not run out of
    /// its turn budget and poll the driver once more between reading and answering. Returns
    /// the job when it must be queued instead ([`Core::enqueue`]).
    pub fn run_inline(&self, job: Job) -> Option<Job> {
        let model = &job.p.model;
        let idle = self.waiting.get() == 0
            && self.parked.get() == 0
            && self.queue.borrow().is_empty()
            && self.ready.borrow().is_empty()
            && job.conn.lane.borrow().is_empty()
            && job.conn.resume.borrow().is_none();
        let batched = model
            .batch
            .as_ref()
            .is_some_and(|b| job.p.rows > 0 && job.p.rows < b.max_batch);
        if !idle || batched || self.shutting_down.get() || job.p.rows > self.chunk_rows(&job) {
            return Some(job);
        }
        job.conn.job_started();
        // Its deadline counts from its arrival, a few hundred ns ago: no clock read here.
        let arrived = job.p.arrived;
        self.run_single(job, arrived);
        None
    }

    /// The next work item: batches and connections' lanes take turns, and lanes go
    /// round-robin, one step per connection per round: a job, or the next chunk of a large
    /// job under way (which goes first on its connection).
    fn next_work(&self) -> Option<Work> {
        let lane_first = self.lane_turn.get();
        self.lane_turn.set(!lane_first);
        let from_lane = || {
            let mut ready = self.ready.borrow_mut();
            let conn = ready.pop_front()?;
            let resumed = conn.resume.borrow_mut().take();
            let work = match resumed {
                Some((job, progress)) => {
                    self.parked.set(self.parked.get() - 1);
                    self.jumps.set(0);
                    Some(Work::Job(job, Some(progress)))
                }
                None => conn
                    .lane
                    .borrow_mut()
                    .pop_front()
                    .map(|job| Work::Job(job, None)),
            };
            if !conn.lane.borrow().is_empty() {
                ready.push_back(conn);
            }
            work
        };
        let from_queue = || self.queue.borrow_mut().pop_front();
        if lane_first {
            from_lane().or_else(from_queue)
        } else {
            from_queue().or_else(from_lane)
        }
    }

    fn set_waiting(&self, n: usize) {
        self.waiting.set(n);
        self.stats().cores[self.index].queue_depth.store(n, Relaxed);
    }

    fn queue_batch(&self, model: &Rc<CoreModel>) {
        let b = model.batch.as_ref().expect("batched model");
        if !b.queued.replace(true) {
            self.queue
                .borrow_mut()
                .push_back(Work::Batch(model.clone()));
            self.exec_wake.notify();
        }
    }

    fn arm_batch_timer(self: &Rc<Self>, model: &Rc<CoreModel>, at: Instant) {
        let b = model.batch.as_ref().expect("batched model");
        if b.timer_armed.replace(true) {
            return;
        }
        let (core, model) = (self.clone(), model.clone());
        monoio::spawn(async move {
            let mut at = at;
            loop {
                wait_until(at).await;
                let b = model.batch.as_ref().expect("batched model");
                let due = b
                    .pending
                    .borrow()
                    .front()
                    .map(|j| j.p.arrived + b.max_delay);
                match due {
                    Some(t) if t > Instant::now() => at = t,
                    Some(_) => {
                        b.timer_armed.set(false);
                        core.queue_batch(&model);
                        return;
                    }
                    None => {
                        b.timer_armed.set(false);
                        return;
                    }
                }
            }
        });
    }

    /// Runs every forming batch now (shutdown: nobody waits for company any more).
    pub fn flush_batches(&self) {
        let models: Vec<Rc<CoreModel>> = self.cache.borrow().models.clone();
        for m in &models {
            if let Some(b) = &m.batch {
                if !b.pending.borrow().is_empty() {
                    self.queue_batch(m);
                }
            }
        }
    }

    // === execution ===

    /// The executor: runs queued work (see [`Core::next_work`] for the order), one item per
    /// turn so answers get written and other connections read between runs.
    pub async fn execute(self: Rc<Self>) {
        loop {
            let work = self.next_work();
            match work {
                Some(Work::Job(job, progress)) => {
                    self.set_waiting(self.waiting.get().saturating_sub(1));
                    self.run_step(job, progress, Instant::now());
                }
                Some(Work::Batch(model)) => self.run_batch(&model),
                None => {
                    self.exec_wake.wait().await;
                    continue;
                }
            }
            super::notify::yield_now().await;
        }
    }

    /// Whether the job should still run; if not, it has been answered (or dropped).
    fn still_wanted(&self, job: &Job, now: Instant) -> bool {
        if job.conn.is_broken() {
            // The client is gone: nobody to answer.
            job.conn.job_finished();
            return false;
        }
        if job.p.deadline.is_some_and(|d| now > d) {
            let waited = now.saturating_duration_since(job.p.arrived);
            let msg = format!(
                "deadline of {} µs passed after {} µs in the queue",
                job.p.request.deadline_us,
                waited.as_micros()
            );
            self.finish_error(job, ErrorCode::DeadlineExceeded, &msg, now);
            return false;
        }
        true
    }

    fn run_single(&self, job: Job, now: Instant) {
        if !self.still_wanted(&job, now) {
            return;
        }
        let model = job.p.model.clone();
        let mut out = model.take_outputs();
        let t0 = Instant::now();
        let result = model.run(&job.inputs(), &mut out);
        let t1 = Instant::now();
        model
            .version
            .stats
            .batch_rows
            .observe(job.p.rows.max(1) as u64);
        if model.engine.row_ns.get() == 0 && result.is_ok() {
            // A first estimate, high by the run's fixed cost: the first chunks err small.
            model.engine.note_row_time(job.p.rows, t1 - t0);
        }
        match result {
            Ok(()) => self.finish_ok(&job, out, t0 - job.p.arrived, t1 - t0),
            Err(r) => {
                model.give_outputs(out);
                self.finish_error(&job, r.code, &r.message, t1);
            }
        }
    }

    /// Rows the next chunk of `job` may have: about as many as the per-row estimate says
    /// run in the options' `chunk_budget` (a power of two, kept while the estimate stays
    /// within a factor of two of it, so one chunk takes a quarter to twice the budget);
    /// `usize::MAX` when the job cannot be split by rows.
    fn chunk_rows(&self, job: &Job) -> usize {
        let model = &job.p.model;
        let engine = &model.engine;
        if !model.by_rows || job.p.rows == 0 || !engine.splits_by_rows.get() {
            return usize::MAX;
        }
        let ns = engine.row_ns.get();
        if ns == 0 {
            return FIRST_CHUNK_ROWS;
        }
        let ideal =
            (self.opts().chunk_budget.as_nanos() / u128::from(ns)).clamp(1, 1 << 40) as usize;
        let c = engine.chunk.get();
        if c == 0 || ideal < c / 2 || ideal >= 4 * c {
            // The largest power of two not above the ideal.
            let c = 1usize << ideal.ilog2();
            engine.chunk.set(c);
            return c;
        }
        c
    }

    /// Runs a lane's job: whole when it is small, else its next chunk of rows, after which
    /// it waits for its connection's next turn; the answer is written after the last chunk.
    fn run_step(&self, job: Job, progress: Option<Progress>, now: Instant) {
        let model = job.p.model.clone();
        let chunk = self.chunk_rows(&job);
        let mut p = match progress {
            Some(p) if job.conn.is_broken() => {
                model.give_outputs(p.out);
                model.give_outputs(p.part);
                job.conn.job_finished();
                return;
            }
            Some(p) => p,
            None if job.p.rows <= chunk => return self.run_single(job, now),
            None => {
                if !self.still_wanted(&job, now) {
                    return;
                }
                self.stats().chunked_requests.fetch_add(1, Relaxed);
                Progress {
                    done: 0,
                    out: model.take_outputs(),
                    part: model.take_outputs(),
                    started: now,
                    compute: Duration::ZERO,
                }
            }
        };
        let rows = job.p.rows;
        let n = chunk.min(rows - p.done);
        let t0 = Instant::now();
        let result = {
            let n_inputs = job.p.order.len();
            let shapes: SmallVec<[SmallVec<[usize; 8]>; 8]> = (0..n_inputs)
                .map(|i| {
                    let mut s: SmallVec<[usize; 8]> = SmallVec::new();
                    s.push(n);
                    s.extend_from_slice(&job.input(i).shape[1..]);
                    s
                })
                .collect();
            let views: SmallVec<[TensorView<'_>; 8]> = (0..n_inputs)
                .map(|i| {
                    let whole = job.input(i);
                    let row = whole.data.len() / rows;
                    TensorView {
                        dtype: whole.dtype,
                        shape: &shapes[i],
                        data: &whole.data[p.done * row..(p.done + n) * row],
                    }
                })
                .collect();
            model.run(&views, &mut p.part)
        };
        let t1 = Instant::now();
        self.stats().request_chunks.fetch_add(1, Relaxed);
        model.version.stats.batch_rows.observe(n as u64);
        if let Err(r) = result {
            model.give_outputs(p.out);
            model.give_outputs(p.part);
            self.finish_error(&job, r.code, &r.message, t1);
            return;
        }
        model.engine.note_row_time(n, t1 - t0);
        p.compute += t1 - t0;
        if let Err(why) = append_rows(&mut p.out, &p.part, rows, p.done, n) {
            model.give_outputs(p.out);
            model.give_outputs(p.part);
            if p.done == 0 {
                // Only the first chunk ran: run the request whole, and this model's
                // requests from now on.
                tracing::warn!(model = %model.version.name, "{why}: running its requests whole");
                model.engine.splits_by_rows.set(false);
                self.run_single(job, t1);
            } else {
                self.finish_error(&job, ErrorCode::Internal, &why, t1);
            }
            return;
        }
        p.done += n;
        if p.done < rows {
            self.park(job, p);
            return;
        }
        model.give_outputs(p.part);
        let queue = p.started.saturating_duration_since(job.p.arrived);
        self.finish_ok(&job, p.out, queue, p.compute);
    }

    /// Puts a job between two chunks back in its connection's turn.
    fn park(&self, job: Job, progress: Progress) {
        self.set_waiting(self.waiting.get() + 1);
        self.parked.set(self.parked.get() + 1);
        let conn = job.conn.clone();
        *conn.resume.borrow_mut() = Some((job, progress));
        // A connection with jobs in its lane is in the ready queue already.
        if conn.lane.borrow().is_empty() {
            self.ready.borrow_mut().push_back(conn);
        }
        self.exec_wake.notify();
    }

    fn run_batch(self: &Rc<Self>, model: &Rc<CoreModel>) {
        let b = model.batch.as_ref().expect("batched model");
        b.queued.set(false);
        let now = Instant::now();
        let mut staging = b.staging.borrow_mut();
        let st = &mut *staging;
        // Take jobs that fit in one run and agree on every input's trailing dimensions.
        let mut rows = 0;
        {
            let mut pending = b.pending.borrow_mut();
            while let Some(j) = pending.front() {
                if let Some(first) = st.jobs.first() {
                    if rows + j.p.rows > b.max_batch || !same_trailing_dims(first, j) {
                        break;
                    }
                }
                let j = pending.pop_front().expect("front exists");
                b.rows.set(b.rows.get() - j.p.rows);
                self.set_waiting(self.waiting.get().saturating_sub(1));
                if self.still_wanted(&j, now) {
                    rows += j.p.rows;
                    st.jobs.push(j);
                }
            }
        }
        match st.jobs.len() {
            0 => {}
            1 => {
                let job = st.jobs.pop().expect("one job");
                self.run_single(job, now);
            }
            _ => {
                if !self.run_concatenated(model, st, rows) {
                    // Run each alone so one bad request cannot fail the others.
                    for job in st.jobs.drain(..) {
                        self.run_single(job, Instant::now());
                    }
                }
            }
        }
        st.jobs.clear();
        drop(staging);
        // What is left forms the next batch.
        let front = b.pending.borrow().front().map(|j| j.p.arrived);
        if let Some(arrived) = front {
            let at = arrived + b.max_delay;
            if b.rows.get() >= b.max_batch || self.shutting_down.get() || at <= Instant::now() {
                self.queue_batch(model);
            } else {
                // An armed timer re-checks the front when it fires, so one is enough.
                self.arm_batch_timer(model, at);
            }
        }
    }

    /// Concatenates the jobs' rows, runs once, and splits the outputs back; false when the
    /// batch could not run as one (each job then runs alone).
    fn run_concatenated(&self, model: &Rc<CoreModel>, st: &mut Staging, rows: usize) -> bool {
        let n_inputs = model.version.model.info.inputs.len();
        for i in 0..n_inputs {
            st.inputs[i].clear();
            for j in &st.jobs {
                st.inputs[i].extend_from_slice(j.input(i).data);
            }
            let first = st.jobs[0].input(i);
            st.shapes[i].clear();
            st.shapes[i].push(rows);
            st.shapes[i].extend_from_slice(&first.shape[1..]);
        }
        let dtypes: SmallVec<[edgeinfer_engine::DType; 8]> =
            (0..n_inputs).map(|i| st.jobs[0].input(i).dtype).collect();
        let t0 = Instant::now();
        let result = {
            let views: SmallVec<[TensorView<'_>; 8]> = (0..n_inputs)
                .map(|i| TensorView {
                    dtype: dtypes[i],
                    shape: &st.shapes[i],
                    data: &st.inputs[i],
                })
                .collect();
            model.run(&views, &mut st.out)
        };
        let t1 = Instant::now();
        if result.is_err()
            || st
                .out
                .tensors
                .iter()
                .any(|t| t.shape.first() != Some(&rows))
        {
            return false;
        }
        model.version.stats.batch_rows.observe(rows as u64);
        let mut offset = 0;
        for job in &st.jobs {
            let mut out = model.take_outputs();
            if out.tensors.len() != st.out.tensors.len() {
                out = Outputs::for_model(&model.version.model.info);
            }
            for (dst, src) in out.tensors.iter_mut().zip(&st.out.tensors) {
                let row_bytes = src.data.len() / rows;
                let mut shape: SmallVec<[usize; 8]> = SmallVec::new();
                shape.push(job.p.rows);
                shape.extend_from_slice(&src.shape[1..]);
                if dst.name != src.name {
                    dst.name.clone_from(&src.name);
                }
                let dtype = src.dtype.unwrap_or(edgeinfer_engine::DType::U8);
                dst.reset(dtype, &shape).copy_from_slice(
                    &src.data[offset * row_bytes..(offset + job.p.rows) * row_bytes],
                );
            }
            offset += job.p.rows;
            self.finish_ok(
                job,
                out,
                t0.saturating_duration_since(job.p.arrived),
                t1 - t0,
            );
        }
        st.jobs.clear();
        true
    }

    fn finish_ok(&self, job: &Job, out: Outputs, queue: Duration, compute: Duration) {
        let v = &job.p.model.version;
        let mut r = self.response();
        let encoded = {
            let mut meta = self.meta.borrow_mut();
            set_str(&mut meta.model, &v.name);
            set_str(&mut meta.version, &v.version);
            set_str(&mut meta.backend, v.model.backend().name());
            meta.queue_us = queue.as_micros() as u64;
            meta.compute_us = compute.as_micros() as u64;
            // Drift counters and the prediction log (telemetry; one relaxed load when off).
            meta.prediction_id = crate::telemetry_glue::record_prediction(
                &v.name,
                &v.version,
                (!job.p.order.is_empty()).then(|| job.input(0)).as_ref(),
                out.tensors.first(),
                job.p.rows,
                job.p.entity.as_deref().map(|e| e.keys()),
            );
            let mut views: SmallVec<[proto::TensorView<'_>; 8]> = SmallVec::new();
            let mut ok = true;
            for &k in &job.p.sel {
                let t = &out.tensors[k as usize];
                match t.dtype.and_then(|d| proto::DType::from_code(d as u32)) {
                    Some(dtype) => views.push(proto::TensorView {
                        name: &t.name,
                        dtype,
                        shape: bytemuck::cast_slice(&t.shape),
                        data: &t.data,
                    }),
                    None => ok = false,
                }
            }
            if ok {
                match &job.p.entity {
                    Some(e) => e.encode_head(job.p.request_id, &mut meta, &views, &mut r.head),
                    None => encode_predict_response_head(
                        job.p.request_id,
                        &mut meta,
                        &views,
                        &mut r.head,
                    ),
                }
                .map_err(|e| e.to_string())
            } else {
                Err("an output has no dtype".to_owned())
            }
        };
        match encoded {
            Ok(_) => {
                r.sel.clone_from(&job.p.sel);
                r.outputs = Some(out);
                r.home = Some(job.p.model.clone());
                v.stats.record(Outcome::Ok);
                v.stats.rows.fetch_add(job.p.rows as u64, Relaxed);
                v.stats.queue.observe(queue);
                v.stats.compute.observe(compute);
                // One clock read for both (each costs tens of ns, per request).
                let total = job.p.arrived.elapsed();
                v.stats.latency.observe(total);
                crate::telemetry_glue::record_ok(&v.name, &v.version, total, queue, compute);
                job.conn.push(r);
                job.conn.job_finished();
            }
            Err(msg) => {
                job.p.model.give_outputs(out);
                self.recycle(r);
                self.finish_error(
                    job,
                    ErrorCode::Internal,
                    &format!("encoding the answer: {msg}"),
                    Instant::now(),
                );
            }
        }
    }

    fn finish_error(&self, job: &Job, code: ErrorCode, message: &str, now: Instant) {
        let v = &job.p.model.version;
        v.stats.record(outcome_of(code));
        v.stats
            .latency
            .observe(now.saturating_duration_since(job.p.arrived));
        crate::telemetry_glue::record_error(
            &v.name,
            &v.version,
            code.as_u32(),
            now.saturating_duration_since(job.p.arrived),
        );
        job.conn
            .push(self.error_response(job.p.request_id, code, message));
        job.conn.job_finished();
    }
}

/// The timer wheel ticks in milliseconds, far coarser than a batching delay of a few
/// hundred microseconds: sleep on it until close, then yield (the runtime polls IO between
/// turns) until the instant itself. The core is ours alone, so the short spin costs no one.
async fn wait_until(at: Instant) {
    const WHEEL_SLACK: Duration = Duration::from_millis(2);
    let now = Instant::now();
    if at > now + WHEEL_SLACK {
        monoio::time::sleep_until(monoio::time::Instant::from_std(at - WHEEL_SLACK)).await;
    }
    while Instant::now() < at {
        super::notify::yield_now().await;
    }
}

fn set_str(dst: &mut String, src: &str) {
    if dst != src {
        dst.clear();
        dst.push_str(src);
    }
}

fn input_names(info: &edgeinfer_engine::ModelInfo) -> String {
    let names: Vec<String> = info
        .inputs
        .iter()
        .map(|s| format!("{:?} {} {:?}", s.name, s.dtype, s.shape))
        .collect();
    format!("inputs: {}", names.join(", "))
}

/// Copies one chunk's outputs (`n` rows from row `at`) into the whole answer of `rows` rows.
fn append_rows(
    out: &mut Outputs,
    part: &Outputs,
    rows: usize,
    at: usize,
    n: usize,
) -> Result<(), String> {
    if out.tensors.len() != part.tensors.len() {
        out.tensors
            .resize_with(part.tensors.len(), Default::default);
    }
    for (dst, src) in out.tensors.iter_mut().zip(&part.tensors) {
        let Some(dtype) = src.dtype else {
            return Err(format!("output {:?} has no dtype", src.name));
        };
        if src.shape.first() != Some(&n) {
            return Err(format!(
                "output {:?} has shape {:?} for a chunk of {n} rows",
                src.name, src.shape
            ));
        }
        let row = src.data.len() / n;
        if at == 0 {
            let mut shape: SmallVec<[usize; 8]> = SmallVec::new();
            shape.push(rows);
            shape.extend_from_slice(&src.shape[1..]);
            if dst.name != src.name {
                dst.name.clone_from(&src.name);
            }
            dst.reset(dtype, &shape);
        } else if dst.dtype != Some(dtype) || dst.shape.get(1..) != src.shape.get(1..) {
            return Err(format!(
                "output {:?} changed type or shape between chunks",
                src.name
            ));
        }
        dst.data[at * row..(at + n) * row].copy_from_slice(&src.data);
    }
    Ok(())
}

fn same_trailing_dims(a: &Job, b: &Job) -> bool {
    (0..a.p.order.len()).all(|i| a.input(i).shape.get(1..) == b.input(i).shape.get(1..))
}

pub(super) fn outcome_of(code: ErrorCode) -> Outcome {
    match code {
        ErrorCode::Overloaded | ErrorCode::TooManyInFlight => Outcome::Overloaded,
        ErrorCode::DeadlineExceeded => Outcome::DeadlineExceeded,
        ErrorCode::Internal | ErrorCode::NotReady => Outcome::EngineError,
        ErrorCode::ShuttingDown => Outcome::ShuttingDown,
        _ => Outcome::BadInput,
    }
}
