//! The prediction log: each served prediction's id, output, model version and A/B arm
//! (and entity, for PREDICT_BY_ENTITY), kept in LMDB for a TTL so that FEEDBACK can join
//! the true label to it later. Written in batches from the control thread, never from a core.
//! Consecutive ids of one version and arm (a core's id block, without entities) share one
//! LMDB entry, a run of up to [`RUN_MAX`] rows keyed by its first id: one B-tree insert per
//! run instead of per prediction (benches/costs.rs, "prediction log write").

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Unit, U64};
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions};

use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};

/// One logged prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRecord {
    pub id: u64,
    pub ts_ms: u64,
    pub model: String,
    pub version: String,
    pub arm: String,
    /// The entity of a PREDICT_BY_ENTITY request; empty otherwise.
    pub entity: String,
    /// The first output value (class id or regression value).
    pub output: f64,
}

/// A prediction to log, borrowing its names: the daemon logs tens of thousands a second and
/// must not allocate four strings for each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogRow<'a> {
    pub id: u64,
    pub ts_ms: u64,
    pub model: &'a str,
    pub version: &'a str,
    pub arm: &'a str,
    pub entity: &'a str,
    pub output: f64,
}

impl PredictionRecord {
    pub fn row(&self) -> LogRow<'_> {
        LogRow {
            id: self.id,
            ts_ms: self.ts_ms,
            model: &self.model,
            version: &self.version,
            arm: &self.arm,
            entity: &self.entity,
            output: self.output,
        }
    }
}

/// How FEEDBACK names the prediction it labels.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedbackKey<'a> {
    RequestId(u64),
    /// The latest prediction for the entity at or before `ts_ms`.
    Entity {
        entity: &'a str,
        ts_ms: u64,
    },
}

/// Rows one LMDB entry holds at most (16 bytes each, plus the names once).
pub const RUN_MAX: usize = 256;

/// The LMDB prediction log.
pub struct PredictionLog {
    env: Env,
    /// First id of a run → the run ([`encode_run`]).
    by_id: Database<'static, U64<BigEndian>, Bytes>,
    /// `entity 0x00 ts_be id_be` → (): lookups by entity and time.
    by_entity: Database<'static, Bytes, Unit>,
    ttl_ms: u64,
    clock: Arc<dyn Clock>,
}

impl PredictionLog {
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        ttl_ms: u64,
        clock: Arc<dyn Clock>,
    ) -> Result<PredictionLog> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::store(&format!("creating {}", dir.display()), e))?;
        // NO_SYNC: the log is a join cache; a power cut loses at most the last commits'
        // predictions (their labels then count as unknown ids), never corrupts the file.
        let env = unsafe {
            EnvOpenOptions::new()
                .map_size(max_bytes.max(16 << 20) as usize)
                .max_dbs(4)
                .flags(EnvFlags::NO_SYNC)
                .open(dir)
        }
        .map_err(|e| Error::store(&format!("opening prediction log {}", dir.display()), e))?;
        let wtxn = env
            .write_txn()
            .map_err(|e| Error::store("prediction log txn", e))?;
        let (by_id, by_entity) = env
            .create_databases_and_commit(wtxn, |dbo, wtxn| {
                // "by_id" held one entry per prediction (before runs): a log in that
                // layout is emptied once (a join cache; ids continue above the wall clock),
                // with its entity keys, which name ids of that layout.
                let old = dbo.open_database::<U64<BigEndian>, Bytes>(wtxn, Some("by_id"))?;
                if let Some(old) = old {
                    if !old.is_empty(wtxn)? {
                        old.clear(wtxn)?;
                        let e = dbo.create_database::<Bytes, Unit>(wtxn, Some("by_entity"))?;
                        e.clear(wtxn)?;
                    }
                }
                let a = dbo.create_database::<U64<BigEndian>, Bytes>(wtxn, Some("runs"))?;
                let b = dbo.create_database::<Bytes, Unit>(wtxn, Some("by_entity"))?;
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit((a, b)))
            })
            .map_err(|e| Error::store("prediction log databases", e))?
            .unwrap_commit();
        Ok(PredictionLog {
            env,
            by_id,
            by_entity,
            ttl_ms,
            clock,
        })
    }

    /// Logs a batch in one transaction, then expires what is past the TTL. When the map is
    /// full, the oldest half is dropped and the batch retried once.
    pub fn insert(&self, batch: &[PredictionRecord]) -> Result<()> {
        let rows: Vec<LogRow<'_>> = batch.iter().map(PredictionRecord::row).collect();
        self.insert_rows(&rows)
    }

    /// [`PredictionLog::insert`] from borrowed rows.
    pub fn insert_rows(&self, batch: &[LogRow<'_>]) -> Result<()> {
        match self.try_insert(batch) {
            Err(e) if e.kind() == ErrorKind::Store && e.to_string().contains("MDB_MAP_FULL") => {
                self.drop_oldest_half()?;
                self.try_insert(batch)
            }
            r => r,
        }
    }

    fn try_insert(&self, batch: &[LogRow<'_>]) -> Result<()> {
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(|e| Error::store("prediction log txn", e))?;
        let mut buf = Vec::with_capacity(64);
        let mut rest = batch;
        while let Some(first) = rest.first() {
            // A row with an entity is a run of its own (its entity key names its id).
            let n = if first.entity.is_empty() {
                rest.iter()
                    .take(RUN_MAX)
                    .enumerate()
                    .take_while(|(k, r)| {
                        r.id == first.id + *k as u64
                            && r.entity.is_empty()
                            && (r.model, r.version, r.arm)
                                == (first.model, first.version, first.arm)
                    })
                    .count()
            } else {
                1
            };
            let (run, tail) = rest.split_at(n);
            rest = tail;
            encode_run(run, &mut buf);
            self.by_id
                .put(&mut wtxn, &first.id, &buf)
                .map_err(|e| Error::store("prediction log put", e))?;
            if !first.entity.is_empty() {
                self.by_entity
                    .put(
                        &mut wtxn,
                        &entity_key(first.entity, first.ts_ms, first.id),
                        &(),
                    )
                    .map_err(|e| Error::store("prediction log put", e))?;
            }
        }
        let cutoff = self.clock.now_ms().saturating_sub(self.ttl_ms);
        self.expire_in(&mut wtxn, |newest| newest < cutoff, usize::MAX)?;
        wtxn.commit()
            .map_err(|e| Error::store("prediction log commit", e))
    }

    fn drop_oldest_half(&self) -> Result<()> {
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(|e| Error::store("prediction log txn", e))?;
        let n = self
            .by_id
            .len(&wtxn)
            .map_err(|e| Error::store("prediction log len", e))? as usize;
        self.expire_in(&mut wtxn, |_| true, n / 2 + 1)?;
        wtxn.commit()
            .map_err(|e| Error::store("prediction log commit", e))
    }

    /// Deletes up to `max` runs from the oldest, while `old(newest row's ts)` holds: a run
    /// goes once all its rows are past the TTL ([`PredictionLog::lookup`] checks each row's).
    fn expire_in(
        &self,
        wtxn: &mut heed::RwTxn<'_>,
        old: impl Fn(u64) -> bool,
        max: usize,
    ) -> Result<()> {
        for _ in 0..max {
            let Some((id, v)) = self
                .by_id
                .first(wtxn)
                .map_err(|e| Error::store("prediction log first", e))?
            else {
                break;
            };
            let entity_key = match Run::decode(id, v) {
                Ok(r) if !old(r.newest_ts()) => break,
                Ok(r) if !r.entity.is_empty() => Some(entity_key(r.entity, r.ts_ms(0), id)),
                _ => None,
            };
            if let Some(k) = entity_key {
                self.by_entity
                    .delete(wtxn, &k)
                    .map_err(|e| Error::store("prediction log delete", e))?;
            }
            self.by_id
                .delete(wtxn, &id)
                .map_err(|e| Error::store("prediction log delete", e))?;
        }
        Ok(())
    }

    /// The prediction FEEDBACK names; `UnknownRequestId` when never logged or expired.
    pub fn lookup(&self, key: &FeedbackKey<'_>) -> Result<PredictionRecord> {
        let rtxn = self
            .env
            .read_txn()
            .map_err(|e| Error::store("prediction log read", e))?;
        let cutoff = self.clock.now_ms().saturating_sub(self.ttl_ms);
        let found = match key {
            FeedbackKey::RequestId(id) => self.get(&rtxn, *id)?,
            FeedbackKey::Entity { entity, ts_ms } => {
                if entity.is_empty() || entity.contains('\0') {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        "FEEDBACK entity must be non-empty, without NUL",
                    ));
                }
                let lo = entity_key(entity, 0, 0);
                let hi = entity_key(entity, *ts_ms, u64::MAX);
                let range = (Bound::Included(&lo[..]), Bound::Included(&hi[..]));
                let last = self
                    .by_entity
                    .range(&rtxn, &range)
                    .map_err(|e| Error::store("prediction log range", e))?
                    .last()
                    .transpose()
                    .map_err(|e| Error::store("prediction log range", e))?;
                match last {
                    Some((k, _)) => {
                        let id = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap());
                        self.get(&rtxn, id)?
                    }
                    None => None,
                }
            }
        };
        match found {
            Some(r) if r.ts_ms >= cutoff => Ok(r),
            _ => Err(Error::new(
                ErrorKind::UnknownRequestId,
                match key {
                    FeedbackKey::RequestId(id) => {
                        format!("no logged prediction {id} (never served, or older than the TTL)")
                    }
                    FeedbackKey::Entity { entity, ts_ms } => {
                        format!("no logged prediction for entity {entity:?} at or before {ts_ms}")
                    }
                },
            )),
        }
    }

    /// Row `id` from the run that holds it, if any.
    fn get(&self, rtxn: &heed::RoTxn<'_>, id: u64) -> Result<Option<PredictionRecord>> {
        let Some((first, v)) = self
            .by_id
            .get_lower_than_or_equal_to(rtxn, &id)
            .map_err(|e| Error::store("prediction log get", e))?
        else {
            return Ok(None);
        };
        let run = Run::decode(first, v)?;
        Ok(run.record(id - first))
    }

    /// The highest id logged (ids only grow, so a restart continues above it).
    pub fn max_id(&self) -> Result<Option<u64>> {
        let rtxn = self
            .env
            .read_txn()
            .map_err(|e| Error::store("prediction log read", e))?;
        self.by_id
            .last(&rtxn)
            .map_err(|e| Error::store("prediction log last", e))?
            .map(|(first, v)| Ok(first + Run::decode(first, v)?.n.saturating_sub(1)))
            .transpose()
    }

    /// Predictions logged (rows, not runs; walks every run).
    pub fn len(&self) -> Result<u64> {
        let rtxn = self
            .env
            .read_txn()
            .map_err(|e| Error::store("prediction log read", e))?;
        let mut n = 0;
        for e in self
            .by_id
            .iter(&rtxn)
            .map_err(|e| Error::store("prediction log len", e))?
        {
            let (first, v) = e.map_err(|e| Error::store("prediction log len", e))?;
            n += Run::decode(first, v)?.n;
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

fn entity_key(entity: &str, ts_ms: u64, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(entity.len() + 17);
    k.extend_from_slice(entity.as_bytes());
    k.push(0);
    k.extend_from_slice(&ts_ms.to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

// A run: u32 n | 4 × (u16 len, bytes): model, version, arm, entity | n × (u64 ts, f64
// output). Little-endian. Rows k of a run have ids first + k.
fn encode_run(run: &[LogRow<'_>], b: &mut Vec<u8>) {
    let r0 = &run[0];
    b.clear();
    b.extend_from_slice(&(run.len() as u32).to_le_bytes());
    for s in [r0.model, r0.version, r0.arm, r0.entity] {
        let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        b.extend_from_slice(&(s.len() as u16).to_le_bytes());
        b.extend_from_slice(s);
    }
    for r in run {
        b.extend_from_slice(&r.ts_ms.to_le_bytes());
        b.extend_from_slice(&r.output.to_le_bytes());
    }
}

/// A run as stored, borrowing the entry's bytes.
struct Run<'a> {
    first: u64,
    n: u64,
    model: &'a str,
    version: &'a str,
    arm: &'a str,
    entity: &'a str,
    rows: &'a [u8],
}

impl<'a> Run<'a> {
    fn decode(first: u64, v: &'a [u8]) -> Result<Run<'a>> {
        let bad = || {
            Error::new(
                ErrorKind::Corrupt,
                format!("prediction log run {first} is malformed"),
            )
        };
        let n = u32::from_le_bytes(v.get(..4).ok_or_else(bad)?.try_into().unwrap()) as u64;
        let mut rest = &v[4..];
        let mut strs = [""; 4];
        for s in &mut strs {
            if rest.len() < 2 {
                return Err(bad());
            }
            let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            let b = rest.get(2..2 + len).ok_or_else(bad)?;
            *s = std::str::from_utf8(b).map_err(|_| bad())?;
            rest = &rest[2 + len..];
        }
        if n == 0 || rest.len() as u64 != n * 16 {
            return Err(bad());
        }
        let [model, version, arm, entity] = strs;
        Ok(Run {
            first,
            n,
            model,
            version,
            arm,
            entity,
            rows: rest,
        })
    }

    fn ts_ms(&self, k: u64) -> u64 {
        let at = k as usize * 16;
        u64::from_le_bytes(self.rows[at..at + 8].try_into().unwrap())
    }

    fn newest_ts(&self) -> u64 {
        (0..self.n).map(|k| self.ts_ms(k)).max().unwrap_or(0)
    }

    /// Row `k` (id first + k), if the run has it.
    fn record(&self, k: u64) -> Option<PredictionRecord> {
        if k >= self.n {
            return None;
        }
        let at = k as usize * 16 + 8;
        Some(PredictionRecord {
            id: self.first + k,
            ts_ms: self.ts_ms(k),
            model: self.model.into(),
            version: self.version.into(),
            arm: self.arm.into(),
            entity: self.entity.into(),
            output: f64::from_le_bytes(self.rows[at..at + 8].try_into().unwrap()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn rec(id: u64, ts: u64, entity: &str, out: f64) -> PredictionRecord {
        PredictionRecord {
            id,
            ts_ms: ts,
            model: "m".into(),
            version: "1".into(),
            arm: "a".into(),
            entity: entity.into(),
            output: out,
        }
    }

    #[test]
    fn joins_by_id_and_by_entity_and_expires_after_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(10_000));
        let log = PredictionLog::open(dir.path(), 16 << 20, 5_000, clock.clone()).unwrap();
        log.insert(&[
            rec(1, 10_000, "", 0.0),
            rec(2, 10_000, "e1", 1.0),
            rec(3, 11_000, "e1", 2.0),
        ])
        .unwrap();
        assert_eq!(log.lookup(&FeedbackKey::RequestId(1)).unwrap().output, 0.0);
        let by = |ts| {
            log.lookup(&FeedbackKey::Entity {
                entity: "e1",
                ts_ms: ts,
            })
        };
        assert_eq!(by(10_500).unwrap().id, 2);
        assert_eq!(by(99_999).unwrap().id, 3);
        assert_eq!(by(9_000).unwrap_err().kind(), ErrorKind::UnknownRequestId);
        assert_eq!(
            log.lookup(&FeedbackKey::RequestId(9)).unwrap_err().kind(),
            ErrorKind::UnknownRequestId
        );
        assert_eq!(
            log.lookup(&FeedbackKey::Entity {
                entity: "",
                ts_ms: 1
            })
            .unwrap_err()
            .kind(),
            ErrorKind::InvalidInput
        );
        // Past the TTL a record is unknown even before the sweep, and the next insert sweeps it.
        clock.set_ms(15_500);
        assert_eq!(
            log.lookup(&FeedbackKey::RequestId(1)).unwrap_err().kind(),
            ErrorKind::UnknownRequestId
        );
        assert_eq!(log.lookup(&FeedbackKey::RequestId(3)).unwrap().id, 3);
        log.insert(&[rec(4, 15_500, "", 1.0)]).unwrap();
        assert_eq!(log.len().unwrap(), 2);
        assert_eq!(by(12_000).unwrap().id, 3);
    }

    #[test]
    fn malformed_runs_are_typed_errors() {
        let corrupt = |first, v: &[u8]| Run::decode(first, v).err().map(|e| e.kind());
        assert_eq!(corrupt(1, &[0; 3]), Some(ErrorKind::Corrupt));
        let rows = [rec(5, 1, "", 3.5), rec(6, 2, "", 4.5)];
        let rows: Vec<LogRow<'_>> = rows.iter().map(PredictionRecord::row).collect();
        let mut b = Vec::new();
        encode_run(&rows, &mut b);
        let run = Run::decode(5, &b).unwrap();
        assert_eq!(run.record(1).unwrap(), rec(6, 2, "", 4.5));
        assert_eq!(run.record(2), None);
        for cut in 0..b.len() {
            assert_eq!(corrupt(5, &b[..cut]), Some(ErrorKind::Corrupt), "{cut}");
        }
    }

    #[test]
    fn consecutive_ids_share_runs_and_each_row_keeps_its_own_stamp_and_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(10_000));
        let log = PredictionLog::open(dir.path(), 16 << 20, 5_000, clock.clone()).unwrap();
        // Two cores' blocks interleaved (ids 1.. and 5_000..), a version change inside the
        // first block, one row with an entity, and more rows than one run holds.
        let mut rows: Vec<PredictionRecord> = (1..=600u64)
            .map(|id| rec(id, 10_000 + id, "", id as f64))
            .chain((5_000..5_010u64).map(|id| rec(id, 12_000, "", -1.0)))
            .collect();
        rows[99].version = "2".into();
        rows[200].entity = "e9".into();
        log.insert(&rows).unwrap();
        assert_eq!(log.len().unwrap(), 610);
        assert_eq!(log.max_id().unwrap(), Some(5_009));
        for r in &rows {
            let got = log.lookup(&FeedbackKey::RequestId(r.id)).unwrap();
            assert_eq!(&got, r);
        }
        for id in [0, 601, 4_999, 5_010] {
            let e = log.lookup(&FeedbackKey::RequestId(id)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnknownRequestId, "{id}");
        }
        let by = log.lookup(&FeedbackKey::Entity {
            entity: "e9",
            ts_ms: 99_999,
        });
        assert_eq!(by.unwrap().id, 201);
        // Rows expire one by one at lookup; a run is swept once its newest row is past.
        clock.set_ms(15_300);
        let old = log.lookup(&FeedbackKey::RequestId(299)).unwrap_err();
        assert_eq!(old.kind(), ErrorKind::UnknownRequestId);
        assert_eq!(log.lookup(&FeedbackKey::RequestId(300)).unwrap().id, 300);
        log.insert(&[rec(9_000, 15_300, "", 0.0)]).unwrap();
        assert!(log.lookup(&FeedbackKey::RequestId(300)).is_ok());
        assert_eq!(
            log.lookup(&FeedbackKey::Entity {
                entity: "e9",
                ts_ms: 99_999
            })
            .unwrap_err()
            .kind(),
            ErrorKind::UnknownRequestId
        );
        assert!(log.len().unwrap() < 610);
        // A restart keeps the log, entity keys included.
        log.insert(&[rec(9_001, 15_300, "e7", 2.0)]).unwrap();
        drop(log);
        let log = PredictionLog::open(dir.path(), 16 << 20, 5_000, clock).unwrap();
        assert_eq!(log.max_id().unwrap(), Some(9_001));
        let by = log.lookup(&FeedbackKey::Entity {
            entity: "e7",
            ts_ms: 15_300,
        });
        assert_eq!(by.unwrap().output, 2.0);
    }
}
