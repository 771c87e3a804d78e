//! A small signing TUF repository for tests (Ed25519 keys from `ring`), shaped
//! like the conformance suite's `RepositorySimulator`: edit the `signed` JSON,
//! `publish` roles (bumping versions, updating snapshot and timestamp meta), and
//! either hand the bytes to the core or `write_to` a directory for the updater.

use std::collections::BTreeMap;
use std::path::Path;

use ring::digest;
use serde_json::{json, Value};

use super::canonical;
use super::keys::hex_encode;

pub const EXPIRES: &str = "2100-01-01T00:00:00Z";
/// 2030-01-01T00:00:00Z: the reference time tests run at.
pub const NOW: i64 = 1_893_456_000;

/// A test signer: the release tooling's Ed25519 key from a one-byte seed.
pub struct Signer {
    pub keyid: String,
    pub public: Value,
    key: crate::release::SigningKey,
}

impl Signer {
    pub fn new(seed: u8) -> Signer {
        let key = crate::release::SigningKey::from_seed([seed; 32]).unwrap();
        Signer {
            keyid: key.keyid().to_owned(),
            public: key.public().clone(),
            key,
        }
    }

    pub fn sign(&self, msg: &[u8]) -> String {
        self.key.sign(msg)
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex_encode(digest::digest(&digest::SHA256, data).as_ref())
}

pub struct Repo {
    pub signed: BTreeMap<String, Value>,
    pub signers: BTreeMap<String, Vec<Signer>>,
    /// Every published version of each role, oldest first.
    pub published: BTreeMap<String, Vec<Vec<u8>>>,
    pub artifacts: BTreeMap<String, Vec<u8>>,
    /// Put length and sha256 of metadata into snapshot/timestamp meta.
    pub meta_hashes: bool,
    next_seed: u8,
}

fn common(t: &str) -> Value {
    json!({"_type": t, "version": 1, "spec_version": "1.0.31", "expires": EXPIRES})
}

impl Default for Repo {
    fn default() -> Self {
        Self::new()
    }
}

impl Repo {
    pub fn new() -> Repo {
        let mut repo = Repo {
            signed: BTreeMap::new(),
            signers: BTreeMap::new(),
            published: BTreeMap::new(),
            artifacts: BTreeMap::new(),
            meta_hashes: false,
            next_seed: 1,
        };
        let mut root = common("root");
        root["consistent_snapshot"] = true.into();
        root["keys"] = json!({});
        root["roles"] = json!({});
        for role in ["root", "timestamp", "snapshot", "targets"] {
            let s = repo.new_signer();
            root["keys"][&s.keyid] = s.public.clone();
            root["roles"][role] = json!({"keyids": [s.keyid], "threshold": 1});
            repo.signers.insert(role.into(), vec![s]);
        }
        repo.signed.insert("root".into(), root);
        let mut ts = common("timestamp");
        ts["meta"] = json!({"snapshot.json": {"version": 1}});
        repo.signed.insert("timestamp".into(), ts);
        let mut snap = common("snapshot");
        snap["meta"] = json!({"targets.json": {"version": 1}});
        repo.signed.insert("snapshot".into(), snap);
        let mut targets = common("targets");
        targets["targets"] = json!({});
        repo.signed.insert("targets".into(), targets);
        repo.publish(&["root", "targets", "snapshot", "timestamp"]);
        repo
    }

    pub fn new_signer(&mut self) -> Signer {
        let s = Signer::new(self.next_seed);
        self.next_seed += 1;
        s
    }

    pub fn root(&mut self) -> &mut Value {
        self.signed.get_mut("root").unwrap()
    }

    /// Add `signer`'s key to top-level `role` in root (and sign with it).
    pub fn add_root_key(&mut self, role: &str, signer: Signer) {
        let root = self.root();
        root["keys"][&signer.keyid] = signer.public.clone();
        root["roles"][role]["keyids"]
            .as_array_mut()
            .unwrap()
            .push(signer.keyid.clone().into());
        self.signers.entry(role.into()).or_default().push(signer);
    }

    /// The envelope for `signed` signed by `signers`.
    pub fn envelope(signed: &Value, signers: &[Signer]) -> Vec<u8> {
        let bytes = canonical::encode(signed).unwrap();
        let sigs: Vec<Value> = signers
            .iter()
            .map(|s| json!({"keyid": s.keyid, "sig": s.sign(&bytes)}))
            .collect();
        serde_json::to_vec(&json!({"signatures": sigs, "signed": signed})).unwrap()
    }

    pub fn sign(&self, role: &str) -> Vec<u8> {
        Self::envelope(&self.signed[role], &self.signers[role])
    }

    /// Sign and publish `roles` in order, bumping versions of roles published
    /// before, and recording each in snapshot (targets roles) or timestamp.
    pub fn publish(&mut self, roles: &[&str]) {
        for &role in roles {
            if self.published.contains_key(role) {
                let v = &mut self.signed.get_mut(role).unwrap()["version"];
                *v = (v.as_u64().unwrap() + 1).into();
            }
            let bytes = self.sign(role);
            let version = self.signed[role]["version"].as_u64().unwrap();
            let mut meta = json!({"version": version});
            if self.meta_hashes {
                meta["length"] = bytes.len().into();
                meta["hashes"] = json!({"sha256": sha256_hex(&bytes)});
            }
            self.published.entry(role.into()).or_default().push(bytes);
            match role {
                "root" | "timestamp" => {}
                "snapshot" => {
                    self.signed.get_mut("timestamp").unwrap()["meta"]["snapshot.json"] = meta
                }
                _ => {
                    self.signed.get_mut("snapshot").unwrap()["meta"][format!("{role}.json")] = meta
                }
            }
        }
    }

    pub fn latest(&self, role: &str) -> &[u8] {
        self.published[role].last().unwrap()
    }

    pub fn version(&self, role: &str, v: usize) -> &[u8] {
        &self.published[role][v - 1]
    }

    /// Delegate `paths` from `delegator` to a new role `name` with a new key.
    pub fn delegate(&mut self, delegator: &str, name: &str, paths: &[&str], terminating: bool) {
        let s = self.new_signer();
        let d = &mut self.signed.get_mut(delegator).unwrap();
        if d.get("delegations").is_none() {
            d["delegations"] = json!({"keys": {}, "roles": []});
        }
        d["delegations"]["keys"][&s.keyid] = s.public.clone();
        d["delegations"]["roles"]
            .as_array_mut()
            .unwrap()
            .push(json!({
                "name": name, "keyids": [s.keyid], "threshold": 1,
                "terminating": terminating, "paths": paths,
            }));
        self.signers.entry(name.into()).or_default().push(s);
        if !self.signed.contains_key(name) {
            let mut t = common("targets");
            t["targets"] = json!({});
            self.signed.insert(name.into(), t);
        }
    }

    pub fn add_target(&mut self, role: &str, path: &str, data: &[u8]) {
        self.signed.get_mut(role).unwrap()["targets"][path] =
            json!({"length": data.len(), "hashes": {"sha256": sha256_hex(data)}});
        self.artifacts.insert(path.into(), data.to_vec());
    }

    /// Lay the repository out as a consistent-snapshot repository on disk:
    /// `metadata/N.root.json`, `metadata/timestamp.json`, `metadata/N.<role>.json`,
    /// `targets/<dir>/<sha256>.<name>`.
    pub fn write_to(&self, dir: &Path) {
        let meta = dir.join("metadata");
        let _ = std::fs::remove_dir_all(&meta);
        std::fs::create_dir_all(&meta).unwrap();
        for (role, versions) in &self.published {
            if role == "timestamp" {
                std::fs::write(meta.join("timestamp.json"), versions.last().unwrap()).unwrap();
                continue;
            }
            for (i, bytes) in versions.iter().enumerate() {
                std::fs::write(meta.join(format!("{}.{role}.json", i + 1)), bytes).unwrap();
            }
        }
        for (path, data) in &self.artifacts {
            let (d, name) = path.rsplit_once('/').unwrap_or(("", path));
            let tdir = dir.join("targets").join(d);
            std::fs::create_dir_all(&tdir).unwrap();
            std::fs::write(tdir.join(format!("{}.{name}", sha256_hex(data))), data).unwrap();
        }
    }
}

/// A PEM SubjectPublicKeyInfo for an uncompressed P-256 point.
pub fn p256_spki_pem(point: &[u8]) -> String {
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    der.extend_from_slice(point);
    let b64 = base64(&der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = ((c[0] as u32) << 16)
            | ((*c.get(1).unwrap_or(&0) as u32) << 8)
            | (*c.get(2).unwrap_or(&0) as u32);
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
