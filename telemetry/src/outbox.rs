//! The durable outbox: every telemetry message is committed to LMDB before the MQTT task
//! may send it, and deleted only after its PUBACK. It is the truth; the broker connection is
//! a transport (a reboot or an outage loses nothing that was committed here).
//!
//! Drop policy (documented in `docs/telemetry.md`): the outbox is bounded by bytes and by
//! age. On each append, messages older than `max_age` are dropped first, then the oldest
//! messages until the new ones fit under `max_bytes`; a single message larger than the whole
//! bound is refused. Every drop is counted by reason, and the caller turns a non-zero count
//! into an `outbox_overflow` event (which is itself a new message, so it survives).

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions};
use serde::Serialize;

use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};

type Key = U64<BigEndian>;
const FORMAT: u8 = 1;
const NEXT_SEQ: &str = "next_seq";

/// The bounds of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    pub max_bytes: u64,
    pub max_age_ms: u64,
}

/// A message to publish, before it has a sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub topic: String,
    pub retain: bool,
    /// MQTT 5 user properties (model, version, schema).
    pub user_properties: Vec<(String, String)>,
    /// A JSON object; `seq` and `ts` are set on append.
    pub payload: serde_json::Map<String, serde_json::Value>,
}

/// A committed message, as replayed to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Per-device, strictly increasing across restarts: the consumer's dedup key.
    pub seq: u64,
    /// When the message was made (ms since the epoch): kept through any outage.
    pub created_ms: u64,
    pub topic: String,
    pub retain: bool,
    pub user_properties: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// What an append dropped to stay within the bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub by_age: u64,
    pub by_bytes: u64,
    /// New messages refused because each alone exceeds `max_bytes`.
    pub too_large: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.by_age + self.by_bytes + self.too_large
    }
}

/// Counters, read by `/metrics` and the status message.
#[derive(Debug, Default, Serialize)]
pub struct OutboxStats {
    pub appended: AtomicU64,
    pub acked: AtomicU64,
    pub dropped_age: AtomicU64,
    pub dropped_bytes: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub corrupt: AtomicU64,
    pub bytes: AtomicU64,
    pub len: AtomicU64,
}

/// The LMDB outbox. `Send + Sync`: the producer and the MQTT task share one.
pub struct Outbox {
    env: Env,
    msgs: Database<'static, Key, Bytes>,
    meta: Database<'static, Str, Key>,
    limits: OutboxLimits,
    clock: Arc<dyn Clock>,
    stats: OutboxStats,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.env.path())
            .field("limits", &self.limits)
            .finish()
    }
}

impl Outbox {
    /// Opens (creating) the outbox in `dir`; counts what a previous run left.
    pub fn open(dir: &Path, limits: OutboxLimits, clock: Arc<dyn Clock>) -> Result<Outbox> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::store(&format!("creating {}", dir.display()), e))?;
        // Room for the bound plus LMDB's page overhead and free pages; the file is sparse.
        let map = (limits.max_bytes.saturating_mul(4)).max(64 << 20) as usize;
        let env = unsafe { EnvOpenOptions::new().map_size(map).max_dbs(4).open(dir) }
            .map_err(|e| Error::store(&format!("opening outbox {}", dir.display()), e))?;
        let wtxn = env.write_txn().map_err(|e| Error::store("outbox txn", e))?;
        let (msgs, meta) = env
            .create_databases_and_commit(wtxn, |dbo, wtxn| {
                let m = dbo.create_database::<Key, Bytes>(wtxn, Some("messages"))?;
                let t = dbo.create_database::<Str, Key>(wtxn, Some("meta"))?;
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit((m, t)))
            })
            .map_err(|e| Error::store("outbox databases", e))?
            .unwrap_commit();
        let outbox = Outbox {
            env,
            msgs,
            meta,
            limits,
            clock,
            stats: OutboxStats::default(),
        };
        let rtxn = outbox.rtxn()?;
        let (mut n, mut bytes) = (0u64, 0u64);
        for item in outbox
            .msgs
            .iter(&rtxn)
            .map_err(|e| Error::store("outbox scan", e))?
        {
            let (_, v) = item.map_err(|e| Error::store("outbox scan", e))?;
            n += 1;
            bytes += entry_bytes(v.len());
        }
        drop(rtxn);
        outbox.stats.len.store(n, Relaxed);
        outbox.stats.bytes.store(bytes, Relaxed);
        Ok(outbox)
    }

    pub fn stats(&self) -> &OutboxStats {
        &self.stats
    }

    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    fn rtxn(&self) -> Result<heed::RoTxn<'_, heed::WithTls>> {
        self.env
            .read_txn()
            .map_err(|e| Error::store("outbox read txn", e))
    }

    /// Commits `batch` in one transaction (one fsync), applying the drop policy first.
    /// Returns the sequence numbers given and what was dropped.
    pub fn append(&self, batch: Vec<NewMessage>) -> Result<(Vec<u64>, Dropped)> {
        let now = self.clock.now_ms();
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(|e| Error::store("outbox txn", e))?;
        let mut seq = self
            .meta
            .get(&wtxn, NEXT_SEQ)
            .map_err(|e| Error::store("outbox meta", e))?
            .unwrap_or(1);
        let mut encoded = Vec::with_capacity(batch.len());
        let mut dropped = Dropped::default();
        for mut m in batch {
            m.payload.insert("seq".into(), seq.into());
            m.payload.insert("ts".into(), now.into());
            let body = serde_json::to_vec(&m.payload)
                .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("payload: {e}")))?;
            let rec = StoredMessage {
                seq,
                created_ms: now,
                topic: m.topic,
                retain: m.retain,
                user_properties: m.user_properties,
                payload: body,
            };
            let bytes = encode(&rec);
            if entry_bytes(bytes.len()) > self.limits.max_bytes {
                dropped.too_large += 1;
                continue;
            }
            encoded.push((seq, bytes));
            seq += 1;
        }
        let incoming: u64 = encoded.iter().map(|(_, b)| entry_bytes(b.len())).sum();
        // Counters move by deltas: the MQTT task deletes concurrently, after its own commit.
        let mut bytes = self.stats.bytes.load(Relaxed);
        let (mut freed, mut removed) = (0u64, 0u64);
        let cutoff = now.saturating_sub(self.limits.max_age_ms);
        loop {
            let first = self
                .msgs
                .first(&wtxn)
                .map_err(|e| Error::store("outbox first", e))?
                .map(|(k, v)| (k, v.len(), decode_created(v)));
            let Some((k, vlen, created)) = first else {
                break;
            };
            let old = created.is_some_and(|c| c < cutoff);
            let over = bytes + incoming > self.limits.max_bytes;
            if !old && !over {
                break;
            }
            self.msgs
                .delete(&mut wtxn, &k)
                .map_err(|e| Error::store("outbox drop", e))?;
            bytes -= entry_bytes(vlen).min(bytes);
            freed += entry_bytes(vlen);
            removed += 1;
            if old {
                dropped.by_age += 1;
            } else {
                dropped.by_bytes += 1;
            }
        }
        let mut seqs = Vec::with_capacity(encoded.len());
        for (s, b) in &encoded {
            self.msgs
                .put(&mut wtxn, s, b)
                .map_err(|e| Error::store("outbox put", e))?;
            seqs.push(*s);
        }
        self.meta
            .put(&mut wtxn, NEXT_SEQ, &seq)
            .map_err(|e| Error::store("outbox meta", e))?;
        wtxn.commit()
            .map_err(|e| Error::store("outbox commit", e))?;
        sub(&self.stats.bytes, freed);
        self.stats.bytes.fetch_add(incoming, Relaxed);
        sub(&self.stats.len, removed);
        self.stats.len.fetch_add(seqs.len() as u64, Relaxed);
        self.stats.appended.fetch_add(seqs.len() as u64, Relaxed);
        self.stats.dropped_age.fetch_add(dropped.by_age, Relaxed);
        self.stats
            .dropped_bytes
            .fetch_add(dropped.by_bytes, Relaxed);
        self.stats
            .dropped_too_large
            .fetch_add(dropped.too_large, Relaxed);
        Ok((seqs, dropped))
    }

    /// Up to `limit` messages after `after` (all from the oldest when `None`), in order.
    /// A record that does not decode is deleted and counted, never replayed.
    pub fn next_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<StoredMessage>> {
        let rtxn = self.rtxn()?;
        let range = (
            after.map_or(Bound::Unbounded, Bound::Excluded),
            Bound::Unbounded,
        );
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        for item in self
            .msgs
            .range(&rtxn, &range)
            .map_err(|e| Error::store("outbox range", e))?
        {
            let (k, v) = item.map_err(|e| Error::store("outbox range", e))?;
            match decode(k, v) {
                Ok(m) => out.push(m),
                Err(_) => corrupt.push(k),
            }
            if out.len() >= limit {
                break;
            }
        }
        drop(rtxn);
        if !corrupt.is_empty() {
            self.stats.corrupt.fetch_add(corrupt.len() as u64, Relaxed);
            self.delete(&corrupt)?;
        }
        Ok(out)
    }

    /// Deletes acknowledged messages (one transaction); unknown sequence numbers are ignored.
    pub fn delete(&self, seqs: &[u64]) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(|e| Error::store("outbox txn", e))?;
        let mut freed = 0u64;
        let mut n = 0u64;
        for s in seqs {
            if let Some(v) = self
                .msgs
                .get(&wtxn, s)
                .map_err(|e| Error::store("outbox get", e))?
            {
                freed += entry_bytes(v.len());
                self.msgs
                    .delete(&mut wtxn, s)
                    .map_err(|e| Error::store("outbox delete", e))?;
                n += 1;
            }
        }
        wtxn.commit()
            .map_err(|e| Error::store("outbox commit", e))?;
        sub(&self.stats.bytes, freed);
        sub(&self.stats.len, n);
        self.stats.acked.fetch_add(n, Relaxed);
        Ok(n)
    }

    /// Returns the durable counter `name` (0 the first time) and stores it plus one, in one
    /// committed transaction: the Sparkplug profile takes its bdSeq from here before each
    /// CONNECT, so a restart continues the sequence instead of reusing a number.
    pub fn take_counter(&self, name: &str) -> Result<u64> {
        let key = format!("counter/{name}");
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(|e| Error::store("outbox txn", e))?;
        let v = self
            .meta
            .get(&wtxn, &key)
            .map_err(|e| Error::store("outbox meta", e))?
            .unwrap_or(0);
        self.meta
            .put(&mut wtxn, &key, &(v + 1))
            .map_err(|e| Error::store("outbox meta", e))?;
        wtxn.commit()
            .map_err(|e| Error::store("outbox commit", e))?;
        Ok(v)
    }

    /// Messages held now.
    pub fn len(&self) -> u64 {
        self.stats.len.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Saturating atomic subtraction (a counter never wraps below zero).
fn sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
}

/// Bytes an entry is charged: value plus key and a node header, so the bound tracks disk.
fn entry_bytes(value_len: usize) -> u64 {
    value_len as u64 + 8 + 16
}

// === record format ===
// u8 format | u64 created_ms | u8 retain | u16 topic len, topic | u8 n props,
// (u16 len, key, u16 len, value)* | payload. Little-endian.

fn encode(m: &StoredMessage) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + m.topic.len() + m.payload.len());
    b.push(FORMAT);
    b.extend_from_slice(&m.created_ms.to_le_bytes());
    b.push(m.retain as u8);
    put_str(&mut b, &m.topic);
    b.push(m.user_properties.len().min(255) as u8);
    for (k, v) in m.user_properties.iter().take(255) {
        put_str(&mut b, k);
        put_str(&mut b, v);
    }
    b.extend_from_slice(&m.payload);
    b
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.extend_from_slice(&(s.len() as u16).to_le_bytes());
    b.extend_from_slice(s);
}

fn decode_created(v: &[u8]) -> Option<u64> {
    (v.len() >= 9 && v[0] == FORMAT).then(|| u64::from_le_bytes(v[1..9].try_into().unwrap()))
}

fn decode(seq: u64, v: &[u8]) -> Result<StoredMessage> {
    let bad = || {
        Error::new(
            ErrorKind::Corrupt,
            format!("outbox record {seq} is malformed"),
        )
    };
    let mut r = Reader(v);
    if r.take(1).ok_or_else(bad)?[0] != FORMAT {
        return Err(bad());
    }
    let created_ms = u64::from_le_bytes(r.take(8).ok_or_else(bad)?.try_into().unwrap());
    let retain = r.take(1).ok_or_else(bad)?[0] != 0;
    let topic = r.string().ok_or_else(bad)?;
    let n = r.take(1).ok_or_else(bad)?[0];
    let mut user_properties = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let k = r.string().ok_or_else(bad)?;
        let v = r.string().ok_or_else(bad)?;
        user_properties.push((k, v));
    }
    Ok(StoredMessage {
        seq,
        created_ms,
        topic,
        retain,
        user_properties,
        payload: r.0.to_vec(),
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn string(&mut self) -> Option<String> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn msg(topic: &str, n: usize) -> NewMessage {
        let mut payload = serde_json::Map::new();
        payload.insert("pad".into(), "x".repeat(n).into());
        NewMessage {
            topic: topic.into(),
            retain: false,
            user_properties: vec![("schema".into(), "edgeinfer.events/1".into())],
            payload,
        }
    }

    fn open(dir: &Path, max_bytes: u64, clock: Arc<ManualClock>) -> Outbox {
        let limits = OutboxLimits {
            max_bytes,
            max_age_ms: 60_000,
        };
        Outbox::open(dir, limits, clock).unwrap()
    }

    #[test]
    fn counters_start_at_zero_and_continue_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let ob = open(dir.path(), 1 << 20, clock.clone());
        assert_eq!(ob.take_counter("bd_seq").unwrap(), 0);
        assert_eq!(ob.take_counter("bd_seq").unwrap(), 1);
        assert_eq!(ob.take_counter("other").unwrap(), 0);
        drop(ob);
        let ob = open(dir.path(), 1 << 20, clock);
        assert_eq!(ob.take_counter("bd_seq").unwrap(), 2);
        // Counters are metadata: they are not messages and never replayed.
        assert!(ob.next_after(None, 10).unwrap().is_empty());
    }

    #[test]
    fn messages_replay_in_order_and_survive_reopen_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let ob = open(dir.path(), 1 << 20, clock.clone());
        let (seqs, d) = ob
            .append((0..5).map(|i| msg(&format!("t/{i}"), 10)).collect())
            .unwrap();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(d.total(), 0);
        ob.delete(&[1, 3]).unwrap();
        drop(ob);
        clock.advance_ms(5);
        let ob = open(dir.path(), 1 << 20, clock.clone());
        assert_eq!(ob.len(), 3);
        let all = ob.next_after(None, 100).unwrap();
        let got: Vec<(u64, &str)> = all.iter().map(|m| (m.seq, m.topic.as_str())).collect();
        assert_eq!(got, [(2, "t/1"), (4, "t/3"), (5, "t/4")]);
        assert_eq!(all[0].created_ms, 1_000, "the original timestamp is kept");
        let p: serde_json::Value = serde_json::from_slice(&all[0].payload).unwrap();
        assert_eq!(
            (p["seq"].as_u64(), p["ts"].as_u64()),
            (Some(2), Some(1_000))
        );
        assert_eq!(all[0].user_properties[0].0, "schema");
        assert_eq!(ob.next_after(Some(2), 1).unwrap()[0].seq, 4);
        // Sequence numbers keep rising after a restart even when the outbox was emptied.
        ob.delete(&[2, 4, 5]).unwrap();
        assert!(ob.is_empty());
        assert_eq!(ob.append(vec![msg("t", 1)]).unwrap().0, [6]);
    }

    #[test]
    fn byte_bound_drops_oldest_first_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(0));
        let ob = open(dir.path(), 4_000, clock);
        for _ in 0..10 {
            ob.append(vec![msg("t", 900)]).unwrap();
        }
        let left: Vec<u64> = ob
            .next_after(None, 100)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert!(ob.stats().bytes.load(Relaxed) <= 4_000);
        assert_eq!(
            left,
            (11 - left.len() as u64..=10).collect::<Vec<_>>(),
            "newest kept"
        );
        assert_eq!(
            ob.stats().dropped_bytes.load(Relaxed),
            10 - left.len() as u64
        );
        let (s, d) = ob.append(vec![msg("t", 5_000)]).unwrap();
        assert!(s.is_empty());
        assert_eq!(d.too_large, 1);
    }

    #[test]
    fn age_bound_drops_old_messages_on_append() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(0));
        let ob = open(dir.path(), 1 << 20, clock.clone());
        ob.append(vec![msg("a", 1), msg("b", 1)]).unwrap();
        clock.advance_ms(30_000);
        ob.append(vec![msg("c", 1)]).unwrap();
        clock.advance_ms(40_000);
        let (_, d) = ob.append(vec![msg("d", 1)]).unwrap();
        assert_eq!(d.by_age, 2);
        let topics: Vec<String> = ob
            .next_after(None, 9)
            .unwrap()
            .into_iter()
            .map(|m| m.topic)
            .collect();
        assert_eq!(topics, ["c", "d"]);
    }

    #[test]
    fn malformed_records_are_counted_and_skipped() {
        assert_eq!(decode(1, &[9, 9]).unwrap_err().kind(), ErrorKind::Corrupt);
        assert_eq!(
            decode(1, &[FORMAT, 0, 0]).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
        let m = StoredMessage {
            seq: 3,
            created_ms: 77,
            topic: "a/b".into(),
            retain: true,
            user_properties: vec![("k".into(), "v".into())],
            payload: b"{}".to_vec(),
        };
        let b = encode(&m);
        assert_eq!(decode(3, &b).unwrap(), m);
        for cut in 0..b.len() - 2 {
            assert!(decode(3, &b[..cut]).is_err(), "truncated at {cut}");
        }
    }
}
