//! edgeinferd as a library: the app is built from listeners handed in, so tests and
//! systemd socket activation pass their own.

pub mod app;
pub mod config;
pub mod heartbeat;
pub mod http;
pub mod metrics;
pub mod model_table;
pub mod registry_glue;
pub mod rollout_glue;
pub mod security;
pub mod server;
pub mod systemd;
pub mod telemetry_glue;
