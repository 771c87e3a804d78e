//! What the release tests share: running `edgeinfer` from the test build, logging what it
//! printed, and asserting that it succeeded, or failed with exit status 1.

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
