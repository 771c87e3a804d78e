//! Cores batch their prediction records, and the control thread takes every core's batch
//! before it joins a FEEDBACK: a FEEDBACK sent from another core (thread) the moment a
//! prediction is answered finds it, by id and by entity, while the core that served it sits
//! idle with the record still in its batch (nothing else would hand it over for one
//! collection period). Many rows in one request, entity keys that are not UTF-8 and rows
//! past the keys keep their places. The broker is a closed loopback port: joins never need
//! it.

mod telemetry_inproc;

use std::sync::mpsc;
use std::time::Duration;

use edgeinfer_engine::{DType, OutputTensor, TensorView};
use edgeinfer_proto::{ErrorCode, FeedbackRequest};
use edgeinferd::telemetry_glue::{self, record_prediction, FeedbackReply};

fn join(req: FeedbackRequest) -> FeedbackReply {
    let rx = telemetry_glue::feedback(req)?;
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the control thread answers")
}

fn by_id(id: u64, label: f64) -> FeedbackRequest {
    FeedbackRequest {
        prediction_id: id,
        label,
        ..Default::default()
    }
}

#[test]
fn feedback_from_another_core_joins_a_prediction_still_in_the_serving_cores_batch() {
    let (_dir, _telemetry) = telemetry_inproc::start("batch");

    // The serving "core": answers one request per order, hands back its first id, then
    // idles until told to answer the next (its batch is never handed over by itself).
    let (order_tx, order_rx) = mpsc::channel::<(usize, Vec<Vec<u8>>)>();
    let (id_tx, id_rx) = mpsc::channel::<u64>();
    let core = std::thread::spawn(move || {
        for (rows, keys) in order_rx {
            let x = vec![0.5f32; rows * 4];
            let shape = [rows, 4];
            let input = TensorView {
                dtype: DType::F32,
                shape: &shape,
                data: bytemuck::cast_slice(&x),
            };
            // Row k predicts class k % 3.
            let labels: Vec<i64> = (0..rows as i64).map(|k| k % 3).collect();
            let output = OutputTensor {
                name: "label".into(),
                dtype: Some(DType::I64),
                shape: vec![rows],
                data: bytemuck::cast_slice(&labels).to_vec(),
            };
            let keys = (!keys.is_empty()).then_some(keys);
            let id = record_prediction(
                "churn",
                "1",
                Some(&input),
                Some(&output),
                rows,
                keys.as_deref(),
            );
            id_tx.send(id).unwrap();
        }
    });

    // By id, straight after each answer, from this thread (another core).
    for i in 0..50u64 {
        order_tx.send((1, Vec::new())).unwrap();
        let id = id_rx.recv().unwrap();
        assert_ne!(id, 0, "telemetry is on: a prediction id");
        let r = join(by_id(id, 0.0)).unwrap_or_else(|e| panic!("FEEDBACK {i} for id {id}: {e:?}"));
        assert_eq!((r.prediction_id, r.predicted), (id, 0.0));
        assert_eq!((r.model.as_str(), r.version.as_str()), ("churn", "1"));
    }

    // Many rows, with entity keys for the first three only (one not UTF-8).
    let keys = vec![b"u-a".to_vec(), vec![0xff, 0xfe], b"u-c".to_vec()];
    order_tx.send((7, keys)).unwrap();
    let first = id_rx.recv().unwrap();
    for k in 0..7u64 {
        let r = join(by_id(first + k, 1.0)).unwrap_or_else(|e| panic!("row {k}: {e:?}"));
        assert_eq!((r.prediction_id, r.predicted), (first + k, (k % 3) as f64));
    }
    let by_entity = |entity: &str| {
        join(FeedbackRequest {
            entity: entity.into(),
            label: 1.0,
            ..Default::default()
        })
    };
    let r = by_entity("u-a").unwrap();
    assert_eq!((r.prediction_id, r.predicted), (first, 0.0));
    let r = by_entity("u-c").unwrap();
    assert_eq!((r.prediction_id, r.predicted), (first + 2, 2.0));
    // A key that is not UTF-8 is logged without one: no entity names it.
    let e = by_entity("\u{fffd}\u{fffd}").unwrap_err();
    assert_eq!(e.0, ErrorCode::UnknownRequestId, "{e:?}");

    // The same again by entity, straight after the answer.
    order_tx.send((1, vec![b"u-late".to_vec()])).unwrap();
    let late = id_rx.recv().unwrap();
    let r = by_entity("u-late").unwrap();
    assert_eq!(r.prediction_id, late);

    // An id never handed out is unknown.
    let e = join(by_id(late + 1_000_000, 0.0)).unwrap_err();
    assert_eq!(e.0, ErrorCode::UnknownRequestId, "{e:?}");
    drop(order_tx);
    core.join().unwrap();
}
