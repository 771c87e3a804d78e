//! The prediction log: each served prediction's id, output, model version and A/B arm
//! (and entity, for PREDICT_BY_ENTITY), kept in LMDB for a TTL so that FEEDBACK can join
//! the true label to it later. Written in batches from the control thread, never from a core.

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

/// The LMDB prediction log.
pub struct PredictionLog {
    env: Env,
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
                let a = dbo.create_database::<U64<BigEndian>, Bytes>(wtxn, Some("by_id"))?;
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
        for r in batch {
            encode_into(r, &mut buf);
            self.by_id
                .put(&mut wtxn, &r.id, &buf)
                .map_err(|e| Error::store("prediction log put", e))?;
            if !r.entity.is_empty() {
                self.by_entity
                    .put(&mut wtxn, &entity_key(r.entity, r.ts_ms, r.id), &())
                    .map_err(|e| Error::store("prediction log put", e))?;
            }
        }
        let cutoff = self.clock.now_ms().saturating_sub(self.ttl_ms);
        self.expire_in(&mut wtxn, |r| r.ts_ms < cutoff, usize::MAX)?;
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

    fn expire_in(
        &self,
        wtxn: &mut heed::RwTxn<'_>,
        old: impl Fn(&PredictionRecord) -> bool,
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
            let rec = decode(id, v);
            match rec {
                Ok(r) if !old(&r) => break,
                Ok(r) if !r.entity.is_empty() => {
                    self.by_entity
                        .delete(wtxn, &entity_key(&r.entity, r.ts_ms, r.id))
                        .map_err(|e| Error::store("prediction log delete", e))?;
                }
                _ => {}
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
            FeedbackKey::RequestId(id) => self
                .by_id
                .get(&rtxn, id)
                .map_err(|e| Error::store("prediction log get", e))?
                .map(|v| decode(*id, v))
                .transpose()?,
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
                        self.by_id
                            .get(&rtxn, &id)
                            .map_err(|e| Error::store("prediction log get", e))?
                            .map(|v| decode(id, v))
                            .transpose()?
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

    /// The highest id logged (ids only grow, so a restart continues above it).
    pub fn max_id(&self) -> Result<Option<u64>> {
        let rtxn = self
            .env
            .read_txn()
            .map_err(|e| Error::store("prediction log read", e))?;
        Ok(self
            .by_id
            .last(&rtxn)
            .map_err(|e| Error::store("prediction log last", e))?
            .map(|(id, _)| id))
    }

    pub fn len(&self) -> Result<u64> {
        let rtxn = self
            .env
            .read_txn()
            .map_err(|e| Error::store("prediction log read", e))?;
        self.by_id
            .len(&rtxn)
            .map_err(|e| Error::store("prediction log len", e))
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

// u64 ts | f64 output | 4 × (u16 len, bytes): model, version, arm, entity. Little-endian.
fn encode_into(r: &LogRow<'_>, b: &mut Vec<u8>) {
    b.clear();
    b.extend_from_slice(&r.ts_ms.to_le_bytes());
    b.extend_from_slice(&r.output.to_le_bytes());
    for s in [r.model, r.version, r.arm, r.entity] {
        let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        b.extend_from_slice(&(s.len() as u16).to_le_bytes());
        b.extend_from_slice(s);
    }
}

#[cfg(test)]
fn encode(r: &PredictionRecord) -> Vec<u8> {
    let mut b = Vec::new();
    encode_into(&r.row(), &mut b);
    b
}

fn decode(id: u64, v: &[u8]) -> Result<PredictionRecord> {
    let bad = || {
        Error::new(
            ErrorKind::Corrupt,
            format!("prediction log record {id} is malformed"),
        )
    };
    if v.len() < 16 {
        return Err(bad());
    }
    let ts_ms = u64::from_le_bytes(v[..8].try_into().unwrap());
    let output = f64::from_le_bytes(v[8..16].try_into().unwrap());
    let mut rest = &v[16..];
    let mut strs = Vec::with_capacity(4);
    for _ in 0..4 {
        if rest.len() < 2 {
            return Err(bad());
        }
        let n = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let s = rest.get(2..2 + n).ok_or_else(bad)?;
        strs.push(String::from_utf8(s.to_vec()).map_err(|_| bad())?);
        rest = &rest[2 + n..];
    }
    let entity = strs.pop().unwrap_or_default();
    let arm = strs.pop().unwrap_or_default();
    let version = strs.pop().unwrap_or_default();
    let model = strs.pop().unwrap_or_default();
    Ok(PredictionRecord {
        id,
        ts_ms,
        model,
        version,
        arm,
        entity,
        output,
    })
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
    fn malformed_records_are_typed_errors() {
        assert_eq!(decode(1, &[0; 3]).unwrap_err().kind(), ErrorKind::Corrupt);
        let b = encode(&rec(5, 1, "ent", 3.5));
        assert_eq!(decode(5, &b).unwrap(), rec(5, 1, "ent", 3.5));
        for cut in 0..b.len() {
            assert!(decode(5, &b[..cut]).is_err());
        }
    }
}
