//! `edgeinfer rollout set|show` against a real release repository: the directive is a
//! signed TUF target that a device's TUF client (the same code the daemon runs) verifies
//! and the rollout crate parses; bad directives and unreleased versions are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgeinfer_registry::release::repo::{RepoConfig, RoleKeys};
use edgeinfer_registry::release::{DirDestination, NoProgress, Repo, SigningKey};
use edgeinfer_registry::tuf::{DirFetcher, Updater, UpdaterConfig};
use edgeinfer_rollout::bucket::bucket;
use edgeinfer_rollout::RolloutDirective;
use serde_json::json;

const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

struct Fixture {
    _dir: tempfile::TempDir,
    work: PathBuf,
    served: PathBuf,
    keys: PathBuf,
    root_v1: Vec<u8>,
}

impl Fixture {
    /// A repository with churn versions 3 and 4 released and published, one key per role.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (work, served, keys) = (
            dir.path().join("work"),
            dir.path().join("served"),
            dir.path().join("keys"),
        );
        let signers: Vec<SigningKey> = (0..4u8)
            .map(|i| SigningKey::from_seed([i + 1; 32]).unwrap())
            .collect();
        let roles: BTreeMap<String, RoleKeys> = ROLES
            .iter()
            .zip(&signers)
            .map(|(r, k)| {
                k.save(&keys, r).unwrap();
                let rk = RoleKeys {
                    keys: vec![k.public().clone()],
                    threshold: 1,
                };
                (r.to_string(), rk)
            })
            .collect();
        std::fs::create_dir_all(&work).unwrap();
        let now = edgeinfer_registry::release::now();
        let mut repo = Repo::init(&work, &roles, RepoConfig::default(), now).unwrap();
        for (i, v) in ["3", "4"].iter().enumerate() {
            let custom = json!({"name": "churn", "version": v, "release_counter": i + 1});
            repo.put_target(
                &format!("models/churn/{v}/model.onnx"),
                format!("model {v}").as_bytes(),
                Some(custom),
            )
            .unwrap();
        }
        let refs: Vec<&SigningKey> = signers.iter().collect();
        repo.sign_with(&refs).unwrap();
        repo.publish(&DirDestination::new(served.clone()), &mut NoProgress)
            .unwrap();
        let root_v1 = std::fs::read(served.join("metadata/1.root.json")).unwrap();
        Fixture {
            _dir: dir,
            work,
            served,
            keys,
            root_v1,
        }
    }

    fn key(&self, role: &str) -> String {
        self.keys
            .join(format!("{role}.key.json"))
            .to_string_lossy()
            .into_owned()
    }

    fn edgeinfer(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
            .args(args)
            .output()
            .expect("running edgeinfer")
    }

    /// `rollout set` with the online keys, published.
    fn set(&self, extra: &[&str]) -> Output {
        let (work, served) = (self.work.to_str().unwrap(), self.served.to_str().unwrap());
        let (t, s, ts) = (
            self.key("targets"),
            self.key("snapshot"),
            self.key("timestamp"),
        );
        let mut args = vec![
            "rollout",
            "set",
            "--dir",
            work,
            "--model",
            "churn",
            "--key",
            &t,
            "--key",
            &s,
            "--key",
            &ts,
            "--publish",
            served,
        ];
        args.extend_from_slice(extra);
        self.edgeinfer(&args)
    }

    /// What a device gets: refresh from the published directory, verify, download, parse.
    fn device_view(&self) -> RolloutDirective {
        let meta = tempfile::tempdir().unwrap();
        let mut up = Updater::new(
            meta.path(),
            self.served.join("metadata").to_str().unwrap(),
            Box::new(DirFetcher),
            Some(&self.root_v1),
            edgeinfer_registry::release::now(),
            UpdaterConfig::default(),
        )
        .unwrap()
        .with_targets_base(self.served.join("targets").to_str().unwrap());
        up.refresh().unwrap();
        let info = up
            .get_targetinfo("rollout/churn.json")
            .unwrap()
            .expect("the directive is a signed target");
        let out = meta.path().join("rollout.json");
        up.download_target(&info, &out).unwrap();
        RolloutDirective::parse_for("churn", &std::fs::read(&out).unwrap()).unwrap()
    }
}

/// Arguments written as one line (none of them holds a space).
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "edgeinfer failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn set_publishes_a_signed_directive_that_a_device_verifies() {
    let f = Fixture::new();
    let stdout = ok(&f.set(&words(
        "--stable 3 --candidate 4 --percent 10 --salt churn-4-a --split 50 --min-release-counter 2",
    )));
    assert!(stdout.contains("candidate 4 on 10% of devices"), "{stdout}");
    assert!(stdout.contains("published to"), "{stdout}");
    let d = f.device_view();
    let c = d.candidate.as_ref().unwrap();
    assert_eq!((d.stable.as_str(), c.version.as_str()), ("3", "4"));
    assert_eq!((c.canary_bp(), c.split_bp()), (1000, Some(5000)));
    assert_eq!(c.canary.salt, "churn-4-a");
    assert_eq!(d.min_release_counter, 2);

    // Lowering the percent: a new signed directive; the floor is kept unless given.
    ok(&f.set(&words(
        "--stable 3 --candidate 4 --percent 1 --salt churn-4-a",
    )));
    let d = f.device_view();
    assert_eq!(d.candidate.as_ref().unwrap().canary_bp(), 100);
    assert_eq!(d.min_release_counter, 2);
    // Ending the trial.
    ok(&f.set(&words("--stable 4")));
    let d = f.device_view();
    assert_eq!((d.stable.as_str(), d.candidate.is_none()), ("4", true));
}

#[test]
fn set_refuses_bad_directives_and_unreleased_versions() {
    let f = Fixture::new();
    let e = refused(&f.set(&words("--stable 3 --candidate 4 --percent 100.5 --salt s")));
    assert!(e.contains("out of range"), "{e}");
    let e = refused(&f.set(&words("--stable 3 --candidate 9 --percent 5 --salt s")));
    assert!(e.contains("\"9\" of \"churn\" is not released"), "{e}");
    let e = refused(&f.set(&words("--stable 3 --candidate 3 --percent 5 --salt s")));
    assert!(e.contains("also the stable version"), "{e}");
    // Without --salt, clap refuses the usage (exit 2).
    let out = f.set(&words("--stable 3 --candidate 4 --percent 5"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // Nothing was published: the device sees no directive yet.
    assert!(!f.served.join("metadata/2.targets.json").exists());
}

#[test]
fn set_without_enough_signatures_stages_but_does_not_publish() {
    let f = Fixture::new();
    let work = f.work.to_str().unwrap();
    let out = f.edgeinfer(&[
        "rollout",
        "set",
        "--dir",
        work,
        "--model",
        "churn",
        "--stable",
        "3",
        "--publish",
        f.served.to_str().unwrap(),
    ]);
    let e = refused(&out);
    assert!(e.contains("targets"), "{e}");
    // Staged in the working repository: a later holder signs and publishes.
    assert!(Path::new(work).join("staged/targets.json").exists());
}

#[test]
fn show_places_devices_with_the_documented_bucketing() {
    let f = Fixture::new();
    ok(&f.set(&words(
        "--stable 3 --candidate 4 --percent 10 --salt churn-4",
    )));
    let out = ok(&f.edgeinfer(&[
        "rollout",
        "show",
        "--dir",
        f.work.to_str().unwrap(),
        "--model",
        "churn",
        "--device",
        "box-0003",
        "--device",
        "box-0001",
    ]));
    // docs/rollout.md: under salt churn-4, box-0003 is bucket 878 and box-0001 is 6645.
    assert_eq!(bucket(b"churn-4", b"box-0003"), 878);
    assert!(out.contains("box-0003: bucket 878 < 1000: 4"), "{out}");
    assert!(out.contains("box-0001: bucket 6645 >= 1000: 3"), "{out}");
}

// === status and advance, against a real broker ===

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, MqttOptions};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// rumqttd in this process on a free loopback port (MQTT 5, as the daemons publish).
fn start_broker() -> u16 {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let connections = ConnectionSettings {
        connection_timeout_ms: 5000,
        max_payload_size: 1 << 20,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v5".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        router: RouterConfig {
            max_connections: 16,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v5: Some(HashMap::from([("v5".to_owned(), server)])),
        ..Config::default()
    };
    std::thread::spawn(move || {
        let _ = Broker::new(config).start();
    });
    let t0 = Instant::now();
    while TcpStream::connect(listen).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the broker never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    port
}

/// One simulated device's telemetry, in the shapes of docs/telemetry/.
struct Device {
    id: String,
    version: &'static str,
    accuracy: f64,
    rolled_back: bool,
}

/// Publishes the devices' status, latency, accuracy (and rollback events) every 100 ms
/// until dropped.
struct FakeFleet {
    stop: Arc<AtomicBool>,
}

impl Drop for FakeFleet {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

fn fake_fleet(port: u16, devices: Vec<Device>) -> FakeFleet {
    let stop = Arc::new(AtomicBool::new(false));
    let (client, mut conn) = Client::new(MqttOptions::new("fleet-sim", "127.0.0.1", port), 512);
    let s = stop.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            if ev.is_err() || s.load(Relaxed) {
                break;
            }
        }
    });
    let s = stop.clone();
    std::thread::spawn(move || {
        while !s.load(Relaxed) {
            for d in &devices {
                let topic = |level: &str| format!("edgeinfer/{}/{level}", d.id);
                let status = json!({"schema": "edgeinfer.status/1", "device": d.id, "state": "online",
                    "models": [{"name": "churn", "version": d.version, "backend": "tract", "default": true}]});
                let latency = json!({"schema": "edgeinfer.latency/1", "device": d.id, "model": "churn",
                    "version": d.version, "arm": "default", "count": 500, "ok": 499, "p99_us": 400});
                let accuracy = json!({"schema": "edgeinfer.accuracy/1", "device": d.id, "model": "churn",
                    "version": d.version, "arm": "default", "metric": "accuracy",
                    "value": d.accuracy, "labels": 100});
                let mut msgs = vec![
                    (topic("status"), status),
                    (topic("latency"), latency),
                    (topic("accuracy"), accuracy),
                ];
                if d.rolled_back {
                    msgs.push((
                        topic("events"),
                        json!({"schema": "edgeinfer.events/1", "device": d.id,
                        "type": "model_rolled_back", "model": "churn", "from": "4", "to": "3",
                        "reason": "error rate 0.0900 above 0.0100"}),
                    ));
                }
                for (t, body) in msgs {
                    let retain = t.ends_with("/status");
                    if client
                        .publish(t, QoS::AtLeastOnce, retain, body.to_string())
                        .is_err()
                    {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    FakeFleet { stop }
}

fn fleet(canary_accuracy: f64, rolled_back: Option<usize>) -> Vec<Device> {
    (0..10)
        .map(|i| Device {
            id: format!("edge-{i:04}"),
            version: if i < 2 { "4" } else { "3" },
            accuracy: if i < 2 { canary_accuracy } else { 0.9 },
            rolled_back: rolled_back == Some(i),
        })
        .collect()
}

fn broker_args(port: u16) -> Vec<String> {
    words(&format!("--broker mqtt://127.0.0.1:{port} --listen-s 2"))
        .into_iter()
        .map(String::from)
        .collect()
}

#[test]
fn status_summarises_the_fleet_from_the_broker() {
    let f = Fixture::new();
    let port = start_broker();
    let _sim = fake_fleet(port, fleet(0.91, Some(1)));
    let mut args = words("rollout status --model churn --json");
    let b = broker_args(port);
    args.extend(b.iter().map(String::as_str));
    let out = ok(&f.edgeinfer(&args));
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON summary");
    assert_eq!(v["devices"], 10, "{out}");
    assert_eq!(v["versions"]["4"]["devices"], 2, "{out}");
    assert_eq!(v["versions"]["3"]["devices"], 8, "{out}");
    assert!(
        v["versions"]["4"]["requests"].as_u64().unwrap() >= 1000,
        "{out}"
    );
    assert_eq!(v["versions"]["3"]["p99_us"], 400, "{out}");
    assert!(v["rollbacks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["device"] == "edge-0001"));
    assert!(!v["rollbacks"].as_array().unwrap().is_empty(), "{out}");
}

#[test]
fn advance_signs_the_next_step_only_when_the_gates_pass() {
    let f = Fixture::new();
    ok(&f.set(&words(
        "--stable 3 --candidate 4 --percent 10 --salt churn-4",
    )));
    let port = start_broker();
    let (dir, served) = (f.work.to_str().unwrap(), f.served.to_str().unwrap());
    let (t, s, ts) = (f.key("targets"), f.key("snapshot"), f.key("timestamp"));
    let advance = |to: &str| {
        let mut args = words("rollout advance --model churn --dir");
        args.extend([
            dir,
            "--to",
            to,
            "--key",
            &t,
            "--key",
            &s,
            "--key",
            &ts,
            "--publish",
            served,
        ]);
        let b = broker_args(port);
        args.extend(b.iter().map(String::as_str));
        f.edgeinfer(&args)
    };

    // A canary device rolled the candidate back: refused, nothing signed.
    let sim = fake_fleet(port, fleet(0.91, Some(0)));
    let e = refused(&advance("25"));
    assert!(
        e.contains("refusing to advance") && e.contains("edge-0000"),
        "{e}"
    );
    assert_eq!(f.device_view().candidate.unwrap().canary_bp(), 1000);
    drop(sim);
    std::thread::sleep(Duration::from_millis(300));

    // Wrong predictions across the canary: refused by the fleet-wide judge.
    let sim = fake_fleet(port, fleet(0.60, None));
    let e = refused(&advance("25"));
    assert!(e.contains("accuracy"), "{e}");
    drop(sim);
    std::thread::sleep(Duration::from_millis(300));

    // Healthy: the next step is signed and published.
    let _sim = fake_fleet(port, fleet(0.91, None));
    let out = ok(&advance("25"));
    assert!(out.contains("gates passed"), "{out}");
    let d = f.device_view();
    assert_eq!(d.candidate.unwrap().canary_bp(), 2500);
    // Lowering goes through `rollout set`, not advance.
    let e = refused(&advance("5"));
    assert!(e.contains("not above"), "{e}");
}
