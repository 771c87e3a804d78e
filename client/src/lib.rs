//! Clients for the edgeinfer wire protocol: blocking (std) and async (tokio).
//!
//! Both speak the same surface: `hello`, `predict`, `metadata`, `health`, and for load
//! generation a pipelined `send_predict` / `send_frame` + `recv` / `recv_frame`. Answers that
//! arrive for other requests while a one-shot call waits are kept and handed out by `recv`.

pub mod r#async;
pub mod blocking;
mod conn;
pub mod shm;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use edgeinfer_proto as proto;
use edgeinfer_proto::{ErrorCode, ProtoError, Tensor};

/// Where a server listens: a Unix socket path or a TCP `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = std::convert::Infallible;
    /// `unix:PATH`, or anything containing `/` → Unix socket; `tcp:HOST:PORT` or anything
    /// else → TCP.
    fn from_str(s: &str) -> Result<Endpoint, Self::Err> {
        Ok(if let Some(p) = s.strip_prefix("unix:") {
            Endpoint::Unix(p.into())
        } else if let Some(a) = s.strip_prefix("tcp:") {
            Endpoint::Tcp(a.to_owned())
        } else if s.contains('/') {
            Endpoint::Unix(s.into())
        } else {
            Endpoint::Tcp(s.to_owned())
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Everything in a PREDICT besides the model name and the inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PredictOptions {
    /// Pin a model version; `None` = the default version.
    pub version: Option<String>,
    /// Outputs wanted by name; empty = all.
    pub outputs: Vec<String>,
    /// Budget from the server's receipt of the request (whole microseconds are sent).
    pub deadline: Option<Duration>,
    /// Opaque A/B routing key.
    pub routing_key: Vec<u8>,
}

/// A successful PREDICT, outputs copied out of the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictResult {
    pub model: String,
    pub version: String,
    pub backend: String,
    pub queue_us: u64,
    pub compute_us: u64,
    pub outputs: Vec<Tensor>,
}

impl PredictResult {
    pub fn output(&self, name: &str) -> Option<&Tensor> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

/// What kind of failure a [`ClientError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The socket failed, timed out, or was closed.
    Io,
    /// The server sent something this client cannot read, or not what was asked.
    Protocol,
    /// The server answered with an ERROR frame.
    Server,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    #[error("protocol error")]
    Protocol(#[from] ProtoError),
    #[error("server answered request {request_id} with {got:#04x}, expected {expected}")]
    Unexpected {
        request_id: u64,
        got: u8,
        expected: edgeinfer_proto::Opcode,
    },
    #[error("server refused: {} ({code}): {message}", code_name(*.code))]
    Server {
        code: u32,
        message: String,
        retry_after_ms: u64,
    },
}

fn code_name(code: u32) -> &'static str {
    ErrorCode::from_u32(code).map_or("UNKNOWN_CODE", ErrorCode::name)
}

impl ClientError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Io(_) => ErrorKind::Io,
            ClientError::Protocol(_) | ClientError::Unexpected { .. } => ErrorKind::Protocol,
            ClientError::Server { .. } => ErrorKind::Server,
        }
    }

    /// The server's error code, if the server refused and the code is known.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => ErrorCode::from_u32(*code),
            _ => None,
        }
    }
}
