//! Who takes the candidate: devices by `hash(salt, device_id) mod 10000 < percent × 100`,
//! and inside a device, requests by the same hash of their routing key.
//!
//! The hash is SipHash-1-3 with the fixed 16-byte key [`BUCKET_KEY`], over
//! `le64(len(salt)) ‖ salt ‖ id`. Why SipHash and not the FNV-1a the model table used for
//! routing keys: FNV-1a ends in one multiply, so `h mod 16` (and 16 divides 10000) depends
//! only on the low four bits of the last byte: device serials `box-0001`, `box-0002`, …
//! would land in structured buckets and a 1 % canary would not be a random 1 %. SipHash
//! mixes every input bit into every output bit. The key is public on purpose: anyone (the
//! operator's tooling, a Python notebook) must be able to compute which devices are in a
//! canary; the salt, not the key, makes each rollout draw a fresh set. The length prefix
//! keeps `("ab", "c")` and `("a", "bc")` apart. Vectors: `docs/rollout.md`, checked by a test.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// The SipHash-1-3 key, `"edgeinfer:bucket"` in ASCII (k0, k1 read little-endian).
pub const BUCKET_KEY: [u8; 16] = *b"edgeinfer:bucket";

/// Buckets per rollout: a percent has two decimals (0.01 % = one bucket).
pub const BUCKETS: u32 = 10_000;

/// The 64-bit bucketing hash of `id` under `salt`.
pub fn hash(salt: &[u8], id: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_key(&BUCKET_KEY);
    h.write(&(salt.len() as u64).to_le_bytes());
    h.write(salt);
    h.write(id);
    h.finish()
}

/// `id`'s bucket, `0 .. 10000`.
pub fn bucket(salt: &[u8], id: &[u8]) -> u32 {
    (hash(salt, id) % BUCKETS as u64) as u32
}

/// A point in `0 .. total` for a weighted walk over arms (`total` = 10000 gives the bucket).
pub fn point(salt: &[u8], id: &[u8], total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    hash(salt, id) % total
}

/// A uniformly random point in `0 .. total`, for requests with no routing key: a
/// thread-local generator, no lock and no allocation.
pub fn random_point(total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    fastrand::u64(0..total)
}

/// Whether `device_id` is in a canary of `percent_bp` basis points (hundredths of a
/// percent) drawn with `salt`. Monotone in the percent: raising it only adds devices.
pub fn in_canary(salt: &str, device_id: &str, percent_bp: u32) -> bool {
    bucket(salt.as_bytes(), device_id.as_bytes()) < percent_bp
}

/// One side of an A/B split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arm {
    Stable,
    Candidate,
}

impl Arm {
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Stable => "stable",
            Arm::Candidate => "candidate",
        }
    }

    /// The arm of a request inside a device whose split sends `candidate_bp` basis points of
    /// traffic to the candidate: sticky by `routing_key` (the same rule as devices), random
    /// when the request has none.
    pub fn for_key(salt: &str, routing_key: &[u8], candidate_bp: u32) -> Arm {
        let p = if routing_key.is_empty() {
            random_point(BUCKETS as u64)
        } else {
            point(salt.as_bytes(), routing_key, BUCKETS as u64)
        };
        if p < candidate_bp as u64 {
            Arm::Candidate
        } else {
            Arm::Stable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_writes_equal_one_concatenated_message() {
        // The documented definition is over the concatenation; the code writes in pieces.
        let mut msg = 4u64.to_le_bytes().to_vec();
        msg.extend_from_slice(b"saltbox-1");
        assert_eq!(
            hash(b"salt", b"box-1"),
            SipHasher13::new_with_key(&BUCKET_KEY).hash(&msg)
        );
    }

    #[test]
    fn length_prefix_separates_salt_from_id() {
        assert_ne!(hash(b"ab", b"c"), hash(b"a", b"bc"));
    }

    #[test]
    fn raising_the_percent_only_adds_devices() {
        for i in 0..2000 {
            let id = format!("box-{i}");
            if in_canary("s", &id, 100) {
                assert!(
                    in_canary("s", &id, 1000),
                    "{id} left the canary when it grew"
                );
            }
        }
    }

    #[test]
    fn zero_and_full_percent_are_exact() {
        for i in 0..500 {
            let id = format!("box-{i}");
            assert!(!in_canary("s", &id, 0));
            assert!(in_canary("s", &id, BUCKETS));
        }
    }
}
