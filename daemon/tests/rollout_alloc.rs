//! Routing a request under a rollout split allocates nothing: the keyed hash runs on the
//! stack and the unkeyed draw uses a thread-local generator. A counting global allocator
//! watches 200,000 resolutions (keyed, unkeyed and arm-pinned) against a real split
//! snapshot. One test function, so nothing else in this process allocates while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use edgeinfer_engine::{EngineChoice, LoadOptions};
use edgeinferd::model_table::{ModelSlot, ModelVersion, ServingConfig, Snapshot};

struct Counting;

static COUNT: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        COUNT.fetch_add(1, Relaxed);
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

fn version(v: &str) -> Arc<ModelVersion> {
    let load = LoadOptions {
        engine: EngineChoice::Tract,
        ..LoadOptions::default()
    };
    let model = edgeinfer_engine::load_model(edgeinferd::app::DEMO_MODEL, &load).unwrap();
    Arc::new(ModelVersion::new("churn", v, model))
}

#[test]
fn split_routing_does_not_allocate() {
    let mut slot = ModelSlot::single(version("3"), ServingConfig::default());
    slot.put(version("4"), ServingConfig::default());
    slot.set_split("3", "4", 2500, "churn-4").unwrap();
    let snap = Snapshot {
        generation: 1,
        models: BTreeMap::from([("churn".to_owned(), slot)]),
    };
    let keys: Vec<Vec<u8>> = (0..50_000)
        .map(|i| format!("user-{i}").into_bytes())
        .collect();
    // Warm the thread-local generator outside the count.
    let _ = snap.resolve("churn", None, b"").unwrap();

    let before = COUNT.load(Relaxed);
    let mut candidate = 0u64;
    for k in &keys {
        candidate += (snap.resolve("churn", None, k).unwrap().version == "4") as u64;
        candidate += (snap.resolve("churn", None, b"").unwrap().version == "4") as u64;
        candidate += (snap
            .resolve("churn", Some("@candidate"), k)
            .unwrap()
            .version
            == "4") as u64;
        candidate += (snap.describe("churn", None).unwrap().version == "4") as u64;
    }
    let allocations = COUNT.load(Relaxed) - before;
    assert_eq!(allocations, 0, "routing allocated {allocations} times");
    // The work was real: a quarter of keyed and unkeyed requests, and every pinned one.
    assert!((70_000..80_000).contains(&candidate), "{candidate}");
}
