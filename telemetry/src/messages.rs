//! The message of each topic: topic name, JSON payload with its schema id, MQTT 5 user
//! properties. Payload shapes are specified by `docs/telemetry/<topic>.schema.json`.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::outbox::NewMessage;

/// Topic levels under `<prefix>/<device>/`.
pub const TOPICS: [&str; 6] = ["status", "latency", "drift", "accuracy", "gpu", "events"];

/// Schema id of a topic's payload (`edgeinfer.<topic>/<major>`).
pub fn schema_of(topic: &str) -> String {
    format!("edgeinfer.{topic}/1")
}

/// Builds messages for one device.
#[derive(Debug, Clone)]
pub struct Topics {
    pub prefix: String,
    pub device: String,
}

impl Topics {
    pub fn topic(&self, level: &str) -> String {
        format!("{}/{}/{}", self.prefix, self.device, level)
    }

    /// A message on `level` whose payload is `body` (an object) plus schema and device.
    pub fn message(
        &self,
        level: &str,
        body: &impl Serialize,
        model: Option<&str>,
        version: Option<&str>,
    ) -> NewMessage {
        let mut payload = match serde_json::to_value(body) {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                m
            }
            Err(e) => {
                let mut m = Map::new();
                m.insert("error".into(), e.to_string().into());
                m
            }
        };
        let schema = schema_of(level);
        payload.insert("schema".into(), schema.clone().into());
        payload.insert("device".into(), self.device.clone().into());
        let mut user_properties = vec![("schema".to_owned(), schema)];
        if let Some(m) = model {
            user_properties.push(("model".into(), m.into()));
        }
        if let Some(v) = version {
            user_properties.push(("version".into(), v.into()));
        }
        NewMessage {
            topic: self.topic(level),
            retain: level == "status",
            user_properties,
            payload,
        }
    }

    /// The Last Will: the broker publishes it, retained, when the connection dies.
    pub fn offline_payload(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schema": schema_of("status"),
            "device": self.device,
            "state": "offline",
        }))
        .unwrap_or_default()
    }
}

/// The `status` body.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: &'static str,
    pub daemon_version: String,
    pub uptime_s: u64,
    pub models: Vec<ModelState>,
    pub outbox: OutboxState,
    /// Per model under a rollout directive, the rollout crate's `RolloutState` (arms
    /// served, candidates recorded bad). JSON here: telemetry does not know rollouts.
    /// Retained with the status, so an operator subscribing late still sees a rollback.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollout: Vec<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelState {
    pub name: String,
    pub version: String,
    pub backend: String,
    pub default: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxState {
    pub messages: u64,
    pub bytes: u64,
    pub dropped: u64,
}

/// The `drift` body.
#[derive(Debug, Clone, Serialize)]
pub struct DriftMessage<'a> {
    pub model: &'a str,
    pub version: &'a str,
    /// The A/B arm the version served in when the window closed.
    pub arm: &'a str,
    #[serde(flatten)]
    pub report: &'a crate::drift::DriftReport,
}

/// The `accuracy` body.
#[derive(Debug, Clone, Serialize)]
pub struct AccuracyMessage<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub arm: &'a str,
    #[serde(flatten)]
    pub report: &'a crate::accuracy::AccuracyReport,
}

/// The `gpu` body.
#[derive(Debug, Clone, Serialize)]
pub struct GpuMessage<'a> {
    pub present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    pub gpus: &'a [crate::gpu::GpuReading],
    /// Where the engine runs now: `gpu` or `cpu`.
    pub engine: &'static str,
}
