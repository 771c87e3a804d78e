//! `edgeinfer bench --threads N`: the closed-loop PREDICT load generator with its connections
//! multiplexed over N threads, each waiting on all of its sockets at once with `poll(2)`.
//!
//! The default generator (one blocking thread per connection) pays a thread wake-up per
//! answer, and on a Unix socket a second, spurious one: the server's read of a request frees
//! the client's send buffer, and the kernel's `unix_write_space` wakes every task sleeping on
//! that socket, the client blocked in `read` included. On a 2-core box that shares its cores
//! with the server, the generator's own cost then bounds the throughput it can show. Here a
//! thread sleeps only when none of its connections has an answer, and `poll` waits for
//! `POLLIN` alone, so the write-space wake-ups do not reach it. By default one request is
//! outstanding per connection, each a whole frame; latency is from the send to the whole
//! answer.
//!
//! `--pipeline D` keeps D requests outstanding per connection instead: each is still one
//! PREDICT of its own (the input's rows, answered by its own answer frame, matched by id),
//! and the requests that replace the answers one read brought are sent with one write. A
//! pipelined run measures what the server does with requests that queue on a connection; it
//! is reported beside the unpipelined figure, never in place of it.

use std::collections::VecDeque;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{bail, Context};
use edgeinfer_client::Endpoint;
use edgeinfer_proto::{self as proto, ErrorResponse, Header, Opcode, HEADER_LEN};
use hdrhistogram::Histogram;

use crate::client_cmds::{Plan, WorkerStats};

enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Unix(s) => s.as_raw_fd(),
            Sock::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(buf),
            Sock::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sock::Unix(s) => s.write_all(buf),
            Sock::Tcp(s) => s.write_all(buf),
        }
    }
}

/// One connection: its socket, its copy of the request frame, what has arrived of the
/// answer, and when the outstanding request went out.
struct Conn {
    sock: Sock,
    frame: Vec<u8>,
    /// Frames of the next write (copies of `frame` with their ids).
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    filled: usize,
    /// Start of the first answer in `rbuf` not yet handed out.
    consumed: usize,
    next_id: u64,
    /// Requests sent and not answered yet: id and when it went out.
    outstanding: VecDeque<(u64, Instant)>,
}

impl Conn {
    fn open(endpoint: &Endpoint, frame: &[u8]) -> anyhow::Result<Conn> {
        let sock = match endpoint {
            Endpoint::Unix(p) => Sock::Unix(UnixStream::connect(p)?),
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a.as_str())?;
                s.set_nodelay(true)?;
                Sock::Tcp(s)
            }
        };
        Ok(Conn {
            sock,
            frame: frame.to_vec(),
            wbuf: Vec::new(),
            rbuf: vec![0; 64 << 10],
            filled: 0,
            consumed: 0,
            next_id: 1,
            outstanding: VecDeque::new(),
        })
    }

    /// Sends `n` more requests with one write. The socket blocks on writes (a few small
    /// frames into a send buffer that the server keeps draining) and reads are made only
    /// after `poll` says so.
    fn send(&mut self, n: usize) -> anyhow::Result<()> {
        self.wbuf.clear();
        let now = Instant::now();
        for _ in 0..n {
            proto::set_request_id(&mut self.frame, self.next_id)?;
            self.outstanding.push_back((self.next_id, now));
            self.next_id += 1;
            self.wbuf.extend_from_slice(&self.frame);
        }
        self.sock.write_all(&self.wbuf)?;
        Ok(())
    }

    /// The next whole answer: its header and when its request went out (its body is then
    /// `rbuf[at + HEADER_LEN..at + frame_len]`, `at` returned too, valid until the next
    /// call). Reads only when no whole answer is buffered; `None` once a read would block.
    fn receive(&mut self) -> anyhow::Result<Option<(Header, Instant, usize)>> {
        loop {
            let have = self.filled - self.consumed;
            if have >= HEADER_LEN {
                let at = self.consumed;
                let h = Header::decode(&self.rbuf[at..self.filled])?;
                let len = h.frame_len() as usize;
                if have >= len {
                    self.consumed += len;
                    let Some(i) = self
                        .outstanding
                        .iter()
                        .position(|&(id, _)| id == h.request_id)
                    else {
                        bail!(
                            "an answer to request {}, which is not outstanding",
                            h.request_id
                        );
                    };
                    let (_, sent) = self.outstanding.remove(i).expect("position is in range");
                    return Ok(Some((h, sent, at)));
                }
                if len > self.rbuf.len() - at {
                    // Room for the whole frame at the front.
                    self.rbuf.copy_within(at..self.filled, 0);
                    self.filled = have;
                    self.consumed = 0;
                    if len > self.rbuf.len() {
                        self.rbuf.resize(len, 0);
                    }
                }
            }
            if self.consumed == self.filled {
                self.consumed = 0;
                self.filled = 0;
            } else if self.filled == self.rbuf.len() {
                self.rbuf.copy_within(self.consumed..self.filled, 0);
                self.filled -= self.consumed;
                self.consumed = 0;
            }
            match self.sock.read(&mut self.rbuf[self.filled..]) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Reads are non-blocking (made after `poll`), writes block.
fn set_read_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: `fd` is an open socket this thread owns; F_GETFL/F_SETFL take no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn thread_main(
    mut conns: Vec<Conn>,
    depth: usize,
    plan: Arc<Plan>,
    start: Arc<Barrier>,
) -> anyhow::Result<WorkerStats> {
    let mut stats = WorkerStats {
        hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)?,
        ok: 0,
        errors: 0,
        last_error: None,
    };
    let mut fds: Vec<libc::pollfd> = conns
        .iter()
        .map(|c| libc::pollfd {
            fd: c.sock.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let measure_from = t0 + plan.warmup;
    let end = measure_from + plan.duration;
    for c in &mut conns {
        // Blocking writes: the frames go out whole; the first reads wait for poll.
        c.send(depth)?;
    }
    for c in &conns {
        set_read_nonblocking(c.sock.fd())?;
    }
    while Instant::now() < end {
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        for (c, p) in conns.iter_mut().zip(fds.iter_mut()) {
            if p.revents == 0 {
                continue;
            }
            p.revents = 0;
            let mut answered = 0;
            let mut done = Instant::now();
            while let Some((h, sent, at)) = c.receive()? {
                answered += 1;
                done = Instant::now();
                let measured = sent >= measure_from;
                if h.opcode == Opcode::PredictResponse.as_u8() {
                    if measured {
                        stats.ok += 1;
                        let ns = u64::try_from((done - sent).as_nanos()).unwrap_or(u64::MAX);
                        stats.hist.saturating_record(ns.max(1));
                    }
                } else {
                    stats.errors += u64::from(measured);
                    let body = &c.rbuf[at + HEADER_LEN..at + h.frame_len() as usize];
                    stats.last_error =
                        Some(match proto::decode_message::<ErrorResponse>(&h, body) {
                            Ok(e) => e.message,
                            Err(_) => format!("answer with opcode {:#04x}", h.opcode),
                        });
                }
            }
            if answered > 0 && done < end {
                c.send(answered)?;
            }
        }
    }
    Ok(stats)
}

/// Runs `connections` closed-loop connections over `threads` threads, each connection with
/// `depth` requests outstanding; one set of stats per thread.
pub(crate) fn run(
    endpoint: &Endpoint,
    frame: &[u8],
    connections: usize,
    threads: usize,
    depth: usize,
    plan: Arc<Plan>,
) -> anyhow::Result<Vec<WorkerStats>> {
    if threads == 0 || threads > connections {
        bail!("--threads must be between 1 and --concurrency ({connections})");
    }
    if depth == 0 {
        bail!("--pipeline must be at least 1");
    }
    let mut per_thread: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..connections {
        let c = Conn::open(endpoint, frame).with_context(|| format!("connecting to {endpoint}"))?;
        per_thread[i % threads].push(c);
    }
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(i, conns)| {
            let (plan, start) = (plan.clone(), start.clone());
            std::thread::Builder::new()
                .name(format!("bench-mux-{i}"))
                .spawn(move || thread_main(conns, depth, plan, start))
        })
        .collect::<Result<_, _>>()
        .context("starting load threads")?;
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))?
        })
        .collect()
}
