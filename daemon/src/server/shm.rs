//! The shared-memory transport, server side (docs/protocol.md §11). A HELLO over the Unix
//! socket that asks for it gets a sealed memfd holding a request ring and a response ring,
//! and one end of a doorbell socket pair, both passed with SCM_RIGHTS on the HELLO_RESPONSE.
//! A task on the connection's core then reads frames where the client wrote them, hands
//! them to the core exactly like socket frames (the same admission, batching, chunking and
//! answer encoding, through a socketless [`Conn`]), and writes the answers into the
//! response ring. While either side polls, nothing crosses the kernel; a side that has
//! polled for `spin_us` sets its sleeping word and waits on the doorbell.
//!
//! Everything in the mapping is written by a client the server does not trust. Positions
//! are loaded once and checked against the server's own copies; each frame header is copied
//! out before it is decoded; every offset and length is checked against the ring; the
//! memfd is sealed against shrinking (no SIGBUS under the server). Tensor bytes are read in
//! place, so a client may change its own inputs while they run: it gets garbage answers,
//! no one else is affected, and every bound the engine uses comes from the copied,
//! validated metadata. A client that breaks a ring rule loses its session, nothing else.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{fence, AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use edgeinfer_proto::shm as layout;
use edgeinfer_proto::{
    align_up, peek_request_id, ErrorCode, Header, HelloResponse, Limits, Opcode, HEADER_LEN,
};

use super::buf::{FrameBuf, Lender};
use super::conn::{Conn, Kill};
use super::core::{FrameAction, Job};
use crate::config::Problem;

/// How long the session polls in one go before it lets the core's other tasks run.
const SPIN_SLICE: Duration = Duration::from_micros(5);
/// Frames taken from the ring in one turn before answers are written and others run.
const BURST: usize = 64;
/// Polls of the ring between two clock reads while spinning: a clock read costs about as
/// much as the poll itself on a VM (60-90 ns), and would double the time to notice work.
const POLLS_PER_CLOCK: u32 = 32;

/// `[server.shm]`: the shared-memory transport's bounds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShmConfig {
    /// Grant shared memory to Unix-socket clients that ask for it in HELLO.
    pub enabled: bool,
    /// Largest ring granted (each session has two, plus a 4 KiB control page); rounded down
    /// to a power of two. It also bounds the frames and answers a session can carry.
    pub max_ring_bytes: u64,
    /// How long a session's core polls its request ring after the last frame before it
    /// sleeps on the doorbell (0 = sleep at once).
    pub spin_us: u64,
    /// Sessions open at once, over all cores; more are refused OVERLOADED.
    pub max_sessions: usize,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            enabled: true,
            max_ring_bytes: 4 << 20,
            spin_us: 50,
            max_sessions: 64,
        }
    }
}

impl ShmConfig {
    pub fn validate(&self, out: &mut Vec<Problem>) {
        use crate::config::range;
        range(
            out,
            "server.shm.max_ring_bytes",
            self.max_ring_bytes,
            layout::MIN_RING_BYTES,
            1 << 30,
            " bytes",
        );
        range(out, "server.shm.spin_us", self.spin_us, 0, 1_000_000, " µs");
        range(
            out,
            "server.shm.max_sessions",
            self.max_sessions as u64,
            1,
            65_536,
            "",
        );
    }
}

// === the grant ===

/// Answers a HELLO that asks for shared memory: `msg` is the HELLO_RESPONSE the core built.
/// On success it goes out here, with the fds, ahead of anything else on the socket.
pub(super) fn grant(conn: &Rc<Conn>, id: u64, mut msg: HelloResponse, asked: u64) -> FrameAction {
    let core = conn.core.clone();
    let opts = core.opts();
    let cfg = &opts.shm;
    let refuse = |code: ErrorCode, why: &str| {
        conn.push(core.error_response(id, code, why));
        FrameAction::Done
    };
    if !cfg.enabled {
        return refuse(
            ErrorCode::NotImplemented,
            "shared memory is off on this server (server.shm.enabled)",
        );
    }
    let Some(fd) = conn.raw_fd().filter(|&fd| is_unix_socket(fd)) else {
        return refuse(
            ErrorCode::NotImplemented,
            "shared memory is offered only over the Unix socket",
        );
    };
    if !conn.nothing_unwritten() {
        return refuse(
            ErrorCode::BadInput,
            "ask for shared memory with nothing in flight on the connection (the grant must \
             be the next frame the server writes)",
        );
    }
    if !opts.allowed_uids.is_empty() || !opts.allowed_gids.is_empty() {
        // SAFETY: the fd is this live connection's socket (raw_fd checked it is open).
        let sock = unsafe { BorrowedFd::borrow_raw(fd) };
        if !crate::security::peer_in_lists(&sock, &opts.allowed_uids, &opts.allowed_gids) {
            conn.push(core.error_response(
                id,
                ErrorCode::Unauthenticated,
                "the peer is not in this server's allow-lists",
            ));
            return FrameAction::Close;
        }
    }
    let stats = &core.shared.stats;
    if stats.shm_sessions_open.load(Relaxed) >= cfg.max_sessions {
        return refuse(
            ErrorCode::Overloaded,
            "this server has its maximum of shared-memory sessions open (server.shm.max_sessions)",
        );
    }
    let Some(ring) = layout::grant_ring_bytes(asked, cfg.max_ring_bytes) else {
        return refuse(
            ErrorCode::Internal,
            "server.shm.max_ring_bytes is below the smallest ring",
        );
    };
    let (memfd, map) = match create_memfd(ring) {
        Ok(x) => x,
        Err(e) => {
            return refuse(
                ErrorCode::Internal,
                &format!("creating the shared memory: {e}"),
            )
        }
    };
    let (ours, theirs) = match doorbell_pair() {
        Ok(x) => x,
        Err(e) => return refuse(ErrorCode::Internal, &format!("creating the doorbell: {e}")),
    };
    msg.shm_ring_bytes = ring;
    // Counted before the client can see the grant; every failure below takes it back.
    stats.shm_sessions_open.fetch_add(1, Relaxed);
    let give_back = || stats.shm_sessions_open.fetch_sub(1, Relaxed);
    let r = core.message_response(Opcode::HelloResponse, id, &msg);
    let sent = send_with_fds(fd, &r.head, [memfd.as_raw_fd(), theirs.as_raw_fd()]);
    let len = r.head.len();
    core.recycle(r);
    match sent {
        Ok(n) if n == len => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            give_back();
            return refuse(
                ErrorCode::Overloaded,
                "the socket's send buffer is full: read the answers, then ask again",
            );
        }
        _ => {
            // Part of a frame went out (or nothing could): the stream is no longer in step.
            give_back();
            conn.kill(Kill::WriteFailed);
            return FrameAction::Close;
        }
    }
    // The client has its own copies now; the mapping keeps the memory.
    drop((memfd, theirs));
    let doorbell =
        match monoio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(ours)) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("adopting a shared-memory doorbell: {e}");
                give_back();
                conn.kill(Kill::WriteFailed);
                return FrameAction::Close;
            }
        };
    let session = Session::new(core.clone(), map, ring, doorbell);
    stats.shm_sessions_granted.fetch_add(1, Relaxed);
    monoio::spawn(session.run());
    FrameAction::Done
}

fn is_unix_socket(fd: RawFd) -> bool {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a plain getsockopt into a local int of the size given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && domain == libc::AF_UNIX
}

fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The memfd (mode 0600, sealed at its size) and the server's mapping of it, control page
/// initialised.
fn create_memfd(ring: u64) -> io::Result<(OwnedFd, Mapping)> {
    let len = layout::memfd_len(ring);
    // SAFETY: a NUL-terminated name and valid flags.
    let raw = unsafe {
        libc::memfd_create(
            c"edgeinfer-shm".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: plain calls on the fd we own.
    unsafe {
        cvt(libc::fchmod(fd.as_raw_fd(), 0o600))?;
        cvt(libc::ftruncate(fd.as_raw_fd(), len as libc::off_t))?;
        // The client must not shrink the file under the server's mapping (SIGBUS) or
        // grow it (memory the bound does not count).
        cvt(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        ))?;
    }
    let map = Mapping::new(&fd, len as usize)?;
    map.u64_at(layout::OFF_RING_BYTES).store(ring, Relaxed);
    map.u32_at(4).store(layout::LAYOUT_VERSION, Relaxed);
    map.u32_at(0).store(layout::SHM_MAGIC, Release);
    Ok((fd, map))
}

fn doorbell_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two fds into the array.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// One non-blocking `sendmsg` of `bytes` carrying `fds` (SCM_RIGHTS).
fn send_with_fds(sock: RawFd, bytes: &[u8], fds: [RawFd; 2]) -> io::Result<usize> {
    let fd_bytes = std::mem::size_of_val(&fds);
    // 8-byte aligned room for one cmsghdr and two ints.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    assert!(space <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call; the cmsg
    // header and data are written inside `control` (CMSG_FIRSTHDR of a buffer of `space`).
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
        libc::sendmsg(sock, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

// === the mapping ===

/// The server's shared mapping of a session's memfd; unmapped when the last frame lent
/// from it is given back and the session has ended.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a shared mapping of the whole (sealed) file; no address hint.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(raw.cast()).expect("mmap returned null"),
            len,
        })
    }

    /// A control word. Shared memory is only ever read and written through atomics or raw
    /// copies here, never through references to plain data.
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= layout::CONTROL_BYTES as usize);
        // SAFETY: inside the mapping, 8-aligned (page-aligned base), lives as long as self.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU64>() }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= layout::CONTROL_BYTES as usize);
        // SAFETY: as in `u64_at`.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU32>() }
    }

    /// Start of a ring (at `base` in the file).
    fn at(&self, base: u64) -> *mut u8 {
        debug_assert!(base as usize <= self.len);
        // SAFETY: within the mapping.
        unsafe { self.ptr.as_ptr().add(base as usize) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; nothing points into it any more (the
        // frames lent from it hold the session, which holds this).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// === the session ===

/// Why a session ends on the server's side: the client broke the ring protocol.
struct Broken {
    request_id: u64,
    code: ErrorCode,
    message: String,
}

impl Broken {
    fn new(message: impl Into<String>) -> Broken {
        Broken {
            request_id: 0,
            code: ErrorCode::BadFrame,
            message: message.into(),
        }
    }
}

struct Session {
    map: Mapping,
    ring: u64,
    req: *mut u8,
    resp: *mut u8,
    /// Requests run through this socketless connection; its answer queue is ours.
    conn: Rc<Conn>,
    key: usize,
    doorbell: monoio::net::UnixStream,
    limits: Limits,
    spin: Duration,
    /// Where the next request frame starts (the server's own copy, never read back).
    rd: Cell<u64>,
    /// Frames read and not yet given back, oldest first: (end position, given back).
    lent: RefCell<VecDeque<(u64, bool)>>,
    first_token: Cell<u64>,
    /// Request-ring bytes handed back to the client (the published tail).
    released: Cell<u64>,
    /// `released` moved since it was last published.
    tail_dirty: Cell<bool>,
    /// Where the next answer goes (the published response head).
    wr: Cell<u64>,
    /// The client's response tail as last loaded and checked: room is taken from this
    /// copy, and the shared word (a line the client writes) is loaded only when the copy
    /// says full, so an answer does not wait for that line to cross cores.
    resp_tail: Cell<u64>,
    /// 1 + the CPU this session last published (`OFF_SERVER_CPU`).
    cpu: Cell<u32>,
    /// What the rings held when the session last found nothing to do, so that polling
    /// can tell new work from old.
    idle_head: Cell<u64>,
    idle_tail: Cell<u64>,
    /// An answer waits for room in the response ring (the client has not read enough).
    blocked: Cell<bool>,
    partial_since: Cell<Option<Instant>>,
    write_since: Cell<Option<Instant>>,
    /// The core answered a frame with "close" (e.g. no common version): end when written.
    closing: Cell<bool>,
}

impl Session {
    fn new(
        core: Rc<super::core::Core>,
        map: Mapping,
        ring: u64,
        doorbell: monoio::net::UnixStream,
    ) -> Rc<Session> {
        let conn = Rc::new(Conn::detached(core.clone()));
        let key = core.conns.borrow_mut().insert(conn.clone());
        let opts = core.opts();
        let limits = Limits {
            max_frame_bytes: opts.limits.max_frame_bytes.min(ring),
            ..opts.limits
        };
        let req = map.at(layout::request_ring_offset());
        let resp = map.at(layout::response_ring_offset(ring));
        Rc::new(Session {
            map,
            ring,
            req,
            resp,
            conn,
            key,
            doorbell,
            limits,
            spin: Duration::from_micros(opts.shm.spin_us),
            rd: Cell::new(0),
            lent: RefCell::new(VecDeque::new()),
            first_token: Cell::new(0),
            released: Cell::new(0),
            tail_dirty: Cell::new(false),
            wr: Cell::new(0),
            resp_tail: Cell::new(0),
            cpu: Cell::new(0),
            idle_head: Cell::new(0),
            idle_tail: Cell::new(0),
            blocked: Cell::new(false),
            partial_since: Cell::new(None),
            write_since: Cell::new(None),
            closing: Cell::new(false),
        })
    }

    fn reading(&self) -> bool {
        !self.closing.get() && !self.conn.core.shutting_down.get() && !self.conn.is_broken()
    }

    /// Rings the client's doorbell if it said it sleeps. After our stores: the fence pairs
    /// with the client's between setting its sleeping word and re-checking the rings.
    fn wake_client(&self) {
        fence(SeqCst);
        if self.map.u32_at(layout::OFF_CLIENT_SLEEPING).load(Relaxed) != 0 {
            // SAFETY: a one-byte non-blocking send on our doorbell socket.
            unsafe {
                libc::send(
                    self.doorbell.as_raw_fd(),
                    [1u8].as_ptr().cast(),
                    1,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
        }
    }

    /// Whether the client said it runs on this session's CPU: then polling only keeps it
    /// from running, and the session sleeps on the doorbell at once. Publishes this
    /// session's CPU for the client's own check when it changed.
    fn shares_cpu(&self) -> bool {
        // SAFETY: no arguments; glibc answers from rseq or the vDSO (no syscall).
        let mine = u32::try_from(unsafe { libc::sched_getcpu() }).map_or(0, |c| c + 1);
        if mine != self.cpu.get() {
            self.cpu.set(mine);
            self.map.u32_at(layout::OFF_SERVER_CPU).store(mine, Relaxed);
        }
        mine != 0 && self.map.u32_at(layout::OFF_CLIENT_CPU).load(Relaxed) == mine
    }

    /// Reads the doorbell empty; false when the client's end is closed (it is gone).
    fn drain_doorbell(&self) -> bool {
        let mut sink = [0u8; 256];
        loop {
            // SAFETY: a non-blocking recv into a local buffer of its size.
            let n = unsafe {
                libc::recv(
                    self.doorbell.as_raw_fd(),
                    sink.as_mut_ptr().cast(),
                    sink.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => return false,
                // Less than asked for: the stream is empty now (no second, failing recv).
                n if n > 0 && (n as usize) < sink.len() => return true,
                n if n > 0 => continue,
                _ => return io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock,
            }
        }
    }

    /// Whether polling sees something the last pass did not.
    fn work_visible(&self) -> bool {
        let head = self.map.u64_at(layout::OFF_REQ_HEAD).load(Acquire);
        if self.reading() && head != self.idle_head.get() {
            return true;
        }
        if self.blocked.get() {
            self.map.u64_at(layout::OFF_RESP_TAIL).load(Acquire) != self.idle_tail.get()
        } else {
            !self.conn.answers().is_empty()
        }
    }

    /// A frame (or WRAP record) ending at `end` was read: its lending token.
    fn lend(&self, end: u64) -> u64 {
        let mut lent = self.lent.borrow_mut();
        lent.push_back((end, false));
        self.first_token.get() + lent.len() as u64 - 1
    }

    /// Takes frames from the request ring and hands them to the core. True if any.
    fn pump_requests(self: &Rc<Self>) -> Result<bool, Broken> {
        let core = self.conn.core.clone();
        let max_queued = core.opts().limits.max_in_flight.max(1) as usize;
        let ring = self.ring;
        let mut taken = 0;
        while taken < BURST && self.reading() {
            let head = self.map.u64_at(layout::OFF_REQ_HEAD).load(Acquire);
            self.idle_head.set(head);
            if self.conn.answers().len() >= max_queued {
                // Backpressure, as on the socket: read on once answers are taken.
                break;
            }
            let rd = self.rd.get();
            if head == rd {
                self.partial_since.set(None);
                break;
            }
            if !head.is_multiple_of(edgeinfer_proto::ALIGN)
                || head < rd
                || head - self.released.get() > ring
            {
                return Err(Broken::new(format!(
                    "the request ring's head {head} is not a 64-aligned position from {rd} to {}",
                    self.released.get() + ring
                )));
            }
            let avail = head - rd;
            let off = (rd % ring) as usize;
            // A header is 32 bytes and frames start 64-aligned: at least 64 bytes are
            // published whenever any are.
            let mut hb = [0u8; HEADER_LEN];
            // SAFETY: off + 32 <= ring (off is 64-aligned and below ring, a multiple of 64);
            // copied out with a raw copy, so the client can change nothing under the check.
            unsafe {
                std::ptr::copy_nonoverlapping(self.req.add(off), hb.as_mut_ptr(), HEADER_LEN)
            };
            let h = Header::decode_with(&hb, &self.limits).map_err(|e| Broken {
                request_id: peek_request_id(&hb).unwrap_or(0),
                code: e.kind(),
                message: format!("in the request ring: {e}"),
            })?;
            if layout::is_wrap(&h) {
                if h.meta_len != 0 || h.data_len != 0 || off == 0 {
                    return Err(Broken::new(
                        "a WRAP record with a body, or at the start of the ring",
                    ));
                }
                let skip = layout::wrap_skip(rd, ring);
                if avail < skip {
                    return Err(Broken::new("a WRAP record published without its skip"));
                }
                self.rd.set(rd + skip);
                let token = self.lend(rd + skip);
                self.give_back(token);
                continue;
            }
            let len = h.frame_len();
            if off as u64 + len > ring {
                return Err(Broken {
                    request_id: h.request_id,
                    code: ErrorCode::BadFrame,
                    message: format!(
                        "a frame of {len} bytes at ring offset {off} runs past the ring's end ({ring})"
                    ),
                });
            }
            if avail < len {
                // Published in part: the client is still writing it, or stopped (the read
                // timeout ends the session then).
                if self.partial_since.get().is_none() {
                    self.partial_since.set(Some(Instant::now()));
                }
                break;
            }
            self.partial_since.set(None);
            self.rd.set(align_up(rd + len));
            let token = self.lend(align_up(rd + len));
            taken += 1;
            // SAFETY: off + len <= ring (checked above), inside the mapping, which lives as
            // long as this session and, through the lender, as long as any job's frame.
            let frame = unsafe { self.req.add(off) };
            let body = unsafe {
                std::slice::from_raw_parts(frame.add(HEADER_LEN), len as usize - HEADER_LEN)
            };
            match core.on_frame(&self.conn, &h, body, Instant::now()) {
                FrameAction::Done => self.give_back(token),
                FrameAction::Close => {
                    self.give_back(token);
                    self.closing.set(true);
                }
                FrameAction::Admit(parts) => {
                    let lender: Rc<dyn Lender> = self.clone();
                    // SAFETY: the frame's bytes stay mapped until the job drops the buffer
                    // (the lender holds the mapping), and are not reused before give_back.
                    let frame = unsafe {
                        FrameBuf::lent(NonNull::new_unchecked(frame), len as usize, lender, token)
                    };
                    let job = Job {
                        conn: self.conn.clone(),
                        frame,
                        p: parts,
                    };
                    if let Some(job) = core.run_inline(job) {
                        core.enqueue(job);
                    }
                }
            }
        }
        Ok(taken > 0)
    }

    /// Writes queued answers into the response ring while they fit. True if any.
    fn pump_responses(&self) -> Result<bool, Broken> {
        let core = &self.conn.core;
        let ring = self.ring;
        let mut wrote = false;
        self.blocked.set(false);
        loop {
            let Some(r) = self.conn.answers().pop_front() else {
                self.write_since.set(None);
                break;
            };
            let h = Header::decode(&r.head).expect("the core encodes valid headers");
            let len = h.frame_len();
            let wr = self.wr.get();
            let Some(place) = layout::place(wr, len, ring) else {
                let msg = format!(
                    "the answer of {len} bytes is larger than the response ring ({ring} bytes): \
                     ask for a larger ring in HELLO, or for fewer rows"
                );
                core.recycle(r);
                let e = core.error_response(h.request_id, ErrorCode::BadInput, &msg);
                self.conn.answers().push_front(e);
                continue;
            };
            let mut tail = self.resp_tail.get();
            if place.next() - tail > ring {
                // Full by our copy: load the client's word (once) and check it.
                tail = self.map.u64_at(layout::OFF_RESP_TAIL).load(Acquire);
                if !tail.is_multiple_of(edgeinfer_proto::ALIGN) || tail > wr || wr - tail > ring {
                    core.recycle(r);
                    return Err(Broken::new(format!(
                        "the response ring's tail {tail} is not a 64-aligned position from {} to {wr}",
                        wr.saturating_sub(ring)
                    )));
                }
                self.resp_tail.set(tail);
            }
            if place.next() - tail > ring {
                // No room until the client reads: the write timeout runs meanwhile.
                self.conn.answers().push_front(r);
                self.blocked.set(true);
                self.idle_tail.set(tail);
                if self.write_since.get().is_none() {
                    self.write_since.set(Some(Instant::now()));
                }
                break;
            }
            self.write_since.set(None);
            // SAFETY: every copy below lands inside the response ring: the placement keeps
            // the frame whole between offset `at` and the ring's end, and a WRAP record
            // (32 bytes) at a 64-aligned offset below the ring's end fits too.
            unsafe {
                if let layout::Placement::Wrapped { .. } = place {
                    let w = layout::wrap_record();
                    let at = (wr % ring) as usize;
                    std::ptr::copy_nonoverlapping(w.as_ptr(), self.resp.add(at), w.len());
                }
                let mut at = self.resp.add(place.offset(ring) as usize);
                std::ptr::copy_nonoverlapping(r.head.as_ptr(), at, r.head.len());
                at = at.add(r.head.len());
                if let Some(out) = &r.outputs {
                    let last = r.sel.len().saturating_sub(1);
                    for (i, &k) in r.sel.iter().enumerate() {
                        let data = &out.tensors[k as usize].data;
                        std::ptr::copy_nonoverlapping(data.as_ptr(), at, data.len());
                        at = at.add(data.len());
                        if i != last {
                            let pad = (64 - data.len() % 64) % 64;
                            std::ptr::write_bytes(at, 0, pad);
                            at = at.add(pad);
                        }
                    }
                }
            }
            self.wr.set(place.next());
            self.map
                .u64_at(layout::OFF_RESP_HEAD)
                .store(place.next(), Release);
            core.recycle(r);
            wrote = true;
        }
        // The request bytes given back since the last turn, after the answers: one fence
        // and one doorbell check for both.
        if self.publish_tail() || wrote {
            self.wake_client();
        }
        Ok(wrote)
    }

    /// Publishes the request tail if it moved; true if it did (the caller wakes the client).
    fn publish_tail(&self) -> bool {
        if !self.tail_dirty.replace(false) {
            return false;
        }
        self.map
            .u64_at(layout::OFF_REQ_TAIL)
            .store(self.released.get(), Release);
        true
    }

    async fn run(self: Rc<Self>) {
        let core = self.conn.core.clone();
        // Says where this session runs before the client first waits.
        self.shares_cpu();
        let mut last_work = Instant::now();
        let mut worked = false;
        let mut turns = 0u32;
        let ended = loop {
            if self.conn.is_broken() {
                break Ok("the connection was closed by the server (a timeout or shutdown)");
            }
            let wrote = match self.pump_responses() {
                Ok(w) => w,
                Err(b) => break Err(b),
            };
            let read = match self.pump_requests() {
                Ok(r) => r,
                Err(b) => break Err(b),
            };
            let stopping = self.closing.get() || core.shutting_down.get();
            if stopping && self.conn.in_flight() == 0 && self.conn.answers().is_empty() {
                break Ok("the session is done (shutdown, or a closing error was answered)");
            }
            if wrote || read {
                // No clock read per request: the time of the work is taken at the next
                // idle turn (a turn later), and every 16 busy turns for the timeouts.
                worked = true;
                turns += 1;
                if turns.is_multiple_of(16) {
                    self.conn.note_io(
                        Instant::now(),
                        self.partial_since.get(),
                        self.write_since.get(),
                    );
                    super::notify::yield_now().await;
                }
                continue;
            }
            let now = Instant::now();
            if worked {
                last_work = now;
                worked = false;
            }
            self.conn
                .note_io(last_work, self.partial_since.get(), self.write_since.get());
            if now.saturating_duration_since(last_work) < self.spin && !self.shares_cpu() {
                // Poll the ring without a syscall for a slice, then let the core's other
                // tasks (its executor, its sockets) run. Work found is taken at once: a
                // yield here would put the runtime's poll of its driver (a syscall) and a
                // task switch between the client's request and its answer. Busy turns
                // yield every 16 all the same.
                let until = now + SPIN_SLICE;
                let found = 'slice: loop {
                    for _ in 0..POLLS_PER_CLOCK {
                        if self.work_visible() {
                            break 'slice true;
                        }
                        std::hint::spin_loop();
                    }
                    if Instant::now() >= until {
                        break false;
                    }
                };
                if !found {
                    super::notify::yield_now().await;
                }
                continue;
            }
            if self.publish_tail() {
                self.wake_client();
            }
            let sleeping = self.map.u32_at(layout::OFF_SERVER_SLEEPING);
            sleeping.store(1, Relaxed);
            // Pairs with the client's fence between publishing and reading this word.
            fence(SeqCst);
            if self.work_visible() {
                sleeping.store(0, Relaxed);
                continue;
            }
            let shutdown = async {
                if core.shutting_down.get() {
                    std::future::pending::<()>().await
                } else {
                    core.stop_accepting.wait().await
                }
            };
            let rang = monoio::select! {
                r = self.doorbell.readable(false) => Some(r.is_ok()),
                _ = self.conn.answer_queued() => None,
                _ = shutdown => None,
            };
            sleeping.store(0, Relaxed);
            if let Some(ok) = rang {
                if !ok || !self.drain_doorbell() {
                    break Ok("the client closed its doorbell");
                }
            }
            // Woken: the client is probably busy, so poll again before the next sleep.
            last_work = Instant::now();
        };
        let stats = &core.shared.stats;
        match ended {
            Ok(why) => tracing::debug!("shared-memory session ended: {why}"),
            Err(b) => {
                stats.shm_sessions_hostile.fetch_add(1, Relaxed);
                tracing::info!("ending a shared-memory session: {}", b.message);
                // One ERROR in the ring if it fits, then the doorbell closes.
                self.conn.answers().push_back(core.error_response(
                    b.request_id,
                    b.code,
                    &b.message,
                ));
                let _ = self.pump_responses();
            }
        }
        // Queued work of this session is dropped unanswered; its frames come back as the
        // jobs let go of them, and the mapping goes with the last.
        self.conn.kill(Kill::WriteFailed);
        // SAFETY: shutting down our own doorbell socket: the client sees EOF at once.
        unsafe { libc::shutdown(self.doorbell.as_raw_fd(), libc::SHUT_RDWR) };
        if let Ok(mut conns) = core.conns.try_borrow_mut() {
            conns.try_remove(self.key);
        }
        core.conns_changed.notify();
        stats.shm_sessions_open.fetch_sub(1, Relaxed);
    }
}

impl Lender for Session {
    fn give_back(&self, token: u64) {
        let mut lent = self.lent.borrow_mut();
        let first = self.first_token.get();
        if let Some(e) = token
            .checked_sub(first)
            .and_then(|i| lent.get_mut(i as usize))
        {
            e.1 = true;
        }
        let mut moved = false;
        while let Some(&(end, true)) = lent.front() {
            lent.pop_front();
            self.first_token.set(self.first_token.get() + 1);
            self.released.set(end);
            moved = true;
        }
        drop(lent);
        if moved {
            // Published by the session's next turn, after the answer it is writing: the
            // store and its fence are off the way from a request to its answer.
            self.tail_dirty.set(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memfd_is_private_sealed_and_initialised() {
        let ring = layout::MIN_RING_BYTES;
        let (fd, map) = create_memfd(ring).unwrap();
        // SAFETY: fstat/fcntl/ftruncate on the fd this test owns, into a local stat.
        let (mode, seals, shrink, grow) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd.as_raw_fd(), &mut st), 0);
            (
                st.st_mode & 0o777,
                libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS),
                libc::ftruncate(fd.as_raw_fd(), 4096),
                libc::ftruncate(fd.as_raw_fd(), 1 << 30),
            )
        };
        assert_eq!(mode, 0o600);
        let want = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        assert_eq!(seals & want, want, "seals {seals:#x}");
        assert!(
            shrink < 0 && grow < 0,
            "a client can neither shrink nor grow it"
        );
        assert_eq!(map.len, layout::memfd_len(ring) as usize);
        assert_eq!(map.u32_at(0).load(Relaxed), layout::SHM_MAGIC);
        assert_eq!(map.u64_at(layout::OFF_RING_BYTES).load(Relaxed), ring);
        assert_eq!(map.u64_at(layout::OFF_REQ_HEAD).load(Relaxed), 0);
    }

    #[test]
    fn the_config_section_parses_and_is_bounded() {
        let c = crate::config::Config::from_toml_str(
            "[server.shm]\nmax_ring_bytes = 1048576\nspin_us = 0\n",
        )
        .unwrap();
        assert_eq!(c.server.shm.max_ring_bytes, 1 << 20);
        assert_eq!(c.server_options().shm.spin_us, 0);
        assert!(c.server_options().shm.enabled, "on unless switched off");
        let mut p = Vec::new();
        ShmConfig {
            max_ring_bytes: 1000,
            max_sessions: 0,
            ..Default::default()
        }
        .validate(&mut p);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["server.shm.max_ring_bytes", "server.shm.max_sessions"]
        );
        assert!(crate::config::Config::from_toml_str("[server.shm]\nbogus = 1\n").is_err());
    }
}
