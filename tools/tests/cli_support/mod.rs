//! What the release tests share: running `edgeinfer` from the test build, logging what it
//! printed, and asserting that it succeeded, or failed with exit status 1.
// Each test binary uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const EXE: &str = env!("CARGO_BIN_EXE_edgeinfer");

pub fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn edgeinfer(args: &[&str]) -> Output {
    let out = Command::new(EXE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "$ edgeinfer {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `edgeinfer`, asserts success, returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = edgeinfer(args);
    assert!(out.status.success(), "edgeinfer {} failed", args.join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `edgeinfer`, asserts exit status 1, returns stdout and stderr together.
pub fn fails(args: &[&str]) -> String {
    let out = edgeinfer(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "edgeinfer {} must fail",
        args.join(" ")
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The logreg fixture's golden rows as reference data for `release create`, with a header
/// of 20 names (`f0` … `f19`).
pub fn logreg_reference_csv(path: &Path) {
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(checkout().join("tests/fixtures/golden/logreg.json")).unwrap(),
    )
    .unwrap();
    let data: Vec<String> = g["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let mut csv = (0..20)
        .map(|i| format!("f{i}"))
        .collect::<Vec<_>>()
        .join(",");
    csv.push('\n');
    for row in data.chunks(20) {
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    std::fs::write(path, csv).unwrap();
}
