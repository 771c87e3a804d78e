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
/// The read transaction type [`FeatureStore::get`] and [`HeldReader`] use.
pub use heed::{RoTxn, WithoutTls};
pub use row::{encoded_len, encoded_len_as, FeatureRow, RowView, ROW_F32, ROW_F64, ROW_FORMAT};
pub use schema::{FeatureDType, FeatureSchema, FieldSpec, StalePolicy, MAX_FEATURES};
pub use store::{FeatureStore, HeldReader, PutOutcome, StoreMetrics, StoreOptions, StoreStats};
