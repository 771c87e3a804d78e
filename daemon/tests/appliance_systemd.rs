//! The units in systemd/ checked by systemd's own tools: `systemd-analyze verify` is clean
//! (against the binary this build made), `systemd-analyze security --offline=true` rates the
//! service's exposure at 2.0 or below, and `systemd-sysusers` / `systemd-tmpfiles` apply our
//! files to a scratch root. These tools are part of the test environment: missing is a failure.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 3] = [
    "edgeinferd.service",
    "edgeinferd.socket",
    "edgeinferd-http.socket",
];
const INSTALLED_BIN: &str = "/usr/local/bin/edgeinferd";

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

/// The units as installed, except that ExecStart= runs the binary this build made: verify
/// checks that the executable exists.
fn units_in(dir: &Path) -> Vec<PathBuf> {
    UNITS
        .iter()
        .map(|u| {
            let text = std::fs::read_to_string(systemd_dir().join(u)).unwrap();
            let text = text.replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_edgeinferd"));
            let p = dir.join(u);
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect()
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (systemd's tools are required for this test)"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_service_runs_the_installed_binary_path() {
    let text = std::fs::read_to_string(systemd_dir().join("edgeinferd.service")).unwrap();
    assert!(
        text.contains(&format!("ExecStart={INSTALLED_BIN} ")),
        "the test rewrites this path; keep them in step"
    );
}

#[test]
fn systemd_analyze_verify_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let units = units_in(dir.path());
    let (ok, out, err) = run(Command::new("systemd-analyze").arg("verify").args(&units));
    assert!(ok, "systemd-analyze verify failed:\n{out}\n{err}");
    // Warnings (unknown keys, bad values) are printed without failing: none allowed.
    assert!(
        out.trim().is_empty() && err.trim().is_empty(),
        "systemd-analyze verify is not clean:\n{out}\n{err}"
    );
}

#[test]
fn systemd_analyze_security_exposure_is_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let units = units_in(dir.path());
    let (_, out, err) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&units[0]));
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level for edgeinferd.service:"))
        .unwrap_or_else(|| panic!("no overall exposure line:\n{out}\n{err}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("{}", line.trim());
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{out}");
}

#[test]
fn sysusers_and_tmpfiles_apply_to_a_scratch_root() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let (ok, out, err) = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(systemd_dir().join("sysusers.d/edgeinfer.conf")));
    assert!(ok, "systemd-sysusers: {out}{err}");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("edgeinfer:"))
        .expect("user edgeinfer");
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    assert!(
        user.ends_with(":/var/lib/edgeinfer:/usr/sbin/nologin"),
        "{user}"
    );
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(
        group.lines().any(|l| l.starts_with("edgeinfer-clients:")),
        "{group}"
    );

    let (ok, out, err) = run(Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(systemd_dir().join("tmpfiles.d/edgeinfer.conf")));
    assert!(ok && err.trim().is_empty(), "systemd-tmpfiles: {out}{err}");
    for (path, mode, owned_by_daemon) in [
        ("etc/edgeinfer", 0o750, false),
        ("var/lib/edgeinfer", 0o750, true),
        ("var/lib/edgeinfer/models", 0o750, true),
        ("run/edgeinfer", 0o755, true),
    ] {
        let m = std::fs::metadata(root.path().join(path)).unwrap();
        assert_eq!(m.mode() & 0o777, mode, "{path}");
        assert_eq!(m.uid() == uid, owned_by_daemon, "{path} owner {}", m.uid());
    }
}
