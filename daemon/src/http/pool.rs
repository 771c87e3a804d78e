//! The HTTP inference pool: `http.infer_threads` threads, each with its own engine sessions,
//! fed by a queue of `http.infer_queue` requests. Parsing, decoding and running a model
//! happen there, so the HTTP thread only moves bytes and `/healthz` and `/metrics` answer
//! while a model is slow. A full queue is answered 503 with `Retry-After` at once.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use axum::http::StatusCode;

use super::infer::SessionCache;
use super::ApiError;

type Job = Box<dyn FnOnce(&mut SessionCache) + Send>;

pub(crate) struct InferPool {
    queue: Mutex<Option<SyncSender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    queue_depth: usize,
    /// Requests refused because the queue was full.
    pub refused: AtomicU64,
    /// Requests running on a pool thread now.
    pub running: Arc<AtomicUsize>,
}

impl InferPool {
    pub fn start(threads: usize, queue_depth: usize) -> std::io::Result<Arc<InferPool>> {
        let (tx, rx) = mpsc::sync_channel::<Job>(queue_depth);
        let rx = Arc::new(Mutex::new(rx));
        let running = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let (rx, running) = (rx.clone(), running.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("edgeinfer-http-infer-{i}"))
                    .spawn(move || work(&rx, &running))?,
            );
        }
        Ok(Arc::new(InferPool {
            queue: Mutex::new(Some(tx)),
            threads: Mutex::new(handles),
            queue_depth,
            refused: AtomicU64::new(0),
            running,
        }))
    }

    /// Runs `f` on a pool thread with that thread's sessions and waits for its answer
    /// without blocking the HTTP thread.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SessionCache) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        self.submit(f)?.await.map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the inference thread failed on this request",
            )
        })
    }

    /// Queues `f`, or refuses at once when the queue is full.
    fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SessionCache) -> R + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<R>, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |cache| {
            // The client went away while this waited: nobody reads the answer.
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(f(cache));
        });
        let sent = match &*self.queue.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(q) => q.try_send(job),
            None => return Err(ApiError::unavailable("the HTTP server is shutting down")),
        };
        match sent {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                self.refused.fetch_add(1, Relaxed);
                Err(ApiError::unavailable(format!(
                    "inference queue full (http.infer_queue = {}); retry shortly",
                    self.queue_depth
                ))
                .retry_after(1))
            }
            Err(TrySendError::Disconnected(_)) => {
                Err(ApiError::unavailable("the HTTP server is shutting down"))
            }
        }
    }

    /// Refuses new work, lets the threads finish what is queued, and joins them.
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>, running: &AtomicUsize) {
    let mut cache = SessionCache::default();
    loop {
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = job else {
            return; // closed and drained
        };
        running.fetch_add(1, Relaxed);
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut cache)));
        running.fetch_sub(1, Relaxed);
        if ran.is_err() {
            // A session that panicked mid-run may be in any state: start afresh.
            tracing::error!("HTTP inference panicked; dropping this thread's sessions");
            cache = SessionCache::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_full_queue_is_refused_with_retry_after_and_queued_work_still_runs() {
        let pool = InferPool::start(1, 1).unwrap();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        // One job holds the only thread until the gate opens, one waits in the queue…
        let first = pool
            .submit(move |_| {
                started_tx.send(()).unwrap();
                gate_rx.recv().unwrap();
                1
            })
            .unwrap();
        started_rx.recv().unwrap();
        let second = pool.submit(|_| 2).unwrap();
        // …so a third is refused at once.
        let e = pool.submit(|_| 3).unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after_s, Some(1));
        assert!(e.message.contains("http.infer_queue = 1"), "{}", e.message);
        assert_eq!(pool.refused.load(Relaxed), 1);
        gate_tx.send(()).unwrap();
        assert_eq!(block_on(first).unwrap(), 1);
        assert_eq!(block_on(second).unwrap(), 2);
        pool.close();
        let e = block_on(pool.run(|_| 4)).unwrap_err();
        assert!(e.message.contains("shutting down"), "{}", e.message);
    }

    #[test]
    fn a_panicking_job_is_a_500_and_the_thread_lives_on() {
        let pool = InferPool::start(1, 4).unwrap();
        let e = block_on(pool.run(|_| -> u8 { panic!("boom") })).unwrap_err();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(block_on(pool.run(|_| 7)).unwrap(), 7);
        pool.close();
    }
}
