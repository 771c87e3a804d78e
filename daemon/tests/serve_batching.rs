//! Dynamic batching gives the same answers as running each request alone, really batches,
//! and deadlines cancel work still waiting for its batch.

mod serve_support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use edgeinfer_engine::EngineChoice;
use edgeinfer_proto::ErrorCode;
use edgeinferd::model_table::BATCH_BOUNDS;
use edgeinferd::server::{Driver, ServerOptions};
use serve_support::*;

fn batched_equals_unbatched(driver: Driver) {
    let opts = ServerOptions {
        cores: vec![0],
        ..options(driver)
    };
    let srv = start(
        opts,
        &[
            spec(
                "batched",
                "churn_rf",
                EngineChoice::Tract,
                batching(16, Duration::from_millis(20)),
            ),
            spec("alone", "churn_rf", EngineChoice::Tract, None),
        ],
    );
    let g = golden("churn_rf");
    // 64 one-row requests and some of 3 rows, pipelined over 4 connections.
    let mut conns: Vec<Raw> = (0..4).map(|_| srv.raw()).collect();
    let mut expected = std::collections::HashMap::new();
    for (c, raw) in conns.iter_mut().enumerate() {
        let mut frames = Vec::new();
        for k in 0..16 {
            let id = (c * 100 + k + 1) as u64;
            let row = c * 16 + k;
            let n = if k % 5 == 4 { 3.min(64 - row) } else { 1 };
            frames.extend(predict_frame(
                id,
                "batched",
                &rows(&g.input, row, row + n),
                0,
            ));
            expected.insert(id, (row, n));
        }
        raw.send(&frames);
    }
    for raw in conns.iter_mut() {
        for _ in 0..16 {
            match raw.read().unwrap() {
                Answer::Predict { id, outputs } => {
                    let (row, n) = expected.remove(&id).expect("known id");
                    let want: Vec<_> = g.outputs.iter().map(|t| rows(t, row, row + n)).collect();
                    assert_matches(&outputs, &want);
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(expected.is_empty());
    // The same rows one request at a time on the unbatched model agree too (the golden file
    // is the reference for both).
    let mut raw = srv.raw();
    for row in (0..64).step_by(9) {
        raw.send(&predict_frame(
            1000 + row as u64,
            "alone",
            &rows(&g.input, row, row + 1),
            0,
        ));
        let Some(Answer::Predict { outputs, .. }) = raw.read() else {
            panic!("no answer")
        };
        let want: Vec<_> = g.outputs.iter().map(|t| rows(t, row, row + 1)).collect();
        assert_matches(&outputs, &want);
    }
    // Batches really formed: some engine run took more than one row.
    let snap = srv.app().table().snapshot();
    let v = snap.resolve("batched", None, b"").unwrap();
    let (counts, rows_total) = v.stats.batch_rows.cumulative();
    assert!(rows_total >= 64, "{rows_total}");
    let single_runs = counts[0];
    let runs = *counts.last().unwrap();
    assert!(
        runs < 64,
        "{runs} runs for 64 requests: nothing was batched (bounds {BATCH_BOUNDS:?})"
    );
    assert!(single_runs < runs, "every run had one row");
    assert_eq!(v.stats.rows.load(Relaxed), rows_total);
}

#[test]
fn batched_results_equal_unbatched_epoll() {
    batched_equals_unbatched(Driver::Epoll);
}

#[test]
fn batched_results_equal_unbatched_io_uring() {
    batched_equals_unbatched(Driver::IoUring);
}

#[test]
fn deadlines_cancel_queued_work() {
    // The batch waits 300 ms for company; a 2 ms deadline cannot be met, a 10 s one can.
    let srv = start(
        options(Driver::Epoll),
        &[spec(
            "churn",
            "churn_rf",
            EngineChoice::Tract,
            batching(64, Duration::from_millis(300)),
        )],
    );
    let mut raw = srv.raw();
    let mut frames = predict_frame(1, "churn", &churn_row(0.5), 2_000);
    frames.extend(predict_frame(2, "churn", &churn_row(0.5), 10_000_000));
    frames.extend(predict_frame(3, "churn", &churn_row(0.5), 0));
    raw.send(&frames);
    let mut answers: Vec<Answer> = (0..3).map(|_| raw.read().unwrap()).collect();
    answers.sort_by_key(Answer::id);
    match &answers[0] {
        Answer::Error {
            id: 1,
            code,
            message,
        } => {
            assert_eq!(*code, ErrorCode::DeadlineExceeded as u32);
            assert!(message.contains("2000 µs"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(answers[1], Answer::Predict { id: 2, .. }));
    assert!(matches!(answers[2], Answer::Predict { id: 3, .. }));
    let snap = srv.app().table().snapshot();
    let v = snap.resolve("churn", None, b"").unwrap();
    assert_eq!(
        v.stats
            .count(edgeinferd::model_table::Outcome::DeadlineExceeded),
        1
    );
    assert_eq!(v.stats.count(edgeinferd::model_table::Outcome::Ok), 2);
}

#[test]
fn a_request_larger_than_max_batch_runs_alone() {
    let srv = start(
        options(Driver::Epoll),
        &[spec(
            "churn",
            "churn_rf",
            EngineChoice::Tract,
            batching(4, Duration::from_millis(300)),
        )],
    );
    let g = golden("churn_rf");
    let mut raw = srv.raw();
    raw.send(&predict_frame(1, "churn", &g.input, 0));
    let t0 = std::time::Instant::now();
    let Some(Answer::Predict { outputs, .. }) = raw.read() else {
        panic!("no answer")
    };
    assert_matches(&outputs, &g.outputs);
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "it waited for a batch: {:?}",
        t0.elapsed()
    );
}
