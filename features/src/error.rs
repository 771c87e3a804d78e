//! The crate's typed errors: one enum, with a [`ErrorKind`] callers match on.

use std::path::PathBuf;

/// What went wrong, coarsely: what a caller (the daemon, the CLI) decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The LMDB map is full: nothing from the failed transaction was written.
    MapFull,
    /// A schema is invalid, or data does not match it (names, versions, dtypes).
    Schema,
    /// A value breaks its field's rules (wrong dtype, NaN/Inf where forbidden).
    InvalidValue,
    /// A key or row is larger than the store accepts.
    Oversized,
    /// An input file or payload cannot be parsed (truncated, malformed).
    Malformed,
    /// The configuration is invalid.
    Config,
    /// Reading or writing a file failed.
    Io,
    /// Any other LMDB failure.
    Store,
}

/// Every error this crate returns.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// `committed`: rows of the same import committed before the map filled (0 for a
    /// single write); re-running the import after raising the map size finishes it.
    #[error(
        "the feature store is full (map size {map_size} bytes): the failed transaction wrote \
         nothing ({committed} rows committed before it); raise cache.max_bytes"
    )]
    MapFull { map_size: u64, committed: u64 },
    #[error("schema: {0}")]
    Schema(String),
    #[error("invalid value: {0}")]
    InvalidValue(String),
    #[error("too large: {0}")]
    Oversized(String),
    #[error("malformed input: {0}")]
    Malformed(String),
    #[error("config: {key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("feature store: {0}")]
    Store(#[source] heed::Error),
}

impl FeatureError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            FeatureError::MapFull { .. } => ErrorKind::MapFull,
            FeatureError::Schema(_) => ErrorKind::Schema,
            FeatureError::InvalidValue(_) => ErrorKind::InvalidValue,
            FeatureError::Oversized(_) => ErrorKind::Oversized,
            FeatureError::Malformed(_) => ErrorKind::Malformed,
            FeatureError::Config { .. } => ErrorKind::Config,
            FeatureError::Io { .. } => ErrorKind::Io,
            FeatureError::Store(_) => ErrorKind::Store,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> FeatureError {
        FeatureError::Io {
            path: path.into(),
            source,
        }
    }
}
