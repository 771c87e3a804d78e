//! The release engineer's TUF repository: create it, add or replace targets, rotate
//! root, collect signatures from separate key holders, and publish.
//!
//! A working directory holds:
//! - `metadata/`: what is published, as clients fetch it (consistent snapshots:
//!   `N.root.json`, `N.targets.json`, `N.snapshot.json`, and `timestamp.json`; plus
//!   unversioned copies of the latest root, targets and snapshot for people and
//!   `edgeinfer tuf init`);
//! - `targets/`: target files named by hash (`targets/models/churn/3/<sha256>.model.onnx`);
//! - `staged/<role>.json`: the next version of each role being changed, with the
//!   signatures collected so far. Edits are saved at once, so key holders can sign in
//!   turn, on different machines, by copying the directory;
//! - `repo.json`: how long each role's metadata stays valid.
//!
//! The API other tools build on (`rollout set`, the demo generator):
//!
//! ```no_run
//! # use edgeinfer_registry::release::{Repo, SigningKey, DirDestination, NoProgress};
//! # fn f(key: SigningKey) -> Result<(), edgeinfer_registry::release::ReleaseError> {
//! let mut repo = Repo::open("release-repo".as_ref())?;
//! repo.put_target("rollout/churn.json", br#"{"stable":"3"}"#, None)?;
//! repo.sign_with(&[&key])?; // each key holder, until every staged role meets its threshold
//! repo.publish(&DirDestination::new("/srv/tuf"), &mut NoProgress)?;
//! # Ok(()) }
//! ```
//!
//! Snapshot and timestamp list versions only (no lengths or hashes), so their content
//! is fixed as soon as the new targets version is, and every holder can sign every
//! staged role in one pass. Before anything leaves the machine, `publish` replays the
//! whole repository through [`TrustedMetadataSet`], the core the daemon verifies with.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::keys::{key_id, SigningKey};
use super::publish::{write_atomic, Destination, Progress};
use super::{format_time, ReleaseError, ReleaseErrorKind as K};
use crate::tuf::metadata::{check_target_path, TargetFile, Targets};
use crate::tuf::{canonical, keys::hex_encode, TrustedMetadataSet, TOP_LEVEL_ROLES};

/// Roles in the order they are staged, signed and committed.
const ORDER: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// The `spec_version` written into new metadata.
pub const SPEC_VERSION: &str = "1.0.31";

/// How long each role's metadata stays valid after it is staged (days). The timestamp
/// is short: its expiry is what makes a frozen repository (and a stale rollout
/// directive) detectable, and it is re-signed by an online key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepoConfig {
    pub root_expires_days: u32,
    pub targets_expires_days: u32,
    pub snapshot_expires_days: u32,
    pub timestamp_expires_days: u32,
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            root_expires_days: 365,
            targets_expires_days: 90,
            snapshot_expires_days: 30,
            timestamp_expires_days: 1,
        }
    }
}

impl RepoConfig {
    fn days(&self, role: &str) -> i64 {
        i64::from(match role {
            "root" => self.root_expires_days,
            "targets" => self.targets_expires_days,
            "snapshot" => self.snapshot_expires_days,
            _ => self.timestamp_expires_days,
        })
    }
}

/// Keys and threshold of one top-level role, for [`Repo::init`].
#[derive(Debug, Clone)]
pub struct RoleKeys {
    /// TUF public key objects ([`super::keys::read_public`]).
    pub keys: Vec<Value>,
    pub threshold: u64,
}

/// Where a staged role stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleStatus {
    pub role: String,
    pub version: u64,
    /// Valid signatures from keys of the role, and how many are needed.
    pub valid: u64,
    pub threshold: u64,
    /// Root only: valid signatures from the previous root's root keys, and its threshold
    /// (a new root must satisfy both).
    pub previous: Option<(u64, u64)>,
}

impl RoleStatus {
    pub fn complete(&self) -> bool {
        self.valid >= self.threshold && self.previous.is_none_or(|(v, t)| v >= t)
    }
}

impl std::fmt::Display for RoleStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} v{}: {}/{} signatures",
            self.role, self.version, self.valid, self.threshold
        )?;
        if let Some((v, t)) = self.previous {
            write!(f, " (previous root's keys: {v}/{t})")?;
        }
        f.write_str(if self.complete() {
            ", complete"
        } else {
            ", needs more"
        })
    }
}

/// What one [`Repo::publish`] sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Files sent, in order.
    pub sent: Vec<String>,
    /// Immutable files the destination already had.
    pub skipped: usize,
    pub bytes: u64,
}

/// The working repository.
pub struct Repo {
    dir: PathBuf,
    config: RepoConfig,
    /// Latest published envelope per top-level role.
    published: BTreeMap<String, Value>,
    /// Envelopes being prepared.
    staged: BTreeMap<String, Value>,
    now: i64,
}

fn read_json(path: &Path) -> Result<Value, ReleaseError> {
    let bytes = fs::read(path)
        .map_err(|e| ReleaseError::new(K::Io, format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ReleaseError::new(K::Repo, format!("{} is not JSON: {e}", path.display())))
}

fn invalid(m: impl Into<String>) -> ReleaseError {
    ReleaseError::new(K::Invalid, m)
}

/// Lower-case hex sha256 (as target hashes are written).
pub fn sha256_hex(data: &[u8]) -> String {
    hex_encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// The file a target is stored under, relative to the repository root: hash-prefixed in
/// the target's directory, as consistent-snapshot clients fetch it.
pub fn target_file_rel(path: &str, sha256: &str) -> String {
    match path.rsplit_once('/') {
        Some((d, n)) => format!("targets/{d}/{sha256}.{n}"),
        None => format!("targets/{sha256}.{path}"),
    }
}

// === impl Repo: opening ===

impl Repo {
    /// Create a new repository in `dir` (which must not hold one): root version 1 with
    /// `roles`, empty targets, snapshot and timestamp, all staged for signing.
    pub fn init(
        dir: &Path,
        roles: &BTreeMap<String, RoleKeys>,
        config: RepoConfig,
        now: i64,
    ) -> Result<Repo, ReleaseError> {
        if dir.join("repo.json").exists() {
            return Err(ReleaseError::new(
                K::Repo,
                format!("{} already holds a repository", dir.display()),
            ));
        }
        let mut keys = serde_json::Map::new();
        let mut role_obj = serde_json::Map::new();
        for role in TOP_LEVEL_ROLES {
            let r = roles
                .get(role)
                .ok_or_else(|| invalid(format!("no keys given for role {role}")))?;
            let mut ids = Vec::new();
            for k in &r.keys {
                let id = key_id(k)?;
                if !ids.contains(&id) {
                    ids.push(id.clone());
                }
                keys.insert(id, k.clone());
            }
            check_threshold(role, r.threshold, ids.len())?;
            role_obj.insert(
                role.into(),
                json!({"keyids": ids, "threshold": r.threshold}),
            );
        }
        if let Some(extra) = roles
            .keys()
            .find(|r| !TOP_LEVEL_ROLES.contains(&r.as_str()))
        {
            return Err(invalid(format!("unknown role {extra:?}")));
        }
        write_atomic(
            &dir.join("repo.json"),
            &serde_json::to_vec_pretty(&config).expect("json"),
        )?;
        let mut repo = Repo {
            dir: dir.to_owned(),
            config,
            published: BTreeMap::new(),
            staged: BTreeMap::new(),
            now,
        };
        let common = |t: &str, days: i64| {
            json!({"_type": t, "spec_version": SPEC_VERSION, "version": 1,
                   "expires": format_time(now + days * 86_400)})
        };
        let mut root = common("root", repo.config.days("root"));
        root["consistent_snapshot"] = true.into();
        root["keys"] = Value::Object(keys);
        root["roles"] = Value::Object(role_obj);
        let mut targets = common("targets", repo.config.days("targets"));
        targets["targets"] = json!({});
        let mut snapshot = common("snapshot", repo.config.days("snapshot"));
        snapshot["meta"] = json!({"targets.json": {"version": 1}});
        let mut timestamp = common("timestamp", repo.config.days("timestamp"));
        timestamp["meta"] = json!({"snapshot.json": {"version": 1}});
        for (role, signed) in [
            ("root", root),
            ("targets", targets),
            ("snapshot", snapshot),
            ("timestamp", timestamp),
        ] {
            repo.staged
                .insert(role.into(), json!({"signatures": [], "signed": signed}));
        }
        repo.save_staged()?;
        Ok(repo)
    }

    /// Open the repository in `dir`, with the system clock.
    pub fn open(dir: &Path) -> Result<Repo, ReleaseError> {
        Self::open_at(dir, super::now())
    }

    /// Open the repository in `dir`; `now` (seconds since the epoch) dates new expiries.
    pub fn open_at(dir: &Path, now: i64) -> Result<Repo, ReleaseError> {
        let cfg_path = dir.join("repo.json");
        if !cfg_path.exists() {
            return Err(ReleaseError::new(
                K::Repo,
                format!(
                    "{} holds no repository (run `edgeinfer repo init`)",
                    dir.display()
                ),
            ));
        }
        let config: RepoConfig = serde_json::from_value(read_json(&cfg_path)?)
            .map_err(|e| ReleaseError::new(K::Repo, format!("{}: {e}", cfg_path.display())))?;
        let mut repo = Repo {
            dir: dir.to_owned(),
            config,
            published: BTreeMap::new(),
            staged: BTreeMap::new(),
            now,
        };
        for role in ORDER {
            let p = repo.published_path(role);
            if p.exists() {
                repo.published.insert(role.into(), read_json(&p)?);
            }
            let s = repo.staged_path(role);
            if s.exists() {
                repo.staged.insert(role.into(), read_json(&s)?);
            }
        }
        if !repo.published.contains_key("root") && !repo.staged.contains_key("root") {
            return Err(ReleaseError::new(
                K::Repo,
                format!(
                    "{} has neither a published nor a staged root",
                    dir.display()
                ),
            ));
        }
        Ok(repo)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn published_path(&self, role: &str) -> PathBuf {
        self.dir.join("metadata").join(format!("{role}.json"))
    }

    fn staged_path(&self, role: &str) -> PathBuf {
        self.dir.join("staged").join(format!("{role}.json"))
    }

    fn save_staged(&self) -> Result<(), ReleaseError> {
        for (role, env) in &self.staged {
            write_atomic(
                &self.staged_path(role),
                &serde_json::to_vec_pretty(env).expect("json"),
            )?;
        }
        Ok(())
    }
}

fn check_threshold(role: &str, threshold: u64, keys: usize) -> Result<(), ReleaseError> {
    if threshold < 1 || threshold > keys as u64 {
        return Err(invalid(format!(
            "role {role}: threshold {threshold} needs between 1 and {keys} (its keys)"
        )));
    }
    Ok(())
}

// === impl Repo: reading ===

impl Repo {
    /// The current `signed` object of `role`: staged if being changed, else published.
    pub fn signed(&self, role: &str) -> Option<&Value> {
        self.staged
            .get(role)
            .or_else(|| self.published.get(role))
            .map(|e| &e["signed"])
    }

    /// The root that authorises non-root roles: the staged one if root is being rotated.
    fn authority(&self) -> &Value {
        self.signed("root").expect("open checks a root exists")
    }

    /// The targets as they will be published (staged edits included).
    pub fn targets(&self) -> Result<BTreeMap<String, TargetFile>, ReleaseError> {
        let signed = self
            .signed("targets")
            .ok_or_else(|| ReleaseError::new(K::Repo, "no targets metadata"))?;
        Ok(Targets::parse(signed)?.targets)
    }

    /// One more than the highest `release_counter` any target's `custom` holds.
    pub fn next_release_counter(&self) -> Result<u64, ReleaseError> {
        let max = self
            .targets()?
            .values()
            .filter_map(|t| t.custom.as_ref()?.get("release_counter")?.as_u64())
            .max()
            .unwrap_or(0);
        Ok(max + 1)
    }

    /// The bytes of a target as stored in this repository.
    pub fn read_target(&self, path: &str) -> Result<Vec<u8>, ReleaseError> {
        let t = self
            .targets()?
            .remove(path)
            .ok_or_else(|| invalid(format!("{path:?} is not a target")))?;
        let p = self.dir.join(target_file_rel(path, t.url_hash()));
        fs::read(&p)
            .map_err(|e| ReleaseError::new(K::Io, format!("cannot read {}: {e}", p.display())))
    }

    /// Signature status of every staged role, in signing order (empty: nothing to sign).
    pub fn status(&self) -> Result<Vec<RoleStatus>, ReleaseError> {
        let mut out = Vec::new();
        for role in ORDER {
            let Some(env) = self.staged.get(role) else {
                continue;
            };
            let signed = &env["signed"];
            let bytes = canonical::encode(signed)?;
            let sigs = signatures(env);
            let version = signed["version"].as_u64().unwrap_or(0);
            let (valid, threshold) = count_valid(self.authority(), role, &bytes, &sigs)?;
            let previous = match (role, self.published.get("root")) {
                ("root", Some(old)) => Some(count_valid(&old["signed"], "root", &bytes, &sigs)?),
                _ => None,
            };
            out.push(RoleStatus {
                role: role.into(),
                version,
                valid,
                threshold,
                previous,
            });
        }
        Ok(out)
    }
}

/// `keyid → sig` of an envelope.
fn signatures(env: &Value) -> BTreeMap<String, String> {
    env["signatures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["keyid"].as_str()?.into(), s["sig"].as_str()?.into())))
        .collect()
}

/// (valid signatures by distinct keys of `role` in `root`, threshold).
fn count_valid(
    root: &Value,
    role: &str,
    bytes: &[u8],
    sigs: &BTreeMap<String, String>,
) -> Result<(u64, u64), ReleaseError> {
    let keyids = role_keyids(root, role)?;
    let threshold = root["roles"][role]["threshold"].as_u64().unwrap_or(1);
    let mut valid = 0;
    for id in keyids {
        let (Some(k), Some(sig)) = (root["keys"].get(&id), sigs.get(&id)) else {
            continue;
        };
        if crate::tuf::keys::Key::from_json(k)?.verify(bytes, sig) {
            valid += 1;
        }
    }
    Ok((valid, threshold))
}

fn role_keyids(root: &Value, role: &str) -> Result<BTreeSet<String>, ReleaseError> {
    root["roles"][role]["keyids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .ok_or_else(|| ReleaseError::new(K::Repo, format!("root has no role {role}")))
}

// === impl Repo: editing ===

impl Repo {
    /// Stage `role` if it is not (the published version + 1, no signatures, a fresh
    /// expiry), apply `edit` to its `signed`, and drop its signatures if that changed it.
    /// `force` stages a new version even if `edit` changes nothing.
    fn edit(
        &mut self,
        role: &str,
        force: bool,
        edit: impl FnOnce(&mut Value) -> Result<(), ReleaseError>,
    ) -> Result<(), ReleaseError> {
        if !self.staged.contains_key(role) {
            let published = self
                .published
                .get(role)
                .ok_or_else(|| ReleaseError::new(K::Repo, format!("no published {role}")))?;
            let mut signed = published["signed"].clone();
            let mut next = signed.clone();
            edit(&mut next)?;
            if next == signed && !force {
                return Ok(());
            }
            next["version"] = (signed["version"].as_u64().unwrap_or(0) + 1).into();
            next["expires"] = format_time(self.now + self.config.days(role) * 86_400).into();
            signed = next;
            self.staged
                .insert(role.into(), json!({"signatures": [], "signed": signed}));
            return Ok(());
        }
        let env = self.staged.get_mut(role).expect("checked");
        let before = env["signed"].clone();
        edit(&mut env["signed"])?;
        if env["signed"] != before {
            env["signatures"] = json!([]);
        }
        Ok(())
    }

    /// After targets changed: snapshot names the targets version, timestamp the
    /// snapshot version (unchanged content keeps collected signatures).
    fn restage_chain(&mut self, force_snapshot: bool) -> Result<(), ReleaseError> {
        let tv = self.signed("targets").and_then(|s| s["version"].as_u64());
        let targets_changed = self.staged.contains_key("targets");
        self.edit("snapshot", force_snapshot || targets_changed, |s| {
            if let Some(tv) = tv {
                s["meta"]["targets.json"] = json!({"version": tv});
            }
            Ok(())
        })?;
        let sv = self.signed("snapshot").and_then(|s| s["version"].as_u64());
        let snapshot_changed = self.staged.contains_key("snapshot");
        self.edit("timestamp", snapshot_changed, |t| {
            if let Some(sv) = sv {
                t["meta"]["snapshot.json"] = json!({"version": sv});
            }
            Ok(())
        })
    }

    /// Add or replace the target `path` with `bytes` (and its `custom` object), staging
    /// targets, snapshot and timestamp. Stores the file under its hash. `custom` must be
    /// canonical-JSON-able (no floats).
    pub fn put_target(
        &mut self,
        path: &str,
        bytes: &[u8],
        custom: Option<Value>,
    ) -> Result<TargetFile, ReleaseError> {
        check_target_path(path).map_err(|e| invalid(e.message))?;
        if let Some(c) = &custom {
            canonical::encode(c).map_err(|e| invalid(format!("custom of {path:?}: {e}")))?;
        }
        let sha = sha256_hex(bytes);
        write_atomic(&self.dir.join(target_file_rel(path, &sha)), bytes)?;
        let mut info = json!({"length": bytes.len(), "hashes": {"sha256": sha}});
        if let Some(c) = custom {
            info["custom"] = c;
        }
        self.edit("targets", false, |t| {
            t["targets"][path] = info;
            Ok(())
        })?;
        self.restage_chain(false)?;
        self.save_staged()?;
        Ok(self
            .targets()?
            .remove(path)
            .expect("the target was just added"))
    }

    /// Remove target `path` (its file stays: older snapshots still name it).
    pub fn remove_target(&mut self, path: &str) -> Result<(), ReleaseError> {
        if !self.targets()?.contains_key(path) {
            return Err(invalid(format!("{path:?} is not a target")));
        }
        self.edit("targets", false, |t| {
            t["targets"].as_object_mut().map(|o| o.remove(path));
            Ok(())
        })?;
        self.restage_chain(false)?;
        self.save_staged()
    }

    /// Stage a new timestamp (same snapshot, fresh expiry) for the online key to sign:
    /// what keeps a repository fresh between releases.
    pub fn refresh_timestamp(&mut self) -> Result<(), ReleaseError> {
        self.edit("timestamp", true, |_| Ok(()))?;
        let now = self.now;
        let days = self.config.days("timestamp");
        self.edit("timestamp", false, |t| {
            t["expires"] = format_time(now + days * 86_400).into();
            Ok(())
        })?;
        self.save_staged()
    }

    /// Stage root N+1 with `role`'s keys and threshold changed: `add` public keys,
    /// `remove` key ids, and a new `threshold` if given. Roles whose keys change are
    /// re-staged so their new keys sign them (clients check them against the new root).
    pub fn rotate_root(
        &mut self,
        role: &str,
        add: &[Value],
        remove: &[String],
        threshold: Option<u64>,
    ) -> Result<(), ReleaseError> {
        if !TOP_LEVEL_ROLES.contains(&role) {
            return Err(invalid(format!("unknown role {role:?}")));
        }
        let add: Vec<(String, Value)> = add
            .iter()
            .map(|k| Ok((key_id(k)?, k.clone())))
            .collect::<Result<_, ReleaseError>>()?;
        self.edit("root", true, |root| {
            let mut ids = role_keyids(root, role)?;
            for id in remove {
                if !ids.remove(id) {
                    return Err(invalid(format!("role {role} has no key {id}")));
                }
            }
            for (id, k) in &add {
                ids.insert(id.clone());
                root["keys"][id] = k.clone();
            }
            let t = threshold.unwrap_or(root["roles"][role]["threshold"].as_u64().unwrap_or(1));
            check_threshold(role, t, ids.len())?;
            root["roles"][role] = json!({"keyids": ids, "threshold": t});
            // Keys no role uses any more leave root.
            let used: BTreeSet<String> = TOP_LEVEL_ROLES
                .iter()
                .flat_map(|r| role_keyids(root, r).unwrap_or_default())
                .collect();
            if let Some(keys) = root["keys"].as_object_mut() {
                keys.retain(|id, _| used.contains(id));
            }
            Ok(())
        })?;
        match role {
            "root" => {}
            "targets" => {
                self.edit("targets", true, |_| Ok(()))?;
                self.restage_chain(false)?;
            }
            "snapshot" => self.restage_chain(true)?,
            _ => self.edit("timestamp", true, |_| Ok(()))?,
        }
        self.save_staged()
    }

    /// Add signatures by `keys` to every staged role they may sign (root: keys of the
    /// new or the previous root's root role; others: keys the current root gives the
    /// role). Returns `(role, keyid)` for each signature added. A key that may sign
    /// nothing staged is an error, so a holder with the wrong key file hears so.
    pub fn sign_with(
        &mut self,
        keys: &[&SigningKey],
    ) -> Result<Vec<(String, String)>, ReleaseError> {
        if self.staged.is_empty() {
            return Err(invalid("nothing is staged: there is nothing to sign"));
        }
        let mut added = Vec::new();
        for role in ORDER {
            let Some(env) = self.staged.get(role) else {
                continue;
            };
            let mut allowed = role_keyids(self.authority(), role)?;
            if role == "root" {
                if let Some(old) = self.published.get("root") {
                    allowed.extend(role_keyids(&old["signed"], "root")?);
                }
            }
            let bytes = canonical::encode(&env["signed"])?;
            let mut sigs = signatures(env);
            for k in keys {
                if allowed.contains(k.keyid()) {
                    sigs.insert(k.keyid().to_owned(), k.sign(&bytes));
                    added.push((role.to_owned(), k.keyid().to_owned()));
                }
            }
            let list: Vec<Value> = sigs
                .into_iter()
                .map(|(keyid, sig)| json!({"keyid": keyid, "sig": sig}))
                .collect();
            self.staged.get_mut(role).expect("checked")["signatures"] = Value::Array(list);
        }
        if added.is_empty() {
            let ids: Vec<&str> = keys.iter().map(|k| k.keyid()).collect();
            return Err(invalid(format!(
                "key {} may sign none of the staged roles ({})",
                ids.join(", "),
                self.staged.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        self.save_staged()?;
        Ok(added)
    }
}

// === impl Repo: committing and publishing ===

impl Repo {
    /// Move every staged role into `metadata/` once all meet their thresholds, after
    /// checking the result with the TUF client core. Nothing staged: a no-op.
    pub fn commit(&mut self) -> Result<(), ReleaseError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let missing: Vec<String> = self
            .status()?
            .into_iter()
            .filter(|s| !s.complete())
            .map(|s| s.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(ReleaseError::new(
                K::Threshold,
                format!("not signed enough to publish: {}", missing.join("; ")),
            ));
        }
        let meta = self.dir.join("metadata");
        for role in ORDER {
            let Some(env) = self.staged.get(role) else {
                continue;
            };
            let bytes = serde_json::to_vec(env).expect("json");
            let version = env["signed"]["version"].as_u64().unwrap_or(0);
            if role != "timestamp" {
                write_atomic(&meta.join(format!("{version}.{role}.json")), &bytes)?;
            }
            write_atomic(&meta.join(format!("{role}.json")), &bytes)?;
        }
        for role in ORDER {
            if let Some(env) = self.staged.remove(role) {
                self.published.insert(role.into(), env);
                let _ = fs::remove_file(self.staged_path(role));
            }
        }
        self.verify_published()
    }

    /// Replay the published metadata through the client core: every root version from 1
    /// (each rotation checked), then timestamp, snapshot, targets, and each target file's
    /// length and hash.
    pub fn verify_published(&self) -> Result<(), ReleaseError> {
        let meta = self.dir.join("metadata");
        let read = |name: &str| {
            fs::read(meta.join(name)).map_err(|e| {
                ReleaseError::new(K::Verify, format!("cannot read metadata/{name}: {e}"))
            })
        };
        let mut trusted = TrustedMetadataSet::new(&read("1.root.json")?, self.now)?;
        let mut v = 2;
        while meta.join(format!("{v}.root.json")).exists() {
            trusted.update_root(&read(&format!("{v}.root.json"))?)?;
            v += 1;
        }
        trusted.update_timestamp(&read("timestamp.json")?)?;
        let sv = trusted
            .timestamp()
            .expect("just loaded")
            .snapshot_meta
            .version;
        trusted.update_snapshot(&read(&format!("{sv}.snapshot.json"))?, false)?;
        let tv = trusted.snapshot().expect("just loaded").meta["targets.json"].version;
        trusted.update_delegated_targets(
            &read(&format!("{tv}.targets.json"))?,
            "targets",
            "root",
        )?;
        for t in trusted
            .targets("targets")
            .expect("just loaded")
            .targets
            .values()
        {
            let p = self.dir.join(target_file_rel(&t.path, t.url_hash()));
            let data = fs::read(&p)
                .map_err(|e| ReleaseError::new(K::Verify, format!("target {:?}: {e}", t.path)))?;
            crate::tuf::metadata::check_length(data.len() as u64, t.length)?;
            let mut h = crate::tuf::metadata::Hasher::new(&t.hashes)?;
            h.update(&data);
            h.finish_and_check()?;
        }
        Ok(())
    }

    /// [`commit`](Self::commit), then copy the repository to `dest`: target files,
    /// versioned metadata (each immutable file only if `dest` lacks it), the unversioned
    /// copies, and `timestamp.json` last.
    pub fn publish(
        &mut self,
        dest: &dyn Destination,
        progress: &mut dyn Progress,
    ) -> Result<PublishReport, ReleaseError> {
        self.commit()?;
        if !self.published.contains_key("timestamp") {
            return Err(ReleaseError::new(K::Repo, "nothing has been published yet"));
        }
        let mut report = PublishReport::default();
        let mut send = |rel: String, immutable: bool, report: &mut PublishReport| {
            let src = self.dir.join(&rel);
            let len = fs::metadata(&src)
                .map_err(|e| ReleaseError::new(K::Io, format!("{}: {e}", src.display())))?
                .len();
            if immutable && dest.has(&rel, len)? {
                report.skipped += 1;
                return Ok::<(), ReleaseError>(());
            }
            dest.put(&rel, &src, progress)?;
            report.bytes += len;
            report.sent.push(rel);
            Ok(())
        };
        for t in self.targets()?.values() {
            send(target_file_rel(&t.path, t.url_hash()), true, &mut report)?;
        }
        let mut versioned: Vec<(u64, String)> = Vec::new();
        for entry in fs::read_dir(self.dir.join("metadata"))
            .map_err(|e| ReleaseError::new(K::Io, format!("metadata/: {e}")))?
        {
            let name = entry
                .map_err(|e| ReleaseError::new(K::Io, format!("metadata/: {e}")))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if let Some((v, _)) = name.split_once('.') {
                if let Ok(v) = v.parse::<u64>() {
                    versioned.push((v, name));
                }
            }
        }
        // Roots in version order, then the rest: a client that sees a new root can
        // always walk to it.
        versioned.sort_by_key(|(v, name)| (!name.ends_with(".root.json"), *v));
        for (_, name) in versioned {
            send(format!("metadata/{name}"), true, &mut report)?;
        }
        for role in ["root", "targets", "snapshot", "timestamp"] {
            send(format!("metadata/{role}.json"), false, &mut report)?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{DirDestination, NoProgress};
    use crate::tuf::{fetch::DirFetcher, ErrorKind, Updater, UpdaterConfig};

    /// 2030-01-01: the reference time tests run at.
    const NOW: i64 = 1_893_456_000;

    struct Keys {
        root: Vec<SigningKey>,
        targets: Vec<SigningKey>,
        snapshot: SigningKey,
        timestamp: SigningKey,
    }

    fn keys() -> Keys {
        let k = |s: u8| SigningKey::from_seed([s; 32]).unwrap();
        Keys {
            root: vec![k(1), k(2), k(3)],
            targets: vec![k(11), k(12)],
            snapshot: k(21),
            timestamp: k(31),
        }
    }

    fn roles(k: &Keys, root_threshold: u64, targets_threshold: u64) -> BTreeMap<String, RoleKeys> {
        let pubs = |ks: &[&SigningKey]| ks.iter().map(|k| k.public().clone()).collect();
        [
            (
                "root",
                pubs(&k.root.iter().collect::<Vec<_>>()),
                root_threshold,
            ),
            (
                "targets",
                pubs(&k.targets.iter().collect::<Vec<_>>()),
                targets_threshold,
            ),
            ("snapshot", pubs(&[&k.snapshot]), 1),
            ("timestamp", pubs(&[&k.timestamp]), 1),
        ]
        .into_iter()
        .map(|(r, keys, threshold)| (r.to_string(), RoleKeys { keys, threshold }))
        .collect()
    }

    fn client(repo: &Path, meta: &Path, root_v1: &[u8], now: i64) -> Updater {
        Updater::new(
            meta,
            repo.join("metadata").to_str().unwrap(),
            Box::new(DirFetcher),
            Some(root_v1),
            now,
            UpdaterConfig::default(),
        )
        .unwrap()
        .with_targets_base(repo.join("targets").to_str().unwrap())
    }

    #[test]
    fn two_target_holders_sign_in_turn_and_the_client_verifies() {
        let work = tempfile::tempdir().unwrap();
        let served = tempfile::tempdir().unwrap();
        let box_dir = tempfile::tempdir().unwrap();
        let k = keys();
        let dir = work.path();
        let mut repo = Repo::init(dir, &roles(&k, 2, 2), RepoConfig::default(), NOW).unwrap();
        repo.sign_with(&[&k.root[0], &k.root[1], &k.snapshot, &k.timestamp])
            .unwrap();
        repo.sign_with(&[&k.targets[0], &k.targets[1]]).unwrap();
        repo.publish(&DirDestination::new(served.path()), &mut NoProgress)
            .unwrap();
        let root_v1 = fs::read(served.path().join("metadata/1.root.json")).unwrap();

        // A release: targets needs both holders.
        let mut repo = Repo::open_at(dir, NOW + 60).unwrap();
        assert_eq!(repo.next_release_counter().unwrap(), 1);
        let custom = json!({"name": "churn", "version": "1", "release_counter": 1});
        repo.put_target("models/churn/1/model.onnx", b"model bytes", Some(custom))
            .unwrap();
        assert_eq!(repo.next_release_counter().unwrap(), 2);
        // The first holder (on another machine: a fresh open of the directory).
        let mut first = Repo::open_at(dir, NOW + 60).unwrap();
        first
            .sign_with(&[&k.targets[0], &k.snapshot, &k.timestamp])
            .unwrap();
        let e = first
            .publish(&DirDestination::new(served.path()), &mut NoProgress)
            .unwrap_err();
        assert_eq!(e.kind, K::Threshold, "{e}");
        assert!(e.message.contains("targets v2: 1/2"), "{e}");
        // Signing again with the same key does not count twice.
        first.sign_with(&[&k.targets[0]]).unwrap();
        assert!(!first.status().unwrap()[0].complete());
        // A key of no staged role is refused.
        let stranger = SigningKey::from_seed([99; 32]).unwrap();
        assert_eq!(first.sign_with(&[&stranger]).unwrap_err().kind, K::Invalid);
        let mut second = Repo::open_at(dir, NOW + 60).unwrap();
        second.sign_with(&[&k.targets[1]]).unwrap();
        assert!(second.status().unwrap().iter().all(RoleStatus::complete));
        let report = second
            .publish(&DirDestination::new(served.path()), &mut NoProgress)
            .unwrap();
        assert_eq!(report.sent.last().unwrap(), "metadata/timestamp.json");
        assert_eq!(report.skipped, 3, "{report:?}"); // v1 root, targets, snapshot

        let mut up = client(served.path(), box_dir.path(), &root_v1, NOW + 120);
        up.refresh().unwrap();
        let info = up
            .get_targetinfo("models/churn/1/model.onnx")
            .unwrap()
            .unwrap();
        assert_eq!(info.custom.as_ref().unwrap()["release_counter"], 1);
        let out = box_dir.path().join("model.onnx");
        up.download_target(&info, &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"model bytes");
    }

    #[test]
    fn a_published_file_tampered_with_is_refused_by_the_client() {
        let work = tempfile::tempdir().unwrap();
        let served = tempfile::tempdir().unwrap();
        let box_dir = tempfile::tempdir().unwrap();
        let k = keys();
        let mut repo =
            Repo::init(work.path(), &roles(&k, 1, 1), RepoConfig::default(), NOW).unwrap();
        repo.put_target("models/m/1/model.onnx", b"good", None)
            .unwrap();
        repo.sign_with(&[&k.root[0], &k.targets[0], &k.snapshot, &k.timestamp])
            .unwrap();
        repo.publish(&DirDestination::new(served.path()), &mut NoProgress)
            .unwrap();
        let root_v1 = fs::read(served.path().join("metadata/1.root.json")).unwrap();
        let rel = target_file_rel("models/m/1/model.onnx", &sha256_hex(b"good"));
        fs::write(served.path().join(&rel), b"evil").unwrap();
        let mut up = client(served.path(), box_dir.path(), &root_v1, NOW);
        let info = up.get_targetinfo("models/m/1/model.onnx").unwrap().unwrap();
        let e = up
            .download_target(&info, &box_dir.path().join("m"))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::LengthOrHash, "{e}");
        // And the working copy's own check refuses a tampered working directory.
        fs::write(work.path().join(&rel), b"evil").unwrap();
        assert_eq!(repo.verify_published().unwrap_err().kind, K::Verify);
    }

    #[test]
    fn root_rotation_threshold_up_and_down_and_the_client_follows() {
        let work = tempfile::tempdir().unwrap();
        let served = tempfile::tempdir().unwrap();
        let box_dir = tempfile::tempdir().unwrap();
        let k = keys();
        let dir = work.path();
        let dest = DirDestination::new(served.path());
        // Root v1: the root role has keys 1 and 2, threshold 1.
        let mut r = roles(&k, 1, 1);
        r.get_mut("root").unwrap().keys.pop();
        let mut repo = Repo::init(dir, &r, RepoConfig::default(), NOW).unwrap();
        repo.sign_with(&[&k.root[0], &k.targets[0], &k.snapshot, &k.timestamp])
            .unwrap();
        repo.publish(&dest, &mut NoProgress).unwrap();
        let root_v1 = fs::read(served.path().join("metadata/1.root.json")).unwrap();
        let mut up = client(served.path(), box_dir.path(), &root_v1, NOW);
        up.refresh().unwrap();

        // v2: add key 3, threshold up to 2. Signed by the old threshold (key 1) and
        // the new one (keys 1 and 3).
        let mut repo = Repo::open_at(dir, NOW).unwrap();
        repo.rotate_root("root", &[k.root[2].public().clone()], &[], Some(2))
            .unwrap();
        repo.sign_with(&[&k.root[0]]).unwrap();
        let st = &repo.status().unwrap()[0];
        assert_eq!((st.valid, st.threshold, st.previous), (1, 2, Some((1, 1))));
        assert_eq!(
            repo.publish(&dest, &mut NoProgress).unwrap_err().kind,
            K::Threshold
        );
        repo.sign_with(&[&k.root[2]]).unwrap();
        repo.publish(&dest, &mut NoProgress).unwrap();
        // An Updater runs the workflow once (as python-tuf's): a new one per refresh,
        // on the same trusted metadata directory.
        let mut up = client(served.path(), box_dir.path(), &root_v1, NOW);
        up.refresh().unwrap();
        assert_eq!(up.trusted().root().common.version, 2);
        assert_eq!(up.trusted().root().roles["root"].threshold, 2);

        // v3: threshold down to 1 and key 1 removed; the previous root (threshold 2)
        // must still sign: keys 2 and 3. Targets keys change too: re-signed by key 12.
        let mut repo = Repo::open_at(dir, NOW).unwrap();
        repo.rotate_root("root", &[], &[k.root[0].keyid().to_owned()], Some(1))
            .unwrap();
        repo.rotate_root(
            "targets",
            &[k.targets[1].public().clone()],
            &[k.targets[0].keyid().to_owned()],
            None,
        )
        .unwrap();
        repo.sign_with(&[&k.root[2], &k.targets[1], &k.snapshot, &k.timestamp])
            .unwrap();
        // Old targets key: no longer allowed for targets.
        assert_eq!(
            repo.sign_with(&[&k.targets[0]]).unwrap_err().kind,
            K::Invalid
        );
        let e = repo.publish(&dest, &mut NoProgress).unwrap_err();
        assert!(e.message.contains("previous root's keys: 1/2"), "{e}");
        repo.sign_with(&[&k.root[1]]).unwrap();
        repo.put_target("models/m/7/model.onnx", b"seven", None)
            .unwrap();
        // That edit dropped the targets signature it changed; sign again.
        repo.sign_with(&[&k.targets[1]]).unwrap();
        repo.publish(&dest, &mut NoProgress).unwrap();
        let mut up = client(served.path(), box_dir.path(), &root_v1, NOW);
        up.refresh().unwrap();
        assert_eq!(up.trusted().root().common.version, 3);
        assert_eq!(up.trusted().root().roles["root"].threshold, 1);
        assert!(up
            .get_targetinfo("models/m/7/model.onnx")
            .unwrap()
            .is_some());

        // A fresh box starting from root v1 walks 1 → 2 → 3.
        let fresh = tempfile::tempdir().unwrap();
        let mut up = client(served.path(), fresh.path(), &root_v1, NOW);
        up.refresh().unwrap();
        assert_eq!(up.trusted().root().common.version, 3);
    }

    #[test]
    fn bad_requests_get_typed_errors() {
        let work = tempfile::tempdir().unwrap();
        let k = keys();
        let mut r = roles(&k, 4, 1);
        assert_eq!(
            Repo::init(work.path(), &r, RepoConfig::default(), NOW)
                .err()
                .unwrap()
                .kind,
            K::Invalid
        );
        r.get_mut("root").unwrap().threshold = 1;
        let mut repo = Repo::init(work.path(), &r, RepoConfig::default(), NOW).unwrap();
        assert_eq!(
            Repo::init(work.path(), &r, RepoConfig::default(), NOW)
                .err()
                .unwrap()
                .kind,
            K::Repo
        );
        for bad in ["../x", "/abs", "a//b"] {
            assert_eq!(
                repo.put_target(bad, b"x", None).unwrap_err().kind,
                K::Invalid
            );
        }
        let float = json!({"p": 0.5});
        assert_eq!(
            repo.put_target("a", b"x", Some(float)).unwrap_err().kind,
            K::Invalid
        );
        assert_eq!(
            repo.rotate_root("root", &[], &["nope".into()], None)
                .unwrap_err()
                .kind,
            K::Invalid
        );
        assert_eq!(
            Repo::open_at(&work.path().join("none"), NOW)
                .err()
                .unwrap()
                .kind,
            K::Repo
        );
    }
}
