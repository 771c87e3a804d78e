//! The committed demo: `demo/edgeinferd.toml` (what tools/run-demo.sh runs) follows the
//! signed `demo/registry/` from the directory, and the daemon pulls, verifies, validates,
//! installs and serves churn@1 in place of the embedded demo model.

mod registry_support;

use edgeinferd::config::Config;
use registry_support::*;

#[test]
fn the_demo_config_pulls_and_serves_the_signed_demo_release() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::from_file(&repo_root().join("demo/edgeinferd.toml")).unwrap();
    // The committed file's paths, with this test's state, socket and no TCP/HTTP.
    assert!(cfg.registry.enabled);
    assert_eq!(
        cfg.registry.url.as_deref().map(std::path::Path::new),
        Some(repo_root().join("demo/registry").as_path())
    );
    cfg.state_dir = dir.path().join("var");
    cfg.server.unix_socket = dir.path().join("edgeinferd.sock");
    cfg.server.tcp = None;
    cfg.http.listen = None;
    cfg.server.cores = edgeinferd::config::Cores::List(vec![0]);
    cfg.engine.default = edgeinfer_engine::EngineChoice::Tract;
    cfg.validate().unwrap();
    let d = Daemon::start(&cfg, clock());
    expect_installed(&d, 0, "1");
    d.assert_serving("1");
    assert!(dir
        .path()
        .join("var/registry/models/churn/1/model.onnx")
        .exists());
}
