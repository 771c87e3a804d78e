//! The HTTP accept loop and connections: at most `http.max_connections` open (one more is
//! answered 503 and closed, so the backlog keeps draining), a back-off when the process is out
//! of file descriptors, hyper's header read timeout, an idle timeout for connections that
//! move no bytes with no request in progress, and a graceful drain on stop.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// After an accept error such as EMFILE, wait this long before the next accept: retrying at
/// once would spin (the error repeats until an fd is freed) and flood the log.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one accept-error line per this long; the others are counted in it.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Refusals being written at once; past it a refused connection is closed without an answer.
const MAX_REFUSING: usize = 64;
/// How long a refusal may take to write and to see the client's request off.
const REFUSE_TIMEOUT: Duration = Duration::from_millis(500);
/// A request head (and hyper's read buffer) is at most this large; larger heads get 431.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// On stop, requests in progress get this long to finish.
const DRAIN: Duration = Duration::from_secs(10);

/// The connection limits, from the `[http]` section.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_idle: Duration,
}

/// Connection counters for `/metrics`.
#[derive(Default)]
pub(crate) struct ConnStats {
    pub open: AtomicUsize,
    pub refused: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// Accepts until `stop` fires, then lets open connections finish (up to [`DRAIN`]).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: ConnLimits,
    stats: Arc<ConnStats>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (draining_tx, draining) = watch::channel(false);
    let mut errors = ErrorLog::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Relaxed);
                errors.note(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Relaxed);
            // Plain HTTP gets a 503 it can read; a TLS client would see only garbage.
            if tls.is_none() {
                if let Ok(p) = refusing.clone().try_acquire_owned() {
                    let max = limits.max_connections;
                    tokio::spawn(async move {
                        refuse(tcp, max).await;
                        drop(p);
                    });
                }
            }
            continue;
        };
        let (tls, router, stats, draining) =
            (tls.clone(), router.clone(), stats.clone(), draining.clone());
        tokio::spawn(async move {
            stats.open.fetch_add(1, Relaxed);
            match tls {
                None => connection(tcp, router, limits, draining).await,
                Some(acc) => {
                    if let Some(s) =
                        super::tls::handshake(&acc, tcp, peer, limits.header_read_timeout).await
                    {
                        connection(s, router, limits, draining).await;
                    }
                }
            }
            stats.open.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    let _ = draining_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "HTTP: {} connections still open after {DRAIN:?}; closing them",
            stats.open.load(Relaxed)
        );
    }
}

/// Rate-limited logging of accept errors.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn note(&mut self, e: &std::io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < ACCEPT_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        let fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        let more = std::mem::take(&mut self.suppressed);
        tracing::warn!(
            "HTTP accept failed: {e}{}; backing off {ACCEPT_BACKOFF:?} between tries ({more} more since the last report)",
            if fds { " (out of file descriptors)" } else { "" }
        );
        self.last = Some(now);
    }
}

/// A 503 for a connection over the limit, written without reading the request; then what the
/// client sent is read off for a moment so that closing does not reset the connection before
/// the client has seen the answer.
async fn refuse(mut tcp: TcpStream, max: usize) {
    let body = format!(
        "{{\"error\":\"too many HTTP connections (http.max_connections = {max}); retry shortly\"}}"
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 64usize << 10;
        while left > 0 {
            let n = tcp.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// One connection: HTTP/1.1 with keep-alive, until the client leaves, a timeout closes it,
/// or the server stops (then it finishes the request in progress).
async fn connection<I>(
    io: I,
    router: Router,
    limits: ConnLimits,
    mut draining: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = Tracked {
        inner: io,
        activity: activity.clone(),
    };
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut router = router.clone();
        let busy = Busy::new(act.clone());
        async move {
            let resp =
                tower_service::Service::call(&mut router, req.map(axum::body::Body::new)).await;
            drop(busy);
            resp
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut stopping = false;
    let idle = limits.keep_alive_idle;
    let mut check_at = activity.last() + idle;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("HTTP connection: {e}");
                }
                return;
            }
            _ = draining.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(check_at) => {
                let busy = activity.busy.load(Relaxed) > 0;
                if !busy && activity.last().elapsed() >= idle {
                    tracing::debug!("HTTP connection idle for {idle:?}: closing");
                    return;
                }
                // A request in progress: look again a whole period later (its end touches
                // the clock); otherwise when the last byte moved plus a period.
                check_at = if busy {
                    Instant::now() + idle
                } else {
                    activity.last() + idle
                };
            }
        }
    }
}

// === Activity ===

/// When a connection last moved a byte, and how many requests it has in progress.
struct Activity {
    base: Instant,
    /// Milliseconds after `base`.
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Relaxed))
    }
}

/// A request in progress on its connection (the idle timeout does not apply meanwhile: the
/// body has its own deadlines, and a slow model is not an idle client).
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Relaxed);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Relaxed);
    }
}

/// The connection's stream, noting every byte that moves.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
