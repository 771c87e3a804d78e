//! What bucketing costs per key: SipHash-1-3 (`bucket::point`) against FNV-1a over the same
//! keys in the same run (the hash the model table used before), and the whole in-device
//! routing decision (`Arm::for_key`). Prints ns per key and the ratio; no timing is asserted.
//!
//! `cargo bench -p edgeinfer-rollout --bench bucket`

use std::hint::black_box;
use std::time::Instant;

use edgeinfer_rollout::bucket::{point, Arm};

fn fnv1a(salt: &[u8], key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in salt.iter().chain(key) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Best of 5 passes over `keys`, ns per key.
fn time(keys: &[Vec<u8>], f: impl Fn(&[u8]) -> u64) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let mut acc = 0u64;
            for k in keys {
                acc = acc.wrapping_add(f(black_box(k)));
            }
            black_box(acc);
            t.elapsed().as_nanos() as f64 / keys.len() as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let keys: Vec<Vec<u8>> = (0..1_000_000)
        .map(|i| format!("customer-{i:08}").into_bytes())
        .collect();
    let salt = b"churn-4-2026-12";
    let fnv = time(&keys, |k| fnv1a(salt, k) % 10_000);
    let sip = time(&keys, |k| point(salt, k, 10_000));
    let arm = time(&keys, |k| Arm::for_key("churn-4-2026-12", k, 2500) as u64);
    println!("keys: 1000000 x 17 bytes, salt 15 bytes, best of 5");
    println!("fnv1a mod 10000      {fnv:7.2} ns/key (baseline)");
    println!("siphash13 bucket     {sip:7.2} ns/key ({:.2}x)", sip / fnv);
    println!("Arm::for_key (split) {arm:7.2} ns/key ({:.2}x)", arm / fnv);
}
