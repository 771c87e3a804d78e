//! PREDICT, HELLO, METADATA and HEALTH over real Unix and TCP sockets, on both drivers,
//! checked against the fixtures' golden outputs; pipelining with answers out of order.

mod serve_support;

use std::collections::HashMap;
use std::time::Duration;

use edgeinfer_client::blocking::Client;
use edgeinfer_client::PredictOptions;
use edgeinfer_engine::EngineChoice;
use edgeinfer_proto::ErrorCode;
use edgeinferd::server::Driver;
use serve_support::*;

fn golden_round_trip(driver: Driver) {
    let srv = start(
        options(driver),
        &[spec("churn", "churn_rf", EngineChoice::Tract, None)],
    );
    assert_eq!(srv.app().driver(), driver);
    let g64 = golden("churn_rf");
    let g1 = golden("churn_rf.1");
    for endpoint in [srv.unix(), srv.tcp()] {
        let mut c = Client::connect(&endpoint).unwrap();
        c.set_timeout(Some(IO_TIMEOUT)).unwrap();
        let hello = c.hello().unwrap();
        assert_eq!(hello.version, 1);
        assert_eq!(hello.max_in_flight, 128);
        for g in [&g64, &g1] {
            let r = c
                .predict("churn", &[g.input.view()], &PredictOptions::default())
                .unwrap();
            assert_eq!(
                (r.model.as_str(), r.version.as_str(), r.backend.as_str()),
                ("churn", "1", "tract")
            );
            assert_matches(&r.outputs, &g.outputs);
        }
        // Only the outputs asked for, in the order asked.
        let opts = PredictOptions {
            outputs: vec!["probabilities".into()],
            ..Default::default()
        };
        let r = c.predict("churn", &[g1.input.view()], &opts).unwrap();
        assert_matches(&r.outputs, &g1.outputs[1..]);
    }
    let mut c = srv.client();
    let meta = c.metadata("churn", None).unwrap();
    assert_eq!(meta.versions, vec!["1".to_string()]);
    assert_eq!(meta.inputs[0].name, "float_input");
    assert_eq!(meta.inputs[0].shape, vec![-1, 20]);
    assert_eq!(meta.backend, "tract");
    assert!(meta.ready);
    assert!(
        meta.load_report.contains("\"backend\""),
        "{}",
        meta.load_report
    );
    let health = c.health().unwrap();
    assert!(health.ready);
    assert_eq!(health.models.len(), 1);
    assert!(health.models[0].default);
    // 2 endpoints × 3 predictions, none failed.
    assert_eq!(health.models[0].requests, 6);
    assert_eq!(health.models[0].errors, 0);
}

#[test]
fn golden_outputs_over_unix_and_tcp_on_epoll() {
    golden_round_trip(Driver::Epoll);
}

#[test]
fn golden_outputs_over_unix_and_tcp_on_io_uring() {
    golden_round_trip(Driver::IoUring);
}

#[test]
fn auto_driver_serves_too() {
    let srv = start(
        options(Driver::Auto),
        &[spec("churn", "churn_rf", EngineChoice::Tract, None)],
    );
    assert_ne!(
        srv.app().driver(),
        Driver::Auto,
        "auto resolves to a concrete driver"
    );
    let g = golden("churn_rf.1");
    let r = srv
        .client()
        .predict("churn", &[g.input.view()], &PredictOptions::default())
        .unwrap();
    assert_matches(&r.outputs, &g.outputs);
}

#[test]
fn golden_outputs_on_onnx_runtime() {
    let ort = require_ort();
    let mut s = spec("churn", "churn_rf", EngineChoice::OrtCpu, None);
    s.load.ort_library = Some(ort);
    let srv = start(options(Driver::Epoll), &[s]);
    let g = golden("churn_rf");
    for endpoint in [srv.unix(), srv.tcp()] {
        let mut c = Client::connect(&endpoint).unwrap();
        c.set_timeout(Some(IO_TIMEOUT)).unwrap();
        let r = c
            .predict("churn", &[g.input.view()], &PredictOptions::default())
            .unwrap();
        assert_eq!(r.backend, "ort-cpu");
        assert_matches(&r.outputs, &g.outputs);
    }
}

fn pipelined(driver: Driver) {
    // "slow" batches with a long delay; "fast" runs at once: a fast request sent after a slow
    // one overtakes it, and every answer is matched by its id.
    let srv = start(
        options(driver),
        &[
            spec(
                "slow",
                "churn_rf",
                EngineChoice::Tract,
                batching(64, Duration::from_millis(300)),
            ),
            spec("fast", "churn_rf", EngineChoice::Tract, None),
        ],
    );
    let g = golden("churn_rf");
    let mut raw = srv.raw();
    let mut frames = Vec::new();
    let mut want = HashMap::new();
    for i in 0..40u64 {
        let row = (i as usize * 7) % 64;
        let model = if i % 4 == 0 { "slow" } else { "fast" };
        frames.extend(predict_frame(
            i + 1,
            model,
            &rows(&g.input, row, row + 1),
            0,
        ));
        want.insert(i + 1, row);
    }
    raw.send(&frames);
    let mut order = Vec::new();
    for _ in 0..40 {
        match raw.read().expect("an answer per request") {
            Answer::Predict { id, outputs } => {
                let row = want
                    .remove(&id)
                    .unwrap_or_else(|| panic!("unexpected or repeated id {id}"));
                let expect: Vec<_> = g.outputs.iter().map(|t| rows(t, row, row + 1)).collect();
                assert_matches(&outputs, &expect);
                order.push(id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(want.is_empty());
    // Request 1 went to "slow" and waited for its batch: later "fast" ones overtook it.
    let pos1 = order.iter().position(|&id| id == 1).unwrap();
    assert!(pos1 > 0, "answers came back in request order: {order:?}");
}

#[test]
fn pipelined_answers_are_matched_by_id_out_of_order_epoll() {
    pipelined(Driver::Epoll);
}

#[test]
fn pipelined_answers_are_matched_by_id_out_of_order_io_uring() {
    pipelined(Driver::IoUring);
}

#[test]
fn large_inputs_round_trip_over_both_transports() {
    // Bigger than one read chunk, so the frame is read straight into a buffer of its size.
    let srv = start(
        options(Driver::Epoll),
        &[spec("id", "identity", EngineChoice::Tract, None)],
    );
    let n = 8192u64;
    let values: Vec<f32> = (0..n * 32).map(|i| i as f32 * 0.25).collect();
    let x = edgeinfer_proto::Tensor::from_f32("x", vec![n, 32], &values).unwrap();
    for endpoint in [srv.unix(), srv.tcp()] {
        let mut c = Client::connect(&endpoint).unwrap();
        c.set_timeout(Some(IO_TIMEOUT)).unwrap();
        for _ in 0..3 {
            let r = c
                .predict("id", &[x.view()], &PredictOptions::default())
                .unwrap();
            assert_eq!(r.outputs[0].shape, vec![n, 32]);
            assert_eq!(r.outputs[0].data, x.data);
        }
    }
}

#[test]
fn unknown_model_and_version_are_typed_errors() {
    let srv = start(
        options(Driver::Epoll),
        &[spec("churn", "churn_rf", EngineChoice::Tract, None)],
    );
    let mut c = srv.client();
    let x = churn_row(0.5);
    let e = c
        .predict("nope", &[x.view()], &PredictOptions::default())
        .unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::UnknownModel), "{e}");
    let opts = PredictOptions {
        version: Some("9".into()),
        ..Default::default()
    };
    let e = c.predict("churn", &[x.view()], &opts).unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::UnknownModel), "{e}");
    let e = c.metadata("nope", None).unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::UnknownModel), "{e}");
    // The connection is still good.
    c.predict("churn", &[x.view()], &PredictOptions::default())
        .unwrap();
}
