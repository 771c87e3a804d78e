//! The `[http]` section of the configuration: the listener, its credentials, and the limits
//! that keep hostile or broken clients from pinning memory, file descriptors or the HTTP
//! thread (documented key by key in `docs/config.md`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{range, Problem};

/// The HTTP listener: health, metrics, KServe v2 and `/predict`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `IP:port`; empty = no HTTP. Loopback unless secured.
    #[serde(with = "crate::config::opt_addr")]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token (`Authorization: Bearer …`) for everything but health.
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain and key: serve HTTPS (rustls).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// The model `POST /predict` serves (it names none); unset = the first of `[[models]]`.
    pub predict_model: Option<String>,
    /// Open connections (TLS handshakes included); one more is answered 503 and closed.
    pub max_connections: usize,
    /// A request head must arrive whole this long after the server starts waiting for it
    /// (after accept, or after the previous response on a kept-alive connection).
    pub header_read_timeout_ms: u64,
    /// A request body must arrive whole this long after its head.
    pub body_read_timeout_ms: u64,
    /// …and, after its first second, at no less than this average rate (0 = no rate check).
    pub body_min_rate_bytes_per_s: u64,
    /// A connection with no request in progress and no bytes moving is closed after this long.
    pub keep_alive_idle_ms: u64,
    /// Request body bytes held in memory over all connections; past it, 503.
    pub body_budget_bytes: usize,
    /// Threads that run HTTP inference (each with its own engine sessions).
    pub infer_threads: usize,
    /// Inference requests waiting for those threads; past it, 503 with `Retry-After`.
    pub infer_queue: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7701))),
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 16 << 20,
            predict_model: None,
            max_connections: 256,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            body_min_rate_bytes_per_s: 16 << 10,
            keep_alive_idle_ms: 60_000,
            // Four bodies of the largest size at once: enough for a few big uploads, and a
            // bound (with the rest of the daemon) that fits an edge box.
            body_budget_bytes: 64 << 20,
            infer_threads: 1,
            infer_queue: 32,
        }
    }
}

impl HttpConfig {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
    pub fn keep_alive_idle(&self) -> Duration {
        Duration::from_millis(self.keep_alive_idle_ms)
    }
}

/// Checks the section on its own (keys that refer to other sections, such as
/// `predict_model`, are checked by the composition in `crate::config`).
pub fn validate(h: &HttpConfig, out: &mut Vec<Problem>) {
    range(
        out,
        "http.max_body_bytes",
        h.max_body_bytes as u64,
        1024,
        1 << 30,
        " bytes",
    );
    range(
        out,
        "http.max_connections",
        h.max_connections as u64,
        1,
        1 << 16,
        "",
    );
    range(
        out,
        "http.header_read_timeout_ms",
        h.header_read_timeout_ms,
        10,
        600_000,
        " ms",
    );
    range(
        out,
        "http.body_read_timeout_ms",
        h.body_read_timeout_ms,
        10,
        3_600_000,
        " ms",
    );
    range(
        out,
        "http.body_min_rate_bytes_per_s",
        h.body_min_rate_bytes_per_s,
        0,
        1 << 30,
        " bytes/s",
    );
    range(
        out,
        "http.keep_alive_idle_ms",
        h.keep_alive_idle_ms,
        10,
        3_600_000,
        " ms",
    );
    // A budget below one largest body would refuse requests that max_body_bytes allows.
    range(
        out,
        "http.body_budget_bytes",
        h.body_budget_bytes as u64,
        (h.max_body_bytes as u64).max(1024),
        1 << 36,
        " bytes (at least http.max_body_bytes)",
    );
    range(
        out,
        "http.infer_threads",
        h.infer_threads as u64,
        1,
        256,
        "",
    );
    range(
        out,
        "http.infer_queue",
        h.infer_queue as u64,
        0,
        1 << 16,
        "",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(h: &HttpConfig) -> Vec<String> {
        let mut out = Vec::new();
        validate(h, &mut out);
        out.into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(problems(&HttpConfig::default()), Vec::<String>::new());
    }

    #[test]
    fn out_of_range_limits_name_their_key() {
        let mut h = HttpConfig {
            max_connections: 0,
            header_read_timeout_ms: 0,
            infer_threads: 0,
            ..HttpConfig::default()
        };
        let p = problems(&h);
        for key in [
            "http.max_connections",
            "http.header_read_timeout_ms",
            "http.infer_threads",
        ] {
            assert!(p.iter().any(|m| m.starts_with(key)), "{key} in {p:?}");
        }
        assert_eq!(p.len(), 3, "{p:?}");

        h = HttpConfig {
            max_body_bytes: 32 << 20,
            body_budget_bytes: 16 << 20,
            ..HttpConfig::default()
        };
        let p = problems(&h);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("http.body_budget_bytes: 16777216 is out of range: 33554432"),
            "{p:?}"
        );
    }

    #[test]
    fn the_section_parses_and_rejects_unknown_keys() {
        let h: HttpConfig =
            toml::from_str("max_connections = 8\nbody_budget_bytes = 33554432\n").unwrap();
        assert_eq!(h.max_connections, 8);
        assert_eq!(h.body_budget_bytes, 32 << 20);
        assert_eq!(h.infer_queue, HttpConfig::default().infer_queue);
        let e = toml::from_str::<HttpConfig>("max_conections = 8\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
