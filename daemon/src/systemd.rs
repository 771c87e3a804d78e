//! The daemon's side of systemd: `sd_notify` messages (READY, STATUS, STOPPING, RELOADING),
//! the watchdog thread that pings only while every data-path core is alive, and socket
//! activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`).
//!
//! Notifications go through the `sd-notify` crate, which reads `NOTIFY_SOCKET` on each
//! call; the variable therefore stays set (the daemon starts no child processes that
//! could inherit it). Socket activation stays hand-written here: it needs each fd
//! classified (Unix, TCP or not a listener, with `getsockname`/`SO_ACCEPTCONN`) and
//! routed by name to the binary server or HTTP, which `sd_notify::listen_fds_with_names`
//! (raw fds and names only) leaves to the caller anyway; see ARCHITECTURE.md.
//!
//! Read the environment (`Notifier::from_env`, `listen_fds`) before starting any thread:
//! `listen_fds` and `watchdog_timeout_from_env` unset the variables they consume, and
//! changing the environment is only safe while the process is single-threaded.

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::heartbeat::Heartbeats;
use crate::model_table::ModelTable;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The fd name that routes a socket-activated listener to the HTTP server; every other name
/// goes to the binary protocol (Unix or TCP, told apart by `getsockname`).
pub const HTTP_FD_NAME: &str = "http";

// === Notifier ===

/// Sends `sd_notify` messages; a no-op when not started by systemd (no `NOTIFY_SOCKET`).
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    active: bool,
}

impl Notifier {
    /// Checks `NOTIFY_SOCKET`: unset or empty is "not under systemd" (every message a
    /// no-op). An address `sd-notify` cannot reach is refused here, so a misconfigured
    /// unit fails at start with the reason instead of timing out waiting for READY=1:
    /// the crate connects to the value as a path, so the abstract namespace (`@name`) and
    /// relative paths are out.
    pub fn from_env() -> io::Result<Notifier> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
            return Ok(Notifier::default());
        };
        if !path.as_encoded_bytes().starts_with(b"/") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "NOTIFY_SOCKET {path:?} is not an absolute path (abstract sockets are not supported)"
                ),
            ));
        }
        Ok(Notifier { active: true })
    }

    /// Whether messages go anywhere.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Sends one datagram with these assignments.
    pub fn notify(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        if !self.active {
            return Ok(());
        }
        sd_notify::notify(states)
    }

    /// `READY=1`, refused unless every model in `table` is loaded and warm: systemd (and
    /// everything ordered `After=` the daemon) takes READY to mean requests will be answered.
    pub fn ready(&self, table: &ModelTable, status: &str) -> io::Result<()> {
        if !table.snapshot().all_ready() {
            return Err(io::Error::other(
                "READY=1 withheld: not every model is loaded and warm",
            ));
        }
        let status = one_line(status);
        self.notify(&[
            NotifyState::Ready,
            NotifyState::Status(&status),
            NotifyState::MainPid(std::process::id()),
        ])
    }

    /// A `STATUS=` line for `systemctl status`.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.notify(&[NotifyState::Status(&one_line(status))])
    }

    /// Sent when a graceful shutdown begins.
    pub fn stopping(&self, status: &str) -> io::Result<()> {
        self.notify(&[
            NotifyState::Stopping,
            NotifyState::Status(&one_line(status)),
        ])
    }

    /// Sent when a SIGHUP reload begins; follow with [`Notifier::reloaded`]. systemd 253+
    /// needs the `MONOTONIC_USEC` beside `RELOADING=1`.
    pub fn reloading(&self) -> io::Result<()> {
        self.notify(&[
            NotifyState::Reloading,
            NotifyState::monotonic_usec_now()?,
            NotifyState::Status("reloading the configuration"),
        ])
    }

    /// Sent when a reload is done (successfully or not: the daemon keeps serving either way).
    pub fn reloaded(&self, status: &str) -> io::Result<()> {
        self.notify(&[NotifyState::Ready, NotifyState::Status(&one_line(status))])
    }
}

/// sd_notify assignments are newline-separated: a status must stay on one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

// === Watchdog ===

/// The watchdog timeout systemd set for this process (`WATCHDOG_USEC`, honoured only when
/// `WATCHDOG_PID` is unset or ours; 0 means off). Unsets both. Call while single-threaded.
pub fn watchdog_timeout_from_env() -> Option<Duration> {
    // SAFETY: main calls this before it starts any thread (see the module doc).
    unsafe { sd_notify::watchdog_enabled_and_unset_env() }.filter(|t| !t.is_zero())
}

/// What the watchdog checks before each ping: is every data-path core alive?
pub trait Liveness: Send + Sync {
    /// `true` when every core has shown progress within `max_age` of `now`.
    fn all_fresh_at(&self, now: Instant, max_age: Duration) -> bool;
    /// For the STATUS line: the cores that have not.
    fn stale_at(&self, now: Instant, max_age: Duration) -> Vec<usize>;
}

impl Liveness for Heartbeats {
    fn all_fresh_at(&self, now: Instant, max_age: Duration) -> bool {
        Heartbeats::all_fresh_at(self, now, max_age)
    }
    fn stale_at(&self, now: Instant, max_age: Duration) -> Vec<usize> {
        self.ages_at(now)
            .into_iter()
            .filter(|(_, age)| age.is_none_or(|a| a > max_age))
            .map(|(cpu, _)| cpu)
            .collect()
    }
}

/// Timing of the watchdog thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogTiming {
    /// Time between pings: half of systemd's timeout, as sd_watchdog_enabled(3) advises.
    pub period: Duration,
    /// A core whose last heartbeat is older than this counts as stuck.
    pub max_age: Duration,
}

impl WatchdogTiming {
    /// Pings at half the timeout; a core is stuck once it has missed a whole ping period
    /// (but never less than a few heartbeat intervals, so scheduling noise is not "stuck").
    pub fn for_timeout(timeout: Duration) -> WatchdogTiming {
        let period = timeout / 2;
        WatchdogTiming {
            period,
            max_age: period.max(crate::heartbeat::BEAT_INTERVAL * 5),
        }
    }
}

/// The watchdog's decision for one tick, separated from the thread so it is tested exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// Send `WATCHDOG=1`; the status line when it changes back to healthy.
    Ping { recovered: bool },
    /// Withhold the ping; these cores are stuck. `first` on the tick that noticed.
    Withhold { stale: Vec<usize>, first: bool },
}

/// Watchdog state between ticks.
pub struct Watchdog {
    timing: WatchdogTiming,
    liveness: Mutex<Option<Arc<dyn Liveness>>>,
    withholding: AtomicBool,
}

impl Watchdog {
    pub fn new(timing: WatchdogTiming) -> Watchdog {
        Watchdog {
            timing,
            liveness: Mutex::new(None),
            withholding: AtomicBool::new(false),
        }
    }

    /// From here on, pings depend on `liveness`. Before this call (while models load) the
    /// watchdog pings unconditionally: startup is bounded by `TimeoutStartSec=` instead.
    pub fn watch(&self, liveness: Arc<dyn Liveness>) {
        *self.liveness.lock().unwrap_or_else(|e| e.into_inner()) = Some(liveness);
    }

    pub fn timing(&self) -> WatchdogTiming {
        self.timing
    }

    /// Decide at `now`.
    pub fn tick(&self, now: Instant) -> Tick {
        let liveness = self
            .liveness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match liveness {
            Some(l) if !l.all_fresh_at(now, self.timing.max_age) => {
                let first = !self.withholding.swap(true, Ordering::Relaxed);
                Tick::Withhold {
                    stale: l.stale_at(now, self.timing.max_age),
                    first,
                }
            }
            _ => Tick::Ping {
                recovered: self.withholding.swap(false, Ordering::Relaxed),
            },
        }
    }
}

/// The running watchdog thread.
pub struct WatchdogHandle {
    watchdog: Arc<Watchdog>,
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WatchdogHandle {
    /// See [`Watchdog::watch`].
    pub fn watch(&self, liveness: Arc<dyn Liveness>) {
        self.watchdog.watch(liveness);
    }

    /// Stops pinging (at shutdown, after `STOPPING=1`) and joins the thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WatchdogHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Starts the watchdog thread: one tick per `timing.period`, `WATCHDOG=1` when the tick
/// says so, a `STATUS=` line naming stuck cores when it withholds.
pub fn spawn_watchdog(notifier: Notifier, timing: WatchdogTiming) -> io::Result<WatchdogHandle> {
    let watchdog = Arc::new(Watchdog::new(timing));
    let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let (w, s) = (watchdog.clone(), stop.clone());
    let thread = std::thread::Builder::new().name("edgeinfer-watchdog".into()).spawn(move || {
        let (lock, cv) = &*s;
        let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *stopped {
                return;
            }
            drop(stopped);
            let sent = match w.tick(Instant::now()) {
                Tick::Ping { recovered: false } => notifier.notify(&[NotifyState::Watchdog]),
                Tick::Ping { recovered: true } => notifier.notify(&[
                    NotifyState::Watchdog,
                    NotifyState::Status("serving (all cores responsive again)"),
                ]),
                Tick::Withhold { stale, first } => {
                    if first {
                        tracing::error!(cores = ?stale, "cores stopped beating: withholding watchdog pings");
                    }
                    notifier.status(&format!(
                        "cores {stale:?} unresponsive for over {} ms: withholding watchdog pings",
                        w.timing.max_age.as_millis()
                    ))
                }
            };
            if let Err(e) = sent {
                tracing::warn!("sd_notify: {e}");
            }
            stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            if !*stopped {
                stopped = cv.wait_timeout(stopped, w.timing.period).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
    })?;
    Ok(WatchdogHandle {
        watchdog,
        stop,
        thread: Some(thread),
    })
}

// === Socket activation ===

/// Listeners passed by systemd, by kind and name (`FileDescriptorName=`).
#[derive(Debug, Default)]
pub struct Activated {
    /// Binary protocol on Unix sockets.
    pub unix: Vec<(String, UnixListener)>,
    /// Binary protocol on TCP.
    pub tcp: Vec<(String, TcpListener)>,
    /// Named [`HTTP_FD_NAME`]: for the HTTP server.
    pub http: Vec<(String, TcpListener)>,
}

impl Activated {
    pub fn is_empty(&self) -> bool {
        self.unix.is_empty() && self.tcp.is_empty() && self.http.is_empty()
    }

    /// The binary-protocol listeners, as the server takes them. TCP sockets from systemd are
    /// shared by every core (one accept queue), since systemd binds each address once.
    pub fn into_server_listeners(self) -> (crate::server::Listeners, Vec<TcpListener>) {
        let listeners = crate::server::Listeners {
            unix: self.unix.into_iter().map(|(_, l)| l).collect(),
            tcp: self
                .tcp
                .into_iter()
                .map(|(_, l)| crate::server::TcpGroup::Shared(l))
                .collect(),
        };
        (listeners, self.http.into_iter().map(|(_, l)| l).collect())
    }

    /// The loopback rule for listeners systemd passed: a non-loopback binary TCP socket
    /// needs `server.auth_token_file`, a non-loopback HTTP socket `http.auth_token_file`.
    /// Call before serving on them.
    pub fn check(&self, cfg: &crate::config::Config) -> Result<(), crate::config::ConfigError> {
        use crate::config::{ConfigError, ConfigErrorKind, Problem};
        let mut problems = Vec::new();
        for (list, key, secured) in [
            (
                &self.tcp,
                "server.auth_token_file",
                cfg.server.auth_token_file.is_some(),
            ),
            (
                &self.http,
                "http.auth_token_file",
                cfg.http.auth_token_file.is_some(),
            ),
        ] {
            for (name, l) in list {
                let addr = l.local_addr().map_err(|e| ConfigError {
                    file: None,
                    position: None,
                    problems: vec![Problem {
                        kind: ConfigErrorKind::Invalid,
                        key: format!("LISTEN_FDS ({name})"),
                        message: format!("getsockname: {e}"),
                    }],
                })?;
                if !crate::security::is_loopback(&addr) && !secured {
                    problems.push(Problem {
                        kind: ConfigErrorKind::Insecure,
                        key: key.to_owned(),
                        message: format!(
                            "systemd passed {addr} ({name}), which is reachable from other machines; refusing to \
                             serve it without {key}"
                        ),
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                file: None,
                position: None,
                problems,
            })
        }
    }

    /// For logs: `name=unix:/run/…`, `name=tcp:127.0.0.1:7700`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (n, l) in &self.unix {
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()));
            out.push(format!("{n}=unix:{}", path.unwrap_or_else(|| "?".into())));
        }
        for (kind, list) in [("tcp", &self.tcp), ("http", &self.http)] {
            for (n, l) in list {
                out.push(format!(
                    "{n}={kind}:{}",
                    l.local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_else(|_| "?".into())
                ));
            }
        }
        out
    }
}

/// Why passed fds cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("{0} is malformed: {1:?}")]
    BadVariable(&'static str, String),
    #[error("LISTEN_FDNAMES has {names} names for LISTEN_FDS={fds}")]
    NameCount { names: usize, fds: usize },
    #[error("passed fd {fd} ({name:?}): {reason}")]
    BadFd {
        fd: RawFd,
        name: String,
        reason: String,
    },
}

/// Takes the listeners systemd passed, if any (`Ok(None)` when `LISTEN_PID` is not ours or
/// unset). Unsets the three variables either way. Call while single-threaded, before any
/// other fd is opened.
pub fn listen_fds() -> Result<Option<Activated>, ActivationError> {
    let get = |k| std::env::var(k).ok();
    let (pid, fds, names) = (get("LISTEN_PID"), get("LISTEN_FDS"), get("LISTEN_FDNAMES"));
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let Some(n) = listen_fd_count(pid.as_deref(), fds.as_deref(), std::process::id())? else {
        return Ok(None);
    };
    let names = fd_names(names.as_deref(), n)?;
    let mut out = Activated::default();
    for (i, name) in names.into_iter().enumerate() {
        let fd = LISTEN_FDS_START + i as RawFd;
        // Only an fd that is open may be owned (dropping an OwnedFd closes it).
        // SAFETY: F_GETFD reads flags and has no other effect.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            let reason = format!("not an open fd ({})", io::Error::last_os_error());
            return Err(ActivationError::BadFd { fd, name, reason });
        }
        // SAFETY: systemd passed fds 3..3+n to this process (LISTEN_PID matched), fd is open,
        // and nothing else owns it; from here on `owned` does.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match classify(owned, &name).map_err(|reason| ActivationError::BadFd {
            fd,
            name: name.clone(),
            reason,
        })? {
            Passed::Unix(l) => out.unix.push((name, l)),
            Passed::Tcp(l) if name == HTTP_FD_NAME => out.http.push((name, l)),
            Passed::Tcp(l) => out.tcp.push((name, l)),
        }
    }
    Ok(Some(out))
}

/// How many fds were passed to `our_pid`, per sd_listen_fds(3).
pub fn listen_fd_count(
    pid: Option<&str>,
    fds: Option<&str>,
    our_pid: u32,
) -> Result<Option<usize>, ActivationError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadVariable("LISTEN_PID", pid.to_owned()))?;
    if pid != our_pid {
        return Ok(None);
    }
    let n: usize = fds
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadVariable("LISTEN_FDS", fds.to_owned()))?;
    if n > 1024 {
        return Err(ActivationError::BadVariable("LISTEN_FDS", fds.to_owned()));
    }
    Ok(Some(n))
}

/// The names of `n` passed fds; systemd's default name is "unknown".
pub fn fd_names(names: Option<&str>, n: usize) -> Result<Vec<String>, ActivationError> {
    match names {
        _ if n == 0 => Ok(Vec::new()),
        None => Ok(vec!["unknown".to_owned(); n]),
        Some(s) => {
            let v: Vec<String> = s.split(':').map(str::to_owned).collect();
            if v.len() != n {
                return Err(ActivationError::NameCount {
                    names: v.len(),
                    fds: n,
                });
            }
            Ok(v)
        }
    }
}

enum Passed {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Sets CLOEXEC and works out what a passed fd is: it must be a listening stream socket.
fn classify(fd: OwnedFd, _name: &str) -> Result<Passed, String> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(format!("not an open fd ({})", io::Error::last_os_error()));
    }
    let int_opt = |opt| -> Result<libc::c_int, String> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are valid out-parameters of the right size.
        let rc = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(format!("not a socket ({})", io::Error::last_os_error()));
        }
        Ok(v)
    };
    if int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err("not a stream socket (use ListenStream=)".into());
    }
    if int_opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err("not listening (Accept=yes is not supported: use Accept=no)".into());
    }
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss and len describe a buffer large enough for any address.
    if unsafe {
        libc::getsockname(
            raw,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return Err(format!("getsockname: {}", io::Error::last_os_error()));
    }
    match ss.ss_family as libc::c_int {
        libc::AF_UNIX => Ok(Passed::Unix(UnixListener::from(fd))),
        libc::AF_INET | libc::AF_INET6 => Ok(Passed::Tcp(TcpListener::from(fd))),
        other => Err(format!("unsupported address family {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn passed_listeners_off_loopback_need_a_token() {
        let mut a = Activated::default();
        a.tcp
            .push(("binary".into(), TcpListener::bind("127.0.0.1:0").unwrap()));
        a.http
            .push(("http".into(), TcpListener::bind("127.0.0.1:0").unwrap()));
        let mut cfg = crate::config::Config::default();
        a.check(&cfg).unwrap();
        a.http
            .push(("http".into(), TcpListener::bind("0.0.0.0:0").unwrap()));
        let e = a.check(&cfg).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].key, "http.auth_token_file");
        cfg.http.auth_token_file = Some("/run/credentials/http.token".into());
        a.check(&cfg).unwrap();
    }

    #[test]
    fn listen_fd_rules() {
        assert_eq!(listen_fd_count(None, Some("2"), 7).unwrap(), None);
        assert_eq!(
            listen_fd_count(Some("8"), Some("2"), 7).unwrap(),
            None,
            "for another process"
        );
        assert_eq!(listen_fd_count(Some("7"), Some("2"), 7).unwrap(), Some(2));
        assert!(listen_fd_count(Some("x"), Some("2"), 7).is_err());
        assert!(listen_fd_count(Some("7"), Some("-1"), 7).is_err());
        assert_eq!(fd_names(None, 2).unwrap(), ["unknown", "unknown"]);
        assert_eq!(
            fd_names(Some("binary:http"), 2).unwrap(),
            ["binary", "http"]
        );
        assert!(matches!(
            fd_names(Some("a:b:c"), 2),
            Err(ActivationError::NameCount { names: 3, fds: 2 })
        ));
    }

    #[test]
    fn watchdog_timing_pings_at_half_the_timeout() {
        let t = WatchdogTiming::for_timeout(Duration::from_secs(10));
        assert_eq!(
            (t.period, t.max_age),
            (Duration::from_secs(5), Duration::from_secs(5))
        );
    }

    #[test]
    fn watchdog_withholds_pings_while_a_core_is_stale() {
        let timing = WatchdogTiming {
            period: Duration::from_secs(1),
            max_age: Duration::from_secs(2),
        };
        let wd = Watchdog::new(timing);
        let hb = Arc::new(Heartbeats::new(&[0, 1]));
        let t0 = Instant::now();
        // Before the cores exist, startup pings go out.
        assert_eq!(wd.tick(t0), Tick::Ping { recovered: false });
        wd.watch(hb.clone());
        // Cores that never beat are not alive.
        assert_eq!(
            wd.tick(t0),
            Tick::Withhold {
                stale: vec![0, 1],
                first: true
            }
        );
        hb.beat_at(0, t0);
        hb.beat_at(1, t0);
        assert_eq!(
            wd.tick(t0 + Duration::from_secs(1)),
            Tick::Ping { recovered: true }
        );
        hb.beat_at(0, t0 + Duration::from_secs(3));
        // Core 1 stopped at t0: at t0+3 s it is 3 s old, over the 2 s limit.
        assert_eq!(
            wd.tick(t0 + Duration::from_secs(3)),
            Tick::Withhold {
                stale: vec![1],
                first: true
            }
        );
        assert_eq!(
            wd.tick(t0 + Duration::from_secs(4)),
            Tick::Withhold {
                stale: vec![1],
                first: false
            }
        );
        hb.beat_at(1, t0 + Duration::from_secs(4));
        assert_eq!(
            wd.tick(t0 + Duration::from_secs(4)),
            Tick::Ping { recovered: true }
        );
        assert_eq!(
            wd.tick(t0 + Duration::from_secs(5)),
            Tick::Ping { recovered: false }
        );
    }

    /// The one test in this binary that touches `NOTIFY_SOCKET` (the crate reads it on
    /// each message), so nothing else races its changes.
    #[test]
    fn notifier_sends_datagrams_and_withholds_ready_until_models_are_warm() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        let n = Notifier::from_env().unwrap();
        assert!(n.is_active());
        let mut buf = [0u8; 256];
        n.status("loading\nmodels").unwrap();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=loading models\n");
        n.stopping("draining").unwrap();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=draining\n");
        n.reloading().unwrap();
        let len = rx.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..len]).unwrap();
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines[0], "RELOADING=1", "{msg}");
        assert!(
            lines[1]
                .strip_prefix("MONOTONIC_USEC=")
                .is_some_and(|v| v.parse::<u64>().unwrap() > 0),
            "{msg}"
        );

        // READY=1 is refused while a model is not warm, and nothing is sent.
        let empty = ModelTable::default();
        assert!(n.ready(&empty, "serving").is_err());
        rx.set_nonblocking(true).unwrap();
        assert_eq!(
            rx.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing may be sent"
        );

        // An address sd-notify cannot reach is refused up front, with the reason.
        for bad in ["@edgeinfer-abstract", "relative/notify.sock"] {
            std::env::set_var("NOTIFY_SOCKET", bad);
            let e = Notifier::from_env().unwrap_err();
            assert!(e.to_string().contains("not an absolute path"), "{e}");
        }
        // Not under systemd: inactive, and every message a no-op.
        std::env::remove_var("NOTIFY_SOCKET");
        let n = Notifier::from_env().unwrap();
        assert!(!n.is_active());
        n.notify(&[NotifyState::Ready]).unwrap();
        assert_eq!(
            rx.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn classify_tells_unix_from_tcp_and_refuses_non_listeners() {
        let d = tempfile::tempdir().unwrap();
        let u = UnixListener::bind(d.path().join("s")).unwrap();
        assert!(matches!(
            classify(OwnedFd::from(u), "x"),
            Ok(Passed::Unix(_))
        ));
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = OwnedFd::from(t);
        // Clear CLOEXEC to check that classify sets it again.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
        let raw = fd.as_raw_fd();
        let Ok(Passed::Tcp(t)) = classify(fd, "x") else {
            panic!("expected TCP")
        };
        assert_eq!(
            unsafe { libc::fcntl(raw, libc::F_GETFD) } & libc::FD_CLOEXEC,
            libc::FD_CLOEXEC
        );
        drop(t);
        let connected = std::os::unix::net::UnixStream::pair().unwrap().0;
        let err = classify(OwnedFd::from(connected), "x").err().unwrap();
        assert!(err.contains("not listening"), "{err}");
        let dgram = UnixDatagram::unbound().unwrap();
        let err = classify(OwnedFd::from(dgram), "x").err().unwrap();
        assert!(err.contains("not a stream socket"), "{err}");
        let file = std::fs::File::open("/etc/hostname").unwrap();
        let err = classify(OwnedFd::from(file), "x").err().unwrap();
        assert!(err.contains("not a socket"), "{err}");
    }
}
