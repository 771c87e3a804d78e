//! Shared parts of the telemetry integration tests: free loopback ports, a hub + outbox +
//! publisher in a temp dir, mosquitto as a child process, and the Python consumer.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeinfer_telemetry::config::BrokerAddr;
use edgeinfer_telemetry::hub::{Hub, HubSettings};
use edgeinfer_telemetry::messages::Topics;
use edgeinfer_telemetry::outbox::{Outbox, OutboxLimits};
use edgeinfer_telemetry::publisher::{Publisher, PublisherConfig};
use edgeinfer_telemetry::SystemClock;

/// Fails the whole test binary if a test is still running after `secs`: a stuck broker or
/// consumer must show up as a failure, never as a CI run that never ends.
pub fn watchdog(what: &'static str, secs: u64) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        eprintln!("{what}: still running after {secs} s; failing");
        std::process::exit(101);
    });
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_port(port: u16) {
    let a: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for("the broker to listen", Duration::from_secs(10), || {
        TcpStream::connect_timeout(&a, Duration::from_millis(200)).ok()
    });
}

pub fn open_outbox(dir: &Path) -> Arc<Outbox> {
    let limits = OutboxLimits {
        max_bytes: 64 << 20,
        max_age_ms: 24 * 3600 * 1000,
    };
    Arc::new(Outbox::open(dir, limits, Arc::new(SystemClock)).unwrap())
}

pub fn topics(prefix: &str) -> Topics {
    Topics {
        prefix: prefix.into(),
        device: "dev1".into(),
    }
}

pub fn hub(prefix: &str, outbox: Arc<Outbox>) -> Hub {
    let settings = HubSettings {
        interval_ms: 0,
        drift_window_rows: 100,
        accuracy_window_labels: 100,
        accuracy_max_relative_drop: 0.05,
    };
    Hub::new(topics(prefix), outbox, Arc::new(SystemClock), settings)
}

pub fn publisher(prefix: &str, port: u16, outbox: Arc<Outbox>) -> Publisher {
    let cfg = PublisherConfig {
        broker: BrokerAddr {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        },
        client_id: format!("edgeinfer-test-{}-{}", std::process::id(), port),
        credentials: None,
        tls_ca_pem: None,
        topics: topics(prefix),
        message_expiry_s: 3600,
        keep_alive: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(400),
    };
    Publisher::spawn(cfg, outbox, Arc::new(SystemClock), Box::new(|| {})).unwrap()
}

/// mosquitto from Debian on a loopback port, persisting sessions in `dir` so a consumer's
/// QoS 1 subscription survives a broker restart (an operator's broker does the same). The
/// per-client queue is unbounded (`max_queued_messages 0`): mosquitto's default of 1,000
/// silently drops QoS 1 messages to a subscriber slower than a replay burst.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

pub fn mosquitto_bin() -> String {
    std::env::var("EDGEINFER_TEST_MOSQUITTO").expect(
        "EDGEINFER_TEST_MOSQUITTO is not set: run tools/ci/test.sh (tools/ci/provision-telemetry.sh installs mosquitto)",
    )
}

impl Mosquitto {
    pub fn start(dir: &Path, port: u16) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\nautosave_interval 1\npersistence_location {}/\nlog_dest none\nmax_queued_messages 0\nuser {}\n",
                dir.display(),
                // Run as root (CI), mosquitto would drop to the `mosquitto` user, which can't
                // write the persistence file in our temp dir: the session would not survive.
                std::env::var("USER").unwrap_or_else(|_| "root".into())
            ),
        )
        .unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        wait_port(port);
        Mosquitto {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    /// SIGTERM: mosquitto saves its sessions and exits.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        // It saves every second too (autosave_interval), so a forced stop loses no session.
        let end = Instant::now() + Duration::from_secs(3);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python consumer: one parsed JSON line per message received.
pub struct Consumer {
    child: Child,
    pub lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Consumer {
    pub fn start(port: u16, prefix: &str) -> Consumer {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../telemetry");
        let schemas = root.join("../docs/telemetry");
        Consumer::script("consumer.py", port, &[prefix.as_ref(), schemas.as_os_str()])
    }

    /// `telemetry/tests/<script> 127.0.0.1 <port> <args…>` in the MQTT venv, until it says
    /// it is connected.
    pub fn script(script: &str, port: u16, args: &[&std::ffi::OsStr]) -> Consumer {
        let python = std::env::var("EDGEINFER_TEST_MQTT_PYTHON").expect(
            "EDGEINFER_TEST_MQTT_PYTHON is not set: run tools/ci/test.sh (tools/ci/provision-telemetry.sh makes .cache/venv-mqtt)",
        );
        // From the manifest of whichever crate includes this file (the daemon's tests do too).
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../telemetry");
        let mut child = Command::new(python)
            .arg(root.join("tests").join(script))
            .arg("127.0.0.1")
            .arg(port.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the Python consumer");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str(&line) {
                    l.lock().unwrap().push(v);
                }
            }
        });
        let c = Consumer { child, lines };
        c.wait_until("the consumer to connect", |l| {
            l.iter().any(|v| v["connected"] == true)
        });
        c
    }

    pub fn messages(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v.get("topic").is_some())
            .cloned()
            .collect()
    }

    pub fn wait_until(&self, what: &str, f: impl Fn(&[serde_json::Value]) -> bool) {
        // A copy, not the guard: `f` may call `seqs` or `messages`, which lock again.
        wait_for(what, Duration::from_secs(30), || {
            let lines = self.lines.lock().unwrap().clone();
            f(&lines).then_some(())
        });
    }

    /// Messages of one topic level, by first arrival, and how many arrived twice without
    /// the DUP flag. A QoS 1 redelivery by the broker (after its restart, of a message whose
    /// PUBACK from this consumer it had not saved) carries DUP and is at-least-once as MQTT
    /// defines it; a second copy without DUP would be a second publish by the daemon.
    pub fn seqs(&self, level: &str) -> (Vec<u64>, usize) {
        let mut seen = std::collections::BTreeSet::new();
        let mut order = Vec::new();
        let mut dups = 0;
        for m in self.messages().iter().filter(|m| m["level"] == level) {
            let s = m["seq"].as_u64().unwrap();
            if seen.insert(s) {
                order.push(s);
            } else if m["dup"] != true {
                dups += 1;
            }
        }
        (order, dups)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
