//! kill -9 during install: a child process (this test binary, re-run as
//! `child_installs_versions_in_a_loop` with EDGEINFER_INSTALL_CHILD set) commits version
//! after version of churn into an install area; the parent kills it with SIGKILL at a
//! random moment, at least 20 times (EDGEINFER_KILL_POINTS, 100 in
//! benches/install_soak.sh). After every kill the install state must read, the active
//! version's files must match it byte for byte (model, and a bundle naming that very
//! version), and a daemon started on the area must serve exactly that version: the old or
//! the new one, never a mix.

mod registry_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use edgeinfer_registry::install::{InstallStore, BUNDLE_FILE, MODEL_FILE};
use edgeinfer_registry::release::bundle::Bundle;
use registry_support::*;

const CHILD: &str = "EDGEINFER_INSTALL_CHILD";

/// Installs versions `next..next+rounds` of churn into the install area at `dir`, as the
/// agent does: stage both files, then commit.
fn install_loop(dir: &Path, rounds: u64) -> u64 {
    let store = InstallStore::open(dir, 2).unwrap();
    let model = churn_model();
    let start = store
        .load_state("churn")
        .ok()
        .and_then(|s| s.verified.first().map(|v| v.release_counter))
        .unwrap_or(0)
        + 1;
    println!("ready");
    let mut last = 0;
    for c in start..start.saturating_add(rounds) {
        let v = c.to_string();
        let staging = store.staging_dir("churn", &v).unwrap();
        std::fs::write(staging.join(MODEL_FILE), &model).unwrap();
        std::fs::write(staging.join(BUNDLE_FILE), bundle_bytes("churn", &v, &model)).unwrap();
        store.commit("churn", &v, c, &staging).unwrap();
        last = c;
    }
    last
}

#[test]
fn child_installs_versions_in_a_loop() {
    // Run by the parent below as the process it kills; run alone, three rounds in a temp dir.
    let tmp = tempfile::tempdir().unwrap();
    let (dir, rounds) = match std::env::var_os(CHILD) {
        Some(d) => (PathBuf::from(d), u64::MAX),
        None => (tmp.path().to_owned(), 3),
    };
    let last = install_loop(&dir, rounds);
    let st = InstallStore::open(&dir, 2)
        .unwrap()
        .load_state("churn")
        .unwrap();
    assert_eq!(st.active, Some(last.to_string()));
    assert_eq!(st.verified.len(), 2);
}

/// A random delay in `0..max_ms` (the clock's nanoseconds, mixed).
fn jitter(max_ms: u64, i: u64) -> Duration {
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut z = n ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 27;
    Duration::from_micros(z % (max_ms * 1000))
}

/// The active version per the state, checked against the files: `None` before any commit.
fn check_area(dir: &Path) -> Option<String> {
    let store = InstallStore::open(dir, 2).unwrap();
    let st = store
        .load_state("churn")
        .expect("the install state reads after a kill");
    let active = st.active()?.clone();
    let vdir = store
        .verify_installed("churn", &active)
        .expect("the active version's files match the state");
    assert_eq!(std::fs::read(vdir.join(MODEL_FILE)).unwrap(), churn_model());
    let b = Bundle::from_slice(&std::fs::read(vdir.join(BUNDLE_FILE)).unwrap()).unwrap();
    assert_eq!(b.version, active.version, "bundle and directory agree");
    let mut names: Vec<String> = std::fs::read_dir(&vdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [BUNDLE_FILE, MODEL_FILE],
        "nothing half-written in {vdir:?}"
    );
    Some(active.version)
}

#[test]
fn kill_9_during_install_leaves_the_old_or_the_new_version() {
    let points: u64 = std::env::var("EDGEINFER_KILL_POINTS")
        .ok()
        .map(|v| v.parse().expect("EDGEINFER_KILL_POINTS is a number"))
        .unwrap_or(20);
    assert!(points >= 20);
    let env = Env::new();
    let area = env.state_dir();
    // The daemon started after each kill follows a repository that has nothing newer.
    let empty_repo = env.dir.path().join("empty-repo");
    std::fs::create_dir_all(&empty_repo).unwrap();
    let cfg = env.config(empty_repo.to_str().unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut before = check_area(&area);
    let (mut advanced, mut same) = (0, 0);
    for i in 0..points {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_installs_versions_in_a_loop",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &area)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("ready") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
        }
        std::thread::sleep(jitter(60, i));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let after = check_area(&area);
        let key = |v: &Option<String>| v.as_deref().map(|s| s.parse::<u64>().unwrap()).unwrap_or(0);
        assert!(
            key(&after) >= key(&before),
            "went back from {before:?} to {after:?}"
        );
        if after == before {
            same += 1;
        } else {
            advanced += 1;
        }
        // A daemon restarted on the area serves exactly the state's version.
        let d = Daemon::start(&cfg, clock());
        match &after {
            Some(v) => {
                assert_eq!(d.restored, [format!("churn@{v}")]);
                d.assert_serving(v);
            }
            None => d.assert_serving("demo"),
        }
        drop(d);
        before = after;
    }
    println!("kill points: {points}, state advanced at {advanced}, unchanged at {same}");
    assert!(
        advanced > 0,
        "no kill landed after a commit: the test did not install"
    );
}

/// The same end to end with the real daemon binary: it starts on the area, pulls the
/// newest release from the repository, validates and commits it, and is killed with
/// SIGKILL at a random moment of that (EDGEINFER_DAEMON_KILL_POINTS, default 8). A new
/// release is published each time the previous one made it.
#[test]
fn kill_9_of_the_daemon_during_its_pull_leaves_the_old_or_the_new_version() {
    let points: u64 = std::env::var("EDGEINFER_DAEMON_KILL_POINTS")
        .ok()
        .map(|v| v.parse().expect("EDGEINFER_DAEMON_KILL_POINTS is a number"))
        .unwrap_or(8);
    let mut env = Env::new();
    let area = env.state_dir();
    let base = env.dir.path().join("daemon");
    std::fs::create_dir_all(&base).unwrap();
    let cfg_file = base.join("edgeinferd.toml");
    std::fs::write(
        &cfg_file,
        config_text(
            env.repo_dir().to_str().unwrap(),
            &env.root_file(),
            &area,
            &base,
        ),
    )
    .unwrap();
    let empty_repo = env.dir.path().join("empty-repo");
    std::fs::create_dir_all(&empty_repo).unwrap();
    let verify = env.config(empty_repo.to_str().unwrap());
    let mut published = 1u64;
    let mut before = check_area(&area);
    let (mut advanced, mut same) = (0, 0);
    for i in 0..points {
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgeinferd"))
            .arg("--config")
            .arg(&cfg_file)
            .env("EDGEINFER_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("edgeinferd: serving") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "daemon exited early");
        }
        // The agent's first poll starts as the daemon reports serving.
        std::thread::sleep(jitter(400, i));
        child.kill().unwrap();
        child.wait().unwrap();
        let after = check_area(&area);
        let key = |v: &Option<String>| v.as_deref().map(|s| s.parse::<u64>().unwrap()).unwrap_or(0);
        assert!(
            key(&after) >= key(&before),
            "went back from {before:?} to {after:?}"
        );
        let d = Daemon::start(&verify, clock());
        match &after {
            Some(v) => d.assert_serving(v),
            None => d.assert_serving("demo"),
        }
        drop(d);
        if key(&after) == published {
            advanced += 1;
            published += 1;
            publish_release(
                &mut env.repo,
                "churn",
                &published.to_string(),
                published,
                &churn_model(),
            );
            env.write();
        } else {
            same += 1;
        }
        before = after;
    }
    println!(
        "daemon kill points: {points}, installed before the kill at {advanced}, not at {same}"
    );
}
