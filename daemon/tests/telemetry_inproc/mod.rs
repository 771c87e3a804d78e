//! Telemetry started inside the test process (no daemon, no models), publishing to a closed
//! loopback port: for tests that call the data path's recording functions on their own
//! threads, as cores do.

use edgeinferd::config::Config;
use edgeinferd::telemetry_glue::{self, Telemetry};

/// Starts telemetry with `device_id` and a one-hour interval (no hand-over of histograms
/// or drift counters while a test runs); keep the directory and the handle alive.
pub fn start(device_id: &str) -> (tempfile::TempDir, Telemetry) {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "state_dir = \"{d}/var\"\n[server]\nunix_socket = \"{d}/s.sock\"\ntcp = \"\"\n[http]\nlisten = \"\"\n\
         [telemetry]\nenabled = true\nmqtt_url = \"mqtt://127.0.0.1:{closed}\"\ndevice_id = \"{device_id}\"\n\
         interval_s = 3600\n",
        d = dir.path().display()
    );
    let cfg = Config::from_toml_str(&text).unwrap();
    cfg.validate().unwrap();
    let table = edgeinferd::app::load_models(&cfg.model_specs()).unwrap();
    let telemetry = telemetry_glue::start(&cfg, table).unwrap().expect("on");
    (dir, telemetry)
}
