//! Vector assembly: entity keys in, one `[rows, features]` f32 matrix out, in the model's
//! feature order, with defaults for what is missing, the stale policy applied, request
//! overrides on top, and per row which features were defaulted or stale.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use heed::{RoTxn, WithoutTls};

use crate::schema::{FeatureSchema, StalePolicy};
use crate::store::FeatureStore;
use crate::FeatureError;

/// A request's value for one feature of one row, used instead of the store's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Override {
    pub row: usize,
    /// Index in the model's feature order.
    pub feature: usize,
    pub value: f64,
}

/// What assembly found for one row. The lists hold indexes in the model's feature order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowReport {
    pub found: bool,
    /// The row was written under another schema version: every feature took its default.
    pub version_mismatch: bool,
    /// Features served as the default (missing entity, missing feature, stale by policy).
    pub defaulted: Vec<u32>,
    /// Features whose value is older than their max age (served per the stale policy).
    pub stale: Vec<u32>,
    /// The stored row's event time; 0 when not found.
    pub event_ts_ms: i64,
}

/// A model's schema bound to a store: built once per model, used for every request.
#[derive(Debug, Clone)]
pub struct Assembler {
    schema: Arc<FeatureSchema>,
    /// Model feature i → index in the stored row of the schema's version.
    map: Vec<Option<usize>>,
    max_age_ms: Vec<Option<i64>>,
    defaults: Vec<f32>,
    /// Model feature i is stored feature i, none has a max age: a row holding them all is
    /// copied whole ([`RowView::extend_dense_f32`](crate::RowView::extend_dense_f32)).
    dense: bool,
}

impl Assembler {
    /// Binds `schema` to `store` (see [`FeatureStore::bind`]).
    pub fn new(store: &FeatureStore, schema: FeatureSchema) -> Result<Assembler, FeatureError> {
        let (_, map) = store.bind(&schema)?;
        let max_age_ms: Vec<_> = (0..schema.fields.len())
            .map(|i| schema.max_age_ms(i))
            .collect();
        let defaults = schema.fields.iter().map(|f| f.default as f32).collect();
        let dense = map.iter().enumerate().all(|(i, j)| *j == Some(i))
            && max_age_ms.iter().all(Option::is_none);
        Ok(Assembler {
            schema: Arc::new(schema),
            map,
            max_age_ms,
            defaults,
            dense,
        })
    }

    pub fn schema(&self) -> &FeatureSchema {
        &self.schema
    }

    /// Whether a value can go stale: only then does assembly need the clock (`now_ms`).
    pub fn uses_clock(&self) -> bool {
        self.max_age_ms.iter().any(Option::is_some)
    }

    /// Features per row.
    pub fn width(&self) -> usize {
        self.defaults.len()
    }

    /// Resolves an override by feature name, checking the value against the feature's dtype.
    pub fn override_by_name(
        &self,
        row: usize,
        name: &str,
        value: f64,
    ) -> Result<Override, FeatureError> {
        let feature = self
            .schema
            .index_of(name)
            .ok_or_else(|| FeatureError::Schema(format!("override of unknown feature {name:?}")))?;
        self.schema.fields[feature].check(value)?;
        Ok(Override {
            row,
            feature,
            value,
        })
    }

    /// Assembles `keys.len()` rows into `out` (resized to rows × width) and `reports`
    /// (one per key), reading inside `txn`. `now_ms` is the clock, injected (unread when
    /// no feature has a max age, [`uses_clock`](Self::uses_clock)).
    // The output buffers are the caller's so that a core reuses them across requests.
    #[allow(clippy::too_many_arguments)]
    pub fn assemble(
        &self,
        store: &FeatureStore,
        txn: &RoTxn<'_, WithoutTls>,
        keys: &[&[u8]],
        overrides: &[Override],
        now_ms: i64,
        out: &mut Vec<f32>,
        reports: &mut Vec<RowReport>,
    ) -> Result<(), FeatureError> {
        let w = self.width();
        out.clear();
        out.reserve(keys.len() * w);
        reports.resize_with(keys.len(), RowReport::default);
        let m = store.metrics();
        let (mut missing_entity, mut missing_feature, mut stale_n, mut mismatch) = (0, 0, 0, 0);
        for (key, rep) in keys.iter().zip(reports.iter_mut()) {
            rep.defaulted.clear();
            rep.stale.clear();
            rep.found = false;
            rep.version_mismatch = false;
            rep.event_ts_ms = 0;
            let row = store.get(txn, key)?;
            let row = match row {
                Some(r) if r.schema_version == self.schema.version => r,
                other => {
                    rep.found = other.is_some();
                    rep.event_ts_ms = other.map_or(0, |r| r.event_ts_ms);
                    rep.version_mismatch = other.is_some();
                    if other.is_some() {
                        mismatch += 1;
                    } else {
                        missing_entity += 1;
                    }
                    out.extend_from_slice(&self.defaults);
                    rep.defaulted.extend(0..w as u32);
                    continue;
                }
            };
            rep.found = true;
            rep.event_ts_ms = row.event_ts_ms;
            if self.dense && row.extend_dense_f32(w, out) {
                continue;
            }
            let age = now_ms.saturating_sub(row.event_ts_ms);
            for i in 0..w {
                let v = match self.map[i].and_then(|j| row.get(j)) {
                    None => {
                        missing_feature += 1;
                        rep.defaulted.push(i as u32);
                        self.defaults[i]
                    }
                    Some(v) => match self.max_age_ms[i] {
                        Some(max) if age > max => {
                            stale_n += 1;
                            rep.stale.push(i as u32);
                            match self.schema.stale {
                                StalePolicy::Value => v as f32,
                                StalePolicy::Default => {
                                    rep.defaulted.push(i as u32);
                                    self.defaults[i]
                                }
                            }
                        }
                        _ => v as f32,
                    },
                };
                out.push(v);
            }
        }
        for o in overrides {
            if o.row >= keys.len() || o.feature >= w {
                return Err(FeatureError::InvalidValue(format!(
                    "override of row {} feature {} outside {} rows × {w} features",
                    o.row,
                    o.feature,
                    keys.len()
                )));
            }
            out[o.row * w + o.feature] = o.value as f32;
            let f = o.feature as u32;
            let rep = &mut reports[o.row];
            rep.defaulted.retain(|&x| x != f);
            rep.stale.retain(|&x| x != f);
        }
        m.lookups.fetch_add(keys.len() as u64, Relaxed);
        let defaulted: usize = reports.iter().map(|r| r.defaulted.len()).sum();
        if defaulted > 0 {
            m.defaulted.fetch_add(defaulted as u64, Relaxed);
        }
        if missing_entity + missing_feature + stale_n + mismatch > 0 {
            m.missing_entity.fetch_add(missing_entity, Relaxed);
            m.missing_feature.fetch_add(missing_feature, Relaxed);
            m.stale.fetch_add(stale_n, Relaxed);
            m.version_mismatch.fetch_add(mismatch, Relaxed);
        }
        Ok(())
    }
}
