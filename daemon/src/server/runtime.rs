//! Starting and stopping the core runtimes: one thread per core, pinned, running a monoio
//! runtime on the chosen driver; accept loops, the executor, a ticker (heartbeat, timeouts,
//! model refresh) and a wake pipe that carries shutdown from other threads.

use std::io::Write;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::io::AsyncReadRent;
use monoio::{FusionDriver, IoUringDriver, LegacyDriver, RuntimeBuilder};

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
    let stats = Arc::new(ServerStats::new(&cpus));
    let heartbeats = Arc::new(Heartbeats::new(&cpus));
    let shared = Arc::new(Shared {
        opts,
        table,
        stats: stats.clone(),
        heartbeats: heartbeats.clone(),
        grace_deadline: Mutex::new(None),
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
    let _ = ready.send((index, Ok(())));
    core.finished.wait().await;
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

async fn accept_backoff(e: std::io::Error) {
    // Out of fds or memory: accepting again at once would spin.
    tracing::warn!("accept failed: {e}");
    monoio::time::sleep(Duration::from_millis(20)).await;
}

async fn accept_tcp(l: monoio::net::TcpListener, core: Rc<Core>) {
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
                }
            }
            Err(e) => accept_backoff(e).await,
        }
    }
}

async fn accept_unix(l: monoio::net::UnixListener, core: Rc<Core>) {
    loop {
        let accepted = monoio::select! {
            r = l.accept() => r,
            _ = core.stop_accepting.wait() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                if admit_connection(&core) {
                    monoio::spawn(super::conn::serve(stream, core.clone()));
                }
            }
            Err(e) => accept_backoff(e).await,
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
