//! One client connection: a reader that cuts frames out of pooled aligned buffers and hands
//! them to the core, and a writer that sends answers as they are ready (in any order,
//! matched by request id) with vectored writes.
//!
//! Bounded by construction: at most `max_in_flight` admitted requests per connection, the
//! reader pauses while that many answers wait to be written (backpressure), a frame must
//! arrive whole within the read timeout while the server is reading, and a client that takes
//! no answer bytes for the write timeout is closed (the core's ticker checks all three;
//! docs/protocol.md §7.5 is the contract).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use edgeinfer_proto::{peek_request_id, ErrorCode, Header, Opcode, HEADER_LEN};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, Splitable};

use super::buf::{FrameBuf, READ_CHUNK};
use super::core::{Core, FrameAction, Job, Progress};
use super::notify::Notify;
use super::response::{Response, WriteBatch};

/// A PREDICT with at least this much tensor data is checked as soon as its metadata has
/// arrived (docs/protocol.md §8): refused then, its data is discarded as it comes instead of
/// being buffered whole. Smaller frames are checked whole, as reading them costs little, and
/// the early check's decoding allocates (the allocation test holds steady-state requests to
/// none that grows with the tensor).
const EARLY_CHECK_DATA: u64 = 4 << 20;

/// A reader that ran this many requests inline, each read short and none of them waiting,
/// yields anyway: a client that keeps its bytes coming must not keep its core to itself.
const INLINE_STREAK: usize = 16;

/// Why the server ended a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kill {
    /// A frame did not arrive whole within the read timeout (slow-loris).
    SlowFrame,
    Idle,
    /// The client stopped reading answers.
    StalledWriter,
    /// Writing failed: the client is gone.
    WriteFailed,
    /// Shutdown's grace period ran out.
    Shutdown,
}

pub(crate) struct Conn {
    pub core: Rc<Core>,
    fd: RawFd,
    /// False once the socket is closed, so the fd number (possibly reused) is never touched.
    fd_open: Cell<bool>,
    out: RefCell<VecDeque<Response>>,
    /// The write batch while no write is in flight (the writer task's, lent to the reader
    /// for an inline write); `None` while the writer has it in the kernel. Answers an
    /// inline write left unsent stay in it for the writer, ahead of `out`.
    batch: Cell<Option<WriteBatch>>,
    /// The reader is handling frames: answers pushed meanwhile wait for its flush (one
    /// write for all of them, made inline when the writer is idle) instead of waking the
    /// writer task one by one.
    defer: Cell<bool>,
    writer_wake: Notify,
    reader_wake: Notify,
    in_flight: Cell<usize>,
    reading_done: Cell<bool>,
    /// Answers are dropped from here on (client gone or connection killed).
    broken: Cell<bool>,
    killed: Cell<Option<Kill>>,
    /// When the first byte of a frame not yet complete arrived (restarted when the reader
    /// resumes after backpressure: the wait was the server's, not the client's).
    partial_since: Cell<Option<Instant>>,
    /// The reader is paused for backpressure: the read timeout does not run.
    paused: Cell<bool>,
    last_activity: Cell<Instant>,
    /// While answers are being written: when the client last took some of their bytes.
    write_progress: Cell<Option<Instant>>,
    /// HELLO with the right token was received (or no token is configured).
    pub authenticated: Cell<bool>,
    /// This connection's admitted jobs waiting for the executor (not batched), in order.
    pub lane: RefCell<VecDeque<Job>>,
    /// A large job between two of its chunks: it runs on before the lane's next job.
    pub resume: RefCell<Option<(Job, Progress)>>,
}

impl Conn {
    fn new(core: Rc<Core>, fd: RawFd) -> Conn {
        let authenticated = core.shared.token.is_none();
        Conn {
            core,
            fd,
            fd_open: Cell::new(true),
            out: RefCell::new(VecDeque::new()),
            batch: Cell::new(Some(WriteBatch::new())),
            defer: Cell::new(false),
            writer_wake: Notify::default(),
            reader_wake: Notify::default(),
            in_flight: Cell::new(0),
            reading_done: Cell::new(false),
            broken: Cell::new(false),
            killed: Cell::new(None),
            partial_since: Cell::new(None),
            paused: Cell::new(false),
            last_activity: Cell::new(Instant::now()),
            write_progress: Cell::new(None),
            authenticated: Cell::new(authenticated),
            lane: RefCell::new(VecDeque::new()),
            resume: RefCell::new(None),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    pub fn is_broken(&self) -> bool {
        self.broken.get()
    }

    pub fn job_started(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    pub fn job_finished(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        if self.reading_done.get() && self.in_flight.get() == 0 {
            self.writer_wake.notify();
        }
    }

    /// Queues an answer for writing (or drops it if nobody will read it).
    pub fn push(&self, r: Response) {
        if self.broken.get() {
            self.core.recycle(r);
            return;
        }
        self.out.borrow_mut().push_back(r);
        if !self.defer.get() {
            self.writer_wake.notify();
        }
    }

    /// Sends the answers queued while the reader deferred them. When the writer is idle
    /// and nothing is left over, the reader writes them itself with one non-blocking
    /// `sendmsg` (no hop to the writer task and back, so a request at concurrency 1 costs
    /// one task wake-up); whatever the socket does not take at once, and every answer while
    /// a write is in flight, goes to the writer task, in order.
    fn flush_deferred(&self, now: Instant) {
        self.defer.set(false);
        if self.out.borrow().is_empty() {
            return;
        }
        let fd = match self.raw_fd() {
            Some(fd) if self.core.inline_writes && !self.broken.get() => fd,
            _ => return self.writer_wake.notify(),
        };
        let Some(mut batch) = self.batch.take() else {
            // A write is in flight: the writer takes these next.
            return self.writer_wake.notify();
        };
        if !batch.is_empty() {
            self.batch.set(Some(batch));
            return self.writer_wake.notify();
        }
        batch.fill(&mut self.out.borrow_mut());
        let done = match batch.send_now(fd) {
            Ok(n) => batch.advance(n),
            // Full (EAGAIN) or failing: the writer waits for room, or meets the error.
            Err(_) => false,
        };
        if done {
            batch.drain(|r| self.core.recycle(r));
            self.last_activity.set(now);
            self.batch.set(Some(batch));
            if !self.out.borrow().is_empty() {
                // More answers than one write takes.
                self.writer_wake.notify();
            }
        } else {
            // Answers wait for the client: the write timeout runs from now.
            self.write_progress.set(Some(now));
            self.batch.set(Some(batch));
            self.writer_wake.notify();
        }
    }

    /// Ends the connection from the server side: answers are dropped and both directions
    /// shut, which wakes a reader or writer blocked in the kernel.
    pub fn kill(&self, why: Kill) {
        if self.killed.get().is_none() {
            self.killed.set(Some(why));
            if matches!(why, Kill::SlowFrame | Kill::Idle | Kill::StalledWriter) {
                self.core
                    .shared
                    .stats
                    .connections_timed_out
                    .fetch_add(1, Relaxed);
            }
            tracing::debug!(?why, "closing a connection");
        }
        self.broken.set(true);
        if self.fd_open.get() {
            // SAFETY: the fd belongs to this live connection (fd_open).
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
        self.reader_wake.notify();
        self.writer_wake.notify();
    }

    /// Stops reading new requests (shutdown): queued ones are still answered.
    pub fn stop_reading(&self) {
        if self.fd_open.get() && !self.reading_done.get() {
            // SAFETY: as in `kill`.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RD) };
        }
        self.reader_wake.notify();
    }

    /// The ticker's check: is this connection too slow or idle?
    pub fn overdue(&self, now: Instant) -> Option<Kill> {
        let opts = self.core.opts();
        if self.broken.get() {
            return None;
        }
        if let Some(t) = self.partial_since.get().filter(|_| !self.paused.get()) {
            if now.saturating_duration_since(t) > opts.read_timeout {
                return Some(Kill::SlowFrame);
            }
        }
        if let Some(t) = self.write_progress.get() {
            if now.saturating_duration_since(t) > opts.write_timeout {
                return Some(Kill::StalledWriter);
            }
        }
        let quiet = self.partial_since.get().is_none()
            && self.in_flight.get() == 0
            && self.out.borrow().is_empty()
            && self.write_progress.get().is_none();
        if quiet && now.saturating_duration_since(self.last_activity.get()) > opts.idle_timeout {
            return Some(Kill::Idle);
        }
        None
    }
}

// === hooks for the shared-memory transport (server/shm.rs) ===

impl Conn {
    /// A connection with no socket of its own: a shared-memory session's requests run on
    /// the core through it, and `shm.rs` takes its answers instead of a writer task.
    pub(super) fn detached(core: Rc<Core>) -> Conn {
        let c = Conn::new(core, -1);
        c.fd_open.set(false);
        c.authenticated.set(true);
        c
    }

    /// The socket, while it is open.
    pub(super) fn raw_fd(&self) -> Option<RawFd> {
        self.fd_open.get().then_some(self.fd)
    }

    /// Nothing in flight, no answer queued or being written: a frame sent on the socket
    /// now goes out next, in order.
    pub(super) fn nothing_unwritten(&self) -> bool {
        self.in_flight.get() == 0
            && self.out.borrow().is_empty()
            && self.write_progress.get().is_none()
    }

    /// The answers waiting to be written (for a detached connection, to its ring).
    pub(super) fn answers(&self) -> std::cell::RefMut<'_, VecDeque<Response>> {
        self.out.borrow_mut()
    }

    /// Resolves when an answer is queued or the connection is killed.
    pub(super) fn answer_queued(&self) -> super::notify::Wait<'_> {
        self.writer_wake.wait()
    }

    /// Timeouts as the ticker checks them: bytes arrived (`now`), a frame under way since,
    /// answers waiting for the client since.
    pub(super) fn note_io(
        &self,
        now: Instant,
        partial_since: Option<Instant>,
        write_since: Option<Instant>,
    ) {
        self.last_activity.set(now);
        self.partial_since.set(partial_since);
        self.write_progress.set(write_since);
    }
}

/// Decrements the open-connection gauges however the connection ends (even if the runtime
/// is dropped with the task still pending).
struct OpenGuard {
    core: Rc<Core>,
    key: usize,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let stats = &self.core.shared.stats;
        stats.connections_open.fetch_sub(1, Relaxed);
        stats.cores[self.core.index]
            .connections_open
            .fetch_sub(1, Relaxed);
        if let Ok(mut conns) = self.core.conns.try_borrow_mut() {
            if let Some(c) = conns.try_remove(self.key) {
                c.fd_open.set(false);
            }
        }
        self.core.conns_changed.notify();
    }
}

/// Serves one accepted connection until it closes. The caller has counted it as open.
pub(crate) async fn serve<S>(stream: S, core: Rc<Core>)
where
    S: AsyncReadRent + AsyncWriteRent + monoio::io::Split + AsRawFd + 'static,
{
    let conn = Rc::new(Conn::new(core.clone(), stream.as_raw_fd()));
    let key = core.conns.borrow_mut().insert(conn.clone());
    core.shared.stats.cores[core.index]
        .connections_open
        .fetch_add(1, Relaxed);
    let _guard = OpenGuard {
        core: core.clone(),
        key,
    };
    if core.shutting_down.get() {
        conn.stop_reading();
    }
    let (mut rd, wr) = stream.into_split();
    let writer = monoio::spawn(write_loop(wr, conn.clone()));
    read_loop(&mut rd, &conn).await;
    // A reader that returned mid-frame (closing) left its answers for the writer.
    conn.defer.set(false);
    conn.reading_done.set(true);
    conn.writer_wake.notify();
    writer.await;
    conn.fd_open.set(false);
    // `rd` and the writer's half drop here: the socket closes.
}

async fn read_loop<R: AsyncReadRent>(rd: &mut R, conn: &Rc<Conn>) {
    let core = conn.core.clone();
    let limits = core.opts().limits;
    let max_queued = limits.max_in_flight.max(1) as usize;
    let mut buf = FrameBuf::take(READ_CHUNK);
    let mut now = Instant::now();
    // Bytes of a refused frame still to come, read and thrown away (docs/protocol.md §7.6).
    let mut discard: u64 = 0;
    // The partial frame at the front of `buf` has had its metadata looked at.
    let mut looked_at = false;
    // The last read returned less than it asked for (see the yield below).
    let mut drained = false;
    // Frames run inline since this reader last let others run.
    let mut streak = 0usize;
    loop {
        // Every whole frame in the buffer; their answers go out together after the loop.
        conn.defer.set(true);
        let mut start = 0;
        let mut admitted = false;
        let mut ran_inline = false;
        loop {
            let avail = buf.len() - start;
            if avail < HEADER_LEN {
                break;
            }
            let header = match Header::decode_with(&buf[start..], &limits) {
                Ok(h) => h,
                Err(e) => {
                    // Framing is lost: answer once and close.
                    let id = peek_request_id(&buf[start..]).unwrap_or(0);
                    conn.push(core.error_response(id, e.kind(), &e.to_string()));
                    return;
                }
            };
            if !conn.authenticated.get()
                && core.shared.token.is_some()
                && (header.opcode != Opcode::Hello.as_u8() || header.data_len != 0)
            {
                // Before its token, a client gets no further than one header: a frame that
                // cannot be a HELLO is refused without reading (or buffering) its body.
                core.shared
                    .stats
                    .connections_unauthenticated
                    .fetch_add(1, Relaxed);
                let msg =
                    "this server requires a HELLO carrying its token before any other request";
                conn.push(core.error_response(header.request_id, ErrorCode::Unauthenticated, msg));
                return;
            }
            let len = header.frame_len() as usize;
            if avail < len {
                let meta_end = HEADER_LEN + header.meta_len as usize;
                if !looked_at && header.data_len >= EARLY_CHECK_DATA && avail >= meta_end {
                    // Its metadata is here but not all of its data: a request that the
                    // metadata alone refuses is answered now, and its data is not kept.
                    looked_at = true;
                    let meta = &buf[start + HEADER_LEN..start + meta_end];
                    if core.refuse_early(conn, &header, meta) {
                        discard = (len - avail) as u64;
                        buf.truncate(start);
                        looked_at = false;
                    }
                }
                break;
            }
            looked_at = false;
            let body = &buf[start + HEADER_LEN..start + len];
            match core.on_frame(conn, &header, body, now) {
                FrameAction::Done => {}
                FrameAction::Close => return,
                FrameAction::Admit(parts) => {
                    let frame = if start == 0 && len == buf.len() && 2 * len > buf.capacity() {
                        // The frame is all the buffer holds and fills most of it (a large
                        // frame read alone, to its end): hand the buffer over without a copy
                        // and read on into a small one.
                        std::mem::replace(&mut buf, FrameBuf::take(READ_CHUNK))
                    } else {
                        // Small frames are copied into buffers of their own size, so a
                        // queued 100-byte request pins a few hundred bytes, not a read chunk.
                        FrameBuf::copy_of(&buf[start..start + len])
                    };
                    let job = Job {
                        conn: conn.clone(),
                        frame,
                        p: parts,
                    };
                    match core.run_inline(job) {
                        Some(job) => {
                            admitted = true;
                            core.enqueue(job);
                        }
                        None => ran_inline = true,
                    }
                    if buf.is_empty() {
                        start = 0;
                        break;
                    }
                }
            }
            start += len;
        }
        if start > 0 {
            buf.keep_range(start);
        }
        // How much to read next: up to the end of a large frame exactly (so it arrives
        // alone and is handed over without a copy), else as much as fits.
        let need = if buf.len() >= HEADER_LEN {
            Header::decode_with(&buf, &limits)
                .map(|h| h.frame_len() as usize)
                .unwrap_or(0)
        } else {
            0
        };
        if need > buf.capacity() {
            let mut bigger = FrameBuf::take(need);
            bigger.extend_from(&buf);
            buf = bigger;
        } else if need <= READ_CHUNK && buf.capacity() > READ_CHUNK && buf.len() <= READ_CHUNK {
            // A large buffer this connection no longer needs (its frame was refused, or
            // copied out): give it back rather than hold it while the connection idles.
            let mut small = FrameBuf::take(READ_CHUNK);
            small.extend_from(&buf);
            buf = small;
        }
        let end = if need > READ_CHUNK {
            need
        } else {
            buf.capacity()
        };
        conn.flush_deferred(now);
        if buf.is_empty() && discard == 0 {
            conn.partial_since.set(None);
        } else if conn.partial_since.get().is_none() {
            conn.partial_since.set(Some(now));
        }
        // Backpressure: a client that does not read its answers stops being read. The read
        // timeout does not run meanwhile (the write timeout does), and restarts on resuming.
        if conn.out.borrow().len() >= max_queued {
            conn.paused.set(true);
            while conn.out.borrow().len() >= max_queued && !conn.broken.get() {
                conn.reader_wake.wait().await;
            }
            conn.paused.set(false);
            now = Instant::now();
            if conn.partial_since.get().is_some() {
                conn.partial_since.set(Some(now));
            }
        } else if admitted || discard > 0 || (ran_inline && (!drained || streak >= INLINE_STREAK)) {
            // Let the executor and other connections run before reading more: a client
            // whose bytes are always ready must not monopolise its core.
            super::notify::yield_now().await;
            streak = 0;
        } else if ran_inline {
            // The last read took less than it asked for, so the socket was drained then:
            // the next read most likely waits (a turn for everyone else). Yielding here as
            // well would cost this request another task hop and, through the runtime's
            // turn budget, another poll of the driver. On epoll that read makes no syscall:
            // the short read cleared the socket's readiness (vendor/monoio), so it waits
            // for epoll's next event.
            streak += 1;
        }
        if conn.broken.get() {
            return;
        }
        let filled = buf.len();
        let (res, slice) = {
            let mut read = std::pin::pin!(rd.read(buf.slice_mut(filled..end)));
            std::future::poll_fn(|cx| {
                let r = std::future::Future::poll(read.as_mut(), cx);
                if r.is_pending() {
                    // The read waited: other tasks ran meanwhile.
                    streak = 0;
                }
                r
            })
            .await
        };
        buf = slice.into_inner();
        drained = matches!(res, Ok(n) if n < end - filled);
        now = Instant::now();
        conn.last_activity.set(now);
        match res {
            Ok(0) => {
                if !buf.is_empty() && conn.killed.get().is_none() {
                    // A truncated frame: answer BAD_FRAME (a client that only shut its
                    // sending side reads it), then close.
                    tracing::debug!(bytes = buf.len(), "client closed the connection mid-frame");
                    let id = peek_request_id(&buf).unwrap_or(0);
                    let (code, msg) = if core.shutting_down.get() {
                        (
                            ErrorCode::ShuttingDown,
                            "the server is shutting down and read no more of this frame".to_owned(),
                        )
                    } else {
                        (
                            ErrorCode::BadFrame,
                            format!(
                                "truncated frame: the connection ended after {} of its bytes (need {})",
                                buf.len(),
                                need.max(HEADER_LEN)
                            ),
                        )
                    };
                    conn.push(core.error_response(id, code, &msg));
                }
                return;
            }
            Ok(_) => core.busy_poll.note_read(),
            Err(e) => {
                tracing::debug!("read failed: {e}");
                return;
            }
        }
        if discard > 0 {
            let n = discard.min(buf.len() as u64);
            buf.keep_range(n as usize);
            discard -= n;
        }
    }
}

async fn write_loop<W: AsyncWriteRent>(mut wr: W, conn: Rc<Conn>) {
    let core = conn.core.clone();
    loop {
        // The batch is home whenever this task runs (the reader lends it only within one
        // synchronous flush).
        let mut batch = conn.batch.take().unwrap_or_else(WriteBatch::new);
        if batch.is_empty() {
            if conn.out.borrow().is_empty() {
                conn.batch.set(Some(batch));
                if conn.broken.get() || (conn.reading_done.get() && conn.in_flight.get() == 0) {
                    break;
                }
                conn.writer_wake.wait().await;
                continue;
            }
            batch.fill(&mut conn.out.borrow_mut());
            conn.write_progress.set(Some(Instant::now()));
        }
        // Else: what an inline write left unsent (its write timeout already runs).
        conn.reader_wake.notify();
        let mut failed = false;
        loop {
            let (res, b) = wr.writev(batch).await;
            batch = b;
            match res {
                Ok(0) => failed = true,
                Ok(n) if !batch.advance(n) => {
                    // Progress: the write timeout counts from the last byte taken.
                    conn.write_progress.set(Some(Instant::now()));
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("write failed: {e}");
                    failed = true;
                }
            }
            break;
        }
        conn.write_progress.set(None);
        // A reader waiting for its answer to be out (see the read loop) reads on.
        conn.reader_wake.notify();
        conn.last_activity.set(Instant::now());
        batch.drain(|r| core.recycle(r));
        conn.batch.set(Some(batch));
        if failed {
            conn.kill(Kill::WriteFailed);
            break;
        }
    }
    // Whatever is left will never be written.
    if let Some(mut b) = conn.batch.take() {
        b.drain(|r| core.recycle(r));
    }
    let left: Vec<Response> = conn.out.borrow_mut().drain(..).collect();
    for r in left {
        core.recycle(r);
    }
    if !conn.broken.get() {
        let _ = wr.shutdown().await;
    }
}
