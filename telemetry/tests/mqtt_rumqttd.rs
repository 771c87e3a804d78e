//! The publisher against rumqttd in process: messages leave the outbox in order with their
//! MQTT 5 user properties and expiry, and are deleted only once acknowledged.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use edgeinfer_telemetry::events::Event;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use support::*;

fn start_broker(port: u16) {
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = ServerSettings {
        name: "v5".into(),
        listen,
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
    wait_port(port);
}

#[test]
fn outbox_messages_reach_a_subscriber_in_order_and_are_deleted_after_puback() {
    let port = free_port();
    start_broker(port);
    let prefix = "rd";
    // A subscriber on its own runtime, collecting (topic, seq, user properties).
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(
        String,
        u64,
        Vec<(String, String)>,
    )>::new()));
    let g = got.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        rt.block_on(async move {
            let (client, mut el) =
                AsyncClient::new(MqttOptions::new("sub", "127.0.0.1", port), 100);
            client
                .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
                .await
                .unwrap();
            loop {
                match el.poll().await {
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                        let props = p.properties.map(|p| p.user_properties).unwrap_or_default();
                        // Every outbox message carries a seq. The Last Will (`offline` on
                        // status) has none: rumqttd 0.20 delivers it to this subscriber
                        // while the publisher is still connected, so it is kept apart.
                        let seq = v["seq"].as_u64().unwrap_or(u64::MAX);
                        g.lock().unwrap().push((
                            String::from_utf8_lossy(&p.topic).into_owned(),
                            seq,
                            props,
                        ));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    });
    subscribed_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("subscribed");

    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let mut hub = hub(prefix, outbox.clone());
    // Committed before the publisher exists: it must replay them.
    for i in 0..150 {
        hub.emit(Event::ModelInstalled {
            model: "m".into(),
            version: i.to_string(),
        })
        .unwrap();
    }
    assert_eq!(outbox.len(), 150);
    let publisher = publisher(prefix, port, outbox.clone());
    hub.set_waker(publisher.waker());
    for i in 150..300 {
        hub.emit(Event::ModelInstalled {
            model: "m".into(),
            version: i.to_string(),
        })
        .unwrap();
    }
    wait_for("300 messages", Duration::from_secs(20), || {
        (got.lock().unwrap().len() >= 300).then_some(())
    });
    wait_for("the outbox to drain", Duration::from_secs(10), || {
        outbox.is_empty().then_some(())
    });
    let all = got.lock().unwrap();
    let (wills, got): (Vec<_>, Vec<_>) = all
        .iter()
        .cloned()
        .partition(|g| g.0 == "rd/dev1/status" && g.1 == u64::MAX);
    assert!(wills.len() < all.len(), "the events arrived");
    let seqs: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    assert!(got.iter().all(|g| g.0 == "rd/dev1/events"));
    let props: HashMap<&str, &str> = got[7]
        .2
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(props.get("schema"), Some(&"edgeinfer.events/1"));
    assert_eq!(props.get("model"), Some(&"m"));
    assert_eq!(props.get("version"), Some(&"7"));
    assert_eq!(
        publisher
            .stats()
            .acked
            .load(std::sync::atomic::Ordering::Relaxed),
        300
    );
    publisher.stop();
}
