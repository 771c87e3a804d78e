//! Model sources: where model versions come from.
//!
//! Model files on local disk, named in the daemon's config; [`tuf`], the TUF client
//! that signed releases are verified with; [`agent`], the pull agent that follows a
//! repository; [`install`], the power-safe install of verified versions; and the
//! release side: [`release`] (what a release is, `bundle.json`, and the repository a
//! release engineer signs and publishes) and [`mlflow`] (MLflow's REST API).
//!
//! Architecture invariant: this crate never runs a model. It hands bytes and
//! identity to the daemon, which loads, warms and swaps them in.

pub mod agent;
pub mod install;
pub mod mlflow;
pub mod release;
pub mod tuf;

use std::path::{Path, PathBuf};

/// Model files larger than this are refused before being read (a config typo
/// pointing at a disk image should not exhaust memory).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// One model version's bytes and where they came from.
#[derive(Debug, Clone)]
pub struct ModelArtifact {
    pub name: String,
    pub version: String,
    pub bytes: Vec<u8>,
    pub origin: Origin,
}

/// Where an artifact came from, for status and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Compiled into the daemon (the demo model).
    Embedded,
    /// A file named in the config.
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Embedded => f.write_str("embedded"),
            Origin::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    TooLarge,
    Empty,
    Io,
}

#[derive(Debug, thiserror::Error)]
#[error("model {name:?}: {message}")]
pub struct SourceError {
    pub kind: ErrorKind,
    pub name: String,
    pub message: String,
}

/// Read a model version from a local file.
pub fn read_local(name: &str, version: &str, path: &Path) -> Result<ModelArtifact, SourceError> {
    let err = |kind, message: String| SourceError {
        kind,
        name: name.to_owned(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        err(kind, format!("cannot read {}: {e}", path.display()))
    })?;
    if meta.len() > MAX_MODEL_BYTES {
        return Err(err(
            ErrorKind::TooLarge,
            format!(
                "{} is {} bytes; the limit is {MAX_MODEL_BYTES}",
                path.display(),
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        err(
            ErrorKind::Io,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if bytes.is_empty() {
        return Err(err(
            ErrorKind::Empty,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(ModelArtifact {
        name: name.to_owned(),
        version: version.to_owned(),
        bytes,
        origin: Origin::File(path.to_owned()),
    })
}

/// The compiled-in demo model as an artifact.
pub fn embedded(name: &str, version: &str, bytes: &'static [u8]) -> ModelArtifact {
    ModelArtifact {
        name: name.to_owned(),
        version: version.to_owned(),
        bytes: bytes.to_vec(),
        origin: Origin::Embedded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_not_found() {
        let e = read_local("churn", "1", Path::new("/nonexistent/model.onnx")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.to_string().contains("/nonexistent/model.onnx"), "{e}");
    }

    #[test]
    fn empty_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("edgeinfer-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("empty.onnx");
        std::fs::write(&p, b"").unwrap();
        let e = read_local("m", "1", &p).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Empty);
        std::fs::write(&p, b"\x08\x07").unwrap();
        let a = read_local("m", "1", &p).unwrap();
        assert_eq!(a.bytes, b"\x08\x07");
        assert_eq!(a.origin, Origin::File(p.clone()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
