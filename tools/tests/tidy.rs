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

/// Every crate's Rust files: each top-level directory with a Cargo.toml (new crates are
/// covered the day they land), plus `fuzz/`, which the workspace excludes.
fn sources() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    let mut files = Vec::new();
    for krate in crates {
        rust_files(&krate, &mut files);
    }
    assert!(
        files.len() > 10,
        "found only {} Rust files under {}",
        files.len(),
        root.display()
    );
    files
}

/// This file names the patterns it looks for; it is not itself checked for them.
fn checked_for_skips() -> Vec<PathBuf> {
    sources()
        .into_iter()
        .filter(|p| !p.ends_with("tools/tests/tidy.rs"))
        .collect()
}

/// Words in an `if` that make an early `return` in a test a skip: "the dependency is
/// not here, so pass". A missing dependency must fail the test instead.
const SKIP_CONDITIONS: &[&str] = &[
    "available",
    "exists",
    "is_none",
    "var(",
    "var_os(",
    "which",
    "present",
    "installed",
    "nvml",
    "gpu",
];

/// The lines of `text` that skip or switch off a test: `#[ignore]`, `#[should_panic]`,
/// `cfg_attr(..., ignore)`, a "skipping" message, or an early `return` in a `#[test]`
/// function right after an `if` on whether something is available.
fn skip_findings(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut test_depth: Option<i64> = None;
    let mut depth: i64 = 0;
    let mut pending_test = false;
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("").trim();
        let lower = code.to_lowercase();
        let no_space: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let ignored = no_space.contains("#[ignore") || no_space.contains("#[should_panic");
        let cfg_ignored = no_space.contains("cfg_attr(") && no_space.contains(",ignore");
        let says_skip =
            (lower.contains("println!") || lower.contains("eprintln!")) && lower.contains("skip");
        if ignored || cfg_ignored || says_skip {
            found.push(format!("{}: {}", i + 1, line.trim()));
        }
        if no_space.starts_with("#[test]") || no_space.contains("#[tokio::test") {
            pending_test = true;
        }
        let opens = code.matches('{').count() as i64;
        let closes = code.matches('}').count() as i64;
        if pending_test && code.contains("fn ") && opens > 0 {
            pending_test = false;
            test_depth = Some(depth);
        }
        if test_depth.is_some()
            && (no_space.starts_with("return;") || no_space.starts_with("returnOk(());"))
        {
            let window = lines[i.saturating_sub(3)..i]
                .iter()
                .map(|l| l.to_lowercase())
                .collect::<Vec<_>>()
                .join(" ");
            if window.contains("if ") && SKIP_CONDITIONS.iter().any(|w| window.contains(w)) {
                found.push(format!(
                    "{}: early return in a test: {}",
                    i + 1,
                    line.trim()
                ));
            }
        }
        depth += opens - closes;
        if test_depth.is_some_and(|d| depth <= d) {
            test_depth = None;
        }
    }
    found
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

/// No test is switched off, passes by panicking, or passes by skipping (brief: honest tests).
#[test]
fn no_ignored_skipped_or_should_panic_tests() {
    let bad: Vec<String> = checked_for_skips()
        .into_iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            skip_findings(&text)
                .into_iter()
                .map(move |f| format!("{}:{f}", p.display()))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "ignored, skipping or should_panic tests:\n{}",
        bad.join("\n")
    );
}

/// The detector itself: each way of skipping is caught, and ordinary early returns
/// (a server thread whose peer hung up, a helper) are not.
#[test]
fn the_skip_detector_catches_each_form() {
    let caught = [
        "#[test]\n#[ignore]\nfn a() {}\n",
        "#[test]\n#[ignore = \"slow\"]\nfn a() {}\n",
        "#[test]\n#[should_panic]\nfn a() {}\n",
        "#[test]\n#[cfg_attr(not(feature = \"gpu\"), ignore)]\nfn a() {}\n",
        "#[cfg_attr(miri, ignore)]\n#[test]\nfn a() {}\n",
        "#[test]\nfn a() {\n    if !ort_available() {\n        return;\n    }\n}\n",
        "#[test]\nfn a() {\n    if std::env::var_os(\"X\").is_none() {\n        eprintln!(\"no X\");\n        return;\n    }\n}\n",
        "#[test]\nfn a() -> Result<()> {\n    if !Path::new(\"/dev/nvidia0\").exists() {\n        return Ok(());\n    }\n    Ok(())\n}\n",
        "fn helper() {\n    eprintln!(\"skipping: no broker\");\n}\n",
        "#[test]\nfn a() {\n    println!(\"SKIP\");\n}\n",
    ];
    for text in caught {
        assert!(!skip_findings(text).is_empty(), "not caught:\n{text}");
    }
    let fine = [
        "#[test]\nfn a() {\n    std::thread::spawn(move || loop {\n        if s.read_exact(&mut b).is_err() {\n            return;\n        }\n    });\n}\n",
        "fn walk(dir: &Path) {\n    if !dir.exists() {\n        return;\n    }\n}\n",
        "#[test]\nfn a() {\n    assert!(x.exists());\n}\nfn b() {\n    if !available() {\n        return;\n    }\n}\n",
        "// #[ignore] in a comment is fine\nfn a() {}\n",
    ];
    for text in fine {
        assert_eq!(
            skip_findings(text),
            Vec::<String>::new(),
            "flagged:\n{text}"
        );
    }
}
