//! Background TTL expiry: bounded batches on its own thread, so readers never wait on it
//! and the writer lock is held only briefly.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::FeatureStore;
use crate::FeatureError;

/// The clock, injected so tests are exact: milliseconds since the Unix epoch.
pub type Clock = fn() -> i64;

pub fn system_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One full sweep over the store in batches of `batch`; returns rows deleted.
pub fn sweep(
    store: &FeatureStore,
    now_ms: i64,
    ttl_ms: i64,
    batch: usize,
) -> Result<u64, FeatureError> {
    let mut cursor = None;
    let mut total = 0;
    loop {
        total += store.expire_step(now_ms, ttl_ms, batch, &mut cursor)? as u64;
        if cursor.is_none() {
            return Ok(total);
        }
        // Let a waiting writer or reader in between batches.
        std::thread::yield_now();
    }
}

/// The expiry thread; dropping it stops the thread.
pub struct Expiry {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Expiry {
    pub fn spawn(
        store: FeatureStore,
        ttl: Duration,
        interval: Duration,
        batch: usize,
        clock: Clock,
    ) -> Result<Expiry, FeatureError> {
        let (stop, rx) = mpsc::channel::<()>();
        let ttl_ms = ttl.as_millis() as i64;
        let thread = std::thread::Builder::new()
            .name("features-expiry".into())
            .spawn(move || loop {
                match rx.recv_timeout(interval) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                match sweep(&store, clock(), ttl_ms, batch) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "expired feature rows"),
                    Err(e) => tracing::warn!(error = %e, "feature expiry failed"),
                }
            })
            .map_err(|e| FeatureError::io("features-expiry thread", e))?;
        Ok(Expiry {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
