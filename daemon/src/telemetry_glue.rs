//! Composes the telemetry crate into the daemon: the per-core latency recorders the data
//! path feeds (thread-local, no lock; handed over once per interval through a channel), the
//! control thread that merges them and publishes status, latency, drift, GPU and events
//! through the outbox, and the event API the rest of the daemon calls.
//!
//! The data path touches this module only through [`record_ok`] / [`record_error`]; when
//! telemetry is off they cost one relaxed load.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edgeinfer_telemetry::config::BrokerAddr;
use edgeinfer_telemetry::events::Event;
use edgeinfer_telemetry::hub::{Hub, HubSettings};
use edgeinfer_telemetry::latency::{CoreRecorder, Series};
use edgeinfer_telemetry::messages::{ModelState, OutboxState, Status, Topics};
use edgeinfer_telemetry::outbox::{Outbox, OutboxLimits};
use edgeinfer_telemetry::publisher::{Publisher, PublisherConfig, PublisherStats};
use edgeinfer_telemetry::{Clock, SystemClock};

use crate::config::Config;
use crate::model_table::ModelTable;

/// A/B arm label until the rollout work names arms: the version serves as its own arm.
const DEFAULT_ARM: &str = "default";

/// Where cores send their interval's histograms; set once when telemetry starts.
static SINK: OnceLock<Sender<Vec<Series>>> = OnceLock::new();
/// Where any thread sends events; set once when telemetry starts.
static EVENTS: OnceLock<Sender<Event>> = OnceLock::new();
/// Bumped by the control thread each interval; a core that sees a new value hands over.
static EPOCH: AtomicU64 = AtomicU64::new(0);
static ON: AtomicBool = AtomicBool::new(false);

struct CoreState {
    rec: CoreRecorder,
    epoch: u64,
    tx: Sender<Vec<Series>>,
}

thread_local! {
    static CORE: RefCell<Option<CoreState>> = const { RefCell::new(None) };
}

fn with_core(f: impl FnOnce(&mut CoreRecorder)) {
    if !ON.load(Relaxed) {
        return;
    }
    CORE.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            let Some(tx) = SINK.get() else { return };
            *c = Some(CoreState {
                rec: CoreRecorder::default(),
                epoch: EPOCH.load(Relaxed),
                tx: tx.clone(),
            });
        }
        let Some(st) = c.as_mut() else { return };
        let e = EPOCH.load(Relaxed);
        if e != st.epoch {
            st.epoch = e;
            let _ = st.tx.send(st.rec.take());
        }
        f(&mut st.rec);
    });
}

/// A request answered: called by the core that answered it.
pub fn record_ok(model: &str, version: &str, total: Duration, queue: Duration, compute: Duration) {
    with_core(|r| {
        r.record_ok(
            model,
            version,
            DEFAULT_ARM,
            total.as_micros() as u64,
            queue.as_micros() as u64,
            compute.as_micros() as u64,
        )
    });
}

/// A request failed with wire error `code`.
pub fn record_error(model: &str, version: &str, code: u32, total: Duration) {
    with_core(|r| r.record_error(model, version, DEFAULT_ARM, code, total.as_micros() as u64));
}

/// Reports an event (model lifecycle, engine fallback, …); a no-op when telemetry is off.
pub fn emit(ev: Event) {
    if let Some(tx) = EVENTS.get() {
        let _ = tx.send(ev);
    }
}

/// Running telemetry: dropping it stops the control thread and the MQTT task.
pub struct Telemetry {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<PublisherStats>,
    outbox: Arc<Outbox>,
}

impl Telemetry {
    pub fn publisher_stats(&self) -> &PublisherStats {
        &self.stats
    }
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts telemetry if `[telemetry] enabled`; `None` otherwise. Nothing here can stop the
/// daemon from serving once started: broker trouble only fills the outbox.
pub fn start(cfg: &Config, table: Arc<ModelTable>) -> anyhow::Result<Option<Telemetry>> {
    let t = &cfg.telemetry;
    if !t.enabled {
        return Ok(None);
    }
    let url = t.mqtt_url.as_deref().context("telemetry.mqtt_url")?;
    let broker = BrokerAddr::parse(url).map_err(anyhow::Error::msg)?;
    let device = t.device();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let limits = OutboxLimits {
        max_bytes: t.outbox_max_bytes,
        max_age_ms: t.outbox_max_age_s.saturating_mul(1000),
    };
    let dir = t.outbox_dir(&cfg.state_dir);
    let outbox = Arc::new(
        Outbox::open(&dir, limits, clock.clone())
            .with_context(|| format!("telemetry outbox {}", dir.display()))?,
    );
    let topics = Topics {
        prefix: t.topic_prefix.clone(),
        device: device.clone(),
    };
    let credentials = match (&t.username, &t.password_file) {
        (Some(u), Some(p)) => {
            let pw = std::fs::read_to_string(p)
                .with_context(|| format!("telemetry.password_file {}", p.display()))?;
            Some((u.clone(), pw.trim_end_matches(['\n', '\r']).to_owned()))
        }
        (Some(u), None) => Some((u.clone(), String::new())),
        _ => None,
    };
    let tls_ca_pem = match &t.tls_ca_file {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("telemetry.tls_ca_file {}", p.display()))?,
        ),
        None => None,
    };
    let pcfg = PublisherConfig {
        broker,
        client_id: t
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edgeinfer-{device}")),
        credentials,
        tls_ca_pem,
        topics: topics.clone(),
        message_expiry_s: t.message_expiry_s,
        keep_alive: Duration::from_secs(30),
        reconnect_min: Duration::from_millis(500),
        reconnect_max: Duration::from_secs(30),
    };
    let settings = HubSettings {
        interval_ms: t.interval_s.saturating_mul(1000),
        drift_window_rows: t.drift_window_rows,
        accuracy_window_labels: t.accuracy_window_labels,
        accuracy_max_relative_drop: t.accuracy_max_relative_drop,
    };
    let mut hub = Hub::new(topics, outbox.clone(), clock.clone(), settings);
    // A fresh `online` after every CONNACK replaces the retained Last Will.
    let (connected_tx, connected_rx) = mpsc::channel::<()>();
    let publisher = Publisher::spawn(
        pcfg,
        outbox.clone(),
        clock,
        Box::new(move || {
            let _ = connected_tx.send(());
        }),
    )?;
    hub.set_waker(publisher.waker());
    let stats = publisher.stats().clone();

    let (lat_tx, lat_rx) = mpsc::channel();
    let (ev_tx, ev_rx) = mpsc::channel();
    let _ = SINK.set(lat_tx);
    let _ = EVENTS.set(ev_tx);
    ON.store(true, Relaxed);
    for v in table.snapshot().versions() {
        emit(Event::ModelInstalled {
            model: v.name.clone(),
            version: v.version.clone(),
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let interval = Duration::from_secs(t.interval_s.max(1));
    let thread = std::thread::Builder::new()
        .name("edgeinfer-telemetry".into())
        .spawn(move || {
            control(
                hub,
                publisher,
                table,
                interval,
                s,
                lat_rx,
                ev_rx,
                connected_rx,
            )
        })
        .context("telemetry thread")?;
    Ok(Some(Telemetry {
        stop,
        thread: Some(thread),
        stats,
        outbox,
    }))
}

fn status(table: &ModelTable, outbox: &Outbox, started: Instant) -> Status {
    let snap = table.snapshot();
    let models = snap
        .models
        .values()
        .flat_map(|slot| {
            let default = slot.default_version().version.clone();
            slot.versions.iter().map(move |v| ModelState {
                name: v.name.clone(),
                version: v.version.clone(),
                backend: v.model.backend().name().to_owned(),
                default: v.version == default,
            })
        })
        .collect();
    let st = outbox.stats();
    Status {
        state: "online",
        daemon_version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: started.elapsed().as_secs(),
        models,
        outbox: OutboxState {
            messages: st.len.load(Relaxed),
            bytes: st.bytes.load(Relaxed),
            dropped: st.dropped_age.load(Relaxed)
                + st.dropped_bytes.load(Relaxed)
                + st.dropped_too_large.load(Relaxed),
        },
    }
}

/// The control thread: events as they come, everything else once per interval.
#[allow(clippy::too_many_arguments)]
fn control(
    mut hub: Hub,
    publisher: Publisher,
    table: Arc<ModelTable>,
    interval: Duration,
    stop: Arc<AtomicBool>,
    lat_rx: Receiver<Vec<Series>>,
    ev_rx: Receiver<Event>,
    connected_rx: Receiver<()>,
) {
    let started = Instant::now();
    let mut next = Instant::now() + interval;
    let report = |r: edgeinfer_telemetry::Result<()>| {
        if let Err(e) = r {
            tracing::warn!("telemetry: {e}");
        }
    };
    report(hub.status(&status(&table, hub.outbox(), started)));
    while !stop.load(Relaxed) {
        while let Ok(ev) = ev_rx.try_recv() {
            report(hub.emit(ev));
        }
        if connected_rx.try_recv().is_ok() {
            while connected_rx.try_recv().is_ok() {}
            report(hub.status(&status(&table, hub.outbox(), started)));
        }
        if Instant::now() >= next {
            next += interval;
            // Cores hand over on their next request after the bump; what an idle core
            // holds is reported with its next interval.
            EPOCH.fetch_add(1, Relaxed);
            while let Ok(s) = lat_rx.try_recv() {
                hub.add_latency(s);
            }
            report(hub.tick().map(|_| ()));
            report(hub.gpu(&edgeinfer_telemetry::gpu::read_gpus()).map(|_| ()));
            report(hub.status(&status(&table, hub.outbox(), started)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ON.store(false, Relaxed);
    publisher.stop();
}
