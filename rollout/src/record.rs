//! The bad-version record: candidates this device rolled back, kept across restarts so a
//! device never retries one until a new trial of it is directed.
//!
//! A "new trial" is a directive whose candidate is a different version, or the same
//! version under a new canary salt: raising or lowering the percent alone is not one (the
//! operator advancing a rollout must not make rolled-back devices try again). So the record
//! is keyed by (model, version, salt).
//!
//! Writes are atomic and durable: a temp file in the same directory, fsync, rename over the
//! record, fsync the directory. A crash leaves the old record or the new, never a mix.
//!
//! A record that does not decode (edited by hand, a disk fault) is a typed
//! [`ErrorKind::Corrupt`] error from [`BadRecord::open`]. [`BadRecord::open_or_distrust`]
//! is the safe fallback the daemon uses: the record starts empty but *distrusting*, so the
//! candidate of the next directive is treated as bad (the device serves stable) and written
//! down as such, which also replaces the unreadable file (kept aside as `<file>.corrupt`).
//! A restart before that still finds the unreadable file and distrusts again. Failing
//! towards stable is safe; failing towards "no candidate was ever bad" is not.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::judge::Failure;

/// Largest record read; a device rolls back a handful of candidates in its life.
const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Entries kept; the oldest go first (their trials ended long ago).
const MAX_ENTRIES: usize = 256;
const FORMAT: u32 = 1;

/// One rolled-back candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadVersion {
    pub model: String,
    pub version: String,
    /// The canary salt of the trial it failed in.
    pub salt: String,
    /// When it was rolled back, Unix seconds (the caller's clock).
    pub at_unix_s: u64,
    /// Why, in words.
    pub reason: String,
    /// The window's failed signals.
    #[serde(default)]
    pub evidence: Vec<Failure>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordFile {
    format: u32,
    bad: Vec<BadVersion>,
}

/// The record, in memory, bound to its file.
#[derive(Debug)]
pub struct BadRecord {
    path: PathBuf,
    entries: Vec<BadVersion>,
    /// Set when the file was unreadable: every candidate is bad until one is written down.
    distrust: bool,
}

impl BadRecord {
    /// Reads the record at `path`; a missing file is an empty record.
    pub fn open(path: &Path) -> Result<BadRecord, Error> {
        let entries = match File::open(path) {
            Ok(f) => read_entries(path, f)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("opening {}: {e}", path.display()),
                ))
            }
        };
        Ok(BadRecord {
            path: path.to_owned(),
            entries,
            distrust: false,
        })
    }

    /// [`BadRecord::open`], but an unreadable record becomes a distrusting one (see the
    /// module docs) instead of an error; the error is handed back for the event log.
    pub fn open_or_distrust(path: &Path) -> (BadRecord, Option<Error>) {
        match BadRecord::open(path) {
            Ok(r) => (r, None),
            Err(e) => (
                BadRecord {
                    path: path.to_owned(),
                    entries: Vec::new(),
                    distrust: true,
                },
                Some(e),
            ),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> &[BadVersion] {
        &self.entries
    }

    /// True when the record was unreadable and no candidate has been written down since.
    pub fn distrusting(&self) -> bool {
        self.distrust
    }

    /// Whether `model`@`version` failed in the trial drawn with `salt` (or the record was
    /// unreadable and nothing has been written down since).
    pub fn is_bad(&self, model: &str, version: &str, salt: &str) -> bool {
        self.distrust || self.find(model, version, salt).is_some()
    }

    /// The entry for `model`@`version` in the trial drawn with `salt`.
    pub fn find(&self, model: &str, version: &str, salt: &str) -> Option<&BadVersion> {
        self.entries
            .iter()
            .find(|b| b.model == model && b.version == version && b.salt == salt)
    }

    /// Writes `bad` down, durably, before returning. On error the record on disk is the old
    /// one, but `bad` is kept in memory so this process does not retry it either.
    pub fn mark_bad(&mut self, bad: BadVersion) -> Result<(), Error> {
        self.entries
            .retain(|b| !(b.model == bad.model && b.version == bad.version && b.salt == bad.salt));
        self.entries.push(bad);
        if self.entries.len() > MAX_ENTRIES {
            let drop = self.entries.len() - MAX_ENTRIES;
            self.entries.drain(..drop);
        }
        let was_distrusting = std::mem::replace(&mut self.distrust, false);
        if was_distrusting {
            // Keep the unreadable file for whoever investigates; best effort.
            let aside = with_suffix(&self.path, ".corrupt");
            let _ = fs::rename(&self.path, aside);
        }
        self.save()
    }

    fn save(&self) -> Result<(), Error> {
        let io = |what: &str, e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("{what} {}: {e}", self.path.display()),
            )
        };
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        let file = RecordFile {
            format: FORMAT,
            bad: self.entries.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).expect("the record always serialises");
        bytes.push(b'\n');
        let tmp = with_suffix(&self.path, ".tmp");
        let mut f = File::create(&tmp).map_err(|e| io("creating a temp file beside", e))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| io("writing a temp file beside", e))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(|e| io("renaming the temp file onto", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory of", e))?;
        Ok(())
    }
}

fn read_entries(path: &Path, f: File) -> Result<Vec<BadVersion>, Error> {
    let mut bytes = Vec::new();
    f.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::new(ErrorKind::Io, format!("reading {}: {e}", path.display())))?;
    let corrupt = |why: String| {
        Error::new(
            ErrorKind::Corrupt,
            format!("bad-version record {}: {why}", path.display()),
        )
    };
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(corrupt(format!("larger than {MAX_RECORD_BYTES} bytes")));
    }
    let file: RecordFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.format != FORMAT {
        return Err(corrupt(format!(
            "format {} (this build reads {FORMAT})",
            file.format
        )));
    }
    Ok(file.bad)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
