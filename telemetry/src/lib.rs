//! edgeinfer telemetry: what a fleet operator sees of one box over MQTT — latency, drift,
//! online accuracy, GPU health and events — written first to a durable LMDB outbox and
//! moved to the broker by one MQTT task.
//!
//! The data path never calls into this crate on its hot path except through
//! [`latency::CoreRecorder`] (a per-core, lock-free histogram set) and plain value types;
//! everything else runs on the daemon's control thread. See `docs/telemetry.md`.

pub mod accuracy;
pub mod clock;
pub mod config;
pub mod drift;
pub mod error;
pub mod events;
pub mod gpu;
pub mod hub;
pub mod latency;
pub mod messages;
pub mod monitoring;
pub mod outbox;
pub mod predlog;
pub mod publisher;
pub mod sparkplug;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::TelemetryConfig;
pub use error::{Error, ErrorKind, Result};
pub use monitoring::ModelMonitoring;
pub use outbox::{Outbox, OutboxLimits, OutboxStats, StoredMessage};
