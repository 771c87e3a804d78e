//! Shared by the registry tests: a signed TUF repository (registry-sync's test repository
//! builder) with real releases of the churn fixture (bundle.json with golden samples taken
//! from the committed ONNX Runtime golden file), a tiny loopback static HTTP server with
//! Range support and fault modes, and the daemon run in-process from a `[registry]` config
//! on a temp-dir Unix socket, asked over that socket which version it serves.
#![allow(dead_code)]

pub mod release;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeinfer_client::blocking::Client;
use edgeinfer_client::{Endpoint, PredictOptions};
use edgeinfer_proto::Tensor;
use edgeinfer_registry::agent::{AgentEvent, RejectKind};
use edgeinfer_registry::tuf::testrepo::{Repo, NOW};
use edgeinfer_registry::tuf::ErrorKind;
use edgeinferd::app::{self, App, AppHandle, Control};
use edgeinferd::config::Config;
use edgeinferd::registry_glue::{self, Registry};
use edgeinferd::server::Listeners;

pub use release::*;

/// Bound on every wait for the agent.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// === the repository on disk ===

/// A repository, its directory, and a client state directory.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: Repo,
}

impl Env {
    /// A repository with `churn` version 1 (release counter 1) published.
    pub fn new() -> Env {
        let mut repo = Repo::new();
        publish_release(&mut repo, "churn", "1", 1, &churn_model());
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            repo,
        };
        env.write();
        std::fs::write(env.root_file(), env.repo.version("root", 1)).unwrap();
        env
    }

    pub fn repo_dir(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn root_file(&self) -> PathBuf {
        self.dir.path().join("root.json")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes the repository's current state to disk (metadata replaced, targets added).
    pub fn write(&self) {
        self.repo.write_to(&self.repo_dir());
    }

    pub fn metadata(&self, file: &str) -> PathBuf {
        self.repo_dir().join("metadata").join(file)
    }

    /// Where the repository serves `path`'s current bytes (consistent snapshot name).
    pub fn target_file(&self, path: &str) -> PathBuf {
        let data = &self.repo.artifacts[path];
        let (d, name) = path.rsplit_once('/').unwrap();
        self.repo_dir().join("targets").join(d).join(format!(
            "{}.{name}",
            edgeinfer_registry::tuf::testrepo::sha256_hex(data)
        ))
    }

    /// A `[registry]` config following churn from `url`.
    pub fn config(&self, url: &str) -> Config {
        config_for(url, &self.root_file(), &self.state_dir(), self.dir.path())
    }
}

pub fn config_for(url: &str, root: &Path, state: &Path, base: &Path) -> Config {
    let cfg = Config::from_toml_str(&config_text(url, root, state, base)).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// The TOML of [`config_for`] (for the daemon binary's `--config`).
pub fn config_text(url: &str, root: &Path, state: &Path, base: &Path) -> String {
    format!(
        r#"
state_dir = "{base}/var"
[server]
unix_socket = "{base}/edgeinferd.sock"
tcp = ""
cores = "0"
[http]
listen = ""
[engine]
default = "tract"
[registry]
enabled = true
url = "{url}"
root_file = "{root}"
models = ["churn"]
state_dir = "{state}"
poll_interval_ms = 3600000
poll_jitter_ms = 0
retry_initial_ms = 3600000
connect_timeout_ms = 500
read_timeout_ms = 1000
keep_versions = 2
"#,
        base = base.display(),
        root = root.display(),
        state = state.display(),
    )
}

// === the daemon ===

/// The reference time of the agent (tests move it to replay expired metadata).
pub fn clock() -> Arc<AtomicI64> {
    Arc::new(AtomicI64::new(NOW))
}

pub struct Daemon {
    pub app: Option<AppHandle>,
    pub registry: Option<Registry>,
    pub sock: PathBuf,
    pub restored: Vec<String>,
}

impl Daemon {
    /// Loads what the config names (the embedded demo churn), restores the last verified
    /// registry version, starts the cores on a Unix socket, then the agent (which waits for
    /// [`Daemon::poll`]: the configured interval is an hour).
    pub fn start(cfg: &Config, now: Arc<AtomicI64>) -> Daemon {
        Daemon::start_with(cfg, now, |_| {})
    }

    /// [`Daemon::start`] with `before` run on the loaded table before the restore (the
    /// feature tests open the store there, as `edgeinferd` does).
    pub fn start_with(
        cfg: &Config,
        now: Arc<AtomicI64>,
        before: impl FnOnce(&Arc<edgeinferd::model_table::ModelTable>),
    ) -> Daemon {
        std::fs::create_dir_all(&cfg.state_dir).unwrap();
        let table = app::load_models(&cfg.model_specs()).expect("load models");
        before(&table);
        let restored = registry_glue::restore(cfg, &Control::new(table.clone())).unwrap();
        let sock = cfg.server.unix_socket.clone();
        let _ = std::fs::remove_file(&sock);
        let listeners = Listeners {
            unix: vec![UnixListener::bind(&sock).unwrap()],
            tcp: vec![],
        };
        let app = App::start(cfg.server_options(), table, listeners).expect("start app");
        let registry = registry_glue::start_with_clock(
            cfg,
            app.control().clone(),
            Arc::new(move || now.load(SeqCst)),
        )
        .unwrap()
        .expect("registry enabled");
        // The agent's first poll runs at once.
        assert!(registry.wait_first_poll(WAIT), "first poll");
        Daemon {
            app: Some(app),
            registry: Some(registry),
            sock,
            restored,
        }
    }

    pub fn registry(&self) -> &Registry {
        self.registry.as_ref().unwrap()
    }

    /// One poll, waited for.
    pub fn poll(&self) {
        assert!(self.registry().poll_and_wait(WAIT), "poll timed out");
    }

    /// Events since index `from`.
    pub fn events_since(&self, from: usize) -> Vec<AgentEvent> {
        self.registry().events().into_iter().skip(from).collect()
    }

    pub fn event_count(&self) -> usize {
        self.registry().events().len()
    }

    /// The version a default (unpinned) request for churn is answered by, over the socket,
    /// with outputs equal to the committed golden outputs.
    pub fn serving(&self) -> String {
        let mut c = Client::connect(&Endpoint::Unix(self.sock.clone())).expect("connect");
        c.set_timeout(Some(Duration::from_secs(20))).unwrap();
        let (input, want) = golden_rows(0, 4);
        let r = c
            .predict("churn", &[input.view()], &PredictOptions::default())
            .expect("predict");
        let got = r.output("label").expect("label output");
        assert_eq!(got, &want[0], "labels of the served version");
        r.version
    }

    pub fn assert_serving(&self, version: &str) {
        assert_eq!(self.serving(), version, "served version");
    }

    pub fn stop(&mut self) {
        self.registry.take();
        if let Some(app) = self.app.take() {
            app.shutdown(Duration::from_secs(5));
            app.wait().expect("clean stop");
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Rows `[from, to)` of the committed golden file: the input, and the expected outputs.
pub fn golden_rows(from: usize, to: usize) -> (Tensor, Vec<Tensor>) {
    let g = golden_json();
    let t = |v: &serde_json::Value| {
        let shape: Vec<u64> = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let data: Vec<f64> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_f64().unwrap())
            .collect();
        let per = (shape.iter().skip(1).product::<u64>()) as usize;
        let mut s = shape.clone();
        s[0] = (to - from) as u64;
        let dtype = v["dtype"].as_str().unwrap().parse().unwrap();
        Tensor::from_f64_as(
            v["name"].as_str().unwrap(),
            dtype,
            s,
            &data[from * per..to * per],
        )
        .unwrap()
    };
    let input = t(&g["inputs"][0]);
    let outputs = g["outputs"].as_array().unwrap().iter().map(t).collect();
    (input, outputs)
}

/// Whether `ev` refuses churn for `kind`.
pub fn rejected(ev: &AgentEvent, want: impl Fn(&RejectKind) -> bool) -> bool {
    matches!(ev, AgentEvent::Rejected { kind, .. } if want(kind))
}

pub fn metadata_kind(k: ErrorKind) -> impl Fn(&RejectKind) -> bool {
    move |r| *r == RejectKind::Metadata(k)
}

/// Asserts one of the events since `from` is a refusal matching `want`, and returns its text.
pub fn expect_rejection(
    d: &Daemon,
    from: usize,
    what: &str,
    want: impl Fn(&RejectKind) -> bool,
) -> String {
    let ev = d
        .registry()
        .wait_event(from, WAIT, |e| rejected(e, &want))
        .unwrap_or_else(|| {
            panic!(
                "no rejection event for {what}; events: {:?}",
                d.events_since(from)
            )
        });
    match ev {
        AgentEvent::Rejected { reason, .. } => reason,
        _ => unreachable!(),
    }
}

/// Waits for `version` to be reported installed after event `from`.
pub fn expect_installed(d: &Daemon, from: usize, version: &str) {
    d.registry()
        .wait_event(
            from,
            WAIT,
            |e| matches!(e, AgentEvent::Installed { version: v, .. } if v == version),
        )
        .unwrap_or_else(|| panic!("{version} not installed: {:?}", d.events_since(from)));
}

/// Publishes churn `version`, polls, and checks it installs and serves.
pub fn release_and_serve(env: &mut Env, d: &Daemon, version: &str, counter: u64) {
    let n = d.event_count();
    publish_release(&mut env.repo, "churn", version, counter, &churn_model());
    env.write();
    d.poll();
    expect_installed(d, n, version);
    d.assert_serving(version);
}

// === a static HTTP server ===

/// How the server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Accepts and never answers (a slow registry).
    Stall,
    /// Sends the full Content-Length header but only this many body bytes of a target file
    /// without a Range header, then closes (an interrupted download).
    CutTargets(u64),
}

/// Every request a [`StaticServer`] answered: (path, Range header).
pub type RequestLog = Vec<(String, Option<String>)>;

/// A loopback static file server for a repository directory, with `Range: bytes=N-`.
pub struct StaticServer {
    pub addr: String,
    pub mode: Arc<Mutex<Mode>>,
    /// Every request: (path, Range header).
    pub log: Arc<Mutex<RequestLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticServer {
    pub fn start(root: &Path) -> StaticServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, lg, st, root) = (mode.clone(), log.clone(), stop.clone(), root.to_owned());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let mode = *m.lock().unwrap();
                        if mode == Mode::Stall {
                            held.push(s); // never answered; closed when the server stops
                            continue;
                        }
                        let _ = serve(s, &root, mode, &lg);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        StaticServer {
            addr,
            mode,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/repo", self.addr)
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut s: TcpStream,
    root: &Path,
    mode: Mode,
    log: &Mutex<RequestLog>,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    let t0 = Instant::now();
    while !head.ends_with(b"\r\n\r\n")
        && head.len() < 16384
        && t0.elapsed() < Duration::from_secs(5)
    {
        if s.read(&mut b)? == 0 {
            return Ok(());
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim().to_owned());
    log.lock().unwrap().push((path.clone(), range.clone()));
    let rel = path.strip_prefix("/repo/").unwrap_or("");
    let file = root.join(rel.replace("%2F", "/"));
    let Ok(data) = std::fs::read(&file).map_err(|_| ()).and_then(|d| {
        if rel.is_empty() || rel.contains("..") {
            Err(())
        } else {
            Ok(d)
        }
    }) else {
        return s.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match from {
        Some(f) if f < data.len() => {
            let body = &data[f..];
            write!(
                s,
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {f}-{}/{}\r\nConnection: close\r\n\r\n",
                body.len(),
                data.len() - 1,
                data.len()
            )?;
            s.write_all(body)
        }
        Some(_) => s.write_all(
            b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        None => {
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len()
            )?;
            match mode {
                Mode::CutTargets(n) if rel.starts_with("targets/") && (n as usize) < data.len() => {
                    s.write_all(&data[..n as usize])?;
                    s.flush()?;
                    Ok(()) // closed early: the client sees a short body
                }
                _ => s.write_all(&data),
            }
        }
    }
}

/// A free loopback port nothing listens on (the registry is down).
pub fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("http://{a}/repo")
}
