//! The configuration through the real binary: `--check-config`, errors that name the key
//! (and line), `EDGEINFER_*` variables over the file and flags over the variables, and
//! validation finishing before anything is bound.

mod appliance_support;

use std::path::Path;
use std::process::Output;

use appliance_support::*;

fn run(dir: &Path, config_text: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let config = dir.join("edgeinferd.toml");
    std::fs::write(&config, config_text).unwrap();
    let mut cmd = daemon_command(&config);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A valid config whose listeners live in `dir`.
fn valid(dir: &Path) -> String {
    format!(
        "state_dir = \"{d}/var\"\n[server]\nunix_socket = \"{d}/s.sock\"\ntcp = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
        d = dir.display()
    )
}

#[test]
fn check_config_accepts_a_valid_file_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/churn_rf.onnx");
    let text = format!(
        "{}\n[[models]]\nname = \"churn\"\npath = \"{}\"\nmax_batch = 8\n",
        valid(dir.path()),
        model.display()
    );
    let o = run(dir.path(), &text, &["--check-config"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("configuration OK"));
    assert!(
        !dir.path().join("s.sock").exists(),
        "--check-config binds nothing"
    );

    // The example shipped in systemd/ is valid too (apart from paths only an install has).
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/edgeinferd.toml"),
    )
    .unwrap();
    let e = edgeinferd::config::Config::from_toml_str(&example)
        .expect("systemd/edgeinferd.toml parses");
    assert_eq!(
        e.server.unix_socket,
        Path::new("/run/edgeinfer/edgeinferd.sock")
    );
}

#[test]
fn bad_files_name_the_key_and_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let base = valid(dir.path());
    for (text, words) in [
        (format!("{base}max_body = 3\n"), "edgeinferd.toml:7:1: http.max_body: unknown field `max_body`"),
        (base.replace("tcp = \"127.0.0.1:0\"", "tcp = \"127.0.0.1\""), "edgeinferd.toml:4:7: server.tcp: \"127.0.0.1\" is not an IP:port"),
        (format!("{base}[engine]\ndefault = \"gpu\"\n"), "engine.default: unknown variant `gpu`"),
        (base.replace("127.0.0.1:0\"\n[http]", "127.0.0.1:0\"\n[htp]"), "unknown field `htp`"),
        (format!("{base}[[models]]\nname = \"m\"\npath = \"missing.onnx\"\n"), "models[0].path:"),
        (base.replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:7701\""), "http.listen: 0.0.0.0:7701 is reachable from other machines"),
        (format!("{base}[[models]]\nname = \"m\"\npath = \"/etc/hostname\"\nmax_batch = 4\nmax_delay_us = 0\n"), "models[0].max_delay_us: is 0"),
    ] {
        let o = run(dir.path(), &text, &[], &[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{text}\n{err}");
        assert!(err.contains(words), "{words:?} not in:\n{err}");
        assert!(!dir.path().join("s.sock").exists(), "bound before validating:\n{text}");
    }
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let base = valid(dir.path());
    // The variable reaches the config: a public HTTP address is refused.
    let o = run(
        dir.path(),
        &base,
        &["--check-config"],
        &[("EDGEINFER_HTTP", "0.0.0.0:7701")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("http.listen: 0.0.0.0:7701"),
        "{}",
        stderr(&o)
    );
    // A bad variable names itself.
    let o = run(
        dir.path(),
        &base,
        &["--check-config"],
        &[("EDGEINFER_TCP", "nowhere")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--tcp (or EDGEINFER_TCP): \"nowhere\" is not an IP:port"),
        "{}",
        stderr(&o)
    );
    // The flag wins over the variable.
    let o = run(
        dir.path(),
        &base,
        &["--check-config", "--tcp", "127.0.0.1:0"],
        &[("EDGEINFER_TCP", "nowhere")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // EDGEINFER_CONFIG names the file.
    let config = dir.path().join("via-env.toml");
    std::fs::write(&config, "[server]\nbogus = 1\n").unwrap();
    let cmd = daemon_command(&dir.path().join("unused.toml"));
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    assert_eq!(args.len(), 2, "daemon_command passes only --config FILE");
    let mut cmd = std::process::Command::new(cmd.get_program());
    cmd.arg("--check-config").env("EDGEINFER_CONFIG", &config);
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("via-env.toml:2:1: server.bogus: unknown field"),
        "{}",
        stderr(&o)
    );
}
