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
