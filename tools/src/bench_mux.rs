//! `edgeinfer bench --threads N`: the closed-loop PREDICT load generator with its connections
//! multiplexed over N threads, each waiting on all of its sockets at once with `poll(2)`.
//!
//! The default generator (one blocking thread per connection) pays a thread wake-up per
//! answer, and on a Unix socket a second, spurious one: the server's read of a request frees
//! the client's send buffer, and the kernel's `unix_write_space` wakes every task sleeping on
//! that socket, the client blocked in `read` included. On a 2-core box that shares its cores
//! with the server, the generator's own cost then bounds the throughput it can show. Here a
//! thread sleeps only when none of its connections has an answer, and `poll` waits for
//! `POLLIN` alone, so the write-space wake-ups do not reach it. Still one request outstanding
//! per connection, each a whole frame; latency is from the send to the whole answer.

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
    rbuf: Vec<u8>,
    filled: usize,
    next_id: u64,
    sent: Instant,
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
            rbuf: vec![0; 64 << 10],
            filled: 0,
            next_id: 1,
            sent: Instant::now(),
        })
    }

    /// Sends the next request. The socket blocks on writes (one small frame into an empty
    /// send buffer: it never waits) and reads are made only after `poll` says so.
    fn send(&mut self) -> anyhow::Result<()> {
        proto::set_request_id(&mut self.frame, self.next_id)?;
        self.next_id += 1;
        self.sent = Instant::now();
        self.sock.write_all(&self.frame)?;
        Ok(())
    }

    /// Reads what has arrived; returns the answer's header once it is whole (its body is
    /// then `rbuf[HEADER_LEN..frame_len]`, dropped by the next call).
    fn receive(&mut self) -> anyhow::Result<Option<Header>> {
        loop {
            if self.filled >= HEADER_LEN {
                let h = Header::decode(&self.rbuf[..self.filled])?;
                let len = h.frame_len() as usize;
                if len > self.rbuf.len() {
                    self.rbuf.resize(len, 0);
                }
                if self.filled >= len {
                    if self.filled > len {
                        bail!("the server sent more than the one answer asked for");
                    }
                    self.filled = 0;
                    return Ok(Some(h));
                }
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
        // Blocking writes: the frame goes out whole; the first reads wait for poll.
        c.send()?;
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
            let Some(h) = c.receive()? else { continue };
            let done = Instant::now();
            let measured = c.sent >= measure_from;
            if h.opcode == Opcode::PredictResponse.as_u8() {
                if measured {
                    stats.ok += 1;
                    let ns = u64::try_from((done - c.sent).as_nanos()).unwrap_or(u64::MAX);
                    stats.hist.saturating_record(ns.max(1));
                }
            } else {
                stats.errors += u64::from(measured);
                let body = &c.rbuf[HEADER_LEN..h.frame_len() as usize];
                stats.last_error = Some(match proto::decode_message::<ErrorResponse>(&h, body) {
                    Ok(e) => e.message,
                    Err(_) => format!("answer with opcode {:#04x}", h.opcode),
                });
            }
            if done < end {
                c.send()?;
            }
        }
    }
    Ok(stats)
}

/// Runs `connections` closed-loop connections over `threads` threads; one set of stats per
/// thread.
pub(crate) fn run(
    endpoint: &Endpoint,
    frame: &[u8],
    connections: usize,
    threads: usize,
    plan: Arc<Plan>,
) -> anyhow::Result<Vec<WorkerStats>> {
    if threads == 0 || threads > connections {
        bail!("--threads must be between 1 and --concurrency ({connections})");
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
                .spawn(move || thread_main(conns, plan, start))
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
