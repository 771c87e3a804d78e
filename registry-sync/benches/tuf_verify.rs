//! TUF verification cost: hashing a target per MB (sha256, sha512, both) against a
//! memcpy of the same bytes measured in the same run, and one signature check
//! per key type (a refresh checks one per top-level role and key).
//!
//! `cargo bench -p edgeinfer-registry --bench tuf_verify` (prints a table).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use edgeinfer_registry::tuf::keys::{hex_encode, Key};
use edgeinfer_registry::tuf::metadata::Hasher;
use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

const MB: usize = 1 << 20;

fn best_of<F: FnMut()>(runs: usize, mut f: F) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn hashes(data: &[u8], algos: &[&str]) -> BTreeMap<String, String> {
    algos
        .iter()
        .map(|a| {
            let alg = if *a == "sha256" {
                &digest::SHA256
            } else {
                &digest::SHA512
            };
            (
                a.to_string(),
                hex_encode(digest::digest(alg, data).as_ref()),
            )
        })
        .collect()
}

fn main() {
    let size = 64 * MB;
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2654435761) as u8)
        .collect();
    let mut copy = vec![0u8; size];
    let memcpy = best_of(5, || {
        copy.copy_from_slice(black_box(&data));
        black_box(&copy);
    });
    println!(
        "target size: {} MiB; memcpy baseline {:.3} ms/MiB",
        size / MB,
        memcpy * 1e3 / 64.0
    );
    for algos in [&["sha256"][..], &["sha512"], &["sha256", "sha512"]] {
        let want = hashes(&data, algos);
        let t = best_of(3, || {
            let mut h = Hasher::new(&want).unwrap();
            for chunk in data.chunks(64 * 1024) {
                h.update(chunk);
            }
            h.finish_and_check().unwrap();
        });
        println!(
            "hash+length {:<14} {:>7.3} ms/MiB  {:>6.0} MiB/s  {:>5.1}x memcpy",
            algos.join("+"),
            t * 1e3 / 64.0,
            64.0 / t,
            t / memcpy
        );
    }

    // Signatures over a 2 KiB payload (a typical canonical timestamp/snapshot is smaller).
    let msg = vec![b'x'; 2048];
    let rng = SystemRandom::new();
    let ed = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let ed_key = Key::from_json(
        &serde_json::json!({"keytype": "ed25519", "scheme": "ed25519",
        "keyval": {"public": hex_encode(ed.public_key().as_ref())}}),
    )
    .unwrap();
    let ed_sig = hex_encode(ed.sign(&msg).as_ref());
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let ec =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let ec_key = Key::from_json(
        &serde_json::json!({"keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256",
        "keyval": {"public": p256_pem(ec.public_key().as_ref())}}),
    )
    .unwrap();
    let ec_sig = hex_encode(ec.sign(&rng, &msg).unwrap().as_ref());
    let n = 200;
    for (name, key, sig) in [
        ("ed25519", &ed_key, &ed_sig),
        ("ecdsa-p256", &ec_key, &ec_sig),
    ] {
        assert!(key.verify(&msg, sig));
        let t = best_of(3, || {
            for _ in 0..n {
                assert!(key.verify(black_box(&msg), sig));
            }
        });
        println!("verify {name:<11} {:>8.1} us/signature", t * 1e6 / n as f64);
    }
}

/// A PEM SubjectPublicKeyInfo for an uncompressed P-256 point.
fn p256_pem(point: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    der.extend_from_slice(point);
    let mut b64 = String::new();
    for c in der.chunks(3) {
        let n = ((c[0] as u32) << 16)
            | ((*c.get(1).unwrap_or(&0) as u32) << 8)
            | (*c.get(2).unwrap_or(&0) as u32);
        for i in 0..4 {
            b64.push(if i <= c.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}
