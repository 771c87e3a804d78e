//! In steady state the server allocates nothing per request that grows with the tensors:
//! frames land in pooled buffers and reach the engine as views, answers are written from
//! the engine's reusable outputs. A counting global allocator measures it, with the app
//! in-process and a client that itself allocates nothing per request.
//!
//! One test function, so no other test in this process allocates while it counts.

mod serve_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use edgeinfer_engine::EngineChoice;
use edgeinfer_proto::{Header, Opcode, Tensor, HEADER_LEN};
use edgeinferd::server::Driver;
use serve_support::*;

struct Counting;

static BYTES: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as u64, Relaxed);
        COUNT.fetch_add(1, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as u64, Relaxed);
        COUNT.fetch_add(1, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BYTES.fetch_add(new.saturating_sub(l.size()) as u64, Relaxed);
        COUNT.fetch_add(1, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A client that sends one pre-encoded frame and reads the answer into a reused buffer.
struct Pinger {
    s: UnixStream,
    frame: Vec<u8>,
    body: Vec<u8>,
    expect_body: usize,
}

impl Pinger {
    fn new(srv: &TestServer, rows: u64) -> Pinger {
        let values: Vec<f32> = (0..rows * 32).map(|i| (i % 97) as f32).collect();
        let x = Tensor::from_f32("x", vec![rows, 32], &values).unwrap();
        let frame = predict_frame(1, "identity", &x, 0);
        let s = UnixStream::connect(&srv.sock).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut p = Pinger {
            s,
            frame,
            body: Vec::with_capacity(rows as usize * 128 + 4096),
            expect_body: 0,
        };
        p.once();
        p.expect_body = p.body.len();
        p
    }

    fn once(&mut self) {
        self.s.write_all(&self.frame).unwrap();
        let mut hb = [0u8; HEADER_LEN];
        self.s.read_exact(&mut hb).unwrap();
        let h = Header::decode(&hb).unwrap();
        assert_eq!(
            h.opcode,
            Opcode::PredictResponse as u8,
            "an answer, not an error"
        );
        let n = h.body_len() as usize;
        assert!(n <= self.body.capacity(), "the client's buffer would grow");
        self.body.resize(n, 0);
        self.s.read_exact(&mut self.body).unwrap();
    }

    /// Bytes and allocations per request over `n` requests.
    fn measure(&mut self, n: u64) -> (f64, f64) {
        let (b0, c0) = (BYTES.load(Relaxed), COUNT.load(Relaxed));
        for _ in 0..n {
            self.once();
        }
        let (b1, c1) = (BYTES.load(Relaxed), COUNT.load(Relaxed));
        assert_eq!(self.body.len(), self.expect_body);
        ((b1 - b0) as f64 / n as f64, (c1 - c0) as f64 / n as f64)
    }
}

fn check(driver: Driver, engine: EngineChoice, ort: Option<std::path::PathBuf>) {
    let mut s = spec("identity", "identity", engine, None);
    s.load.ort_library = ort;
    let srv = start(
        edgeinferd::server::ServerOptions {
            cores: vec![0],
            ..options(driver)
        },
        &[s],
    );
    // 16 rows, not 1: tract runs single rows on a plan of their own, which is a different
    // (constant) amount of bookkeeping, not a size effect.
    let mut small = Pinger::new(&srv, 16);
    let mut large = Pinger::new(&srv, 8192); // 1 MiB of input, 1 MiB of output
    for _ in 0..50 {
        small.once();
        large.once();
    }
    let (small_bytes, small_allocs) = small.measure(400);
    large.measure(100);
    let (large_bytes, large_allocs) = large.measure(400);
    eprintln!(
        "{driver} {engine:?}: 16 rows: {small_bytes:.0} B in {small_allocs:.1} allocations per request; \
         8192 rows: {large_bytes:.0} B in {large_allocs:.1}"
    );
    // 512× the tensor bytes (1 MiB each way) may not cost a byte more allocation.
    assert!(
        large_bytes <= small_bytes + 16.0,
        "{driver} {engine:?}: allocation grows with the tensor: {small_bytes:.0} B/request at 16 rows, {large_bytes:.0} at 8192"
    );
    // And what there is stays small (decoded metadata strings, not tensors).
    assert!(
        large_bytes < 16.0 * 1024.0,
        "{large_bytes:.0} B per request"
    );
}

#[test]
fn per_request_allocation_does_not_grow_with_tensor_size() {
    for driver in [Driver::Epoll, Driver::IoUring] {
        check(driver, EngineChoice::Tract, None);
    }
    check(Driver::Epoll, EngineChoice::OrtCpu, Some(require_ort()));
}
