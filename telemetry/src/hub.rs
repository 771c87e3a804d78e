//! The control thread's side: turns latency, drift, accuracy, GPU readings and events into
//! messages, commits them to the outbox and wakes the MQTT task. Owns the open drift and
//! accuracy windows. Nothing here runs on a data-path core.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::accuracy::{AccuracyReport, AccuracyWindow, Baseline};
use crate::clock::Clock;
use crate::drift::{DriftCounts, DriftReport, DriftWindow, ReferenceStats};
use crate::error::Result;
use crate::events::Event;
use crate::gpu::{self, GpuHealth, GpuSample, HealthPolicy, Transition};
use crate::latency::{LatencyAggregator, LatencyReport, Series};
use crate::messages::{AccuracyMessage, DriftMessage, GpuMessage, Status, Topics};
use crate::monitoring::ModelMonitoring;
use crate::outbox::{NewMessage, Outbox};

/// Windows of one model version.
struct VersionState {
    drift: Option<DriftWindow>,
    baseline: Option<Baseline>,
    accuracy: BTreeMap<String, AccuracyWindow>,
    /// Labels per accuracy window and the alerting drop: the version's own (its bundle's)
    /// where it has them, else the settings'.
    accuracy_labels: u64,
    accuracy_drop: f64,
    /// The A/B arm the version serves in now (`default` outside a rollout): a version is in
    /// one arm at a time, so its drift window is that arm's.
    arm: String,
}

/// The arm of a version that is not in an in-device A/B split.
pub const DEFAULT_ARM: &str = "default";

/// Settings of the windows.
#[derive(Debug, Clone, Copy)]
pub struct HubSettings {
    pub interval_ms: u64,
    pub drift_window_rows: u64,
    pub accuracy_window_labels: u64,
    pub accuracy_max_relative_drop: f64,
}

/// What a FEEDBACK join produced.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackOutcome {
    pub report: Option<AccuracyReport>,
}

pub struct Hub {
    topics: Topics,
    outbox: Arc<Outbox>,
    wake: Option<Arc<Notify>>,
    clock: Arc<dyn Clock>,
    settings: HubSettings,
    latency: LatencyAggregator,
    versions: BTreeMap<(String, String), VersionState>,
    gpu: GpuHealth,
    gpu_ecc: Option<u64>,
    no_gpu_published: bool,
    gpu_policy: HealthPolicy,
}

/// What one [`Hub::tick`] produced: latency reports and the drift windows that closed,
/// each with its model and version.
pub type TickReports = (Vec<LatencyReport>, Vec<(String, String, DriftReport)>);

impl Hub {
    pub fn new(
        topics: Topics,
        outbox: Arc<Outbox>,
        clock: Arc<dyn Clock>,
        settings: HubSettings,
    ) -> Hub {
        Hub {
            topics,
            outbox,
            wake: None,
            clock,
            settings,
            latency: LatencyAggregator::default(),
            versions: BTreeMap::new(),
            gpu: GpuHealth::Healthy,
            gpu_ecc: None,
            no_gpu_published: false,
            gpu_policy: HealthPolicy::default(),
        }
    }

    /// The MQTT task to wake after each commit.
    pub fn set_waker(&mut self, wake: Arc<Notify>) {
        self.wake = Some(wake);
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Commits messages; a drop turns into an `outbox_overflow` event (itself committed).
    pub fn commit(&self, batch: Vec<NewMessage>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (_, dropped) = self.outbox.append(batch)?;
        if dropped.total() > 0 {
            let ev = Event::OutboxOverflow {
                dropped_by_age: dropped.by_age,
                dropped_by_bytes: dropped.by_bytes,
                dropped_too_large: dropped.too_large,
            };
            self.outbox
                .append(vec![self.topics.message("events", &ev, None, None)])?;
        }
        if let Some(w) = &self.wake {
            w.notify_one();
        }
        Ok(())
    }

    /// Reports an event.
    pub fn emit(&self, ev: Event) -> Result<()> {
        let (m, v) = ev.subject();
        let msg = self.topics.message("events", &ev, m, v);
        self.commit(vec![msg])
    }

    /// The retained status.
    pub fn status(&self, s: &Status) -> Result<()> {
        self.commit(vec![self.topics.message("status", s, None, None)])
    }

    /// Registers a model version's reference statistics and baseline (on install).
    pub fn add_version(
        &mut self,
        model: &str,
        version: &str,
        reference: Option<ReferenceStats>,
        baseline: Option<Baseline>,
    ) {
        self.add_monitored(
            model,
            version,
            ModelMonitoring {
                reference,
                baseline,
                ..ModelMonitoring::default()
            },
        );
    }

    /// [`Hub::add_version`] with everything `mon` carries, its own accuracy window included
    /// (a bundle's thresholds over the settings'). The arm a re-registered version served
    /// in is kept.
    pub fn add_monitored(&mut self, model: &str, version: &str, mon: ModelMonitoring) {
        let now = self.clock.now_ms();
        let s = &self.settings;
        let key = (model.to_owned(), version.to_owned());
        let arm = self
            .versions
            .get(&key)
            .map_or_else(|| DEFAULT_ARM.to_owned(), |v| v.arm.clone());
        self.versions.insert(
            key,
            VersionState {
                drift: mon
                    .reference
                    .map(|r| DriftWindow::new(r, s.drift_window_rows, s.interval_ms, now)),
                baseline: mon.baseline,
                accuracy: BTreeMap::new(),
                accuracy_labels: mon
                    .accuracy_window_labels
                    .unwrap_or(s.accuracy_window_labels),
                accuracy_drop: mon
                    .accuracy_max_relative_drop
                    .unwrap_or(s.accuracy_max_relative_drop),
                arm,
            },
        );
    }

    /// Names the arm `version` serves in from now on; its drift messages carry it.
    pub fn set_arm(&mut self, model: &str, version: &str, arm: &str) {
        if let Some(v) = self
            .versions
            .get_mut(&(model.to_owned(), version.to_owned()))
        {
            if v.arm != arm {
                v.arm = arm.to_owned();
            }
        }
    }

    /// The labels per accuracy window and the alerting drop `version` is judged with.
    pub fn accuracy_window(&self, model: &str, version: &str) -> Option<(u64, f64)> {
        self.versions
            .get(&(model.to_owned(), version.to_owned()))
            .map(|v| (v.accuracy_labels, v.accuracy_drop))
    }

    pub fn remove_version(&mut self, model: &str, version: &str) {
        self.versions.remove(&(model.into(), version.into()));
    }

    /// The reference of a version, for the cores' counters.
    pub fn reference(&self, model: &str, version: &str) -> Option<&ReferenceStats> {
        self.versions
            .get(&(model.to_owned(), version.to_owned()))
            .and_then(|v| v.drift.as_ref())
            .map(|d| d.reference())
    }

    /// A core's latency histograms for the interval.
    pub fn add_latency(&mut self, series: Vec<Series>) {
        self.latency.add(series);
    }

    /// A core's drift counters for a version.
    pub fn add_drift(&mut self, model: &str, version: &str, c: &DriftCounts) {
        if let Some(d) = self
            .versions
            .get_mut(&(model.to_owned(), version.to_owned()))
            .and_then(|v| v.drift.as_mut())
        {
            d.add(c);
        }
    }

    /// Once per interval: latency reports, and every drift window that is due (an alert
    /// window also raises a `drift_alert` event naming its features).
    pub fn tick(&mut self) -> Result<TickReports> {
        let now = self.clock.now_ms();
        let mut batch = Vec::new();
        let lat = self.latency.drain();
        for r in &lat {
            batch.push(
                self.topics
                    .message("latency", r, Some(&r.model), Some(&r.version)),
            );
        }
        let mut drift = Vec::new();
        for ((m, v), st) in &mut self.versions {
            if let Some(rep) = st.drift.as_mut().and_then(|d| d.close_if_due(now)) {
                let body = DriftMessage {
                    model: m,
                    version: v,
                    arm: &st.arm,
                    report: &rep,
                };
                batch.push(self.topics.message("drift", &body, Some(m), Some(v)));
                let alerts: Vec<String> = rep.alerts().into_iter().map(String::from).collect();
                if !alerts.is_empty() {
                    let ev = Event::DriftAlert {
                        model: m.clone(),
                        version: v.clone(),
                        features: alerts,
                    };
                    batch.push(self.topics.message("events", &ev, Some(m), Some(v)));
                }
                drift.push((m.clone(), v.clone(), rep));
            }
        }
        self.commit(batch)?;
        Ok((lat, drift))
    }

    /// A joined FEEDBACK: counts it in its (version, arm) window; a closed window publishes
    /// on `accuracy`, and one beyond the allowed drop raises `accuracy_alert`.
    pub fn feedback(
        &mut self,
        model: &str,
        version: &str,
        arm: &str,
        predicted: f64,
        truth: f64,
    ) -> Result<FeedbackOutcome> {
        let Some(st) = self
            .versions
            .get_mut(&(model.to_owned(), version.to_owned()))
        else {
            return Ok(FeedbackOutcome { report: None });
        };
        let Some(b) = st.baseline else {
            return Ok(FeedbackOutcome { report: None });
        };
        let (labels, drop) = (st.accuracy_labels, st.accuracy_drop);
        let w = st
            .accuracy
            .entry(arm.to_owned())
            .or_insert_with(|| AccuracyWindow::new(b, labels, drop));
        let Some(rep) = w.observe(predicted, truth) else {
            return Ok(FeedbackOutcome { report: None });
        };
        let body = AccuracyMessage {
            model,
            version,
            arm,
            report: &rep,
        };
        let mut batch = vec![self
            .topics
            .message("accuracy", &body, Some(model), Some(version))];
        if rep.alert {
            let ev = Event::AccuracyAlert {
                model: model.into(),
                version: version.into(),
                arm: arm.into(),
                metric: rep.metric.as_str().into(),
                value: rep.value,
                baseline: rep.baseline,
                relative_drop: rep.relative_drop,
            };
            batch.push(
                self.topics
                    .message("events", &ev, Some(model), Some(version)),
            );
        }
        self.commit(batch)?;
        Ok(FeedbackOutcome { report: Some(rep) })
    }

    /// A GPU reading: publishes it (or "no GPU" once), decides failover, and returns the
    /// transition for the daemon to act on (each way is also an event).
    pub fn gpu(&mut self, sample: &GpuSample) -> Result<Option<Transition>> {
        let (next, t) = gpu::decide(&self.gpu, sample, self.gpu_ecc, &self.gpu_policy);
        let mut batch = Vec::new();
        match sample {
            GpuSample::NoNvml { reason } => {
                // A box without a GPU never had one to fail over from: say so once.
                if !self.no_gpu_published {
                    let body = GpuMessage {
                        present: false,
                        reason: Some(reason),
                        gpus: &[],
                        engine: "cpu",
                    };
                    batch.push(self.topics.message("gpu", &body, None, None));
                    self.no_gpu_published = true;
                }
                return self.commit(batch).map(|_| None);
            }
            GpuSample::Gpus(g) => {
                self.gpu_ecc = g.first().and_then(|r| r.ecc_uncorrected);
                let engine = if matches!(next, GpuHealth::Healthy) {
                    "gpu"
                } else {
                    "cpu"
                };
                let body = GpuMessage {
                    present: !g.is_empty(),
                    reason: None,
                    gpus: g,
                    engine,
                };
                batch.push(self.topics.message("gpu", &body, None, None));
            }
        }
        match &t {
            Some(Transition::FailOver { reason }) => batch.push(self.topics.message(
                "events",
                &Event::GpuUnhealthy {
                    reason: reason.clone(),
                },
                None,
                None,
            )),
            Some(Transition::Recover) => {
                batch.push(
                    self.topics
                        .message("events", &Event::GpuRecovered {}, None, None),
                )
            }
            None => {}
        }
        self.gpu = next;
        self.commit(batch)?;
        Ok(t)
    }
}
