//! Bucketing against the vectors published in docs/rollout.md, in this process and in a
//! fresh one (a hash seeded per process would pass the first and fail the second).

use std::path::Path;
use std::process::Command;

use edgeinfer_rollout::bucket::{bucket, hash, in_canary};

struct Vector {
    salt: String,
    id: String,
    hash: u64,
    bucket: u32,
}

/// The rows between the `vectors` markers of docs/rollout.md.
fn documented() -> Vec<Vector> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/rollout.md");
    let doc = std::fs::read_to_string(&path).expect("docs/rollout.md is readable");
    let start = doc.find("<!-- vectors:").expect("the vectors start marker");
    let end = doc
        .find("<!-- end vectors -->")
        .expect("the vectors end marker");
    let rows: Vec<Vector> = doc[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 4, "row {l:?}");
            let unquote = |s: &str| s.trim_matches('`').to_owned();
            Vector {
                salt: unquote(cells[0]),
                id: unquote(cells[1]),
                hash: u64::from_str_radix(&unquote(cells[2]), 16).expect("hex hash"),
                bucket: cells[3].parse().expect("bucket number"),
            }
        })
        .collect();
    assert!(rows.len() >= 10, "only {} vectors found", rows.len());
    rows
}

#[test]
fn matches_the_documented_vectors() {
    for v in documented() {
        assert_eq!(
            hash(v.salt.as_bytes(), v.id.as_bytes()),
            v.hash,
            "hash({:?}, {:?})",
            v.salt,
            v.id
        );
        assert_eq!(bucket(v.salt.as_bytes(), v.id.as_bytes()), v.bucket);
        assert!(in_canary(&v.salt, &v.id, v.bucket + 1));
        assert!(!in_canary(&v.salt, &v.id, v.bucket));
    }
}

/// Prints every documented vector's bucket as this process computes it; the next test runs
/// it in a child process and compares.
#[test]
fn prints_buckets_for_the_child_process_check() {
    for v in documented() {
        println!(
            "<bucket id={:?} value={}>",
            v.id,
            bucket(v.salt.as_bytes(), v.id.as_bytes())
        );
    }
}

#[test]
fn buckets_are_the_same_in_a_fresh_process() {
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "prints_buckets_for_the_child_process_check",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("running the test binary again");
    assert!(out.status.success(), "child failed: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got: Vec<(String, u32)> = stdout
        .lines()
        .flat_map(|l| l.split("<bucket id=").skip(1))
        .map(|l| {
            let (id, rest) = l.split_once(" value=").expect("id and value");
            let value = rest.split_once('>').expect("closing bracket").0;
            (
                id.trim_matches('"').to_owned(),
                value.parse().expect("bucket"),
            )
        })
        .collect();
    let want: Vec<(String, u32)> = documented().into_iter().map(|v| (v.id, v.bucket)).collect();
    assert_eq!(got, want);
}

#[test]
fn canary_share_over_a_fleet_is_close_to_the_percent() {
    // 10 000 sequential serials: the case FNV-1a's structured low bits would skew.
    let n = 10_000;
    for (bp, salt) in [(100u32, "a"), (1000, "b"), (5000, "c")] {
        let inside = (0..n)
            .filter(|i| in_canary(salt, &format!("box-{i:05}"), bp))
            .count() as f64;
        let p = bp as f64 / 10_000.0;
        let expected = p * n as f64;
        // Five standard deviations of a binomial: fails only if the hash is biased.
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (inside - expected).abs() < 5.0 * sd,
            "{bp} bp: {inside} devices in, expected {expected} ± {sd}"
        );
    }
}
