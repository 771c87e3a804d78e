//! Shared by the appliance tests: the real `edgeinferd` binary in its own temp dir, a real
//! `NOTIFY_SOCKET` datagram socket to hear what it tells systemd, and a blocking binary-
//! protocol client to check it serves.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgeinfer_client::blocking::Client;
use edgeinfer_client::{Endpoint, PredictOptions};
use edgeinfer_proto::{DType, TensorView};

pub const BIN: &str = env!("CARGO_BIN_EXE_edgeinferd");
/// Long enough for a debug build to load and warm the demo model on a busy 2-core box; a
/// hang is a failure, not a wait forever.
pub const STARTUP: Duration = Duration::from_secs(120);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A `NOTIFY_SOCKET` of our own: a datagram socket in the test's temp dir.
pub struct NotifySocket {
    pub path: PathBuf,
    sock: UnixDatagram,
    /// Everything received so far, one entry per datagram.
    pub seen: Vec<String>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            path,
            sock,
            seen: Vec::new(),
        }
    }

    /// The next datagram, or `None` after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<String> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                Some(msg)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Receives until a datagram has a line equal to `line`; panics after `timeout`.
    pub fn wait_for(&mut self, line: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {line:?} within {timeout:?}; got {:?}",
                self.seen
            );
            if let Some(m) = self.recv(left) {
                if m.lines().any(|l| l == line) {
                    return m;
                }
            }
        }
    }

    /// Datagrams received within `window`.
    pub fn collect(&mut self, window: Duration) -> Vec<String> {
        let end = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Some(m) = self.recv(left) {
                out.push(m);
            }
        }
        out
    }
}

/// The value of `KEY=` in a notify message.
pub fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// A config file for a daemon living in `dir`: its own socket, ephemeral ports.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("edgeinferd.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{d}/var\"\n{extra}\n[server]\nunix_socket = \"{d}/edgeinferd.sock\"\ntcp = \"127.0.0.1:0\"\n\
             shutdown_grace_ms = 2000\n[http]\nlisten = \"127.0.0.1:0\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    path
}

/// The daemon binary with a clean environment apart from what the test sets.
pub fn daemon_command(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("EDGEINFER_")
            || k.to_string_lossy().starts_with("LISTEN_")
        {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    // Logs go to a file beside the config: a pipe nobody reads would fill up and stall it.
    let log = std::fs::File::create(config.with_extension("log")).unwrap();
    cmd.stdout(Stdio::null()).stderr(log);
    cmd
}

/// What the daemon logged (see [`daemon_command`]).
pub fn daemon_log(config: &Path) -> String {
    std::fs::read_to_string(config.with_extension("log")).unwrap_or_default()
}

/// Kills the child if a test fails halfway.
pub struct Reaper(pub Option<Child>);

impl Reaper {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.0.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits for exit (with a deadline).
    pub fn wait(mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("daemon did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One row of the churn model over the binary protocol; returns the probabilities.
pub fn predict_churn(endpoint: &Endpoint) -> Vec<f32> {
    let mut c = Client::connect(endpoint).unwrap_or_else(|e| panic!("connect {endpoint}: {e}"));
    c.set_timeout(Some(Duration::from_secs(30))).unwrap();
    let row: Vec<u8> = (0..20)
        .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
        .collect();
    let shape = [1u64, 20];
    let view = TensorView::new("float_input", DType::F32, &shape, &row).unwrap();
    let r = c
        .predict("churn", &[view], &PredictOptions::default())
        .unwrap();
    r.output("probabilities").unwrap().to_f32().unwrap()
}

/// The `HTTP on ADDR` part of the daemon's READY status line.
pub fn http_addr(status: &str) -> std::net::SocketAddr {
    let at = status
        .find("HTTP on ")
        .unwrap_or_else(|| panic!("no HTTP address in {status:?}"))
        + 8;
    status[at..]
        .split([' ', ',', ')'])
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `GET path` on a fresh connection; the status code and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let code = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}
