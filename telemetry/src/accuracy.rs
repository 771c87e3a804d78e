//! Online accuracy: predictions joined with the true labels that FEEDBACK brings, counted
//! per window, per model version and A/B arm, and compared with the bundle's baseline.
//! A window whose metric falls beyond the configured relative drop raises the alert.

use serde::{Deserialize, Serialize};

/// The metric a model is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of exact class matches.
    Accuracy,
    /// F1 of the positive class (label 1).
    F1,
    /// Mean absolute error (regression; lower is better).
    Mae,
}

impl Metric {
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Mae)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::Mae => "mae",
        }
    }
}

/// The baseline a version was released with (from its bundle; for now its model config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub metric: Metric,
    pub value: f64,
}

/// Counters of one window for one (version, arm).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub n: u64,
    pub correct: u64,
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub abs_err: f64,
}

impl Counts {
    /// One joined pair: what the model said and what was true.
    pub fn observe(&mut self, predicted: f64, truth: f64) {
        self.n += 1;
        let (p, t) = (predicted.round() as i64, truth.round() as i64);
        self.correct += (p == t) as u64;
        match (p == 1, t == 1) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            _ => {}
        }
        self.abs_err += (predicted - truth).abs();
    }

    pub fn value(&self, m: Metric) -> f64 {
        let n = self.n.max(1) as f64;
        match m {
            Metric::Accuracy => self.correct as f64 / n,
            Metric::F1 => {
                let d = 2 * self.tp + self.fp + self.fn_;
                if d == 0 {
                    1.0
                } else {
                    2.0 * self.tp as f64 / d as f64
                }
            }
            Metric::Mae => self.abs_err / n,
        }
    }
}

/// A closed accuracy window's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccuracyReport {
    pub metric: Metric,
    pub value: f64,
    pub baseline: f64,
    /// (baseline − value) / baseline for higher-is-better metrics, the reverse for MAE:
    /// positive = worse.
    pub relative_drop: f64,
    pub labels: u64,
    pub alert: bool,
}

/// The window of one (version, arm): closes every `labels` joined labels.
#[derive(Debug, Clone)]
pub struct AccuracyWindow {
    baseline: Baseline,
    labels: u64,
    max_relative_drop: f64,
    counts: Counts,
}

impl AccuracyWindow {
    pub fn new(baseline: Baseline, labels: u64, max_relative_drop: f64) -> AccuracyWindow {
        AccuracyWindow {
            baseline,
            labels: labels.max(1),
            max_relative_drop,
            counts: Counts::default(),
        }
    }

    /// Adds one joined pair; the report when this closes the window.
    pub fn observe(&mut self, predicted: f64, truth: f64) -> Option<AccuracyReport> {
        self.counts.observe(predicted, truth);
        (self.counts.n >= self.labels).then(|| self.close())
    }

    fn close(&mut self) -> AccuracyReport {
        let c = std::mem::take(&mut self.counts);
        let m = self.baseline.metric;
        let value = c.value(m);
        let b = self.baseline.value;
        let relative_drop = if b == 0.0 {
            0.0
        } else if m.higher_is_better() {
            (b - value) / b
        } else {
            (value - b) / b
        };
        AccuracyReport {
            metric: m,
            value,
            baseline: b,
            relative_drop,
            labels: c.n,
            alert: relative_drop > self.max_relative_drop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_percent_wrong_labels_against_095_baseline_alerts() {
        let b = Baseline {
            metric: Metric::Accuracy,
            value: 0.95,
        };
        let mut w = AccuracyWindow::new(b, 500, 0.05);
        let mut reports = Vec::new();
        for i in 0..1000u64 {
            let truth = (i % 2) as f64;
            let predicted = if i % 10 == 3 { 1.0 - truth } else { truth };
            reports.extend(w.observe(predicted, truth));
        }
        assert_eq!(reports.len(), 2);
        for r in &reports {
            assert!((r.value - 0.9).abs() < 1e-9, "{r:?}");
            assert!(r.alert, "{r:?}");
        }
        // 4% wrong stays within the 5% relative drop (0.96 ≥ 0.9025).
        let mut w = AccuracyWindow::new(b, 100, 0.05);
        let r = (0..100)
            .filter_map(|i| w.observe(if i < 4 { 0.0 } else { 1.0 }, 1.0))
            .next()
            .unwrap();
        assert!(!r.alert, "{r:?}");
    }

    #[test]
    fn f1_and_mae_are_computed_and_mae_drop_is_an_increase() {
        let mut c = Counts::default();
        for (p, t) in [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0)] {
            c.observe(p, t);
        }
        assert!((c.value(Metric::F1) - 0.5).abs() < 1e-12);
        assert!((c.value(Metric::Accuracy) - 0.5).abs() < 1e-12);
        let b = Baseline {
            metric: Metric::Mae,
            value: 1.0,
        };
        let mut w = AccuracyWindow::new(b, 2, 0.05);
        assert!(w.observe(2.0, 0.8).is_none());
        let r = w.observe(0.0, 1.0).unwrap();
        assert!((r.value - 1.1).abs() < 1e-12 && r.alert, "{r:?}");
    }
}
