//! The daemon's `[registry]` section: where signed releases come from, which models to
//! follow, how often to look, and the limits that keep a hostile registry from filling the
//! disk or wedging the agent. Owned (type, defaults, validation) here; the daemon only
//! composes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[registry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub enabled: bool,
    /// The TUF repository: `http://HOST[:PORT]/PREFIX` (a static server, MLflow's artifact
    /// store) or a directory (optionally `file://…`) holding `metadata/` and `targets/`. A
    /// directory need not exist at start (a medium mounted later): it is only unreachable.
    pub url: Option<String>,
    /// The pinned root metadata (`1.root.json` of the repository): the trust anchor used
    /// when the local trusted metadata is missing or corrupt.
    pub root_file: Option<PathBuf>,
    /// Model names to follow (`models/<name>/<version>/…` targets).
    pub models: Vec<String>,
    /// Time between polls of the repository.
    pub poll_interval_ms: u64,
    /// Each wait is the interval plus a uniform random part up to this, so a fleet does
    /// not poll in lockstep.
    pub poll_jitter_ms: u64,
    /// After a failed poll the next comes sooner: this, doubling per failure up to
    /// `poll_interval_ms`, each with up to 50% random jitter.
    pub retry_initial_ms: u64,
    /// Largest `model.onnx` accepted (the target's signed length must be within it).
    pub max_model_bytes: u64,
    /// Largest `bundle.json` (and `rollout/<name>.json`) accepted.
    pub max_bundle_bytes: u64,
    /// Verified versions kept on disk per model (the active one included), for rollback.
    pub keep_versions: usize,
    /// Trusted metadata, staging and installed versions; unset = `<state_dir>/registry`.
    pub state_dir: Option<PathBuf>,
    /// HTTP: time to connect, and the longest silence while reading.
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            enabled: false,
            url: None,
            root_file: None,
            models: Vec::new(),
            poll_interval_ms: 300_000,
            poll_jitter_ms: 30_000,
            retry_initial_ms: 2_000,
            max_model_bytes: 1 << 30,
            max_bundle_bytes: 16 << 20,
            keep_versions: 3,
            state_dir: None,
            connect_timeout_ms: 10_000,
            read_timeout_ms: 30_000,
        }
    }
}

/// One problem found by [`RegistryConfig::validate`], named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: &'static str,
    pub message: String,
}

/// Model names are path segments on disk and in target paths.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

impl RegistryConfig {
    /// Every problem, not just the first; nothing when disabled.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        if !self.enabled {
            return out;
        }
        let mut bad = |key: &'static str, message: String| out.push(ConfigProblem { key, message });
        match self.url.as_deref() {
            None | Some("") => bad(
                "registry.url",
                "is required when registry.enabled = true".into(),
            ),
            Some(u) if u.starts_with("https://") => bad(
                "registry.url",
                format!("{u:?}: https:// is not built in; use http:// (only signatures decide trust) or a directory"),
            ),
            Some(u) if u.contains("://") && !u.starts_with("http://") && !u.starts_with("file://") => bad(
                "registry.url",
                format!("{u:?}: expected http://HOST[:PORT]/PREFIX or a directory"),
            ),
            _ => {}
        }
        match &self.root_file {
            None => bad(
                "registry.root_file",
                "is required when registry.enabled = true: releases must be signed by keys it names"
                    .into(),
            ),
            Some(p) => {
                if let Err(e) = std::fs::metadata(p) {
                    bad("registry.root_file", format!("cannot read {}: {e}", p.display()));
                }
            }
        }
        if self.models.is_empty() {
            bad(
                "registry.models",
                "name at least one model to follow".into(),
            );
        }
        for m in &self.models {
            if !valid_model_name(m) {
                bad(
                    "registry.models",
                    format!("{m:?}: a model name is letters, digits, `_`, `-`, `.`"),
                );
            }
        }
        if self.poll_interval_ms < 100 {
            bad(
                "registry.poll_interval_ms",
                format!("{} is below the 100 ms minimum", self.poll_interval_ms),
            );
        }
        if self.retry_initial_ms == 0 {
            bad("registry.retry_initial_ms", "must be at least 1".into());
        }
        if self.max_model_bytes == 0 || self.max_bundle_bytes == 0 {
            bad(
                "registry.max_model_bytes",
                "size caps must be above 0".into(),
            );
        }
        if self.keep_versions == 0 {
            bad(
                "registry.keep_versions",
                "must be at least 1 (the active version)".into(),
            );
        }
        if self.connect_timeout_ms == 0 || self.read_timeout_ms == 0 {
            bad(
                "registry.read_timeout_ms",
                "timeouts must be above 0".into(),
            );
        }
        out
    }

    /// Makes relative paths (root file, directory repository, state dir) relative to `base`,
    /// the directory of the config file.
    pub fn resolve_relative(&mut self, base: &Path) {
        for p in [&mut self.root_file, &mut self.state_dir]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(u) = &mut self.url {
            if !u.contains("://") && Path::new(u.as_str()).is_relative() {
                *u = base.join(&*u).to_string_lossy().into_owned();
            }
        }
    }

    /// Where the agent keeps its state, given the daemon's `state_dir`.
    pub fn state_dir(&self, daemon_state_dir: &Path) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| daemon_state_dir.join("registry"))
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_is_valid_and_enabled_names_each_missing_key() {
        assert!(RegistryConfig::default().validate().is_empty());
        let c = RegistryConfig {
            enabled: true,
            poll_interval_ms: 5,
            keep_versions: 0,
            models: vec!["../x".into()],
            ..Default::default()
        };
        let keys: Vec<&str> = c.validate().iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "registry.url",
                "registry.root_file",
                "registry.models",
                "registry.poll_interval_ms",
                "registry.keep_versions"
            ]
        );
        let c = RegistryConfig {
            enabled: true,
            url: Some("https://models.example".into()),
            root_file: Some("/nonexistent/root.json".into()),
            models: vec!["churn".into()],
            ..Default::default()
        };
        let p = c.validate();
        assert!(p[0].message.contains("https:// is not built in"), "{p:?}");
        assert!(p[1].message.contains("/nonexistent/root.json"), "{p:?}");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let mut c = RegistryConfig {
            url: Some("demo/registry".into()),
            root_file: Some("root.json".into()),
            ..Default::default()
        };
        c.resolve_relative(Path::new("/etc/edgeinfer"));
        assert_eq!(c.url.as_deref(), Some("/etc/edgeinfer/demo/registry"));
        assert_eq!(c.root_file, Some(PathBuf::from("/etc/edgeinfer/root.json")));
        let mut h = RegistryConfig {
            url: Some("http://127.0.0.1:1/repo".into()),
            ..Default::default()
        };
        h.resolve_relative(Path::new("/etc"));
        assert_eq!(h.url.as_deref(), Some("http://127.0.0.1:1/repo"));
        assert_eq!(
            c.state_dir(Path::new("/var/lib/edgeinfer")),
            PathBuf::from("/var/lib/edgeinfer/registry")
        );
    }
}
