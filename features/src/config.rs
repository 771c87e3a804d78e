//! The `[cache]` config section: the feature store's own type and validation, composed by
//! the daemon's config.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// LMDB's largest key with the default page size.
pub const LMDB_MAX_KEY_BYTES: usize = 511;

/// `[cache]`: the LMDB feature store behind PREDICT_BY_ENTITY.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// LMDB directory; unset = `<state_dir>/cache`.
    pub path: Option<PathBuf>,
    /// The LMDB map size: the most the store may ever hold. Writes past it fail cleanly
    /// (MAP_FULL) and reads keep working.
    pub max_bytes: u64,
    /// Rows whose event time is older than this are deleted in the background; 0 = never.
    pub ttl_s: u64,
    /// Most rows one expiry transaction deletes, so expiry never holds the writer long.
    pub expiry_batch: u32,
    /// Pause between expiry sweeps.
    pub expiry_interval_s: u64,
    /// Longest entity key accepted, bytes (LMDB's limit is 511).
    pub max_key_bytes: u32,
    /// MQTT subscription for feature updates pushed from the centre; unset = none.
    pub mqtt: Option<MqttConfig>,
}

/// `[cache.mqtt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port`.
    pub url: String,
    /// Topic filter; the documented layout is `edgeinfer/features/<schema_version>`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Session id: keep it stable so the broker keeps QoS 1 messages while we are away.
    #[serde(default = "default_client_id")]
    pub client_id: String,
}

fn default_topic() -> String {
    "edgeinfer/features/+".into()
}
fn default_client_id() -> String {
    "edgeinferd-features".into()
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            path: None,
            max_bytes: 1 << 30,
            ttl_s: 3600,
            expiry_batch: 1000,
            expiry_interval_s: 10,
            max_key_bytes: 256,
            mqtt: None,
        }
    }
}

impl CacheConfig {
    /// Every problem, as `(key, message)`; empty = valid.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.enabled && self.max_bytes < (1 << 16) {
            p.push((
                "cache.max_bytes",
                "must be at least 65536 when cache.enabled = true".into(),
            ));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes as usize > LMDB_MAX_KEY_BYTES {
            p.push((
                "cache.max_key_bytes",
                format!("must be between 1 and {LMDB_MAX_KEY_BYTES}"),
            ));
        }
        if self.expiry_batch == 0 {
            p.push(("cache.expiry_batch", "must be at least 1".into()));
        }
        if self.expiry_interval_s == 0 {
            p.push(("cache.expiry_interval_s", "must be at least 1".into()));
        }
        if let Some(m) = &self.mqtt {
            if crate::mqtt::parse_url(&m.url).is_err() {
                p.push((
                    "cache.mqtt.url",
                    format!("{:?} is not mqtt://host:port", m.url),
                ));
            }
            if m.topic.is_empty() {
                p.push(("cache.mqtt.topic", "must not be empty".into()));
            }
        }
        p
    }

    /// The LMDB directory, `<state_dir>/cache` unless set.
    pub fn path_in(&self, state_dir: &Path) -> PathBuf {
        self.path.clone().unwrap_or_else(|| state_dir.join("cache"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        assert!(CacheConfig::default().problems().is_empty());
        let c: CacheConfig = toml::from_str(
            "enabled = true\nmax_bytes = 10\nmax_key_bytes = 600\n[mqtt]\nurl = \"http://x\"",
        )
        .unwrap();
        let keys: Vec<_> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            ["cache.max_bytes", "cache.max_key_bytes", "cache.mqtt.url"]
        );
        assert!(toml::from_str::<CacheConfig>("bogus = 1").is_err());
    }
}
