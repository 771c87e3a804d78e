//! The serving suite's core checks again with busy-polling on (`server.busy_poll_us`), on
//! both drivers: golden outputs over Unix and TCP, pipelined answers matched by id, and a
//! batch whose delay timer must fire while another client keeps the core polling.

mod serve_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeinfer_client::blocking::Client;
use edgeinfer_client::PredictOptions;
use edgeinfer_engine::EngineChoice;
use edgeinferd::server::{Driver, ServerOptions};
use serve_support::*;

const DRIVERS: [Driver; 2] = [Driver::Epoll, Driver::IoUring];

fn busy(driver: Driver, us: u64) -> ServerOptions {
    ServerOptions {
        busy_poll: Duration::from_micros(us),
        ..options(driver)
    }
}

#[test]
fn golden_outputs_and_pipelining_with_busy_polling_on_both_drivers() {
    let g = golden("churn_rf");
    let g1 = golden("churn_rf.1");
    for driver in DRIVERS {
        for us in [20, 100] {
            let srv = start(
                busy(driver, us),
                &[spec("churn", "churn_rf", EngineChoice::Tract, None)],
            );
            for endpoint in [srv.unix(), srv.tcp()] {
                let mut c = Client::connect(&endpoint).unwrap();
                c.set_timeout(Some(IO_TIMEOUT)).unwrap();
                for want in [&g, &g1, &g1] {
                    let r = c
                        .predict("churn", &[want.input.view()], &PredictOptions::default())
                        .unwrap();
                    assert_matches(&r.outputs, &want.outputs);
                }
            }
            // 32 pipelined one-row requests in one write: every answer, each by its id.
            let mut raw = srv.raw();
            let mut frames = Vec::new();
            let mut want = HashMap::new();
            for id in 1..=32u64 {
                let row = (id as usize * 5) % 64;
                frames.extend(predict_frame(id, "churn", &rows(&g.input, row, row + 1), 0));
                want.insert(id, row);
            }
            raw.send(&frames);
            for _ in 0..32 {
                match raw.read().expect("an answer per request") {
                    Answer::Predict { id, outputs } => {
                        let row = want.remove(&id).expect("a new id");
                        let expect: Vec<_> =
                            g.outputs.iter().map(|t| rows(t, row, row + 1)).collect();
                        assert_matches(&outputs, &expect);
                    }
                    other => panic!("{driver} busy_poll {us} µs: {other:?}"),
                }
            }
            let health = srv.client().health().unwrap();
            assert_eq!(health.models[0].errors, 0, "{driver}");
        }
    }
}

/// A core's timers run only when its runtime parks. A client sending back to back keeps a
/// busy-polling core from parking on its own; the spinner's episodes are capped so that a
/// batch delay still ends while that client goes on.
#[test]
fn batch_timers_fire_while_another_client_keeps_the_core_polling() {
    for driver in DRIVERS {
        let srv = start(
            ServerOptions {
                cores: vec![edgeinfer_engine::cores::allowed_cores().unwrap()[0]],
                // The longest window there is: no gap between the hammer's requests ends an
                // episode, only the cap does.
                ..busy(driver, 100_000)
            },
            &[
                spec(
                    "slow",
                    "churn_rf",
                    EngineChoice::Tract,
                    batching(64, Duration::from_millis(20)),
                ),
                spec("churn", "churn_rf", EngineChoice::Tract, None),
            ],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut hammer = srv.client();
        let hammering = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    served(&mut hammer);
                    sent.fetch_add(1, Relaxed);
                }
            })
        };
        // The hammer is under way before the batched request goes in.
        while sent.load(Relaxed) < 100 {
            std::thread::yield_now();
        }
        let mut c = srv.client();
        let t0 = Instant::now();
        let before = sent.load(Relaxed);
        let r = c
            .predict("slow", &[churn_row(0.5).view()], &PredictOptions::default())
            .expect("the batched request is answered while the other client keeps sending");
        let during = sent.load(Relaxed) - before;
        stop.store(true, Relaxed);
        hammering.join().unwrap();
        assert!(r.output("probabilities").is_some());
        // It waited for its delay (a timer, not the hammer, ended the batch) while the
        // other client kept the core busy.
        assert!(t0.elapsed() >= Duration::from_millis(20), "{driver}");
        assert!(
            during > 0,
            "{driver}: the other client made no progress meanwhile"
        );
    }
}
