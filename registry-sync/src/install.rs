//! Power-safe install of verified model versions, Mender/RAUC style: the state file is the
//! truth, and only a completed fsync + rename changes it.
//!
//! Layout under the registry state directory:
//! - `staging/<name>/<version>/`: downloads in progress and versions being validated;
//!   nothing outside the agent reads these until they are hash-checked;
//! - `models/<name>/<version>/{model.onnx,bundle.json}`: committed versions;
//! - `models/<name>/state.json` (and `.state.json.prev`): the active version, the versions
//!   active beside it (a rollout candidate), and the verified versions kept, newest first,
//!   each with the length and sha256 of its files. A state written before `also_active`
//!   existed loads as one with none.
//!
//! Commit order: fsync every staged file, fsync the staging directory, rename it into
//! `models/<name>/<version>/`, fsync `models/<name>/`, then persist the new state (temporary
//! file, fsync, rename, fsync). A crash before the state rename leaves the old state, which
//! names only complete, fsynced directories; a crash after leaves the new one. A directory
//! no state names (a crash between the two renames) is removed on the next commit. On
//! start the active version's files are hashed against the state before anything loads
//! them; a version that does not match is skipped for the next verified one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::agent::config::valid_model_name;
use crate::tuf::keys::hex_encode;
use crate::tuf::store::{sync_dir, write_synced};

/// The files of one model version, as named in the target paths.
pub const MODEL_FILE: &str = "model.onnx";
pub const BUNDLE_FILE: &str = "bundle.json";
const STATE_FILE: &str = "state.json";
const STATE_PREV: &str = ".state.json.prev";
/// State files are small; anything bigger is not ours.
const MAX_STATE_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallErrorKind {
    /// A disk operation failed.
    Io,
    /// The state file (and its previous copy) cannot be parsed.
    CorruptState,
    /// An installed version's files do not match what the state recorded.
    Mismatch,
    /// A name or version that cannot be a directory name.
    BadName,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct InstallError {
    pub kind: InstallErrorKind,
    pub message: String,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> InstallError {
    InstallError {
        kind: InstallErrorKind::Io,
        message: format!("{what} {}: {e}", path.display()),
    }
}

fn from_tuf(e: crate::tuf::TufError) -> InstallError {
    InstallError {
        kind: InstallErrorKind::Io,
        message: e.message,
    }
}

pub type Result<T, E = InstallError> = std::result::Result<T, E>;

/// Length and sha256 of one installed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub length: u64,
    pub sha256: String,
}

/// One verified, committed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledVersion {
    pub version: String,
    /// The release counter its targets carried (0 when they carried none).
    pub release_counter: u64,
    pub files: BTreeMap<String, FileDigest>,
}

/// `models/<name>/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallState {
    pub model: String,
    /// The version the daemon serves by default (a rollout's stable version).
    pub active: Option<String>,
    /// Versions served beside `active` (a rollout's candidate), each among `verified`.
    /// Absent in older files (and not written when empty, so they still read them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_active: Vec<String>,
    /// Newest first: every active version, then the newest others up to `keep` in all.
    pub verified: Vec<InstalledVersion>,
}

impl InstallState {
    pub fn active(&self) -> Option<&InstalledVersion> {
        let a = self.active.as_deref()?;
        self.verified.iter().find(|v| v.version == a)
    }

    /// Every active version: `active` first, then `also_active`.
    pub fn active_set(&self) -> Vec<&str> {
        self.active
            .iter()
            .chain(&self.also_active)
            .map(String::as_str)
            .collect()
    }

    pub fn is_verified(&self, version: &str) -> bool {
        self.verified.iter().any(|v| v.version == version)
    }

    /// Keeps every active version and the newest others, `keep` versions in all (more when
    /// more are active: an active version is never dropped).
    fn trim(&mut self, keep: usize) {
        let active: Vec<String> = self.active_set().into_iter().map(str::to_owned).collect();
        let mut others = keep.saturating_sub(active.len());
        self.verified.retain(|v| {
            if active.contains(&v.version) {
                return true;
            }
            let k = others > 0;
            others = others.saturating_sub(1);
            k
        });
    }
}

/// Versions are directory names: the same rule as model names.
pub fn valid_version(v: &str) -> bool {
    valid_model_name(v)
}

fn check_names(name: &str, version: &str) -> Result<()> {
    if valid_model_name(name) && valid_version(version) {
        Ok(())
    } else {
        Err(InstallError {
            kind: InstallErrorKind::BadName,
            message: format!("{name:?}@{version:?} cannot name a directory"),
        })
    }
}

/// Length and sha256 of a file, read in chunks.
pub fn digest_file(path: &Path) -> Result<FileDigest> {
    let mut f = fs::File::open(path).map_err(|e| io("cannot open", path, e))?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut length = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        length += n as u64;
        ctx.update(&buf[..n]);
    }
    Ok(FileDigest {
        length,
        sha256: hex_encode(ctx.finish().as_ref()),
    })
}

/// The install area of one registry state directory.
#[derive(Debug, Clone)]
pub struct InstallStore {
    root: PathBuf,
    keep: usize,
}

impl InstallStore {
    /// `keep`: verified versions kept per model (at least 1).
    pub fn open(root: &Path, keep: usize) -> Result<Self> {
        for d in [root.join("staging"), root.join("models")] {
            fs::create_dir_all(&d).map_err(|e| io("cannot create", &d, e))?;
        }
        Ok(InstallStore {
            root: root.to_owned(),
            keep: keep.max(1),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join("models").join(name)
    }

    /// Where `name`@`version` is committed.
    pub fn version_dir(&self, name: &str, version: &str) -> PathBuf {
        self.model_dir(name).join(version)
    }

    /// A staging directory for `name`@`version` (created). Partial downloads in it survive a
    /// restart, so a download resumes instead of starting over.
    pub fn staging_dir(&self, name: &str, version: &str) -> Result<PathBuf> {
        check_names(name, version)?;
        let d = self.root.join("staging").join(name).join(version);
        fs::create_dir_all(&d).map_err(|e| io("cannot create", &d, e))?;
        Ok(d)
    }

    /// Drops a staging directory (a rejected version).
    pub fn discard_staging(&self, name: &str, version: &str) {
        if check_names(name, version).is_ok() {
            let _ = fs::remove_dir_all(self.root.join("staging").join(name).join(version));
        }
    }

    /// The state of `name`: the current file, else its previous copy; a missing file is the
    /// empty state. Both copies unreadable is [`InstallErrorKind::CorruptState`]: the caller
    /// must not guess (the daemon then serves what its config names and says so).
    pub fn load_state(&self, name: &str) -> Result<InstallState> {
        let dir = self.model_dir(name);
        let cur = dir.join(STATE_FILE);
        if !cur.exists() && !dir.join(STATE_PREV).exists() {
            return Ok(InstallState {
                model: name.to_owned(),
                ..Default::default()
            });
        }
        let mut why = Vec::new();
        for p in [cur, dir.join(STATE_PREV)] {
            match read_state(&p, name) {
                Ok(s) => {
                    if !why.is_empty() {
                        tracing::warn!(model = name, problem = %why.join("; "), "install state fell back to its previous copy");
                    }
                    return Ok(s);
                }
                Err(e) => why.push(e),
            }
        }
        Err(InstallError {
            kind: InstallErrorKind::CorruptState,
            message: format!(
                "install state of {name:?} is unreadable: {}",
                why.join("; ")
            ),
        })
    }

    /// Hashes `iv`'s files on disk against the state: a version that does not match is not
    /// loaded. Returns its directory.
    pub fn verify_installed(&self, name: &str, iv: &InstalledVersion) -> Result<PathBuf> {
        check_names(name, &iv.version)?;
        let dir = self.version_dir(name, &iv.version);
        for (file, want) in &iv.files {
            let got = digest_file(&dir.join(file))?;
            if &got != want {
                return Err(InstallError {
                    kind: InstallErrorKind::Mismatch,
                    message: format!(
                        "{name}@{} {file}: {} bytes sha256 {}, the state says {} bytes sha256 {}",
                        iv.version, got.length, got.sha256, want.length, want.sha256
                    ),
                });
            }
        }
        for required in [MODEL_FILE, BUNDLE_FILE] {
            if !iv.files.contains_key(required) {
                return Err(InstallError {
                    kind: InstallErrorKind::Mismatch,
                    message: format!("{name}@{}: the state lists no {required}", iv.version),
                });
            }
        }
        Ok(dir)
    }

    /// The verified versions of `name` whose files still match, the active one first: what
    /// the daemon starts on (the first that also loads).
    pub fn startable(&self, name: &str) -> Result<Vec<(InstalledVersion, PathBuf)>> {
        let state = self.load_state(name)?;
        let mut out = Vec::new();
        let mut order: Vec<&InstalledVersion> = state.active().into_iter().collect();
        order.extend(
            state
                .verified
                .iter()
                .filter(|v| Some(v.version.as_str()) != state.active.as_deref()),
        );
        for iv in order {
            match self.verify_installed(name, iv) {
                Ok(dir) => out.push((iv.clone(), dir)),
                Err(e) => {
                    tracing::warn!(model = name, version = %iv.version, error = %e, "installed version skipped")
                }
            }
        }
        Ok(out)
    }

    /// Commits the validated files in `staged` (a [`InstallStore::staging_dir`]) as
    /// `name`@`version` and makes it the active version (the only one: `also_active` is
    /// cleared). See the module docs for the order of steps.
    pub fn commit(
        &self,
        name: &str,
        version: &str,
        release_counter: u64,
        staged: &Path,
    ) -> Result<InstalledVersion> {
        self.commit_as(name, version, release_counter, staged, false)
    }

    /// [`InstallStore::commit`], but `version` becomes active beside the active version (a
    /// rollout candidate): added to `also_active`, `active` unchanged.
    pub fn commit_beside(
        &self,
        name: &str,
        version: &str,
        release_counter: u64,
        staged: &Path,
    ) -> Result<InstalledVersion> {
        self.commit_as(name, version, release_counter, staged, true)
    }

    fn commit_as(
        &self,
        name: &str,
        version: &str,
        release_counter: u64,
        staged: &Path,
        beside: bool,
    ) -> Result<InstalledVersion> {
        check_names(name, version)?;
        let mut files = BTreeMap::new();
        for file in [MODEL_FILE, BUNDLE_FILE] {
            let p = staged.join(file);
            let f = fs::File::open(&p).map_err(|e| io("cannot open", &p, e))?;
            f.sync_all().map_err(|e| io("cannot fsync", &p, e))?;
            files.insert(file.to_owned(), digest_file(&p)?);
        }
        // Leftovers of an interrupted download are not part of the version.
        if let Ok(rd) = fs::read_dir(staged) {
            for e in rd.flatten() {
                let n = e.file_name();
                if n != MODEL_FILE && n != BUNDLE_FILE {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        sync_dir(staged).map_err(from_tuf)?;
        // Older state first: if it is unreadable, the new version starts a fresh one.
        let mut state = match self.load_state(name) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(model = name, error = %e, "install state replaced");
                InstallState::default()
            }
        };
        state.model = name.to_owned();
        let mdir = self.model_dir(name);
        fs::create_dir_all(&mdir).map_err(|e| io("cannot create", &mdir, e))?;
        let dest = mdir.join(version);
        if dest.exists() {
            // The same version again (its state entry is replaced below): move the old copy
            // aside first, so `dest` is never a mix of two.
            let aside = mdir.join(format!(".old-{version}-{}", std::process::id()));
            fs::rename(&dest, &aside).map_err(|e| io("cannot move aside", &dest, e))?;
            let _ = fs::remove_dir_all(&aside);
        }
        fs::rename(staged, &dest).map_err(|e| io("cannot rename into", &dest, e))?;
        sync_dir(&mdir).map_err(from_tuf)?;
        if let Some(p) = staged.parent() {
            let _ = sync_dir(p);
        }
        let iv = InstalledVersion {
            version: version.to_owned(),
            release_counter,
            files,
        };
        state.verified.retain(|v| v.version != version);
        state.verified.insert(0, iv.clone());
        // Beside nothing is simply active (a state needs its default first).
        if beside && state.active.is_some() && state.active.as_deref() != Some(version) {
            if !state.also_active.iter().any(|v| v == version) {
                state.also_active.push(version.to_owned());
            }
        } else {
            state.active = Some(version.to_owned());
            state.also_active.clear();
        }
        state.trim(self.keep);
        self.persist_state(name, &state)?;
        self.prune(name, &state);
        Ok(iv)
    }

    /// Makes the already verified `active` the active version and `also` the versions
    /// active beside it (a rollout's decision), persisted like a commit; `Ok(false)` when
    /// the state already says so. A version that is not verified is a
    /// [`InstallErrorKind::Mismatch`] and nothing changes.
    pub fn set_active(&self, name: &str, active: &str, also: &[String]) -> Result<bool> {
        check_names(name, active)?;
        let mut state = self.load_state(name)?;
        for v in std::iter::once(active).chain(also.iter().map(String::as_str)) {
            if !state.is_verified(v) {
                return Err(InstallError {
                    kind: InstallErrorKind::Mismatch,
                    message: format!("{name}@{v} is not a verified installed version"),
                });
            }
        }
        let also: Vec<String> = also.iter().filter(|v| *v != active).cloned().collect();
        if state.active.as_deref() == Some(active) && state.also_active == also {
            return Ok(false);
        }
        state.active = Some(active.to_owned());
        state.also_active = also;
        state.trim(self.keep);
        self.persist_state(name, &state)?;
        self.prune(name, &state);
        Ok(true)
    }

    /// Writes `state` atomically, keeping the current file as the previous copy.
    fn persist_state(&self, name: &str, state: &InstallState) -> Result<()> {
        let dir = self.model_dir(name);
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| InstallError {
            kind: InstallErrorKind::Io,
            message: format!("encoding state: {e}"),
        })?;
        let cur = dir.join(STATE_FILE);
        let tmp = dir.join(".state.json.tmp");
        write_synced(&tmp, &bytes).map_err(from_tuf)?;
        if read_state(&cur, name).is_ok() {
            // Only a good current file becomes the fallback copy.
            let prev_tmp = dir.join(".state.json.prevtmp");
            let _ = fs::remove_file(&prev_tmp);
            if fs::hard_link(&cur, &prev_tmp).is_err() {
                fs::copy(&cur, &prev_tmp).map_err(|e| io("cannot copy", &cur, e))?;
            }
            fs::rename(&prev_tmp, dir.join(STATE_PREV))
                .map_err(|e| io("cannot rename", &prev_tmp, e))?;
        }
        fs::rename(&tmp, &cur).map_err(|e| io("cannot rename", &tmp, e))?;
        sync_dir(&dir).map_err(from_tuf)
    }

    /// Removes version directories that neither the state nor its previous copy names.
    fn prune(&self, name: &str, state: &InstallState) {
        let dir = self.model_dir(name);
        let prev = read_state(&dir.join(STATE_PREV), name).ok();
        let keep = |v: &str| {
            state.verified.iter().any(|x| x.version == v)
                || prev
                    .as_ref()
                    .is_some_and(|p| p.verified.iter().any(|x| x.version == v))
        };
        let Ok(rd) = fs::read_dir(&dir) else { return };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() && !keep(&n) {
                tracing::info!(model = name, version = %n, "removing an old version");
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

fn read_state(path: &Path, name: &str) -> std::result::Result<InstallState, String> {
    let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_STATE_BYTES {
        return Err(format!("{} is too large", path.display()));
    }
    let s: InstallState =
        serde_json::from_slice(&buf).map_err(|e| format!("{}: {e}", path.display()))?;
    if s.model != name {
        return Err(format!("{} is for model {:?}", path.display(), s.model));
    }
    if s.active.is_some() && s.active().is_none() {
        return Err(format!(
            "{}: the active version is not among the verified ones",
            path.display()
        ));
    }
    if s.also_active.iter().any(|v| !s.is_verified(v))
        || (!s.also_active.is_empty() && s.active.is_none())
    {
        return Err(format!(
            "{}: a version active beside the active one is not among the verified ones",
            path.display()
        ));
    }
    if s.verified.iter().any(|v| !valid_version(&v.version)) {
        return Err(format!(
            "{}: a version cannot name a directory",
            path.display()
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(store: &InstallStore, v: &str) -> PathBuf {
        let d = store.staging_dir("churn", v).unwrap();
        fs::write(d.join(MODEL_FILE), format!("model {v}")).unwrap();
        fs::write(d.join(BUNDLE_FILE), format!("{{\"version\":\"{v}\"}}")).unwrap();
        fs::write(d.join(".model.onnx.part"), b"leftover").unwrap();
        d
    }

    #[test]
    fn commit_activates_keeps_n_and_restarts_on_the_active_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = InstallStore::open(dir.path(), 2).unwrap();
        assert_eq!(store.load_state("churn").unwrap().active, None);
        for (i, v) in ["1", "2", "3"].iter().enumerate() {
            let s = stage(&store, v);
            let iv = store.commit("churn", v, i as u64 + 1, &s).unwrap();
            assert_eq!(iv.files[MODEL_FILE].length, 7);
            assert!(!s.exists(), "staging moved into place");
        }
        let st = store.load_state("churn").unwrap();
        assert_eq!(st.active.as_deref(), Some("3"));
        let kept: Vec<&str> = st.verified.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(kept, ["3", "2"]);
        // The previous state copy (after version 2: [2, 1]) still names 1, so it stays
        // until a commit makes both copies forget it.
        assert!(store.version_dir("churn", "1").exists());
        let s = stage(&store, "4");
        store.commit("churn", "4", 4, &s).unwrap();
        assert!(!store.version_dir("churn", "1").exists(), "pruned");
        assert!(
            store.version_dir("churn", "2").exists(),
            "named by the previous copy"
        );
        assert!(!store
            .version_dir("churn", "4")
            .join(".model.onnx.part")
            .exists());
        let start = store.startable("churn").unwrap();
        assert_eq!(start[0].0.version, "4");
        assert_eq!(fs::read(start[0].1.join(MODEL_FILE)).unwrap(), b"model 4");
    }

    #[test]
    fn a_tampered_install_is_skipped_and_a_corrupt_state_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = InstallStore::open(dir.path(), 3).unwrap();
        for v in ["1", "2"] {
            let s = stage(&store, v);
            store.commit("churn", v, 0, &s).unwrap();
        }
        fs::write(store.version_dir("churn", "2").join(MODEL_FILE), b"model X").unwrap();
        let start = store.startable("churn").unwrap();
        assert_eq!(start.len(), 1);
        assert_eq!(
            start[0].0.version, "1",
            "the tampered active version is skipped"
        );
        let e = store
            .verify_installed("churn", &store.load_state("churn").unwrap().verified[0])
            .unwrap_err();
        assert_eq!(e.kind, InstallErrorKind::Mismatch);

        // A corrupt current state: the previous copy (active = 1) is used.
        let sdir = dir.path().join("models/churn");
        fs::write(sdir.join(STATE_FILE), b"{\"model\":").unwrap();
        assert_eq!(
            store.load_state("churn").unwrap().active.as_deref(),
            Some("1")
        );
        fs::write(sdir.join(STATE_PREV), b"garbage").unwrap();
        let e = store.load_state("churn").unwrap_err();
        assert_eq!(e.kind, InstallErrorKind::CorruptState);
        assert!(e.message.contains("state.json"), "{e}");
        // The next commit starts a fresh state rather than failing forever.
        let s = stage(&store, "3");
        store.commit("churn", "3", 3, &s).unwrap();
        assert_eq!(
            store.load_state("churn").unwrap().active.as_deref(),
            Some("3")
        );
    }

    #[test]
    fn a_candidate_is_active_beside_the_active_version_and_never_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = InstallStore::open(dir.path(), 3).unwrap();
        for v in ["1", "2", "3"] {
            let s = stage(&store, v);
            store.commit("churn", v, 0, &s).unwrap();
        }
        // Stable 1 (the oldest) and candidate 4 beside it.
        assert!(store.set_active("churn", "1", &[]).unwrap());
        let s = stage(&store, "4");
        store.commit_beside("churn", "4", 4, &s).unwrap();
        let st = store.load_state("churn").unwrap();
        assert_eq!(st.active_set(), ["1", "4"]);
        let kept: Vec<&str> = st.verified.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(kept, ["4", "3", "1"], "both active versions kept, keep = 3");
        assert!(
            !store.set_active("churn", "1", &["4".into()]).unwrap(),
            "no change"
        );
        // Back to stable alone; a version that is not verified is refused.
        assert!(store.set_active("churn", "1", &[]).unwrap());
        assert_eq!(store.load_state("churn").unwrap().active_set(), ["1"]);
        let e = store.set_active("churn", "1", &["9".into()]).unwrap_err();
        assert_eq!(e.kind, InstallErrorKind::Mismatch);
        // A plain commit makes its version the only active one.
        assert!(store.set_active("churn", "1", &["4".into()]).unwrap());
        let s = stage(&store, "5");
        store.commit("churn", "5", 5, &s).unwrap();
        assert_eq!(store.load_state("churn").unwrap().active_set(), ["5"]);
    }

    #[test]
    fn a_state_file_without_also_active_still_loads_and_is_written_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let store = InstallStore::open(dir.path(), 2).unwrap();
        let s = stage(&store, "1");
        let iv = store.commit("churn", "1", 1, &s).unwrap();
        // The format before also_active existed.
        let old = serde_json::json!({"model": "churn", "active": "1", "verified": [iv]});
        let sdir = dir.path().join("models/churn");
        fs::write(sdir.join(STATE_FILE), serde_json::to_vec(&old).unwrap()).unwrap();
        let st = store.load_state("churn").unwrap();
        assert_eq!(st.active_set(), ["1"]);
        assert!(st.also_active.is_empty());
        // Without a candidate the file has no also_active key (older builds read it).
        let written: serde_json::Value =
            serde_json::from_slice(&fs::read(sdir.join(STATE_FILE)).unwrap()).unwrap();
        assert!(written.get("also_active").is_none(), "{written}");
        // A candidate that is not verified makes the file unreadable, not trusted.
        let bad = serde_json::json!({"model": "churn", "active": "1", "also_active": ["7"], "verified": [iv]});
        fs::write(sdir.join(STATE_FILE), serde_json::to_vec(&bad).unwrap()).unwrap();
        fs::remove_file(sdir.join(STATE_PREV)).ok();
        assert_eq!(
            store.load_state("churn").unwrap_err().kind,
            InstallErrorKind::CorruptState
        );
    }

    #[test]
    fn names_that_are_not_directory_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = InstallStore::open(dir.path(), 3).unwrap();
        for (n, v) in [("../x", "1"), ("churn", ".."), ("churn", "a/b"), ("", "1")] {
            assert_eq!(
                store.staging_dir(n, v).unwrap_err().kind,
                InstallErrorKind::BadName
            );
        }
    }
}
