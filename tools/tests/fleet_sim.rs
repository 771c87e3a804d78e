//! `edgeinfer fleet simulate` end to end at a small N: a signed repository made with the
//! release commands (three versions of the logreg fixture), mosquitto from Debian, and 20
//! devices, each with its own state directory, through 1 % → 10 % → 100 % (the last two by
//! `rollout advance`, which must pass its gates), then a bad candidate in the canary: its
//! devices roll it back by themselves, record it on disk, and `rollout advance` refuses,
//! also when started after the rollbacks (it hears no event, only the retained statuses).

mod cli_support;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::{checkout, ok};
use serde_json::Value;

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &Path) -> (Broker, u16) {
    let bin = std::env::var("EDGEINFER_TEST_MOSQUITTO").expect(
        "EDGEINFER_TEST_MOSQUITTO is not set: run tools/ci/test.sh (tools/ci/provision-telemetry.sh installs mosquitto)",
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\nsys_interval 1\n"),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let broker = Broker(child);
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "mosquitto never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (broker, port)
}

#[test]
fn twenty_devices_converge_at_each_step_and_roll_a_bad_canary_back_by_themselves() {
    // A stuck broker or fleet must fail the test, not hang CI.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(300));
        eprintln!("fleet_sim: still running after 300 s; failing");
        std::process::exit(101);
    });
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (_broker, port) = mosquitto(t);

    let keys = t.join("keys");
    let ks = keys.to_str().unwrap();
    for k in ["root", "targets", "snapshot", "timestamp"] {
        ok(&["keys", "gen", "--out", ks, "--name", k]);
    }
    let key = |n: &str, kind: &str| keys.join(format!("{n}.{kind}.json")).display().to_string();
    let (work, served) = (t.join("work"), t.join("served"));
    let (w, s) = (work.to_str().unwrap(), served.to_str().unwrap());
    ok(&[
        "repo",
        "init",
        "--dir",
        w,
        "--root-key",
        &key("root", "pub"),
        "--targets-key",
        &key("targets", "pub"),
        "--snapshot-key",
        &key("snapshot", "pub"),
        "--timestamp-key",
        &key("timestamp", "pub"),
    ]);
    let online = [
        key("targets", "key"),
        key("snapshot", "key"),
        key("timestamp", "key"),
    ];
    let mut sign = vec!["release", "sign", "--dir", w, "--key"];
    let root_key = key("root", "key");
    sign.push(&root_key);
    for k in &online {
        sign.extend(["--key", k.as_str()]);
    }
    let reference = t.join("ref.csv");
    cli_support::logreg_reference_csv(&reference);
    let model = checkout().join("tests/fixtures/models/logreg.onnx");
    for v in ["1", "2", "3"] {
        ok(&[
            "release",
            "create",
            "--dir",
            w,
            "--model",
            model.to_str().unwrap(),
            "--name",
            "churn",
            "--version",
            v,
            "--reference-data",
            reference.to_str().unwrap(),
        ]);
    }
    ok(&sign);
    ok(&["release", "publish", "--dir", w, "--repo", s]);
    let mut set = vec![
        "rollout", "set", "--dir", w, "--model", "churn", "--stable", "1",
    ];
    for k in &online {
        set.extend(["--key", k.as_str()]);
    }
    set.extend(["--publish", s]);
    ok(&set);

    let report = t.join("report.json");
    let broker = format!("127.0.0.1:{port}");
    let state = t.join("fleet");
    let mut sim = vec![
        "fleet",
        "simulate",
        "--devices",
        "20",
        "--release-dir",
        w,
        "--publish",
        s,
        "--stable",
        "1",
        "--candidate",
        "2",
        "--bad-candidate",
        "3",
        "--broker",
        &broker,
        "--state",
        state.to_str().unwrap(),
        "--poll-ms",
        "500",
        "--jitter-ms",
        "500",
        // Two-second windows: the first window of a bad canary device ends well after
        // `rollout advance` (started at its publication) has subscribed, even on a loaded box.
        "--window-ms",
        "2000",
        "--workers",
        "4",
        "--step-timeout-s",
        "60",
        "--report",
        report.to_str().unwrap(),
    ];
    for k in &online {
        sim.extend(["--key", k.as_str()]);
    }
    let out = ok(&sim);
    assert!(out.contains("rollout advance refused: true"), "{out}");

    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let steps = r["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(names, ["boot", "idle", "1%", "10%", "100%", "promote"]);
    for s in steps {
        assert_eq!(s["converged"], true, "{s}");
        assert_eq!(s["command_ok"], true, "{s}");
        // Every step moved metadata at least (the devices verified a new timestamp).
        assert!(s["repo_bytes"].as_u64().unwrap() > 0, "{s}");
    }
    // An idle poll is the 404 for the next root and the timestamp: nothing else moves.
    let idle = &steps[1];
    let polls = idle["polls"].as_u64().unwrap();
    assert!(polls >= 10, "{idle}");
    assert!(
        idle["repo_requests"].as_u64().unwrap() <= 2 * polls + 20,
        "{idle}"
    );
    let canary = |i: usize| steps[i]["canary_devices"].as_u64().unwrap();
    assert!(
        canary(2) >= 1,
        "the 1% step's salt is drawn so its canary is not empty"
    );
    assert!(
        canary(2) <= canary(3),
        "raising the percent only adds devices"
    );
    assert_eq!(canary(4), 20);
    assert!(steps[3]["command_tail"]
        .as_str()
        .unwrap()
        .contains("published"));

    let bad = &r["bad"];
    let n = bad["canary_devices"].as_u64().unwrap();
    assert!(n >= 1, "{bad}");
    assert_eq!(bad["rolled_back"].as_u64(), Some(n), "{bad}");
    assert_eq!(bad["records_on_disk"].as_u64(), Some(n), "{bad}");
    assert_eq!(bad["advance_refused"], true, "{bad}");
    let refusal = bad["advance_refusal"].as_str().unwrap();
    assert!(refusal.contains("rolled candidate 3 back"), "{refusal}");
    // Started after the last rollback: the refusal names the rollback (not only the
    // candidate's missing traffic), learnt from the retained statuses alone.
    assert_eq!(bad["late_advance_refused"], true, "{bad}");
    let late = bad["late_advance_refusal"].as_str().unwrap();
    assert!(
        late.contains(&format!("{n} device(s) rolled candidate 3 back")),
        "{late}"
    );
    assert_eq!(r["mqtt_dropped"].as_u64(), Some(0));
}
