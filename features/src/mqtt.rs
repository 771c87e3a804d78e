//! The MQTT subscription for feature updates pushed from the centre.
//!
//! At-least-once: QoS 1 with a persistent session and manual acks; a message is acked only
//! after its rows are committed to LMDB (or it is found bad: a bad payload is counted,
//! logged and acked, since redelivering it could never succeed). Redeliveries are harmless
//! because writes keep the newer row by event time.

use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

use crate::config::MqttConfig;
use crate::store::FeatureStore;
use crate::{update, FeatureError};

/// `mqtt://host:port` → (host, port).
pub fn parse_url(url: &str) -> Result<(String, u16), FeatureError> {
    let bad = || FeatureError::Config {
        key: "cache.mqtt.url",
        message: format!("{url:?} is not mqtt://host:port"),
    };
    let rest = url.strip_prefix("mqtt://").ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

/// Applies one message's payload; the error says why it was refused (nothing written).
pub fn apply_message(store: &FeatureStore, payload: &[u8]) -> Result<u64, FeatureError> {
    let m = store.metrics();
    m.mqtt_messages.fetch_add(1, Relaxed);
    let result = update::parse_payload(payload).and_then(|u| update::apply(store, &u));
    match result {
        Ok(o) => Ok(o.written),
        Err(e) => {
            m.mqtt_bad_payloads.fetch_add(1, Relaxed);
            Err(e)
        }
    }
}

/// A running subscriber thread; dropping it stops the thread.
pub struct Subscriber {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Starts the subscriber on its own thread with a small tokio runtime.
    pub fn spawn(store: FeatureStore, cfg: MqttConfig) -> Result<Subscriber, FeatureError> {
        let (host, port) = parse_url(&cfg.url)?;
        let (stop, rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("features-mqtt".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(run(store, cfg, host, port, rx));
            })
            .map_err(|e| FeatureError::io("features-mqtt thread", e))?;
        Ok(Subscriber {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn run(
    store: FeatureStore,
    cfg: MqttConfig,
    host: String,
    port: u16,
    mut stop: watch::Receiver<bool>,
) {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut events) = AsyncClient::new(opts, 64);
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            e = events.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Subscribe on every connect: cheap, and right even if the broker lost the session.
                if let Err(e) = client.try_subscribe(cfg.topic.clone(), QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "feature updates: subscribe failed");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                match apply_message(&store, &p.payload) {
                    Ok(n) => tracing::debug!(topic = %p.topic, rows = n, "feature update applied"),
                    Err(e) if e.kind() == crate::ErrorKind::MapFull => {
                        // Not acked: the broker redelivers once there is room (or on reconnect).
                        tracing::warn!(topic = %p.topic, error = %e, "feature update not applied");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(topic = %p.topic, error = %e, "feature update refused")
                    }
                }
                if let Err(e) = client.try_ack(&p) {
                    tracing::warn!(error = %e, "feature updates: ack failed");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "feature updates: MQTT connection lost; retrying");
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
}
