//! Starting and stopping the core runtimes: one thread per core, pinned, running a monoio
//! runtime on the chosen driver; accept loops (connection limit, peer credentials, backing
//! off when out of fds), the executor, a ticker (heartbeat, timeouts, model refresh) and a
//! wake pipe that carries shutdown from other threads.

use std::cell::Cell;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::io::AsyncReadRent;
use monoio::{FusionDriver, IoUringDriver, LegacyDriver, RuntimeBuilder};

use edgeinfer_proto::ErrorCode;

use super::core::{Core, Shared};
use super::{Driver, Listeners, ServerOptions, ServerStats};
use crate::heartbeat::{Heartbeats, BEAT_INTERVAL};
use crate::model_table::ModelTable;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("finding the allowed cores: {0}")]
    Cores(std::io::Error),
    #[error("no cores to run on")]
    NoCores,
    #[error("preparing listeners for core {cpu}: {source}")]
    Listener { cpu: usize, source: std::io::Error },
    #[error("core {cpu}: {message}")]
    Core { cpu: usize, message: String },
    #[error("server.auth_token_file: {0}")]
    Token(crate::security::TokenError),
}

/// The running server. Dropping it shuts the server down at once and waits for it.
pub struct ServerHandle {
    trigger: Arc<Trigger>,
    threads: Vec<(usize, JoinHandle<()>)>,
    stats: Arc<ServerStats>,
    heartbeats: Arc<Heartbeats>,
    cpus: Vec<usize>,
    driver: Driver,
}

/// Starts shutdown from any thread (a signal handler thread, systemd glue).
pub struct Trigger {
    wake: Mutex<Vec<StdUnixStream>>,
    shared: Arc<Shared>,
}

impl Trigger {
    /// Stops accepting, answers what is queued, and ends each core when its connections
    /// are done or `grace` has passed. Idempotent: a later call can only shorten the grace.
    pub fn shutdown(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        {
            let mut d = self
                .shared
                .grace_deadline
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *d = Some(d.map_or(deadline, |old| old.min(deadline)));
        }
        for w in self
            .wake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            // The pipe is non-blocking: a full pipe already carries a wakeup.
            let _ = w.write(&[1]);
        }
    }
}

impl ServerHandle {
    pub fn trigger(&self) -> Arc<Trigger> {
        self.trigger.clone()
    }

    pub fn shutdown(&self, grace: Duration) {
        self.trigger.shutdown(grace);
    }

    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    pub fn heartbeats(&self) -> &Arc<Heartbeats> {
        &self.heartbeats
    }

    /// The cores served, one runtime each.
    pub fn cores(&self) -> &[usize] {
        &self.cpus
    }

    /// The driver the runtimes actually use (`auto` resolved).
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// Waits for every core to finish (after [`ServerHandle::shutdown`]).
    pub fn wait(mut self) -> Result<(), String> {
        self.join()
    }

    fn join(&mut self) -> Result<(), String> {
        let mut failed = Vec::new();
        for (cpu, t) in self.threads.drain(..) {
            if t.join().is_err() {
                failed.push(cpu);
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("core runtime(s) {failed:?} panicked"))
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.trigger.shutdown(Duration::ZERO);
            let _ = self.join();
        }
    }
}

/// Listeners of one core, as std sockets until the core's runtime adopts them.
struct CoreListeners {
    unix: Vec<std::os::unix::net::UnixListener>,
    tcp: Vec<std::net::TcpListener>,
}

/// Starts one runtime per core and returns once every core is accepting.
pub fn start(
    opts: ServerOptions,
    table: Arc<ModelTable>,
    listeners: Listeners,
) -> Result<ServerHandle, StartError> {
    let cpus = if opts.cores.is_empty() {
        edgeinfer_engine::cores::allowed_cores().map_err(StartError::Cores)?
    } else {
        opts.cores.clone()
    };
    if cpus.is_empty() {
        return Err(StartError::NoCores);
    }
    let driver = opts.driver.effective();
    let token = match &opts.auth_token_file {
        Some(path) => Some(crate::security::Token::from_file(path).map_err(StartError::Token)?),
        None => None,
    };
    let stats = Arc::new(ServerStats::new(&cpus));
    let heartbeats = Arc::new(Heartbeats::new(&cpus));
    let shared = Arc::new(Shared {
        opts,
        table,
        stats: stats.clone(),
        heartbeats: heartbeats.clone(),
        grace_deadline: Mutex::new(None),
        token,
    });
    // Each core's listeners: dups of shared ones, or its own SO_REUSEPORT socket.
    let mut per_core = Vec::with_capacity(cpus.len());
    for (i, &cpu) in cpus.iter().enumerate() {
        let err = |source| StartError::Listener { cpu, source };
        let mut l = CoreListeners {
            unix: Vec::new(),
            tcp: Vec::new(),
        };
        for u in &listeners.unix {
            let d = u.try_clone().map_err(err)?;
            d.set_nonblocking(driver == Driver::Epoll).map_err(err)?;
            l.unix.push(d);
        }
        for g in &listeners.tcp {
            let d = g.for_core(i).map_err(err)?;
            d.set_nonblocking(driver == Driver::Epoll).map_err(err)?;
            l.tcp.push(d);
        }
        per_core.push(l);
    }
    drop(listeners);

    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let mut threads = Vec::with_capacity(cpus.len());
    let mut wakes = Vec::with_capacity(cpus.len());
    for (index, (cpu, l)) in cpus.iter().copied().zip(per_core).enumerate() {
        let (tx_end, rx_end) =
            StdUnixStream::pair().map_err(|source| StartError::Listener { cpu, source })?;
        tx_end
            .set_nonblocking(true)
            .map_err(|source| StartError::Listener { cpu, source })?;
        rx_end
            .set_nonblocking(driver == Driver::Epoll)
            .map_err(|source| StartError::Listener { cpu, source })?;
        wakes.push(tx_end);
        let (shared, ready) = (shared.clone(), ready_tx.clone());
        let t = std::thread::Builder::new()
            .name(format!("edgeinfer-core{cpu}"))
            .spawn(move || run_core(index, cpu, driver, shared, l, rx_end, ready))
            .map_err(|e| StartError::Core {
                cpu,
                message: format!("spawning its thread: {e}"),
            })?;
        threads.push((cpu, t));
    }
    drop(ready_tx);
    let trigger = Arc::new(Trigger {
        wake: Mutex::new(wakes),
        shared,
    });
    let mut handle = ServerHandle {
        trigger,
        threads,
        stats,
        heartbeats,
        cpus: cpus.clone(),
        driver,
    };
    for _ in 0..cpus.len() {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((index, Err(message))) => {
                drop(handle);
                return Err(StartError::Core {
                    cpu: cpus[index],
                    message,
                });
            }
            Err(_) => {
                let _ = handle.join();
                return Err(StartError::Core {
                    cpu: cpus[0],
                    message: "a core runtime exited while starting".into(),
                });
            }
        }
    }
    tracing::info!(cores = ?cpus, driver = %driver, "serving");
    Ok(handle)
}

type Ready = mpsc::Sender<(usize, Result<(), String>)>;

fn run_core(
    index: usize,
    cpu: usize,
    driver: Driver,
    shared: Arc<Shared>,
    l: CoreListeners,
    wake: StdUnixStream,
    ready: Ready,
) {
    if let Err(e) = edgeinfer_engine::cores::pin_current_thread(cpu) {
        let _ = ready.send((index, Err(format!("pinning the runtime thread: {e}"))));
        return;
    }
    let fut = core_main(index, shared, l, wake, ready.clone());
    let built = match driver {
        Driver::IoUring => RuntimeBuilder::<IoUringDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(fut)),
        Driver::Epoll => RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(fut)),
        Driver::Auto => RuntimeBuilder::<FusionDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(fut)),
    };
    if let Err(e) = built {
        let _ = ready.send((index, Err(format!("building the {driver} runtime: {e}"))));
    }
}

async fn core_main(
    index: usize,
    shared: Arc<Shared>,
    l: CoreListeners,
    wake: StdUnixStream,
    ready: Ready,
) {
    super::buf::set_pool_budget(shared.opts.buffer_pool_bytes);
    let core = Rc::new(Core::new(index, shared));
    let adopt = || -> std::io::Result<_> {
        let unix = l
            .unix
            .into_iter()
            .map(monoio::net::UnixListener::from_std)
            .collect::<Result<Vec<_>, _>>()?;
        let tcp = l
            .tcp
            .into_iter()
            .map(monoio::net::TcpListener::from_std)
            .collect::<Result<Vec<_>, _>>()?;
        let wake = monoio::net::UnixStream::from_std(wake)?;
        Ok((unix, tcp, wake))
    };
    let (unix, tcp, wake) = match adopt() {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send((index, Err(format!("adopting listeners: {e}"))));
            return;
        }
    };
    // Sessions first, so the first request on this core does not pay for them.
    core.refresh_models();
    core.shared.heartbeats.beat(index);
    for l in unix {
        monoio::spawn(accept_unix(l, core.clone()));
    }
    for l in tcp {
        monoio::spawn(accept_tcp(l, core.clone()));
    }
    monoio::spawn(core.clone().execute());
    monoio::spawn(ticker(core.clone()));
    monoio::spawn(watch_wake(wake, core.clone()));
    if core.busy_poll.enabled() {
        let c = core.clone();
        monoio::spawn(async move { c.busy_poll.spin().await });
    }
    let _ = ready.send((index, Ok(())));
    core.finished.wait().await;
    super::notify::forget_yielded();
}

/// Admits one more connection if the server-wide limit allows.
fn admit_connection(core: &Core) -> bool {
    let stats = &core.shared.stats;
    let open = stats.connections_open.fetch_add(1, Relaxed);
    if open >= core.opts().max_connections {
        stats.connections_open.fetch_sub(1, Relaxed);
        stats.connections_refused.fetch_add(1, Relaxed);
        return false;
    }
    stats.connections_accepted.fetch_add(1, Relaxed);
    true
}

/// Answers a connection the server will not serve with one ERROR frame (request id 0), then
/// lets the caller drop (close) it. The socket is fresh, so its send buffer has room: one
/// non-blocking send either takes the whole frame or the peer is already gone.
fn refuse(fd: RawFd, core: &Core, code: ErrorCode, message: &str) {
    let r = core.error_response(0, code, message);
    // SAFETY: `fd` is the live accepted socket the caller owns; the buffer is valid for
    // its length. MSG_NOSIGNAL: a peer that left must not kill the daemon with SIGPIPE.
    unsafe {
        libc::send(
            fd,
            r.head.as_ptr().cast(),
            r.head.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
        // Say we are done, and drop whatever the peer already sent, so that closing sends
        // a FIN rather than a reset that could destroy the ERROR in flight.
        libc::shutdown(fd, libc::SHUT_WR);
        let mut sink = [0u8; 4096];
        while libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT) > 0 {}
    }
    core.recycle(r);
}

/// The connection past `max_connections`: OVERLOADED (retryable: another connection may
/// have closed by then).
fn refuse_busy(fd: RawFd, core: &Core) {
    let msg = format!(
        "this server already has its maximum of {} connections open (server.max_connections)",
        core.opts().max_connections
    );
    refuse(fd, core, ErrorCode::Overloaded, &msg);
}

/// How long accepting pauses after running out of file descriptors (or memory). Other
/// listeners keep accepting: each has its own loop.
const FD_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "out of file descriptors" log line per listener per this long.
const FD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One listener's accept-failure state: backs off and logs once per interval.
struct AcceptErrors {
    what: &'static str,
    last_log: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl AcceptErrors {
    fn new(what: &'static str) -> AcceptErrors {
        AcceptErrors {
            what,
            last_log: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    async fn failed(&self, core: &Core, e: std::io::Error) {
        let exhausted = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if !exhausted {
            // The peer went away between the kernel queueing it and us taking it
            // (ECONNABORTED and friends): nothing to wait for.
            tracing::debug!(listener = self.what, "accept failed: {e}");
            return;
        }
        core.shared.stats.accept_fd_exhausted.fetch_add(1, Relaxed);
        let now = Instant::now();
        let due = self
            .last_log
            .get()
            .is_none_or(|t| now.saturating_duration_since(t) >= FD_LOG_INTERVAL);
        if due {
            tracing::warn!(
                listener = self.what,
                core = core.index,
                failures_since_last_report = self.suppressed.get(),
                "accept failed: {e}; pausing accepts for {} ms at a time (raise LimitNOFILE= or \
                 lower server.max_connections); next report in {} s at the earliest",
                FD_BACKOFF.as_millis(),
                FD_LOG_INTERVAL.as_secs()
            );
            self.last_log.set(Some(now));
            self.suppressed.set(0);
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
        }
        // Out of fds: accepting again at once would spin; the connection waits in the
        // kernel's backlog meanwhile.
        monoio::time::sleep(FD_BACKOFF).await;
    }
}

async fn accept_tcp(l: monoio::net::TcpListener, core: Rc<Core>) {
    let errors = AcceptErrors::new("tcp");
    loop {
        let accepted = monoio::select! {
            r = l.accept() => r,
            _ = core.stop_accepting.wait() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                if admit_connection(&core) {
                    let _ = stream.set_nodelay(true);
                    monoio::spawn(super::conn::serve(stream, core.clone()));
                } else {
                    refuse_busy(stream.as_raw_fd(), &core);
                }
            }
            Err(e) => errors.failed(&core, e).await,
        }
    }
}

async fn accept_unix(l: monoio::net::UnixListener, core: Rc<Core>) {
    let errors = AcceptErrors::new("unix");
    let opts = core.opts();
    let check_peer = !opts.allowed_uids.is_empty() || !opts.allowed_gids.is_empty();
    loop {
        let accepted = monoio::select! {
            r = l.accept() => r,
            _ = core.stop_accepting.wait() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let fd = stream.as_raw_fd();
                if check_peer
                    && !crate::security::peer_in_lists(
                        &stream,
                        &opts.allowed_uids,
                        &opts.allowed_gids,
                    )
                {
                    core.shared
                        .stats
                        .connections_unauthenticated
                        .fetch_add(1, Relaxed);
                    let who = crate::security::peer_cred(&stream)
                        .map(|c| format!("uid {} gid {}", c.uid, c.gid))
                        .unwrap_or_else(|e| format!("unknown credentials ({e})"));
                    tracing::info!("refused a Unix-socket peer with {who}: not in server.allowed_uids/allowed_gids");
                    refuse(
                        fd,
                        &core,
                        ErrorCode::Unauthenticated,
                        &format!("peer {who} is not in this server's allow-lists"),
                    );
                } else if admit_connection(&core) {
                    monoio::spawn(super::conn::serve(stream, core.clone()));
                } else {
                    refuse_busy(fd, &core);
                }
            }
            Err(e) => errors.failed(&core, e).await,
        }
    }
    // The Unix listener is a dup: dropping it closes only this core's fd.
}

/// Heartbeat, slow/idle connection reaper and model refresh, on one timer.
async fn ticker(core: Rc<Core>) {
    let opts = core.opts();
    let period = BEAT_INTERVAL
        .min(opts.read_timeout / 4)
        .min(opts.idle_timeout / 4)
        .max(Duration::from_millis(5));
    loop {
        core.shared.heartbeats.beat(core.index);
        let now = Instant::now();
        let overdue: Vec<_> = core
            .conns
            .borrow()
            .iter()
            .filter_map(|(_, c)| c.overdue(now).map(|why| (c.clone(), why)))
            .collect();
        for (c, why) in overdue {
            c.kill(why);
        }
        core.refresh_models();
        monoio::time::sleep(period).await;
    }
}

/// Waits for the shutdown byte (or the handle going away), then drains.
async fn watch_wake(mut wake: monoio::net::UnixStream, core: Rc<Core>) {
    let _ = wake.read(vec![0u8; 16]).await;
    core.shutting_down.set(true);
    core.stop_accepting.set();
    core.flush_batches();
    let conns: Vec<_> = core.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
    for c in &conns {
        c.stop_reading();
    }
    drop(conns);
    let deadline = *core
        .shared
        .grace_deadline
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let deadline = deadline.unwrap_or_else(Instant::now);
    let drained = async {
        while !core.conns.borrow().is_empty() {
            core.conns_changed.wait().await;
        }
    };
    let in_time = monoio::select! {
        _ = drained => true,
        _ = monoio::time::sleep_until(monoio::time::Instant::from_std(deadline)) => false,
    };
    if !in_time {
        let left: Vec<_> = core.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        tracing::warn!(
            core = core.index,
            connections = left.len(),
            "shutdown grace period over: closing connections with work still in flight"
        );
        for c in left {
            c.kill(super::conn::Kill::Shutdown);
        }
    }
    core.finished.set();
}
