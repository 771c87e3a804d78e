//! The MQTT task: one tokio task owns the `rumqttc` v5 event loop and only moves messages
//! from the outbox to the broker. It sends in outbox order, maps each packet id to its
//! outbox sequence number from the event loop's `Outgoing::Publish` events (emitted in send
//! order), and deletes a message only when its PUBACK arrives. After any disconnect it
//! drops rumqttc's in-memory state (clean start) and replays the outbox from its oldest
//! message, so delivery is at least once, in order, and a reboot loses nothing. Reconnects
//! wait with decorrelated jitter (`Backoff`), so a fleet does not return in lockstep.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::clock::Clock;
use crate::config::BrokerAddr;
use crate::error::{Error, ErrorKind, Result};
use crate::messages::Topics;
use crate::outbox::Outbox;

/// Messages in flight (sent, PUBACK pending) at most.
const WINDOW: usize = 32;
/// Acknowledged messages are deleted in batches of this many (or when the window drains).
const DELETE_BATCH: usize = 16;

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub broker: BrokerAddr,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    /// PEM CA bundle, for `mqtts://`.
    pub tls_ca_pem: Option<Vec<u8>>,
    pub topics: Topics,
    pub message_expiry_s: u32,
    pub keep_alive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl PublisherConfig {
    fn mqtt_options(&self) -> MqttOptions {
        let mut o = base_options(
            &self.broker,
            &self.client_id,
            self.keep_alive,
            self.credentials.as_ref(),
            self.tls_ca_pem.as_deref(),
        );
        o.set_outgoing_inflight_upper_limit((WINDOW * 2) as u16);
        o.set_last_will(LastWill::new(
            self.topics.topic("status"),
            self.topics.offline_payload(),
            QoS::AtLeastOnce,
            true,
            None,
        ));
        o
    }
}

/// What both connections (this publisher and the Sparkplug node) set the same way: broker,
/// client id, keep-alive, credentials, TLS, and a clean start with no session expiry (the
/// outbox, not the broker session, holds what is unacknowledged; Sparkplug 3.0 requires
/// Clean Start and a Session Expiry Interval of 0 besides).
pub(crate) fn base_options(
    broker: &BrokerAddr,
    client_id: &str,
    keep_alive: Duration,
    credentials: Option<&(String, String)>,
    tls_ca_pem: Option<&[u8]>,
) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, &broker.host, broker.port);
    o.set_keep_alive(keep_alive);
    o.set_clean_start(true);
    o.set_session_expiry_interval(None);
    o.set_connection_timeout(5);
    if let Some((u, p)) = credentials {
        o.set_credentials(u, p);
    }
    if let Some(ca) = tls_ca_pem {
        o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
            ca: ca.to_vec(),
            alpn: None,
            client_auth: None,
        }));
    }
    o
}

/// What the task did, for `/metrics` and tests.
#[derive(Debug, Default, Serialize)]
pub struct PublisherStats {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// PUBACKs with a failure reason (not authorised, quota): deleted and counted.
    pub rejected: AtomicU64,
}

/// The running task's handle. Dropping it stops the task.
pub struct Publisher {
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    stats: Arc<PublisherStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Publisher {
    /// Starts the task on its own thread (a current-thread tokio runtime): the data path's
    /// cores and the HTTP runtime never share a scheduler with it. `on_connect` runs after
    /// each CONNACK (the hub appends a fresh `online` status there).
    pub fn spawn(
        cfg: PublisherConfig,
        outbox: Arc<Outbox>,
        clock: Arc<dyn Clock>,
        on_connect: Box<dyn Fn() + Send>,
    ) -> Result<Publisher> {
        let wake = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(PublisherStats::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorKind::Mqtt, format!("MQTT runtime: {e}")))?;
        let (w, s) = (wake.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("edgeinfer-mqtt".into())
            .spawn(move || rt.block_on(run(cfg, outbox, clock, w, stop_rx, s, on_connect)))
            .map_err(|e| Error::new(ErrorKind::Mqtt, format!("MQTT thread: {e}")))?;
        Ok(Publisher {
            wake,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// New messages are in the outbox.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn stats(&self) -> &Arc<PublisherStats> {
        &self.stats
    }

    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Stops the task and waits for it.
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

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The state of one connection.
#[derive(Default)]
struct Flight {
    /// Sent, packet id not yet known (in send order).
    unassigned: VecDeque<u64>,
    /// Packet id → outbox sequence number.
    by_pkid: HashMap<u16, u64>,
    /// Last sequence number handed to the client.
    cursor: Option<u64>,
    acked: Vec<u64>,
}

impl Flight {
    fn in_flight(&self) -> usize {
        self.unassigned.len() + self.by_pkid.len()
    }
}

async fn run(
    cfg: PublisherConfig,
    outbox: Arc<Outbox>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<PublisherStats>,
    on_connect: Box<dyn Fn() + Send>,
) {
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
    'connection: loop {
        if *stop.borrow() {
            return;
        }
        // A fresh client per connection: nothing of a dead session is retransmitted behind
        // the outbox's back, and the replay below is the only resend.
        let (client, mut el) = AsyncClient::new(cfg.mqtt_options(), WINDOW + 8);
        let mut f = Flight::default();
        let mut connected = false;
        loop {
            if connected {
                if let Err(e) = fill(&cfg, &outbox, &client, &mut f, &*clock, &stats) {
                    tracing::warn!("telemetry outbox read failed: {e}");
                }
            }
            tokio::select! {
                ev = el.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        backoff.reset();
                        stats.connected.store(true, Relaxed);
                        stats.connects.fetch_add(1, Relaxed);
                        on_connect();
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(seq) = f.unassigned.pop_front() {
                            f.by_pkid.insert(pkid, seq);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(seq) = f.by_pkid.remove(&ack.pkid) {
                            match ack.reason {
                                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                                    stats.acked.fetch_add(1, Relaxed);
                                }
                                r => {
                                    tracing::warn!("broker refused telemetry message {seq}: {r:?}");
                                    stats.rejected.fetch_add(1, Relaxed);
                                }
                            }
                            f.acked.push(seq);
                            if f.acked.len() >= DELETE_BATCH || f.in_flight() == 0 {
                                flush_acks(&outbox, &mut f);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        flush_acks(&outbox, &mut f);
                        stats.connected.store(false, Relaxed);
                        stats.connection_errors.fetch_add(1, Relaxed);
                        tracing::debug!("telemetry broker connection: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next_wait()) => {}
                            _ = stop.changed() => return,
                        }
                        continue 'connection;
                    }
                },
                _ = wake.notified() => {}
                _ = stop.changed() => {
                    flush_acks(&outbox, &mut f);
                    let _ = client.try_disconnect();
                    return;
                }
            }
        }
    }
}

fn flush_acks(outbox: &Outbox, f: &mut Flight) {
    if f.acked.is_empty() {
        return;
    }
    if let Err(e) = outbox.delete(&f.acked) {
        // Not deleted = sent again after the next reconnect: a duplicate, never a loss.
        tracing::warn!("telemetry outbox delete failed: {e}");
    }
    f.acked.clear();
}

/// Hands the next outbox messages to the client, up to the window.
fn fill(
    cfg: &PublisherConfig,
    outbox: &Outbox,
    client: &AsyncClient,
    f: &mut Flight,
    clock: &dyn Clock,
    stats: &PublisherStats,
) -> Result<()> {
    let room = WINDOW.saturating_sub(f.in_flight());
    if room == 0 {
        return Ok(());
    }
    let now = clock.now_ms();
    for m in outbox.next_after(f.cursor, room)? {
        // Expiry counts from when the message was made, not from when it finally leaves.
        let age_s = (now.saturating_sub(m.created_ms) / 1000) as u32;
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(cfg.message_expiry_s.saturating_sub(age_s).max(1)),
            user_properties: m.user_properties,
            content_type: Some("application/json".into()),
            ..PublishProperties::default()
        };
        match client.try_publish_with_properties(
            m.topic,
            QoS::AtLeastOnce,
            m.retain,
            m.payload,
            props,
        ) {
            Ok(()) => {
                f.unassigned.push_back(m.seq);
                f.cursor = Some(m.seq);
                stats.sent.fetch_add(1, Relaxed);
            }
            // The request channel is full: the rest goes on the next turn.
            Err(_) => break,
        }
    }
    Ok(())
}

// === impl Backoff ===

/// Reconnect waits with "decorrelated jitter" (AWS Architecture Blog, "Exponential Backoff
/// and Jitter"): each wait is uniform in `[min, 3 × the previous wait]`, capped at `max`;
/// the first is uniform in `[min, 3 × min]`, and a CONNACK starts over. Bounded to
/// `[min, max]` always; devices cut off by one broker outage spread their returns over the
/// whole range instead of reconnecting (and replaying their outboxes) in the same instant.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    last: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            last: min,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.last = self.min;
    }

    pub(crate) fn next_wait(&mut self) -> Duration {
        self.next_with(random_u64())
    }

    /// The next wait, `r` drawn uniformly from the `u64`s.
    fn next_with(&mut self, r: u64) -> Duration {
        let hi = self.last.saturating_mul(3).clamp(self.min, self.max);
        let span = (hi - self.min).as_nanos();
        // r / 2^64 of the span: uniform, and never past `hi`.
        let add = (span * r as u128) >> 64;
        self.last = self.min + Duration::from_nanos(add as u64);
        self.last
    }
}

/// A random number from the standard library's per-process random hash keys (each
/// `RandomState` takes fresh keys): no generator crate for one draw per reconnect.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn backoff_waits_stay_within_min_and_max_and_three_times_the_last() {
        let draws = [0, 1, u64::MAX / 3, u64::MAX / 2, u64::MAX - 1, u64::MAX];
        for &r in &draws {
            let mut b = Backoff::new(MIN, MAX);
            let mut last = MIN;
            for _ in 0..40 {
                let w = b.next_with(r);
                assert!(w >= MIN && w <= MAX, "{w:?} outside [{MIN:?}, {MAX:?}]");
                assert!(w <= (last * 3).min(MAX), "{w:?} above 3 × {last:?}");
                last = w;
            }
        }
        // The lowest draw waits the floor; the highest grows by three each time to the cap.
        let mut b = Backoff::new(MIN, MAX);
        assert_eq!(b.next_with(0), MIN);
        let mut b = Backoff::new(MIN, MAX);
        let w: Vec<Duration> = (0..6).map(|_| b.next_with(u64::MAX)).collect();
        assert!(w[0] > MIN * 3 - Duration::from_millis(1), "{w:?}");
        assert!(w[1] > MIN * 9 - Duration::from_millis(1), "{w:?}");
        assert!(w[5] > MAX - Duration::from_millis(1), "{w:?}");
        // A CONNACK starts over.
        b.reset();
        assert!(b.next_with(u64::MAX) <= MIN * 3);
        // max below min: the floor wins, never a zero wait.
        let mut b = Backoff::new(MIN, Duration::ZERO);
        assert_eq!(b.next_with(u64::MAX), MIN);
    }

    #[test]
    fn backoff_first_waits_are_spread_not_in_lockstep() {
        // 1,000 devices after one outage: their first waits cover [min, 3 × min].
        let waits: Vec<Duration> = (0..1000)
            .map(|_| Backoff::new(MIN, MAX).next_wait())
            .collect();
        assert!(waits.iter().all(|w| *w >= MIN && *w <= MIN * 3));
        let low = waits.iter().filter(|w| **w < MIN * 2).count();
        // Uniform: about half below the middle; 400..600 is over six sigmas wide.
        assert!((400..=600).contains(&low), "{low} of 1000 below 2 × min");
    }
}
