//! The shared-memory transport (docs/protocol.md §11) against the real server: the goldens
//! over the rings on both drivers, pipelining with answers out of order, rings that wrap,
//! and hostile writers (corrupt headers, lying lengths and heads, a frame stopped half-way,
//! a client that dies mid-request, random ring contents), each of which ends only its own
//! session.

mod serve_support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgeinfer_client::shm::ShmClient;
use edgeinfer_client::{ClientError, PredictOptions};
use edgeinfer_engine::EngineChoice;
use edgeinfer_proto::{
    decode_message, decode_predict_response, encode_message, DType, ErrorCode, ErrorResponse,
    Header, Hello, Opcode, Tensor, HEADER_LEN,
};
use edgeinferd::server::Driver;
use serve_support::*;

/// The tests read server-wide gauges and this process's mappings: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn churn_server(driver: Driver, read_timeout: Duration) -> TestServer {
    let opts = edgeinferd::server::ServerOptions {
        read_timeout,
        ..options(driver)
    };
    start(
        opts,
        &[
            spec("churn", "churn_rf", EngineChoice::Tract, None),
            spec(
                "slow",
                "churn_rf",
                EngineChoice::Tract,
                batching(64, Duration::from_millis(300)),
            ),
        ],
    )
}

fn shm(srv: &TestServer) -> ShmClient {
    ShmClient::connect(&srv.sock, 64 << 10, "").expect("a shared-memory session")
}

/// Mappings of session memfds in this process (the server's and the clients' alike).
fn shm_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:edgeinfer-shm"))
        .count()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < IO_TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn error_of(h: &Header, body: &[u8]) -> ErrorResponse {
    assert_eq!(h.opcode, Opcode::Error.as_u8(), "expected an ERROR");
    decode_message(h, body).unwrap()
}

fn goldens(driver: Driver) {
    let _g = serial();
    let srv = churn_server(driver, Duration::from_secs(10));
    let mut c = shm(&srv);
    assert_eq!(c.ring_bytes(), 64 << 10);
    assert_eq!(c.server().version, 1);
    assert_eq!(
        srv.app()
            .stats()
            .shm_sessions_open
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let g64 = golden("churn_rf");
    let g1 = golden("churn_rf.1");
    for g in [&g64, &g1] {
        let r = c
            .predict("churn", &[g.input.view()], &PredictOptions::default())
            .unwrap();
        assert_eq!((r.model.as_str(), r.backend.as_str()), ("churn", "tract"));
        assert_matches(&r.outputs, &g.outputs);
    }
    // Only the outputs asked for.
    let opts = PredictOptions {
        outputs: vec!["probabilities".into()],
        ..Default::default()
    };
    let r = c.predict("churn", &[g1.input.view()], &opts).unwrap();
    assert_matches(&r.outputs, &g1.outputs[1..]);
    // Written in place: the tensor's bytes go straight into the ring, the answer is read
    // where the server put it.
    let t = &g1.input;
    let mut req = c
        .begin_predict(
            "churn",
            &[(t.name.as_str(), t.dtype, &t.shape)],
            &PredictOptions::default(),
        )
        .unwrap();
    req.input(0).copy_from_slice(&t.data);
    let id = req.send();
    let (h, body) = c.recv_frame().unwrap();
    assert_eq!(h.request_id, id);
    let v = decode_predict_response(&h, body).unwrap();
    let outs: Vec<Tensor> = v.outputs().map(|t| t.to_tensor()).collect();
    assert_matches(&outs, &g1.outputs);
    // Far more than the 64 KiB ring holds: positions wrap many times, WRAP records included.
    for i in 0..600usize {
        let row = (i * 13) % 64;
        let r = c
            .predict(
                "churn",
                &[rows(&g64.input, row, row + 1).view()],
                &PredictOptions::default(),
            )
            .unwrap();
        let want: Vec<_> = g64.outputs.iter().map(|t| rows(t, row, row + 1)).collect();
        assert_matches(&r.outputs, &want);
    }
    assert!(c.request_head() > c.ring_bytes(), "{}", c.request_head());
    // Errors come back on the ring too, and the session stays.
    let e = c
        .predict("nope", &[g1.input.view()], &PredictOptions::default())
        .unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::UnknownModel), "{e}");
    c.predict("churn", &[g1.input.view()], &PredictOptions::default())
        .unwrap();
}

#[test]
fn shm_gives_the_goldens_on_epoll() {
    goldens(Driver::Epoll);
}

#[test]
fn shm_gives_the_goldens_on_io_uring() {
    goldens(Driver::IoUring);
}

#[test]
fn shm_pipelines_and_answers_out_of_order() {
    let _g = serial();
    let srv = churn_server(Driver::Epoll, Duration::from_secs(10));
    let mut c = shm(&srv);
    let g = golden("churn_rf");
    let mut want = HashMap::new();
    let mut first_slow = 0;
    for i in 0..40usize {
        let row = (i * 7) % 64;
        let model = if i % 4 == 0 { "slow" } else { "churn" };
        let id = c
            .send_predict(
                model,
                &[rows(&g.input, row, row + 1).view()],
                &PredictOptions::default(),
            )
            .unwrap();
        want.insert(id, row);
        if i == 0 {
            first_slow = id;
        }
    }
    assert_eq!(c.in_flight(), 40);
    let mut order = Vec::new();
    for _ in 0..40 {
        let (id, r) = c.recv().unwrap();
        let row = want.remove(&id).expect("an answer per request, once");
        let expect: Vec<_> = g.outputs.iter().map(|t| rows(t, row, row + 1)).collect();
        assert_matches(&r.unwrap().outputs, &expect);
        order.push(id);
    }
    assert!(want.is_empty());
    // The first request waited for its batch: later ones overtook it.
    let first = order.iter().position(|&id| id == first_slow).unwrap();
    assert!(first > 0, "answers came back in request order: {order:?}");
}

#[test]
fn answers_wait_for_room_in_the_response_ring() {
    // 100 answers of 64 rows are far more than the 64 KiB response ring holds while the
    // client sends and reads none: the server waits for the client's tail (loading it only
    // when its own copy says full), the request ring keeps moving meanwhile (a request's
    // bytes are given back when it has run), and every answer arrives whole and in place.
    let _g = serial();
    let srv = churn_server(Driver::Epoll, Duration::from_secs(10));
    let mut c = shm(&srv);
    let g = golden("churn_rf");
    let mut ids = std::collections::HashSet::new();
    for _ in 0..100 {
        ids.insert(
            c.send_predict("churn", &[g.input.view()], &PredictOptions::default())
                .unwrap(),
        );
    }
    let mut answered = 0u64;
    while !ids.is_empty() {
        let (h, body) = c.recv_frame().unwrap();
        assert!(ids.remove(&h.request_id), "one answer per request");
        answered += h.frame_len();
        let v = decode_predict_response(&h, body).unwrap();
        let outs: Vec<Tensor> = v.outputs().map(|t| t.to_tensor()).collect();
        assert_matches(&outs, &g.outputs);
    }
    assert!(answered > c.ring_bytes(), "{answered} bytes of answers");
    c.predict(
        "churn",
        &[churn_row(0.5).view()],
        &PredictOptions::default(),
    )
    .unwrap();
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
fn a_client_on_the_servers_cpu_sleeps_instead_of_polling() {
    // On the server's CPU neither side can run while the other spins: the server says
    // where its session runs, and a client there sleeps on the doorbell at once, however
    // long its spin is set (the server, seeing the client's CPU, does the same). Every
    // answer still comes, through the doorbell.
    let _g = serial();
    let srv = churn_server(Driver::Epoll, Duration::from_secs(10));
    let g1 = golden("churn_rf.1");
    let run = |c: &mut ShmClient, n: usize| {
        for _ in 0..n {
            let r = c
                .predict("churn", &[g1.input.view()], &PredictOptions::default())
                .unwrap();
            assert_matches(&r.outputs, &g1.outputs);
        }
    };
    let sock = srv.sock.clone();
    let (waits, n) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut c = ShmClient::connect(&sock, 64 << 10, "").unwrap();
            run(&mut c, 1);
            let cpu = c
                .server_cpu()
                .expect("the server says where its session runs");
            pin_to(cpu);
            c.set_spin(Duration::from_secs(3600));
            let before = c.doorbell_waits();
            run(&mut c, 200);
            (c.doorbell_waits() - before, 200)
        })
        .join()
        .unwrap()
    });
    // Polling for an hour would have taken no doorbell wait at all; the few answers that
    // are ready at the first look (the client preempted after publishing) take none.
    assert!(waits >= n / 2, "{waits} doorbell waits for {n} requests");
    // A client that lies about its CPU (here: claims the server's while it is elsewhere)
    // only makes the server sleep sooner: it is served through the doorbell.
    let mut c = shm(&srv);
    run(&mut c, 1);
    let cpu = c.server_cpu().unwrap();
    c.claim_cpu_word(cpu + 1);
    c.set_spin(Duration::ZERO);
    run(&mut c, 20);
    others_are_served(&srv);
}

/// A healthy client on the same server, over the socket and over shared memory.
fn others_are_served(srv: &TestServer) {
    served(&mut srv.client());
    let mut c = shm(srv);
    c.predict(
        "churn",
        &[churn_row(0.5).view()],
        &PredictOptions::default(),
    )
    .expect("another shared-memory client is served");
}

/// After a protocol breach: one ERROR in the ring, then the session is over.
fn refused(c: &mut ShmClient, code: ErrorCode) -> String {
    let (h, body) = c.recv_frame().expect("the server says why");
    let e = error_of(&h, body);
    assert_eq!(e.error_code(), Some(code), "{}", e.message);
    let gone = c
        .predict(
            "churn",
            &[churn_row(0.5).view()],
            &PredictOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(gone, ClientError::Io(_)), "{gone}");
    e.message
}

fn hostile_count(srv: &TestServer) -> u64 {
    srv.app()
        .stats()
        .shm_sessions_hostile
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn hostile_writers_lose_only_their_own_session() {
    let _g = serial();
    let srv = churn_server(Driver::Epoll, Duration::from_millis(300));
    let g1 = golden("churn_rf.1");
    let mut bystander = shm(&srv);
    let mut frame = predict_frame(5, "churn", &g1.input, 0);

    // A corrupt header: bad magic.
    let mut c = shm(&srv);
    frame[0] = b'X';
    c.send_frame(&frame).unwrap();
    let msg = refused(&mut c, ErrorCode::BadFrame);
    assert!(msg.contains("magic"), "{msg}");
    frame[0] = b'E';
    assert_eq!(hostile_count(&srv), 1);

    // A header rewritten after a good frame was published: unknown flags.
    let mut c = shm(&srv);
    c.predict("churn", &[g1.input.view()], &PredictOptions::default())
        .unwrap();
    let at = c.request_head() as usize % c.ring_bytes() as usize;
    let mut bad = frame.clone();
    bad[6] = 0x80;
    c.scribble(at, &bad);
    c.publish_raw_head(c.request_head() + edgeinfer_proto::align_up(bad.len() as u64));
    refused(&mut c, ErrorCode::BadFrame);

    // Lies about lengths: a frame larger than the ring; one that would run past its end.
    let mut c = shm(&srv);
    let mut liar = frame.clone();
    liar[24..32].copy_from_slice(&(100_000u64).to_le_bytes());
    c.scribble(0, &liar[..HEADER_LEN]);
    c.publish_raw_head(64);
    refused(&mut c, ErrorCode::FrameTooLarge);
    let mut c = shm(&srv);
    c.predict("churn", &[g1.input.view()], &PredictOptions::default())
        .unwrap();
    let at = c.request_head();
    liar[24..32].copy_from_slice(&(c.ring_bytes() - 128).to_le_bytes());
    c.scribble(at as usize, &liar[..HEADER_LEN]);
    c.publish_raw_head(at + 64);
    let msg = refused(&mut c, ErrorCode::BadFrame);
    assert!(msg.contains("past the ring"), "{msg}");

    // A head beyond the space the server gave back, and one that is not aligned.
    let mut c = shm(&srv);
    c.publish_raw_head(10 * c.ring_bytes());
    refused(&mut c, ErrorCode::BadFrame);
    let mut c = shm(&srv);
    c.scribble(0, &frame);
    c.publish_raw_head(frame.len() as u64);
    refused(&mut c, ErrorCode::BadFrame);

    // Metadata that lies about the tensor lengths: an ordinary BAD_INPUT or BAD_FRAME on
    // that request, and the session stays (framing is intact).
    let mut c = shm(&srv);
    let mut lie = predict_frame(9, "churn", &churn_row(0.5), 0);
    // The shape [1, 20] (packed: 1a 02 01 14) becomes [1, 21]: 84 bytes declared, 80 sent.
    let at = lie
        .windows(4)
        .position(|w| w == [0x1a, 0x02, 0x01, 0x14])
        .expect("the shape in the metadata");
    lie[at + 3] = 0x15;
    c.send_frame(&lie).unwrap_or_else(|e| panic!("{e}"));
    let (h, body) = c.recv_frame().unwrap();
    assert_eq!(h.request_id, 9);
    let e = error_of(&h, body);
    assert!(
        matches!(
            e.error_code(),
            Some(ErrorCode::BadInput | ErrorCode::BadFrame)
        ),
        "{e:?}"
    );
    c.predict("churn", &[g1.input.view()], &PredictOptions::default())
        .unwrap();

    // Stops mid-frame: the head covers the header only; the read timeout ends it.
    let mut c = shm(&srv);
    c.scribble(0, &frame);
    c.publish_raw_head(64);
    let t0 = Instant::now();
    let gone = c.recv_frame().unwrap_err();
    assert!(matches!(gone, ClientError::Io(_)), "{gone}");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );

    assert_eq!(
        hostile_count(&srv),
        6,
        "the timeout is not counted as a breach"
    );
    bystander
        .predict("churn", &[g1.input.view()], &PredictOptions::default())
        .expect("a session opened before the attacks is still served");
    others_are_served(&srv);
}

#[test]
fn a_client_that_dies_mid_request_frees_its_ring() {
    let _g = serial();
    let srv = churn_server(Driver::Epoll, Duration::from_secs(10));
    let open = || {
        srv.app()
            .stats()
            .shm_sessions_open
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(shm_mappings(), 0);
    {
        let mut c = shm(&srv);
        // Waits 300 ms for company in its batch: the client is gone before it runs.
        c.send_predict("slow", &[churn_row(0.5).view()], &PredictOptions::default())
            .unwrap();
        // And one frame cut off half-way.
        let frame = predict_frame(77, "churn", &churn_row(0.5), 0);
        let at = c.request_head() as usize % c.ring_bytes() as usize;
        c.scribble(at, &frame);
        c.publish_raw_head(c.request_head() + 64);
        assert_eq!(open(), 1);
        // Two mappings: the client's and the server's.
        assert_eq!(shm_mappings(), 2);
    }
    // The client's fds are closed and its mapping gone, as when a process dies.
    wait_until("the session to end", || open() == 0);
    wait_until("the server to unmap the ring", || shm_mappings() == 0);
    others_are_served(&srv);
}

#[test]
fn shared_memory_is_refused_where_it_cannot_work() {
    let _g = serial();
    let srv = churn_server(Driver::Epoll, Duration::from_secs(10));
    // Over TCP: NOT_IMPLEMENTED, and the connection stays.
    let mut tcp = std::net::TcpStream::connect(&srv.addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut f = Vec::new();
    encode_message(
        Opcode::Hello,
        3,
        &Hello {
            versions: vec![1],
            shm_ring_bytes: 1 << 16,
            ..Default::default()
        },
        &mut f,
    )
    .unwrap();
    use std::io::{Read, Write};
    tcp.write_all(&f).unwrap();
    let mut hb = [0u8; HEADER_LEN];
    tcp.read_exact(&mut hb).unwrap();
    let h = Header::decode(&hb).unwrap();
    let mut body = vec![0u8; h.body_len() as usize];
    tcp.read_exact(&mut body).unwrap();
    assert_eq!(
        error_of(&h, &body).error_code(),
        Some(ErrorCode::NotImplemented)
    );
    // Switched off in the config: NOT_IMPLEMENTED over the Unix socket too.
    let mut opts = options(Driver::Epoll);
    opts.shm.enabled = false;
    let off = start(
        opts,
        &[spec("churn", "churn_rf", EngineChoice::Tract, None)],
    );
    match ShmClient::connect(&off.sock, 1 << 16, "") {
        Err(e) => assert_eq!(e.server_code(), Some(ErrorCode::NotImplemented), "{e}"),
        Ok(_) => panic!("granted while switched off"),
    }
    served(&mut off.client());
    // A grant of the smallest ring for a tiny ask, and the bound for a huge one.
    let c = ShmClient::connect(&srv.sock, 1, "").unwrap();
    assert_eq!(c.ring_bytes(), 64 << 10);
    let c = ShmClient::connect(&srv.sock, 1 << 40, "").unwrap();
    assert_eq!(c.ring_bytes(), 4 << 20);
    let _ = DType::F32;
}

#[test]
fn random_ring_contents_never_take_the_server_down() {
    let _g = serial();
    let mut srv = churn_server(Driver::Epoll, Duration::from_millis(200));
    // xorshift64: the same sequence every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let good = predict_frame(5, "churn", &churn_row(0.5), 0);
    for round in 0..40u64 {
        let mut c = shm(&srv);
        let mut f = good.clone();
        match round % 3 {
            // A few bytes flipped anywhere, the header's fields, or all garbage.
            0 => {
                for _ in 0..4 {
                    let i = next() as usize % f.len();
                    f[i] ^= (next() as u8) | 1;
                }
            }
            1 => f[8 + next() as usize % 24] = next() as u8,
            _ => f.iter_mut().for_each(|b| *b = next() as u8),
        }
        c.scribble(0, &f);
        // Any value in the client's CPU word: the server only compares it with its own.
        c.claim_cpu_word(next() as u32);
        let head = match round % 4 {
            0 => edgeinfer_proto::align_up(f.len() as u64),
            1 => next() & !63,
            2 => 64,
            _ => next(),
        };
        c.publish_raw_head(head);
        if round % 2 == 0 {
            // An answer, an ERROR, or the end of the session (a read timeout at worst):
            // never a hang, never a crash.
            let _ = c.recv_frame();
        }
        // Odd rounds: the client just goes away.
    }
    others_are_served(&srv);
    let open = || {
        srv.app()
            .stats()
            .shm_sessions_open
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_until("every session to end", || open() == 0);
    assert!(hostile_count(&srv) > 0);
    // No core panicked: the cores stop cleanly.
    srv.stop();
}
