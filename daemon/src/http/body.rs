//! Request bodies under one memory budget: the bytes of every body being received or handled
//! count against `http.body_budget_bytes`, a body must keep up a minimum rate and finish
//! before a deadline, and its memory goes back to the system the moment the request is done.
//!
//! Bodies at least [`MAPPED_FROM`] long live in their own anonymous mapping rather than on
//! the heap: glibc raises its mmap threshold after the first large free and then keeps such
//! buffers in the heap, where closing the connections did not give the memory back (803 MB
//! resident after 48 held 15 MiB uploads). A mapping is unmapped when the last reference to
//! the body drops, and its budget is returned at the same moment.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use memmap2::MmapMut;

use super::{ApiError, HttpState};

/// Bodies this long or longer get their own mapping; shorter ones are plain heap memory,
/// which malloc hands back for reuse (and small frees do not raise its mmap threshold).
pub(crate) const MAPPED_FROM: usize = 128 << 10;

/// Time a body gets before the minimum rate applies: a client may need a round trip or two
/// to start sending.
const RATE_GRACE: Duration = Duration::from_secs(1);

// === Budget ===

/// Request body bytes held over all connections, against one limit.
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes held now.
    pub fn in_use(&self) -> usize {
        self.used.load(Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(AcqRel, Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, AcqRel);
    }
}

/// The part of the budget one body holds; given back on drop.
struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Held {
    fn grow(&mut self, n: usize) -> bool {
        let ok = self.budget.try_take(n);
        if ok {
            self.bytes += n;
        }
        ok
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

// === Buffer ===

enum Storage {
    Heap(Vec<u8>),
    /// `len` bytes written at the front of the mapping; untouched pages cost no memory.
    Mapped {
        map: MmapMut,
        len: usize,
    },
}

/// A received body: its bytes and its share of the budget, freed together.
struct BodyBuf {
    storage: Storage,
    held: Held,
}

impl BodyBuf {
    /// Room for `cap` bytes (the declared length, or the most a chunked body may have).
    fn with_capacity(cap: usize, held: Held) -> std::io::Result<BodyBuf> {
        let storage = if cap >= MAPPED_FROM {
            Storage::Mapped {
                map: MmapMut::map_anon(cap)?,
                len: 0,
            }
        } else {
            Storage::Heap(Vec::with_capacity(cap))
        };
        Ok(BodyBuf { storage, held })
    }

    fn len(&self) -> usize {
        match &self.storage {
            Storage::Heap(v) => v.len(),
            Storage::Mapped { len, .. } => *len,
        }
    }

    /// Appends `data`; the caller has checked it fits the capacity.
    fn extend(&mut self, data: &[u8]) {
        match &mut self.storage {
            Storage::Heap(v) => v.extend_from_slice(data),
            Storage::Mapped { map, len } => {
                map[*len..*len + data.len()].copy_from_slice(data);
                *len += data.len();
            }
        }
    }
}

impl AsRef<[u8]> for BodyBuf {
    fn as_ref(&self) -> &[u8] {
        match &self.storage {
            Storage::Heap(v) => v,
            Storage::Mapped { map, len } => &map[..*len],
        }
    }
}

// === Reading ===

/// The limits one body is read under.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
    pub min_rate: u64,
}

impl BodyLimits {
    /// When the next bytes must have arrived, `received` bytes into a body begun at `start`:
    /// the overall deadline, or sooner if the client has fallen below the minimum rate.
    fn deadline(&self, start: tokio::time::Instant, received: usize) -> tokio::time::Instant {
        let hard = start + self.timeout;
        if self.min_rate == 0 {
            return hard;
        }
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        hard.min(start + RATE_GRACE + earned)
    }
}

/// Middleware for routes that take a body: reads it whole under the limits and the budget,
/// then hands the handler a request whose body is that one buffer.
pub(crate) async fn read_body(
    State(state): State<Arc<HttpState>>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, Body::empty())).await;
    }
    match receive(&state, body).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => {
            // The rest of the body is still on the wire: this connection cannot carry
            // another request.
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}

async fn receive(state: &HttpState, mut body: Body) -> Result<Bytes, ApiError> {
    let limits = state.body_limits;
    let declared = body.size_hint().exact();
    if let Some(n) = declared {
        if n > limits.max_bytes as u64 {
            return Err(too_large(limits.max_bytes));
        }
    }
    let cap = declared.map_or(limits.max_bytes, |n| n as usize);
    let held = Held {
        budget: state.budget.clone(),
        bytes: 0,
    };
    let mut buf = BodyBuf::with_capacity(cap, held).map_err(|e| {
        ApiError::unavailable(format!("no memory for a {cap}-byte request body: {e}"))
    })?;
    let start = tokio::time::Instant::now();
    loop {
        let received = buf.len();
        let deadline = limits.deadline(start, received);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "request body too slow: {received} bytes in {:.1} s (http.body_read_timeout_ms = {}, http.body_min_rate_bytes_per_s = {})",
                        start.elapsed().as_secs_f64(),
                        limits.timeout.as_millis(),
                        limits.min_rate
                    ),
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!(
                    "reading the request body: {e}"
                )))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if received + data.len() > cap {
            return Err(too_large(limits.max_bytes));
        }
        if !buf.held.grow(data.len()) {
            state.stats.budget_refused();
            return Err(ApiError::unavailable(format!(
                "too many request body bytes in flight (http.body_budget_bytes = {}); retry shortly",
                state.budget.limit()
            ))
            .retry_after(1));
        }
        buf.extend(&data);
    }
    Ok(Bytes::from_owner(buf))
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body exceeds the length limit of {max} bytes (http.max_body_bytes)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_what_would_exceed_it_and_returns_on_drop() {
        let b = Budget::new(100);
        let mut one = Held {
            budget: b.clone(),
            bytes: 0,
        };
        let mut two = Held {
            budget: b.clone(),
            bytes: 0,
        };
        assert!(one.grow(60));
        assert!(!two.grow(41), "60 + 41 > 100");
        assert!(two.grow(40));
        assert_eq!(b.in_use(), 100);
        drop(one);
        assert_eq!(b.in_use(), 40);
        assert!(two.grow(60));
        drop(two);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn a_mapped_body_gives_its_budget_back_with_its_bytes() {
        let b = Budget::new(1 << 30);
        let mut held = Held {
            budget: b.clone(),
            bytes: 0,
        };
        assert!(held.grow(MAPPED_FROM + 3));
        let mut buf = BodyBuf::with_capacity(MAPPED_FROM + 3, held).unwrap();
        assert!(matches!(buf.storage, Storage::Mapped { .. }));
        buf.extend(&[1; MAPPED_FROM]);
        buf.extend(&[2, 3, 4]);
        let bytes = Bytes::from_owner(buf);
        assert_eq!(bytes.len(), MAPPED_FROM + 3);
        assert_eq!(&bytes[MAPPED_FROM..], [2, 3, 4]);
        let tail = bytes.slice(MAPPED_FROM..);
        drop(bytes);
        assert_eq!(b.in_use(), MAPPED_FROM + 3, "a slice still holds the body");
        drop(tail);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn the_deadline_follows_the_minimum_rate_up_to_the_timeout() {
        let l = BodyLimits {
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(10),
            min_rate: 1000,
        };
        let t0 = tokio::time::Instant::now();
        assert_eq!(l.deadline(t0, 0), t0 + Duration::from_secs(1));
        assert_eq!(l.deadline(t0, 2000), t0 + Duration::from_secs(3));
        assert_eq!(l.deadline(t0, 1 << 20), t0 + Duration::from_secs(10));
        let no_rate = BodyLimits { min_rate: 0, ..l };
        assert_eq!(no_rate.deadline(t0, 0), t0 + Duration::from_secs(10));
    }
}
