//! Signing keys for the release tooling: Ed25519 on `ring`, stored as small JSON files.
//!
//! A private key file (`NAME.key.json`, mode 0600) holds the 32-byte seed; the public
//! file (`NAME.pub.json`) is the TUF key object exactly as root lists it, so
//! `repo init` and `root rotate` read it unchanged. The key id is sha256 over the
//! canonical JSON of that object, as python-tuf computes it.

use std::path::Path;

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

use super::{ReleaseError, ReleaseErrorKind as K};
use crate::tuf::canonical;
use crate::tuf::keys::{hex_decode, hex_encode};

/// An Ed25519 signing key.
pub struct SigningKey {
    keyid: String,
    public: Value,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        f.debug_struct("SigningKey")
            .field("keyid", &self.keyid)
            .finish()
    }
}

/// The key id of a TUF public key object: sha256 of its canonical JSON.
pub fn key_id(public: &Value) -> Result<String, ReleaseError> {
    let bytes = canonical::encode(public)
        .map_err(|e| ReleaseError::new(K::Key, format!("public key: {e}")))?;
    Ok(hex_encode(digest::digest(&digest::SHA256, &bytes).as_ref()))
}

/// Read a public key file (a TUF key object), checking it is one we can verify with.
pub fn read_public(path: &Path) -> Result<Value, ReleaseError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ReleaseError::new(K::Io, format!("cannot read {}: {e}", path.display())))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ReleaseError::new(K::Key, format!("{}: not JSON: {e}", path.display())))?;
    // A private key file holds the public part too: accept it, keep only the public object.
    let public = match v.get("keyval").and_then(|kv| kv.get("private")) {
        Some(_) => json!({
            "keytype": v["keytype"], "scheme": v["scheme"],
            "keyval": {"public": v["keyval"]["public"]},
        }),
        None => v,
    };
    let key = crate::tuf::keys::Key::from_json(&public)
        .map_err(|e| ReleaseError::new(K::Key, format!("{}: {e}", path.display())))?;
    if let Some(why) = key.unusable_reason() {
        return Err(ReleaseError::new(
            K::Key,
            format!("{}: {why}", path.display()),
        ));
    }
    Ok(public)
}

impl SigningKey {
    /// A fresh key from the system's secure random source.
    pub fn generate() -> Result<SigningKey, ReleaseError> {
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| ReleaseError::new(K::Key, "the system random source failed"))?;
        Self::from_seed(seed)
    }

    /// The key for a given seed (tests and demo keys: deterministic).
    pub fn from_seed(seed: [u8; 32]) -> Result<SigningKey, ReleaseError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| ReleaseError::new(K::Key, format!("bad Ed25519 seed: {e}")))?;
        let public = json!({
            "keytype": "ed25519", "scheme": "ed25519",
            "keyval": {"public": hex_encode(pair.public_key().as_ref())}
        });
        Ok(SigningKey {
            keyid: key_id(&public)?,
            public,
            seed,
            pair,
        })
    }

    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The TUF public key object (what root lists under `keys`).
    pub fn public(&self) -> &Value {
        &self.public
    }

    /// Hex signature over `msg` (the canonical bytes of a `signed` object).
    pub fn sign(&self, msg: &[u8]) -> String {
        hex_encode(self.pair.sign(msg).as_ref())
    }

    /// Load a private key file written by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<SigningKey, ReleaseError> {
        let bytes = std::fs::read(path).map_err(|e| {
            ReleaseError::new(K::Io, format!("cannot read {}: {e}", path.display()))
        })?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ReleaseError::new(K::Key, format!("{}: not JSON: {e}", path.display())))?;
        let bad = |why: &str| ReleaseError::new(K::Key, format!("{}: {why}", path.display()));
        if v["keytype"] != "ed25519" || v["scheme"] != "ed25519" {
            return Err(bad("only ed25519 private keys are supported"));
        }
        let seed = v["keyval"]["private"]
            .as_str()
            .and_then(hex_decode)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| bad("keyval.private is not 32 bytes of hex"))?;
        let key = Self::from_seed(seed)?;
        if v["keyval"]["public"] != key.public["keyval"]["public"] {
            return Err(bad("the public key does not belong to the private key"));
        }
        Ok(key)
    }

    /// Write `DIR/NAME.key.json` (mode 0600, refusing to overwrite) and `DIR/NAME.pub.json`.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), ReleaseError> {
        use std::io::Write;
        std::fs::create_dir_all(dir).map_err(|e| {
            ReleaseError::new(K::Io, format!("cannot create {}: {e}", dir.display()))
        })?;
        let private = json!({
            "keytype": "ed25519", "scheme": "ed25519", "keyid": self.keyid,
            "keyval": {"public": self.public["keyval"]["public"], "private": hex_encode(&self.seed)},
        });
        let path = dir.join(format!("{name}.key.json"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&path).map_err(|e| {
            ReleaseError::new(K::Io, format!("cannot create {}: {e}", path.display()))
        })?;
        f.write_all(&serde_json::to_vec_pretty(&private).expect("json"))
            .and_then(|_| f.sync_all())
            .map_err(|e| ReleaseError::new(K::Io, format!("writing {}: {e}", path.display())))?;
        let pub_path = dir.join(format!("{name}.pub.json"));
        std::fs::write(
            &pub_path,
            serde_json::to_vec_pretty(&self.public).expect("json"),
        )
        .map_err(|e| ReleaseError::new(K::Io, format!("writing {}: {e}", pub_path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_keys_load_back_and_verify_with_the_tuf_client() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::generate().unwrap();
        k.save(dir.path(), "targets-1").unwrap();
        let back = SigningKey::load(&dir.path().join("targets-1.key.json")).unwrap();
        assert_eq!(back.keyid(), k.keyid());
        let public = read_public(&dir.path().join("targets-1.pub.json")).unwrap();
        assert_eq!(&public, k.public());
        assert_eq!(key_id(&public).unwrap(), k.keyid());
        // The private file gives the same public object.
        assert_eq!(
            read_public(&dir.path().join("targets-1.key.json")).unwrap(),
            public
        );
        let verifier = crate::tuf::keys::Key::from_json(&public).unwrap();
        assert!(verifier.verify(b"msg", &back.sign(b"msg")));
        assert!(!verifier.verify(b"other", &back.sign(b"msg")));
        // Never overwritten.
        let e = k.save(dir.path(), "targets-1").unwrap_err();
        assert_eq!(e.kind, K::Io);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("targets-1.key.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
    }

    #[test]
    fn a_key_file_whose_halves_disagree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = SigningKey::from_seed([1; 32]).unwrap();
        let b = SigningKey::from_seed([2; 32]).unwrap();
        let mut v = json!({"keytype": "ed25519", "scheme": "ed25519",
            "keyval": {"public": a.public()["keyval"]["public"], "private": hex_encode(&[2; 32])}});
        let p = dir.path().join("k.json");
        std::fs::write(&p, v.to_string()).unwrap();
        assert_eq!(SigningKey::load(&p).unwrap_err().kind, K::Key);
        v["keyval"]["public"] = b.public()["keyval"]["public"].clone();
        std::fs::write(&p, v.to_string()).unwrap();
        assert_eq!(SigningKey::load(&p).unwrap().keyid(), b.keyid());
    }
}
