//! The local metadata directory: trusted metadata as the repository served it.
//!
//! Files are `<quoted role>.json` (unversioned, the bytes exactly as received,
//! so hashes of local copies stay meaningful). Each write is atomic and durable:
//! write a temporary file, fsync it, keep the current file as `.<name>.prev`
//! (a hard link, so a complete current file exists at every instant), rename the
//! temporary over the current one, fsync the directory. A file that later fails
//! to load or verify falls back to its `.prev` copy: the last good state, never
//! "no state" (which would drop rollback protection).
//!
//! The store decides nothing about trust; the updater offers what it reads to
//! the verification core.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::fetch::quote_segment;
use super::{ErrorKind, Result, TufError};

const TIME_FILE: &str = ".last-trusted-time";

#[derive(Debug, Clone)]
pub struct MetadataStore {
    dir: PathBuf,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> TufError {
    TufError::new(ErrorKind::Io, format!("{what} {}: {e}", path.display()))
}

impl MetadataStore {
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
        Ok(MetadataStore {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<quoted role>.json`: never a path separator, never a top-level file of
    /// another role (delegated roles cannot be named like top-level ones).
    pub fn file_name(role: &str) -> String {
        format!("{}.json", quote_segment(role))
    }

    fn paths(&self, role: &str) -> (PathBuf, PathBuf, PathBuf) {
        let name = Self::file_name(role);
        (
            self.dir.join(&name),
            self.dir.join(format!(".{name}.prev")),
            self.dir.join(format!(".{name}.tmp")),
        )
    }

    /// The stored copies of `role`, newest first (current, then previous).
    /// Missing, unreadable or oversized copies are skipped.
    pub fn load(&self, role: &str, max_len: u64) -> Vec<Vec<u8>> {
        let (cur, prev, _) = self.paths(role);
        [cur, prev]
            .iter()
            .filter_map(|p| read_capped(p, max_len))
            .collect()
    }

    /// Replace the current copy of `role` atomically, keeping the old as previous.
    pub fn persist(&self, role: &str, data: &[u8]) -> Result<()> {
        let (cur, prev, tmp) = self.paths(role);
        write_synced(&tmp, data)?;
        if cur.exists() {
            let prev_tmp = self.dir.join(format!(".{}.prevtmp", Self::file_name(role)));
            let _ = fs::remove_file(&prev_tmp);
            if fs::hard_link(&cur, &prev_tmp).is_err() {
                fs::copy(&cur, &prev_tmp).map_err(|e| io_err("cannot copy", &cur, e))?;
            }
            fs::rename(&prev_tmp, &prev).map_err(|e| io_err("cannot rename", &prev_tmp, e))?;
        }
        fs::rename(&tmp, &cur).map_err(|e| io_err("cannot rename", &tmp, e))?;
        sync_dir(&self.dir)
    }

    /// The latest reference time a refresh used (seconds since the epoch), so a
    /// clock that goes back cannot revive expired metadata.
    pub fn last_trusted_time(&self) -> Option<i64> {
        let bytes = read_capped(&self.dir.join(TIME_FILE), 64)?;
        std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
    }

    pub fn set_last_trusted_time(&self, t: i64) -> Result<()> {
        let tmp = self.dir.join(format!("{TIME_FILE}.tmp"));
        write_synced(&tmp, format!("{t}\n").as_bytes())?;
        let dst = self.dir.join(TIME_FILE);
        fs::rename(&tmp, &dst).map_err(|e| io_err("cannot rename", &tmp, e))?;
        sync_dir(&self.dir)
    }
}

fn read_capped(path: &Path, max_len: u64) -> Option<Vec<u8>> {
    let f = File::open(path).ok()?;
    if f.metadata().ok()?.len() > max_len {
        tracing::warn!(path = %path.display(), "local metadata is over its size cap; ignored");
        return None;
    }
    let mut buf = Vec::new();
    f.take(max_len + 1).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 <= max_len).then_some(buf)
}

/// Write `data` to `path` (truncating) and fsync it.
pub(crate) fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io_err("cannot create", path, e))?;
    f.write_all(data)
        .map_err(|e| io_err("cannot write", path, e))?;
    f.sync_all().map_err(|e| io_err("cannot fsync", path, e))
}

/// fsync a directory so renames in it survive a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot fsync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_keeps_previous_and_names_are_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let s = MetadataStore::open(dir.path()).unwrap();
        s.persist("timestamp", b"v1").unwrap();
        assert_eq!(s.load("timestamp", 100), vec![b"v1".to_vec()]);
        s.persist("timestamp", b"v2").unwrap();
        assert_eq!(
            s.load("timestamp", 100),
            vec![b"v2".to_vec(), b"v1".to_vec()]
        );
        // Oversized copies are skipped, not truncated.
        s.persist("timestamp", b"v3-long").unwrap();
        assert_eq!(s.load("timestamp", 3), vec![b"v2".to_vec()]);
        s.persist("../evil", b"x").unwrap();
        assert!(dir.path().join("..%2Fevil.json").exists());
        // Only metadata files end in .json (the conformance suite reads every one).
        let mut json: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
        json.sort();
        assert_eq!(json, ["..%2Fevil.json", "timestamp.json"]);
    }

    #[test]
    fn last_trusted_time_round_trips_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let s = MetadataStore::open(dir.path()).unwrap();
        assert_eq!(s.last_trusted_time(), None);
        s.set_last_trusted_time(1_700_000_000).unwrap();
        assert_eq!(s.last_trusted_time(), Some(1_700_000_000));
        fs::write(dir.path().join(TIME_FILE), b"not a number").unwrap();
        assert_eq!(s.last_trusted_time(), None);
    }
}
