//! What a newcomer sees of the real `edgeinferd` binary: `--help` that opens with what the
//! daemon is and describes every flag, logs without colour codes when stderr is not a
//! terminal, and ONNX Runtime found without `ORT_DYLIB_PATH` in the documented default
//! place (the checkout's `.cache/ort/`, where `tools/ci/provision.sh` puts it), the same
//! place `edgeinfer doctor` finds it (tools/tests/engine_cli.rs).

mod appliance_support;

use std::process::Command;
use std::time::Duration;

use appliance_support::*;

fn help(flag: &str) -> String {
    let out = Command::new(BIN).arg(flag).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_opens_with_the_daemon_and_describes_every_flag() {
    for flag in ["-h", "--help"] {
        let text = help(flag);
        assert!(
            text.starts_with(
                "edgeinfer daemon: serves ONNX models over a zero-copy binary protocol"
            ),
            "{flag}: {text}"
        );
        assert!(
            !text.contains("#[command") && !text.contains("clap CLI"),
            "{flag}: a code comment leaked into the help: {text}"
        );
    }
    // Each flag's description is on its line (after two spaces) or, when clap wraps, on
    // the next: none may be bare, or only the "[config: …]" cross-reference.
    let text = help("-h");
    let lines: Vec<&str> = text.lines().collect();
    let mut flags = 0;
    for (i, line) in lines.iter().enumerate() {
        let flag = line.trim_start();
        if !flag.starts_with('-') {
            continue;
        }
        flags += 1;
        let inline = flag.split_once("  ").map(|(_, d)| d.trim()).unwrap_or("");
        let next = lines
            .get(i + 1)
            .map(|l| l.trim())
            .filter(|l| !l.starts_with('-'))
            .unwrap_or("");
        let description = if inline.is_empty() { next } else { inline };
        assert!(
            !description.is_empty() && !description.starts_with('['),
            "flag without a description: {line:?} (then {next:?})"
        );
    }
    assert!(flags >= 20, "only {flags} flags in:\n{text}");
}

#[test]
fn logs_on_a_pipe_or_file_carry_no_colour_and_ort_is_found_by_default() {
    let dir = tempfile::tempdir().unwrap();
    // engine = "ort-cpu" refuses to start without ONNX Runtime: serving proves the
    // default search found it, with ORT_DYLIB_PATH removed.
    let config = write_config(
        dir.path(),
        "log_level = \"info\"\n[engine]\ndefault = \"ort-cpu\"",
    );
    let mut cmd = daemon_command(&config);
    cmd.env_remove("ORT_DYLIB_PATH")
        .stdout(std::process::Stdio::piped());
    let mut d = Reaper(Some(cmd.spawn().unwrap()));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(d.child().stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(
        line.contains("serving churn (demo, ort-cpu)"),
        "stdout {line:?}, log:\n{}",
        daemon_log(&config)
    );
    d.signal(libc::SIGTERM);
    let st = d.wait(Duration::from_secs(30));
    assert!(st.success(), "{st:?}");
    let log = daemon_log(&config);
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log that is not a terminal:\n{log:?}"
    );
    drop(dir);
}
