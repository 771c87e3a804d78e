//! Where a repository is published: a directory, or MLflow's artifact store
//! ([`crate::mlflow::MlflowDestination`]). Destinations are untrusted storage; they only
//! move files. [`crate::release::Repo::publish`] decides the order (targets, then
//! versioned metadata, then `timestamp.json` last) so a client polling during a publish
//! never sees a timestamp naming files that are not there yet.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{ReleaseError, ReleaseErrorKind as K};

/// Progress of long transfers (the CLI draws bars; tests pass [`NoProgress`]).
pub trait Progress {
    /// A file of `len` bytes starts.
    fn start(&mut self, name: &str, len: u64);
    /// `n` more bytes of it are done.
    fn advance(&mut self, n: u64);
    /// The file is done.
    fn finish(&mut self);
}

/// Progress that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// A reader that reports what has been read to a [`Progress`].
pub struct ProgressReader<'a, R> {
    pub inner: R,
    pub progress: &'a mut dyn Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Storage a repository is published into. `rel` is a `/`-separated path under the
/// repository root (`metadata/3.targets.json`, `targets/models/churn/3/<sha256>.model.onnx`).
pub trait Destination {
    /// For messages: where this is.
    fn describe(&self) -> String;
    /// Whether the destination already holds `rel` with this length (immutable files —
    /// versioned metadata and hash-named targets — are then not sent again).
    fn has(&self, rel: &str, len: u64) -> Result<bool, ReleaseError>;
    /// Store the file at `src` as `rel`, replacing any previous one.
    fn put(&self, rel: &str, src: &Path, progress: &mut dyn Progress) -> Result<(), ReleaseError>;
}

/// A directory (a web server's document root, a removable medium). Each file is written
/// to a temporary name, fsynced and renamed, so a reader never sees half a file.
#[derive(Debug, Clone)]
pub struct DirDestination {
    pub root: PathBuf,
}

impl DirDestination {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirDestination { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

fn io(what: &str, p: &Path, e: std::io::Error) -> ReleaseError {
    ReleaseError::new(K::Io, format!("{what} {}: {e}", p.display()))
}

impl Destination for DirDestination {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn has(&self, rel: &str, len: u64) -> Result<bool, ReleaseError> {
        Ok(fs::metadata(self.path(rel)).is_ok_and(|m| m.is_file() && m.len() == len))
    }

    fn put(&self, rel: &str, src: &Path, progress: &mut dyn Progress) -> Result<(), ReleaseError> {
        let dst = self.path(rel);
        let parent = dst.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).map_err(|e| io("cannot create", &parent, e))?;
        let len = fs::metadata(src)
            .map_err(|e| io("cannot read", src, e))?
            .len();
        progress.start(rel, len);
        let tmp = parent.join(format!(
            ".{}.tmp",
            dst.file_name().unwrap_or_default().to_string_lossy()
        ));
        let result = (|| {
            let mut reader = ProgressReader {
                inner: fs::File::open(src).map_err(|e| io("cannot open", src, e))?,
                progress: &mut *progress,
            };
            let mut f = fs::File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
            std::io::copy(&mut reader, &mut f).map_err(|e| io("cannot write", &tmp, e))?;
            f.flush().map_err(|e| io("cannot write", &tmp, e))?;
            f.sync_all().map_err(|e| io("cannot fsync", &tmp, e))?;
            fs::rename(&tmp, &dst).map_err(|e| io("cannot rename into", &dst, e))?;
            crate::tuf::store::sync_dir(&parent).map_err(|e| ReleaseError::new(K::Io, e.message))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        progress.finish();
        result
    }
}

/// Write `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the
/// directory): the working repository is never left with half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| io("cannot create", parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| io("cannot write", &tmp, e))?;
        f.sync_all().map_err(|e| io("cannot fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io("cannot rename into", path, e))?;
        crate::tuf::store::sync_dir(parent).map_err(|e| ReleaseError::new(K::Io, e.message))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
