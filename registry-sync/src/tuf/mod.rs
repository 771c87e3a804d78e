//! A TUF 1.0 client: a verification core with no IO, and an updater around it.
//!
//! The shape follows python-tuf's `ngclient`:
//! - [`trusted::TrustedMetadataSet`] holds the trusted metadata and checks one
//!   transition per call (`update_root`, `update_timestamp`, `update_snapshot`,
//!   `update_delegated_targets`): bytes in, a decision out. It never touches the
//!   network, the disk or the clock (the reference time is handed in).
//! - [`updater::Updater`] drives the client workflow of the specification: it
//!   fetches through a [`fetch::Fetcher`] (a directory or HTTP), loads and
//!   persists trusted metadata through [`store::MetadataStore`] (atomic writes,
//!   a previous good copy kept), walks delegations and downloads targets.
//!
//! Architecture invariant: nothing outside `trusted.rs` decides whether metadata
//! is trusted; the updater only chooses which bytes to offer it.

pub mod canonical;
pub mod fetch;
pub mod keys;
pub mod metadata;
pub mod pattern;
pub mod store;
pub mod trusted;
pub mod updater;

/// The signing test repository: unit tests here, and behind the `testrepo` feature the
/// daemon's registry tests and the demo repository's generator.
#[cfg(any(test, feature = "testrepo"))]
pub mod testrepo;

pub use fetch::{DirFetcher, Fetcher, HttpFetcher};
pub use metadata::TargetFile;
pub use trusted::TrustedMetadataSet;
pub use updater::{target_file_name, Updater, UpdaterConfig};

/// What went wrong, for callers that react differently (a 404 is not an attack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not valid JSON, a missing or mistyped field, an unsupported spec version.
    Malformed,
    /// Metadata of the wrong `_type` for the role it was offered as.
    WrongType,
    /// Fewer valid signatures from the role's keys than its threshold.
    Signature,
    /// A version lower than the trusted one (rollback), or a role dropped from snapshot.
    Rollback,
    /// The same version as the trusted one: the trusted copy is kept.
    EqualVersion,
    /// A version other than the one the referring metadata names.
    VersionMismatch,
    /// Expired against the reference time.
    Expired,
    /// Length or a hash does not match, or a hash algorithm is not supported.
    LengthOrHash,
    /// More bytes than the size cap allows.
    TooLarge,
    /// The repository does not have the file (HTTP 403/404, no such file).
    NotFound,
    /// Transport failure other than not-found.
    Fetch,
    /// Local disk failure.
    Io,
    /// A role is delegated but not listed in snapshot.
    MissingMeta,
    /// A target path that is absolute, has `..`/`.`/empty segments, or other
    /// characters that could escape a directory.
    UnsafePath,
    /// A target path that no trusted role lists.
    TargetNotFound,
    /// A method called out of workflow order (a bug in the caller).
    Order,
}

/// A TUF client error: a kind to match on and a message for people.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TufError {
    pub kind: ErrorKind,
    pub message: String,
}

impl TufError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TufError {
            kind,
            message: message.into(),
        }
    }
}

pub type Result<T, E = TufError> = std::result::Result<T, E>;

pub(crate) fn err<T>(kind: ErrorKind, message: impl Into<String>) -> Result<T> {
    Err(TufError::new(kind, message))
}

/// The four top-level roles: delegated roles may not use these names (a
/// delegated "snapshot" would otherwise overwrite the trusted snapshot file).
pub const TOP_LEVEL_ROLES: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];
