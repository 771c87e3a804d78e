//! The model table: every loaded model version, published as one immutable
//! snapshot and swapped atomically as a whole.
//!
//! Readers (the data-path cores, HTTP) take a snapshot with one atomic load and
//! never lock. Writers (startup, SIGHUP reload, and later the registry sync)
//! build a new snapshot beside the old one and swap it in: a request that
//! resolved a version keeps its `Arc` until it finishes, so a swap never drops
//! or fails an in-flight request.
//!
//! A version's identity (its engine model, its counters, and the engine sessions built for
//! the cores ahead of time) is one `Arc<ModelVersion>`; its batching lives in the slot, so a
//! batching change publishes the same identity with new settings: no session is rebuilt and
//! no counter resets. Sessions are built and warmed by a control thread, left here one per
//! core, and each core takes its own exactly once; a core never builds one itself.
//!
//! Architecture invariant: nothing here knows about sockets or frames. Per-version
//! counters are plain atomics (relaxed), so the hot path pays nanoseconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use edgeinfer_engine::{Model, Session};

/// Per-model serving settings that the data path needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServingConfig {
    /// Dynamic batching; `None` runs every request alone (lowest latency).
    pub batching: Option<BatchConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most rows in one engine run.
    pub max_batch: usize,
    /// Longest a request waits for company before the batch runs anyway.
    pub max_delay: Duration,
}

/// One loaded, warmed version of one model: its identity. Counters live here, so they
/// last as long as the version does, whatever its batching.
#[derive(Debug)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
    pub model: Model,
    pub loaded_at: SystemTime,
    /// Set once the version has run its sample input (warm).
    pub ready: AtomicBool,
    pub stats: VersionStats,
    /// Warm sessions waiting for the cores, one slot per core.
    pub sessions: PreparedSessions,
}

impl ModelVersion {
    pub fn new(name: impl Into<String>, version: impl Into<String>, model: Model) -> Self {
        ModelVersion {
            name: name.into(),
            version: version.into(),
            model,
            loaded_at: SystemTime::now(),
            ready: AtomicBool::new(false),
            stats: VersionStats::default(),
            sessions: PreparedSessions::default(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }
}

/// Engine sessions built and warmed off the data path, waiting for their cores: slot `i`
/// belongs to core runtime `i`, which takes it exactly once (a pointer move under an
/// uncontended lock) when it first sees the version.
#[derive(Default)]
pub struct PreparedSessions {
    slots: Mutex<Vec<Option<Box<dyn Session>>>>,
    /// Sessions the cores have taken so far.
    taken: AtomicUsize,
}

impl std::fmt::Debug for PreparedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedSessions")
            .field("waiting", &self.waiting())
            .field("taken", &self.taken())
            .finish()
    }
}

impl PreparedSessions {
    fn lock(&self) -> MutexGuard<'_, Vec<Option<Box<dyn Session>>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves a ready session for core `core`, unless that core already has one waiting.
    pub fn offer(&self, core: usize, session: Box<dyn Session>) {
        let mut slots = self.lock();
        if slots.len() <= core {
            slots.resize_with(core + 1, || None);
        }
        if slots[core].is_none() {
            slots[core] = Some(session);
        }
    }

    /// Cores below `cores` with no session waiting (asked before the version is published).
    pub fn missing(&self, cores: usize) -> Vec<usize> {
        let slots = self.lock();
        (0..cores)
            .filter(|&i| slots.get(i).is_none_or(|s| s.is_none()))
            .collect()
    }

    /// Core `core`'s session, moved out; `None` if none was left for it (or already taken).
    pub fn take(&self, core: usize) -> Option<Box<dyn Session>> {
        let s = self.lock().get_mut(core).and_then(Option::take);
        if s.is_some() {
            self.taken.fetch_add(1, Relaxed);
        }
        s
    }

    /// Sessions still waiting for a core.
    pub fn waiting(&self) -> usize {
        self.lock().iter().filter(|s| s.is_some()).count()
    }

    pub fn taken(&self) -> usize {
        self.taken.load(Relaxed)
    }
}

/// How requests for a model are spread over its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// Every request goes to this version (index into `ModelSlot::versions`).
    Single(usize),
    /// A/B: a request with a routing key lands on the arm its point falls in, walking the
    /// arms in order; the point is the rollout crate's bucketing hash of the key under
    /// `ModelSlot::split_salt` (`edgeinfer_rollout::bucket::point`), so the same key gets
    /// the same arm on every box and across restarts. A request with no key draws its point
    /// at random. Arms are `(version index, weight)`; weights need not sum to anything, but a
    /// rollout split ([`ModelSlot::set_split`]) is `[(candidate, bp), (stable, 10000 - bp)]`
    /// so that "bucket < bp → candidate" is the same rule as the canary's.
    Split(Vec<(usize, u32)>),
}

/// A pin that names an arm of a split instead of a version: `@0`/`@candidate` for the first
/// arm, `@1`/`@stable` for the second, `@N` for any. Versions never start with `@` (the
/// rollout directive refuses them), so the two cannot be confused.
pub const ARM_PIN_PREFIX: char = '@';

fn arm_of_pin(pin: &str) -> Option<usize> {
    match pin.strip_prefix(ARM_PIN_PREFIX)? {
        "candidate" => Some(0),
        "stable" => Some(1),
        n => n.parse().ok(),
    }
}

/// All versions of one model and how requests pick among them.
#[derive(Debug, Clone)]
pub struct ModelSlot {
    pub name: String,
    pub versions: Vec<Arc<ModelVersion>>,
    pub routing: Routing,
    /// Batching per version (by version string); a version not listed runs unbatched.
    /// Kept apart from the identity so a batching change keeps sessions and counters.
    pub serving: BTreeMap<String, ServingConfig>,
    /// Salts the routing-key hash of a [`Routing::Split`] (the rollout's canary salt), so
    /// each trial draws its own keys.
    pub split_salt: String,
}

impl ModelSlot {
    pub fn single(version: Arc<ModelVersion>, serving: ServingConfig) -> Self {
        ModelSlot {
            name: version.name.clone(),
            serving: BTreeMap::from([(version.version.clone(), serving)]),
            versions: vec![version],
            routing: Routing::Single(0),
            split_salt: String::new(),
        }
    }

    /// Serves `stable` and `candidate` (both loaded) side by side: a routing key whose
    /// bucket under `salt` is below `candidate_bp` (of 10000) takes the candidate, sticky;
    /// a request without a key draws its arm at random. Arm `@0` is the candidate, `@1`
    /// stable.
    pub fn set_split(
        &mut self,
        stable: &str,
        candidate: &str,
        candidate_bp: u32,
        salt: &str,
    ) -> Result<(), ResolveError> {
        let s = self.require(stable)?;
        let c = self.require(candidate)?;
        let bp = candidate_bp.min(edgeinfer_rollout::BUCKETS);
        self.routing = Routing::Split(vec![(c, bp), (s, edgeinfer_rollout::BUCKETS - bp)]);
        self.split_salt = salt.to_owned();
        Ok(())
    }

    /// Serves as a rollout decision says: one version alone, or a sticky split.
    pub fn serve(&mut self, serve: &edgeinfer_rollout::Serve) -> Result<(), ResolveError> {
        use edgeinfer_rollout::Serve;
        match serve {
            Serve::Stable { version } | Serve::Candidate { version } => {
                self.routing = Routing::Single(self.require(version)?);
                Ok(())
            }
            Serve::Split {
                stable,
                candidate,
                candidate_bp,
                salt,
            } => self.set_split(stable, candidate, *candidate_bp, salt),
        }
    }

    fn require(&self, version: &str) -> Result<usize, ResolveError> {
        self.index_of(version)
            .ok_or_else(|| ResolveError::UnknownVersion {
                model: self.name.clone(),
                version: version.to_owned(),
                loaded: self.loaded(),
            })
    }

    /// How `version` is served (unbatched when not configured).
    pub fn serving_of(&self, version: &str) -> ServingConfig {
        self.serving.get(version).cloned().unwrap_or_default()
    }

    /// Adds `v`, or replaces the version of the same name (routing is left alone).
    pub fn put(&mut self, v: Arc<ModelVersion>, serving: ServingConfig) {
        self.serving.insert(v.version.clone(), serving);
        match self.versions.iter_mut().find(|o| o.version == v.version) {
            Some(o) => *o = v,
            None => self.versions.push(v),
        }
    }

    /// Index of `version` in `versions`.
    pub fn index_of(&self, version: &str) -> Option<usize> {
        self.versions.iter().position(|v| v.version == version)
    }

    /// Every loaded version, comma-separated (for error messages).
    pub fn loaded(&self) -> String {
        self.versions
            .iter()
            .map(|m| m.version.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The version that serves requests without a version pin: under a split, the arm with
    /// the most weight (the later on a tie: stable, in a rollout split).
    pub fn default_version(&self) -> &Arc<ModelVersion> {
        let idx = match &self.routing {
            Routing::Single(i) => *i,
            Routing::Split(arms) => arms.iter().max_by_key(|a| a.1).map(|a| a.0).unwrap_or(0),
        };
        &self.versions[idx.min(self.versions.len() - 1)]
    }

    /// The version of arm `arm` of the split; `None` when not split or no such arm.
    pub fn arm(&self, arm: usize) -> Option<&Arc<ModelVersion>> {
        match &self.routing {
            Routing::Split(arms) => arms.get(arm).and_then(|a| self.versions.get(a.0)),
            Routing::Single(_) => None,
        }
    }

    /// Picks the version for a request: on the data path, so no allocation and no lock
    /// (the hash is on the stack, the random draw is a thread-local generator).
    fn route(&self, routing_key: &[u8]) -> &Arc<ModelVersion> {
        match &self.routing {
            Routing::Single(_) => self.default_version(),
            Routing::Split(arms) => {
                let total: u64 = arms.iter().map(|a| a.1 as u64).sum();
                if total == 0 {
                    return self.default_version();
                }
                let mut point = if routing_key.is_empty() {
                    edgeinfer_rollout::bucket::random_point(total)
                } else {
                    edgeinfer_rollout::bucket::point(self.split_salt.as_bytes(), routing_key, total)
                };
                for &(idx, weight) in arms {
                    if point < weight as u64 {
                        return &self.versions[idx.min(self.versions.len() - 1)];
                    }
                    point -= weight as u64;
                }
                self.default_version()
            }
        }
    }
}

/// Why a request could not be matched to a model version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("model {model:?} has no version {version:?} (loaded: {loaded})")]
    UnknownVersion {
        model: String,
        version: String,
        loaded: String,
    },
}

/// An immutable view of every model; replaced whole on change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Bumped on every swap, so per-core caches (sessions) know to refresh.
    pub generation: u64,
    pub models: BTreeMap<String, ModelSlot>,
}

impl Snapshot {
    /// Pick the version for one request: a pinned version (or split arm, `@0`/`@candidate`,
    /// `@1`/`@stable`) if given, else by routing key (random under a split when empty).
    pub fn resolve(
        &self,
        model: &str,
        pin: Option<&str>,
        routing_key: &[u8],
    ) -> Result<&Arc<ModelVersion>, ResolveError> {
        let slot = self
            .models
            .get(model)
            .ok_or_else(|| ResolveError::UnknownModel(model.to_owned()))?;
        match pin {
            Some(v) if !v.is_empty() => {
                let found = match arm_of_pin(v) {
                    Some(arm) => slot.arm(arm),
                    None => slot.versions.iter().find(|m| m.version == v),
                };
                found.ok_or_else(|| ResolveError::UnknownVersion {
                    model: model.to_owned(),
                    version: v.to_owned(),
                    loaded: slot.loaded(),
                })
            }
            _ => Ok(slot.route(routing_key)),
        }
    }

    /// The version a request for `model` (pinned or not) is *about*, for metadata, readiness
    /// and health: a pin as in [`Snapshot::resolve`], else the default version (never a
    /// random arm of a split).
    pub fn describe(
        &self,
        model: &str,
        pin: Option<&str>,
    ) -> Result<&Arc<ModelVersion>, ResolveError> {
        match pin {
            Some(p) if !p.is_empty() => self.resolve(model, pin, b""),
            _ => self
                .models
                .get(model)
                .map(ModelSlot::default_version)
                .ok_or_else(|| ResolveError::UnknownModel(model.to_owned())),
        }
    }

    pub fn versions(&self) -> impl Iterator<Item = &Arc<ModelVersion>> {
        self.models.values().flat_map(|s| s.versions.iter())
    }

    /// Ready when every version is warm (and there is at least one model).
    pub fn all_ready(&self) -> bool {
        !self.models.is_empty() && self.versions().all(|v| v.is_ready())
    }
}

/// Something a core is done with, dropped on a control thread instead (engine sessions,
/// and the last reference to a retired version with its engine model).
pub type Retired = Box<dyn Send>;

/// The shared, atomically swapped table.
#[derive(Debug, Default)]
pub struct ModelTable {
    current: ArcSwap<Snapshot>,
    /// Core runtimes serving this table: how many sessions to prepare per version.
    cores: AtomicUsize,
    /// Where cores send what they retire; unset (tests, HTTP only), it is dropped in place.
    graveyard: OnceLock<mpsc::Sender<Retired>>,
    /// Serialises control-side writers (SIGHUP reload, the registry agent): each builds
    /// its next snapshot from the current one.
    writer: Mutex<()>,
}

impl ModelTable {
    pub fn new(snapshot: Snapshot) -> Self {
        ModelTable {
            current: ArcSwap::from_pointee(snapshot),
            ..ModelTable::default()
        }
    }

    /// Core runtimes that take sessions from this table (0 until the server starts).
    pub fn cores(&self) -> usize {
        self.cores.load(Relaxed)
    }

    pub fn set_cores(&self, n: usize) {
        self.cores.store(n, Relaxed);
    }

    /// Retired things go to `tx`, drained by a control thread; false if one was already set.
    pub fn set_graveyard(&self, tx: mpsc::Sender<Retired>) -> bool {
        self.graveyard.set(tx).is_ok()
    }

    /// Called by a core: drop `item` off the data path when a graveyard is set.
    pub fn retire(&self, item: Retired) {
        match self.graveyard.get() {
            Some(tx) => {
                // If the receiving thread is gone, the item comes back and drops here.
                let _ = tx.send(item);
            }
            None => drop(item),
        }
    }

    /// Held by a control-side writer for the whole of one change.
    pub fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One atomic load; hold the returned `Arc` for the length of a request at most.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// One atomic load that leaves the reference count alone: for the data path, which
    /// checks the generation on every request. Drop it before any `.await`.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Swap in a new set of models; the generation is bumped here. Every version must
    /// already hold a session for each core (`app::Control` sees to it): the cores never
    /// build one, and refuse requests for a version that came without.
    pub fn publish(&self, mut next: Snapshot) {
        let cur = self.current.load();
        next.generation = cur.generation + 1;
        self.current.store(Arc::new(next));
    }

    /// Replace (or add) one model's slot, leaving the others as they are.
    pub fn upsert(&self, slot: ModelSlot) {
        self.current.rcu(|cur| {
            let mut next = Snapshot::clone(cur);
            next.generation = cur.generation + 1;
            next.models.insert(slot.name.clone(), slot.clone());
            next
        });
    }
}

// === impl VersionStats ===

/// Outcome of one request, for the `status` label of the request counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Outcome {
    Ok = 0,
    BadInput = 1,
    Overloaded = 2,
    DeadlineExceeded = 3,
    EngineError = 4,
    ShuttingDown = 5,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::BadInput,
        Outcome::Overloaded,
        Outcome::DeadlineExceeded,
        Outcome::EngineError,
        Outcome::ShuttingDown,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadInput => "bad_input",
            Outcome::Overloaded => "overloaded",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::EngineError => "engine_error",
            Outcome::ShuttingDown => "shutting_down",
        }
    }
}

/// Counters and histograms for one model version. Lock-free: relaxed atomics.
#[derive(Debug, Default)]
pub struct VersionStats {
    pub requests: [AtomicU64; Outcome::ALL.len()],
    pub rows: AtomicU64,
    /// Time from the request's arrival to its response being queued for writing.
    pub latency: AtomicHistogram,
    /// Time spent waiting before the engine started (batching, busy core).
    pub queue: AtomicHistogram,
    /// Engine run time.
    pub compute: AtomicHistogram,
    /// Rows per engine run.
    pub batch_rows: CountHistogram,
}

impl VersionStats {
    pub fn record(&self, outcome: Outcome) {
        self.requests[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.requests[outcome as usize].load(Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.requests.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn errors(&self) -> u64 {
        self.total() - self.count(Outcome::Ok)
    }
}

/// Upper bounds (seconds) of the latency buckets, Prometheus-style; the last bucket is +Inf.
pub const LATENCY_BOUNDS_S: [f64; 18] = [
    5e-6, 10e-6, 15e-6, 20e-6, 30e-6, 50e-6, 75e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
    10e-3, 25e-3, 100e-3, 500e-3, 1.0,
];
const LATENCY_BOUNDS_NS: [u64; 18] = {
    let mut out = [0u64; 18];
    let mut i = 0;
    while i < 18 {
        out[i] = (LATENCY_BOUNDS_S[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A fixed-bucket latency histogram that many threads record into without locks.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_S.len() + 1],
    sum_ns: AtomicU64,
}

impl AtomicHistogram {
    pub fn observe(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let idx = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[idx].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Cumulative counts per bound (then +Inf), and the sum in seconds.
    pub fn cumulative(&self) -> (Vec<u64>, f64) {
        let mut acc = 0;
        let counts = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Relaxed);
                acc
            })
            .collect();
        (counts, self.sum_ns.load(Relaxed) as f64 / 1e9)
    }
}

/// Upper bounds of the rows-per-run buckets; the last bucket is +Inf.
pub const BATCH_BOUNDS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// A fixed-bucket histogram of small counts (batch sizes).
#[derive(Debug, Default)]
pub struct CountHistogram {
    buckets: [AtomicU64; BATCH_BOUNDS.len() + 1],
    sum: AtomicU64,
}

impl CountHistogram {
    pub fn observe(&self, n: u64) {
        let idx = BATCH_BOUNDS.partition_point(|&b| b < n);
        self.buckets[idx].fetch_add(1, Relaxed);
        self.sum.fetch_add(n, Relaxed);
    }

    pub fn cumulative(&self) -> (Vec<u64>, u64) {
        let mut acc = 0;
        let counts = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Relaxed);
                acc
            })
            .collect();
        (counts, self.sum.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str) -> Arc<ModelVersion> {
        let model = edgeinfer_engine::load_model(
            crate::app::DEMO_MODEL,
            &edgeinfer_engine::LoadOptions {
                engine: edgeinfer_engine::EngineChoice::Tract,
                ..Default::default()
            },
        )
        .expect("the embedded demo model loads on tract");
        Arc::new(ModelVersion::new("churn", v, model))
    }

    fn split_snapshot(candidate_bp: u32) -> Snapshot {
        let mut slot = ModelSlot::single(version("3"), ServingConfig::default());
        slot.put(version("4"), ServingConfig::default());
        slot.set_split("3", "4", candidate_bp, "churn-4").unwrap();
        Snapshot {
            generation: 1,
            models: BTreeMap::from([("churn".to_owned(), slot)]),
        }
    }

    #[test]
    fn split_routing_agrees_with_the_rollout_bucketing() {
        // The in-device split and the crate's Arm::for_key must send every key the same way
        // (docs/rollout.md: one rule, one hash).
        let snap = split_snapshot(3000);
        for i in 0..5_000 {
            let key = format!("user-{i}");
            let v = snap.resolve("churn", None, key.as_bytes()).unwrap();
            let arm = edgeinfer_rollout::Arm::for_key("churn-4", key.as_bytes(), 3000);
            let want = match arm {
                edgeinfer_rollout::Arm::Candidate => "4",
                edgeinfer_rollout::Arm::Stable => "3",
            };
            assert_eq!(v.version, want, "{key}");
        }
    }

    #[test]
    fn arm_pins_and_version_pins() {
        let snap = split_snapshot(1000);
        let pin = |p: &str| {
            snap.resolve("churn", Some(p), b"k")
                .map(|v| v.version.clone())
        };
        assert_eq!(pin("@candidate").unwrap(), "4");
        assert_eq!(pin("@0").unwrap(), "4");
        assert_eq!(pin("@stable").unwrap(), "3");
        assert_eq!(pin("@1").unwrap(), "3");
        assert_eq!(pin("3").unwrap(), "3");
        assert!(matches!(
            pin("@2"),
            Err(ResolveError::UnknownVersion { .. })
        ));
        assert!(matches!(
            pin("@x"),
            Err(ResolveError::UnknownVersion { .. })
        ));
        // The default (unpinned, for health and metadata) is the heavier arm: stable.
        assert_eq!(snap.models["churn"].default_version().version, "3");
        for _ in 0..50 {
            assert_eq!(snap.describe("churn", None).unwrap().version, "3");
        }
        assert_eq!(snap.describe("churn", Some("@0")).unwrap().version, "4");
        assert!(snap.describe("nope", None).is_err());
        // Not split: an arm pin is an error naming what is loaded.
        let single = Snapshot {
            generation: 1,
            models: BTreeMap::from([(
                "churn".to_owned(),
                ModelSlot::single(version("3"), ServingConfig::default()),
            )]),
        };
        let e = single
            .resolve("churn", Some("@candidate"), b"")
            .unwrap_err();
        assert!(e.to_string().contains("loaded: 3"), "{e}");
    }

    #[test]
    fn unkeyed_requests_spread_over_both_arms() {
        let snap = split_snapshot(5000);
        let candidate = (0..10_000)
            .filter(|_| snap.resolve("churn", None, b"").unwrap().version == "4")
            .count();
        // Binomial(10000, 0.5): ±5 σ = ±250.
        assert!((4750..5250).contains(&candidate), "{candidate} of 10000");
    }

    #[test]
    fn set_split_refuses_a_version_not_loaded() {
        let mut slot = ModelSlot::single(version("3"), ServingConfig::default());
        let e = slot.set_split("3", "9", 100, "s").unwrap_err();
        assert!(matches!(e, ResolveError::UnknownVersion { ref version, .. } if version == "9"));
        assert_eq!(slot.routing, Routing::Single(0));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = AtomicHistogram::default();
        h.observe(Duration::from_micros(3));
        h.observe(Duration::from_micros(12));
        h.observe(Duration::from_secs(5));
        let (c, sum) = h.cumulative();
        assert_eq!(c[0], 1); // ≤ 5 µs
        assert_eq!(c[2], 2); // ≤ 15 µs
        assert_eq!(c[LATENCY_BOUNDS_S.len() - 1], 2); // ≤ 1 s
        assert_eq!(*c.last().unwrap(), 3); // +Inf
        assert!((sum - 5.000015).abs() < 1e-9);
    }

    #[test]
    fn batch_histogram() {
        let h = CountHistogram::default();
        h.observe(1);
        h.observe(3);
        h.observe(1000);
        let (c, sum) = h.cumulative();
        assert_eq!(c[0], 1);
        assert_eq!(c[2], 2);
        assert_eq!(*c.last().unwrap(), 3);
        assert_eq!(sum, 1004);
    }
}
