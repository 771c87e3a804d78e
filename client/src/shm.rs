//! The shared-memory client (docs/protocol.md §11): a Unix-socket connection whose HELLO
//! asks for rings. Requests are written straight into the request ring (with
//! [`ShmClient::begin_predict`] the caller fills its tensors there, in place), and answers are
//! read where the server wrote them ([`ShmClient::recv_frame`] lends the frame until the next
//! call). While the client polls, nothing crosses the kernel; after `spin` it sleeps on the
//! doorbell, and rings the server's only when the server said it sleeps.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{fence, AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use edgeinfer_proto::shm as layout;
use edgeinfer_proto::{
    align_up, byte_len, encode_frame_head, DType, Header, Hello, HelloResponse, Limits, Opcode,
    TensorMeta, TensorView, HEADER_LEN, SUPPORTED_VERSIONS,
};

use crate::conn::{answer, answer_predict, body_len, set_request, Conn};
use crate::{ClientError, PredictOptions, PredictResult};

/// How long the client polls for an answer (or ring space) before sleeping on the doorbell.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
/// Polls of the ring between two clock reads while spinning: a clock read costs about as
/// much as the poll itself on a VM (60-90 ns), and would double the time to notice.
const POLLS_PER_CLOCK: u32 = 32;

/// A shared-memory session with an edgeinfer server.
pub struct ShmClient {
    /// The Unix-socket connection the session was granted on; kept open (its HELLO,
    /// credentials and token are what the session rests on).
    _sock: UnixStream,
    doorbell: UnixStream,
    map: NonNull<u8>,
    map_len: usize,
    ring: u64,
    /// Where the next request goes (the published request head).
    wr: u64,
    /// Where the next answer starts (our response tail, published when it is released).
    rd: u64,
    /// The server's request tail as last read: room is taken from this copy, and the
    /// shared word (a cache line the server writes) is read only when the copy says full.
    req_tail: u64,
    /// 1 + the CPU this client last published (`OFF_CLIENT_CPU`), 0 = none yet.
    cpu: u32,
    /// The answer lent by the last `recv_frame` ends here: released at the next call.
    lent_end: Option<u64>,
    conn: Conn,
    /// Reused between PREDICTs so its strings and vectors keep their capacity.
    req: edgeinfer_proto::PredictRequest,
    /// The last PREDICT's encoded header and metadata (request id at bytes 8..16): a
    /// PREDICT with the same model, options and input specs reuses it as it is.
    head_buf: Vec<u8>,
    head_valid: bool,
    /// (offset in the data section, length) of each input of the PREDICT being written.
    metas: Vec<(usize, usize)>,
    server: HelloResponse,
    spin: Duration,
    /// Times this client slept on the doorbell.
    doorbell_waits: u64,
}

// SAFETY: the mapping is owned by this value alone (the raw pointer is what stops the
// compiler from seeing that); moving it to another thread moves all access with it.
unsafe impl Send for ShmClient {}

/// A PREDICT being written into the request ring: fill each input with
/// [`ShmRequest::input`], then [`ShmRequest::send`]. Dropped unsent, nothing is published.
pub struct ShmRequest<'a> {
    client: &'a mut ShmClient,
    /// Ring offset of the frame, its data section, and where the next frame goes.
    at: usize,
    data_offset: usize,
    next: u64,
    wrap_at: Option<usize>,
    id: u64,
}

impl ShmClient {
    /// Connects to the Unix socket at `path` and asks for rings of `ring_bytes` each (the
    /// server rounds to a power of two within its bound), presenting `token` if not empty.
    pub fn connect(path: &Path, ring_bytes: u64, token: &str) -> Result<ShmClient, ClientError> {
        let mut sock = UnixStream::connect(path)?;
        let mut conn = Conn::new();
        let hello = Hello {
            versions: SUPPORTED_VERSIONS.to_vec(),
            client: concat!("edgeinfer-client-shm/", env!("CARGO_PKG_VERSION")).into(),
            token: token.into(),
            shm_ring_bytes: ring_bytes.max(1),
        };
        conn.encode_message(Opcode::Hello, &hello)?;
        sock.write_all(&conn.wbuf)?;
        // The grant's fds ride on its first bytes: read the header with recvmsg.
        let mut hb = [0u8; HEADER_LEN];
        let (n, fds) = recv_with_fds(sock.as_raw_fd(), &mut hb)?;
        sock.read_exact(&mut hb[n..])?;
        let h = Header::decode_with(&hb, &conn.limits)?;
        let mut body = vec![0u8; body_len(&h)?];
        sock.read_exact(&mut body)?;
        let server: HelloResponse = answer(&h, &body, Opcode::Hello)?;
        let [Some(memfd), Some(doorbell)] = fds else {
            return Err(protocol("the HELLO_RESPONSE carried no memfd and doorbell"));
        };
        let ring = server.shm_ring_bytes;
        if ring < layout::MIN_RING_BYTES || !ring.is_power_of_two() {
            return Err(protocol("the server granted no usable ring size"));
        }
        let map_len = layout::memfd_len(ring) as usize;
        // SAFETY: a shared mapping of the memfd the server sized and sealed at this length.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memfd.as_raw_fd(),
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error().into());
        }
        drop(memfd);
        let doorbell = UnixStream::from(doorbell);
        doorbell.set_nonblocking(false)?;
        let mut c = ShmClient {
            _sock: sock,
            doorbell,
            map: NonNull::new(raw.cast()).expect("mmap returned null"),
            map_len,
            ring,
            wr: 0,
            rd: 0,
            req_tail: 0,
            cpu: 0,
            lent_end: None,
            conn,
            req: Default::default(),
            head_buf: Vec::with_capacity(256),
            head_valid: false,
            metas: Vec::new(),
            server,
            spin: DEFAULT_SPIN,
            doorbell_waits: 0,
        };
        if c.u32_at(0).load(Acquire) != layout::SHM_MAGIC
            || c.u64_at(layout::OFF_RING_BYTES).load(Relaxed) != ring
        {
            return Err(protocol(
                "the shared memory's control page is not edgeinfer's",
            ));
        }
        c.conn.limits = Limits {
            max_frame_bytes: c.server.max_frame_bytes.min(ring),
            ..Limits::DEFAULT
        };
        Ok(c)
    }

    /// The server's HELLO answer (limits, and the ring size granted).
    pub fn server(&self) -> &HelloResponse {
        &self.server
    }

    /// Bytes of each ring.
    pub fn ring_bytes(&self) -> u64 {
        self.ring
    }

    /// How long to poll before sleeping on the doorbell (default [`DEFAULT_SPIN`]).
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.conn.in_flight
    }

    /// The CPU the server says this session runs on, once it said so.
    pub fn server_cpu(&self) -> Option<u32> {
        self.u32_at(layout::OFF_SERVER_CPU)
            .load(Relaxed)
            .checked_sub(1)
    }

    /// How many times this client has slept on the doorbell (it polled for its spin time,
    /// or not at all when it shares the server's CPU, and found nothing).
    pub fn doorbell_waits(&self) -> u64 {
        self.doorbell_waits
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: control words lie inside the mapping, 8-aligned; shared words are only
        // touched through atomics.
        unsafe { &*self.map.as_ptr().add(off).cast::<AtomicU64>() }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as in `u64_at`.
        unsafe { &*self.map.as_ptr().add(off).cast::<AtomicU32>() }
    }

    fn req_ring(&self) -> *mut u8 {
        // SAFETY: the request ring lies inside the mapping.
        unsafe {
            self.map
                .as_ptr()
                .add(layout::request_ring_offset() as usize)
        }
    }

    fn resp_ring(&self) -> *mut u8 {
        // SAFETY: the response ring lies inside the mapping.
        unsafe {
            self.map
                .as_ptr()
                .add(layout::response_ring_offset(self.ring) as usize)
        }
    }

    /// Hands the last lent answer's bytes back to the server.
    fn release_lent(&mut self) {
        if let Some(end) = self.lent_end.take() {
            self.rd = end;
            self.u64_at(layout::OFF_RESP_TAIL).store(end, Release);
            self.wake_server();
        }
    }

    fn wake_server(&self) {
        // Pairs with the server's fence between setting its sleeping word and re-checking.
        fence(SeqCst);
        if self.u32_at(layout::OFF_SERVER_SLEEPING).load(Relaxed) != 0 {
            let _ = (&self.doorbell).write(&[1]);
        }
    }

    /// Whether the server's session runs on the CPU this thread runs on now; publishes
    /// this thread's CPU for the server's own check when it changed.
    fn shares_cpu_with_server(&mut self) -> bool {
        let mine = current_cpu();
        if mine != self.cpu {
            self.cpu = mine;
            self.u32_at(layout::OFF_CLIENT_CPU).store(mine, Relaxed);
        }
        mine != 0 && self.u32_at(layout::OFF_SERVER_CPU).load(Relaxed) == mine
    }

    /// Polls `ready` for the spin time (not at all when the server runs on this CPU: it
    /// could not run while we spin), then sleeps on the doorbell until it holds.
    fn wait_for(&mut self, ready: impl Fn(&ShmClient) -> bool) -> Result<(), ClientError> {
        if ready(self) {
            return Ok(());
        }
        if !self.spin.is_zero() && !self.shares_cpu_with_server() {
            let start = Instant::now();
            loop {
                for _ in 0..POLLS_PER_CLOCK {
                    if ready(self) {
                        return Ok(());
                    }
                    std::hint::spin_loop();
                }
                if start.elapsed() >= self.spin {
                    break;
                }
            }
        }
        let mut waits = 0;
        while !ready(self) {
            let sleeping = self.u32_at(layout::OFF_CLIENT_SLEEPING);
            sleeping.store(1, Relaxed);
            fence(SeqCst);
            if ready(self) {
                sleeping.store(0, Relaxed);
                break;
            }
            let mut b = [0u8; 64];
            waits += 1;
            let n = (&self.doorbell).read(&mut b);
            sleeping.store(0, Relaxed);
            match n {
                Ok(0) => {
                    return Err(ClientError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server ended the shared-memory session",
                    )))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.doorbell_waits += waits;
        Ok(())
    }

    /// Reserves room for a frame of `len` bytes: (ring offset, WRAP offset, next head).
    fn reserve(&mut self, len: u64) -> Result<(usize, Option<usize>, u64), ClientError> {
        self.release_lent();
        let place = layout::place(self.wr, len, self.ring).ok_or(ClientError::Protocol(
            edgeinfer_proto::ProtoError::FrameTooLarge {
                len,
                max: self.ring,
            },
        ))?;
        let (next, ring) = (place.next(), self.ring);
        if next - self.req_tail > ring {
            self.wait_for(|c| next - c.u64_at(layout::OFF_REQ_TAIL).load(Acquire) <= ring)?;
            self.req_tail = self.u64_at(layout::OFF_REQ_TAIL).load(Acquire);
        }
        let wrap_at =
            matches!(place, layout::Placement::Wrapped { .. }).then_some((self.wr % ring) as usize);
        Ok((place.offset(ring) as usize, wrap_at, next))
    }

    fn publish(&mut self, wrap_at: Option<usize>, next: u64) {
        if let Some(w) = wrap_at {
            let rec = layout::wrap_record();
            // SAFETY: a WRAP record at a 64-aligned offset below the ring's end fits.
            unsafe {
                std::ptr::copy_nonoverlapping(rec.as_ptr(), self.req_ring().add(w), rec.len())
            };
        }
        self.wr = next;
        self.u64_at(layout::OFF_REQ_HEAD).store(next, Release);
        self.conn.in_flight += 1;
        self.wake_server();
    }

    /// Starts a PREDICT whose inputs have these names, dtypes and shapes; their bytes are
    /// then written in place with [`ShmRequest::input`].
    pub fn begin_predict(
        &mut self,
        model: &str,
        inputs: &[(&str, DType, &[u64])],
        opts: &PredictOptions,
    ) -> Result<ShmRequest<'_>, ClientError> {
        let id = self.conn.next_id();
        let same = self.head_valid && self.same_predict(model, inputs, opts);
        self.metas.clear();
        let mut next = 0u64;
        let mut end = 0u64;
        for (_, dtype, shape) in inputs {
            let length = byte_len(*dtype, shape)
                .ok_or_else(|| protocol("an input's size overflows 64 bits"))?;
            self.metas.push((next as usize, length as usize));
            end = next + length;
            next = align_up(end);
        }
        if same {
            // The metadata is the last PREDICT's: only the request id differs.
            self.head_buf[8..16].copy_from_slice(&id.to_le_bytes());
        } else {
            self.head_valid = false;
            let r = &mut self.req;
            set_request(r, model, opts);
            r.inputs.clear();
            for ((name, dtype, shape), &(offset, length)) in inputs.iter().zip(&self.metas) {
                r.inputs.push(TensorMeta {
                    name: (*name).to_owned(),
                    dtype: dtype.code(),
                    shape: shape.to_vec(),
                    offset: offset as u64,
                    length: length as u64,
                });
            }
            encode_frame_head(Opcode::Predict, 0, id, &self.req, end, &mut self.head_buf)?;
            self.head_valid = true;
        }
        let data_offset = self.head_buf.len();
        let len = (data_offset as u64) + end;
        let (at, wrap_at, next) = self.reserve(len)?;
        // SAFETY: the reservation keeps `at..at + len` inside the request ring.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.head_buf.as_ptr(),
                self.req_ring().add(at),
                data_offset,
            )
        };
        Ok(ShmRequest {
            client: self,
            at,
            data_offset,
            next,
            wrap_at,
            id,
        })
    }

    /// Whether a PREDICT of `model` with these inputs and options encodes to the same
    /// metadata as the one in `head_buf`.
    fn same_predict(
        &self,
        model: &str,
        inputs: &[(&str, DType, &[u64])],
        opts: &PredictOptions,
    ) -> bool {
        let r = &self.req;
        let deadline_us = opts.deadline.map_or(0, |d| {
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
        });
        r.model == model
            && r.version == opts.version
            && r.outputs == opts.outputs
            && r.routing_key == opts.routing_key
            && r.deadline_us == deadline_us
            && r.inputs.len() == inputs.len()
            && r.inputs
                .iter()
                .zip(inputs)
                .all(|(m, (name, dtype, shape))| {
                    m.name == *name && m.dtype == dtype.code() && m.shape == *shape
                })
    }

    /// Sends a PREDICT, copying `inputs` into the ring (use [`ShmClient::begin_predict`] to
    /// write them there in the first place). Returns its request id.
    pub fn send_predict(
        &mut self,
        model: &str,
        inputs: &[TensorView<'_>],
        opts: &PredictOptions,
    ) -> Result<u64, ClientError> {
        let specs: Vec<(&str, DType, &[u64])> =
            inputs.iter().map(|t| (t.name, t.dtype, t.shape)).collect();
        let mut req = self.begin_predict(model, &specs, opts)?;
        for (i, t) in inputs.iter().enumerate() {
            let dst = req.input(i);
            if dst.len() != t.data.len() {
                return Err(protocol(
                    "an input's bytes do not match its dtype and shape",
                ));
            }
            dst.copy_from_slice(t.data);
        }
        Ok(req.send())
    }

    /// Sends any frame as it is (a HELLO, a METADATA, or bytes of the caller's making),
    /// returning its request id as read from bytes 8..16.
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<u64, ClientError> {
        let (at, wrap_at, next) = self.reserve(frame.len() as u64)?;
        // SAFETY: the reservation keeps the frame inside the request ring.
        unsafe {
            std::ptr::copy_nonoverlapping(frame.as_ptr(), self.req_ring().add(at), frame.len())
        };
        self.publish(wrap_at, next);
        Ok(edgeinfer_proto::peek_request_id(frame).unwrap_or(0))
    }

    /// The next answer, in place: its header and body, valid until the next call.
    pub fn recv_frame(&mut self) -> Result<(Header, &[u8]), ClientError> {
        self.release_lent();
        let ring = self.ring;
        loop {
            let rd = self.rd;
            self.wait_for(|c| c.u64_at(layout::OFF_RESP_HEAD).load(Acquire) != rd)?;
            let head = self.u64_at(layout::OFF_RESP_HEAD).load(Acquire);
            let off = (rd % ring) as usize;
            let mut hb = [0u8; HEADER_LEN];
            // SAFETY: off is 64-aligned and below the ring's end, so 32 bytes fit.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.resp_ring().add(off),
                    hb.as_mut_ptr(),
                    HEADER_LEN,
                )
            };
            let h = Header::decode_with(&hb, &self.conn.limits)?;
            if layout::is_wrap(&h) {
                self.rd = rd + layout::wrap_skip(rd, ring);
                continue;
            }
            let len = h.frame_len();
            if off as u64 + len > ring || rd + len > head {
                return Err(protocol(
                    "an answer runs past the response ring or its head",
                ));
            }
            self.lent_end = Some(align_up(rd + len));
            self.conn.in_flight = self.conn.in_flight.saturating_sub(1);
            // SAFETY: checked inside the ring; the server does not reuse these bytes before
            // we publish a tail past them (at the next call).
            let body = unsafe {
                std::slice::from_raw_parts(
                    self.resp_ring().add(off + HEADER_LEN),
                    len as usize - HEADER_LEN,
                )
            };
            return Ok((h, body));
        }
    }

    /// The next PREDICT answer, outputs copied out: `(request_id, result)`.
    #[allow(clippy::type_complexity)]
    pub fn recv(&mut self) -> Result<(u64, Result<PredictResult, ClientError>), ClientError> {
        let (h, body) = self.recv_frame()?;
        Ok((h.request_id, answer_predict(&h, body)))
    }

    /// One PREDICT and its answer (no other request may be in flight).
    pub fn predict(
        &mut self,
        model: &str,
        inputs: &[TensorView<'_>],
        opts: &PredictOptions,
    ) -> Result<PredictResult, ClientError> {
        let id = self.send_predict(model, inputs, opts)?;
        let (got, r) = self.recv()?;
        if got != id {
            return Err(protocol("an answer to another request arrived"));
        }
        r
    }

    // === for tests of the server's checks: a well-behaved client needs none of these ===

    /// Sets the published request head to any value.
    pub fn publish_raw_head(&mut self, head: u64) {
        self.u64_at(layout::OFF_REQ_HEAD).store(head, Release);
        self.wake_server();
    }

    /// Stores any value in the client's CPU word (`1 + cpu` says "I run on `cpu`"); the
    /// client writes its real CPU there again when it next waits from another CPU.
    pub fn claim_cpu_word(&mut self, word: u32) {
        self.u32_at(layout::OFF_CLIENT_CPU).store(word, Relaxed);
        self.cpu = word;
    }

    /// Writes `bytes` at `offset` of the request ring without publishing anything.
    pub fn scribble(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset.saturating_add(bytes.len()).min(self.ring as usize);
        let n = end.saturating_sub(offset);
        // SAFETY: clipped to the request ring.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.req_ring().add(offset), n) };
    }

    /// The published request head (where the next frame goes).
    pub fn request_head(&self) -> u64 {
        self.wr
    }
}

impl Drop for ShmClient {
    fn drop(&mut self) {
        // SAFETY: mapped in `connect` with this length; nothing borrows it past `self`.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

impl ShmRequest<'_> {
    /// The bytes of input `i`, in the ring, to fill.
    pub fn input(&mut self, i: usize) -> &mut [u8] {
        let (off, len) = self.client.metas[i];
        // SAFETY: inside the frame reserved in the request ring, which nothing else writes
        // until it is published.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.client.req_ring().add(self.at + self.data_offset + off),
                len,
            )
        }
    }

    /// Publishes the request; returns its request id.
    pub fn send(self) -> u64 {
        // Zero the gaps between tensors: the server ignores them, but stale ring bytes
        // should not leave the client.
        for w in self.client.metas.windows(2) {
            let (off, len) = w[0];
            let gap = w[1].0 - (off + len);
            // SAFETY: the gap lies inside the reserved frame.
            unsafe {
                std::ptr::write_bytes(
                    self.client
                        .req_ring()
                        .add(self.at + self.data_offset + off + len),
                    0,
                    gap,
                )
            };
        }
        self.client.publish(self.wrap_at, self.next);
        self.id
    }
}

/// 1 + the CPU this thread runs on, 0 when the kernel does not say.
fn current_cpu() -> u32 {
    // SAFETY: no arguments; glibc answers from rseq or the vDSO (no syscall on Linux).
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).map_or(0, |c| c + 1)
}

fn protocol(msg: &str) -> ClientError {
    ClientError::Io(io::Error::new(io::ErrorKind::InvalidData, msg.to_owned()))
}

/// One `recvmsg` into `buf`, taking up to two fds passed with SCM_RIGHTS.
fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, [Option<OwnedFd>; 2])> {
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut fds: [Option<OwnedFd>; 2] = [None, None];
    // SAFETY: msghdr is plain data; the pointers outlive the call; cmsgs are walked with
    // the libc macros inside the control buffer the kernel filled.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        let mut k = 0;
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<libc::c_int>();
                for j in 0..count {
                    let fd = OwnedFd::from_raw_fd(data.add(j).read_unaligned());
                    if k < 2 {
                        fds[k] = Some(fd);
                        k += 1;
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        n as usize
    };
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok((n, fds))
}
