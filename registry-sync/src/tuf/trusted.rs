//! The verification core: trusted metadata and the checks for each transition.
//!
//! No IO, no clock: bytes in, a decision out, against a reference time handed in.
//! Rules (python-tuf's `TrustedMetadataSet`, TUF 1.0 "detailed client workflow"):
//! - metadata loads in order root → timestamp → snapshot → targets → delegated;
//!   a role cannot be updated once a later one is loaded;
//! - an expired timestamp or snapshot, or a snapshot whose version differs from
//!   the one timestamp names, is still kept as *intermediate* metadata (it is the
//!   floor for rollback checks of the next version) but stops the next step;
//! - root N+1 must be signed by a threshold of root N's keys and of its own;
//! - versions never go down; a timestamp of the same version as the trusted one
//!   is refused ([`ErrorKind::EqualVersion`]) so changed content under an old
//!   version number is never taken;
//! - a delegated role found again through another delegator is re-verified
//!   against that delegator's keys (python-tuf skips this and xfails the suite's
//!   `test_cached_role_is_verified_against_current_delegator`).

use std::collections::HashMap;

use super::metadata::{
    check_length, verify_threshold, Envelope, Root, Snapshot, Targets, Timestamp,
};
use super::{err, ErrorKind, Result};

/// A trusted targets role, with what is needed to re-check its signatures.
#[derive(Debug, Clone)]
struct TrustedTargets {
    targets: Targets,
    envelope: Envelope,
    /// Delegators whose keys have verified it.
    verified_by: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TrustedMetadataSet {
    reference_time: i64,
    root: Root,
    timestamp: Option<Timestamp>,
    snapshot: Option<Snapshot>,
    targets: HashMap<String, TrustedTargets>,
}

fn load(data: &[u8], role_type: &str) -> Result<Envelope> {
    let env = Envelope::parse(data)?;
    match env.role_type() {
        Some(t) if t == role_type => Ok(env),
        t => err(
            ErrorKind::WrongType,
            format!("expected {role_type} metadata, got _type {t:?}"),
        ),
    }
}

impl TrustedMetadataSet {
    /// Start from a trusted root: it is verified only by itself (it is the
    /// anchor). Its expiry is checked only once no newer root is available.
    pub fn new(root_data: &[u8], reference_time: i64) -> Result<Self> {
        let env = load(root_data, "root")?;
        let root = Root::parse(&env.signed)?;
        verify_threshold(
            "root",
            &root.roles["root"],
            &root.keys,
            &env.signed_bytes,
            &env.signatures,
        )?;
        Ok(TrustedMetadataSet {
            reference_time,
            root,
            timestamp: None,
            snapshot: None,
            targets: HashMap::new(),
        })
    }

    pub fn reference_time(&self) -> i64 {
        self.reference_time
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    pub fn timestamp(&self) -> Option<&Timestamp> {
        self.timestamp.as_ref()
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// A trusted targets role (top-level `targets` or delegated).
    pub fn targets(&self, role: &str) -> Option<&Targets> {
        self.targets.get(role).map(|t| &t.targets)
    }

    /// Root N+1, signed by a threshold of root N's root keys and of its own.
    pub fn update_root(&mut self, data: &[u8]) -> Result<&Root> {
        if self.timestamp.is_some() {
            return err(ErrorKind::Order, "cannot update root after timestamp");
        }
        let env = load(data, "root")?;
        let new = Root::parse(&env.signed)?;
        verify_threshold(
            "root (by the trusted root's keys)",
            &self.root.roles["root"],
            &self.root.keys,
            &env.signed_bytes,
            &env.signatures,
        )?;
        let want = self.root.common.version + 1;
        if new.common.version != want {
            return err(
                ErrorKind::VersionMismatch,
                format!("expected root version {want}, got {}", new.common.version),
            );
        }
        verify_threshold(
            "root (by its own keys)",
            &new.roles["root"],
            &new.keys,
            &env.signed_bytes,
            &env.signatures,
        )?;
        self.root = new;
        Ok(&self.root)
    }

    pub fn update_timestamp(&mut self, data: &[u8]) -> Result<&Timestamp> {
        if self.snapshot.is_some() {
            return err(ErrorKind::Order, "cannot update timestamp after snapshot");
        }
        // Workflow 5.3.10: the final root must not be expired (checked here, once
        // no newer root can come).
        if self.root.common.is_expired(self.reference_time) {
            return err(ErrorKind::Expired, "the final root is expired");
        }
        let env = load(data, "timestamp")?;
        let new = Timestamp::parse(&env.signed)?;
        verify_threshold(
            "timestamp",
            &self.root.roles["timestamp"],
            &self.root.keys,
            &env.signed_bytes,
            &env.signatures,
        )?;
        if let Some(old) = &self.timestamp {
            if new.common.version < old.common.version {
                return err(
                    ErrorKind::Rollback,
                    format!(
                        "timestamp version {} is below the trusted {}",
                        new.common.version, old.common.version
                    ),
                );
            }
            if new.common.version == old.common.version {
                return err(
                    ErrorKind::EqualVersion,
                    format!(
                        "timestamp version {} is already trusted",
                        new.common.version
                    ),
                );
            }
            if new.snapshot_meta.version < old.snapshot_meta.version {
                return err(
                    ErrorKind::Rollback,
                    format!(
                        "timestamp names snapshot version {}, below the trusted {}",
                        new.snapshot_meta.version, old.snapshot_meta.version
                    ),
                );
            }
        }
        // Kept even if expired: it is the rollback floor for a newer one.
        self.timestamp = Some(new);
        self.check_final_timestamp()?;
        Ok(self.timestamp.as_ref().expect("just set"))
    }

    fn check_final_timestamp(&self) -> Result<&Timestamp> {
        let Some(ts) = &self.timestamp else {
            return err(ErrorKind::Order, "no trusted timestamp");
        };
        if ts.common.is_expired(self.reference_time) {
            return err(ErrorKind::Expired, "timestamp is expired");
        }
        Ok(ts)
    }

    /// `trusted`: the bytes were verified as snapshot before (the local copy),
    /// so they need not match the hashes in the current timestamp.
    pub fn update_snapshot(&mut self, data: &[u8], trusted: bool) -> Result<&Snapshot> {
        if self.targets.contains_key("targets") {
            return err(ErrorKind::Order, "cannot update snapshot after targets");
        }
        let ts = self.check_final_timestamp()?;
        if !trusted {
            ts.snapshot_meta.verify(data)?;
        }
        let env = load(data, "snapshot")?;
        let new = Snapshot::parse(&env.signed)?;
        verify_threshold(
            "snapshot",
            &self.root.roles["snapshot"],
            &self.root.keys,
            &env.signed_bytes,
            &env.signatures,
        )?;
        if let Some(old) = &self.snapshot {
            for (name, old_meta) in &old.meta {
                let Some(new_meta) = new.meta.get(name) else {
                    return err(ErrorKind::Rollback, format!("new snapshot drops {name}"));
                };
                if new_meta.version < old_meta.version {
                    return err(
                        ErrorKind::Rollback,
                        format!(
                            "new snapshot has {name} version {}, below the trusted {}",
                            new_meta.version, old_meta.version
                        ),
                    );
                }
            }
        }
        self.snapshot = Some(new);
        self.check_final_snapshot()?;
        Ok(self.snapshot.as_ref().expect("just set"))
    }

    fn check_final_snapshot(&self) -> Result<&Snapshot> {
        let Some(snap) = &self.snapshot else {
            return err(ErrorKind::Order, "no trusted snapshot");
        };
        let ts = self.check_final_timestamp()?;
        if snap.common.is_expired(self.reference_time) {
            return err(ErrorKind::Expired, "snapshot is expired");
        }
        if snap.common.version != ts.snapshot_meta.version {
            return err(
                ErrorKind::VersionMismatch,
                format!(
                    "timestamp names snapshot version {}, got {}",
                    ts.snapshot_meta.version, snap.common.version
                ),
            );
        }
        Ok(snap)
    }

    pub fn update_targets(&mut self, data: &[u8]) -> Result<&Targets> {
        self.update_delegated_targets(data, "targets", "root")
    }

    /// Targets metadata for `role`, delegated by `delegator` (`"root"` for the
    /// top-level targets role), which must already be trusted.
    pub fn update_delegated_targets(
        &mut self,
        data: &[u8],
        role: &str,
        delegator: &str,
    ) -> Result<&Targets> {
        let snap = self.check_final_snapshot()?;
        let Some(meta) = snap.meta.get(&format!("{role}.json")) else {
            return err(
                ErrorKind::MissingMeta,
                format!("snapshot does not list {role:?}"),
            );
        };
        if let Some(len) = meta.length {
            // Cheap check first: a lying length fails before any hashing.
            check_length(data.len() as u64, len)?;
        }
        meta.verify(data)?;
        let want_version = meta.version;
        let env = load(data, "targets")?;
        let new = Targets::parse(&env.signed)?;
        self.verify_delegation(role, delegator, &env)?;
        if new.common.version != want_version {
            return err(
                ErrorKind::VersionMismatch,
                format!(
                    "snapshot names {role} version {want_version}, got {}",
                    new.common.version
                ),
            );
        }
        if new.common.is_expired(self.reference_time) {
            return err(ErrorKind::Expired, format!("{role} is expired"));
        }
        self.targets.insert(
            role.to_owned(),
            TrustedTargets {
                targets: new,
                envelope: env,
                verified_by: vec![delegator.to_owned()],
            },
        );
        Ok(&self.targets[role].targets)
    }

    /// A role already trusted, reached now through `delegator`: its signatures
    /// must meet `delegator`'s threshold for it too, or the lookup fails.
    pub fn trusted_via(&mut self, role: &str, delegator: &str) -> Result<&Targets> {
        let Some(t) = self.targets.get(role) else {
            return err(ErrorKind::Order, format!("{role} is not trusted yet"));
        };
        if !t.verified_by.iter().any(|d| d == delegator) {
            let env = t.envelope.clone();
            self.verify_delegation(role, delegator, &env)?;
            let t = self.targets.get_mut(role).expect("checked above");
            t.verified_by.push(delegator.to_owned());
        }
        Ok(&self.targets[role].targets)
    }

    fn verify_delegation(&self, role: &str, delegator: &str, env: &Envelope) -> Result<()> {
        if delegator == "root" {
            if role != "targets" {
                return err(ErrorKind::Order, "root delegates only the targets role");
            }
            return verify_threshold(
                role,
                &self.root.roles["targets"],
                &self.root.keys,
                &env.signed_bytes,
                &env.signatures,
            );
        }
        let Some(parent) = self.targets.get(delegator) else {
            return err(
                ErrorKind::Order,
                format!("delegator {delegator} is not trusted"),
            );
        };
        let Some(delegations) = &parent.targets.delegations else {
            return err(
                ErrorKind::Signature,
                format!("{delegator} delegates to nobody, not {role}"),
            );
        };
        let Some(r) = delegations.role(role) else {
            return err(
                ErrorKind::Signature,
                format!("{delegator} does not delegate to {role}"),
            );
        };
        verify_threshold(
            role,
            r,
            &delegations.keys,
            &env.signed_bytes,
            &env.signatures,
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testrepo::{sha256_hex, Repo, Signer, NOW};
    use super::*;

    fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
        r.unwrap_err().kind
    }

    /// A set with root v1 loaded (and timestamp, snapshot, targets if `top`).
    fn loaded(repo: &Repo, top: bool) -> TrustedMetadataSet {
        let mut set = TrustedMetadataSet::new(repo.version("root", 1), NOW).unwrap();
        if top {
            set.update_timestamp(repo.latest("timestamp")).unwrap();
            set.update_snapshot(repo.latest("snapshot"), false).unwrap();
            set.update_targets(repo.latest("targets")).unwrap();
        }
        set
    }

    #[test]
    fn top_level_workflow_accepts_a_valid_repository() {
        let mut repo = Repo::new();
        repo.add_target("targets", "models/churn/1/model.onnx", b"onnx");
        repo.publish(&["targets", "snapshot", "timestamp"]);
        let set = loaded(&repo, true);
        let t = set.targets("targets").unwrap();
        assert_eq!(t.common.version, 2);
        assert_eq!(t.targets["models/churn/1/model.onnx"].length, 4);
    }

    #[test]
    fn bad_signature_is_refused_and_nothing_is_trusted() {
        let repo = Repo::new();
        let mut set = loaded(&repo, false);
        let mut v: serde_json::Value = serde_json::from_slice(repo.latest("timestamp")).unwrap();
        v["signed"]["version"] = 7.into(); // content changed after signing
        let tampered = serde_json::to_vec(&v).unwrap();
        assert_eq!(kind(set.update_timestamp(&tampered)), ErrorKind::Signature);
        assert!(set.timestamp().is_none());
        // Signed by a key root does not list for timestamp.
        let stranger = Signer::new(200);
        let forged = Repo::envelope(&repo.signed["timestamp"], &[stranger]);
        assert_eq!(kind(set.update_timestamp(&forged)), ErrorKind::Signature);
    }

    #[test]
    fn a_key_id_listed_twice_counts_once_toward_the_threshold() {
        let mut repo = Repo::new();
        let snap_key = repo.signers["snapshot"][0].keyid.clone();
        repo.root()["roles"]["snapshot"] = json!({"keyids": [snap_key, snap_key], "threshold": 2});
        repo.publish(&["root", "snapshot", "timestamp"]);
        let mut set = loaded(&repo, false);
        set.update_root(repo.version("root", 2)).unwrap();
        set.update_timestamp(repo.latest("timestamp")).unwrap();
        let e = set
            .update_snapshot(repo.latest("snapshot"), false)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Signature);
        assert!(e.message.contains("1/2"), "{e}");
        // Two distinct keys meet the same threshold.
        let second = repo.new_signer();
        let id2 = second.keyid.clone();
        repo.root()["keys"][&id2] = second.public.clone();
        repo.root()["roles"]["snapshot"] = json!({"keyids": [snap_key, id2], "threshold": 2});
        repo.signers.get_mut("snapshot").unwrap().push(second);
        repo.publish(&["root", "snapshot", "timestamp"]);
        let mut set = loaded(&repo, false);
        set.update_root(repo.version("root", 2)).unwrap();
        set.update_root(repo.version("root", 3)).unwrap();
        set.update_timestamp(repo.latest("timestamp")).unwrap();
        set.update_snapshot(repo.latest("snapshot"), false).unwrap();
    }

    #[test]
    fn rollbacks_of_every_role_are_refused() {
        let mut repo = Repo::new();
        repo.delegate("targets", "team", &["team/*"], false);
        repo.publish(&["team", "targets", "snapshot", "timestamp"]);
        let v1_ts = repo.version("timestamp", 1).to_vec();
        let mut set = TrustedMetadataSet::new(repo.version("root", 1), NOW).unwrap();
        set.update_timestamp(repo.latest("timestamp")).unwrap();
        // Timestamp v1 after v2.
        assert_eq!(kind(set.update_timestamp(&v1_ts)), ErrorKind::Rollback);
        // The same version with changed content: the trusted copy stays.
        let mut ts = repo.signed["timestamp"].clone();
        ts["meta"]["snapshot.json"]["version"] = 100.into();
        let changed = Repo::envelope(&ts, &repo.signers["timestamp"]);
        assert_eq!(
            kind(set.update_timestamp(&changed)),
            ErrorKind::EqualVersion
        );
        assert_eq!(set.timestamp().unwrap().snapshot_meta.version, 2);
        // A newer timestamp naming an older snapshot.
        let mut ts = repo.signed["timestamp"].clone();
        ts["version"] = 3.into();
        ts["meta"]["snapshot.json"]["version"] = 1.into();
        let older_snap = Repo::envelope(&ts, &repo.signers["timestamp"]);
        assert_eq!(kind(set.update_timestamp(&older_snap)), ErrorKind::Rollback);

        // Snapshot: a later one that rolls targets back, or drops a role. The
        // trusted snapshot v2 is loaded as the floor under a timestamp naming v3.
        let mut ts = repo.signed["timestamp"].clone();
        ts["version"] = 3.into();
        ts["meta"]["snapshot.json"]["version"] = 3.into();
        let ts3 = Repo::envelope(&ts, &repo.signers["timestamp"]);
        let mut set2 = TrustedMetadataSet::new(repo.version("root", 1), NOW).unwrap();
        set2.update_timestamp(&ts3).unwrap();
        let e = set2
            .update_snapshot(repo.latest("snapshot"), true)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::VersionMismatch, "{e}");
        let mut snap = repo.signed["snapshot"].clone();
        snap["version"] = 3.into();
        snap["meta"]["targets.json"]["version"] = 1.into();
        let bytes = Repo::envelope(&snap, &repo.signers["snapshot"]);
        assert_eq!(
            kind(set2.update_snapshot(&bytes, false)),
            ErrorKind::Rollback
        );
        let mut snap = repo.signed["snapshot"].clone();
        snap["version"] = 3.into();
        snap["meta"].as_object_mut().unwrap().remove("team.json");
        let bytes = Repo::envelope(&snap, &repo.signers["snapshot"]);
        let e = set2.update_snapshot(&bytes, false).unwrap_err();
        assert!(
            e.kind == ErrorKind::Rollback && e.message.contains("drops team.json"),
            "{e}"
        );
    }

    #[test]
    fn expired_metadata_is_kept_as_a_floor_but_stops_the_workflow() {
        let mut repo = Repo::new();
        repo.signed.get_mut("timestamp").unwrap()["expires"] = "2029-12-31T23:59:59Z".into();
        repo.publish(&["timestamp"]);
        let mut set = loaded(&repo, false);
        assert_eq!(
            kind(set.update_timestamp(repo.latest("timestamp"))),
            ErrorKind::Expired
        );
        assert_eq!(
            set.timestamp().unwrap().common.version,
            2,
            "kept as intermediate"
        );
        assert_eq!(
            kind(set.update_snapshot(repo.latest("snapshot"), false)),
            ErrorKind::Expired
        );
        // Expiry is inclusive: expires == reference time is expired.
        let mut set = TrustedMetadataSet::new(repo.version("root", 1), NOW - 2).unwrap();
        set.update_timestamp(repo.latest("timestamp")).unwrap();
        let mut set = TrustedMetadataSet::new(repo.version("root", 1), NOW - 1).unwrap();
        assert_eq!(
            kind(set.update_timestamp(repo.latest("timestamp"))),
            ErrorKind::Expired
        );
    }

    #[test]
    fn freeze_an_expired_root_blocks_everything_after_it() {
        let mut repo = Repo::new();
        repo.root()["expires"] = "2029-06-01T00:00:00Z".into();
        repo.publish(&["root"]);
        let mut set = loaded(&repo, false);
        // An expired intermediate root is fine (a newer one may follow) ...
        set.update_root(repo.version("root", 2)).unwrap();
        // ... but as the final root it stops the refresh.
        let e = set.update_timestamp(repo.latest("timestamp")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Expired);
        assert!(e.message.contains("root"), "{e}");
    }

    #[test]
    fn mix_and_match_targets_from_another_snapshot_is_refused() {
        let mut repo = Repo::new();
        repo.add_target("targets", "a.onnx", b"v1 bytes");
        repo.publish(&["targets", "snapshot", "timestamp"]); // targets v2
        let old_targets = repo.latest("targets").to_vec();
        repo.add_target("targets", "a.onnx", b"v2 bytes");
        repo.publish(&["targets", "snapshot", "timestamp"]); // targets v3
        let mut set = loaded(&repo, false);
        set.update_timestamp(repo.latest("timestamp")).unwrap();
        set.update_snapshot(repo.latest("snapshot"), false).unwrap();
        // Validly signed targets, but not the version this snapshot names.
        assert_eq!(
            kind(set.update_targets(&old_targets)),
            ErrorKind::VersionMismatch
        );
        assert!(set.targets("targets").is_none());
        set.update_targets(repo.latest("targets")).unwrap();
    }

    #[test]
    fn metadata_hashes_and_lying_lengths_are_checked() {
        let mut repo = Repo::new();
        repo.meta_hashes = true;
        repo.publish(&["targets", "snapshot", "timestamp"]);
        let mut set = loaded(&repo, false);
        set.update_timestamp(repo.latest("timestamp")).unwrap();
        // Snapshot bytes with one byte appended: length (and hash) lie.
        let mut longer = repo.latest("snapshot").to_vec();
        longer.push(b' ');
        assert_eq!(
            kind(set.update_snapshot(&longer, false)),
            ErrorKind::LengthOrHash
        );
        // The local copy (trusted=true) need not match current hashes.
        set.update_snapshot(&longer, true).unwrap();
        let mut set = loaded(&repo, false);
        set.update_timestamp(repo.latest("timestamp")).unwrap();
        set.update_snapshot(repo.latest("snapshot"), false).unwrap();
        let mut t = repo.signed["targets"].clone();
        t["targets"]["x"] = json!({"length": 1, "hashes": {"sha256": sha256_hex(b"x")}});
        let swapped = Repo::envelope(&t, &repo.signers["targets"]);
        assert_eq!(kind(set.update_targets(&swapped)), ErrorKind::LengthOrHash);
        set.update_targets(repo.latest("targets")).unwrap();
    }

    #[test]
    fn root_rotation_needs_old_and_new_thresholds() {
        let mut repo = Repo::new();
        // v2: threshold up to 2 of {old, new}, signed by both.
        let new_key = repo.new_signer();
        repo.add_root_key("root", new_key);
        repo.root()["roles"]["root"]["threshold"] = 2.into();
        repo.publish(&["root"]);
        // v3: only the new key, threshold back to 1, signed by the new key only:
        // root v2 wanted 2 signatures, so this is refused.
        let old = repo.signers.get_mut("root").unwrap().remove(0);
        let new_id = repo.signers["root"][0].keyid.clone();
        repo.root()["roles"]["root"] = json!({"keyids": [new_id], "threshold": 1});
        repo.publish(&["root"]);
        let mut set = loaded(&repo, false);
        set.update_root(repo.version("root", 2)).unwrap();
        assert_eq!(
            kind(set.update_root(repo.version("root", 3))),
            ErrorKind::Signature
        );
        // Signed by both old and new: accepted.
        repo.signers.get_mut("root").unwrap().push(old);
        let v3 = repo.sign("root");
        set.update_root(&v3).unwrap();
        assert_eq!(set.root().roles["root"].threshold, 1);
        // Skipping a version is refused even if well signed.
        repo.root()["version"] = 5.into();
        assert_eq!(
            kind(set.update_root(&repo.sign("root"))),
            ErrorKind::VersionMismatch
        );
    }

    #[test]
    fn wrong_type_and_workflow_order_are_refused() {
        let repo = Repo::new();
        let mut set = loaded(&repo, false);
        assert_eq!(
            kind(set.update_timestamp(repo.latest("snapshot"))),
            ErrorKind::WrongType
        );
        assert_eq!(
            kind(set.update_snapshot(repo.latest("snapshot"), false)),
            ErrorKind::Order
        );
        set.update_timestamp(repo.latest("timestamp")).unwrap();
        assert_eq!(
            kind(set.update_root(repo.version("root", 1))),
            ErrorKind::Order
        );
        assert_eq!(
            kind(set.update_targets(repo.latest("targets"))),
            ErrorKind::Order
        );
        assert_eq!(
            kind(TrustedMetadataSet::new(b"{", NOW)),
            ErrorKind::Malformed
        );
    }

    #[test]
    fn a_cached_role_is_reverified_against_the_current_delegator() {
        let mut repo = Repo::new();
        repo.delegate("targets", "parent-a", &["team-a/*"], false);
        repo.delegate("targets", "parent-b", &["team-b/*"], false);
        repo.delegate("parent-a", "release", &["team-a/*"], false);
        repo.delegate("parent-b", "release", &["team-b/*"], false);
        // Sign release with parent-a's key for it only.
        repo.signers.get_mut("release").unwrap().truncate(1);
        repo.publish(&[
            "release",
            "parent-a",
            "parent-b",
            "targets",
            "snapshot",
            "timestamp",
        ]);
        let mut set = loaded(&repo, true);
        set.update_delegated_targets(repo.latest("parent-a"), "parent-a", "targets")
            .unwrap();
        set.update_delegated_targets(repo.latest("parent-b"), "parent-b", "targets")
            .unwrap();
        set.update_delegated_targets(repo.latest("release"), "release", "parent-a")
            .unwrap();
        set.trusted_via("release", "parent-a").unwrap();
        assert_eq!(
            kind(set.trusted_via("release", "parent-b")),
            ErrorKind::Signature
        );
        // And a role its delegator does not delegate to is refused.
        assert_eq!(
            kind(set.update_delegated_targets(repo.latest("parent-b"), "parent-b", "parent-a")),
            ErrorKind::Signature
        );
    }
}
