//! Feature updates over MQTT through a real rumqttd broker, in-process on loopback.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use edgeinfer_features::mqtt::Subscriber;
use edgeinfer_features::{Assembler, MqttConfig};
use rumqttc::{Client, MqttOptions, QoS};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

fn start_broker() -> SocketAddr {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = ServerSettings {
        name: "v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: 1 << 20,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 16,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Config::default()
    };
    std::thread::spawn(move || Broker::new(config).start().unwrap());
    // Wait until it accepts connections.
    let t0 = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "broker did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    addr
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn updates_from_the_centre_apply_idempotently_and_bad_ones_are_refused() {
    let addr = start_broker();
    let (_d, s) = store();
    Assembler::new(&s, schema()).unwrap();
    let sub = Subscriber::spawn(
        s.clone(),
        MqttConfig {
            url: format!("mqtt://{addr}"),
            topic: "edgeinfer/features/+".into(),
            client_id: "test-features".into(),
        },
    )
    .unwrap();

    let mut o = MqttOptions::new("centre", addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(o, 16);
    std::thread::spawn(move || for _ in conn.iter() {});
    let publish = |payload: String| {
        client
            .publish("edgeinfer/features/1", QoS::AtLeastOnce, false, payload)
            .unwrap();
    };
    // The subscriber may not have subscribed yet: republish until the row shows up
    // (at-least-once makes this harmless, and it is what the centre does too).
    let good = r#"{"schema_version":1,"rows":[{"entity":"m1","event_ts_ms":100,"values":{"age":50,"score":0.125}}]}"#;
    wait_for("the first update", || {
        publish(good.into());
        std::thread::sleep(Duration::from_millis(100));
        row(&s, "m1").is_some()
    });
    assert_eq!(
        row(&s, "m1").unwrap().values,
        vec![Some(50.0), Some(0.125), None]
    );

    // Bad payloads: each counted, refused, nothing written.
    let before = s.metrics().mqtt_bad_payloads.load(Relaxed);
    for bad in [
        "not json",
        r#"{"schema_version":1,"rows":[{"entity":"m2","event_ts_ms":1,"values":{"age":1.5}}]}"#,
        r#"{"schema_version":1,"rows":[{"entity":"m2","event_ts_ms":1,"values":{"nope":1}}]}"#,
        r#"{"schema_version":7,"rows":[{"entity":"m2","event_ts_ms":1,"values":{}}]}"#,
        r#"{"schema_version":1,"rows":[{"entity":"m2","event_ts_ms":1,"values":{"age":1}},{"entity":"","event_ts_ms":1,"values":{}}]}"#,
    ] {
        publish(bad.into());
    }
    wait_for("bad payloads counted", || {
        s.metrics().mqtt_bad_payloads.load(Relaxed) >= before + 5
    });
    assert!(row(&s, "m2").is_none());

    // A redelivered older update does not roll the row back; a newer one applies.
    publish(
        r#"{"schema_version":1,"rows":[{"entity":"m1","event_ts_ms":50,"values":{"age":1}}]}"#
            .into(),
    );
    publish(
        r#"{"schema_version":1,"rows":[{"entity":"m1","event_ts_ms":200,"values":{"age":60}}]}"#
            .into(),
    );
    wait_for("the newer update", || {
        row(&s, "m1").unwrap().event_ts_ms == 200
    });
    assert_eq!(row(&s, "m1").unwrap().values[0], Some(60.0));
    assert!(s.metrics().rows_skipped_older.load(Relaxed) >= 1);
    sub.stop();
}
