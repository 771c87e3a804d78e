//! The feature cache behind PREDICT_BY_ENTITY: an LMDB store of feature rows per entity,
//! feature schemas and vector assembly, and ingestion from CSV, Parquet and MQTT.
//!
//! Knows nothing of sockets, frames or engines: the daemon wires it in (docs/features.md).

mod assemble;
pub mod config;
mod error;
pub mod housekeeping;
pub mod import;
pub mod mqtt;
mod row;
mod schema;
mod store;
pub mod update;

pub use assemble::{Assembler, Override, RowReport};
pub use config::{CacheConfig, MqttConfig};
pub use error::{ErrorKind, FeatureError};
pub use row::{encoded_len, FeatureRow, RowView, ROW_FORMAT};
pub use schema::{FeatureDType, FeatureSchema, FieldSpec, StalePolicy, MAX_FEATURES};
pub use store::{FeatureStore, PutOutcome, StoreMetrics, StoreOptions, StoreStats};
