//! Per-arm telemetry on the data path allocates nothing in steady state: with telemetry on
//! and a rollout's arms named, a core's record_prediction / record_ok / record_error (arm
//! lookup, latency histograms per model, version and arm, the prediction record sent to
//! the control thread) make no allocation on the calling thread after each series' first
//! request, also after a rollback relabels the arms. A counting allocator counts only the
//! measuring thread (the control thread allocates as it likes). The broker is a closed
//! loopback port: serving never needs it.

mod telemetry_inproc;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use edgeinfer_engine::{DType, OutputTensor, TensorView};
use edgeinfer_rollout::Serve;
use edgeinferd::telemetry_glue::{self, record_error, record_ok, record_prediction};

struct Counting;

static COUNT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTED.with(Cell::get) {
            COUNT.fetch_add(1, Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations on this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = COUNT.load(Relaxed);
    COUNTED.with(|c| c.set(true));
    f();
    COUNTED.with(|c| c.set(false));
    COUNT.load(Relaxed) - before
}

/// One request of each kind on both arms.
fn requests(n: usize, input: &TensorView<'_>, output: &OutputTensor) -> u64 {
    let mut ids = 0;
    for i in 0..n {
        let version = if i % 2 == 0 { "4" } else { "3" };
        ids +=
            (record_prediction("churn", version, Some(input), Some(output), 1, None) != 0) as u64;
        let t = Duration::from_micros(40 + (i % 7) as u64);
        record_ok("churn", version, t, t / 4, t / 2);
        if i % 10 == 0 {
            record_error("churn", version, 3, t);
        }
    }
    ids
}

#[test]
fn per_arm_recording_does_not_allocate_in_steady_state() {
    let (_dir, _telemetry) = telemetry_inproc::start("alloc");
    telemetry_glue::serve_arms(
        "churn",
        &Serve::Split {
            stable: "3".into(),
            candidate: "4".into(),
            candidate_bp: 5000,
            salt: "s".into(),
        },
    );
    assert_eq!(telemetry_glue::arm_of("churn", "4"), "candidate");
    assert_eq!(telemetry_glue::arm_of("churn", "3"), "stable");

    let x = [0.5f32; 4];
    let shape = [1usize, 4];
    let input = TensorView {
        dtype: DType::F32,
        shape: &shape,
        data: bytemuck::cast_slice(&x),
    };
    let output = OutputTensor {
        name: "label".into(),
        dtype: Some(DType::I64),
        shape: vec![1],
        data: 1i64.to_le_bytes().to_vec(),
    };
    // The counter sees this thread's allocations.
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))), 1);
    // Each series' first request allocates it; then none does.
    assert!(
        requests(100, &input, &output) > 0,
        "prediction ids handed out"
    );
    let n = allocations(|| {
        assert!(requests(20_000, &input, &output) > 0);
    });
    assert_eq!(n, 0, "{n} allocations over 20,000 requests per arm");

    // A rollback relabels both versions: new series once, then nothing again.
    telemetry_glue::serve_arms(
        "churn",
        &Serve::Stable {
            version: "3".into(),
        },
    );
    assert_eq!(telemetry_glue::arm_of("churn", "4"), "default");
    requests(100, &input, &output);
    let n = allocations(|| {
        requests(20_000, &input, &output);
    });
    assert_eq!(n, 0, "{n} allocations after the relabel");
}
