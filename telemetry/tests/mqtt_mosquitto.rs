//! Telemetry against mosquitto from Debian, checked by the Python consumer that validates
//! every payload against its JSON Schema: every topic's message shape, a broker outage
//! (nothing lost, once per id, in order), a kill -9 with a full outbox (nothing lost, the
//! Last Will says offline), and brokers that send garbage or refuse connections.

mod support;

use std::io::Write as _;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use edgeinfer_telemetry::accuracy::{Baseline, Metric};
use edgeinfer_telemetry::drift::{normal_samples, FeatureRef, ReferenceStats};
use edgeinfer_telemetry::events::Event;
use edgeinfer_telemetry::gpu::GpuSample;
use edgeinfer_telemetry::latency::CoreRecorder;
use edgeinfer_telemetry::messages::{ModelState, OutboxState, Status};
use support::*;

fn status(state: &'static str) -> Status {
    Status {
        state,
        daemon_version: "0.1.0".into(),
        uptime_s: 1,
        models: vec![ModelState {
            name: "m".into(),
            version: "1".into(),
            backend: "tract".into(),
            default: true,
        }],
        outbox: OutboxState {
            messages: 0,
            bytes: 0,
            dropped: 0,
        },
        rollout: Vec::new(),
    }
}

#[test]
fn every_topic_validates_and_an_outage_loses_nothing() {
    watchdog("every_topic_validates_and_an_outage_loses_nothing", 150);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Mosquitto::start(dir.path(), port);
    let prefix = format!("t{}", std::process::id());
    let consumer = Consumer::start(port, &prefix);
    let outbox = open_outbox(&dir.path().join("outbox"));
    let mut hub = hub(&prefix, outbox.clone());
    let publisher = publisher(&prefix, port, outbox.clone());
    hub.set_waker(publisher.waker());

    // One message of every topic.
    let samples = normal_samples(5000, 0.0, 1.0, 1);
    let reference = ReferenceStats {
        features: vec![FeatureRef::numeric_from_samples("x", 0, &samples)],
        outputs: vec![FeatureRef::categorical_from_samples(
            "label",
            0,
            &[0, 1, 1, 0],
            2,
        )],
    };
    hub.add_version(
        "m",
        "1",
        Some(reference.clone()),
        Some(Baseline {
            metric: Metric::Accuracy,
            value: 0.95,
        }),
    );
    hub.status(&status("online")).unwrap();
    hub.emit(Event::ModelInstalled {
        model: "m".into(),
        version: "1".into(),
    })
    .unwrap();
    let mut core = CoreRecorder::default();
    core.record_ok("m", "1", "default", 300, 20, 250);
    core.record_error("m", "1", "default", 8, 40);
    hub.add_latency(core.take());
    let mut c = edgeinfer_telemetry::drift::DriftCounts::for_reference(&reference);
    for x in samples.iter().take(200) {
        c.observe_row(&reference, &[*x + 3.0], &[1.0]);
    }
    hub.add_drift("m", "1", &c);
    hub.tick().unwrap();
    for i in 0..100 {
        hub.feedback("m", "1", "default", if i % 5 == 0 { 0.0 } else { 1.0 }, 1.0)
            .unwrap();
    }
    hub.gpu(&GpuSample::NoNvml {
        reason: "no libnvidia-ml".into(),
    })
    .unwrap();
    hub.gpu(&GpuSample::NoNvml {
        reason: "no libnvidia-ml".into(),
    })
    .unwrap();
    consumer.wait_until("one message of each topic", |l| {
        ["status", "latency", "drift", "accuracy", "gpu", "events"]
            .iter()
            .all(|t| l.iter().any(|m| m["level"] == *t))
            && l.iter().filter(|m| m["level"] == "events").count() >= 3
    });
    let msgs = consumer.messages();
    for m in &msgs {
        assert_eq!(m["valid"], true, "schema violation: {m}");
        assert_eq!(
            m["props"]["schema"],
            format!("edgeinfer.{}/1", m["level"].as_str().unwrap()),
            "{m}"
        );
        assert!(
            m["expiry"].as_u64().is_some_and(|e| e > 0 && e <= 3600),
            "{m}"
        );
    }
    let lat = msgs.iter().find(|m| m["level"] == "latency").unwrap();
    assert_eq!(
        (
            lat["props"]["model"].as_str(),
            lat["props"]["version"].as_str()
        ),
        (Some("m"), Some("1"))
    );
    assert!(msgs
        .iter()
        .any(|m| m["level"] == "status" && m["state"] == "online"));
    let types: Vec<&str> = msgs.iter().filter_map(|m| m["type"].as_str()).collect();
    assert!(
        types.contains(&"drift_alert") && types.contains(&"accuracy_alert"),
        "{types:?}"
    );
    assert_eq!(
        msgs.iter().filter(|m| m["level"] == "gpu").count(),
        1,
        "no GPU is said once"
    );
    wait_for("the outbox to drain", Duration::from_secs(10), || {
        eprintln!("outbox {} stats {:?}", outbox.len(), publisher.stats());
        outbox.is_empty().then_some(())
    });

    // Outage: stop the broker, serve 10k requests over 10 intervals, restart it.
    broker.stop();
    wait_for("the publisher to notice", Duration::from_secs(10), || {
        (!publisher.stats().connected.load(Relaxed)).then_some(())
    });
    for interval in 0..10 {
        let mut core = CoreRecorder::default();
        for r in 0..1000u64 {
            core.record_ok("m", "1", "default", 100 + r, 5, 90 + r);
        }
        hub.add_latency(core.take());
        hub.tick().unwrap();
        hub.emit(Event::ModelSwapped {
            model: "m".into(),
            from: interval.to_string(),
            to: (interval + 1).to_string(),
        })
        .unwrap();
    }
    assert!(
        outbox.len() >= 20,
        "held while the broker is down: {}",
        outbox.len()
    );
    let before_lat = consumer.seqs("latency").0.len();
    let before_ev = consumer.seqs("events").0.len();
    let _broker = Mosquitto::start(dir.path(), port);
    consumer.wait_until("the outage's messages", |_| {
        consumer.seqs("latency").0.len() >= before_lat + 10
            && consumer.seqs("events").0.len() >= before_ev + 10
    });
    for level in ["latency", "events"] {
        let (order, dups) = consumer.seqs(level);
        assert_eq!(dups, 0, "{level}: each id once");
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{level} in order: {order:?}"
        );
    }
    let msgs = consumer.messages();
    assert!(msgs.iter().all(|m| m["valid"] == true));
    let swapped: Vec<&serde_json::Value> = msgs
        .iter()
        .filter(|m| m["type"] == "model_swapped")
        .collect();
    assert_eq!(swapped.len(), 10);
    wait_for("the outbox to drain", Duration::from_secs(10), || {
        outbox.is_empty().then_some(())
    });
    publisher.stop();
}

/// Child side of the reboot test: fills the outbox (the publisher connected), then waits
/// to be killed. Without the variables it checks the same outbox write path on its own.
#[test]
fn reboot_child_fills_the_outbox() {
    let (Ok(dir), Ok(port), Ok(prefix)) = (
        std::env::var("EDGEINFER_REBOOT_DIR"),
        std::env::var("EDGEINFER_REBOOT_PORT"),
        std::env::var("EDGEINFER_REBOOT_PREFIX"),
    ) else {
        let d = tempfile::tempdir().unwrap();
        let ob = open_outbox(d.path());
        let h = hub("solo", ob.clone());
        for i in 0..50 {
            h.emit(Event::GpuUnhealthy {
                reason: i.to_string(),
            })
            .unwrap();
        }
        assert_eq!(ob.len(), 50);
        return;
    };
    let outbox = open_outbox(std::path::Path::new(&dir));
    let mut hub = hub(&prefix, outbox.clone());
    let publisher = publisher(&prefix, port.parse().unwrap(), outbox.clone());
    hub.set_waker(publisher.waker());
    wait_for("connected", Duration::from_secs(10), || {
        publisher.stats().connected.load(Relaxed).then_some(())
    });
    hub.status(&status("online")).unwrap();
    // A full outbox: 2000 events committed in one go, most not yet sent.
    let batch = (0..2000)
        .map(|i| {
            hub.topics().message(
                "events",
                &Event::GpuUnhealthy {
                    reason: format!("r{i}"),
                },
                None,
                None,
            )
        })
        .collect();
    hub.commit(batch).unwrap();
    println!("FILLED {}", outbox.len());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn kill_9_with_a_full_outbox_loses_nothing_and_the_will_says_offline() {
    watchdog(
        "kill_9_with_a_full_outbox_loses_nothing_and_the_will_says_offline",
        150,
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Mosquitto::start(dir.path(), port);
    let prefix = format!("r{}", std::process::id());
    let consumer = Consumer::start(port, &prefix);
    let ob_dir = dir.path().join("outbox");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reboot_child_fills_the_outbox",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EDGEINFER_REBOOT_DIR", &ob_dir)
        .env("EDGEINFER_REBOOT_PORT", port.to_string())
        .env("EDGEINFER_REBOOT_PREFIX", &prefix)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // libtest prints the test's name first, on the same line.
    while !line.contains("FILLED") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "child ended early"
        );
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    consumer.wait_until("the Last Will", |l| {
        l.iter()
            .any(|m| m["level"] == "status" && m["state"] == "offline")
    });
    // Restart: the same outbox, a new publisher.
    let outbox = open_outbox(&ob_dir);
    let publisher = publisher(&prefix, port, outbox.clone());
    consumer.wait_until("all 2000 events", |_| {
        consumer.seqs("events").0.len() >= 2000
    });
    let (order, _dups) = consumer.seqs("events");
    assert_eq!(order.len(), 2000, "every committed event arrives");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(consumer.messages().iter().all(|m| m["valid"] == true));
    wait_for("the outbox to drain", Duration::from_secs(10), || {
        outbox.is_empty().then_some(())
    });
    publisher.stop();
}

#[test]
fn garbage_and_refusing_brokers_leave_the_producer_unblocked() {
    let dir = tempfile::tempdir().unwrap();
    // A "broker" that answers every connection with garbage, and a port nobody listens on.
    let garbage = TcpListener::bind("127.0.0.1:0").unwrap();
    let gport = garbage.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in garbage.incoming() {
            let Ok(mut s) = s else { break };
            let _ = s.write_all(&[0xff; 64]);
        }
    });
    let refused = free_port();
    for (i, port) in [gport, refused].into_iter().enumerate() {
        let outbox = open_outbox(&dir.path().join(format!("ob{i}")));
        let mut hub = hub("g", outbox.clone());
        let publisher = publisher("g", port, outbox.clone());
        hub.set_waker(publisher.waker());
        for n in 0..200 {
            hub.emit(Event::GpuUnhealthy {
                reason: n.to_string(),
            })
            .unwrap();
        }
        assert_eq!(outbox.len(), 200, "everything kept for later");
        wait_for("connection errors", Duration::from_secs(10), || {
            (publisher.stats().connection_errors.load(Relaxed) >= 2).then_some(())
        });
        assert!(!publisher.stats().connected.load(Relaxed));
        assert_eq!(publisher.stats().acked.load(Relaxed), 0);
        publisher.stop();
    }
}
