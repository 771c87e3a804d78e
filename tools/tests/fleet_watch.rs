//! `edgeinfer fleet watch --json` against mosquitto on a loopback port: what two devices
//! published (retained, so it is there when the watcher subscribes) comes out as one JSON
//! line per update, each naming its device with what is known of it so far.

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};

struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_json_prints_one_line_per_update_with_each_devices_state() {
    let bin = std::env::var("EDGEINFER_TEST_MOSQUITTO").expect(
        "EDGEINFER_TEST_MOSQUITTO is not set: run tools/ci/test.sh (tools/ci/provision-telemetry.sh installs mosquitto)",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n"),
    )
    .unwrap();
    let _broker = Broker(
        Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "mosquitto never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Two devices' messages, retained (the watcher subscribes after they are sent).
    let (client, mut conn) = Client::new(MqttOptions::new("fleet-test-pub", "127.0.0.1", port), 64);
    let msgs: [(&str, &str); 5] = [
        (
            "box1/status",
            r#"{"state":"online","models":[{"name":"churn","version":"2"}]}"#,
        ),
        (
            "box1/latency",
            r#"{"model":"churn","version":"2","arm":"default","p99_us":950}"#,
        ),
        (
            "box1/drift",
            r#"{"model":"churn","version":"2","features":[{"name":"f2","level":"alert"}],"outputs":[]}"#,
        ),
        (
            "box1/accuracy",
            r#"{"model":"churn","version":"2","arm":"default","value":0.9,"alert":true}"#,
        ),
        ("box2/status", r#"{"state":"offline"}"#),
    ];
    for (t, p) in msgs {
        client
            .publish(
                format!("fw/{t}"),
                QoS::AtLeastOnce,
                true,
                p.as_bytes().to_vec(),
            )
            .unwrap();
    }
    let mut acks = 0;
    while acks < msgs.len() {
        match conn.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acks += 1,
            Ok(Ok(_)) => {}
            other => panic!("publishing to mosquitto: {other:?}"),
        }
    }

    let out = Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
        .args(["fleet", "watch", "--broker", &format!("127.0.0.1:{port}")])
        .args(["--prefix", "fw", "--json", "--for-s", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), msgs.len(), "{lines:?}");
    let last_of = |d: &str| {
        lines
            .iter()
            .rev()
            .find(|l| l["device"] == d)
            .unwrap()
            .clone()
    };
    let b1 = last_of("box1");
    assert_eq!(b1["state"], "online");
    assert_eq!(b1["versions"], serde_json::json!(["churn@2"]));
    assert_eq!(b1["p99_us"]["churn@2"], 950);
    assert_eq!(b1["drift_alerts"], 1);
    assert_eq!(b1["drift_features"], serde_json::json!(["f2"]));
    assert_eq!(
        b1["accuracy"]["churn@2/default"],
        serde_json::json!([0.9, true])
    );
    assert_eq!(last_of("box2")["state"], "offline");
}
