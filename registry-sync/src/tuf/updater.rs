//! The client workflow around the verification core: fetch, offer, persist.
//!
//! Mirrors python-tuf's `ngclient.Updater`: `refresh` loads root (rotating up to
//! [`UpdaterConfig::max_root_rotations`] versions), timestamp, snapshot and
//! top-level targets, each first from the local store (as the rollback floor)
//! and then from the repository; `get_targetinfo` walks delegations pre-order
//! depth-first; `download_target` streams a target to a staging file while
//! hashing it and renames it into place only when length and hashes match.
//!
//! The reference time is `max(now, last trusted time)`: the caller's clock, but
//! never earlier than the time of the last successful refresh on this box.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::fetch::{quote_path, quote_segment, Fetcher};
use super::metadata::{check_target_path, Hasher, TargetFile};
use super::store::{sync_dir, MetadataStore};
use super::trusted::TrustedMetadataSet;
use super::{ErrorKind, Result, TufError};

/// Limits (python-tuf's defaults, except the rotation cap).
#[derive(Debug, Clone)]
pub struct UpdaterConfig {
    /// Root versions walked per refresh; the rest wait for the next refresh.
    pub max_root_rotations: u32,
    /// Delegated roles visited per target lookup.
    pub max_delegations: usize,
    pub root_max_length: u64,
    pub timestamp_max_length: u64,
    /// Used when timestamp does not give snapshot's length.
    pub snapshot_max_length: u64,
    /// Used when snapshot does not give a targets role's length.
    pub targets_max_length: u64,
    /// Whether consistent-snapshot target URLs carry the hash prefix.
    pub prefix_targets_with_hash: bool,
}

impl Default for UpdaterConfig {
    fn default() -> Self {
        UpdaterConfig {
            max_root_rotations: 32,
            max_delegations: 32,
            root_max_length: 512_000,
            timestamp_max_length: 16_384,
            snapshot_max_length: 2_000_000,
            targets_max_length: 5_000_000,
            prefix_targets_with_hash: true,
        }
    }
}

pub struct Updater {
    store: MetadataStore,
    fetcher: Box<dyn Fetcher>,
    metadata_base: String,
    targets_base: Option<String>,
    trusted: TrustedMetadataSet,
    config: UpdaterConfig,
}

fn with_slash(s: &str) -> String {
    if s.ends_with('/') {
        s.to_owned()
    } else {
        format!("{s}/")
    }
}

/// The file name a target is stored under in a flat target directory: the
/// whole target path percent-encoded, so no target can name a path outside it.
pub fn target_file_name(target_path: &str) -> String {
    quote_segment(target_path)
}

impl Updater {
    /// Open the local metadata in `metadata_dir` and pick the trust anchor: the
    /// newest of the stored root (current, else its previous copy) and
    /// `bootstrap` (a root pinned in config or compiled in) that verifies by
    /// itself. Fails if none does: a corrupt store never means "trust anything".
    /// `now` is seconds since the Unix epoch.
    pub fn new(
        metadata_dir: &Path,
        metadata_base: &str,
        fetcher: Box<dyn Fetcher>,
        bootstrap: Option<&[u8]>,
        now: i64,
        config: UpdaterConfig,
    ) -> Result<Self> {
        let store = MetadataStore::open(metadata_dir)?;
        let reference_time = now.max(store.last_trusted_time().unwrap_or(i64::MIN));
        let mut candidates = store.load("root", config.root_max_length);
        let stored = candidates.len();
        candidates.extend(bootstrap.map(<[u8]>::to_vec));
        let mut best: Option<(TrustedMetadataSet, usize)> = None;
        let mut last_err = None;
        for (i, c) in candidates.iter().enumerate() {
            match TrustedMetadataSet::new(c, reference_time) {
                Ok(set) => {
                    let newer = best
                        .as_ref()
                        .is_none_or(|(b, _)| set.root().common.version > b.root().common.version);
                    if newer {
                        best = Some((set, i));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, copy = i, "a trusted root copy does not verify");
                    last_err = Some(e);
                }
            }
        }
        let Some((trusted, index)) = best else {
            return Err(last_err.unwrap_or_else(|| {
                TufError::new(
                    ErrorKind::NotFound,
                    format!("no trusted root in {}", metadata_dir.display()),
                )
            }));
        };
        if index != 0 || stored == 0 {
            // The anchor is not the current file: make it the current file again.
            store.persist("root", &candidates[index])?;
        }
        Ok(Updater {
            store,
            fetcher,
            metadata_base: with_slash(metadata_base),
            targets_base: None,
            trusted,
            config,
        })
    }

    pub fn with_targets_base(mut self, base: &str) -> Self {
        self.targets_base = Some(with_slash(base));
        self
    }

    pub fn trusted(&self) -> &TrustedMetadataSet {
        &self.trusted
    }

    /// Update top-level metadata: root, timestamp, snapshot, targets.
    pub fn refresh(&mut self) -> Result<()> {
        self.load_root()?;
        self.load_timestamp()?;
        self.load_snapshot()?;
        self.load_targets("targets", "root")?;
        let t = self.trusted.reference_time();
        if self.store.last_trusted_time().is_none_or(|old| t > old) {
            self.store.set_last_trusted_time(t)?;
        }
        Ok(())
    }

    fn fetch_metadata(&self, role: &str, version: Option<u64>, max_len: u64) -> Result<Vec<u8>> {
        let name = quote_segment(role);
        let rel = match version {
            Some(v) => format!("{v}.{name}.json"),
            None => format!("{name}.json"),
        };
        self.fetcher.fetch(&self.metadata_base, &rel, max_len)
    }

    fn load_root(&mut self) -> Result<()> {
        for _ in 0..self.config.max_root_rotations {
            let next = self.trusted.root().common.version + 1;
            let data = match self.fetch_metadata("root", Some(next), self.config.root_max_length) {
                Ok(d) => d,
                Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            self.trusted.update_root(&data)?;
            self.store.persist("root", &data)?;
            tracing::info!(version = next, "trusted root rotated");
        }
        tracing::warn!(
            cap = self.config.max_root_rotations,
            "root rotation cap reached; the next refresh continues"
        );
        Ok(())
    }

    fn load_timestamp(&mut self) -> Result<()> {
        for local in self
            .store
            .load("timestamp", self.config.timestamp_max_length)
        {
            match self.trusted.update_timestamp(&local) {
                Ok(_) => break,
                Err(e) => tracing::debug!(error = %e, "local timestamp not valid as final"),
            }
            if self.trusted.timestamp().is_some() {
                break; // kept as intermediate (expired): it is the floor now
            }
        }
        let data = self.fetch_metadata("timestamp", None, self.config.timestamp_max_length)?;
        match self.trusted.update_timestamp(&data) {
            Ok(_) => self.store.persist("timestamp", &data),
            // The same version again: keep ours, even if the bytes differ.
            Err(e) if e.kind == ErrorKind::EqualVersion => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn load_snapshot(&mut self) -> Result<()> {
        for local in self.store.load("snapshot", self.config.snapshot_max_length) {
            match self.trusted.update_snapshot(&local, true) {
                Ok(_) => return Ok(()), // the local copy is current: no download
                Err(e) => tracing::debug!(error = %e, "local snapshot not valid as final"),
            }
            if self.trusted.snapshot().is_some() {
                break;
            }
        }
        let meta = self
            .trusted
            .timestamp()
            .map(|t| t.snapshot_meta.clone())
            .ok_or_else(|| TufError::new(ErrorKind::Order, "no timestamp"))?;
        let max = meta.length.unwrap_or(self.config.snapshot_max_length);
        let version = self
            .trusted
            .root()
            .consistent_snapshot
            .then_some(meta.version);
        let data = self.fetch_metadata("snapshot", version, max)?;
        self.trusted.update_snapshot(&data, false)?;
        self.store.persist("snapshot", &data)
    }

    fn load_targets(&mut self, role: &str, delegator: &str) -> Result<()> {
        if self.trusted.targets(role).is_some() {
            self.trusted.trusted_via(role, delegator)?;
            return Ok(());
        }
        for local in self.store.load(role, self.config.targets_max_length) {
            match self
                .trusted
                .update_delegated_targets(&local, role, delegator)
            {
                Ok(_) => return Ok(()),
                Err(e) => tracing::debug!(role, error = %e, "local targets role not valid"),
            }
        }
        let meta = self
            .trusted
            .snapshot()
            .and_then(|s| s.meta.get(&format!("{role}.json")).cloned())
            .ok_or_else(|| {
                TufError::new(
                    ErrorKind::MissingMeta,
                    format!("role {role:?} is delegated but not listed in snapshot"),
                )
            })?;
        let max = meta.length.unwrap_or(self.config.targets_max_length);
        let version = self
            .trusted
            .root()
            .consistent_snapshot
            .then_some(meta.version);
        let data = self.fetch_metadata(role, version, max)?;
        self.trusted
            .update_delegated_targets(&data, role, delegator)?;
        self.store.persist(role, &data)
    }

    /// The trusted description of `target_path`, from the most trusted role that
    /// lists it, or `None`. Refreshes first if top-level targets is not loaded.
    pub fn get_targetinfo(&mut self, target_path: &str) -> Result<Option<TargetFile>> {
        check_target_path(target_path)?;
        if self.trusted.targets("targets").is_none() {
            self.refresh()?;
        }
        // Pre-order depth-first: a stack of (role, delegator), children pushed in
        // reverse so the first delegation is visited first.
        let mut to_visit: Vec<(String, String)> = vec![("targets".into(), "root".into())];
        let mut visited: Vec<String> = Vec::new();
        while visited.len() <= self.config.max_delegations {
            let Some((role, delegator)) = to_visit.pop() else {
                break;
            };
            if visited.contains(&role) {
                continue;
            }
            self.load_targets(&role, &delegator)?;
            let targets = self.trusted.targets(&role).expect("just loaded");
            if let Some(t) = targets.targets.get(target_path) {
                return Ok(Some(t.clone()));
            }
            visited.push(role.clone());
            if let Some(d) = &targets.delegations {
                let mut children = Vec::new();
                for (child, terminating) in d.roles_for_target(target_path) {
                    children.push((child, role.clone()));
                    if terminating {
                        // Do not backtrack to roles outside this one's subtree.
                        to_visit.clear();
                        break;
                    }
                }
                children.reverse();
                to_visit.extend(children);
            }
        }
        if !to_visit.is_empty() {
            tracing::warn!(
                max = self.config.max_delegations,
                "delegation search stopped at the visit cap"
            );
        }
        Ok(None)
    }

    /// Whether `file` already holds exactly `target` (length and every hash).
    pub fn find_cached_target(&self, target: &TargetFile, file: &Path) -> bool {
        let Ok(meta) = fs::metadata(file) else {
            return false;
        };
        if meta.len() != target.length {
            return false;
        }
        let Ok(mut hasher) = Hasher::new(&target.hashes) else {
            return false;
        };
        let Ok(mut f) = fs::File::open(file) else {
            return false;
        };
        let mut sink = HashingSink {
            hasher: &mut hasher,
            out: std::io::sink(),
        };
        if super::fetch::copy_capped(&mut f, target.length, &mut sink, "cached target").is_err() {
            return false;
        }
        hasher.len() == target.length && hasher.finish_and_check().is_ok()
    }

    /// Download `target` into `file`: streamed to a staging file beside it while
    /// hashing, never more than its length, renamed into place (after fsync) only
    /// if length and all hashes match. On failure `file` is left as it was.
    pub fn download_target(&mut self, target: &TargetFile, file: &Path) -> Result<()> {
        check_target_path(&target.path)?;
        let base = self
            .targets_base
            .clone()
            .ok_or_else(|| TufError::new(ErrorKind::Order, "no target base URL configured"))?;
        // Fail before fetching if a listed hash cannot be checked.
        let hasher = Hasher::new(&target.hashes)?;
        let rel = self.target_url_path(target);
        let parent = file.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| {
            TufError::new(
                ErrorKind::Io,
                format!("cannot create {}: {e}", parent.display()),
            )
        })?;
        let file_name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = parent.join(format!(".{file_name}.part"));
        let result = self.stage_and_commit(target, &base, &rel, hasher, &staging, file);
        if result.is_err() {
            let _ = fs::remove_file(&staging);
        }
        result
            .map_err(|e| TufError::new(e.kind, format!("target {:?}: {}", target.path, e.message)))
    }
}

impl Updater {
    /// The URL path of `target` under the target base: hash-prefixed in its directory for
    /// consistent snapshots, percent-encoded (the pull agent fetches with resume through it).
    pub fn target_url_path(&self, target: &TargetFile) -> String {
        let rel = if self.trusted.root().consistent_snapshot && self.config.prefix_targets_with_hash
        {
            let (dir, name) = match target.path.rsplit_once('/') {
                Some((d, n)) => (format!("{d}/"), n),
                None => (String::new(), target.path.as_str()),
            };
            format!("{dir}{}.{name}", target.url_hash())
        } else {
            target.path.clone()
        };
        quote_path(&rel)
    }

    /// Fetch into `staging` while hashing, check, fsync, rename over `file`.
    fn stage_and_commit(
        &self,
        target: &TargetFile,
        base: &str,
        rel: &str,
        mut hasher: Hasher,
        staging: &Path,
        file: &Path,
    ) -> Result<()> {
        let parent = file.parent().unwrap_or(Path::new("."));
        let f = fs::File::create(staging).map_err(|e| {
            TufError::new(
                ErrorKind::Io,
                format!("cannot create {}: {e}", staging.display()),
            )
        })?;
        let mut sink = HashingSink {
            hasher: &mut hasher,
            out: std::io::BufWriter::new(f),
        };
        self.fetcher.fetch_to(base, rel, target.length, &mut sink)?;
        let f = sink
            .out
            .into_inner()
            .map_err(|e| TufError::new(ErrorKind::Io, format!("writing target: {e}")))?;
        super::metadata::check_length(hasher.len(), target.length)?;
        hasher.finish_and_check()?;
        f.sync_all()
            .map_err(|e| TufError::new(ErrorKind::Io, format!("fsync target: {e}")))?;
        fs::rename(staging, file).map_err(|e| {
            TufError::new(
                ErrorKind::Io,
                format!("cannot rename into {}: {e}", file.display()),
            )
        })?;
        sync_dir(parent)
    }
}

/// A writer that hashes what passes through it.
pub(crate) struct HashingSink<'a, W: Write> {
    pub(crate) hasher: &'a mut Hasher,
    pub(crate) out: W,
}

impl<W: Write> Write for HashingSink<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::fetch::DirFetcher;
    use super::super::testrepo::{Repo, NOW};
    use super::*;

    fn err_kind<T>(r: Result<T>) -> ErrorKind {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.kind,
        }
    }

    /// A directory fetcher that records what was asked for.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Fetcher for Recorder {
        fn fetch_to(&self, base: &str, rel: &str, max: u64, sink: &mut dyn Write) -> Result<u64> {
            self.0.lock().unwrap().push(rel.to_owned());
            DirFetcher.fetch_to(base, rel, max, sink)
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    struct Env {
        dir: tempfile::TempDir,
        repo: Repo,
        rec: Recorder,
    }

    impl Env {
        fn new(repo: Repo) -> Env {
            let dir = tempfile::tempdir().unwrap();
            let store = MetadataStore::open(&dir.path().join("client")).unwrap();
            store.persist("root", repo.version("root", 1)).unwrap();
            Env {
                dir,
                repo,
                rec: Recorder::default(),
            }
        }

        fn client_dir(&self) -> std::path::PathBuf {
            self.dir.path().join("client")
        }

        fn updater_at(&self, now: i64) -> Result<Updater> {
            self.repo.write_to(&self.dir.path().join("repo"));
            let base = self.dir.path().join("repo");
            Ok(Updater::new(
                &self.client_dir(),
                &format!("{}/metadata", base.display()),
                Box::new(self.rec.clone()),
                None,
                now,
                UpdaterConfig::default(),
            )?
            .with_targets_base(&format!("{}/targets", base.display())))
        }

        fn updater(&self) -> Updater {
            self.updater_at(NOW).unwrap()
        }

        fn local_version(&self, role: &str) -> Option<u64> {
            let bytes = fs::read(self.client_dir().join(MetadataStore::file_name(role))).ok()?;
            let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            v["signed"]["version"].as_u64()
        }
    }

    #[test]
    fn refresh_then_download_a_target_in_a_subdirectory() {
        let mut repo = Repo::new();
        repo.add_target("targets", "models/churn/3/model.onnx", b"model bytes");
        repo.publish(&["targets", "snapshot", "timestamp"]);
        let env = Env::new(repo);
        let mut up = env.updater();
        up.refresh().unwrap();
        assert_eq!(
            env.rec.take(),
            [
                "2.root.json",
                "timestamp.json",
                "2.snapshot.json",
                "2.targets.json"
            ]
        );
        let info = up
            .get_targetinfo("models/churn/3/model.onnx")
            .unwrap()
            .unwrap();
        let file = env
            .dir
            .path()
            .join("out")
            .join(target_file_name(&info.path));
        assert!(!up.find_cached_target(&info, &file));
        up.download_target(&info, &file).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"model bytes");
        // Consistent snapshot: the hash goes before the file name, in its directory.
        let got = env.rec.take();
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("models/churn/3/") && got[0].ends_with(".model.onnx"),
            "{got:?}"
        );
        assert!(up.find_cached_target(&info, &file));
        assert_eq!(up.get_targetinfo("missing").unwrap(), None);
        for v in ["root", "timestamp", "snapshot", "targets"] {
            assert!(env.local_version(v).is_some(), "{v} persisted");
        }
    }

    #[test]
    fn a_substituted_or_oversized_target_is_not_stored() {
        let mut repo = Repo::new();
        repo.add_target("targets", "a.bin", b"good");
        repo.publish(&["targets", "snapshot", "timestamp"]);
        let mut env = Env::new(repo);
        // Same length, other bytes, under the right name.
        let sha = super::super::testrepo::sha256_hex(b"good");
        env.repo.artifacts.insert("a.bin".into(), b"evil".to_vec());
        let mut up = env.updater();
        let info = up.get_targetinfo("a.bin").unwrap().unwrap();
        let tdir = env.dir.path().join("repo/targets");
        fs::write(tdir.join(format!("{sha}.a.bin")), b"evil").unwrap();
        let file = env.dir.path().join("out/a.bin");
        assert_eq!(
            err_kind(up.download_target(&info, &file)),
            ErrorKind::LengthOrHash
        );
        assert!(!file.exists());
        // Endless data: more bytes than the length, refused at the cap.
        fs::write(tdir.join(format!("{sha}.a.bin")), vec![b'x'; 10_000]).unwrap();
        assert_eq!(
            err_kind(up.download_target(&info, &file)),
            ErrorKind::TooLarge
        );
        assert!(!file.exists());
        assert!(
            fs::read_dir(env.dir.path().join("out"))
                .unwrap()
                .next()
                .is_none(),
            "no staging left"
        );
        env.repo.artifacts.insert("a.bin".into(), b"good".to_vec());
    }

    #[test]
    fn an_oversized_timestamp_is_refused_before_parsing() {
        let env = Env::new(Repo::new());
        let mut up = env.updater();
        let ts = env.dir.path().join("repo/metadata/timestamp.json");
        let mut big = fs::read(&ts).unwrap();
        big.resize(20_000, b' ');
        fs::write(&ts, big).unwrap();
        assert_eq!(err_kind(up.refresh()), ErrorKind::TooLarge);
    }

    #[test]
    fn unsafe_target_paths_are_refused() {
        let mut repo = Repo::new();
        repo.add_target("targets", "../escape", b"x");
        repo.publish(&["targets", "snapshot", "timestamp"]);
        let env = Env::new(repo);
        let mut up = env.updater();
        for p in ["../escape", "/etc/passwd", "a/../b"] {
            assert_eq!(err_kind(up.get_targetinfo(p)), ErrorKind::UnsafePath, "{p}");
        }
        // Even with trusted metadata listing it, it is not downloaded.
        up.refresh().unwrap();
        let info = up.trusted().targets("targets").unwrap().targets["../escape"].clone();
        let file = env
            .dir
            .path()
            .join("out")
            .join(target_file_name(&info.path));
        assert_eq!(
            err_kind(up.download_target(&info, &file)),
            ErrorKind::UnsafePath
        );
        assert_eq!(target_file_name("../escape"), "..%2Fescape");
    }

    fn graph(edges: &[(&str, &str, &[&str], bool)]) -> Env {
        let mut repo = Repo::new();
        let mut roles = Vec::new();
        for (from, to, paths, term) in edges {
            repo.delegate(from, to, paths, *term);
            roles.push(*to);
        }
        roles.dedup();
        let mut publish: Vec<&str> = roles.clone();
        publish.extend(["targets", "snapshot", "timestamp"]);
        repo.publish(&publish);
        Env::new(repo)
    }

    fn visits(env: &Env, target: &str) -> Vec<String> {
        let mut up = env.updater();
        up.refresh().unwrap();
        env.rec.take();
        assert_eq!(up.get_targetinfo(target).unwrap(), None);
        env.rec
            .take()
            .into_iter()
            .map(|r| {
                r.trim_start_matches("1.")
                    .trim_end_matches(".json")
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn delegations_are_searched_preorder_depth_first() {
        let all: &[&str] = &["*"];
        let env = graph(&[
            ("targets", "A", all, false),
            ("targets", "B", all, false),
            ("A", "C", all, false),
            ("A", "D", all, false),
        ]);
        assert_eq!(visits(&env, "missing"), ["A", "C", "D", "B"]);
    }

    #[test]
    fn a_terminating_delegation_stops_backtracking() {
        let all: &[&str] = &["*"];
        let env = graph(&[
            ("targets", "A", all, false),
            ("targets", "B", all, false),
            ("A", "C", all, true),
            ("A", "D", all, false),
        ]);
        assert_eq!(visits(&env, "missing"), ["A", "C"]);
    }

    #[test]
    fn path_patterns_prune_the_search_and_star_stays_in_its_segment() {
        // A fresh client each time: roles fetched once are kept locally.
        let env = || {
            graph(&[
                ("targets", "A", &["*.md"], false),
                ("targets", "B", &["releases/*/*"], false),
                ("B", "C", &["releases/x/*"], false),
            ])
        };
        assert_eq!(visits(&env(), "releases/README.md"), Vec::<String>::new());
        assert_eq!(visits(&env(), "releases/y/z"), ["B"]);
        assert_eq!(visits(&env(), "releases/x/z"), ["B", "C"]);
    }

    #[test]
    fn a_delegated_target_is_found_in_the_most_trusted_role() {
        let mut repo = Repo::new();
        repo.delegate("targets", "A", &["*"], false);
        repo.delegate("targets", "B", &["*"], false);
        repo.add_target("A", "x", b"from A");
        repo.add_target("B", "x", b"from B, less trusted");
        repo.publish(&["A", "B", "targets", "snapshot", "timestamp"]);
        let env = Env::new(repo);
        let mut up = env.updater();
        let info = up.get_targetinfo("x").unwrap().unwrap();
        assert_eq!(info.length, 6);
    }

    #[test]
    fn corrupt_local_metadata_falls_back_to_the_last_good_copy() {
        let mut env = Env::new(Repo::new());
        env.repo.publish(&["root", "timestamp"]); // root v2, timestamp v2
        env.updater().refresh().unwrap();
        env.repo.publish(&["timestamp"]); // v3
        env.updater().refresh().unwrap();
        assert_eq!(env.local_version("timestamp"), Some(3));
        // Corrupt the current timestamp and root; an attacker serves timestamp v2.
        fs::write(env.client_dir().join("timestamp.json"), b"\0garbage").unwrap();
        fs::write(env.client_dir().join("root.json"), b"{\"signed\":").unwrap();
        let v2 = env.repo.version("timestamp", 2).to_vec();
        env.repo.published.get_mut("timestamp").unwrap().push(v2);
        let mut up = env.updater();
        // Root came back from its previous copy (and was restored as current);
        // the previous timestamp (v2) is still the rollback floor, so v2 again is
        // not "new", and nothing older would be taken.
        assert_eq!(up.trusted().root().common.version, 1, "the previous root");
        assert!(serde_json::from_slice::<serde_json::Value>(
            &fs::read(env.client_dir().join("root.json")).unwrap()
        )
        .is_ok());
        up.refresh().unwrap();
        assert_eq!(up.trusted().root().common.version, 2);
        assert_eq!(up.trusted().timestamp().unwrap().common.version, 2);
        let v1 = env.repo.version("timestamp", 1).to_vec();
        env.repo.published.get_mut("timestamp").unwrap().push(v1);
        assert_eq!(err_kind(env.updater().refresh()), ErrorKind::Rollback);
    }

    #[test]
    fn no_valid_root_means_no_updater() {
        let env = Env::new(Repo::new());
        fs::write(env.client_dir().join("root.json"), b"garbage").unwrap();
        assert_eq!(err_kind(env.updater_at(NOW)), ErrorKind::Malformed);
        // A pinned bootstrap root restores trust.
        let up = Updater::new(
            &env.client_dir(),
            "unused",
            Box::new(DirFetcher),
            Some(env.repo.version("root", 1)),
            NOW,
            UpdaterConfig::default(),
        )
        .unwrap();
        assert_eq!(up.trusted().root().common.version, 1);
    }

    #[test]
    fn expiry_uses_the_later_of_now_and_the_last_trusted_time() {
        let mut repo = Repo::new();
        repo.signed.get_mut("timestamp").unwrap()["expires"] = "2030-01-01T01:00:00Z".into();
        repo.publish(&["timestamp"]);
        let env = Env::new(repo);
        env.updater_at(NOW).unwrap().refresh().unwrap();
        // A refresh two hours later sees it expired ...
        assert_eq!(
            err_kind(env.updater_at(NOW + 7200).unwrap().refresh()),
            ErrorKind::Expired
        );
        // ... and once a refresh succeeded at a later time, a clock that went back
        // does not make the frozen timestamp fresh again.
        let store = MetadataStore::open(&env.client_dir()).unwrap();
        store.set_last_trusted_time(NOW + 7200).unwrap();
        let mut up = env.updater_at(NOW).unwrap();
        assert_eq!(up.trusted().reference_time(), NOW + 7200);
        assert_eq!(err_kind(up.refresh()), ErrorKind::Expired);
    }

    #[test]
    fn root_rotation_walks_versions_and_stops_at_the_cap() {
        let mut repo = Repo::new();
        for _ in 0..5 {
            repo.publish(&["root"]);
        }
        let env = Env::new(repo);
        let cfg = UpdaterConfig {
            max_root_rotations: 3,
            ..Default::default()
        };
        env.repo.write_to(&env.dir.path().join("repo"));
        let base = format!("{}/metadata", env.dir.path().join("repo").display());
        let mut up = Updater::new(
            &env.client_dir(),
            &base,
            Box::new(DirFetcher),
            None,
            NOW,
            cfg,
        )
        .unwrap();
        up.refresh().unwrap();
        assert_eq!(up.trusted().root().common.version, 4);
        env.updater().refresh().unwrap();
        assert_eq!(env.local_version("root"), Some(6));
    }
}
