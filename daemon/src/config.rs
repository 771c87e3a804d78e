//! The daemon's configuration: one TOML file, overridden by `EDGEINFER_*` environment
//! variables and command-line flags, validated as a whole before anything binds; and the
//! plan of what a SIGHUP reload can change live.
//!
//! Precedence, highest first: command-line flag, `EDGEINFER_*` variable (clap reads both),
//! the file named by `--config` / `EDGEINFER_CONFIG`, the embedded defaults ([`Config::default`]).
//!
//! Every key is documented in `docs/config.md`; `systemd/edgeinferd.toml` is a complete example.
//! An unknown key is an error (`deny_unknown_fields`), and every error names its key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeinfer_engine::{EngineChoice, GpuPolicy, LoadOptions};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::app::{ModelSource, ModelSpec};
use crate::model_table::{BatchConfig, ServingConfig};
use crate::server::{Driver, ServerOptions};

// === Config ===

/// The whole configuration. `Default` is what `edgeinferd` with no arguments runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the daemon keeps its state (systemd: `StateDirectory=` → /var/lib/edgeinfer).
    pub state_dir: PathBuf,
    /// A `tracing` filter directive (`info`, `edgeinferd=debug,info`); changes live on SIGHUP.
    pub log_level: String,
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub engine: EngineConfig,
    /// The models to serve; none = the embedded demo model.
    pub models: Vec<ModelConfig>,
    pub registry: RegistryConfig,
    pub cache: CacheConfig,
    pub telemetry: TelemetryConfig,
    pub rollout: RolloutConfig,
}

/// The binary-protocol listeners and the data path's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Unix socket path; empty = no Unix listener.
    pub unix_socket: PathBuf,
    /// Permissions of the Unix socket file.
    pub socket_mode: Mode,
    /// Group of the Unix socket file (name or gid); unset = the daemon's group.
    pub socket_group: Option<String>,
    /// TCP address (`IP:port`); empty = no TCP listener. Loopback unless secured.
    #[serde(with = "opt_addr")]
    pub tcp: Option<SocketAddr>,
    /// Cores to serve on: `"all"` allowed cores, or a list.
    pub cores: Cores,
    pub driver: Driver,
    /// Largest frame accepted, header included.
    pub max_frame_bytes: u64,
    /// Requests a client may have outstanding on one connection.
    pub max_in_flight: u32,
    /// Open connections over all cores.
    pub max_connections: usize,
    /// Requests waiting per core; more are answered OVERLOADED.
    pub queue_depth: usize,
    /// A frame must arrive whole this long after its first byte (slow-loris guard).
    pub read_timeout_ms: u64,
    /// An idle connection is closed after this long.
    pub idle_timeout_ms: u64,
    /// A connection whose client reads none of its answers for this long is closed.
    pub write_timeout_ms: u64,
    /// Bytes of idle frame buffers each core keeps for reuse; the rest are freed.
    pub buffer_pool_bytes: usize,
    /// Rows one PREDICT may carry (leading dimension); more are refused BAD_INPUT.
    pub max_request_rows: u64,
    /// Engine time per step of a large request: more rows than run in this long are run in
    /// chunks, with other connections' requests between them.
    pub chunk_budget_us: u64,
    /// Before its thread sleeps, a core polls its connections for this long (0 = never):
    /// cheaper wake-ups for a core the appliance gives to the daemon alone.
    pub busy_poll_us: u64,
    /// SIGTERM drain time; keep below the unit's `TimeoutStopSec=`.
    pub shutdown_grace_ms: u64,
    /// File holding the token clients must present in HELLO (required off loopback).
    pub auth_token_file: Option<PathBuf>,
    /// TLS for the binary protocol: not implemented; setting these is an error.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// When non-empty, Unix-socket peers must have one of these uids (SO_PEERCRED)…
    pub allowed_uids: Vec<u32>,
    /// …or one of these gids. Both empty = file permissions alone decide.
    pub allowed_gids: Vec<u32>,
    /// `[server.shm]`: the shared-memory transport (its type and checks: server/shm.rs).
    pub shm: crate::server::ShmConfig,
}

/// The `[http]` section; its type, defaults and checks live with the HTTP server.
pub use crate::http::config::HttpConfig;

/// Engine defaults for every model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `libonnxruntime.so` (1.31.x); unset = `ORT_DYLIB_PATH`, then the default places of
    /// `edgeinfer_engine::locate_ort_library`, else no ORT (tract only).
    pub ort_library: Option<PathBuf>,
    /// Engine for models that do not name one: auto, tract, ort-cpu, ort-cuda.
    pub default: EngineChoice,
    /// GPU stance for models that do not state one: required, preferred, never.
    pub gpu: GpuPolicy,
    /// Threads one engine run may use (1: one session per serving core).
    pub intra_op_threads: usize,
    /// Accept NaN and infinities in float inputs.
    pub allow_non_finite: bool,
}

/// One model version to serve. (Not `Eq`: a feature schema holds f64 defaults.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name clients ask for: letters, digits, `_`, `-`, `.`.
    pub name: String,
    /// ONNX file; a relative path is taken from the config file's directory.
    pub path: PathBuf,
    #[serde(default = "default_version")]
    pub version: String,
    /// Overrides `engine.default`.
    #[serde(default)]
    pub engine: Option<EngineChoice>,
    /// Overrides `engine.gpu`.
    #[serde(default)]
    pub gpu: Option<GpuPolicy>,
    /// Dynamic batching: most rows per engine run; 0 = off (lowest latency).
    #[serde(default)]
    pub max_batch: usize,
    /// Dynamic batching: longest a request waits for company.
    #[serde(default = "default_max_delay_us")]
    pub max_delay_us: u64,
    /// The model's feature schema for PREDICT_BY_ENTITY (docs/features.md); until the signed
    /// bundle carries it, it is read from here.
    #[serde(default)]
    pub features: Option<edgeinfer_features::FeatureSchema>,
    /// JSON file with this version's reference statistics and accuracy baseline (drift and
    /// online accuracy, docs/telemetry.md); a relative path is taken like `path`.
    #[serde(default)]
    pub monitoring: Option<PathBuf>,
}

fn default_version() -> String {
    "1".into()
}
fn default_max_delay_us() -> u64 {
    500
}

/// `[registry]`: owned (type, defaults, validation) by the registry crate's pull agent
/// (docs/registry.md).
pub use edgeinfer_registry::agent::config::RegistryConfig;

/// `[cache]`: owned (type, defaults, validation) by the features crate (docs/features.md).
pub use edgeinfer_features::CacheConfig;

/// `[telemetry]`: owned (type, defaults, validation) by the telemetry crate.
pub use edgeinfer_telemetry::TelemetryConfig;

/// `[rollout]`: owned (type, defaults, validation) by the rollout crate.
pub use edgeinfer_rollout::RolloutConfig;

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("./var"),
            log_level: "info".into(),
            server: ServerConfig::default(),
            http: HttpConfig::default(),
            engine: EngineConfig::default(),
            models: Vec::new(),
            registry: RegistryConfig::default(),
            cache: CacheConfig::default(),
            telemetry: TelemetryConfig::default(),
            rollout: RolloutConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        let opts = ServerOptions::default();
        ServerConfig {
            unix_socket: PathBuf::from("./var/edgeinferd.sock"),
            socket_mode: Mode(0o660),
            socket_group: None,
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 7700))),
            cores: Cores::All,
            driver: Driver::DEFAULT,
            max_frame_bytes: opts.limits.max_frame_bytes,
            max_in_flight: opts.limits.max_in_flight,
            max_connections: opts.max_connections,
            queue_depth: opts.queue_depth,
            read_timeout_ms: opts.read_timeout.as_millis() as u64,
            idle_timeout_ms: opts.idle_timeout.as_millis() as u64,
            write_timeout_ms: opts.write_timeout.as_millis() as u64,
            buffer_pool_bytes: opts.buffer_pool_bytes,
            max_request_rows: opts.max_request_rows,
            chunk_budget_us: opts.chunk_budget.as_micros() as u64,
            busy_poll_us: opts.busy_poll.as_micros() as u64,
            shutdown_grace_ms: opts.shutdown_grace.as_millis() as u64,
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            shm: opts.shm,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        let d = LoadOptions::default();
        EngineConfig {
            ort_library: None,
            default: d.engine,
            gpu: d.gpu,
            intra_op_threads: d.intra_op_threads,
            allow_non_finite: d.allow_non_finite,
        }
    }
}

// === Value types ===

/// Unix file permission bits, written `"0660"` (or a TOML octal integer `0o660`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(Mode(m)),
            _ => Err(format!(
                "{s:?} is not an octal permission mode like \"0660\""
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Int(n) if (0..=0o777).contains(&n) => Ok(Mode(n as u32)),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "{n} is not a permission mode (0 ..= 0o777)"
            ))),
        }
    }
}

/// The cores to serve on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cores {
    /// Every core the process may run on (its affinity mask, e.g. systemd `CPUAffinity=`).
    #[default]
    All,
    List(Vec<usize>),
}

impl Cores {
    /// The list for [`ServerOptions::cores`]: empty = all allowed.
    pub fn to_vec(&self) -> Vec<usize> {
        match self {
            Cores::All => Vec::new(),
            Cores::List(v) => v.clone(),
        }
    }
}

impl std::str::FromStr for Cores {
    type Err = String;
    /// `all`, `0,1`, `0-3`, `0-1,3`.
    fn from_str(s: &str) -> Result<Cores, String> {
        let s = s.trim();
        if s == "all" {
            return Ok(Cores::All);
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            let bad = || format!("{s:?} is not \"all\" or a core list like \"0,1\" or \"0-3\"");
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b): (usize, usize) = (
                        a.trim().parse().map_err(|_| bad())?,
                        b.trim().parse().map_err(|_| bad())?,
                    );
                    if a > b || b - a > 4096 {
                        return Err(bad());
                    }
                    out.extend(a..=b);
                }
                None => out.push(part.parse().map_err(|_| bad())?),
            }
        }
        Ok(Cores::List(out))
    }
}

impl Serialize for Cores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cores::All => s.serialize_str("all"),
            Cores::List(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cores, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            List(Vec<usize>),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected \"all\", a list of core numbers, or a string like \"0-3\"",
            )
        })? {
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::List(v) => Ok(Cores::List(v)),
        }
    }
}

/// An optional `IP:port`, written as a string; `""` = off.
pub(crate) mod opt_addr {
    use super::*;

    pub fn parse(s: &str) -> Result<Option<SocketAddr>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| format!("{s:?} is not an IP:port address (like \"127.0.0.1:7700\" or \"[::1]:7700\"), nor \"\" for off"))
    }

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

// === Errors ===

/// What kind of configuration problem, for callers and tests to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The config file (or a file it names) could not be read.
    Io,
    /// Not valid TOML.
    Syntax,
    /// A key the daemon does not know (a typo, or a key from a newer release).
    UnknownKey,
    /// A key with a value of the wrong type or form.
    BadValue,
    /// Values that parse but do not make sense together or on this machine.
    Invalid,
    /// A listener that would be reachable from the network without TLS or a token.
    Insecure,
}

/// One problem with the configuration, naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ConfigErrorKind,
    /// Dotted key path, e.g. `server.tcp` or `models[0].path`; a flag name for CLI overrides.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A configuration that cannot be used: every problem found, each naming its key.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The config file, when the problem came from one.
    pub file: Option<PathBuf>,
    /// 1-based line and column in the file, when the TOML parser gave a position.
    pub position: Option<(usize, usize)>,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// The kind of the first problem.
    pub fn kind(&self) -> ConfigErrorKind {
        self.problems
            .first()
            .map_or(ConfigErrorKind::Invalid, |p| p.kind)
    }

    fn one(
        kind: ConfigErrorKind,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: None,
            position: None,
            problems: vec![Problem {
                kind,
                key: key.into(),
                message: message.into(),
            }],
        }
    }

    fn in_file(mut self, file: Option<&Path>) -> ConfigError {
        self.file = file.map(Path::to_path_buf);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.position) {
            (Some(file), Some((line, col))) => write!(f, "{}:{line}:{col}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some((line, col))) => write!(f, "line {line}, column {col}: ")?,
            (None, None) => {}
        }
        match self.problems.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} problems:", many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

// === Command line ===

// The configuration flags, for the daemon's clap CLI to `#[command(flatten)]`. A `//`
// comment, not `///`: clap would print a doc comment here as the top of `--help`.
//
// Every override is optional: absent, the file's (or the default) value stands. Each also
// reads an `EDGEINFER_*` environment variable; a flag beats its variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML config file (see docs/config.md).
    #[arg(long, env = "EDGEINFER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration (and model files), print the result and exit: 0 valid, 1 not.
    #[arg(long)]
    pub check_config: bool,
    /// State directory [config: state_dir].
    #[arg(long, env = "EDGEINFER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log filter, e.g. info or edgeinferd=debug [config: log_level].
    #[arg(long, env = "EDGEINFER_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Unix socket path, "" = none [config: server.unix_socket].
    #[arg(long, env = "EDGEINFER_UNIX_SOCKET", value_name = "PATH")]
    pub unix_socket: Option<PathBuf>,
    /// Unix socket permissions, octal [config: server.socket_mode].
    #[arg(long, env = "EDGEINFER_SOCKET_MODE", value_name = "MODE")]
    pub socket_mode: Option<String>,
    /// Unix socket group, name or gid [config: server.socket_group].
    #[arg(long, env = "EDGEINFER_SOCKET_GROUP", value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Binary-protocol TCP address, "" = none [config: server.tcp].
    #[arg(long, env = "EDGEINFER_TCP", value_name = "IP:PORT")]
    pub tcp: Option<String>,
    /// HTTP address, "" = none [config: http.listen].
    #[arg(long, env = "EDGEINFER_HTTP", value_name = "IP:PORT")]
    pub http: Option<String>,
    /// Cores: "all", "0,1" or "0-3" [config: server.cores].
    #[arg(long, env = "EDGEINFER_CORES", value_name = "CORES")]
    pub cores: Option<String>,
    /// Core runtime driver: auto, io_uring or epoll [config: server.driver].
    #[arg(long, env = "EDGEINFER_DRIVER", value_name = "DRIVER")]
    pub driver: Option<String>,
    /// A model to serve, NAME=PATH or NAME@VERSION=PATH (repeatable; replaces the file's
    /// [[models]]) [config: models].
    #[arg(
        long = "model",
        env = "EDGEINFER_MODEL",
        value_name = "NAME=PATH",
        value_delimiter = ','
    )]
    pub models: Vec<String>,
    /// Default engine: auto, tract, ort-cpu or ort-cuda [config: engine.default].
    #[arg(long, env = "EDGEINFER_ENGINE", value_name = "ENGINE")]
    pub engine: Option<String>,
    /// libonnxruntime.so to load [config: engine.ort_library].
    #[arg(long, env = "EDGEINFER_ORT_LIBRARY", value_name = "FILE")]
    pub ort_library: Option<PathBuf>,
    /// Dynamic batching for every model: most rows per run, 0 = off [config: models[].max_batch].
    #[arg(long, env = "EDGEINFER_MAX_BATCH", value_name = "ROWS")]
    pub max_batch: Option<usize>,
    /// Dynamic batching for every model: longest wait, µs [config: models[].max_delay_us].
    #[arg(long, env = "EDGEINFER_MAX_DELAY_US", value_name = "US")]
    pub max_delay_us: Option<u64>,
    /// Requests waiting per core; more are answered OVERLOADED [config: server.queue_depth].
    #[arg(long, env = "EDGEINFER_QUEUE_DEPTH", value_name = "N")]
    pub queue_depth: Option<usize>,
    /// Requests outstanding per connection, 1..=65536 [config: server.max_in_flight].
    #[arg(long, env = "EDGEINFER_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Open binary-protocol connections over all cores [config: server.max_connections].
    #[arg(long, env = "EDGEINFER_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// A frame must arrive whole this long after its first byte [config: server.read_timeout_ms].
    #[arg(long, env = "EDGEINFER_READ_TIMEOUT_MS", value_name = "MS")]
    pub read_timeout_ms: Option<u64>,
    /// Close a connection with nothing in flight this long [config: server.idle_timeout_ms].
    #[arg(long, env = "EDGEINFER_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// On SIGTERM, finish in-flight requests within this [config: server.shutdown_grace_ms].
    #[arg(long, env = "EDGEINFER_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Poll connections this long before a core sleeps [config: server.busy_poll_us].
    #[arg(long, env = "EDGEINFER_BUSY_POLL_US", value_name = "US")]
    pub busy_poll_us: Option<u64>,
    /// Token file for the binary protocol [config: server.auth_token_file].
    #[arg(long, env = "EDGEINFER_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Bearer-token file for HTTP [config: http.auth_token_file].
    #[arg(long, env = "EDGEINFER_HTTP_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub http_auth_token_file: Option<PathBuf>,
}

// === impl Config ===

impl Config {
    /// The model `POST /predict` serves.
    pub fn predict_model(&self) -> String {
        match (&self.http.predict_model, self.models.first()) {
            (Some(m), _) => m.clone(),
            (None, Some(first)) => first.name.clone(),
            (None, None) => crate::app::DEMO_NAME.to_owned(),
        }
    }

    /// Reads the file `args` names (if any), applies the overrides, resolves relative model
    /// paths against the file's directory, and validates the result ([`Config::validate`]).
    /// Binds nothing and loads no model.
    pub fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
        let cfg = Config::load_unvalidated(args)?;
        cfg.validate()
            .map_err(|e| e.in_file(args.config.as_deref()))?;
        Ok(cfg)
    }

    /// [`Config::load`] without the validation: for tools that want to show a config as given.
    pub fn load_unvalidated(args: &ConfigArgs) -> Result<Config, ConfigError> {
        let mut cfg = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        cfg.apply_overrides(args)?;
        Ok(cfg)
    }

    /// Parses a file; relative model paths are resolved against its directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::one(
                ConfigErrorKind::Io,
                "--config",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let mut cfg = Config::from_toml_str(&text).map_err(|e| e.in_file(Some(path)))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for m in &mut cfg.models {
            if m.path.is_relative() {
                m.path = base.join(&m.path);
            }
            if let Some(p) = m.monitoring.as_mut().filter(|p| p.is_relative()) {
                *p = base.join(&*p);
            }
        }
        cfg.registry.resolve_relative(base);
        Ok(cfg)
    }

    /// Parses TOML text. Unknown keys and malformed values are errors naming the key and,
    /// where the parser knows it, the line and column.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let de =
            toml::Deserializer::parse(text).map_err(|e| toml_error(text, String::new(), &e))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            toml_error(text, path, e.inner())
        })
    }

    /// Renders the effective configuration as TOML (for `--check-config` and support bundles).
    pub fn to_toml(&self) -> String {
        toml::to_string(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }

    fn apply_overrides(&mut self, a: &ConfigArgs) -> Result<(), ConfigError> {
        // The key names both spellings: the value may have come from either.
        let bad = |flag: &str, msg: String| {
            let env = format!(
                "EDGEINFER_{}",
                flag.trim_start_matches("--")
                    .replace('-', "_")
                    .to_uppercase()
            );
            ConfigError::one(ConfigErrorKind::BadValue, format!("{flag} (or {env})"), msg)
        };
        if let Some(v) = &a.state_dir {
            self.state_dir = v.clone();
        }
        if let Some(v) = &a.log_level {
            self.log_level = v.clone();
        }
        if let Some(v) = &a.unix_socket {
            self.server.unix_socket = v.clone();
        }
        if let Some(v) = &a.socket_mode {
            self.server.socket_mode = v.parse().map_err(|m| bad("--socket-mode", m))?;
        }
        if let Some(v) = &a.socket_group {
            self.server.socket_group = (!v.is_empty()).then(|| v.clone());
        }
        if let Some(v) = &a.tcp {
            self.server.tcp = opt_addr::parse(v).map_err(|m| bad("--tcp", m))?;
        }
        if let Some(v) = &a.http {
            self.http.listen = opt_addr::parse(v).map_err(|m| bad("--http", m))?;
        }
        if let Some(v) = &a.cores {
            self.server.cores = v.parse().map_err(|m| bad("--cores", m))?;
        }
        if let Some(v) = &a.driver {
            self.server.driver = v.parse().map_err(|m| bad("--driver", m))?;
        }
        if let Some(v) = &a.engine {
            self.engine.default = v.parse().map_err(|m| bad("--engine", m))?;
        }
        if let Some(v) = &a.ort_library {
            self.engine.ort_library = Some(v.clone());
        }
        if !a.models.is_empty() {
            self.models = a
                .models
                .iter()
                .map(|m| parse_model_flag(m).map_err(|msg| bad("--model", msg)))
                .collect::<Result<_, _>>()?;
        }
        for m in &mut self.models {
            if let Some(b) = a.max_batch {
                m.max_batch = b;
            }
            if let Some(d) = a.max_delay_us {
                m.max_delay_us = d;
            }
        }
        let s = &mut self.server;
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = a.$field { s.$field = v; } )* };
        }
        set!(
            queue_depth,
            max_in_flight,
            max_connections,
            read_timeout_ms,
            idle_timeout_ms,
            shutdown_grace_ms,
            busy_poll_us
        );
        if let Some(v) = &a.auth_token_file {
            s.auth_token_file = Some(v.clone());
        }
        if let Some(v) = &a.http_auth_token_file {
            self.http.auth_token_file = Some(v.clone());
        }
        Ok(())
    }

    /// Checks everything that can be checked without binding or loading: values in range,
    /// model files present, listeners that leave loopback secured, token and TLS files
    /// readable. Returns every problem found, not just the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        validate_into(self, &mut p);
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                file: None,
                position: None,
                problems: p,
            })
        }
    }

    /// Things that are allowed but worth a log line at startup.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.server.socket_mode.0 & 0o007 != 0 {
            w.push(format!(
                "server.socket_mode = \"{}\" lets every local user connect to the Unix socket",
                self.server.socket_mode
            ));
        }
        if self.models.is_empty() {
            w.push("no [[models]] configured: serving the embedded demo model".into());
        }
        w
    }

    /// The models to load, resolved against the `[engine]` defaults; the embedded demo model
    /// when none is configured.
    pub fn model_specs(&self) -> Vec<ModelSpec> {
        if self.models.is_empty() {
            return vec![ModelSpec {
                load: self.load_options(None),
                ..ModelSpec::demo()
            }];
        }
        self.models.iter().map(|m| self.model_spec(m)).collect()
    }

    /// One configured model as the app loads it.
    pub fn model_spec(&self, m: &ModelConfig) -> ModelSpec {
        ModelSpec {
            name: m.name.clone(),
            version: m.version.clone(),
            source: ModelSource::File(m.path.clone()),
            load: self.load_options(Some(m)),
            serving: m.serving(),
        }
    }

    /// How a model loads: its own engine and GPU stance, else the `[engine]` defaults.
    pub fn load_options(&self, m: Option<&ModelConfig>) -> LoadOptions {
        LoadOptions {
            engine: m.and_then(|m| m.engine).unwrap_or(self.engine.default),
            gpu: m.and_then(|m| m.gpu).unwrap_or(self.engine.gpu),
            ort_library: self.engine.ort_library.clone(),
            intra_op_threads: self.engine.intra_op_threads,
            allow_non_finite: self.engine.allow_non_finite,
        }
    }

    /// The data path's options.
    pub fn server_options(&self) -> ServerOptions {
        let s = &self.server;
        let d = ServerOptions::default();
        ServerOptions {
            cores: s.cores.to_vec(),
            driver: s.driver,
            limits: edgeinfer_proto::Limits {
                max_frame_bytes: s.max_frame_bytes,
                max_in_flight: s.max_in_flight,
                ..d.limits
            },
            max_connections: s.max_connections,
            queue_depth: s.queue_depth,
            read_timeout: Duration::from_millis(s.read_timeout_ms),
            idle_timeout: Duration::from_millis(s.idle_timeout_ms),
            write_timeout: Duration::from_millis(s.write_timeout_ms),
            buffer_pool_bytes: s.buffer_pool_bytes,
            max_request_rows: s.max_request_rows,
            chunk_budget: Duration::from_micros(s.chunk_budget_us),
            busy_poll: Duration::from_micros(s.busy_poll_us),
            auth_token_file: s.auth_token_file.clone(),
            allowed_uids: s.allowed_uids.clone(),
            allowed_gids: s.allowed_gids.clone(),
            shutdown_grace: Duration::from_millis(s.shutdown_grace_ms),
            shm: s.shm.clone(),
            ..d
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_grace_ms)
    }
}

impl ModelConfig {
    /// Batching as the data path takes it: 0 or 1 rows = off.
    pub fn serving(&self) -> ServingConfig {
        ServingConfig {
            batching: (self.max_batch > 1).then(|| BatchConfig {
                max_batch: self.max_batch,
                max_delay: Duration::from_micros(self.max_delay_us),
            }),
        }
    }
}

/// `NAME=PATH` or `NAME@VERSION=PATH`.
fn parse_model_flag(s: &str) -> Result<ModelConfig, String> {
    let Some((id, path)) = s.split_once('=') else {
        return Err(format!("{s:?}: expected NAME=PATH or NAME@VERSION=PATH"));
    };
    let (name, version) = match id.split_once('@') {
        Some((n, v)) => (n, v.to_owned()),
        None => (id, default_version()),
    };
    Ok(ModelConfig {
        name: name.to_owned(),
        path: PathBuf::from(path),
        version,
        engine: None,
        gpu: None,
        max_batch: 0,
        max_delay_us: default_max_delay_us(),
        features: None,
        monitoring: None,
    })
}

fn toml_error(text: &str, path: String, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_owned();
    let kind = if message.starts_with("unknown field") {
        ConfigErrorKind::UnknownKey
    } else if path.is_empty()
        && !message.starts_with("missing field")
        && !message.starts_with("invalid")
    {
        ConfigErrorKind::Syntax
    } else {
        ConfigErrorKind::BadValue
    };
    let position = e.span().map(|span| line_col(text, span.start));
    let key = match (path.as_str(), kind) {
        ("" | ".", ConfigErrorKind::Syntax) => "(syntax)".to_owned(),
        ("" | ".", _) => "(top level)".to_owned(),
        (p, _) => p.to_owned(),
    };
    ConfigError {
        file: None,
        position,
        problems: vec![Problem { kind, key, message }],
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

// === Validation ===

fn validate_into(c: &Config, out: &mut Vec<Problem>) {
    if c.state_dir.as_os_str().is_empty() {
        invalid(out, "state_dir", "must not be empty".into());
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log_level) {
        invalid(
            out,
            "log_level",
            format!("{:?} is not a log filter: {e}", c.log_level),
        );
    }

    // --- server ---
    let s = &c.server;
    if s.unix_socket.as_os_str().is_empty() && s.tcp.is_none() {
        invalid(
            out,
            "server",
            "no listener: set server.unix_socket or server.tcp".into(),
        );
    }
    if let Some(g) = &s.socket_group {
        if let Err(e) = crate::server::group_id(g) {
            invalid(out, "server.socket_group", format!("{g:?}: {e}"));
        }
    }
    if let Cores::List(list) = &s.cores {
        if list.is_empty() {
            invalid(
                out,
                "server.cores",
                "is an empty list; use \"all\" or name at least one core".into(),
            );
        } else if let Ok(allowed) = edgeinfer_engine::cores::allowed_cores() {
            let mut seen = std::collections::BTreeSet::new();
            for core in list {
                if !seen.insert(core) {
                    invalid(out, "server.cores", format!("core {core} is listed twice"));
                } else if !allowed.contains(core) {
                    invalid(
                        out,
                        "server.cores",
                        format!(
                            "core {core} is not one this process may run on (allowed: {allowed:?})"
                        ),
                    );
                }
            }
        }
    }
    range(
        out,
        "server.max_frame_bytes",
        s.max_frame_bytes,
        4096,
        1 << 30,
        " bytes",
    );
    range(
        out,
        "server.max_in_flight",
        s.max_in_flight as u64,
        1,
        65_536,
        "",
    );
    range(
        out,
        "server.max_connections",
        s.max_connections as u64,
        1,
        1 << 20,
        "",
    );
    range(
        out,
        "server.queue_depth",
        s.queue_depth as u64,
        1,
        1 << 20,
        "",
    );
    range(
        out,
        "server.read_timeout_ms",
        s.read_timeout_ms,
        1,
        3_600_000,
        " ms",
    );
    range(
        out,
        "server.idle_timeout_ms",
        s.idle_timeout_ms,
        1,
        86_400_000,
        " ms",
    );
    range(
        out,
        "server.write_timeout_ms",
        s.write_timeout_ms,
        1,
        86_400_000,
        " ms",
    );
    range(
        out,
        "server.buffer_pool_bytes",
        s.buffer_pool_bytes as u64,
        0,
        1 << 34,
        " bytes",
    );
    range(
        out,
        "server.max_request_rows",
        s.max_request_rows,
        1,
        u32::MAX as u64,
        "",
    );
    range(
        out,
        "server.chunk_budget_us",
        s.chunk_budget_us,
        10,
        3_600_000_000,
        " µs",
    );
    range(
        out,
        "server.busy_poll_us",
        s.busy_poll_us,
        0,
        100_000,
        " µs",
    );
    range(
        out,
        "server.shutdown_grace_ms",
        s.shutdown_grace_ms,
        0,
        600_000,
        " ms",
    );
    s.shm.validate(out);
    crate::http::config::validate(&c.http, out);
    range(
        out,
        "engine.intra_op_threads",
        c.engine.intra_op_threads as u64,
        1,
        1024,
        "",
    );

    // --- security: leaving loopback needs a token (or, for HTTP, TLS) ---
    crate::security::validate(c, out);

    if let Some(m) = &c.http.predict_model {
        let known = if c.models.is_empty() {
            m == crate::app::DEMO_NAME
        } else {
            c.models.iter().any(|x| &x.name == m)
        };
        if !known {
            invalid(
                out,
                "http.predict_model",
                format!("{m:?} is not a configured model"),
            );
        }
    }

    // --- engine ---
    if let Some(lib) = &c.engine.ort_library {
        if !lib.is_file() {
            out.push(Problem {
                kind: ConfigErrorKind::Invalid,
                key: "engine.ort_library".into(),
                message: format!("{} is not a file", lib.display()),
            });
        }
    }

    // --- models ---
    let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (i, m) in c.models.iter().enumerate() {
        let key = |field: &str| format!("models[{i}].{field}");
        if !valid_name(&m.name) {
            invalid(out, &key("name"),
                format!("{:?} is not a model name: 1-128 of letters, digits, '_', '-', '.', not starting with '.'", m.name),
            );
        }
        if !valid_name(&m.version) {
            invalid(
                out,
                &key("version"),
                format!(
                    "{:?} is not a version: 1-128 of letters, digits, '_', '-', '.'",
                    m.version
                ),
            );
        }
        if let Some(j) = seen.insert((&m.name, &m.version), i) {
            invalid(
                out,
                &key("version"),
                format!(
                    "model {:?} version {:?} is also models[{j}]",
                    m.name, m.version
                ),
            );
        }
        match std::fs::metadata(&m.path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => invalid(
                out,
                &key("path"),
                format!("{} is not a file", m.path.display()),
            ),
            Err(e) => invalid(out, &key("path"), format!("{}: {e}", m.path.display())),
        }
        if m.max_batch > 1 {
            if m.max_delay_us == 0 {
                invalid(out, &key("max_delay_us"), format!("is 0 with max_batch = {}: batches could never form; set a delay (e.g. 500) or max_batch = 0", m.max_batch));
            }
            if m.max_batch > 4096 {
                invalid(
                    out,
                    &key("max_batch"),
                    format!("{} is out of range: 0 ..= 4096", m.max_batch),
                );
            }
            if m.max_batch > c.server.queue_depth {
                invalid(
                    out,
                    &key("max_batch"),
                    format!(
                        "{} exceeds server.queue_depth = {}: a batch could never fill",
                        m.max_batch, c.server.queue_depth
                    ),
                );
            }
        }
        if m.max_delay_us > 1_000_000 {
            invalid(
                out,
                &key("max_delay_us"),
                format!("{} is out of range: 0 ..= 1000000 µs", m.max_delay_us),
            );
        }
    }

    // --- not active yet, but validated so a config written today keeps working ---
    for p in c.registry.validate() {
        invalid(out, p.key, p.message);
    }
    for (key, message) in c.cache.problems() {
        invalid(out, key, message);
    }
    for p in c.telemetry.validate() {
        invalid(out, p.key, p.message);
    }
    for p in c.rollout.validate() {
        invalid(out, p.key, p.message);
    }
}

fn invalid(out: &mut Vec<Problem>, key: &str, message: String) {
    out.push(Problem {
        kind: ConfigErrorKind::Invalid,
        key: key.to_owned(),
        message,
    })
}

pub(crate) fn range(out: &mut Vec<Problem>, key: &str, v: u64, lo: u64, hi: u64, unit: &str) {
    if !(lo..=hi).contains(&v) {
        invalid(
            out,
            key,
            format!("{v} is out of range: {lo} ..= {hi}{unit}"),
        );
    }
}

/// Model names and versions appear in URLs (`/v2/models/{name}/versions/{v}`) and metric
/// labels, so they are kept to a safe alphabet.
pub fn valid_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

// === Reload ===

/// What a SIGHUP reload does: changes applied live, and changed keys that need a restart.
#[derive(Debug, Clone, Default)]
pub struct ReloadPlan {
    /// Model versions to load, warm and add.
    pub add: Vec<ModelSpec>,
    /// Model versions to load again (path, engine or GPU stance changed), then swap in.
    pub reload: Vec<ModelSpec>,
    /// Model versions whose batching changed: swap a new `ModelVersion` over the same engine
    /// model, no reload.
    pub rebatch: Vec<ModelSpec>,
    /// `(name, version)` of model versions to drop.
    pub remove: Vec<(String, String)>,
    /// The new log filter, when it changed.
    pub log_level: Option<String>,
    /// The new drain time, when it changed.
    pub shutdown_grace: Option<Duration>,
    /// Keys (dotted paths) that changed but take effect only after a restart.
    pub needs_restart: Vec<String>,
}

impl ReloadPlan {
    /// Nothing to do live (there may still be keys that need a restart).
    pub fn is_live_noop(&self) -> bool {
        self.add.is_empty()
            && self.reload.is_empty()
            && self.rebatch.is_empty()
            && self.remove.is_empty()
            && self.log_level.is_none()
            && self.shutdown_grace.is_none()
    }

    /// One line for the log and `STATUS=`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let ids = |specs: &[ModelSpec]| {
            specs
                .iter()
                .map(|s| format!("{}@{}", s.name, s.version))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.add.is_empty() {
            parts.push(format!("add {}", ids(&self.add)));
        }
        if !self.reload.is_empty() {
            parts.push(format!("reload {}", ids(&self.reload)));
        }
        if !self.rebatch.is_empty() {
            parts.push(format!("rebatch {}", ids(&self.rebatch)));
        }
        if !self.remove.is_empty() {
            let r: Vec<_> = self
                .remove
                .iter()
                .map(|(n, v)| format!("{n}@{v}"))
                .collect();
            parts.push(format!("remove {}", r.join(", ")));
        }
        if let Some(l) = &self.log_level {
            parts.push(format!("log_level = {l:?}"));
        }
        if let Some(g) = self.shutdown_grace {
            parts.push(format!("shutdown_grace_ms = {}", g.as_millis()));
        }
        if parts.is_empty() {
            parts.push("no live changes".into());
        }
        let mut s = parts.join("; ");
        if !self.needs_restart.is_empty() {
            s.push_str(&format!(
                "; needs a restart to apply: {}",
                self.needs_restart.join(", ")
            ));
        }
        s
    }
}

/// Keys that a reload applies live; every other changed key needs a restart. Model and
/// engine-default changes are applied through the model table (`models`, `engine.*` except
/// the ORT library, which a process loads once).
const LIVE_KEYS: &[&str] = &[
    "log_level",
    "server.shutdown_grace_ms",
    "models",
    "engine.default",
    "engine.gpu",
    "engine.intra_op_threads",
    "engine.allow_non_finite",
];

/// Compares the running configuration with a newly loaded (and validated) one.
///
/// Pure: it decides, the caller applies. Models are matched by `(name, version)`.
pub fn reload_plan(old: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();

    let (old_specs, new_specs) = (old.model_specs(), new.model_specs());
    let find = |specs: &[ModelSpec], s: &ModelSpec| {
        specs
            .iter()
            .position(|o| o.name == s.name && o.version == s.version)
    };
    for spec in &new_specs {
        match find(&old_specs, spec) {
            None => plan.add.push(spec.clone()),
            Some(i) => {
                let o = &old_specs[i];
                if !same_source(&o.source, &spec.source) || !same_load(&o.load, &spec.load) {
                    plan.reload.push(spec.clone());
                } else if o.serving != spec.serving {
                    plan.rebatch.push(spec.clone());
                }
            }
        }
    }
    for o in &old_specs {
        if find(&new_specs, o).is_none() {
            plan.remove.push((o.name.clone(), o.version.clone()));
        }
    }
    if old.log_level != new.log_level {
        plan.log_level = Some(new.log_level.clone());
    }
    if old.server.shutdown_grace_ms != new.server.shutdown_grace_ms {
        plan.shutdown_grace = Some(new.shutdown_grace());
    }

    // Everything else: diff the two as JSON trees, so a key added later defaults to
    // "needs a restart" instead of being silently ignored.
    let (a, b) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    let mut changed = Vec::new();
    diff_keys(&a, &b, "", &mut changed);
    plan.needs_restart = changed
        .into_iter()
        .filter(|k| {
            !LIVE_KEYS
                .iter()
                .any(|l| k == l || k.starts_with(&format!("{l}.")))
        })
        .collect();
    plan
}

fn same_source(a: &ModelSource, b: &ModelSource) -> bool {
    match (a, b) {
        (ModelSource::File(x), ModelSource::File(y)) => x == y,
        (ModelSource::Embedded(x), ModelSource::Embedded(y)) => {
            x.as_ptr() == y.as_ptr() && x.len() == y.len()
        }
        _ => false,
    }
}

fn same_load(a: &LoadOptions, b: &LoadOptions) -> bool {
    a.engine == b.engine
        && a.gpu == b.gpu
        && a.ort_library == b.ort_library
        && a.intra_op_threads == b.intra_op_threads
        && a.allow_non_finite == b.allow_non_finite
}

fn diff_keys(a: &serde_json::Value, b: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(x), Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => diff_keys(va, vb, &path, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConfigArgs,
    }

    fn args(argv: &[&str]) -> ConfigArgs {
        Cli::try_parse_from(std::iter::once("edgeinferd").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    fn parse_err(text: &str) -> ConfigError {
        Config::from_toml_str(text).expect_err("should not parse")
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
        let d = Config::default();
        assert_eq!(d.server.tcp, Some("127.0.0.1:7700".parse().unwrap()));
        assert_eq!(d.http.listen, Some("127.0.0.1:7701".parse().unwrap()));
        assert_eq!(d.server.unix_socket, PathBuf::from("./var/edgeinferd.sock"));
        assert_eq!(d.server.socket_mode, Mode(0o660));
        d.validate().unwrap();
        let specs = d.model_specs();
        assert_eq!(
            (specs[0].name.as_str(), specs[0].version.as_str()),
            ("churn", "demo")
        );
    }

    #[test]
    fn the_default_round_trips_through_toml() {
        let text = Config::default().to_toml();
        assert_eq!(
            Config::from_toml_str(&text).unwrap(),
            Config::default(),
            "{text}"
        );
    }

    #[test]
    fn a_full_file_parses() {
        let c = Config::from_toml_str(
            r#"
            state_dir = "/var/lib/edgeinfer"
            log_level = "edgeinferd=debug,info"
            [server]
            unix_socket = "/run/edgeinfer/edgeinferd.sock"
            socket_mode = 0o640
            tcp = ""
            cores = "0-1"
            driver = "io_uring"
            [http]
            listen = "[::1]:9000"
            [engine]
            default = "ort-cpu"
            gpu = "never"
            [[models]]
            name = "churn"
            path = "churn.onnx"
            max_batch = 32
            max_delay_us = 200
            [[models]]
            name = "churn"
            version = "2"
            path = "churn2.onnx"
            engine = "tract"
            "#,
        )
        .unwrap();
        assert_eq!(c.server.socket_mode, Mode(0o640));
        assert_eq!(c.server.tcp, None);
        assert_eq!(c.server.cores, Cores::List(vec![0, 1]));
        assert_eq!(c.server.driver, Driver::IoUring);
        assert_eq!(c.http.listen, Some("[::1]:9000".parse().unwrap()));
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.models[0].version, "1");
        let specs = c.model_specs();
        assert_eq!(specs[0].load.engine, EngineChoice::OrtCpu);
        assert_eq!(specs[0].load.gpu, GpuPolicy::Never);
        assert_eq!(specs[1].load.engine, EngineChoice::Tract);
        let b = specs[0].serving.batching.unwrap();
        assert_eq!((b.max_batch, b.max_delay), (32, Duration::from_micros(200)));
        assert_eq!(specs[1].serving.batching, None);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let e =
            parse_err("log_level = \"info\"\n[server]\ntcp = \"127.0.0.1:1\"\nmax_inflight = 3\n");
        assert_eq!(e.kind(), ConfigErrorKind::UnknownKey);
        let msg = e.to_string();
        assert!(msg.contains("max_inflight"), "{msg}");
        assert!(
            msg.starts_with("line 4, column 1: server.max_inflight: unknown field"),
            "{msg}"
        );
        assert_eq!(e.position.map(|p| p.0), Some(4));

        let e = parse_err("[[models]]\nname = \"a\"\npath = \"a.onnx\"\nbatch = 3\n");
        assert_eq!(e.kind(), ConfigErrorKind::UnknownKey);
        assert!(e.to_string().contains("batch"), "{e}");
        assert!(e.problems[0].key.starts_with("models"), "{e}");

        let e = parse_err("[servre]\n");
        assert_eq!(e.kind(), ConfigErrorKind::UnknownKey);
        assert!(e.to_string().contains("servre"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key, words) in [
            (
                "[server]\nmax_in_flight = \"many\"\n",
                "server.max_in_flight",
                "invalid type",
            ),
            (
                "[server]\nsocket_mode = \"0999\"\n",
                "server.socket_mode",
                "octal",
            ),
            ("[server]\ntcp = \"localhost\"\n", "server.tcp", "IP:port"),
            ("[server]\ncores = \"some\"\n", "server.cores", "core list"),
            ("[server]\ndriver = \"kqueue\"\n", "server.driver", "kqueue"),
            ("[engine]\ndefault = \"cuda\"\n", "engine.default", "cuda"),
            ("[http]\nlisten = 7701\n", "http.listen", "invalid type"),
            ("[[models]]\nname = \"a\"\n", "models[0]", "path"),
        ] {
            let e = parse_err(text);
            assert_eq!(e.kind(), ConfigErrorKind::BadValue, "{text}: {e}");
            assert!(
                e.problems[0].key.starts_with(key),
                "{text}: key {:?}",
                e.problems[0].key
            );
            assert!(e.to_string().contains(words), "{text}: {e}");
            assert!(e.position.is_some(), "{text}: no position in {e:?}");
        }
        let e = parse_err("[server\n");
        assert_eq!(e.kind(), ConfigErrorKind::Syntax);
    }

    #[test]
    fn overrides_beat_the_file() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("edgeinferd.toml");
        std::fs::write(d.path().join("m.onnx"), b"not really onnx").unwrap();
        std::fs::write(&file, "[server]\ntcp = \"127.0.0.1:9100\"\nqueue_depth = 7\n[[models]]\nname = \"m\"\npath = \"m.onnx\"\n")
            .unwrap();
        let f = file.to_str().unwrap();
        let c = Config::load(&args(&["--config", f])).unwrap();
        assert_eq!(c.server.tcp, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.server.queue_depth, 7);
        assert_eq!(
            c.models[0].path,
            d.path().join("m.onnx"),
            "relative to the config file"
        );

        let c = Config::load(&args(&[
            "--config",
            f,
            "--tcp",
            "",
            "--queue-depth",
            "9",
            "--max-batch",
            "4",
            "--cores",
            "0",
        ]))
        .unwrap();
        assert_eq!(c.server.tcp, None);
        assert_eq!(c.server.queue_depth, 9);
        assert_eq!(c.models[0].max_batch, 4);
        assert_eq!(c.server.cores, Cores::List(vec![0]));

        let m = d.path().join("m.onnx");
        let flag = format!("other@7={}", m.display());
        let c = Config::load(&args(&["--config", f, "--model", &flag])).unwrap();
        assert_eq!(c.models.len(), 1);
        assert_eq!(
            (c.models[0].name.as_str(), c.models[0].version.as_str()),
            ("other", "7")
        );

        let e = Config::load(&args(&["--tcp", "nowhere"])).unwrap_err();
        assert_eq!(
            (e.kind(), e.problems[0].key.as_str()),
            (ConfigErrorKind::BadValue, "--tcp (or EDGEINFER_TCP)")
        );
        let e = Config::load(&args(&["--model", "nopath"])).unwrap_err();
        assert_eq!(e.problems[0].key, "--model (or EDGEINFER_MODEL)");
        let e = Config::load(&args(&["--config", "/nonexistent/edgeinferd.toml"])).unwrap_err();
        assert_eq!(e.kind(), ConfigErrorKind::Io);
    }

    #[test]
    fn the_chunk_budget_reaches_the_server_options() {
        let c = Config::from_toml_str("[server]\nchunk_budget_us = 75\n").unwrap();
        assert_eq!(
            c.server_options().chunk_budget,
            std::time::Duration::from_micros(75)
        );
        // 250 µs unless set (docs/config.md).
        assert_eq!(
            Config::default().server_options().chunk_budget,
            std::time::Duration::from_micros(250)
        );
    }

    #[test]
    fn busy_polling_is_off_unless_set_and_bounded() {
        let c = Config::from_toml_str("[server]\nbusy_poll_us = 50\n").unwrap();
        assert_eq!(
            c.server_options().busy_poll,
            std::time::Duration::from_micros(50)
        );
        assert_eq!(
            Config::default().server_options().busy_poll,
            std::time::Duration::ZERO
        );
        let mut c = Config::default();
        c.server.busy_poll_us = 100_001;
        let e = c.validate().unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.key == "server.busy_poll_us" && p.kind == ConfigErrorKind::Invalid),
            "{e}"
        );
    }

    #[test]
    fn validation_finds_every_problem_and_names_each_key() {
        let mut c = Config::default();
        c.server.tcp = Some("0.0.0.0:7700".parse().unwrap());
        c.http.listen = Some("[::]:7701".parse().unwrap());
        c.server.queue_depth = 0;
        c.server.chunk_budget_us = 0;
        c.log_level = "info,[[[".into();
        c.server.cores = Cores::List(vec![100_000]);
        c.models.push(ModelConfig {
            name: "../etc".into(),
            path: "/nonexistent/model.onnx".into(),
            version: "1".into(),
            engine: None,
            gpu: None,
            max_batch: 8,
            max_delay_us: 0,
            features: None,
            monitoring: None,
        });
        let e = c.validate().unwrap_err();
        let keys: Vec<(&str, ConfigErrorKind)> = e
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.kind))
            .collect();
        for want in [
            ("server.tcp", ConfigErrorKind::Insecure),
            ("http.listen", ConfigErrorKind::Insecure),
            ("server.queue_depth", ConfigErrorKind::Invalid),
            ("server.chunk_budget_us", ConfigErrorKind::Invalid),
            ("log_level", ConfigErrorKind::Invalid),
            ("server.cores", ConfigErrorKind::Invalid),
            ("models[0].name", ConfigErrorKind::Invalid),
            ("models[0].path", ConfigErrorKind::Invalid),
            ("models[0].max_delay_us", ConfigErrorKind::Invalid),
            ("models[0].max_batch", ConfigErrorKind::Invalid),
        ] {
            assert!(keys.contains(&want), "missing {want:?} in {e}");
        }
        assert!(
            e.to_string()
                .contains("0.0.0.0:7700 is reachable from other machines"),
            "{e}"
        );
    }

    #[test]
    fn off_loopback_is_allowed_with_a_token() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let tok = d.path().join("token");
        std::fs::write(&tok, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = Config::default();
        c.http.listen = Some("0.0.0.0:7701".parse().unwrap());
        c.http.auth_token_file = Some(tok.clone());
        c.validate().unwrap();
        // A token file others can read is refused, even though the listener is secured by it.
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = c.validate().unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.key == "http.auth_token_file" && p.message.contains("0644")),
            "{e}"
        );
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();

        // The binary protocol: the server checks HELLO tokens (issue 7), so a token secures a
        // public listener, and without one that listener is refused.
        c.server.tcp = Some("0.0.0.0:7700".parse().unwrap());
        c.server.auth_token_file = Some(tok.clone());
        c.validate().unwrap();
        c.server.auth_token_file = None;
        let e = c.validate().unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.key == "server.tcp" && p.message.contains("server.auth_token_file")),
            "{e}"
        );
        c.server.tcp = None;
        // SO_PEERCRED allow-lists are enforced on the Unix socket, so they are accepted.
        c.server.allowed_uids = vec![0];
        c.server.allowed_gids = vec![0];
        c.validate().unwrap();
    }

    #[test]
    fn half_configured_tls_is_refused() {
        let mut c = Config::default();
        c.http.tls_cert = Some("/etc/hostname".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.problems[0].key, "http.tls_key");
        let mut c = Config::default();
        c.server.tls_cert = Some("/etc/hostname".into());
        let e = c.validate().unwrap_err();
        assert!(
            e.to_string()
                .contains("TLS on the binary protocol is not implemented"),
            "{e}"
        );
    }

    #[test]
    fn enabled_future_sections_are_validated() {
        let c = Config::from_toml_str(
            "[registry]\nenabled = true\nurl = \"http://x\"\n[telemetry]\nenabled = true\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "registry.root_file",
                "registry.models",
                "telemetry.mqtt_url"
            ],
            "{e}"
        );
        assert!(!c.warnings().iter().any(|w| w.contains("[registry]")));
    }

    fn model(name: &str, version: &str, path: &str) -> ModelConfig {
        parse_model_flag(&format!("{name}@{version}={path}")).unwrap()
    }

    #[test]
    fn reload_plan_splits_live_changes_from_restarts() {
        let old = Config {
            models: vec![
                model("a", "1", "/m/a1"),
                model("b", "1", "/m/b1"),
                model("c", "1", "/m/c1"),
                model("d", "1", "/m/d1"),
            ],
            ..Config::default()
        };
        let mut new = old.clone();
        assert!(reload_plan(&old, &new).is_live_noop());
        assert!(reload_plan(&old, &new).needs_restart.is_empty());

        new.models[0].path = "/m/a1-retrained".into(); // reload
        new.models[1].max_batch = 16; // rebatch only
        new.models.remove(2); // remove c
        new.models.push(model("e", "1", "/m/e1")); // add
        new.log_level = "debug".into();
        new.server.shutdown_grace_ms = 2000;
        new.server.tcp = Some("127.0.0.1:9999".parse().unwrap());
        new.server.cores = Cores::List(vec![0]);
        new.http.listen = None;
        new.engine.ort_library = Some("/opt/ort/libonnxruntime.so".into());

        let p = reload_plan(&old, &new);
        let ids = |v: &[ModelSpec]| {
            v.iter()
                .map(|s| format!("{}@{}", s.name, s.version))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&p.add), ["e@1"]);
        // The ORT library changed, so every model's load options changed: all reload.
        assert_eq!(ids(&p.reload), ["a@1", "b@1", "d@1"]);
        assert_eq!(p.remove, [("c".to_owned(), "1".to_owned())]);
        assert_eq!(p.log_level.as_deref(), Some("debug"));
        assert_eq!(p.shutdown_grace, Some(Duration::from_secs(2)));
        assert_eq!(
            p.needs_restart,
            [
                "engine.ort_library",
                "http.listen",
                "server.cores",
                "server.tcp"
            ]
        );
        let s = p.summary();
        assert!(
            s.contains("needs a restart to apply: engine.ort_library"),
            "{s}"
        );

        // Without the library change, b is only rebatched.
        new.engine.ort_library = None;
        let p = reload_plan(&old, &new);
        assert_eq!(ids(&p.reload), ["a@1"]);
        assert_eq!(ids(&p.rebatch), ["b@1"]);
        // A changed engine default reloads live, it is not a restart.
        new.engine.default = EngineChoice::Tract;
        let p = reload_plan(&old, &new);
        assert_eq!(ids(&p.reload), ["a@1", "b@1", "d@1",]);
        assert!(
            !p.needs_restart.iter().any(|k| k.starts_with("engine")),
            "{:?}",
            p.needs_restart
        );
    }

    #[test]
    fn core_lists() {
        assert_eq!("all".parse::<Cores>().unwrap(), Cores::All);
        assert_eq!(
            "0-2,5".parse::<Cores>().unwrap(),
            Cores::List(vec![0, 1, 2, 5])
        );
        assert!("2-1".parse::<Cores>().is_err());
        assert!("".parse::<Cores>().is_err());
        assert_eq!("0o640".parse::<Mode>().unwrap(), Mode(0o640));
        assert!("".parse::<Mode>().is_err());
        assert!("1777".parse::<Mode>().is_err());
    }
}
