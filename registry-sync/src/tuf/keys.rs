//! TUF public keys and signature checks, on `ring`.
//!
//! Supported (keytype / scheme, as securesystemslib writes them):
//! - `ed25519` / `ed25519`: `keyval.public` is the 32-byte key in hex;
//! - `ecdsa` or `ecdsa-sha2-nistp256` / `ecdsa-sha2-nistp256`: a PEM
//!   SubjectPublicKeyInfo; signatures are DER (ASN.1) `ECDSA-Sig-Value`, in hex;
//! - `rsa` / `rsassa-pss-sha256`: a PEM SubjectPublicKeyInfo; PSS with MGF1-SHA256
//!   and a 32-byte salt (what securesystemslib signs with), 2048 to 8192 bits.
//!
//! A key of any other type, or one whose key material does not decode, is kept
//! but can never verify: it only ever lowers a signature count, so tolerating it
//! cannot make anything trusted that would not be otherwise (python-tuf refuses
//! the whole metadata instead; both are safe).

use ring::signature::{self, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use serde_json::Value;

use super::{err, ErrorKind, Result};

/// A public key as named in root or a delegating targets role.
#[derive(Debug, Clone)]
pub struct Key {
    pub keytype: String,
    pub scheme: String,
    verifier: Verifier,
}

#[derive(Debug, Clone)]
enum Verifier {
    Ed25519(Vec<u8>),
    /// Uncompressed SEC1 point (0x04 || X || Y).
    EcdsaP256(Vec<u8>),
    /// DER `RSAPublicKey` (PKCS#1), what ring takes.
    RsaPss(Vec<u8>),
    Unusable(String),
}

impl Key {
    /// Parse a key object. Only structural errors (not an object, `keytype` not a
    /// string, no `keyval.public` string) are errors; unsupported or undecodable
    /// key material gives a key that never verifies.
    pub fn from_json(v: &Value) -> Result<Key> {
        let obj = v
            .as_object()
            .ok_or_else(|| super::TufError::new(ErrorKind::Malformed, "key is not an object"))?;
        let field = |name: &str| -> Result<String> {
            match obj.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => err(ErrorKind::Malformed, format!("key has no string {name:?}")),
            }
        };
        let keytype = field("keytype")?;
        let scheme = field("scheme")?;
        let public = match obj.get("keyval").and_then(|kv| kv.get("public")) {
            Some(Value::String(s)) => s.clone(),
            _ => return err(ErrorKind::Malformed, "key has no string keyval.public"),
        };
        let verifier = match (keytype.as_str(), scheme.as_str()) {
            ("ed25519", "ed25519") => match hex_decode(&public) {
                Some(b) if b.len() == 32 => Verifier::Ed25519(b),
                _ => Verifier::Unusable("ed25519 public key is not 32 bytes of hex".into()),
            },
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
                match spki_key(&public, OID_EC_PUBLIC_KEY, Some(OID_P256)) {
                    Ok(point) => Verifier::EcdsaP256(point),
                    Err(e) => Verifier::Unusable(e),
                }
            }
            ("rsa", "rsassa-pss-sha256") => match spki_key(&public, OID_RSA_ENCRYPTION, None) {
                Ok(der) => Verifier::RsaPss(der),
                Err(e) => Verifier::Unusable(e),
            },
            _ => Verifier::Unusable(format!("unsupported key {keytype}/{scheme}")),
        };
        Ok(Key {
            keytype,
            scheme,
            verifier,
        })
    }

    /// Whether `sig_hex` is a valid signature by this key over `msg`.
    pub fn verify(&self, msg: &[u8], sig_hex: &str) -> bool {
        let Some(sig) = hex_decode(sig_hex) else {
            return false;
        };
        let (alg, key): (&dyn signature::VerificationAlgorithm, &[u8]) = match &self.verifier {
            Verifier::Ed25519(k) => (&signature::ED25519, k),
            Verifier::EcdsaP256(k) => (&signature::ECDSA_P256_SHA256_ASN1, k),
            Verifier::RsaPss(k) => (&signature::RSA_PSS_2048_8192_SHA256, k),
            Verifier::Unusable(_) => return false,
        };
        UnparsedPublicKey::new(alg, key).verify(msg, &sig).is_ok()
    }

    /// Why this key can never verify, if it cannot.
    pub fn unusable_reason(&self) -> Option<&str> {
        match &self.verifier {
            Verifier::Unusable(r) => Some(r),
            _ => None,
        }
    }
}

// DER encodings of the object identifiers (tag and length included).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

/// Decode a PEM SubjectPublicKeyInfo, check its algorithm (and EC curve), and
/// return the contents of its `subjectPublicKey` BIT STRING.
fn spki_key(pem: &str, alg_oid: &[u8], curve_oid: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("public key is not a PEM SubjectPublicKeyInfo: {e:?}"))?;
    let mut outer = Der::new(spki.as_ref());
    let mut seq = Der::new(outer.expect(0x30)?);
    if !outer.is_empty() {
        return Err("trailing bytes after SubjectPublicKeyInfo".into());
    }
    let alg_id = seq.expect(0x30)?;
    let bits = seq.expect(0x03)?;
    if !seq.is_empty() {
        return Err("trailing bytes in SubjectPublicKeyInfo".into());
    }
    let mut alg = Der::new(alg_id);
    let oid = alg.element()?;
    if oid != alg_oid {
        return Err("public key algorithm does not match the key type".into());
    }
    if let Some(curve) = curve_oid {
        if alg.element()? != curve || !alg.is_empty() {
            return Err("EC public key is not on P-256".into());
        }
    }
    match bits.split_first() {
        Some((0, key)) if !key.is_empty() => Ok(key.to_vec()),
        _ => Err("subjectPublicKey BIT STRING is malformed".into()),
    }
}

/// A minimal DER reader: single-byte tags, definite lengths. Enough for SPKI.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Der { rest }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next element whole (tag, length and contents).
    fn element(&mut self) -> Result<&'a [u8], String> {
        let start = self.rest;
        let (_, contents_len, header_len) = self.header()?;
        let total = header_len + contents_len;
        self.rest = &start[total..];
        Ok(&start[..total])
    }

    /// The contents of the next element, which must have tag `tag`.
    fn expect(&mut self, tag: u8) -> Result<&'a [u8], String> {
        let start = self.rest;
        let (t, len, header_len) = self.header()?;
        if t != tag {
            return Err(format!("DER: expected tag {tag:#04x}, got {t:#04x}"));
        }
        self.rest = &start[header_len + len..];
        Ok(&start[header_len..header_len + len])
    }

    /// (tag, contents length, header length); checks the contents fit.
    fn header(&self) -> Result<(u8, usize, usize), String> {
        let b = self.rest;
        if b.len() < 2 {
            return Err("DER: truncated".into());
        }
        let tag = b[0];
        if tag & 0x1f == 0x1f {
            return Err("DER: multi-byte tags are not supported".into());
        }
        let (len, header_len) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < 2 + n {
                return Err("DER: bad length".into());
            }
            let len = b[2..2 + n]
                .iter()
                .fold(0usize, |acc, &x| (acc << 8) | x as usize);
            (len, 2 + n)
        };
        if b.len() - header_len < len {
            return Err("DER: element longer than its container".into());
        }
        Ok((tag, len, header_len))
    }
}

/// Lower-case hex, as TUF writes hashes and signatures.
pub fn hex_encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

/// Decode hex (either case); `None` if it is not hex.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    s.chunks(2)
        .map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with securesystemslib 1.4.0 (CryptoSigner.generate_*), signing MSG.
    const MSG: &[u8] = br#"{"_type":"test","msg":"edgeinfer tuf key vector"}"#;
    const ED25519_KEY: &str = r#"{"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "db5b9813975bf0415060cb2539d6d4688cb79fcd9a0bd2b844839277e14c9f78"}}"#;
    const ED25519_SIG: &str = "2c1a992db51f662b885bc4b04b5cdd9a8830154d322749dc8612146d18290640e08927e628f141618d6753b3cd7dda6984686ca6f0d1393e926d2c23c0266509";
    const ECDSA_KEY: &str = r#"{"keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256", "keyval": {"public": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAELt3OWokq8jHwqzacrgNo2axJbNVR\nztm86JphjpUCiNzKo3p3FzZ2u1m4P5NSRcUM7QbtgF+hafRb5A3DMG4Jgg==\n-----END PUBLIC KEY-----\n"}}"#;
    const ECDSA_SIG: &str = "3044022017d598f80990b90f256a2840f746c8c6fb7346ea4c1d4f30e6c1b2e26062298702207d955d1b788685abed7ce427b11ea153624325236ef4fd6f97d36d03b25edf03";
    const RSA_KEY: &str = r#"{"keytype": "rsa", "scheme": "rsassa-pss-sha256", "keyval": {"public": "-----BEGIN PUBLIC KEY-----\nMIIBojANBgkqhkiG9w0BAQEFAAOCAY8AMIIBigKCAYEA1mAy85sKQdxBKJpgNr4f\nNugqska15aUVHTKrMEvSV3iVhB29xHUE9dGbSQAmv5UlRk3/4LLOfdQd4zGkJZKb\nQqs58R74leye1BhZCrDtTyrIVVecSxcZ3zGBB8ke4R79ArUMGoyl7zq7mqQxD8ln\nxq3t76mFsoN5pSiY8hVQXqbKrtXY5meG+u0mGLiMRiv+s7fslPgOUWt3F9dApPWI\nqeUslAUCauGcwds1QrUPfOKAkY5jDoFFCDJzD/+qpf4q7ZwhXFXOWjpL9QC2T1+x\nNzqjLARKE13QLReKPpNYcijn3yEwsaE2oNdrgE6l2sGPx+4xGoQN+ZzKAtAn7ETw\nzps/3xRlIPWAyJpmGa02hi8cnUPS8uaSHVu8/yuDXteG7xl9uLB0a1yrVjWGTj4w\nXAgX1lWkcBbMfmw2Om+Pgozka6ZWGwB3LEFe+7VyGlN0Gl/6gGmiO/8r+OVAld1H\nFSudC4cyLs8gBMcAfOx9YAcifus7qN87Lr4nxwIyC18JAgMBAAE=\n-----END PUBLIC KEY-----\n"}}"#;
    const RSA_SIG: &str = "981155d0d82e86cb2c5581b6b9b55d3f8fe8daf1f8fdbaafc46e1795e3928b86aedd980964a48a0aa4f116170a4c7143b7f240c1187adb759482adb1f24043a6b93f39ad044f1bc348b231d8ca19ecbd9b38ac86d728b76033150ddb00b9306c594e943915556db62bc9f9b3aaecfd602564553755d5e386b1617664b67c7441b47af8e6d14cb3526c9d419294ae6a0b65c8b31c19cf7853ba53a983d79e5da87e55f1d02ceb38011798984c9ce5a39061586ed443e2bd965f517f6f171d3abb909b82b0ed4674a1c20ed12374f9271faef3504e98c1dc4bb89fd59df4de5ec11ae5fb3e10f6a368387b17c6873e036b31423be3dbd9e4d54c6e2f5962b01b72e78cf46314bee0385877ac42418035aca39d16bec6cb74148a385f0b8f833ae5cd9574986d3cd8a42b0c784fe4ebaaf3cfe76d654a7aa78fc0a9a7d8e2b434c03843abde019251ab09e3a74e9d21f77df4c1e3d924460f1bfafccdd560cbdf76fc4a228630ddcb423c0c5a51dc0c3aa12e3efd0baae4c9790967081587ebfbd9";

    fn key(json: &str) -> Key {
        Key::from_json(&serde_json::from_str(json).unwrap()).unwrap()
    }

    fn flip_last(sig: &str) -> String {
        let mut b = hex_decode(sig).unwrap();
        *b.last_mut().unwrap() ^= 1;
        hex_encode(&b)
    }

    #[test]
    fn each_key_type_verifies_a_securesystemslib_signature() {
        for (k, sig) in [
            (ED25519_KEY, ED25519_SIG),
            (ECDSA_KEY, ECDSA_SIG),
            (RSA_KEY, RSA_SIG),
        ] {
            let k = key(k);
            assert!(k.unusable_reason().is_none(), "{:?}", k.unusable_reason());
            assert!(k.verify(MSG, sig), "{} must verify", k.keytype);
            assert!(!k.verify(b"another message", sig), "{}", k.keytype);
            assert!(!k.verify(MSG, &flip_last(sig)), "{}", k.keytype);
            assert!(!k.verify(MSG, ""), "{}: empty signature", k.keytype);
            assert!(!k.verify(MSG, "zz"), "{}: not hex", k.keytype);
        }
    }

    #[test]
    fn keys_of_one_type_do_not_verify_signatures_of_another() {
        assert!(!key(ED25519_KEY).verify(MSG, ECDSA_SIG));
        assert!(!key(ECDSA_KEY).verify(MSG, ED25519_SIG));
        assert!(!key(RSA_KEY).verify(MSG, ECDSA_SIG));
    }

    #[test]
    fn ecdsa_key_with_keytype_alias_and_ring_generated_signature() {
        use ring::rand::SystemRandom;
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let pem = super::super::testrepo::p256_spki_pem(pair.public_key().as_ref());
        let k = Key::from_json(&serde_json::json!({
            "keytype": "ecdsa-sha2-nistp256", "scheme": "ecdsa-sha2-nistp256",
            "keyval": {"public": pem}
        }))
        .unwrap();
        let sig = pair.sign(&rng, MSG).unwrap();
        assert!(k.verify(MSG, &hex_encode(sig.as_ref())));
    }

    #[test]
    fn unsupported_or_garbled_keys_never_verify() {
        // An RSA key declared as ECDSA: the SPKI algorithm does not match.
        let mut v: Value = serde_json::from_str(RSA_KEY).unwrap();
        v["keytype"] = "ecdsa".into();
        v["scheme"] = "ecdsa-sha2-nistp256".into();
        let k = Key::from_json(&v).unwrap();
        assert!(k.unusable_reason().unwrap().contains("algorithm"), "{k:?}");
        let mut v: Value = serde_json::from_str(ED25519_KEY).unwrap();
        v["scheme"] = "ed448".into();
        let k = Key::from_json(&v).unwrap();
        assert!(!k.verify(MSG, ED25519_SIG));
        let mut v: Value = serde_json::from_str(ECDSA_KEY).unwrap();
        v["keyval"]["public"] =
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into();
        assert!(Key::from_json(&v).unwrap().unusable_reason().is_some());
        // Structural problems are errors.
        assert!(Key::from_json(&serde_json::json!({"keytype": "ed25519"})).is_err());
        assert!(Key::from_json(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn der_reader_refuses_lengths_past_the_end() {
        let mut d = Der::new(&[0x30, 0x05, 0x01]);
        assert!(d.expect(0x30).is_err());
        let mut d = Der::new(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.expect(0x30).is_err());
        let mut d = Der::new(&[0x30, 0x80]);
        assert!(d.expect(0x30).is_err());
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex_encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(hex_decode("00ABff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("gg"), None);
    }
}
