//! Telemetry cost figures in one run (benches/RESULTS.md, "Telemetry"): outbox write cost
//! per message (one message per commit, as events are written, and batches of 64, as an
//! interval's latency and drift reports are), drift state memory per model version, and
//! what counting one row into the drift bins costs a core.
//!
//! Run: `bash benches/telemetry.sh` (or `cargo bench -p edgeinfer-telemetry --bench costs`).

use std::sync::Arc;
use std::time::Instant;

use edgeinfer_telemetry::Clock;

use edgeinfer_telemetry::drift::{
    normal_samples, CoreCounts, Distribution, DriftCounts, DriftWindow, FeatureRef, ReferenceStats,
};
use edgeinfer_telemetry::events::Event;
use edgeinfer_telemetry::messages::Topics;
use edgeinfer_telemetry::outbox::{Outbox, OutboxLimits};
use edgeinfer_telemetry::predlog::{LogRow, PredictionLog};
use edgeinfer_telemetry::SystemClock;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let limits = OutboxLimits {
        max_bytes: 256 << 20,
        max_age_ms: 3600 * 1000,
    };
    let outbox = Outbox::open(dir.path(), limits, Arc::new(SystemClock)).unwrap();
    let topics = Topics {
        prefix: "edgeinfer".into(),
        device: "bench".into(),
    };
    let ev = Event::ModelSwapped {
        model: "churn".into(),
        from: "1".into(),
        to: "2".into(),
    };
    let msg = || topics.message("events", &ev, Some("churn"), Some("2"));
    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        outbox.append(vec![msg()]).unwrap();
    }
    let single = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let batches = 100;
    let t = Instant::now();
    for _ in 0..batches {
        outbox.append((0..64).map(|_| msg()).collect()).unwrap();
    }
    let batched = t.elapsed().as_secs_f64() * 1e6 / (batches * 64) as f64;
    let bytes = serde_json::to_vec(&msg().payload).unwrap().len();
    println!(
        "outbox write, 1 message per commit (fsync'd): {single:.1} µs/message ({bytes} B payload)"
    );
    println!("outbox write, 64 messages per commit: {batched:.1} µs/message");

    for features in [20usize, 100] {
        let r = ReferenceStats {
            features: (0..features)
                .map(|c| {
                    let s = normal_samples(5_000, 0.0, 1.0, c as u64);
                    FeatureRef::numeric_from_samples(&format!("f{c}"), c, &s)
                })
                .collect(),
            outputs: vec![FeatureRef::categorical_from_samples(
                "label",
                0,
                &[0, 1, 1, 0, 1],
                10,
            )],
        };
        let w = DriftWindow::new(r.clone(), 1000, 10_000, 0);
        // Per version: the open window on the control thread plus one set of counters on
        // each serving core (this machine: 2).
        let core = DriftCounts::for_reference(&r);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let total = w.heap_bytes() + cores * core.heap_bytes();
        println!(
            "drift counters, {features} numeric features + 1 categorical output: {} B per window, {} B per core; {total} B per model version on {cores} cores (reference itself {} B as JSON)",
            w.heap_bytes(),
            core.heap_bytes(),
            serde_json::to_vec(&r).unwrap().len()
        );
        let rows: Vec<f64> = normal_samples(features * 1000, 0.0, 1.0, 99);
        let mut c = DriftCounts::for_reference(&r);
        let reps = 200;
        let t = Instant::now();
        for _ in 0..reps {
            for row in rows.chunks(features) {
                c.observe_with(&r, |i| row.get(i).copied().unwrap_or(f64::NAN), |_| 1.0);
            }
        }
        let per_row = t.elapsed().as_secs_f64() * 1e9 / (reps * 1000) as f64;
        std::hint::black_box(&c);
        // The same rows into the flat per-core counters the daemon's cores keep.
        let mut flat = CoreCounts::for_reference(&r);
        let t = Instant::now();
        for _ in 0..reps {
            for row in rows.chunks(features) {
                flat.observe_with(|i| row.get(i).copied().unwrap_or(f64::NAN), |_| 1.0);
            }
        }
        let flat_row = t.elapsed().as_secs_f64() * 1e9 / (reps * 1000) as f64;
        std::hint::black_box(&flat);
        println!(
            "drift counting on a core, {features} features: nested DriftCounts {per_row:.0} ns, flat CoreCounts {flat_row:.0} ns per row (flat/nested {:.2})",
            flat_row / per_row
        );

        // The bin lookup alone on the same rows: the binary search `Distribution::bin_of`
        // does, against a branch-free count of the edges ≤ x (tried as a cut, measured
        // slower, not used): a ratio in one run.
        let edges: Vec<&[f64]> = r
            .features
            .iter()
            .filter_map(|f| match &f.dist {
                Distribution::Numeric { edges, .. } => Some(edges.as_slice()),
                Distribution::Categorical { .. } => None,
            })
            .collect();
        let lookups = |f: &dyn Fn(&[f64], f64) -> usize| {
            let t = Instant::now();
            let mut acc = 0usize;
            for _ in 0..reps {
                for row in rows.chunks(features) {
                    for (e, &x) in edges.iter().zip(row) {
                        acc += f(e, std::hint::black_box(x));
                    }
                }
            }
            std::hint::black_box(acc);
            t.elapsed().as_secs_f64() * 1e9 / (reps * 1000) as f64
        };
        let search = lookups(&|e, x| e.partition_point(|&v| v <= x));
        let count = lookups(&|e, x| e.iter().map(|&v| (v <= x) as usize).sum());
        println!(
            "bin lookup, {features} features per row: binary search {search:.0} ns, branch-free count {count:.0} ns per row (count/search {:.2})",
            count / search
        );
    }

    // The prediction log as the control thread writes it: batches of 1,024 rows, in id
    // order, so consecutive ids share runs; against the same rows with every other row in
    // another arm, which breaks every run (one LMDB entry per prediction, as before runs).
    let write = |arms: [&str; 2]| {
        let dir = tempfile::tempdir().unwrap();
        let log =
            PredictionLog::open(dir.path(), 256 << 20, 3_600_000, Arc::new(SystemClock)).unwrap();
        let now = SystemClock.now_ms();
        let batches = 200u64;
        let t = Instant::now();
        for b in 0..batches {
            let rows: Vec<LogRow<'_>> = (0..1024u64)
                .map(|k| LogRow {
                    id: b * 1024 + k + 1,
                    ts_ms: now,
                    model: "churn",
                    version: "1",
                    arm: arms[k as usize % 2],
                    entity: "",
                    output: (k % 2) as f64,
                })
                .collect();
            log.insert_rows(&rows).unwrap();
        }
        t.elapsed().as_secs_f64() * 1e9 / (batches * 1024) as f64
    };
    // The first log written pays for growing its file: a warm-up, not a figure.
    write(["stable", "candidate"]);
    let runs = write(["default", "default"]);
    let single = write(["stable", "candidate"]);
    println!(
        "prediction log write (control thread), batches of 1024: {runs:.0} ns per prediction in runs, {single:.0} ns one entry per prediction (runs/single {:.2})",
        runs / single
    );

    // What an answered PREDICT cost its core before the daemon's cores batched their
    // prediction records (daemon/src/telemetry_glue.rs): the wall clock and one channel
    // send of the record, drained by another thread. Kept as the reference for what the
    // batching removed (the daemon now reads a coarse clock and appends under a spin lock).
    let (tx, rx) = std::sync::mpsc::channel::<(u32, u64, u64, [f64; 4])>();
    let drain = std::thread::spawn(move || rx.iter().count());
    let n = 1_000_000u64;
    let t = Instant::now();
    for i in 0..n {
        let ts = SystemClock.now_ms();
        tx.send((0, i, ts, [1.0, 0.0, 0.0, 0.0])).unwrap();
    }
    let per_req = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    drop(tx);
    assert_eq!(drain.join().unwrap() as u64, n);
    println!(
        "core side per request before batching (clock + channel send of the record): {per_req:.0} ns"
    );
}
