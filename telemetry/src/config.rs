//! The `[telemetry]` config section: its type, defaults and validation. The daemon only
//! composes it into its own `Config` and reports the problems this returns.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `[telemetry]` (every key is documented in `docs/config.md` and `docs/telemetry.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub enabled: bool,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub mqtt_url: Option<String>,
    /// MQTT client id; unset = `edgeinfer-<device_id>`.
    pub client_id: Option<String>,
    /// The `<device>` topic level; unset = the host name.
    pub device_id: Option<String>,
    pub topic_prefix: String,
    /// Seconds between latency / drift / GPU publications.
    pub interval_s: u64,
    pub username: Option<String>,
    /// File holding the MQTT password (kept out of the config file).
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle for `mqtts://`; unset = the system's roots are not loaded, so required.
    pub tls_ca_file: Option<PathBuf>,
    /// LMDB directory of the outbox; unset = `<state_dir>/telemetry/outbox`.
    pub outbox_path: Option<PathBuf>,
    pub outbox_max_bytes: u64,
    pub outbox_max_age_s: u64,
    /// MQTT 5 `message_expiry_interval` put on every message.
    pub message_expiry_s: u32,
    /// A drift window closes at this many rows (and after at least one interval).
    pub drift_window_rows: u64,
    /// An accuracy window closes at this many joined labels.
    pub accuracy_window_labels: u64,
    /// Relative drop below the baseline metric that raises the accuracy alert.
    pub accuracy_max_relative_drop: f64,
    /// LMDB directory of the prediction log; unset = `<state_dir>/telemetry/predictions`.
    pub prediction_log_path: Option<PathBuf>,
    pub prediction_log_ttl_s: u64,
    pub prediction_log_max_bytes: u64,
    /// Read GPU health from this JSON file (a `GpuSample`) instead of NVML: a fake NVML for
    /// tests and failover drills. Unset = NVML.
    pub gpu_readings_file: Option<PathBuf>,
    /// `[telemetry.sparkplug]`: also publish as a Sparkplug B edge node (off when absent).
    pub sparkplug: Option<SparkplugConfig>,
}

/// `[telemetry.sparkplug]`: the optional Sparkplug B profile (`docs/telemetry.md`,
/// "Sparkplug B"). It runs beside the JSON topics on its own MQTT connection, because its
/// NDEATH must be that connection's Will and the JSON profile's Will is the `offline` status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugConfig {
    /// The `<group_id>` topic level.
    pub group_id: String,
    /// The `<edge_node_id>` topic level; unset = the telemetry device id.
    #[serde(default)]
    pub edge_node_id: Option<String>,
    /// MQTT client id of the Sparkplug connection; unset = `edgeinfer-spb-<edge_node_id>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// LMDB directory of the Sparkplug outbox (DDATA and the bdSeq counter);
    /// unset = `<state_dir>/telemetry/sparkplug`.
    #[serde(default)]
    pub outbox_path: Option<PathBuf>,
}

impl SparkplugConfig {
    /// The `<edge_node_id>`: the configured one, else the telemetry device id.
    pub fn edge_node(&self, device: &str) -> String {
        self.edge_node_id
            .clone()
            .unwrap_or_else(|| device.to_owned())
    }

    pub fn outbox_dir(&self, state_dir: &Path) -> PathBuf {
        self.outbox_path
            .clone()
            .unwrap_or_else(|| state_dir.join("telemetry/sparkplug"))
    }
}

/// A Sparkplug id (group, edge node, device) is one topic level: non-empty, no `/`, `+`, `#`
/// (Sparkplug 3.0, tck-id-topic-structure-namespace-valid-*).
pub fn valid_sparkplug_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['+', '#', '/'])
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: false,
            mqtt_url: None,
            client_id: None,
            device_id: None,
            topic_prefix: "edgeinfer".into(),
            interval_s: 10,
            username: None,
            password_file: None,
            tls_ca_file: None,
            outbox_path: None,
            outbox_max_bytes: 64 << 20,
            outbox_max_age_s: 7 * 24 * 3600,
            message_expiry_s: 24 * 3600,
            drift_window_rows: 1000,
            accuracy_window_labels: 500,
            accuracy_max_relative_drop: 0.05,
            prediction_log_path: None,
            prediction_log_ttl_s: 3600,
            prediction_log_max_bytes: 256 << 20,
            gpu_readings_file: None,
            sparkplug: None,
        }
    }
}

/// One problem with the section: the full key (`telemetry.mqtt_url`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: &'static str,
    pub message: String,
}

/// Broker address parsed from `mqtt_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerAddr {
    /// `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883).
    pub fn parse(url: &str) -> Result<BrokerAddr, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!(
                "{url:?}: expected mqtt://host:port or mqtts://host:port"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => return Err(format!("{url:?}: port {p:?} is not a number")),
            },
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("{url:?}: no host"));
        }
        Ok(BrokerAddr {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl TelemetryConfig {
    /// Every problem at once (the daemon reports them together with its own).
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |key: &'static str, message: String| out.push(ConfigProblem { key, message });
        if !self.enabled {
            return Vec::new();
        }
        match self.mqtt_url.as_deref() {
            None => bad(
                "telemetry.mqtt_url",
                "is required when telemetry.enabled = true".into(),
            ),
            Some(u) => match BrokerAddr::parse(u) {
                Err(e) => bad("telemetry.mqtt_url", e),
                Ok(a) if a.tls && self.tls_ca_file.is_none() => bad(
                    "telemetry.tls_ca_file",
                    "is required with an mqtts:// URL".into(),
                ),
                Ok(_) => {}
            },
        }
        if self.interval_s == 0 {
            bad("telemetry.interval_s", "must be at least 1".into());
        }
        if self.topic_prefix.is_empty()
            || self.topic_prefix.contains(['+', '#'])
            || self.topic_prefix.starts_with('/')
            || self.topic_prefix.ends_with('/')
        {
            bad(
                "telemetry.topic_prefix",
                format!(
                    "{:?}: must be non-empty, without + or #, and not start or end with /",
                    self.topic_prefix
                ),
            );
        }
        if let Some(d) = &self.device_id {
            if d.is_empty() || d.contains(['+', '#', '/']) {
                bad(
                    "telemetry.device_id",
                    format!("{d:?}: must be one topic level (no /, + or #)"),
                );
            }
        }
        if self.password_file.is_some() && self.username.is_none() {
            bad(
                "telemetry.username",
                "is required when telemetry.password_file is set".into(),
            );
        }
        if self.outbox_max_bytes < 1 << 20 {
            bad(
                "telemetry.outbox_max_bytes",
                "must be at least 1 MiB".into(),
            );
        }
        if self.outbox_max_age_s == 0 {
            bad("telemetry.outbox_max_age_s", "must be at least 1".into());
        }
        if self.drift_window_rows == 0 {
            bad("telemetry.drift_window_rows", "must be at least 1".into());
        }
        if self.accuracy_window_labels == 0 {
            bad(
                "telemetry.accuracy_window_labels",
                "must be at least 1".into(),
            );
        }
        if !(self.accuracy_max_relative_drop > 0.0 && self.accuracy_max_relative_drop < 1.0) {
            bad(
                "telemetry.accuracy_max_relative_drop",
                format!(
                    "{}: must be between 0 and 1 (0.05 = 5%)",
                    self.accuracy_max_relative_drop
                ),
            );
        }
        if self.prediction_log_ttl_s == 0 {
            bad(
                "telemetry.prediction_log_ttl_s",
                "must be at least 1".into(),
            );
        }
        if let Some(sp) = &self.sparkplug {
            if !valid_sparkplug_id(&sp.group_id) {
                bad(
                    "telemetry.sparkplug.group_id",
                    format!("{:?}: must be one topic level (no /, + or #)", sp.group_id),
                );
            }
            if let Some(e) = sp
                .edge_node_id
                .as_deref()
                .filter(|e| !valid_sparkplug_id(e))
            {
                bad(
                    "telemetry.sparkplug.edge_node_id",
                    format!("{e:?}: must be one topic level (no /, + or #)"),
                );
            }
            if sp.client_id.as_deref().is_some_and(str::is_empty) {
                bad("telemetry.sparkplug.client_id", "must not be empty".into());
            }
        }
        out
    }

    /// The `<device>` level: the configured id, else the host name, else `unknown`.
    pub fn device(&self) -> String {
        if let Some(d) = &self.device_id {
            return d.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|s| s.trim().replace(['/', '+', '#'], "_"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    }

    pub fn outbox_dir(&self, state_dir: &Path) -> PathBuf {
        self.outbox_path
            .clone()
            .unwrap_or_else(|| state_dir.join("telemetry/outbox"))
    }

    pub fn prediction_log_dir(&self, state_dir: &Path) -> PathBuf {
        self.prediction_log_path
            .clone()
            .unwrap_or_else(|| state_dir.join("telemetry/predictions"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports() {
        let a = BrokerAddr::parse("mqtt://127.0.0.1:1999").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.tls), ("127.0.0.1", 1999, false));
        let a = BrokerAddr::parse("mqtts://broker.example").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.tls),
            ("broker.example", 8883, true)
        );
        assert!(BrokerAddr::parse("http://x").is_err());
        assert!(BrokerAddr::parse("mqtt://:12").is_err());
        assert!(BrokerAddr::parse("mqtt://h:notaport").is_err());
    }

    #[test]
    fn enabled_section_reports_every_problem_by_key() {
        let c = TelemetryConfig {
            enabled: true,
            topic_prefix: "a/#".into(),
            interval_s: 0,
            accuracy_max_relative_drop: 2.0,
            password_file: Some("/x".into()),
            ..TelemetryConfig::default()
        };
        let keys: Vec<&str> = c.validate().iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "telemetry.mqtt_url",
                "telemetry.interval_s",
                "telemetry.topic_prefix",
                "telemetry.username",
                "telemetry.accuracy_max_relative_drop"
            ]
        );
        let tls = TelemetryConfig {
            enabled: true,
            mqtt_url: Some("mqtts://b:8883".into()),
            ..TelemetryConfig::default()
        };
        assert_eq!(tls.validate()[0].key, "telemetry.tls_ca_file");
        assert!(TelemetryConfig::default().validate().is_empty());
    }

    #[test]
    fn sparkplug_section_is_optional_and_its_ids_are_one_topic_level() {
        let c: TelemetryConfig = serde_json::from_str(
            r#"{"enabled": true, "mqtt_url": "mqtt://b:1883",
                "sparkplug": {"group_id": "plant/1", "edge_node_id": "", "client_id": ""}}"#,
        )
        .unwrap();
        let keys: Vec<&str> = c.validate().iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "telemetry.sparkplug.group_id",
                "telemetry.sparkplug.edge_node_id",
                "telemetry.sparkplug.client_id"
            ]
        );
        let ok: TelemetryConfig = serde_json::from_str(
            r#"{"enabled": true, "mqtt_url": "mqtt://b:1883", "sparkplug": {"group_id": "plant1"}}"#,
        )
        .unwrap();
        assert!(ok.validate().is_empty());
        let sp = ok.sparkplug.unwrap();
        assert_eq!(sp.edge_node("box7"), "box7");
        assert_eq!(
            sp.outbox_dir(Path::new("/var/lib/e")),
            Path::new("/var/lib/e/telemetry/sparkplug")
        );
        assert!(TelemetryConfig::default().sparkplug.is_none());
        let e = serde_json::from_str::<TelemetryConfig>(
            r#"{"sparkplug": {"group_id": "g", "bd_seq": 3}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bd_seq"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = toml_like("{\"enabled\": true, \"colour\": 1}");
        assert!(e.contains("colour"), "{e}");
    }

    fn toml_like(json: &str) -> String {
        serde_json::from_str::<TelemetryConfig>(json)
            .unwrap_err()
            .to_string()
    }
}
