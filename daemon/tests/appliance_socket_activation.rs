//! Socket activation as systemd does it: the test binds a Unix socket, a TCP socket and an
//! HTTP socket, hands them to the real binary as fds 3, 4 and 5 with `LISTEN_FDS`,
//! `LISTEN_FDNAMES` and a `LISTEN_PID` equal to the daemon's pid, and checks the daemon
//! serves through exactly those (and binds none of its configured listeners).

mod appliance_support;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use appliance_support::*;
use edgeinfer_client::Endpoint;

#[test]
fn serves_on_the_listeners_systemd_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let config = write_config(dir.path(), "");

    let unix_path = dir.path().join("activated.sock");
    let unix = UnixListener::bind(&unix_path).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (tcp_addr, http_at) = (tcp.local_addr().unwrap(), http.local_addr().unwrap());
    let fds: Vec<RawFd> = vec![unix.as_raw_fd(), tcp.as_raw_fd(), http.as_raw_fd()];

    // LISTEN_PID must be the daemon's own pid: a shell sets it to its $$ and then execs the
    // daemon, which keeps that pid.
    let inner = daemon_command(&config);
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let log = std::fs::File::create(config.with_extension("log")).unwrap();
    cmd.stdout(std::process::Stdio::null()).stderr(log);
    cmd.env("LISTEN_FDS", "3")
        .env("LISTEN_FDNAMES", "binary:binary:http")
        .env("NOTIFY_SOCKET", &notify.path);
    // SAFETY: only async-signal-safe calls (dup, dup2, close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move the fds out of the way first, so dup2 onto 3.. cannot clobber one of them.
            let mut high = [0; 3];
            for (i, &fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in high.iter().enumerate() {
                // dup2 leaves the new fd without CLOEXEC: it survives exec, as from systemd.
                if libc::dup2(fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    let d = Reaper(Some(cmd.spawn().unwrap()));
    let ready = notify.wait_for("READY=1", STARTUP);
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(d.pid().to_string().as_str()),
        "LISTEN_PID matched the daemon"
    );
    let status = field(&ready, "STATUS").unwrap();
    assert!(
        status.contains("binary=unix:") && status.contains(&format!("binary=tcp:{tcp_addr}")),
        "{status}"
    );

    // It serves on what it was given…
    assert_eq!(predict_churn(&Endpoint::Unix(unix_path.clone())).len(), 2);
    assert_eq!(predict_churn(&Endpoint::Tcp(tcp_addr.to_string())).len(), 2);
    assert_eq!(http_addr(status), http_at);
    let (code, body) = http_get(http_at, "/readyz");
    assert_eq!(code, 200, "{body}");
    // …and bound nothing of its own.
    assert!(
        !dir.path().join("edgeinferd.sock").exists(),
        "the configured Unix socket was bound"
    );

    // The passed fds are close-on-exec in the daemon (no child inherits them).
    for fd in 3..6 {
        let info = std::fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", d.pid())).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .unwrap()
            .trim();
        let flags = u32::from_str_radix(flags, 8).unwrap();
        assert_ne!(
            flags & libc::O_CLOEXEC as u32,
            0,
            "fd {fd} lacks O_CLOEXEC: {info}"
        );
    }

    d.signal(libc::SIGTERM);
    let st = d.wait(Duration::from_secs(30));
    assert!(st.success(), "exit {st:?}: {}", daemon_log(&config));
    // The socket file belongs to whoever bound it (systemd): the daemon leaves it in place.
    assert!(unix_path.exists());
    drop((unix, tcp, http));
}

/// Runs the daemon with `LISTEN_FDS=1` and `fd` (or nothing) at fd 3; returns exit code and stderr.
fn activate_with(fd: Option<RawFd>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let inner = daemon_command(&config);
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args());
    cmd.env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "binary")
        .env_remove("NOTIFY_SOCKET");
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: fcntl, dup2 and close only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            match fd {
                Some(fd) => {
                    let high = libc::fcntl(fd, libc::F_DUPFD, 100);
                    if high < 0 || libc::dup2(high, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(high);
                }
                None => {
                    libc::close(3);
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn passed_fds_that_are_not_listeners_are_refused_with_a_reason() {
    let file = std::fs::File::open("/etc/hostname").unwrap();
    let (code, err) = activate_with(Some(file.as_raw_fd()));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("socket activation")
            && err.contains("passed fd 3")
            && err.contains("not a socket"),
        "{err}"
    );

    let connected = std::os::unix::net::UnixStream::pair().unwrap().0;
    let (code, err) = activate_with(Some(connected.as_raw_fd()));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not listening"), "{err}");

    let (code, err) = activate_with(None);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("passed fd 3") && err.contains("not an open fd"),
        "{err}"
    );
}
