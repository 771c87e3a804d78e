//! The crate's typed errors: one [`Error`] with an [`ErrorKind`] the daemon and the CLI match on.

use std::fmt;

/// What went wrong, for callers that branch on it (events, exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A directive's bytes are not the JSON this crate reads (syntax, an unknown field).
    Parse,
    /// A directive parsed but says something impossible (see [`crate::DirectiveError`]).
    Invalid,
    /// Reading or writing the bad-version record failed.
    Io,
    /// The bad-version record on disk does not decode: torn by a crash or edited by hand.
    Corrupt,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Io => "io",
            ErrorKind::Corrupt => "corrupt",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rollout error: its kind and a message that names the thing involved.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    /// The validation failure behind an [`ErrorKind::Invalid`], for callers that match it.
    invalid: Option<crate::DirectiveError>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            invalid: None,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Which rule a directive broke, when the kind is [`ErrorKind::Invalid`].
    pub fn directive_error(&self) -> Option<&crate::DirectiveError> {
        self.invalid.as_ref()
    }
}

impl From<crate::DirectiveError> for Error {
    fn from(e: crate::DirectiveError) -> Error {
        Error {
            kind: ErrorKind::Invalid,
            message: e.to_string(),
            invalid: Some(e),
        }
    }
}
