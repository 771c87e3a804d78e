//! The optional Sparkplug B profile: the box as a Sparkplug edge node and each served model
//! as one of its devices, on a second MQTT connection beside the JSON topics
//! (`docs/telemetry.md`, "Sparkplug B").
//!
//! - [`proto`]: the Sparkplug B payload as prost messages written by hand, field for field
//!   as `telemetry/proto/sparkplug_b.proto` (Eclipse Tahu's numbering); no protoc at build.
//! - [`SparkplugFeed`]: what the control thread calls; it turns latency, drift and accuracy
//!   reports into DDATA records committed to the Sparkplug outbox (the same LMDB outbox type
//!   as the JSON topics, in its own directory).
//! - [`SparkplugNode`]: the MQTT task. Before each CONNECT it takes the next bdSeq from the
//!   outbox (durable, so a restart continues it) and registers NDEATH with that bdSeq as the
//!   Will; after CONNACK it subscribes to NCMD, publishes NBIRTH (seq 0, same bdSeq) and a
//!   DBIRTH per device, then DDATA from the outbox in order. seq is per session, assigned
//!   when a message is sent (0 at NBIRTH, +1 per message, 255 wraps to 0): a replayed DDATA
//!   gets the seq of the session that sends it, keeps its original metric timestamps, and is
//!   marked `is_historical` when it was made before that session began.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use serde::Serialize;
use serde_json::{Map, Value as Json};
use tokio::sync::{watch, Notify};

use crate::accuracy::AccuracyReport;
use crate::clock::Clock;
use crate::config::BrokerAddr;
use crate::drift::{DriftReport, Level};
use crate::error::{Error, ErrorKind, Result};
use crate::latency::LatencyReport;
use crate::outbox::{NewMessage, Outbox, StoredMessage};
use crate::publisher::{base_options, Backoff};

/// The Sparkplug B payload (Tahu's `org.eclipse.tahu.protobuf.Payload`), the fields edgeinfer
/// uses. Tags must stay equal to `telemetry/proto/sparkplug_b.proto`.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Payload {
        #[prost(uint64, optional, tag = "1")]
        pub timestamp: Option<u64>,
        #[prost(message, repeated, tag = "2")]
        pub metrics: Vec<Metric>,
        #[prost(uint64, optional, tag = "3")]
        pub seq: Option<u64>,
        #[prost(string, optional, tag = "4")]
        pub uuid: Option<String>,
        #[prost(bytes = "vec", optional, tag = "5")]
        pub body: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(uint64, optional, tag = "2")]
        pub alias: Option<u64>,
        #[prost(uint64, optional, tag = "3")]
        pub timestamp: Option<u64>,
        #[prost(uint32, optional, tag = "4")]
        pub datatype: Option<u32>,
        #[prost(bool, optional, tag = "5")]
        pub is_historical: Option<bool>,
        #[prost(bool, optional, tag = "6")]
        pub is_transient: Option<bool>,
        #[prost(bool, optional, tag = "7")]
        pub is_null: Option<bool>,
        #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15, 16")]
        pub value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(uint32, tag = "10")]
        IntValue(u32),
        #[prost(uint64, tag = "11")]
        LongValue(u64),
        #[prost(float, tag = "12")]
        FloatValue(f32),
        #[prost(double, tag = "13")]
        DoubleValue(f64),
        #[prost(bool, tag = "14")]
        BooleanValue(bool),
        #[prost(string, tag = "15")]
        StringValue(String),
        #[prost(bytes = "vec", tag = "16")]
        BytesValue(Vec<u8>),
    }

    /// `DataType` values edgeinfer uses.
    pub mod data_type {
        pub const INT64: u32 = 4;
        pub const UINT64: u32 = 8;
        pub const DOUBLE: u32 = 10;
        pub const BOOLEAN: u32 = 11;
        pub const STRING: u32 = 12;
    }
}

use proto::data_type::{BOOLEAN, DOUBLE, INT64, STRING, UINT64};
use proto::{Metric, Payload, Value};

/// The namespace element of every Sparkplug B topic.
pub const NAMESPACE: &str = "spBv1.0";
/// The node metric a host writes `true` to (NCMD) to ask for NBIRTH and every DBIRTH again.
pub const REBIRTH: &str = "Node Control/Rebirth";
/// Alias of [`REBIRTH`] (a host may address it by alias after NBIRTH).
const REBIRTH_ALIAS: u64 = 1;
/// A device's aliases are `(device index + 1) * ALIAS_STRIDE + metric index`: unique across
/// the node, stable for the life of the process.
const ALIAS_STRIDE: u64 = 256;
/// Requests queued in the client at most (births plus DDATA).
const CHANNEL: usize = 256;
/// DDATA handed to the client per turn at most.
const WINDOW: usize = 64;
/// Written DDATA records are deleted from the outbox in batches of this many.
const DELETE_BATCH: usize = 32;

/// Every metric of a model device, in alias order: (name, Sparkplug datatype). DBIRTH
/// declares them all; a DDATA carries the ones its report has, by alias only.
pub const DEVICE_METRICS: [(&str, u32); 19] = [
    ("version", STRING),
    ("arm", STRING),
    ("latency/count", UINT64),
    ("latency/errors", UINT64),
    ("latency/p50_us", UINT64),
    ("latency/p90_us", UINT64),
    ("latency/p99_us", UINT64),
    ("latency/max_us", UINT64),
    ("latency/queue_p99_us", UINT64),
    ("latency/compute_p99_us", UINT64),
    ("drift/rows", UINT64),
    ("drift/psi_max", DOUBLE),
    ("drift/js_max", DOUBLE),
    ("drift/alerts", UINT64),
    ("accuracy/metric", STRING),
    ("accuracy/value", DOUBLE),
    ("accuracy/baseline", DOUBLE),
    ("accuracy/relative_drop", DOUBLE),
    ("accuracy/alert", BOOLEAN),
];

/// The topics of one edge node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTopics {
    pub group: String,
    pub edge_node: String,
}

impl NodeTopics {
    /// `spBv1.0/<group>/<kind>/<edge_node>[/<device>]`.
    pub fn topic(&self, kind: &str, device: Option<&str>) -> String {
        match device {
            Some(d) => format!("{NAMESPACE}/{}/{kind}/{}/{d}", self.group, self.edge_node),
            None => format!("{NAMESPACE}/{}/{kind}/{}", self.group, self.edge_node),
        }
    }
}

/// A model name as a `<device_id>`: one topic level (`/`, `+`, `#` become `_`).
pub fn device_id(model: &str) -> String {
    let d = model.replace(['/', '+', '#'], "_");
    if d.is_empty() {
        "_".into()
    } else {
        d
    }
}

// === payloads ===

fn metric(name: Option<&str>, alias: Option<u64>, datatype: u32, value: Option<Value>) -> Metric {
    Metric {
        name: name.map(str::to_owned),
        alias,
        datatype: Some(datatype),
        is_null: value.is_none().then_some(true),
        value,
        ..Metric::default()
    }
}

fn bd_seq_metric(bd_seq: u64) -> Metric {
    metric(Some("bdSeq"), None, INT64, Some(Value::LongValue(bd_seq)))
}

/// NDEATH: only the bdSeq metric and no seq (tck-id-topics-ndeath-payload, -seq).
pub fn ndeath(bd_seq: u64, now_ms: u64) -> Payload {
    Payload {
        timestamp: Some(now_ms),
        metrics: vec![bd_seq_metric(bd_seq)],
        ..Payload::default()
    }
}

/// NBIRTH: seq 0, the Will's bdSeq and `Node Control/Rebirth = false`.
pub fn nbirth(bd_seq: u64, now_ms: u64) -> Payload {
    let mut rebirth = metric(
        Some(REBIRTH),
        Some(REBIRTH_ALIAS),
        BOOLEAN,
        Some(Value::BooleanValue(false)),
    );
    rebirth.timestamp = Some(now_ms);
    let mut bd = bd_seq_metric(bd_seq);
    bd.timestamp = Some(now_ms);
    Payload {
        timestamp: Some(now_ms),
        metrics: vec![bd, rebirth],
        seq: Some(0),
        ..Payload::default()
    }
}

/// The value of a stored JSON field as the metric's datatype; `None` = null.
fn value_of(datatype: u32, v: &Json) -> Option<Value> {
    match datatype {
        UINT64 => v.as_u64().map(Value::LongValue),
        INT64 => v.as_i64().map(|i| Value::LongValue(i as u64)),
        DOUBLE => v.as_f64().map(Value::DoubleValue),
        BOOLEAN => v.as_bool().map(Value::BooleanValue),
        STRING => v.as_str().map(|s| Value::StringValue(s.to_owned())),
        _ => None,
    }
}

/// DBIRTH of a device: every metric by name and alias, with its latest value (null when none
/// has been reported yet).
pub fn dbirth(base: u64, latest: &Map<String, Json>, seq: u8, now_ms: u64) -> Payload {
    let metrics = DEVICE_METRICS
        .iter()
        .enumerate()
        .map(|(i, (name, dt))| {
            let v = latest.get(*name).and_then(|v| value_of(*dt, v));
            let mut m = metric(Some(name), Some(base + i as u64), *dt, v);
            m.timestamp = Some(now_ms);
            m
        })
        .collect();
    Payload {
        timestamp: Some(now_ms),
        metrics,
        seq: Some(seq as u64),
        ..Payload::default()
    }
}

/// DDATA of one stored record: the metrics it names, by alias only, stamped with when the
/// record was made.
pub fn ddata(base: u64, record: &StoredRecord, historical: bool, seq: u8, now_ms: u64) -> Payload {
    let metrics = DEVICE_METRICS
        .iter()
        .enumerate()
        .filter_map(|(i, (name, dt))| {
            let v = record.values.get(*name)?;
            let mut m = metric(None, Some(base + i as u64), *dt, value_of(*dt, v));
            m.timestamp = Some(record.created_ms);
            m.is_historical = historical.then_some(true);
            Some(m)
        })
        .collect();
    Payload {
        timestamp: Some(now_ms),
        metrics,
        seq: Some(seq as u64),
        ..Payload::default()
    }
}

/// Whether an NCMD payload asks for a rebirth. A payload that does not decode is an error
/// (counted by the node), never a panic.
pub fn is_rebirth_command(bytes: &[u8]) -> Result<bool> {
    let p = Payload::decode(bytes).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("NCMD is not a Sparkplug B payload: {e}"),
        )
    })?;
    Ok(p.metrics.iter().any(|m| {
        (m.name.as_deref() == Some(REBIRTH) || m.alias == Some(REBIRTH_ALIAS))
            && m.value == Some(Value::BooleanValue(true))
    }))
}

// === the control thread's side ===

/// The model devices the node births, in registration order (the order gives the aliases).
#[derive(Debug, Default)]
pub struct Devices {
    names: Mutex<Vec<String>>,
    gen: AtomicU64,
}

impl Devices {
    /// Registers a device (idempotent); returns its alias base.
    pub fn add(&self, device: &str) -> u64 {
        let mut n = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let i = match n.iter().position(|d| d == device) {
            Some(i) => i,
            None => {
                n.push(device.to_owned());
                self.gen.fetch_add(1, Relaxed);
                n.len() - 1
            }
        };
        (i as u64 + 1) * ALIAS_STRIDE
    }

    fn snapshot(&self) -> (u64, Vec<String>) {
        let n = self.names.lock().unwrap_or_else(|e| e.into_inner());
        (self.gen.load(Relaxed), n.clone())
    }
}

/// A DDATA record as stored: its device and metric values by name.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub device: String,
    pub created_ms: u64,
    pub values: Map<String, Json>,
}

impl StoredRecord {
    fn from_stored(m: &StoredMessage) -> Result<StoredRecord> {
        let values: Map<String, Json> = serde_json::from_slice(&m.payload).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("Sparkplug record {}: {e}", m.seq),
            )
        })?;
        Ok(StoredRecord {
            device: m.topic.clone(),
            created_ms: m.created_ms,
            values,
        })
    }
}

/// Turns reports into DDATA records in the Sparkplug outbox; cheap to clone.
#[derive(Clone)]
pub struct SparkplugFeed {
    outbox: Arc<Outbox>,
    devices: Arc<Devices>,
    wake: Arc<Notify>,
}

fn record(device: &str, values: Map<String, Json>) -> NewMessage {
    NewMessage {
        topic: device.to_owned(),
        retain: false,
        user_properties: Vec::new(),
        payload: values,
    }
}

fn max_of(r: &DriftReport, f: impl Fn(&crate::drift::FeatureDrift) -> f64) -> Json {
    let m = r
        .features
        .iter()
        .chain(&r.outputs)
        .map(f)
        .fold(f64::NAN, f64::max);
    // NaN (no feature) becomes JSON null, a Sparkplug null.
    serde_json::Number::from_f64(m).map_or(Json::Null, Json::Number)
}

fn num(x: f64) -> Json {
    serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number)
}

impl SparkplugFeed {
    /// A model is served (DBIRTH on the next turn, and after every connect).
    pub fn add_device(&self, model: &str) {
        self.devices.add(&device_id(model));
        self.wake.notify_one();
    }

    /// One interval's latency reports and closed drift windows, in one commit.
    pub fn tick(
        &self,
        latency: &[LatencyReport],
        drift: &[(String, String, DriftReport)],
    ) -> Result<()> {
        let mut batch = Vec::with_capacity(latency.len() + drift.len());
        for r in latency {
            let mut v = Map::new();
            v.insert("version".into(), r.version.clone().into());
            v.insert("arm".into(), r.arm.clone().into());
            v.insert("latency/count".into(), r.count.into());
            v.insert("latency/errors".into(), r.count.saturating_sub(r.ok).into());
            v.insert("latency/p50_us".into(), r.p50_us.into());
            v.insert("latency/p90_us".into(), r.p90_us.into());
            v.insert("latency/p99_us".into(), r.p99_us.into());
            v.insert("latency/max_us".into(), r.max_us.into());
            v.insert("latency/queue_p99_us".into(), r.queue_p99_us.into());
            v.insert("latency/compute_p99_us".into(), r.compute_p99_us.into());
            batch.push(record(&device_id(&r.model), v));
        }
        for (model, version, r) in drift {
            let mut v = Map::new();
            v.insert("version".into(), version.clone().into());
            v.insert("drift/rows".into(), r.rows.into());
            v.insert("drift/psi_max".into(), max_of(r, |f| f.psi));
            v.insert("drift/js_max".into(), max_of(r, |f| f.js));
            let alerts = r
                .features
                .iter()
                .chain(&r.outputs)
                .filter(|f| f.level == Level::Alert)
                .count() as u64;
            v.insert("drift/alerts".into(), alerts.into());
            batch.push(record(&device_id(model), v));
        }
        self.commit(batch)
    }

    /// A closed accuracy window of (version, arm).
    pub fn accuracy(
        &self,
        model: &str,
        version: &str,
        arm: &str,
        r: &AccuracyReport,
    ) -> Result<()> {
        let mut v = Map::new();
        v.insert("version".into(), version.into());
        v.insert("arm".into(), arm.into());
        v.insert("accuracy/metric".into(), r.metric.as_str().into());
        v.insert("accuracy/value".into(), num(r.value));
        v.insert("accuracy/baseline".into(), num(r.baseline));
        v.insert("accuracy/relative_drop".into(), num(r.relative_drop));
        v.insert("accuracy/alert".into(), r.alert.into());
        self.commit(vec![record(&device_id(model), v)])
    }

    fn commit(&self, batch: Vec<NewMessage>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        for m in &batch {
            self.devices.add(&m.topic);
        }
        // Drops by the outbox's bounds are counted in its stats (`/metrics`); the JSON
        // profile's `outbox_overflow` event does not cover this outbox.
        self.outbox.append(batch)?;
        self.wake.notify_one();
        Ok(())
    }
}

// === the MQTT task ===

/// How the node reaches the broker and names itself.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub broker: BrokerAddr,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub tls_ca_pem: Option<Vec<u8>>,
    pub topics: NodeTopics,
    pub keep_alive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl NodeConfig {
    fn mqtt_options(&self, bd_seq: u64, now_ms: u64) -> MqttOptions {
        let mut o = base_options(
            &self.broker,
            &self.client_id,
            self.keep_alive,
            self.credentials.as_ref(),
            self.tls_ca_pem.as_deref(),
        );
        // The Will: QoS 1, not retained (tck-id-message-flow-edge-node-birth-publish-will-*).
        o.set_last_will(LastWill::new(
            self.topics.topic("NDEATH", None),
            ndeath(bd_seq, now_ms).encode_to_vec(),
            QoS::AtLeastOnce,
            false,
            None,
        ));
        o
    }
}

/// What the node did, for `/metrics` and tests.
#[derive(Debug, Default, Serialize)]
pub struct NodeStats {
    pub connected: AtomicBool,
    /// CONNACKs received.
    pub connects: AtomicU64,
    /// The bdSeq of the latest CONNECT.
    pub bd_seq: AtomicU64,
    pub nbirths: AtomicU64,
    pub dbirths: AtomicU64,
    pub ddata: AtomicU64,
    /// DDATA records that did not decode (deleted, never sent).
    pub corrupt: AtomicU64,
    /// NCMD payloads that did not decode.
    pub bad_commands: AtomicU64,
}

/// The running node; dropping it publishes NDEATH, disconnects and stops the task.
pub struct SparkplugNode {
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    stats: Arc<NodeStats>,
    feed: SparkplugFeed,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SparkplugNode {
    /// Starts the task on its own thread (a current-thread tokio runtime), like the JSON
    /// publisher.
    pub fn spawn(
        cfg: NodeConfig,
        outbox: Arc<Outbox>,
        clock: Arc<dyn Clock>,
    ) -> Result<SparkplugNode> {
        let wake = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(NodeStats::default());
        let devices = Arc::new(Devices::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorKind::Mqtt, format!("Sparkplug runtime: {e}")))?;
        let task = Task {
            cfg,
            outbox: outbox.clone(),
            clock,
            devices: devices.clone(),
            wake: wake.clone(),
            stats: stats.clone(),
            latest: BTreeMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("edgeinfer-sparkplug".into())
            .spawn(move || rt.block_on(task.run(stop_rx)))
            .map_err(|e| Error::new(ErrorKind::Mqtt, format!("Sparkplug thread: {e}")))?;
        let feed = SparkplugFeed {
            outbox,
            devices,
            wake: wake.clone(),
        };
        Ok(SparkplugNode {
            wake,
            stop,
            stats,
            feed,
            thread: Some(thread),
        })
    }

    pub fn feed(&self) -> SparkplugFeed {
        self.feed.clone()
    }

    pub fn stats(&self) -> &Arc<NodeStats> {
        &self.stats
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Publishes NDEATH, disconnects and waits for the task.
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

impl Drop for SparkplugNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One MQTT session (CONNACK to disconnect): seq and which devices have a DBIRTH in it.
struct Session {
    seq: u8,
    started_ms: u64,
    devices_gen: u64,
    born: BTreeSet<String>,
}

impl Session {
    fn next_seq(&mut self) -> u8 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }
}

struct Task {
    cfg: NodeConfig,
    outbox: Arc<Outbox>,
    clock: Arc<dyn Clock>,
    devices: Arc<Devices>,
    wake: Arc<Notify>,
    stats: Arc<NodeStats>,
    /// The latest live values per device, for the next DBIRTH (kept across sessions).
    latest: BTreeMap<String, Map<String, Json>>,
}

/// Publishes in a session; every call queues one Outgoing::Publish, so `sent` stays aligned.
struct Conn<'a> {
    client: &'a AsyncClient,
    /// Per queued publish, in order: the outbox record it carries (DDATA) or none (births).
    sent: &'a mut VecDeque<Option<u64>>,
}

impl Conn<'_> {
    fn publish(&mut self, topic: String, payload: &Payload, record: Option<u64>) -> bool {
        // QoS 0, not retained: NBIRTH, DBIRTH and DDATA (tck-id-topics-*-mqtt).
        let ok = self
            .client
            .try_publish(topic, QoS::AtMostOnce, false, payload.encode_to_vec())
            .is_ok();
        if ok {
            self.sent.push_back(record);
        }
        ok
    }
}

impl Task {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        // The JSON profile's decorrelated jitter: a fleet cut off by one outage does not
        // return (and birth) in lockstep.
        let mut backoff = Backoff::new(self.cfg.reconnect_min, self.cfg.reconnect_max);
        'connection: loop {
            if *stop.borrow() {
                return;
            }
            // A bdSeq per CONNECT packet, durable before the packet leaves
            // (tck-id-topics-nbirth-bdseq-increment; 255 wraps to 0).
            let bd_seq = match self.outbox.take_counter("bd_seq") {
                Ok(v) => v % 256,
                Err(e) => {
                    tracing::warn!("Sparkplug bdSeq: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_wait()) => {}
                        _ = stop.changed() => return,
                    }
                    continue 'connection;
                }
            };
            self.stats.bd_seq.store(bd_seq, Relaxed);
            let opts = self.cfg.mqtt_options(bd_seq, self.clock.now_ms());
            let (client, mut el) = AsyncClient::new(opts, CHANNEL);
            let mut session: Option<Session> = None;
            let mut sent = VecDeque::new();
            let mut written = Vec::new();
            let mut cursor = None;
            loop {
                if let Some(s) = session.as_mut() {
                    let mut c = Conn {
                        client: &client,
                        sent: &mut sent,
                    };
                    self.birth_new_devices(&mut c, s);
                    if let Err(e) = self.fill(&mut c, s, &mut cursor) {
                        tracing::warn!("Sparkplug outbox read failed: {e}");
                    }
                }
                tokio::select! {
                    ev = el.poll() => match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            backoff.reset();
                            self.stats.connected.store(true, Relaxed);
                            self.stats.connects.fetch_add(1, Relaxed);
                            // NCMD before NBIRTH (tck-id-message-flow-edge-node-ncmd-subscribe).
                            let _ = client.try_subscribe(
                                self.cfg.topics.topic("NCMD", None),
                                QoS::AtLeastOnce,
                            );
                            let mut s = Session {
                                seq: 0,
                                started_ms: self.clock.now_ms(),
                                devices_gen: u64::MAX,
                                born: BTreeSet::new(),
                            };
                            let mut c = Conn { client: &client, sent: &mut sent };
                            self.birth(&mut c, &mut s, bd_seq);
                            session = Some(s);
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                            if let Some(Some(seq)) = sent.pop_front() {
                                // QoS 0 has no PUBACK: a DDATA leaves the outbox once it is
                                // written to the connection.
                                written.push(seq);
                            }
                            if written.len() >= DELETE_BATCH || sent.is_empty() {
                                self.delete(&mut written);
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if p.topic == self.cfg.topics.topic("NCMD", None).as_bytes() {
                                match is_rebirth_command(&p.payload) {
                                    Ok(true) => {
                                        if let Some(s) = session.as_mut() {
                                            let mut c = Conn { client: &client, sent: &mut sent };
                                            self.birth(&mut c, s, bd_seq);
                                        }
                                    }
                                    Ok(false) => {}
                                    Err(e) => {
                                        self.stats.bad_commands.fetch_add(1, Relaxed);
                                        tracing::warn!("{e}");
                                    }
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.delete(&mut written);
                            self.stats.connected.store(false, Relaxed);
                            tracing::debug!("Sparkplug broker connection: {e}");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff.next_wait()) => {}
                                _ = stop.changed() => return,
                            }
                            continue 'connection;
                        }
                    },
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => {
                        self.delete(&mut written);
                        if session.is_some() {
                            self.goodbye(&client, &mut el, bd_seq).await;
                        }
                        return;
                    }
                }
            }
        }
    }

    /// NBIRTH (seq 0) and a DBIRTH for every registered device: after CONNACK and on a
    /// rebirth command.
    fn birth(&mut self, c: &mut Conn<'_>, s: &mut Session, bd_seq: u64) {
        let now = self.clock.now_ms();
        s.seq = 0;
        s.born.clear();
        s.devices_gen = u64::MAX;
        let seq = s.next_seq();
        debug_assert_eq!(seq, 0);
        if c.publish(
            self.cfg.topics.topic("NBIRTH", None),
            &nbirth(bd_seq, now),
            None,
        ) {
            self.stats.nbirths.fetch_add(1, Relaxed);
        }
        self.birth_new_devices(c, s);
    }

    fn birth_new_devices(&mut self, c: &mut Conn<'_>, s: &mut Session) {
        // Checked on every turn of the loop: no lock or copy unless a device was added.
        if self.devices.gen.load(Relaxed) == s.devices_gen {
            return;
        }
        let (gen, names) = self.devices.snapshot();
        let mut all = true;
        for (i, d) in names.iter().enumerate() {
            if !s.born.contains(d) {
                all &= self.dbirth(c, s, d, (i as u64 + 1) * ALIAS_STRIDE);
            }
        }
        if all {
            s.devices_gen = gen;
        }
    }

    fn dbirth(&mut self, c: &mut Conn<'_>, s: &mut Session, device: &str, base: u64) -> bool {
        let empty = Map::new();
        let latest = self.latest.get(device).unwrap_or(&empty);
        let seq = s.seq;
        let p = dbirth(base, latest, seq, self.clock.now_ms());
        if !c.publish(self.cfg.topics.topic("DBIRTH", Some(device)), &p, None) {
            return false;
        }
        s.next_seq();
        s.born.insert(device.to_owned());
        self.stats.dbirths.fetch_add(1, Relaxed);
        true
    }

    /// DDATA for the next outbox records, each after its device's DBIRTH.
    fn fill(&mut self, c: &mut Conn<'_>, s: &mut Session, cursor: &mut Option<u64>) -> Result<()> {
        let room = WINDOW.min(CHANNEL.saturating_sub(c.sent.len() + 8));
        if room == 0 {
            return Ok(());
        }
        let mut corrupt = Vec::new();
        for m in self.outbox.next_after(*cursor, room)? {
            let r = match StoredRecord::from_stored(&m) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("{e}");
                    self.stats.corrupt.fetch_add(1, Relaxed);
                    corrupt.push(m.seq);
                    *cursor = Some(m.seq);
                    continue;
                }
            };
            let base = self.devices.add(&r.device);
            if !s.born.contains(&r.device) && !self.dbirth(c, s, &r.device, base) {
                break;
            }
            let historical = r.created_ms < s.started_ms;
            let p = ddata(base, &r, historical, s.seq, self.clock.now_ms());
            if !c.publish(
                self.cfg.topics.topic("DDATA", Some(&r.device)),
                &p,
                Some(m.seq),
            ) {
                break;
            }
            s.next_seq();
            *cursor = Some(m.seq);
            self.stats.ddata.fetch_add(1, Relaxed);
            if !historical {
                let latest = self.latest.entry(r.device).or_default();
                for (k, v) in r.values {
                    if DEVICE_METRICS.iter().any(|(n, _)| *n == k) {
                        latest.insert(k, v);
                    }
                }
            }
        }
        if !corrupt.is_empty() {
            self.outbox.delete(&corrupt)?;
        }
        Ok(())
    }

    fn delete(&self, written: &mut Vec<u64>) {
        if written.is_empty() {
            return;
        }
        if let Err(e) = self.outbox.delete(written) {
            // Not deleted = sent again after the next reconnect, marked historical.
            tracing::warn!("Sparkplug outbox delete failed: {e}");
        }
        written.clear();
    }

    /// An intentional disconnect: NDEATH with this session's bdSeq (a normal DISCONNECT makes
    /// the broker discard the Will), then DISCONNECT; bounded so a dead broker cannot hold
    /// the daemon's shutdown.
    async fn goodbye(&self, client: &AsyncClient, el: &mut rumqttc::v5::EventLoop, bd_seq: u64) {
        let death = ndeath(bd_seq, self.clock.now_ms()).encode_to_vec();
        if client
            .try_publish(
                self.cfg.topics.topic("NDEATH", None),
                QoS::AtLeastOnce,
                false,
                death,
            )
            .is_err()
        {
            return;
        }
        let acked = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if acked && client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    match el.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        self.stats.connected.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes a protobuf decoder sees: the NDEATH of bdSeq 3 at t = 1000 ms, worked out by
    /// hand from the field numbers (1: timestamp varint, 2: metric, in it 1: name, 4:
    /// datatype, 11: long_value).
    #[test]
    fn ndeath_encodes_to_the_tahu_field_numbers() {
        let bytes = ndeath(3, 1000).encode_to_vec();
        let metric = [
            &[0x0a, 5][..],
            b"bdSeq",
            &[0x20, 4], // datatype = Int64
            &[0x58, 3], // long_value (field 11, varint) = 3
        ]
        .concat();
        let golden = [
            &[0x08, 0xe8, 0x07][..], // timestamp = 1000
            &[0x12, metric.len() as u8],
            &metric,
        ]
        .concat();
        assert_eq!(bytes, golden);
        let back = Payload::decode(&bytes[..]).unwrap();
        assert_eq!(back.seq, None, "NDEATH carries no seq");
        assert_eq!(back.metrics[0].value, Some(Value::LongValue(3)));
    }

    #[test]
    fn births_and_data_carry_seq_names_on_birth_and_aliases_on_data() {
        let nb = nbirth(7, 5);
        assert_eq!(nb.seq, Some(0));
        assert_eq!(nb.metrics[0].name.as_deref(), Some("bdSeq"));
        assert_eq!(nb.metrics[0].value, Some(Value::LongValue(7)));
        assert_eq!(nb.metrics[1].name.as_deref(), Some(REBIRTH));
        assert_eq!(nb.metrics[1].value, Some(Value::BooleanValue(false)));

        let db = dbirth(256, &Map::new(), 1, 5);
        assert_eq!(db.metrics.len(), DEVICE_METRICS.len());
        assert!(db
            .metrics
            .iter()
            .all(|m| m.is_null == Some(true) && m.name.is_some()));
        assert_eq!(db.metrics[6].alias, Some(256 + 6));

        let mut values = Map::new();
        values.insert("latency/p99_us".into(), 420u64.into());
        values.insert("drift/psi_max".into(), Json::Null);
        values.insert("seq".into(), 9u64.into()); // the outbox's own key: not a metric
        let r = StoredRecord {
            device: "m".into(),
            created_ms: 4,
            values,
        };
        let dd = ddata(512, &r, true, 255, 6);
        assert_eq!(dd.seq, Some(255));
        assert_eq!(dd.metrics.len(), 2);
        assert!(dd
            .metrics
            .iter()
            .all(|m| m.name.is_none() && m.timestamp == Some(4) && m.is_historical == Some(true)));
        assert_eq!(dd.metrics[0].alias, Some(512 + 6));
        assert_eq!(dd.metrics[0].value, Some(Value::LongValue(420)));
        assert_eq!(dd.metrics[1].is_null, Some(true));
    }

    #[test]
    fn rebirth_commands_decode_and_garbage_is_an_error() {
        let cmd = Payload {
            timestamp: Some(1),
            metrics: vec![metric(
                Some(REBIRTH),
                None,
                BOOLEAN,
                Some(Value::BooleanValue(true)),
            )],
            ..Payload::default()
        };
        assert!(is_rebirth_command(&cmd.encode_to_vec()).unwrap());
        assert!(!is_rebirth_command(&nbirth(0, 1).encode_to_vec()).unwrap());
        let e = is_rebirth_command(&[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn devices_keep_their_alias_base_and_ids_are_one_topic_level() {
        let d = Devices::default();
        assert_eq!(d.add("a"), 256);
        assert_eq!(d.add("b"), 512);
        assert_eq!(d.add("a"), 256);
        assert_eq!(device_id("vision/v2+x#"), "vision_v2_x_");
        let t = NodeTopics {
            group: "g".into(),
            edge_node: "e".into(),
        };
        assert_eq!(t.topic("NBIRTH", None), "spBv1.0/g/NBIRTH/e");
        assert_eq!(t.topic("DDATA", Some("m")), "spBv1.0/g/DDATA/e/m");
    }
}
