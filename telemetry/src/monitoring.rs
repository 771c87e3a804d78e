//! What a model version is monitored against: its reference statistics (drift), its
//! release baseline and its accuracy window (online accuracy). A registry-installed version
//! takes them from its signed bundle; a `[[models]]` entry from a JSON file named by its
//! config, into this same type, so the drift and accuracy code never learns where they came
//! from.

use serde::{Deserialize, Serialize};

use crate::accuracy::Baseline;
use crate::drift::ReferenceStats;
use crate::error::{Error, ErrorKind, Result};

/// Reference statistics and baseline of one model version (`docs/telemetry.md`, "Monitoring
/// file"). Both parts are optional: a version without a reference has no drift windows, one
/// without a baseline has no accuracy windows (FEEDBACK is still joined and answered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelMonitoring {
    #[serde(default)]
    pub reference: Option<ReferenceStats>,
    #[serde(default)]
    pub baseline: Option<Baseline>,
    /// Labels per online-accuracy window of this version (a bundle's
    /// `thresholds.accuracy_window_labels`); absent = `[telemetry] accuracy_window_labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_window_labels: Option<u64>,
    /// The relative drop past which this version's accuracy window alerts (a bundle's
    /// `thresholds.max_relative_drop`); absent = `[telemetry] accuracy_max_relative_drop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_max_relative_drop: Option<f64>,
}

impl ModelMonitoring {
    /// Parses and validates a monitoring document; errors name the feature at fault.
    pub fn from_json(bytes: &[u8]) -> Result<ModelMonitoring> {
        let m: ModelMonitoring = serde_json::from_slice(bytes)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("monitoring: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    /// Shapes, shares, thresholds and the baseline's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidInput, m));
        if let Some(r) = &self.reference {
            for (part, list) in [("features", &r.features), ("outputs", &r.outputs)] {
                for f in list {
                    if let Err(e) = f.dist.validate() {
                        return bad(format!("monitoring: reference {part} {:?}: {e}", f.name));
                    }
                    if let Some(t) = f.thresholds {
                        let all = [t.psi_warn, t.psi_alert, t.js_alert, t.linf_alert];
                        if all.iter().any(|x| !x.is_finite() || *x <= 0.0)
                            || t.psi_warn > t.psi_alert
                        {
                            return bad(format!(
                                "monitoring: reference {part} {:?}: thresholds must be positive \
                                 with psi_warn <= psi_alert",
                                f.name
                            ));
                        }
                    }
                }
            }
        }
        if self.accuracy_window_labels == Some(0) {
            return bad("monitoring: accuracy_window_labels must be at least 1".into());
        }
        if let Some(d) = self.accuracy_max_relative_drop {
            if !d.is_finite() || !(0.0..1.0).contains(&d) {
                return bad(format!(
                    "monitoring: accuracy_max_relative_drop {d} must be a fraction in 0 ..< 1"
                ));
            }
        }
        if let Some(b) = &self.baseline {
            if !b.value.is_finite() || b.value < 0.0 {
                return bad(format!(
                    "monitoring: baseline {} must be finite and >= 0",
                    b.value
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::FeatureRef;

    #[test]
    fn the_example_in_docs_telemetry_md_is_valid() {
        let doc = include_str!("../../docs/telemetry.md");
        let at = doc.find("### Monitoring file").expect("the section");
        let open = at + doc[at..].find("```json\n").expect("a json block") + 8;
        let close = open + doc[open..].find("```").unwrap();
        let m = ModelMonitoring::from_json(&doc.as_bytes()[open..close]).unwrap();
        let r = m.reference.unwrap();
        assert_eq!((r.features.len(), r.outputs.len()), (2, 1));
        assert!(r.features[0].thresholds.is_some() && m.baseline.is_some());
    }

    #[test]
    fn parses_reference_and_baseline_and_refuses_bad_shapes() {
        let samples: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let m = ModelMonitoring {
            reference: Some(ReferenceStats {
                features: vec![FeatureRef::numeric_from_samples("x", 3, &samples)],
                outputs: vec![FeatureRef::categorical_from_samples(
                    "label",
                    0,
                    &[0, 1, 1, 0],
                    2,
                )],
            }),
            baseline: Some(Baseline {
                metric: crate::accuracy::Metric::Accuracy,
                value: 0.95,
            }),
            accuracy_window_labels: Some(300),
            accuracy_max_relative_drop: Some(0.1),
        };
        let j = serde_json::to_vec(&m).unwrap();
        assert_eq!(ModelMonitoring::from_json(&j).unwrap(), m);
        let e = ModelMonitoring::from_json(
            br#"{"baseline": {"metric": "accuracy", "value": 0.9}, "extra": 1}"#,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let e = ModelMonitoring::from_json(
            br#"{"reference": {"features": [{"name": "f", "kind": "numeric", "edges": [1.0, 0.0], "probs": [0.5, 0.5, 0.0, 0.0]}]}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"f\""), "{e}");
        let e = ModelMonitoring::from_json(br#"{"baseline": {"metric": "mae", "value": -1}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("baseline"), "{e}");
        let e = ModelMonitoring::from_json(br#"{"accuracy_window_labels": 0}"#).unwrap_err();
        assert!(e.to_string().contains("accuracy_window_labels"), "{e}");
        let e = ModelMonitoring::from_json(br#"{"accuracy_max_relative_drop": 1.5}"#).unwrap_err();
        assert!(e.to_string().contains("accuracy_max_relative_drop"), "{e}");
        assert_eq!(
            ModelMonitoring::from_json(b"{}").unwrap(),
            ModelMonitoring::default()
        );
    }
}
