//! Every kind of bad input gets its typed ERROR or a closed connection, and a second client
//! keeps being served throughout.

mod serve_support;

use std::io::Write;
use std::time::{Duration, Instant};

use edgeinfer_client::PredictOptions;
use edgeinfer_engine::EngineChoice;
use edgeinfer_proto::{
    encode_message, ErrorCode, Header, Hello, Opcode, Tensor, HEADER_LEN, MAGIC,
};
use edgeinferd::server::{Driver, ServerOptions};
use serve_support::*;

fn churn_server(opts: ServerOptions) -> TestServer {
    start(
        opts,
        &[spec("churn", "churn_rf", EngineChoice::Tract, None)],
    )
}

/// Another client, on its own connection, still gets right answers.
fn still_serving(srv: &TestServer) {
    let g = golden("churn_rf.1");
    let r = srv
        .client()
        .predict("churn", &[g.input.view()], &PredictOptions::default())
        .unwrap();
    assert_matches(&r.outputs, &g.outputs);
}

fn code(a: &Answer) -> ErrorCode {
    ErrorCode::from_u32(
        a.error_code()
            .unwrap_or_else(|| panic!("expected an ERROR, got {a:?}")),
    )
    .unwrap()
}

fn header(opcode: u8, id: u64, meta_len: u32, data_len: u64) -> Vec<u8> {
    let mut h = Header::new(Opcode::Hello, id, meta_len, data_len);
    h.opcode = opcode;
    h.to_bytes().to_vec()
}

fn bad_input_cases(driver: Driver) {
    let srv = churn_server(options(driver));
    let mut raw = srv.raw();
    // Unknown opcode: the body is skipped, the connection stays usable.
    let mut f = header(0x42, 7, 3, 0);
    f.extend_from_slice(b"abc");
    raw.send(&f);
    let a = raw.read().unwrap();
    assert_eq!((a.id(), code(&a)), (7, ErrorCode::UnknownOpcode));
    // Reserved opcodes.
    raw.send(&header(Opcode::PredictByEntity as u8, 8, 0, 0));
    let a = raw.read().unwrap();
    assert_eq!((a.id(), code(&a)), (8, ErrorCode::NotImplemented));
    raw.send(&header(Opcode::Feedback as u8, 9, 0, 0));
    assert_eq!(code(&raw.read().unwrap()), ErrorCode::NotImplemented);
    // A response opcode is not a request.
    raw.send(&header(Opcode::PredictResponse as u8, 10, 0, 0));
    assert_eq!(code(&raw.read().unwrap()), ErrorCode::UnknownOpcode);
    // Unknown model.
    raw.send(&predict_frame(11, "nope", &churn_row(0.5), 0));
    let a = raw.read().unwrap();
    assert_eq!((a.id(), code(&a)), (11, ErrorCode::UnknownModel));
    // Wrong dtype: f64 where the model takes f32; the engine's message comes back.
    let x64 = Tensor::from_f64("float_input", vec![1, 20], &[0.5; 20]).unwrap();
    raw.send(&predict_frame(12, "churn", &x64, 0));
    match raw.read().unwrap() {
        Answer::Error {
            id: 12,
            code,
            message,
        } => {
            assert_eq!(code, ErrorCode::BadInput as u32);
            assert!(
                message.contains("dtype f64") && message.contains("f32"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Wrong shape.
    let narrow = Tensor::from_f32("float_input", vec![1, 19], &[0.5; 19]).unwrap();
    raw.send(&predict_frame(13, "churn", &narrow, 0));
    match raw.read().unwrap() {
        Answer::Error {
            id: 13,
            code,
            message,
        } => {
            assert_eq!(code, ErrorCode::BadInput as u32);
            assert!(message.contains("shape [1, 19]"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Wrong input name.
    let named = Tensor::from_f32("features", vec![1, 20], &[0.5; 20]).unwrap();
    raw.send(&predict_frame(14, "churn", &named, 0));
    match raw.read().unwrap() {
        Answer::Error {
            id: 14,
            code,
            message,
        } => {
            assert_eq!(code, ErrorCode::BadInput as u32);
            assert!(message.contains("float_input"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // NaN is refused by the engine's policy.
    let mut nan = [0.5f32; 20];
    nan[3] = f32::NAN;
    raw.send(&predict_frame(
        15,
        "churn",
        &Tensor::from_f32("float_input", vec![1, 20], &nan).unwrap(),
        0,
    ));
    assert_eq!(code(&raw.read().unwrap()), ErrorCode::BadInput);
    // Undecodable metadata inside intact framing: BAD_FRAME, connection stays.
    let mut f = Header::new(Opcode::Predict, 16, 4, 0).to_bytes().to_vec();
    f.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    raw.send(&f);
    assert_eq!(code(&raw.read().unwrap()), ErrorCode::BadFrame);
    // After all that, the same connection still predicts.
    raw.send(&predict_frame(17, "churn", &churn_row(0.5), 0));
    assert!(matches!(
        raw.read().unwrap(),
        Answer::Predict { id: 17, .. }
    ));
    still_serving(&srv);
    // Typed errors are counted.
    let stats = srv.app().stats();
    assert_eq!(stats.errors(ErrorCode::UnknownOpcode), 2);
    assert_eq!(stats.errors(ErrorCode::BadInput), 4);
}

#[test]
fn typed_errors_keep_the_connection_epoll() {
    bad_input_cases(Driver::Epoll);
}

#[test]
fn typed_errors_keep_the_connection_io_uring() {
    bad_input_cases(Driver::IoUring);
}

fn closing_cases(driver: Driver) {
    let srv = churn_server(options(driver));
    // Garbage: BAD_FRAME on id 0, then the server closes.
    let mut raw = srv.raw();
    raw.send(&[0x5a; 100]);
    let answers = raw.read_to_eof();
    assert_eq!(answers.len(), 1);
    assert_eq!(
        (answers[0].id(), code(&answers[0])),
        (0, ErrorCode::BadFrame)
    );
    still_serving(&srv);
    // Oversized: FRAME_TOO_LARGE on the frame's id, then close.
    let mut raw = srv.raw();
    raw.send(&Header::new(Opcode::Predict, 21, 16, 1 << 40).to_bytes());
    let answers = raw.read_to_eof();
    assert_eq!(answers.len(), 1);
    assert_eq!(
        (answers[0].id(), code(&answers[0])),
        (21, ErrorCode::FrameTooLarge)
    );
    // Metadata over its own limit too.
    let mut raw = srv.raw();
    raw.send(&Header::new(Opcode::Predict, 22, 1 << 20, 0).to_bytes());
    let answers = raw.read_to_eof();
    assert_eq!(code(&answers[0]), ErrorCode::FrameTooLarge);
    // Another header version: UNSUPPORTED_VERSION, close.
    let mut raw = srv.raw();
    let mut h = Header::new(Opcode::Health, 23, 0, 0).to_bytes();
    h[4] = 2;
    raw.send(&h);
    let answers = raw.read_to_eof();
    assert_eq!(
        (answers[0].id(), code(&answers[0])),
        (23, ErrorCode::UnsupportedVersion)
    );
    // HELLO with no common version: UNSUPPORTED_VERSION, close.
    let mut raw = srv.raw();
    let mut f = Vec::new();
    encode_message(
        Opcode::Hello,
        24,
        &Hello {
            versions: vec![7, 9],
            client: "future".into(),
            ..Default::default()
        },
        &mut f,
    )
    .unwrap();
    raw.send(&f);
    let answers = raw.read_to_eof();
    assert_eq!(answers.len(), 1);
    assert_eq!(
        (answers[0].id(), code(&answers[0])),
        (24, ErrorCode::UnsupportedVersion)
    );
    // Truncated frame then EOF: one BAD_FRAME on the frame's id (a client that only shut
    // its sending side reads it), then close (docs/protocol.md §2.1).
    let mut raw = srv.raw();
    let f = predict_frame(25, "churn", &churn_row(0.5), 0);
    raw.send(&f[..f.len() - 10]);
    raw.s.shutdown(std::net::Shutdown::Write).unwrap();
    let answers = raw.read_to_eof();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(
        (answers[0].id(), code(&answers[0])),
        (25, ErrorCode::BadFrame)
    );
    // Truncated inside the header: id 0.
    let mut raw = srv.raw();
    raw.send(&f[..20]);
    raw.s.shutdown(std::net::Shutdown::Write).unwrap();
    let answers = raw.read_to_eof();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(code(&answers[0]), ErrorCode::BadFrame);
    still_serving(&srv);
    assert_eq!(srv.app().stats().errors(ErrorCode::BadFrame), 3);
}

#[test]
fn framing_errors_close_the_connection_epoll() {
    closing_cases(Driver::Epoll);
}

#[test]
fn framing_errors_close_the_connection_io_uring() {
    closing_cases(Driver::IoUring);
}

fn slow_loris(driver: Driver) {
    let opts = ServerOptions {
        read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..options(driver)
    };
    let srv = churn_server(opts);
    // A header dribbled out a byte at a time never completes in time.
    let mut slow = srv.raw();
    let f = predict_frame(31, "churn", &churn_row(0.5), 0);
    let t0 = Instant::now();
    let mut closed = false;
    for b in &f {
        if slow.s.write_all(std::slice::from_ref(b)).is_err() {
            closed = true;
            break;
        }
        // Meanwhile everyone else is served.
        still_serving(&srv);
        std::thread::sleep(Duration::from_millis(20));
        if t0.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        assert!(
            slow.read_to_eof().is_empty(),
            "the slow frame was never answered"
        );
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    // An idle connection is closed too.
    let mut idle = srv.raw();
    let t0 = Instant::now();
    assert!(idle.read_to_eof().is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "closed too early: {:?}",
        t0.elapsed()
    );
    assert!(
        srv.app()
            .stats()
            .connections_timed_out
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    still_serving(&srv);
}

#[test]
fn slow_loris_and_idle_connections_are_closed_epoll() {
    slow_loris(Driver::Epoll);
}

#[test]
fn slow_loris_and_idle_connections_are_closed_io_uring() {
    slow_loris(Driver::IoUring);
}

#[test]
fn too_many_in_flight() {
    let opts = ServerOptions {
        limits: edgeinfer_proto::Limits {
            max_in_flight: 4,
            ..edgeinfer_proto::Limits::DEFAULT
        },
        ..options(Driver::Epoll)
    };
    // Batching holds requests in flight long enough for the limit to bite.
    let srv = start(
        opts,
        &[spec(
            "churn",
            "churn_rf",
            EngineChoice::Tract,
            batching(64, Duration::from_millis(200)),
        )],
    );
    let mut raw = srv.raw();
    let mut frames = Vec::new();
    for id in 1..=12u64 {
        frames.extend(predict_frame(id, "churn", &churn_row(0.1 * id as f32), 0));
    }
    raw.send(&frames);
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..12 {
        match raw.read().unwrap() {
            Answer::Predict { id, .. } => ok.push(id),
            a @ Answer::Error { .. } => {
                assert_eq!(code(&a), ErrorCode::TooManyInFlight);
                refused.push(a.id());
            }
            other => panic!("{other:?}"),
        }
    }
    ok.sort();
    refused.sort();
    assert_eq!(ok, vec![1, 2, 3, 4]);
    assert_eq!(refused, (5..=12).collect::<Vec<_>>());
    // Once answered, the connection takes requests again.
    raw.send(&predict_frame(13, "churn", &churn_row(0.5), 0));
    assert!(matches!(
        raw.read().unwrap(),
        Answer::Predict { id: 13, .. }
    ));
}

#[test]
fn overloaded_when_the_queue_is_full() {
    let opts = ServerOptions {
        queue_depth: 2,
        cores: vec![0],
        ..options(Driver::Epoll)
    };
    let srv = start(
        opts,
        &[spec(
            "churn",
            "churn_rf",
            EngineChoice::Tract,
            batching(64, Duration::from_millis(200)),
        )],
    );
    let mut raw = srv.raw();
    let mut frames = Vec::new();
    for id in 1..=20u64 {
        frames.extend(predict_frame(id, "churn", &churn_row(0.5), 0));
    }
    raw.send(&frames);
    let answers: Vec<Answer> = (0..20).map(|_| raw.read().unwrap()).collect();
    let ok = answers
        .iter()
        .filter(|a| matches!(a, Answer::Predict { .. }))
        .count();
    let overloaded = answers
        .iter()
        .filter(|a| a.error_code() == Some(ErrorCode::Overloaded as u32))
        .count();
    assert_eq!(ok + overloaded, 20, "{answers:?}");
    assert_eq!(ok, 2, "only the queue's two places were admitted");
    let mut ids: Vec<u64> = answers.iter().map(Answer::id).collect();
    ids.sort();
    assert_eq!(
        ids,
        (1..=20).collect::<Vec<_>>(),
        "every request answered exactly once"
    );
    let h = srv.client().health().unwrap();
    assert_eq!(h.models[0].errors, 18);
}

#[test]
fn a_client_that_disconnects_mid_request_loses_only_its_own_work() {
    let srv = start(
        options(Driver::Epoll),
        &[spec(
            "churn",
            "churn_rf",
            EngineChoice::Tract,
            batching(64, Duration::from_millis(100)),
        )],
    );
    for _ in 0..5 {
        let mut raw = srv.raw();
        let mut frames = Vec::new();
        for id in 1..=30u64 {
            frames.extend(predict_frame(id, "churn", &churn_row(0.5), 0));
        }
        // Half a frame more, then gone.
        let f = predict_frame(31, "churn", &churn_row(0.5), 0);
        frames.extend_from_slice(&f[..f.len() / 2]);
        raw.s.write_all(&frames).unwrap();
        drop(raw);
        still_serving(&srv);
    }
    // The dropped work was dropped, not leaked: the server drains and stops cleanly.
    std::thread::sleep(Duration::from_millis(250));
    still_serving(&srv);
}

#[test]
fn max_connections_is_enforced() {
    let opts = ServerOptions {
        max_connections: 2,
        ..options(Driver::Epoll)
    };
    let srv = churn_server(opts);
    let mut a = srv.client();
    let mut b = srv.client();
    a.health().unwrap();
    b.health().unwrap();
    let mut third = srv.raw();
    let mut f = Vec::new();
    encode_message(
        Opcode::Health,
        1,
        &edgeinfer_proto::HealthRequest {},
        &mut f,
    )
    .unwrap();
    let _ = third.s.write_all(&f);
    let answers = third.read_to_eof();
    assert_eq!(answers.len(), 1, "one ERROR, then close: {answers:?}");
    assert_eq!(
        (answers[0].id(), code(&answers[0])),
        (0, ErrorCode::Overloaded),
        "the third connection is refused with OVERLOADED"
    );
    drop(a);
    // Room again once one closes.
    let t0 = Instant::now();
    loop {
        let mut c = srv.raw();
        let _ = c.s.write_all(&f);
        if c.read().is_some_and(|a| a.error_code().is_none()) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "never got a connection slot back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    b.health().unwrap();
    let _ = (HEADER_LEN, MAGIC);
}
