//! TUF metadata types, parsed strictly from the JSON the repository serves.
//!
//! Parsing never panics and refuses what python-tuf's `Metadata.from_bytes`
//! refuses: missing or mistyped fields, versions below 1, a spec major version
//! other than 1, an `expires` that is not `YYYY-MM-DDTHH:MM:SSZ`, signatures that
//! repeat a key id, delegations that reuse a top-level role name. Unknown fields
//! are kept in the signed bytes (signatures cover them) and otherwise ignored.

use std::collections::{BTreeMap, HashMap};

use ring::digest;
use serde_json::{Map, Value};

use super::keys::{hex_encode, Key};
use super::{canonical, err, ErrorKind, Result, TufError, TOP_LEVEL_ROLES};

/// A parsed envelope: the `signed` object, its canonical bytes, and the
/// signatures by key id.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub signed: Value,
    pub signed_bytes: Vec<u8>,
    pub signatures: BTreeMap<String, String>,
}

impl Envelope {
    pub fn parse(data: &[u8]) -> Result<Envelope> {
        let v: Value = serde_json::from_slice(data)
            .map_err(|e| TufError::new(ErrorKind::Malformed, format!("not JSON: {e}")))?;
        let obj = as_object(&v, "metadata")?;
        let signed = obj
            .get("signed")
            .filter(|s| s.is_object())
            .ok_or_else(|| malformed("metadata has no \"signed\" object"))?
            .clone();
        let mut signatures = BTreeMap::new();
        for sig in as_array(obj.get("signatures"), "signatures")? {
            let sig = as_object(sig, "signature")?;
            let keyid = req_str(sig, "keyid")?;
            let value = req_str(sig, "sig")?;
            // The spec: a key id MUST be unique in "signatures". Counting a repeated
            // one once would be safe too, but refusing is what python-tuf does.
            if signatures.insert(keyid.clone(), value).is_some() {
                return err(
                    ErrorKind::Malformed,
                    format!("more than one signature for key id {keyid}"),
                );
            }
        }
        let signed_bytes = canonical::encode(&signed)?;
        Ok(Envelope {
            signed,
            signed_bytes,
            signatures,
        })
    }

    /// The `_type` of the signed part.
    pub fn role_type(&self) -> Option<&str> {
        self.signed.get("_type").and_then(Value::as_str)
    }
}

/// Fields every role has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub version: u64,
    pub spec_version: String,
    /// Seconds since the Unix epoch.
    pub expires: i64,
}

impl Common {
    fn parse(obj: &Map<String, Value>, expected_type: &str) -> Result<Common> {
        let t = req_str(obj, "_type")?;
        if t != expected_type {
            return err(
                ErrorKind::WrongType,
                format!("expected _type {expected_type:?}, got {t:?}"),
            );
        }
        let version = req_version(obj, "version")?;
        let spec_version = req_str(obj, "spec_version")?;
        let parts: Vec<&str> = spec_version.split('.').collect();
        let digits = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !(parts.len() == 2 || parts.len() == 3) || !parts.iter().all(digits) {
            return err(
                ErrorKind::Malformed,
                format!("cannot parse spec_version {spec_version:?}"),
            );
        }
        if parts[0] != "1" {
            return err(
                ErrorKind::Malformed,
                format!("unsupported spec_version {spec_version:?}"),
            );
        }
        let expires = parse_time(&req_str(obj, "expires")?)?;
        Ok(Common {
            version,
            spec_version,
            expires,
        })
    }

    /// TUF (and python-tuf): expired when the reference time is at or past `expires`.
    pub fn is_expired(&self, reference_time: i64) -> bool {
        reference_time >= self.expires
    }
}

/// Which keys may sign a role, and how many must.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub keyids: Vec<String>,
    pub threshold: u64,
}

impl Role {
    fn parse(obj: &Map<String, Value>) -> Result<Role> {
        let keyids = as_array(obj.get("keyids"), "keyids")?
            .iter()
            .map(|k| {
                k.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| malformed("keyids must be strings"))
            })
            .collect::<Result<Vec<_>>>()?;
        let threshold = req_u64(obj, "threshold")?;
        if threshold < 1 {
            return err(ErrorKind::Malformed, "threshold must be at least 1");
        }
        Ok(Role { keyids, threshold })
    }
}

#[derive(Debug, Clone)]
pub struct Root {
    pub common: Common,
    pub consistent_snapshot: bool,
    pub keys: HashMap<String, Key>,
    pub roles: HashMap<String, Role>,
}

impl Root {
    pub fn parse(signed: &Value) -> Result<Root> {
        let obj = as_object(signed, "signed")?;
        let common = Common::parse(obj, "root")?;
        let consistent_snapshot = match obj.get("consistent_snapshot") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return err(ErrorKind::Malformed, "consistent_snapshot must be a bool"),
        };
        let keys = parse_keys(obj.get("keys"))?;
        let roles_obj = as_object(
            obj.get("roles")
                .ok_or_else(|| malformed("root has no roles"))?,
            "roles",
        )?;
        let mut roles = HashMap::new();
        for (name, r) in roles_obj {
            roles.insert(name.clone(), Role::parse(as_object(r, "role")?)?);
        }
        if roles.len() != TOP_LEVEL_ROLES.len()
            || !TOP_LEVEL_ROLES.iter().all(|r| roles.contains_key(*r))
        {
            return err(
                ErrorKind::Malformed,
                "root roles must be exactly root, timestamp, snapshot and targets",
            );
        }
        Ok(Root {
            common,
            consistent_snapshot,
            keys,
            roles,
        })
    }
}

/// Length and hashes of a metadata file, as snapshot or timestamp list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaFile {
    pub version: u64,
    pub length: Option<u64>,
    pub hashes: Option<BTreeMap<String, String>>,
}

impl MetaFile {
    fn parse(v: &Value) -> Result<MetaFile> {
        let obj = as_object(v, "meta")?;
        let version = req_version(obj, "version")?;
        let length = match obj.get("length") {
            None => None,
            Some(_) => Some(req_u64(obj, "length")?),
        };
        let hashes = match obj.get("hashes") {
            None => None,
            Some(h) => Some(parse_hashes(h)?),
        };
        Ok(MetaFile {
            version,
            length,
            hashes,
        })
    }

    /// Check `data` against the length and hashes, where given.
    pub fn verify(&self, data: &[u8]) -> Result<()> {
        if let Some(len) = self.length {
            check_length(data.len() as u64, len)?;
        }
        if let Some(h) = &self.hashes {
            let mut hasher = Hasher::new(h)?;
            hasher.update(data);
            hasher.finish_and_check()?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Timestamp {
    pub common: Common,
    pub snapshot_meta: MetaFile,
}

impl Timestamp {
    pub fn parse(signed: &Value) -> Result<Timestamp> {
        let obj = as_object(signed, "signed")?;
        let common = Common::parse(obj, "timestamp")?;
        let meta = as_object(
            obj.get("meta")
                .ok_or_else(|| malformed("timestamp has no meta"))?,
            "meta",
        )?;
        let snapshot_meta = MetaFile::parse(
            meta.get("snapshot.json")
                .ok_or_else(|| malformed("timestamp meta has no snapshot.json"))?,
        )?;
        Ok(Timestamp {
            common,
            snapshot_meta,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub common: Common,
    /// `"<role>.json"` → its version (and optionally length and hashes).
    pub meta: BTreeMap<String, MetaFile>,
}

impl Snapshot {
    pub fn parse(signed: &Value) -> Result<Snapshot> {
        let obj = as_object(signed, "signed")?;
        let common = Common::parse(obj, "snapshot")?;
        let meta_obj = as_object(
            obj.get("meta")
                .ok_or_else(|| malformed("snapshot has no meta"))?,
            "meta",
        )?;
        let mut meta = BTreeMap::new();
        for (name, m) in meta_obj {
            meta.insert(name.clone(), MetaFile::parse(m)?);
        }
        Ok(Snapshot { common, meta })
    }
}

/// One target: what the file must be.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetFile {
    pub path: String,
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    /// The target's `custom` object, if any (release tooling puts model identity here).
    pub custom: Option<Value>,
}

impl TargetFile {
    fn parse(path: &str, v: &Value) -> Result<TargetFile> {
        let obj = as_object(v, "target")?;
        let length = req_u64(obj, "length")?;
        let hashes = parse_hashes(
            obj.get("hashes")
                .ok_or_else(|| malformed(format!("target {path:?} has no hashes")))?,
        )?;
        Ok(TargetFile {
            path: path.to_owned(),
            length,
            hashes,
            custom: obj.get("custom").cloned(),
        })
    }

    /// The hash used in a consistent-snapshot target URL: sha256 if listed,
    /// else sha512, else the first (which will then fail verification).
    pub fn url_hash(&self) -> &str {
        self.hashes
            .get("sha256")
            .or_else(|| self.hashes.get("sha512"))
            .or_else(|| self.hashes.values().next())
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// Which target paths a delegated role is trusted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSpec {
    /// Shell-style patterns matched per `/`-separated segment.
    Patterns(Vec<String>),
    /// Hex prefixes of sha256(target path).
    HashPrefixes(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct DelegatedRole {
    pub name: String,
    pub role: Role,
    pub terminating: bool,
    pub paths: PathSpec,
}

impl DelegatedRole {
    pub fn is_delegated_path(&self, target: &str) -> bool {
        match &self.paths {
            PathSpec::Patterns(ps) => ps.iter().any(|p| super::pattern::path_matches(p, target)),
            PathSpec::HashPrefixes(prefixes) => {
                let h = hex_encode(digest::digest(&digest::SHA256, target.as_bytes()).as_ref());
                prefixes.iter().any(|p| h.starts_with(p.as_str()))
            }
        }
    }
}

/// TAP 15 hash-bin delegation: `2^bit_length` terminating roles named
/// `<prefix>-<hex>`, sharing one set of keys.
#[derive(Debug, Clone)]
pub struct SuccinctRoles {
    pub role: Role,
    pub bit_length: u32,
    pub name_prefix: String,
}

impl SuccinctRoles {
    fn suffix_len(&self) -> usize {
        let bins = 1u64 << self.bit_length;
        format!("{:x}", bins - 1).len()
    }

    pub fn role_for_target(&self, target: &str) -> String {
        let h = digest::digest(&digest::SHA256, target.as_bytes());
        let first =
            u32::from_be_bytes([h.as_ref()[0], h.as_ref()[1], h.as_ref()[2], h.as_ref()[3]]);
        let bin = (first as u64) >> (32 - self.bit_length);
        format!("{}-{:0w$x}", self.name_prefix, bin, w = self.suffix_len())
    }

    pub fn is_delegated_role(&self, name: &str) -> bool {
        let Some(suffix) = name
            .strip_prefix(self.name_prefix.as_str())
            .and_then(|s| s.strip_prefix('-'))
        else {
            return false;
        };
        suffix.len() == self.suffix_len()
            && u64::from_str_radix(suffix, 16).is_ok_and(|n| n < (1u64 << self.bit_length))
    }
}

#[derive(Debug, Clone)]
pub enum DelegatedRoles {
    /// In order of appearance: the order of trust for the search.
    List(Vec<DelegatedRole>),
    Succinct(SuccinctRoles),
}

#[derive(Debug, Clone)]
pub struct Delegations {
    pub keys: HashMap<String, Key>,
    pub roles: DelegatedRoles,
}

impl Delegations {
    fn parse(v: &Value) -> Result<Delegations> {
        let obj = as_object(v, "delegations")?;
        let keys = parse_keys(obj.get("keys"))?;
        let roles = match (obj.get("roles"), obj.get("succinct_roles")) {
            (Some(list), None) => {
                let mut out: Vec<DelegatedRole> = Vec::new();
                for r in as_array(Some(list), "roles")? {
                    let r = as_object(r, "delegated role")?;
                    let name = req_str(r, "name")?;
                    if name.is_empty() || TOP_LEVEL_ROLES.contains(&name.as_str()) {
                        return err(
                            ErrorKind::Malformed,
                            format!("delegated role name {name:?} is empty or top-level"),
                        );
                    }
                    if out.iter().any(|o| o.name == name) {
                        return err(
                            ErrorKind::Malformed,
                            format!("role {name:?} delegated twice"),
                        );
                    }
                    let terminating = match r.get("terminating") {
                        Some(Value::Bool(b)) => *b,
                        _ => return err(ErrorKind::Malformed, "terminating must be a bool"),
                    };
                    let strings = |v: &Value, what: &str| -> Result<Vec<String>> {
                        as_array(Some(v), what)?
                            .iter()
                            .map(|p| {
                                p.as_str()
                                    .map(str::to_owned)
                                    .ok_or_else(|| malformed(format!("{what} must be strings")))
                            })
                            .collect()
                    };
                    let paths = match (r.get("paths"), r.get("path_hash_prefixes")) {
                        (Some(p), None) => PathSpec::Patterns(strings(p, "paths")?),
                        (None, Some(p)) => {
                            PathSpec::HashPrefixes(strings(p, "path_hash_prefixes")?)
                        }
                        _ => {
                            return err(
                                ErrorKind::Malformed,
                                "exactly one of paths and path_hash_prefixes must be set",
                            )
                        }
                    };
                    out.push(DelegatedRole {
                        name,
                        role: Role::parse(r)?,
                        terminating,
                        paths,
                    });
                }
                DelegatedRoles::List(out)
            }
            (None, Some(s)) => {
                let s = as_object(s, "succinct_roles")?;
                let bit_length = req_u64(s, "bit_length")?;
                if !(1..=32).contains(&bit_length) {
                    return err(ErrorKind::Malformed, "bit_length must be between 1 and 32");
                }
                DelegatedRoles::Succinct(SuccinctRoles {
                    role: Role::parse(s)?,
                    bit_length: bit_length as u32,
                    name_prefix: req_str(s, "name_prefix")?,
                })
            }
            _ => {
                return err(
                    ErrorKind::Malformed,
                    "exactly one of roles and succinct_roles must be set",
                )
            }
        };
        Ok(Delegations { keys, roles })
    }

    /// The delegation for role `name`, if this role delegates to it.
    pub fn role(&self, name: &str) -> Option<&Role> {
        match &self.roles {
            DelegatedRoles::List(l) => l.iter().find(|r| r.name == name).map(|r| &r.role),
            DelegatedRoles::Succinct(s) => s.is_delegated_role(name).then_some(&s.role),
        }
    }

    /// (role name, terminating) of every delegation trusted for `target`, in order.
    pub fn roles_for_target(&self, target: &str) -> Vec<(String, bool)> {
        match &self.roles {
            DelegatedRoles::List(l) => l
                .iter()
                .filter(|r| r.is_delegated_path(target))
                .map(|r| (r.name.clone(), r.terminating))
                .collect(),
            // TAP 15: every bin is terminating.
            DelegatedRoles::Succinct(s) => vec![(s.role_for_target(target), true)],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Targets {
    pub common: Common,
    pub targets: BTreeMap<String, TargetFile>,
    pub delegations: Option<Delegations>,
}

impl Targets {
    pub fn parse(signed: &Value) -> Result<Targets> {
        let obj = as_object(signed, "signed")?;
        let common = Common::parse(obj, "targets")?;
        let t = as_object(
            obj.get("targets")
                .ok_or_else(|| malformed("targets has no targets"))?,
            "targets",
        )?;
        let mut targets = BTreeMap::new();
        for (path, info) in t {
            targets.insert(path.clone(), TargetFile::parse(path, info)?);
        }
        let delegations = match obj.get("delegations") {
            None => None,
            Some(d) => Some(Delegations::parse(d)?),
        };
        Ok(Targets {
            common,
            targets,
            delegations,
        })
    }
}

/// Verify that `signatures` over `payload` include at least `role.threshold`
/// valid ones from distinct key ids of `role` found in `keys`. A key id listed
/// twice in the role counts once.
pub fn verify_threshold(
    role_name: &str,
    role: &Role,
    keys: &HashMap<String, Key>,
    payload: &[u8],
    signatures: &BTreeMap<String, String>,
) -> Result<()> {
    let mut seen: Vec<&str> = Vec::with_capacity(role.keyids.len());
    let mut valid = 0u64;
    for keyid in &role.keyids {
        if seen.contains(&keyid.as_str()) {
            continue;
        }
        seen.push(keyid);
        let (Some(key), Some(sig)) = (keys.get(keyid), signatures.get(keyid)) else {
            continue;
        };
        if key.verify(payload, sig) {
            valid += 1;
        }
    }
    if valid < role.threshold {
        return err(
            ErrorKind::Signature,
            format!(
                "{role_name} was signed by {valid}/{} required keys",
                role.threshold
            ),
        );
    }
    Ok(())
}

/// Streaming length-and-hash check for a file with listed hashes.
pub struct Hasher {
    expected: Vec<(String, String, digest::Context)>,
    len: u64,
}

impl Hasher {
    /// Every listed algorithm must be one we support (sha256, sha512): a hash we
    /// cannot check is a check not done.
    pub fn new(hashes: &BTreeMap<String, String>) -> Result<Hasher> {
        let mut expected = Vec::with_capacity(hashes.len());
        for (algo, value) in hashes {
            let alg = match algo.as_str() {
                "sha256" => &digest::SHA256,
                "sha512" => &digest::SHA512,
                _ => {
                    return err(
                        ErrorKind::LengthOrHash,
                        format!("unsupported hash algorithm {algo:?}"),
                    )
                }
            };
            expected.push((algo.clone(), value.clone(), digest::Context::new(alg)));
        }
        Ok(Hasher { expected, len: 0 })
    }

    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        for (_, _, ctx) in &mut self.expected {
            ctx.update(data);
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish_and_check(self) -> Result<()> {
        for (algo, want, ctx) in self.expected {
            let got = hex_encode(ctx.finish().as_ref());
            if got != want {
                return err(
                    ErrorKind::LengthOrHash,
                    format!("{algo} is {got}, expected {want}"),
                );
            }
        }
        Ok(())
    }
}

pub fn check_length(got: u64, want: u64) -> Result<()> {
    if got != want {
        return err(
            ErrorKind::LengthOrHash,
            format!("length is {got}, expected {want}"),
        );
    }
    Ok(())
}

/// Refuse target paths that could name something outside a target directory or
/// mean different files to different consumers: absolute, empty or `.`/`..`
/// segments, backslashes, NUL and other control characters.
pub fn check_target_path(path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.chars().any(|c| c == '\\' || c.is_control())
        || path
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        return err(
            ErrorKind::UnsafePath,
            format!("unsafe target path {path:?}"),
        );
    }
    Ok(())
}

/// Parse `YYYY-MM-DDTHH:MM:SSZ` to seconds since the Unix epoch.
pub fn parse_time(s: &str) -> Result<i64> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = &s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let fields = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    );
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = fields else {
        return err(ErrorKind::Malformed, format!("bad expires {s:?}"));
    };
    let dim = [
        31,
        28 + i64::from(is_leap(y)),
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !shape_ok
        || !(1..=12).contains(&mo)
        || d < 1
        || d > dim[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 59
    {
        return err(ErrorKind::Malformed, format!("bad expires {s:?}"));
    }
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// === JSON helpers ===

fn malformed(msg: impl Into<String>) -> TufError {
    TufError::new(ErrorKind::Malformed, msg)
}

fn as_object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| malformed(format!("{what} is not an object")))
}

fn as_array<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a Vec<Value>> {
    v.and_then(Value::as_array)
        .ok_or_else(|| malformed(format!("{what} is not an array")))
}

fn req_str(obj: &Map<String, Value>, key: &str) -> Result<String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => err(
            ErrorKind::Malformed,
            format!("{key:?} is missing or not a string"),
        ),
    }
}

fn req_u64(obj: &Map<String, Value>, key: &str) -> Result<u64> {
    obj.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| malformed(format!("{key:?} is missing or not a non-negative integer")))
}

fn req_version(obj: &Map<String, Value>, key: &str) -> Result<u64> {
    let v = req_u64(obj, key)?;
    if v < 1 {
        return err(ErrorKind::Malformed, format!("{key} must be > 0"));
    }
    Ok(v)
}

fn parse_keys(v: Option<&Value>) -> Result<HashMap<String, Key>> {
    let obj = as_object(v.ok_or_else(|| malformed("no keys"))?, "keys")?;
    obj.iter()
        .map(|(id, k)| Ok((id.clone(), Key::from_json(k)?)))
        .collect()
}

fn parse_hashes(v: &Value) -> Result<BTreeMap<String, String>> {
    let obj = as_object(v, "hashes")?;
    if obj.is_empty() {
        return err(ErrorKind::Malformed, "hashes must not be empty");
    }
    obj.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => err(ErrorKind::Malformed, "hash values must be strings"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_strictly() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_time("2000-03-01T00:00:00Z").unwrap(), 951_868_800);
        assert_eq!(parse_time("2038-01-19T03:14:08Z").unwrap(), 1 << 31);
        assert_eq!(parse_time("2024-02-29T12:00:00Z").unwrap(), 1_709_208_000);
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+00:00",
            "2024-1-01T00:00:00Z",
            "+024-01-01T00:00:00Z",
            "",
        ] {
            assert_eq!(
                parse_time(bad).unwrap_err().kind,
                ErrorKind::Malformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn unsafe_target_paths_are_refused() {
        for ok in [
            "a",
            "models/churn/3/model.onnx",
            "nonexistent artifact",
            "a..b/c.",
        ] {
            check_target_path(ok).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\..\\b",
            "a\0b",
            "..",
        ] {
            assert_eq!(
                check_target_path(bad).unwrap_err().kind,
                ErrorKind::UnsafePath,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn signatures_must_have_unique_key_ids() {
        let doc = br#"{"signed": {"_type": "x"}, "signatures": [
            {"keyid": "a", "sig": "00"}, {"keyid": "a", "sig": "00"}]}"#;
        assert_eq!(Envelope::parse(doc).unwrap_err().kind, ErrorKind::Malformed);
    }

    #[test]
    fn hashes_and_lengths_are_checked() {
        let data = b"target file contents";
        let sha256 = hex_encode(digest::digest(&digest::SHA256, data).as_ref());
        let sha512 = hex_encode(digest::digest(&digest::SHA512, data).as_ref());
        let meta = |len: Option<u64>, h: &[(&str, &str)]| MetaFile {
            version: 1,
            length: len,
            hashes: (!h.is_empty()).then(|| {
                h.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect()
            }),
        };
        meta(Some(20), &[("sha256", &sha256), ("sha512", &sha512)])
            .verify(data)
            .unwrap();
        meta(None, &[]).verify(data).unwrap();
        let e = meta(Some(19), &[]).verify(data).unwrap_err();
        assert_eq!(e.kind, ErrorKind::LengthOrHash);
        let e = meta(None, &[("sha256", &sha512)]).verify(data).unwrap_err();
        assert_eq!(e.kind, ErrorKind::LengthOrHash);
        // One good hash does not excuse a bad one, nor an unknown algorithm.
        let e = meta(None, &[("sha256", &sha256), ("sha512", &sha256)])
            .verify(data)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::LengthOrHash);
        let e = meta(None, &[("sha256", &sha256), ("blake3", "00")])
            .verify(data)
            .unwrap_err();
        assert!(e.message.contains("unsupported"), "{e}");
    }

    #[test]
    fn succinct_roles_name_bins_like_python_tuf() {
        let s = SuccinctRoles {
            role: Role {
                keyids: vec![],
                threshold: 1,
            },
            bit_length: 8,
            name_prefix: "bin".into(),
        };
        // python-tuf: SuccinctRoles([], 1, 8, "bin").get_role_for_target("a") -> "bin-ca"
        // (sha256("a") = ca978112...).
        assert_eq!(s.role_for_target("a"), "bin-ca");
        assert!(s.is_delegated_role("bin-00") && s.is_delegated_role("bin-ff"));
        assert!(!s.is_delegated_role("bin-100") && !s.is_delegated_role("bin-0"));
        assert!(!s.is_delegated_role("other-00") && !s.is_delegated_role("bin-zz"));
        let s = SuccinctRoles {
            bit_length: 10,
            ..s
        };
        assert_eq!(s.role_for_target("a").len(), "bin-".len() + 3);
    }

    #[test]
    fn hash_prefix_delegation_matches_sha256_of_path() {
        let r = DelegatedRole {
            name: "bins".into(),
            role: Role {
                keyids: vec![],
                threshold: 1,
            },
            terminating: false,
            paths: PathSpec::HashPrefixes(vec!["ca9".into()]),
        };
        assert!(r.is_delegated_path("a"));
        assert!(!r.is_delegated_path("b"));
    }
}
