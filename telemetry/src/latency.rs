//! Latency per model, version and A/B arm, in HDR histograms. Each core records into its
//! own [`CoreRecorder`] (no lock, no atomics, no allocation after a series' first request)
//! and hands it over once per interval; the control thread merges them with
//! [`LatencyAggregator`] and turns each series into one report.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest value kept exactly, in µs (60 s); longer requests saturate here.
const MAX_US: u64 = 60_000_000;
/// Significant figures: 0.1% resolution is plenty for p99 and keeps a histogram ~20 KiB.
const SIGFIG: u8 = 2;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, SIGFIG).expect("static bounds are valid")
}

/// The labels of one series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SeriesKey {
    pub model: String,
    pub version: String,
    pub arm: String,
}

/// One series' histograms over an interval.
#[derive(Debug, Clone)]
pub struct Series {
    pub key: SeriesKey,
    pub total: Histogram<u64>,
    pub queue: Histogram<u64>,
    pub compute: Histogram<u64>,
    /// Failed requests by wire error code.
    pub errors: BTreeMap<u32, u64>,
}

impl Series {
    fn new(key: SeriesKey) -> Series {
        Series {
            key,
            total: histogram(),
            queue: histogram(),
            compute: histogram(),
            errors: BTreeMap::new(),
        }
    }

    fn merge(&mut self, o: &Series) {
        // Same bounds on both sides: `add` cannot fail.
        let _ = self.total.add(&o.total);
        let _ = self.queue.add(&o.queue);
        let _ = self.compute.add(&o.compute);
        for (c, n) in &o.errors {
            *self.errors.entry(*c).or_default() += n;
        }
    }
}

/// One core's histograms. Series are few (models × versions × arms), so a linear scan over
/// borrowed strings finds one faster than hashing, and shares no cache line with other cores.
#[derive(Debug, Default)]
pub struct CoreRecorder {
    series: Vec<Series>,
}

impl CoreRecorder {
    fn slot(&mut self, model: &str, version: &str, arm: &str) -> &mut Series {
        let i = match self
            .series
            .iter()
            .position(|s| s.key.model == model && s.key.version == version && s.key.arm == arm)
        {
            Some(i) => i,
            None => {
                self.series.push(Series::new(SeriesKey {
                    model: model.into(),
                    version: version.into(),
                    arm: arm.into(),
                }));
                self.series.len() - 1
            }
        };
        &mut self.series[i]
    }

    /// A successful request: end-to-end, queued and engine time in µs.
    pub fn record_ok(
        &mut self,
        model: &str,
        version: &str,
        arm: &str,
        total_us: u64,
        queue_us: u64,
        compute_us: u64,
    ) {
        let s = self.slot(model, version, arm);
        s.total.saturating_record(total_us.max(1));
        s.queue.saturating_record(queue_us.max(1));
        s.compute.saturating_record(compute_us.max(1));
    }

    /// A failed request with its wire error code.
    pub fn record_error(
        &mut self,
        model: &str,
        version: &str,
        arm: &str,
        code: u32,
        total_us: u64,
    ) {
        let s = self.slot(model, version, arm);
        s.total.saturating_record(total_us.max(1));
        *s.errors.entry(code).or_default() += 1;
    }

    /// Hands this interval's histograms over and starts empty ones (keeping the series, so
    /// the core allocates nothing next interval).
    pub fn take(&mut self) -> Vec<Series> {
        let mut out = self.series.clone();
        for s in &mut self.series {
            s.total.reset();
            s.queue.reset();
            s.compute.reset();
            s.errors.clear();
        }
        out.retain(|s| !s.total.is_empty());
        out
    }
}

/// Percentiles of one series over one interval, in µs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyReport {
    pub model: String,
    pub version: String,
    pub arm: String,
    pub count: u64,
    pub ok: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub queue_p50_us: u64,
    pub queue_p99_us: u64,
    pub compute_p50_us: u64,
    pub compute_p99_us: u64,
    /// Errors by wire error code (as a string key, for JSON).
    pub errors: BTreeMap<String, u64>,
}

/// Merges what the cores hand over during an interval.
#[derive(Debug, Default)]
pub struct LatencyAggregator {
    series: BTreeMap<SeriesKey, Series>,
}

impl LatencyAggregator {
    pub fn add(&mut self, from_core: Vec<Series>) {
        for s in from_core {
            match self.series.get_mut(&s.key) {
                Some(m) => m.merge(&s),
                None => {
                    self.series.insert(s.key.clone(), s);
                }
            }
        }
    }

    /// This interval's reports, one per series seen, and a fresh interval.
    pub fn drain(&mut self) -> Vec<LatencyReport> {
        std::mem::take(&mut self.series)
            .into_values()
            .map(|s| {
                let q = |h: &Histogram<u64>, p: f64| {
                    if h.is_empty() {
                        0
                    } else {
                        h.value_at_quantile(p)
                    }
                };
                let errs: u64 = s.errors.values().sum();
                LatencyReport {
                    count: s.total.len(),
                    ok: s.total.len().saturating_sub(errs),
                    p50_us: q(&s.total, 0.5),
                    p90_us: q(&s.total, 0.9),
                    p99_us: q(&s.total, 0.99),
                    max_us: s.total.max(),
                    queue_p50_us: q(&s.queue, 0.5),
                    queue_p99_us: q(&s.queue, 0.99),
                    compute_p50_us: q(&s.compute, 0.5),
                    compute_p99_us: q(&s.compute, 0.99),
                    errors: s.errors.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
                    model: s.key.model,
                    version: s.key.version,
                    arm: s.key.arm,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_merge_into_per_series_percentiles() {
        let mut a = CoreRecorder::default();
        let mut b = CoreRecorder::default();
        for i in 1..=1000u64 {
            let r = if i % 2 == 0 { &mut a } else { &mut b };
            r.record_ok("m", "1", "a", i * 10, i, i * 9);
        }
        b.record_error("m", "1", "a", 8, 50);
        a.record_ok("m", "2", "b", 77, 1, 70);
        let mut agg = LatencyAggregator::default();
        agg.add(a.take());
        agg.add(b.take());
        let r = agg.drain();
        assert_eq!(r.len(), 2);
        let m1 = &r[0];
        assert_eq!((m1.version.as_str(), m1.count, m1.ok), ("1", 1001, 1000));
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() / want as f64 <= 0.01;
        assert!(close(m1.p50_us, 5000), "{m1:?}");
        assert!(close(m1.p99_us, 9900), "{m1:?}");
        assert!(close(m1.max_us, 10_000), "{m1:?}");
        assert!(close(m1.queue_p50_us, 500), "{m1:?}");
        assert_eq!(m1.errors.get("8"), Some(&1));
        assert_eq!(r[1].arm, "b");
        // Taken histograms are empty: the next interval starts from zero.
        assert!(a.take().is_empty());
        assert!(agg.drain().is_empty());
    }
}
