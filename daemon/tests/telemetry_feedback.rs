//! FEEDBACK through the daemon: each PREDICT answer carries a prediction id (row k of a
//! request is id + k), FEEDBACK joins a true label to the logged prediction, and the
//! accuracy window of the version publishes on `accuracy`; 10% wrong labels against a
//! 0.95 baseline raise `accuracy_alert`. Malformed FEEDBACK and unknown ids are typed,
//! counted errors and the daemon keeps serving.

mod telemetry_support;

use edgeinfer_proto::{ErrorCode, FeedbackRequest};
use edgeinfer_telemetry::accuracy::{Baseline, Metric};
use edgeinfer_telemetry::ModelMonitoring;
use telemetry_support::*;

fn churn_rows(n: usize, seed: u64) -> Vec<f32> {
    edgeinfer_telemetry::drift::normal_samples(n * WIDTH, 0.0, 1.5, seed)
        .into_iter()
        .map(|x| x as f32)
        .collect()
}

#[test]
fn ten_percent_wrong_labels_against_a_095_baseline_raise_the_accuracy_alert() {
    watchdog("telemetry_feedback accuracy", 240);
    let mon = ModelMonitoring {
        reference: None,
        baseline: Some(Baseline {
            metric: Metric::Accuracy,
            value: 0.95,
        }),
        ..ModelMonitoring::default()
    };
    let b = start(&mon, "interval_s = 1\naccuracy_window_labels = 500");
    let mut c = b.client();
    // 1,000 predictions in four requests; ids are consecutive within a request.
    let mut predicted = Vec::new();
    for s in 0..4 {
        let (resp, labels) = predict(&mut c, &churn_rows(250, s));
        assert_ne!(resp.prediction_id, 0);
        predicted.extend(
            labels
                .into_iter()
                .enumerate()
                .map(|(k, l)| (resp.prediction_id + k as u64, l)),
        );
    }
    let ids: std::collections::BTreeSet<u64> = predicted.iter().map(|p| p.0).collect();
    assert_eq!(ids.len(), 1000, "prediction ids are unique");

    // From a second connection (another core, maybe): the join must still see them.
    let mut f = b.client();
    for (i, &(id, label)) in predicted.iter().enumerate() {
        let truth = if i % 10 == 3 { 1 - label } else { label };
        let r = feedback(
            &mut f,
            &FeedbackRequest {
                prediction_id: id,
                label: truth as f64,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("FEEDBACK {i} (id {id}): {e:?}"));
        assert_eq!((r.prediction_id, r.predicted), (id, label as f64));
        assert_eq!((r.model.as_str(), r.version.as_str()), ("churn", "1"));
    }
    wait_for(
        "two accuracy windows",
        std::time::Duration::from_secs(30),
        || (b.payloads("accuracy").len() >= 2).then_some(()),
    );
    for a in b.payloads("accuracy") {
        assert_eq!(a["labels"], 500, "{a}");
        assert!((a["value"].as_f64().unwrap() - 0.9).abs() < 1e-9, "{a}");
        assert_eq!(a["alert"], true, "{a}");
    }
    wait_for(
        "the accuracy_alert event",
        std::time::Duration::from_secs(30),
        || {
            b.payloads("events")
                .into_iter()
                .find(|e| e["type"] == "accuracy_alert")
        },
    );

    // /metrics mirrors the latency topic's percentiles.
    let series = "edgeinfer_telemetry_latency_us{model=\"churn\",version=\"1\",arm=\"default\",quantile=\"0.99\"}";
    wait_for(
        "the latency mirror in /metrics",
        std::time::Duration::from_secs(30),
        || {
            predict(&mut c, &churn_rows(1, 99));
            std::thread::sleep(std::time::Duration::from_millis(200));
            sample(&b.metrics(), series).filter(|&v| v > 0.0)
        },
    );
    // The topic's copy may reach the consumer a moment after the mirror is updated.
    wait_for(
        "a latency message",
        std::time::Duration::from_secs(30),
        || {
            b.payloads("latency")
                .into_iter()
                .find(|l| l["model"] == "churn" && l["p99_us"].as_u64() > Some(0))
        },
    );
}

#[test]
fn malformed_feedback_and_unknown_ids_are_counted_typed_errors() {
    watchdog("telemetry_feedback bad input", 240);
    let b = start(&ModelMonitoring::default(), "interval_s = 1");
    let mut c = b.client();
    let (resp, labels) = predict(&mut c, &churn_rows(3, 9));

    // An id never handed out, one past this request's rows, and the request's own rows.
    let unknown = feedback(
        &mut c,
        &FeedbackRequest {
            prediction_id: resp.prediction_id + 1_000_000,
            label: 1.0,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        code(&unknown),
        Some(ErrorCode::UnknownRequestId),
        "{unknown:?}"
    );
    let by_entity = feedback(
        &mut c,
        &FeedbackRequest {
            entity: "nobody".into(),
            label: 1.0,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(code(&by_entity), Some(ErrorCode::UnknownRequestId));
    let names_nothing = feedback(&mut c, &FeedbackRequest::default()).unwrap_err();
    assert_eq!(
        code(&names_nothing),
        Some(ErrorCode::BadInput),
        "{names_nothing:?}"
    );
    let nan = feedback(
        &mut c,
        &FeedbackRequest {
            prediction_id: resp.prediction_id,
            label: f64::NAN,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(code(&nan), Some(ErrorCode::BadInput));
    // Metadata that is not a FeedbackRequest (a length running past the end).
    let garbage = feedback_raw(&mut c, &[0x12, 0x40, 0x01]).unwrap_err();
    assert_eq!(code(&garbage), Some(ErrorCode::BadFrame), "{garbage:?}");

    // The connection and the daemon serve on; a good FEEDBACK still joins.
    for (k, l) in labels.iter().enumerate() {
        let ok = feedback(
            &mut c,
            &FeedbackRequest {
                prediction_id: resp.prediction_id + k as u64,
                label: *l as f64,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(ok.predicted, *l as f64);
    }
    let (again, _) = predict(&mut c, &churn_rows(1, 10));
    assert!(again.prediction_id > resp.prediction_id);

    let m = b.metrics();
    let count = |name: &str| {
        sample(
            &m,
            &format!("edgeinfer_protocol_errors_total{{code=\"{name}\"}}"),
        )
        .unwrap_or_else(|| panic!("no {name} counter in /metrics"))
    };
    assert_eq!(count("UNKNOWN_REQUEST_ID"), 2.0);
    assert_eq!(count("BAD_INPUT"), 2.0);
    assert_eq!(count("BAD_FRAME"), 1.0);
    assert_eq!(sample(&m, "edgeinfer_telemetry_dropped_total"), Some(0.0));
}
