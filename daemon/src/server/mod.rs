//! The data path: one pinned monoio runtime per allowed core, each accepting on its own
//! listeners and running its own engine sessions; frames are read into pooled aligned
//! buffers, decoded in place, queued per core (or batched per model), run, and answered with
//! vectored writes.
//!
//! Architecture invariant: a core's state (`Rc`, `RefCell`) never leaves its thread. Cores
//! share only the model table (one atomic load per request), the relaxed counters of
//! [`ServerStats`] and `VersionStats`, and the heartbeats. Control threads reach a core
//! only through its wake pipe (shutdown) and the model table.

mod buf;
mod conn;
mod core;
pub mod entity;
mod listen;
mod notify;
mod response;
mod runtime;
mod shm;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

pub use buf::FrameBuf;
pub use listen::{bind_tcp, bind_unix, group_id, TcpGroup};
pub use runtime::{start, ServerHandle, StartError, Trigger};
pub use shm::ShmConfig;

use edgeinfer_proto::{ErrorCode, Limits};

/// Which monoio driver the core runtimes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll (monoio's FusionDriver).
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "io_uring")]
    IoUring,
    /// epoll readiness (monoio's LegacyDriver).
    #[serde(rename = "epoll")]
    Epoll,
}

impl Driver {
    /// Measured with benches/serve.sh on this machine, the two drivers tie at concurrency 1
    /// (churn 1 row over Unix: 16.5 µs epoll, 16.8 µs io_uring) and trade places at
    /// saturation from run to run; epoll needs no io_uring syscalls in a seccomp filter and
    /// no locked memory, so it is the default. `auto` and `io_uring` are one setting away.
    pub const DEFAULT: Driver = Driver::Epoll;

    pub const fn name(self) -> &'static str {
        match self {
            Driver::Auto => "auto",
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }

    /// The driver that `self` resolves to on this machine.
    pub fn effective(self) -> Driver {
        match self {
            Driver::Auto if monoio::utils::detect_uring() => Driver::IoUring,
            Driver::Auto => Driver::Epoll,
            d => d,
        }
    }
}

impl Default for Driver {
    fn default() -> Self {
        Driver::DEFAULT
    }
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Driver, String> {
        match s {
            "auto" => Ok(Driver::Auto),
            "io_uring" | "iouring" | "uring" => Ok(Driver::IoUring),
            "epoll" | "legacy" => Ok(Driver::Epoll),
            other => Err(format!(
                "unknown driver {other:?}: expected auto, io_uring or epoll"
            )),
        }
    }
}

/// Everything the data path needs to know, already validated.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Cores to run on, one runtime each; empty = every allowed core.
    pub cores: Vec<usize>,
    pub driver: Driver,
    /// Frame, metadata, in-flight, tensor-count and rank limits (announced in HELLO).
    pub limits: Limits,
    /// Open connections over all cores; more are accepted, sent one ERROR (OVERLOADED) and
    /// closed.
    pub max_connections: usize,
    /// Requests waiting per core (run queue plus batches forming); more get OVERLOADED.
    pub queue_depth: usize,
    /// A frame must arrive whole within this long of its first byte (slow-loris guard).
    pub read_timeout: Duration,
    /// A connection with nothing in flight and nothing arriving is closed after this long.
    pub idle_timeout: Duration,
    /// A connection whose answers wait to be written and whose client has taken none of
    /// their bytes for this long is closed (docs/protocol.md §7.5).
    pub write_timeout: Duration,
    /// Bytes of idle frame buffers each core keeps for reuse.
    pub buffer_pool_bytes: usize,
    /// Rows (leading dimension) one PREDICT may carry; more are refused with BAD_INPUT, so
    /// that one request cannot hold a core for long.
    pub max_request_rows: u64,
    /// Engine time one step of a large request may take: a request with more rows than run
    /// in this long (as timed on its core) runs in chunks of rows, and other connections'
    /// requests run between its chunks.
    pub chunk_budget: Duration,
    /// Before a core's thread parks, it polls its connections (the driver, without
    /// waiting) for this long after its last request; zero = park at once.
    pub busy_poll: Duration,
    /// When set, every connection must open with a HELLO carrying this file's token.
    pub auth_token_file: Option<std::path::PathBuf>,
    /// SO_PEERCRED allow-lists for Unix-socket peers; both empty = no check.
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    /// Default drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Name sent in HELLO_RESPONSE.
    pub server_name: String,
    /// The shared-memory transport (`[server.shm]`, docs/protocol.md §11).
    pub shm: ShmConfig,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            cores: Vec::new(),
            driver: Driver::DEFAULT,
            limits: Limits::DEFAULT,
            max_connections: 4096,
            queue_depth: 1024,
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            buffer_pool_bytes: buf::DEFAULT_POOL_BYTES,
            max_request_rows: 65_536,
            chunk_budget: Duration::from_micros(250),
            busy_poll: Duration::ZERO,
            auth_token_file: None,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            server_name: concat!("edgeinferd/", env!("CARGO_PKG_VERSION")).to_owned(),
            shm: ShmConfig::default(),
        }
    }
}

/// Listeners handed to the server: bound by `main` from the config, by systemd (socket
/// activation), or by a test.
#[derive(Debug, Default)]
pub struct Listeners {
    /// Each is accepted on by every core (a dup per core).
    pub unix: Vec<std::os::unix::net::UnixListener>,
    pub tcp: Vec<TcpGroup>,
}

/// Number of wire error codes, plus one so codes index directly.
pub const ERROR_CODE_SLOTS: usize = 32;

/// Server-wide counters for metrics, all relaxed atomics.
#[derive(Debug)]
pub struct ServerStats {
    pub connections_open: AtomicUsize,
    pub connections_accepted: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed by the server for a slow frame or idleness.
    pub connections_timed_out: AtomicU64,
    /// Connections refused for a missing or wrong token, or a peer not allowed.
    pub connections_unauthenticated: AtomicU64,
    /// Accepts that failed for lack of file descriptors (EMFILE/ENFILE).
    pub accept_fd_exhausted: AtomicU64,
    /// PREDICTs refused from their metadata, before their tensor bytes were read (the
    /// rest of the frame is read and discarded).
    pub refused_before_data: AtomicU64,
    /// Requests run in several chunks of rows, and the chunks run.
    pub chunked_requests: AtomicU64,
    pub request_chunks: AtomicU64,
    /// Shared-memory sessions open now (each holds one memfd with its two rings), granted
    /// in all, and ended because the client broke the ring protocol.
    pub shm_sessions_open: AtomicUsize,
    pub shm_sessions_granted: AtomicU64,
    pub shm_sessions_hostile: AtomicU64,
    /// ERROR frames sent, by wire code.
    pub errors_by_code: [AtomicU64; ERROR_CODE_SLOTS],
    pub cores: Vec<CoreStats>,
}

/// Counters of one core runtime.
#[derive(Debug, Default)]
pub struct CoreStats {
    pub cpu: usize,
    /// Requests (any opcode) read on this core.
    pub requests: AtomicU64,
    /// Requests waiting in this core's queue and forming batches, now.
    pub queue_depth: AtomicUsize,
    pub connections_open: AtomicUsize,
}

impl ServerStats {
    pub fn new(cpus: &[usize]) -> ServerStats {
        ServerStats {
            connections_open: AtomicUsize::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_timed_out: AtomicU64::new(0),
            connections_unauthenticated: AtomicU64::new(0),
            accept_fd_exhausted: AtomicU64::new(0),
            refused_before_data: AtomicU64::new(0),
            chunked_requests: AtomicU64::new(0),
            request_chunks: AtomicU64::new(0),
            shm_sessions_open: AtomicUsize::new(0),
            shm_sessions_granted: AtomicU64::new(0),
            shm_sessions_hostile: AtomicU64::new(0),
            errors_by_code: Default::default(),
            cores: cpus
                .iter()
                .map(|&cpu| CoreStats {
                    cpu,
                    ..Default::default()
                })
                .collect(),
        }
    }

    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors_by_code
            .get(code.as_u32() as usize)
            .map_or(0, |c| c.load(Relaxed))
    }

    pub(crate) fn count_error(&self, code: ErrorCode) {
        if let Some(c) = self.errors_by_code.get(code.as_u32() as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn requests(&self) -> u64 {
        self.cores.iter().map(|c| c.requests.load(Relaxed)).sum()
    }
}
