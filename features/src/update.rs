//! Updates by feature name (PUT_FEATURES, MQTT): validated against the stored layout of
//! their schema version and written all-or-nothing.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::row::FeatureRow;
use crate::store::{FeatureStore, PutOutcome};
use crate::FeatureError;

/// One entity's new values; features not named keep no value (absent → default).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedUpdate {
    pub key: Vec<u8>,
    pub event_ts_ms: i64,
    pub schema_version: u32,
    pub values: Vec<(String, f64)>,
}

impl NamedUpdate {
    /// The row in the stored layout of its version; every problem is an error.
    pub fn to_row(&self, store: &FeatureStore) -> Result<(Vec<u8>, FeatureRow), FeatureError> {
        let schema = store.schema(self.schema_version).ok_or_else(|| {
            FeatureError::Schema(format!(
                "schema version {} is not known to this store",
                self.schema_version
            ))
        })?;
        let mut values = vec![None; schema.fields.len()];
        for (name, v) in &self.values {
            let i = schema.index_of(name).ok_or_else(|| {
                FeatureError::Schema(format!(
                    "feature {name:?} is not in schema version {}",
                    self.schema_version
                ))
            })?;
            if values[i].is_some() {
                return Err(FeatureError::InvalidValue(format!(
                    "feature {name:?} given twice"
                )));
            }
            schema.fields[i].check(*v)?;
            values[i] = Some(*v);
        }
        let row = FeatureRow {
            event_ts_ms: self.event_ts_ms,
            schema_version: self.schema_version,
            values,
        };
        store.check(&self.key, &row)?;
        Ok((self.key.clone(), row))
    }
}

/// Validates every update, then writes them in one transaction; one bad update = none written.
pub fn apply(store: &FeatureStore, updates: &[NamedUpdate]) -> Result<PutOutcome, FeatureError> {
    let rows = updates
        .iter()
        .map(|u| u.to_row(store))
        .collect::<Result<Vec<_>, _>>()?;
    store.put(&rows)
}

/// The MQTT payload (`docs/features.md`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    schema_version: u32,
    rows: Vec<PayloadRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadRow {
    entity: String,
    event_ts_ms: i64,
    values: BTreeMap<String, f64>,
}

/// Most rows one MQTT message may carry.
pub const MAX_PAYLOAD_ROWS: usize = 10_000;

/// Parses an MQTT feature-update payload; never panics.
pub fn parse_payload(bytes: &[u8]) -> Result<Vec<NamedUpdate>, FeatureError> {
    let p: Payload = serde_json::from_slice(bytes)
        .map_err(|e| FeatureError::Malformed(format!("feature update payload: {e}")))?;
    if p.rows.len() > MAX_PAYLOAD_ROWS {
        return Err(FeatureError::Oversized(format!(
            "{} rows in one update; at most {MAX_PAYLOAD_ROWS}",
            p.rows.len()
        )));
    }
    Ok(p.rows
        .into_iter()
        .map(|r| NamedUpdate {
            key: r.entity.into_bytes(),
            event_ts_ms: r.event_ts_ms,
            schema_version: p.schema_version,
            values: r.values.into_iter().collect(),
        })
        .collect())
}
