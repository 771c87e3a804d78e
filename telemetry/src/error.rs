//! The crate's typed errors: one [`Error`] with a [`ErrorKind`] the daemon can match on.

use std::fmt;

/// What went wrong, for callers that branch on it (metrics label, wire error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The LMDB outbox or prediction log failed (disk full, map full, IO).
    Store,
    /// A stored record could not be decoded (written by a newer build, or corrupt).
    Corrupt,
    /// A FEEDBACK or config value was malformed.
    InvalidInput,
    /// FEEDBACK named a request id the prediction log does not hold (never seen or expired).
    UnknownRequestId,
    /// MQTT options (URL, TLS files, credentials) could not be built.
    Mqtt,
    /// NVML is absent or failed.
    Gpu,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Store => "store",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::UnknownRequestId => "unknown_request_id",
            ErrorKind::Mqtt => "mqtt",
            ErrorKind::Gpu => "gpu",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A telemetry error: its kind and a message that names the thing involved.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn store(what: &str, e: impl fmt::Display) -> Error {
        Error::new(ErrorKind::Store, format!("{what}: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
