//! `edgeinferd`: parse and validate the configuration without binding anything, load and
//! warm the models, take systemd's listeners or bind our own, start the core runtimes and
//! the HTTP server, tell systemd READY=1, then wait for signals: SIGTERM/SIGINT drain
//! within `server.shutdown_grace_ms` and exit 0; SIGHUP reloads what can change live.
//!
//! Exit codes: 0 after a clean shutdown (or a valid `--check-config`), 1 on any error
//! (printed with its causes), 2 on bad usage.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use edgeinferd::app::{self, App};
use edgeinferd::config::{self, Config, ConfigArgs};
use edgeinferd::server::{self, Listeners};
use edgeinferd::{http, systemd};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter};

/// edgeinfer daemon: serves ONNX models over a zero-copy binary protocol.
///
/// Without --config it serves the embedded demo churn model on ./var/edgeinferd.sock,
/// 127.0.0.1:7700 (binary protocol) and 127.0.0.1:7701 (HTTP). Every flag overrides one
/// config key (docs/config.md) and reads an EDGEINFER_* environment variable.
/// Exit codes: 0 clean shutdown or valid --check-config, 1 error, 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "edgeinferd", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

type LogHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

fn main() {
    let cli = Cli::parse();
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgeinferd: {e}");
            std::process::exit(1);
        }
    };
    if cli.config.check_config {
        println!("edgeinferd: configuration OK");
        for w in cfg.warnings() {
            println!("warning: {w}");
        }
        return;
    }
    // EDGEINFER_LOG (a tracing filter) beats the configured level.
    let filter = |level: &str| {
        EnvFilter::try_from_env("EDGEINFER_LOG").unwrap_or_else(|_| EnvFilter::new(level))
    };
    let (layer, log) = reload::Layer::new(filter(&cfg.log_level));
    tracing_subscriber::registry()
        .with(layer)
        .with(log_layer(std::io::IsTerminal::is_terminal(
            &std::io::stderr(),
        )))
        .init();
    if let Err(err) = run(cli.config, cfg, log, filter) {
        eprintln!("edgeinferd: {err:#}");
        std::process::exit(1);
    }
}

/// Log lines on stderr; colour only on a terminal, so journald and files get plain text.
fn log_layer<S>(ansi: bool) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
}

fn run(
    args: ConfigArgs,
    mut cfg: Config,
    log: LogHandle,
    filter: impl Fn(&str) -> EnvFilter,
) -> anyhow::Result<()> {
    // What systemd hands over is taken while this process is still single-threaded.
    let activated = systemd::listen_fds().context("socket activation")?;
    let notifier = systemd::Notifier::from_env().context("NOTIFY_SOCKET")?;
    let watchdog_timeout = systemd::watchdog_timeout_from_env();
    // From here on the signals go to the iterator, not the default handlers.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing signal handlers")?;
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }

    let _ = notifier.status("loading models");
    let table = app::load_models(&cfg.model_specs())?;

    let opts = cfg.server_options();
    // The feature store opens before the cores: readers sized to them, stale ones cleared.
    let cores = if opts.cores.is_empty() {
        edgeinfer_engine::cores::allowed_cores()?.len()
    } else {
        opts.cores.len()
    };
    server::entity::start(&cfg, &table, cores).context("[cache]")?;
    // The socket file to remove on exit: only one this process bound (not systemd's).
    let mut bound_unix = None;
    let (listeners, http_listener, places) = match activated.filter(|a| !a.is_empty()) {
        Some(a) => {
            // Sockets systemd hands over get the same security rules as ones bound here:
            // a non-loopback listener needs TLS or a token, or the daemon refuses to start.
            a.check(&cfg)?;
            let places = a.describe();
            let (listeners, mut http) = a.into_server_listeners();
            let http = match http.pop() {
                Some(l) => Some(l),
                None => http::bind(&cfg)?,
            };
            (listeners, http, places)
        }
        None => {
            let (listeners, places) = bind(&cfg, &opts)?;
            if !listeners.unix.is_empty() {
                bound_unix = Some(cfg.server.unix_socket.clone());
            }
            (listeners, http::bind(&cfg)?, places)
        }
    };
    let restored = edgeinferd::registry_glue::restore(&cfg, &app::Control::new(table.clone()))?;
    let app = App::start(opts, table.clone(), listeners)?;
    let _registry = edgeinferd::registry_glue::start(&cfg, app.control().clone())?;
    let _telemetry = edgeinferd::telemetry_glue::start(&cfg, table.clone())?;
    edgeinferd::telemetry_glue::on_gpu_transition(edgeinferd::telemetry_glue::gpu_failover(
        app.control().clone(),
        cfg.model_specs(),
    ));
    let http = match http_listener {
        Some(l) => Some(http::spawn(&cfg, table.clone(), Some(app.stats()), l)?),
        None => None,
    };
    let models: Vec<String> = table
        .snapshot()
        .versions()
        .map(|v| format!("{} ({}, {})", v.name, v.version, v.model.backend()))
        .collect();
    let mut line = format!("serving {} on {}", models.join(", "), places.join(" and "));
    if !restored.is_empty() {
        line.push_str(&format!(" (registry: {})", restored.join(", ")));
    }
    if let Some(h) = &http {
        line.push_str(&format!(", HTTP on {}", h.local_addr()));
    }
    println!(
        "edgeinferd: {line} ({} cores, {} driver)",
        app.cores().len(),
        app.driver()
    );
    notifier.ready(&table, &line).context("READY=1")?;
    let watchdog = match watchdog_timeout {
        Some(t) => {
            let w =
                systemd::spawn_watchdog(notifier.clone(), systemd::WatchdogTiming::for_timeout(t))?;
            w.watch(app.heartbeats());
            Some(w)
        }
        None => None,
    };

    let mut grace = cfg.shutdown_grace();
    for sig in signals.forever() {
        if sig != SIGHUP {
            tracing::info!(
                signal = sig,
                grace_ms = grace.as_millis() as u64,
                "shutting down"
            );
            break;
        }
        let _ = notifier.reloading();
        let status = match reload(&args, &cfg, &table) {
            Ok((next, plan)) => {
                if let Some(level) = &plan.log_level {
                    let _ = log.modify(|f| *f = filter(level));
                }
                if let Some(g) = plan.shutdown_grace {
                    grace = g;
                }
                cfg = next;
                plan.summary()
            }
            Err(e) => format!("reload failed, still serving the previous configuration: {e:#}"),
        };
        tracing::info!("SIGHUP: {status}");
        let _ = notifier.reloaded(&status);
    }
    let _ = notifier.stopping("draining");
    app.shutdown(grace);
    let stats = app.stats();
    app.wait()?;
    if let Some(h) = http {
        h.shutdown();
    }
    drop(watchdog);
    if let Some(path) = bound_unix {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!(requests = stats.requests(), "stopped");
    Ok(())
}

/// Binds the configured listeners: the Unix socket once, TCP once per core (SO_REUSEPORT).
fn bind(cfg: &Config, opts: &server::ServerOptions) -> anyhow::Result<(Listeners, Vec<String>)> {
    let s = &cfg.server;
    let mut listeners = Listeners::default();
    let mut places = Vec::new();
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    if !s.unix_socket.as_os_str().is_empty() {
        let gid = s
            .socket_group
            .as_deref()
            .map(server::group_id)
            .transpose()
            .context("server.socket_group")?;
        let l = server::bind_unix(&s.unix_socket, s.socket_mode.0, gid)
            .with_context(|| format!("binding {}", s.unix_socket.display()))?;
        places.push(format!("unix:{}", s.unix_socket.display()));
        listeners.unix.push(l);
    }
    if let Some(addr) = s.tcp {
        let cores = if opts.cores.is_empty() {
            edgeinfer_engine::cores::allowed_cores()?.len()
        } else {
            opts.cores.len()
        };
        let g = server::bind_tcp(&addr.to_string(), cores)
            .with_context(|| format!("binding {addr}"))?;
        places.push(format!("tcp:{}", g.local_addr()?));
        listeners.tcp.push(g);
    }
    anyhow::ensure!(
        !places.is_empty(),
        "nothing to serve on: configure server.unix_socket or server.tcp"
    );
    Ok((listeners, places))
}

/// Loads the configuration again and applies what can change live.
fn reload(
    args: &ConfigArgs,
    old: &Config,
    table: &Arc<edgeinferd::model_table::ModelTable>,
) -> anyhow::Result<(Config, config::ReloadPlan)> {
    let next = Config::load(args)?;
    let plan = config::reload_plan(old, &next);
    app::apply_reload(table, &plan)?;
    edgeinferd::server::entity::rebind_config(&next, table);
    Ok((next, plan))
}
