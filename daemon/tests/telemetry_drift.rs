//! Drift through the daemon, live: PREDICT requests feed the cores' bin counters, the
//! control thread closes windows of at least 1,000 rows and one interval, and the `drift`
//! and `events` topics say what an operator would see. Inputs drawn like the reference
//! raise no alert over 20 windows; a 0.5σ shift of one feature alerts on that feature only.

mod telemetry_support;

use std::time::{Duration, Instant};

use telemetry_support::*;

const FEATURES: usize = 5;
const SHIFTED: usize = 2;

/// Rows drawn like the reference (standard normal in the monitored columns), with column
/// `SHIFTED` moved by `shift` σ; the other columns are zero.
fn rows(n: usize, shift: f64, seed: u64) -> Vec<f32> {
    let cols: Vec<Vec<f64>> = (0..FEATURES)
        .map(|c| {
            let mean = if c == SHIFTED { shift } else { 0.0 };
            edgeinfer_telemetry::drift::normal_samples(n, mean, 1.0, seed * 100 + c as u64)
        })
        .collect();
    let mut out = vec![0f32; n * WIDTH];
    for r in 0..n {
        for (c, col) in cols.iter().enumerate() {
            out[r * WIDTH + c] = col[r] as f32;
        }
    }
    out
}

fn alerts(window: &serde_json::Value) -> Vec<String> {
    window["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "alert")
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn reference_inputs_never_alert_and_a_half_sigma_shift_alerts_that_feature_only() {
    watchdog("telemetry_drift", 240);
    let b = start(
        &normal_reference(FEATURES),
        "interval_s = 1\ndrift_window_rows = 1000",
    );
    let mut c = b.client();
    let churn_windows = |b: &Box1| -> Vec<serde_json::Value> {
        b.payloads("drift")
            .into_iter()
            .filter(|p| p["model"] == "churn")
            .collect()
    };

    // ~1,250 rows a second: every interval closes one window of all its rows.
    let mut seed = 1;
    let end = Instant::now() + Duration::from_secs(120);
    while churn_windows(&b).len() < 20 {
        assert!(Instant::now() < end, "20 drift windows did not arrive");
        let (resp, _) = predict(&mut c, &rows(250, 0.0, seed));
        assert_ne!(
            resp.prediction_id, 0,
            "telemetry on: predictions are logged"
        );
        seed += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let clean = churn_windows(&b);
    for w in &clean {
        assert!(w["rows"].as_u64().unwrap() >= 1000, "{w}");
        assert_eq!(w["features"].as_array().unwrap().len(), FEATURES, "{w}");
        assert!(alerts(w).is_empty(), "a reference window alerted: {w}");
    }
    let drift_events = |b: &Box1| -> Vec<serde_json::Value> {
        b.payloads("events")
            .into_iter()
            .filter(|e| e["type"] == "drift_alert")
            .collect()
    };
    assert!(drift_events(&b).is_empty(), "{:?}", drift_events(&b));

    // The shift: the window open at the switch mixes both; the ones after are all shifted.
    let n_clean = clean.len();
    while churn_windows(&b).len() < n_clean + 3 {
        assert!(Instant::now() < end, "shifted drift windows did not arrive");
        predict(&mut c, &rows(250, 0.5, seed));
        seed += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = churn_windows(&b);
    let last = after.last().unwrap();
    assert_eq!(alerts(last), [format!("f{SHIFTED}")], "{last}");
    // At n ≈ 1,250, a 0.5σ shift puts PSI near its 0.25 alert line and the JS distance
    // (about 0.2) well past its 0.1 one; KS D at the edges is about 0.2.
    let shifted = &last["features"][SHIFTED];
    assert!(shifted["psi"].as_f64().unwrap() > 0.1, "{last}");
    assert!(shifted["ks"].as_f64().unwrap() > 0.1, "{last}");
    let ev = drift_events(&b);
    assert!(
        ev.iter()
            .any(|e| e["features"] == serde_json::json!([format!("f{SHIFTED}")])),
        "{ev:?}"
    );
    for e in &ev {
        assert_eq!(e["model"], "churn");
        let names = e["features"].as_array().unwrap();
        assert!(
            names.iter().all(|n| n == &format!("f{SHIFTED}")),
            "only the shifted feature alerts: {e}"
        );
    }
}
