//! The events the daemon reports on `<prefix>/<device>/events`: model lifecycle, engine
//! fallback, drift and accuracy alerts, GPU failover, outbox overflow.

use serde::Serialize;

/// One event. Serialised with `type` as the tag (see `docs/telemetry/events.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    ModelInstalled {
        model: String,
        version: String,
    },
    ModelRejected {
        model: String,
        version: String,
        reason: String,
    },
    ModelSwapped {
        model: String,
        from: String,
        to: String,
    },
    ModelRolledBack {
        model: String,
        from: String,
        to: String,
        reason: String,
    },
    EngineFallback {
        model: String,
        version: String,
        from: String,
        to: String,
        reason: String,
    },
    DriftAlert {
        model: String,
        version: String,
        features: Vec<String>,
    },
    AccuracyAlert {
        model: String,
        version: String,
        arm: String,
        metric: String,
        value: f64,
        baseline: f64,
        relative_drop: f64,
    },
    GpuUnhealthy {
        reason: String,
    },
    GpuRecovered {},
    OutboxOverflow {
        dropped_by_age: u64,
        dropped_by_bytes: u64,
        dropped_too_large: u64,
    },
}

impl Event {
    /// The model and version the event is about, for the MQTT user properties.
    pub fn subject(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Event::ModelInstalled { model, version }
            | Event::ModelRejected { model, version, .. }
            | Event::EngineFallback { model, version, .. }
            | Event::DriftAlert { model, version, .. }
            | Event::AccuracyAlert { model, version, .. } => (Some(model), Some(version)),
            Event::ModelSwapped { model, to, .. } | Event::ModelRolledBack { model, to, .. } => {
                (Some(model), Some(to))
            }
            _ => (None, None),
        }
    }
}
