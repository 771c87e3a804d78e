//! The LMDB store: one environment with a `rows` database (entity key → [`FeatureRow`]) and
//! a `schemas` database (schema version → the row layout written under it).
//!
//! Readers on the data-path cores use read transactions without thread-local slots (monoio
//! tasks may hop between transactions on one thread); writers are the importer, the MQTT
//! subscriber, PUT_FEATURES and expiry, serialised by LMDB's single-writer lock. Every write
//! keeps the newer row by event time, so a replayed or reordered update is harmless.

use std::collections::HashMap;
use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{
    CommitOrAbort, CompactionOption, Database, Env, EnvOpenOptions, MdbError, RoTxn, WithoutTls,
};

use crate::row::{FeatureRow, RowView};
use crate::schema::{FeatureSchema, MAX_FEATURES};
use crate::FeatureError;

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub path: PathBuf,
    /// The LMDB map size, bytes.
    pub map_size: u64,
    /// Reader slots: one per data-path core plus room for control threads and the CLI.
    pub max_readers: u32,
    pub max_key_bytes: usize,
}

impl StoreOptions {
    /// Options for `path` with `max_readers` sized to `cores` data-path cores.
    pub fn new(path: impl Into<PathBuf>, map_size: u64, cores: usize) -> StoreOptions {
        StoreOptions {
            path: path.into(),
            map_size,
            // Each core holds at most one read transaction at a time; the rest is headroom
            // for HTTP, GET_FEATURES, expiry and `edgeinfer features` in another process.
            max_readers: u32::try_from(cores)
                .unwrap_or(u32::MAX / 2)
                .saturating_add(16),
            max_key_bytes: 256,
        }
    }
}

/// Counters, relaxed atomics: cheap on the data path, read by the metrics scrape.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    pub rows_written: AtomicU64,
    /// Writes ignored because the stored row is newer by event time.
    pub rows_skipped_older: AtomicU64,
    pub rows_rejected: AtomicU64,
    pub map_full: AtomicU64,
    pub rows_expired: AtomicU64,
    pub lookups: AtomicU64,
    pub missing_entity: AtomicU64,
    pub missing_feature: AtomicU64,
    pub stale: AtomicU64,
    /// Features served as their default, after overrides (what the row reports list).
    pub defaulted: AtomicU64,
    pub version_mismatch: AtomicU64,
    pub mqtt_messages: AtomicU64,
    pub mqtt_bad_payloads: AtomicU64,
}

/// The store's size and fill, for `edgeinfer features stats` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StoreStats {
    pub entities: u64,
    pub map_size: u64,
    /// Bytes of the map in use (pages up to the last used one).
    pub used_bytes: u64,
    pub fill_ratio: f64,
    pub readers: u32,
    pub max_readers: u32,
}

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOutcome {
    pub written: u64,
    /// Rows not written because the stored row is newer (idempotence by event time).
    pub skipped_older: u64,
}

/// The feature store. Cheap to clone (one shared LMDB environment).
#[derive(Clone)]
pub struct FeatureStore(Arc<StoreInner>);

pub struct StoreInner {
    /// Leaked from a `Box` in `open` and reclaimed in `Drop`: heed 0.23 ties a `Database`
    /// to a borrow of its `Env`, and the two live together here. Nothing borrowing it can
    /// outlive the `StoreInner`, since every borrow goes through `&FeatureStore`.
    env: &'static Env<WithoutTls>,
    rows: Database<'static, Bytes, Bytes>,
    schemas: Database<'static, Bytes, Bytes>,
    known: RwLock<HashMap<u32, Arc<FeatureSchema>>>,
    max_key_bytes: usize,
    metrics: Arc<StoreMetrics>,
    /// Row writes committed by this process: a [`HeldReader`] renews when it moved.
    commits: AtomicU64,
    /// Stale reader slots cleared when opening (a crashed process's leftovers).
    pub stale_readers_cleared: usize,
}

impl std::ops::Deref for FeatureStore {
    type Target = StoreInner;
    fn deref(&self) -> &StoreInner {
        &self.0
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        // SAFETY: `env` came from `Box::leak` in `open` and this is its only owner; no
        // transaction or view can be alive, as they all borrow a `FeatureStore`.
        drop(unsafe { Box::from_raw(self.env as *const Env<WithoutTls> as *mut Env<WithoutTls>) });
    }
}

pub(crate) fn lmdb(e: heed::Error, map_size: u64) -> FeatureError {
    match e {
        heed::Error::Mdb(MdbError::MapFull) => FeatureError::MapFull {
            map_size,
            committed: 0,
        },
        e => FeatureError::Store(e),
    }
}

impl FeatureStore {
    pub fn open(opts: &StoreOptions) -> Result<FeatureStore, FeatureError> {
        fs::create_dir_all(&opts.path).map_err(|e| FeatureError::io(&opts.path, e))?;
        let map_size = usize::try_from(opts.map_size).map_err(|_| FeatureError::Config {
            key: "cache.max_bytes",
            message: "does not fit this platform's address space".into(),
        })?;
        let mut o = EnvOpenOptions::new().read_txn_without_tls();
        o.map_size(map_size)
            .max_dbs(2)
            .max_readers(opts.max_readers);
        // SAFETY: heed's contract for `open`: the environment must not be opened twice in one
        // process (heed checks and returns EnvAlreadyOpened) and the files must not be
        // modified other than through LMDB. We own this directory.
        let env = unsafe { o.open(&opts.path) }.map_err(|e| lmdb(e, opts.map_size))?;
        let env: &'static Env<WithoutTls> = Box::leak(Box::new(env));
        // From here on a failure must not leak the environment: wrap it at once.
        let stale_readers_cleared = env.clear_stale_readers().map_err(FeatureError::Store);
        let wtxn = env.write_txn().map_err(|e| lmdb(e, opts.map_size));
        let dbs = wtxn.and_then(|wtxn| {
            env.create_databases_and_commit(wtxn, |dbo, wtxn| {
                let rows = dbo.create_database::<Bytes, Bytes>(wtxn, Some("rows"))?;
                let schemas = dbo.create_database::<Bytes, Bytes>(wtxn, Some("schemas"))?;
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit((rows, schemas)))
            })
            .map_err(|e| lmdb(e, opts.map_size))
        });
        let (rows, schemas) = match (stale_readers_cleared.as_ref(), dbs) {
            (Ok(_), Ok(CommitOrAbort::Commit(d))) => d,
            (_, dbs) => {
                // SAFETY: just leaked above, nothing borrows it yet.
                drop(unsafe {
                    Box::from_raw(env as *const Env<WithoutTls> as *mut Env<WithoutTls>)
                });
                return Err(match (stale_readers_cleared, dbs) {
                    (Err(e), _) | (_, Err(e)) => e,
                    _ => FeatureError::Schema("opening the databases was aborted".into()),
                });
            }
        };
        let store = FeatureStore(Arc::new(StoreInner {
            env,
            rows,
            schemas,
            known: RwLock::new(HashMap::new()),
            max_key_bytes: opts.max_key_bytes.min(crate::config::LMDB_MAX_KEY_BYTES),
            metrics: Arc::new(StoreMetrics::default()),
            commits: AtomicU64::new(0),
            stale_readers_cleared: stale_readers_cleared.unwrap_or(0),
        }));
        store.load_schemas()?;
        Ok(store)
    }

    fn load_schemas(&self) -> Result<(), FeatureError> {
        let txn = self.read_txn()?;
        let mut known = self.known.write().expect("poisoned");
        for item in self.schemas.iter(&txn).map_err(FeatureError::Store)? {
            let (k, v) = item.map_err(FeatureError::Store)?;
            let s: FeatureSchema = serde_json::from_slice(v)
                .map_err(|e| FeatureError::Malformed(format!("stored schema {k:?}: {e}")))?;
            known.insert(s.version, Arc::new(s));
        }
        Ok(())
    }

    pub fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.metrics
    }

    pub fn path(&self) -> &Path {
        self.env.path()
    }

    fn map_size(&self) -> u64 {
        self.env.info().map_size as u64
    }

    // === schemas ===

    /// The row layout stored for `version`, if any row was ever written under it.
    pub fn schema(&self, version: u32) -> Option<Arc<FeatureSchema>> {
        self.known.read().expect("poisoned").get(&version).cloned()
    }

    /// Binds `schema` to the store: the first schema seen for a version fixes the row
    /// layout of that version; a later one with the same version must name only features
    /// of that layout, with the same dtypes. Returns the stored layout and, for each of
    /// `schema`'s fields in its order, the index in the stored row (`None` = the layout
    /// lacks it: always the default).
    pub fn bind(
        &self,
        schema: &FeatureSchema,
    ) -> Result<(Arc<FeatureSchema>, Vec<Option<usize>>), FeatureError> {
        schema.validate()?;
        let stored = match self.schema(schema.version) {
            Some(s) => s,
            None => {
                let mut wtxn = self.env.write_txn().map_err(|e| lmdb(e, self.map_size()))?;
                let key = schema.version.to_be_bytes();
                let stored = match self.schemas.get(&wtxn, &key).map_err(FeatureError::Store)? {
                    // Another process registered it since we opened.
                    Some(v) => serde_json::from_slice(v)
                        .map_err(|e| FeatureError::Malformed(format!("stored schema: {e}")))?,
                    None => {
                        let json = serde_json::to_vec(schema).expect("schema serialises");
                        self.schemas
                            .put(&mut wtxn, &key, &json)
                            .map_err(|e| lmdb(e, self.map_size()))?;
                        schema.clone()
                    }
                };
                wtxn.commit().map_err(|e| {
                    self.count_map_full(&e);
                    lmdb(e, self.map_size())
                })?;
                let stored = Arc::new(stored);
                self.known
                    .write()
                    .expect("poisoned")
                    .insert(schema.version, stored.clone());
                stored
            }
        };
        let mut map = Vec::with_capacity(schema.fields.len());
        for f in &schema.fields {
            match stored.index_of(&f.name) {
                Some(j) if stored.fields[j].dtype != f.dtype => {
                    return Err(FeatureError::Schema(format!(
                        "feature {:?} is {} in this schema but {} in the stored version {}",
                        f.name,
                        f.dtype.name(),
                        stored.fields[j].dtype.name(),
                        schema.version
                    )))
                }
                j => map.push(j),
            }
        }
        Ok((stored, map))
    }

    // === reads ===

    /// A read transaction. Without TLS, so it may be used on any thread; keep it short.
    pub fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>, FeatureError> {
        self.env.read_txn().map_err(FeatureError::Store)
    }

    /// A read transaction that may outlive the borrow of `self`: only for [`HeldReader`],
    /// which keeps a clone of the store (and so the environment) alive while it holds one.
    fn read_txn_static(&self) -> Result<RoTxn<'static, WithoutTls>, FeatureError> {
        self.env.read_txn().map_err(FeatureError::Store)
    }

    /// The row for `key`, viewed in place inside `txn`.
    pub fn get<'t>(
        &self,
        txn: &'t RoTxn<'_, WithoutTls>,
        key: &[u8],
    ) -> Result<Option<RowView<'t>>, FeatureError> {
        match self.rows.get(txn, key).map_err(FeatureError::Store)? {
            Some(bytes) => RowView::parse(bytes).map(Some),
            None => Ok(None),
        }
    }

    pub fn stats(&self) -> Result<StoreStats, FeatureError> {
        let info = self.env.info();
        let page = u64::from(self.env.unnamed_database_stat().page_size);
        let txn = self.read_txn()?;
        let entities = self.rows.len(&txn).map_err(FeatureError::Store)?;
        let used_bytes = (info.last_page_number as u64 + 1) * page;
        Ok(StoreStats {
            entities,
            map_size: info.map_size as u64,
            used_bytes,
            fill_ratio: used_bytes as f64 / info.map_size as f64,
            readers: info.number_of_readers,
            max_readers: info.maximum_number_of_readers,
        })
    }

    // === writes ===

    /// Checks a key and a row against the store's limits and the row's stored layout.
    pub fn check(&self, key: &[u8], row: &FeatureRow) -> Result<(), FeatureError> {
        self.check_row(key, row).map(|_| ())
    }

    /// [`check`](Self::check), returning the row format its schema stores it in.
    fn check_row(&self, key: &[u8], row: &FeatureRow) -> Result<u16, FeatureError> {
        if key.is_empty() {
            return Err(FeatureError::InvalidValue("empty entity key".into()));
        }
        if key.len() > self.max_key_bytes {
            return Err(FeatureError::Oversized(format!(
                "entity key of {} bytes; at most {} are accepted",
                key.len(),
                self.max_key_bytes
            )));
        }
        if row.values.len() > MAX_FEATURES {
            return Err(FeatureError::Oversized(format!(
                "row of {} values; at most {MAX_FEATURES} are accepted",
                row.values.len()
            )));
        }
        let Some(schema) = self.schema(row.schema_version) else {
            return Err(FeatureError::Schema(format!(
                "schema version {} is not known to this store",
                row.schema_version
            )));
        };
        if row.values.len() != schema.fields.len() {
            return Err(FeatureError::Schema(format!(
                "row has {} values; schema version {} has {} features",
                row.values.len(),
                row.schema_version,
                schema.fields.len()
            )));
        }
        for (f, v) in schema.fields.iter().zip(&row.values) {
            if let Some(v) = v {
                f.check(*v)?;
            }
        }
        Ok(schema.row_format())
    }

    /// Writes rows in one transaction: all of them or (on any error) none. A row older by
    /// event time than the stored one is skipped; on a tie the later write wins.
    pub fn put(&self, rows: &[(Vec<u8>, FeatureRow)]) -> Result<PutOutcome, FeatureError> {
        let mut formats = Vec::with_capacity(rows.len());
        for (k, r) in rows {
            match self.check_row(k, r) {
                Ok(f) => formats.push(f),
                Err(e) => {
                    self.metrics.rows_rejected.fetch_add(1, Relaxed);
                    return Err(e);
                }
            }
        }
        self.write_rows(rows, |i| formats[i])
    }

    /// [`put`](Self::put) of rows the caller already passed through [`check`](Self::check)
    /// (the importer checks each row as it stages it), all of one schema stored as `format`.
    pub(crate) fn put_checked(
        &self,
        rows: &[(Vec<u8>, FeatureRow)],
        format: u16,
    ) -> Result<PutOutcome, FeatureError> {
        self.write_rows(rows, |_| format)
    }

    fn write_rows(
        &self,
        rows: &[(Vec<u8>, FeatureRow)],
        format_of: impl Fn(usize) -> u16,
    ) -> Result<PutOutcome, FeatureError> {
        let mut out = PutOutcome::default();
        let mut buf = Vec::new();
        let map_size = self.map_size();
        let fail = |e: heed::Error| {
            self.count_map_full(&e);
            lmdb(e, map_size)
        };
        let mut wtxn = self.env.write_txn().map_err(fail)?;
        for (i, (key, row)) in rows.iter().enumerate() {
            row.encode_into_as(format_of(i), &mut buf);
            // One B-tree descent for a new key (the common case of an import): insert, or
            // get the stored row. On error the transaction is dropped (aborted): nothing
            // of this batch is kept.
            let stored_ts = match self.rows.get_or_put(&mut wtxn, key, &buf).map_err(fail)? {
                None => {
                    out.written += 1;
                    continue;
                }
                // A row this build cannot read is replaced.
                Some(old) => RowView::parse(old).map(|o| o.event_ts_ms).ok(),
            };
            if stored_ts.is_some_and(|t| t > row.event_ts_ms) {
                out.skipped_older += 1;
                continue;
            }
            self.rows.put(&mut wtxn, key, &buf).map_err(fail)?;
            out.written += 1;
        }
        wtxn.commit().map_err(fail)?;
        self.commits.fetch_add(1, Release);
        self.metrics.rows_written.fetch_add(out.written, Relaxed);
        self.metrics
            .rows_skipped_older
            .fetch_add(out.skipped_older, Relaxed);
        Ok(out)
    }

    fn count_map_full(&self, e: &heed::Error) {
        if matches!(e, heed::Error::Mdb(MdbError::MapFull)) {
            self.metrics.map_full.fetch_add(1, Relaxed);
        }
    }

    // === housekeeping ===

    /// One bounded expiry step: scans at most `batch × 8` rows after `cursor` and deletes at
    /// most `batch` of those whose event time is before `now_ms - ttl_ms`, in one short write
    /// transaction. Advances `cursor`; `None` after it means the sweep wrapped around.
    pub fn expire_step(
        &self,
        now_ms: i64,
        ttl_ms: i64,
        batch: usize,
        cursor: &mut Option<Vec<u8>>,
    ) -> Result<usize, FeatureError> {
        let cutoff = now_ms.saturating_sub(ttl_ms);
        let map_size = self.map_size();
        let mut wtxn = self.env.write_txn().map_err(|e| lmdb(e, map_size))?;
        let mut doomed = Vec::new();
        let mut last = None;
        {
            let start = match cursor.as_deref() {
                Some(k) => Bound::Excluded(k),
                None => Bound::Unbounded,
            };
            let range = (start, Bound::Unbounded);
            let iter = self
                .rows
                .range(&wtxn, &range)
                .map_err(FeatureError::Store)?;
            for (scanned, item) in iter.enumerate() {
                if scanned >= batch.saturating_mul(8) || doomed.len() >= batch {
                    break;
                }
                let (k, v) = item.map_err(FeatureError::Store)?;
                // A row this build cannot read is kept for an operator to look at.
                if RowView::parse(v).is_ok_and(|r| r.event_ts_ms < cutoff) {
                    doomed.push(k.to_vec());
                }
                last = Some(k.to_vec());
            }
        }
        for k in &doomed {
            self.rows
                .delete(&mut wtxn, k)
                .map_err(|e| lmdb(e, map_size))?;
        }
        wtxn.commit().map_err(|e| lmdb(e, map_size))?;
        if !doomed.is_empty() {
            self.commits.fetch_add(1, Release);
        }
        self.metrics
            .rows_expired
            .fetch_add(doomed.len() as u64, Relaxed);
        *cursor = last;
        Ok(doomed.len())
    }

    /// A compacted copy of the whole environment (`mdb_copy -c`) into `dest`, a file that
    /// must not exist yet; readers and writers carry on meanwhile. Returns its size.
    pub fn backup(&self, dest: &Path) -> Result<u64, FeatureError> {
        if dest.exists() {
            return Err(FeatureError::io(
                dest,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "backup target exists"),
            ));
        }
        let file = self
            .env
            .copy_to_path(dest, CompactionOption::Enabled)
            .map_err(|e| match e {
                heed::Error::Io(io) => FeatureError::io(dest, io),
                e => FeatureError::Store(e),
            })?;
        file.sync_all().map_err(|e| FeatureError::io(dest, e))?;
        Ok(file
            .metadata()
            .map_err(|e| FeatureError::io(dest, e))?
            .len())
    }
}

// === impl HeldReader ===

/// One read transaction a data-path core keeps from request to request instead of a
/// begin and an abort per request (each begin takes LMDB's reader-table mutex and scans
/// for a slot, since without TLS a slot is not kept). heed 0.23 exposes neither
/// `mdb_txn_reset` nor `mdb_txn_renew`, so "renew" here is an abort and a fresh begin.
///
/// It is renewed before use when a row write of this process committed since it began
/// (so a PUT_FEATURES answered is visible to the next request: read-your-writes), and when
/// it is older than `max_age` (writes by another process, such as `edgeinfer features
/// import`, show within that). An idle core calls [`HeldReader::release_if_old`] so that
/// it never pins old pages, which would keep LMDB from reusing them and grow the file.
pub struct HeldReader {
    // Declared before `store`: aborted before the environment it reads can go.
    txn: Option<RoTxn<'static, WithoutTls>>,
    store: FeatureStore,
    began: Instant,
    commits: u64,
    max_age: Duration,
}

impl HeldReader {
    pub fn new(store: FeatureStore, max_age: Duration) -> HeldReader {
        HeldReader {
            txn: None,
            store,
            began: Instant::now(),
            commits: 0,
            max_age,
        }
    }

    /// The held transaction, renewed first if a write committed since it began or it is
    /// older than `max_age` at `now`.
    pub fn txn(&mut self, now: Instant) -> Result<&RoTxn<'static, WithoutTls>, FeatureError> {
        let commits = self.store.commits.load(Acquire);
        let fresh =
            self.commits == commits && now.saturating_duration_since(self.began) <= self.max_age;
        if !fresh || self.txn.is_none() {
            // Abort the old one first: it frees its reader slot for the new one.
            self.txn = None;
            self.txn = Some(self.store.read_txn_static()?);
            self.began = now;
            self.commits = commits;
        }
        Ok(self.txn.as_ref().expect("just set"))
    }

    /// Ends the held transaction if it is older than `max_age` at `now`; returns whether
    /// one is still held.
    pub fn release_if_old(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.began) > self.max_age {
            self.txn = None;
        }
        self.txn.is_some()
    }

    pub fn store(&self) -> &FeatureStore {
        &self.store
    }
}

impl std::fmt::Debug for FeatureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureStore")
            .field("path", &self.env.path())
            .finish_non_exhaustive()
    }
}
