//! The Sparkplug B profile against mosquitto from Debian, seen by a Python Sparkplug host that
//! decodes every payload with classes compiled from the committed
//! `telemetry/proto/sparkplug_b.proto`: NBIRTH/NDEATH bdSeq pairs, DBIRTH before DDATA, seq
//! +1 mod 256, a killed connection answered by the broker's NDEATH (the Will), an outage
//! replayed as historical DDATA, bdSeq continued across a restart, and a rebirth command.
//! The node connects through a TCP relay in this test, so the test can cut its connection
//! without the node's knowledge.

mod support;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeinfer_telemetry::accuracy::{AccuracyReport, Metric};
use edgeinfer_telemetry::config::BrokerAddr;
use edgeinfer_telemetry::drift::{DriftReport, FeatureDrift, Level};
use edgeinfer_telemetry::latency::LatencyReport;
use edgeinfer_telemetry::sparkplug::{
    proto, NodeConfig, NodeTopics, SparkplugNode, DEVICE_METRICS, REBIRTH,
};
use edgeinfer_telemetry::SystemClock;
use prost::Message as _;
use serde_json::Value;
use support::*;

/// A TCP relay to the broker: `cut` closes every relayed connection (the broker sees the
/// socket die without a DISCONNECT), and while `up` is false new connections are dropped.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(upstream: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (u, c) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(down) = s else { break };
                if !u.load(Relaxed) {
                    continue;
                }
                let Ok(upc) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut cs = c.lock().unwrap();
                cs.push(down.try_clone().unwrap());
                cs.push(upc.try_clone().unwrap());
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), upc.try_clone().unwrap()),
                    (upc, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, up, conns }
    }

    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// The Python Sparkplug host: one decoded JSON line per message.
fn host(port: u16, group: &str) -> Consumer {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/sparkplug_b.proto");
    Consumer::script(
        "sparkplug_consumer.py",
        port,
        &[group.as_ref(), proto.as_os_str()],
    )
}

/// Waits until `f` holds on the messages received, and returns them.
fn wait_msgs(host: &Consumer, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    host.wait_until(what, |_| f(&host.messages()));
    host.messages()
}

fn kind(m: &Value) -> &str {
    m["kind"].as_str().unwrap_or("")
}

fn count(ms: &[Value], k: &str) -> usize {
    ms.iter().filter(|m| kind(m) == k).count()
}

fn metric_named<'a>(m: &'a Value, name: &str) -> Option<&'a Value> {
    m["metrics"].as_array()?.iter().find(|x| x["name"] == name)
}

fn bd_seq(m: &Value) -> u64 {
    metric_named(m, "bdSeq")
        .and_then(|x| x["value"].as_u64())
        .unwrap_or_else(|| panic!("no bdSeq metric: {m}"))
}

fn node(port: u16, group: &str, outbox: Arc<edgeinfer_telemetry::Outbox>) -> SparkplugNode {
    let cfg = NodeConfig {
        broker: BrokerAddr {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        },
        client_id: format!("edgeinfer-spb-test-{}", std::process::id()),
        credentials: None,
        tls_ca_pem: None,
        topics: NodeTopics {
            group: group.into(),
            edge_node: "box1".into(),
        },
        keep_alive: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(400),
    };
    SparkplugNode::spawn(cfg, outbox, Arc::new(SystemClock)).unwrap()
}

fn latency(model: &str, p99: u64) -> LatencyReport {
    LatencyReport {
        model: model.into(),
        version: "3".into(),
        arm: "stable".into(),
        count: 100,
        ok: 98,
        p50_us: 10,
        p90_us: 20,
        p99_us: p99,
        max_us: p99 + 1,
        queue_p50_us: 1,
        queue_p99_us: 2,
        compute_p50_us: 5,
        compute_p99_us: 9,
        errors: Default::default(),
    }
}

fn drift(psi: f64) -> DriftReport {
    DriftReport {
        start_ms: 0,
        end_ms: 1,
        rows: 1000,
        features: vec![FeatureDrift {
            name: "x".into(),
            kind: "numeric",
            rows: 1000,
            missing_share: 0.0,
            psi,
            js: 0.05,
            ks: Some(0.1),
            linf: None,
            level: if psi > 0.25 { Level::Alert } else { Level::Ok },
        }],
        outputs: vec![],
    }
}

/// Checks one session of messages (from an NBIRTH up to the next): seq starts at 0 and
/// goes +1 mod 256 on every message the node sent; every device has a DBIRTH before its
/// first DDATA; DDATA names metrics by the aliases of its device's DBIRTH only. Returns
/// (device, p99 by alias) of each latency DDATA, in order.
fn check_session(session: &[Value]) -> Vec<(String, Value)> {
    assert_eq!(kind(&session[0]), "NBIRTH", "{}", session[0]);
    let mut expect = 0u64;
    let mut aliases: std::collections::BTreeMap<String, Vec<(String, u64)>> = Default::default();
    let mut out = Vec::new();
    for m in session.iter().filter(|m| kind(m) != "NDEATH") {
        assert!(m.get("error").is_none(), "undecodable: {m}");
        assert_eq!(
            m["qos"], 0,
            "Sparkplug requires QoS 0 for births and data: {m}"
        );
        assert_eq!(m["retain"], false, "{m}");
        assert_eq!(m["seq"].as_u64(), Some(expect), "seq not +1 mod 256: {m}");
        assert!(m["timestamp"].as_u64().is_some(), "{m}");
        expect = (expect + 1) % 256;
        let device = m["device"].as_str().unwrap_or("").to_owned();
        match kind(m) {
            "DBIRTH" => {
                let ms = m["metrics"].as_array().unwrap();
                assert_eq!(ms.len(), DEVICE_METRICS.len(), "{m}");
                let named = ms
                    .iter()
                    .map(|x| {
                        (
                            x["name"].as_str().unwrap().to_owned(),
                            x["alias"].as_u64().unwrap(),
                        )
                    })
                    .collect();
                aliases.insert(device, named);
            }
            "DDATA" => {
                let declared = aliases
                    .get(&device)
                    .unwrap_or_else(|| panic!("DDATA before its DBIRTH: {m}"));
                let p99_alias = declared
                    .iter()
                    .find(|(n, _)| n == "latency/p99_us")
                    .unwrap()
                    .1;
                for x in m["metrics"].as_array().unwrap() {
                    assert!(x["name"].is_null(), "DDATA carries aliases, not names: {m}");
                    let a = x["alias"].as_u64().unwrap();
                    assert!(
                        declared.iter().any(|(_, d)| *d == a),
                        "undeclared alias: {m}"
                    );
                    if a == p99_alias {
                        out.push((device.clone(), x.clone()));
                    }
                }
            }
            "NBIRTH" => {
                let r = metric_named(m, REBIRTH).expect("Node Control/Rebirth");
                assert_eq!(r["value"], false);
                assert_eq!(r["datatype"], 11);
            }
            other => panic!("unexpected {other}: {m}"),
        }
    }
    out
}

/// Splits the node's messages (NDEATH aside) into sessions at each NBIRTH.
fn sessions(ms: &[Value]) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = Vec::new();
    for m in ms.iter().filter(|m| kind(m) != "NDEATH") {
        if kind(m) == "NBIRTH" || out.is_empty() {
            out.push(Vec::new());
        }
        out.last_mut().unwrap().push(m.clone());
    }
    out
}

#[test]
fn sparkplug_births_deaths_seq_and_replay_against_mosquitto() {
    watchdog(
        "sparkplug_births_deaths_seq_and_replay_against_mosquitto",
        150,
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), free_port());
    let group = format!("g{}", std::process::id());
    let host = host(broker.port, &group);
    let relay = Relay::start(broker.port);
    let outbox = open_outbox(&dir.path().join("sparkplug"));
    let n = node(relay.port, &group, outbox.clone());
    let feed = n.feed();
    feed.add_device("churn");
    feed.add_device("vision/v2");

    // Session 1: NBIRTH and two DBIRTHs, then more DDATA than seq has values.
    wait_msgs(&host, "NBIRTH and both DBIRTHs", |m| {
        count(m, "NBIRTH") == 1 && count(m, "DBIRTH") == 2
    });
    for i in 0..300u64 {
        feed.tick(&[latency("churn", i)], &[]).unwrap();
        if i % 10 == 0 {
            let d = ("vision/v2".to_owned(), "7".to_owned(), drift(0.3));
            feed.tick(&[], &[d]).unwrap();
        }
    }
    let acc = AccuracyReport {
        metric: Metric::Accuracy,
        value: 0.85,
        baseline: 0.95,
        relative_drop: 0.105,
        labels: 100,
        alert: true,
    };
    feed.accuracy("vision/v2", "7", "canary", &acc).unwrap();
    let ms = wait_msgs(&host, "331 DDATA", |m| count(m, "DDATA") >= 331);
    let first = &sessions(&ms)[0];
    assert_eq!(bd_seq(&first[0]), 0, "a fresh node's first bdSeq is 0");
    let p99s = check_session(first);
    let churn: Vec<u64> = p99s
        .iter()
        .filter(|(d, _)| d == "churn")
        .map(|(_, x)| x["value"].as_u64().unwrap())
        .collect();
    assert_eq!(
        churn,
        (0..300).collect::<Vec<_>>(),
        "DDATA in order, values intact"
    );
    assert!(
        first.iter().any(|m| m["seq"] == 255) && first.last().unwrap()["seq"].as_u64() < Some(255)
    );
    let vision: Vec<&Value> = first
        .iter()
        .filter(|m| kind(m) == "DDATA" && m["device"] == "vision_v2")
        .collect();
    assert_eq!(vision.len(), 31);
    let last = vision.last().unwrap();
    assert!(
        last["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["value"] == 0.85),
        "{last}"
    );
    assert!(
        last["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["historical"].is_null()),
        "{last}"
    );
    wait_for("the outbox to drain", Duration::from_secs(10), || {
        outbox.is_empty().then_some(())
    });

    // The connection dies under the node: the broker publishes the Will, NDEATH bdSeq 0;
    // the node reconnects with bdSeq 1 and births again, with the latest values.
    relay.cut();
    let ms = wait_msgs(&host, "NDEATH 0 and NBIRTH 1", |m| {
        count(m, "NDEATH") == 1 && count(m, "NBIRTH") == 2 && count(m, "DBIRTH") == 4
    });
    let death = ms.iter().find(|m| kind(m) == "NDEATH").unwrap();
    assert_eq!(
        bd_seq(death),
        0,
        "NDEATH (the Will) has its NBIRTH's bdSeq: {death}"
    );
    assert!(death["seq"].is_null(), "NDEATH carries no seq: {death}");
    assert_eq!(death["qos"], 1, "{death}");
    assert_eq!(death["metrics"].as_array().unwrap().len(), 1);
    let second = &sessions(&ms)[1];
    assert_eq!(bd_seq(&second[0]), 1);
    check_session(second);
    let rebirth = second
        .iter()
        .find(|m| kind(m) == "DBIRTH" && m["device"] == "churn")
        .unwrap();
    let p99 = rebirth["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "latency/p99_us")
        .unwrap();
    assert_eq!(
        p99["value"], 299,
        "DBIRTH carries the latest value: {rebirth}"
    );

    // An outage: reports made meanwhile wait in the outbox and arrive after the next
    // NBIRTH as historical DDATA with their original timestamps.
    relay.up.store(false, Relaxed);
    relay.cut();
    wait_msgs(&host, "NDEATH 1", |m| count(m, "NDEATH") == 2);
    for i in 0..5 {
        feed.tick(&[latency("churn", 1000 + i)], &[]).unwrap();
    }
    assert_eq!(outbox.len(), 5);
    std::thread::sleep(Duration::from_millis(300));
    relay.up.store(true, Relaxed);
    let ms = wait_msgs(&host, "replayed DDATA", |m| {
        count(m, "NBIRTH") == 3 && count(m, "DDATA") >= 336
    });
    let deaths: Vec<u64> = ms
        .iter()
        .filter(|m| kind(m) == "NDEATH")
        .map(bd_seq)
        .collect();
    assert_eq!(deaths, [0, 1]);
    let third = &sessions(&ms)[2];
    let bd3 = bd_seq(&third[0]);
    assert!(
        bd3 > 1,
        "failed CONNECTs during the outage use bdSeq numbers too: {bd3}"
    );
    assert_eq!(bd3, n.stats().bd_seq.load(Relaxed));
    let birth_ts = third[0]["timestamp"].as_u64().unwrap();
    let replayed = check_session(third);
    assert_eq!(replayed.len(), 5);
    for (i, (_, x)) in replayed.iter().enumerate() {
        assert_eq!(x["value"], 1000 + i as u64);
        assert_eq!(x["historical"], true, "{x}");
        assert!(
            x["timestamp"].as_u64().unwrap() < birth_ts,
            "original timestamp: {x}"
        );
    }

    // A rebirth command: NBIRTH again with the same bdSeq (the Will cannot change), seq 0.
    let (client, mut conn) = rumqttc::Client::new(
        rumqttc::MqttOptions::new("spb-test-host-cmd", "127.0.0.1", broker.port),
        10,
    );
    std::thread::spawn(move || for _ in conn.iter() {});
    let cmd = proto::Payload {
        timestamp: Some(1),
        metrics: vec![proto::Metric {
            name: Some(REBIRTH.into()),
            datatype: Some(11),
            value: Some(proto::Value::BooleanValue(true)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let ncmd = format!("spBv1.0/{group}/NCMD/box1");
    client
        .publish(
            &ncmd,
            rumqttc::QoS::AtMostOnce,
            false,
            b"\xff\xff\xff".to_vec(),
        )
        .unwrap();
    client
        .publish(&ncmd, rumqttc::QoS::AtMostOnce, false, cmd.encode_to_vec())
        .unwrap();
    let ms = wait_msgs(&host, "the rebirth", |m| {
        count(m, "NBIRTH") == 4 && count(m, "DBIRTH") == 8
    });
    let fourth = &sessions(&ms)[3];
    assert_eq!(bd_seq(&fourth[0]), bd3);
    check_session(fourth);
    assert_eq!(
        n.stats().bad_commands.load(Relaxed),
        1,
        "garbage NCMD counted"
    );

    // A stop publishes NDEATH itself; the next start continues bdSeq from the outbox.
    n.stop();
    wait_msgs(&host, "NDEATH on stop", |m| count(m, "NDEATH") == 3);
    let n2 = node(relay.port, &group, outbox.clone());
    let ms = wait_msgs(&host, "NBIRTH after the restart", |m| {
        count(m, "NBIRTH") == 5
    });
    let deaths: Vec<u64> = ms
        .iter()
        .filter(|m| kind(m) == "NDEATH")
        .map(bd_seq)
        .collect();
    assert_eq!(deaths, [0, 1, bd3]);
    let fifth = &sessions(&ms)[4];
    assert_eq!(
        bd_seq(&fifth[0]),
        bd3 + 1,
        "bdSeq persisted across the restart"
    );
    drop(n2);
    drop(client);
}
