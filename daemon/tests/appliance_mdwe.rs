//! `MemoryDenyWriteExecute=yes` in edgeinferd.service must not break ONNX Runtime. systemd
//! enforces it with seccomp; the kernel's own equivalent is `prctl(PR_SET_MDWE,
//! PR_MDWE_REFUSE_EXEC_GAIN)` (Linux 6.3+), inherited across fork and exec. The test runs the
//! real daemon under it with the ORT CPU engine and infers through it. A control run shows
//! the restriction is really in force (a W+X mapping fails under it).

mod appliance_support;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use appliance_support::*;
use edgeinfer_client::Endpoint;

const PR_SET_MDWE: libc::c_int = 65;
const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;

fn under_mdwe(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                PR_SET_MDWE,
                PR_MDWE_REFUSE_EXEC_GAIN,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[test]
fn the_restriction_is_in_force_for_children() {
    let wx =
        "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)";
    let free = Command::new("python3")
        .args(["-c", wx])
        .output()
        .expect("python3");
    assert!(
        free.status.success(),
        "W+X mapping without MDWE: {}",
        String::from_utf8_lossy(&free.stderr)
    );
    let out = under_mdwe(Command::new("python3").args(["-c", wx]))
        .output()
        .expect("python3 under MDWE");
    assert!(
        !out.status.success(),
        "a W+X mapping succeeded under PR_SET_MDWE"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionError"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn onnx_runtime_serves_without_writable_executable_memory() {
    let ort = std::env::var_os("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must point at libonnxruntime.so.1.31.1 for this test (tools/ci/test.sh sets it)");
    assert!(std::path::Path::new(&ort).exists());
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let config = write_config(dir.path(), "");
    let mut cmd = daemon_command(&config);
    cmd.args(["--engine", "ort-cpu"])
        .env("ORT_DYLIB_PATH", &ort)
        .env("NOTIFY_SOCKET", &notify.path);
    let d = Reaper(Some(under_mdwe(&mut cmd).spawn().unwrap()));
    let ready = notify.wait_for("READY=1", STARTUP);
    let status = field(&ready, "STATUS").unwrap();
    assert!(status.contains("ort-cpu"), "{status}");
    for _ in 0..50 {
        let p = predict_churn(&Endpoint::Unix(dir.path().join("edgeinferd.sock")));
        assert!((p[0] + p[1] - 1.0).abs() < 1e-5, "{p:?}");
    }
    let (_, metrics) = http_get(http_addr(status), "/metrics");
    assert!(
        metrics.contains(
            "edgeinfer_model_engine_info{model=\"churn\",version=\"demo\",engine=\"ort-cpu\"} 1"
        ),
        "{metrics}"
    );
    // And no writable+executable mapping crept in by another route.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", d.pid())).unwrap();
    assert!(
        !maps.lines().any(|l| l
            .split_whitespace()
            .nth(1)
            .is_some_and(|p| p.starts_with("rwx"))),
        "{maps}"
    );
    d.signal(libc::SIGTERM);
    let st = d.wait(Duration::from_secs(30));
    assert!(st.success(), "{st:?}: {}", daemon_log(&config));
}
