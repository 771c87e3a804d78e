//! Shared helpers for the feature-store tests: a store in a temp dir and a small schema.
#![allow(dead_code)]

use edgeinfer_features::{
    FeatureDType, FeatureSchema, FeatureStore, FieldSpec, StalePolicy, StoreOptions,
};
use tempfile::TempDir;

pub fn field(name: &str, dtype: FeatureDType, default: f64) -> FieldSpec {
    FieldSpec {
        name: name.into(),
        dtype,
        default,
        max_age_s: None,
        allow_non_finite: false,
    }
}

/// `age` (i32, default 30), `score` (f32, default 0.5), `vip` (bool), max age 60 s.
pub fn schema() -> FeatureSchema {
    FeatureSchema {
        version: 1,
        input: None,
        max_age_s: 60,
        stale: StalePolicy::Default,
        fields: vec![
            field("age", FeatureDType::I32, 30.0),
            field("score", FeatureDType::F32, 0.5),
            field("vip", FeatureDType::Bool, 0.0),
        ],
    }
}

pub fn store_with(map_size: u64) -> (TempDir, FeatureStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FeatureStore::open(&StoreOptions::new(dir.path().join("db"), map_size, 2)).unwrap();
    (dir, store)
}

pub fn store() -> (TempDir, FeatureStore) {
    store_with(64 << 20)
}

/// The stored row of `key`, owned.
pub fn row(store: &FeatureStore, key: &str) -> Option<edgeinfer_features::FeatureRow> {
    let txn = store.read_txn().unwrap();
    store.get(&txn, key.as_bytes()).unwrap().map(|r| r.to_row())
}

pub fn entities(store: &FeatureStore) -> u64 {
    store.stats().unwrap().entities
}
