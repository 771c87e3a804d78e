//! Tidy checks over the whole workspace: house rules a compiler does not enforce.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tools/ has a parent")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name == "target" || name.starts_with('.') {
                continue;
            }
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = Vec::new();
    for krate in [
        "proto",
        "client",
        "engine",
        "daemon",
        "registry-sync",
        "tools",
        "fuzz",
    ] {
        rust_files(&root.join(krate), &mut files);
    }
    assert!(
        files.len() > 10,
        "found only {} Rust files under {}",
        files.len(),
        root.display()
    );
    files
}

/// Every module opens with a `//!` line saying what it owns (STYLE.md, rule 2).
#[test]
fn every_module_has_a_doc_line() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            !text
                .lines()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.starts_with("//!"))
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a leading `//!` line:\n{}",
        missing.join("\n")
    );
}

/// No test is switched off or passes by panicking (brief: honest tests).
#[test]
fn no_ignored_or_should_panic_tests() {
    let needle_ignore = ["#[", "ignore"].concat();
    let needle_panic = ["#[", "should_panic"].concat();
    let bad: Vec<String> = sources()
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            text.contains(&needle_ignore) || text.contains(&needle_panic)
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        bad.is_empty(),
        "ignored or should_panic tests in:\n{}",
        bad.join("\n")
    );
}
