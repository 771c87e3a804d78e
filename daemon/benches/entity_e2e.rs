//! End-to-end PREDICT_BY_ENTITY against PREDICT (by tensor, the same assembled vector) over
//! the real daemon's Unix socket, at 10k and 1M entities: what predicting by entity adds.
//!
//! Run: `bash benches/features.sh` (or `cargo bench -p edgeinferd --bench entity_e2e --
//! --bench`). One connection, one request at a time, the two kinds interleaved so that drift
//! on the VM touches both alike; the daemon serves on one core.
//!
//! Arms, interleaved request by request (the first of each round rotating): this build on a
//! store written in key order (as a sorted import writes it) and on one written in a
//! shuffled order (page splits: a bigger tree), and with
//! `EDGEINFER_BENCH_BEFORE_DAEMON=/path/to/an/older/edgeinferd` that binary on its own
//! sorted store (f32 rows; `EDGEINFER_BENCH_BEFORE_ROWS=f64` for binaries older than the
//! f32 format): a before/after in one run. Then, alone (its busy core would take the
//! shared core from the others), this build with `server.busy_poll_us = 50`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgeinfer_features::{
    Assembler, FeatureDType, FeatureRow, FeatureSchema, FeatureStore, FieldSpec, StalePolicy,
    StoreOptions,
};
use edgeinfer_proto::*;
use hdrhistogram::Histogram;

const WIDTH: usize = 20;
const SAMPLES: usize = 30_000;
const WARMUP: usize = 3_000;

fn schema(dtype: FeatureDType) -> FeatureSchema {
    FeatureSchema {
        version: 1,
        input: None,
        max_age_s: 0,
        stale: StalePolicy::Default,
        fields: (0..WIDTH)
            .map(|i| FieldSpec {
                name: format!("f{i}"),
                dtype,
                default: 0.0,
                max_age_s: None,
                allow_non_finite: false,
            })
            .collect(),
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("customer-{i:010}").into_bytes()
}

fn values(i: u64) -> Vec<f32> {
    (0..WIDTH)
        .map(|j| ((i % 1000) as f64 * 0.01 + j as f64 * 0.5) as f32)
        .collect()
}

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// In which order the bench writes the store's rows.
#[derive(Clone, Copy, PartialEq)]
enum Fill {
    /// Key order, as a sorted import writes them (appended: full leaf pages).
    Sorted,
    /// A fixed pseudo-random order, as updates of random entities arrive (page splits).
    Shuffled,
}

/// Fills the store at `dir` with `n` rows; returns the bytes of the map in use.
fn fill(dir: &Path, n: u64, dtype: FeatureDType, order: Fill) -> u64 {
    let store = FeatureStore::open(&StoreOptions::new(dir, 4 << 30, 2)).unwrap();
    Assembler::new(&store, schema(dtype)).unwrap();
    let mut batch = Vec::with_capacity(10_000);
    for k in 0..n {
        // 7919 is prime and divides neither 10k nor 1M: k -> k * 7919 mod n is a permutation.
        let i = match order {
            Fill::Sorted => k,
            Fill::Shuffled => k * 7919 % n,
        };
        let row = FeatureRow {
            event_ts_ms: 1_700_000_000_000,
            schema_version: 1,
            values: values(i).into_iter().map(|v| Some(f64::from(v))).collect(),
        };
        batch.push((key(i), row));
        if batch.len() == 10_000 {
            store.put(&batch).unwrap();
            batch.clear();
        }
    }
    store.put(&batch).unwrap();
    store.stats().unwrap().used_bytes
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, binary: &Path, dtype: FeatureDType, busy_poll_us: u32) -> Daemon {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/logreg.onnx");
    let mut cfg = format!(
        "state_dir = \"{d}/var\"\n[cache]\nenabled = true\npath = \"{d}/store\"\nmax_bytes = {}\n\
         ttl_s = 0\n[[models]]\nname = \"lr\"\npath = \"{}\"\n[models.features]\nversion = 1\n",
        4u64 << 30,
        model.display(),
        d = dir.display()
    );
    for i in 0..WIDTH {
        cfg.push_str(&format!(
            "[[models.features.fields]]\nname = \"f{i}\"\ndtype = \"{}\"\n",
            dtype.name()
        ));
    }
    cfg.push_str(&format!(
        "[server]\nunix_socket = \"{d}/d.sock\"\ntcp = \"\"\ncores = [1]\nbusy_poll_us = {busy_poll_us}\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
        d = dir.display()
    ));
    let path = dir.join("edgeinferd.toml");
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(dir.join("d.log")).unwrap();
    let child = Command::new(binary)
        .arg("--config")
        .arg(&path)
        .env("EDGEINFER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let d = Daemon(child);
    let end = Instant::now() + Duration::from_secs(120);
    while UnixStream::connect(dir.join("d.sock")).is_err() {
        assert!(
            Instant::now() < end,
            "daemon not up: {}",
            std::fs::read_to_string(dir.join("d.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

fn round_trip(s: &mut UnixStream, frame: &[u8], buf: &mut Vec<u8>, want: Opcode) {
    s.write_all(frame).unwrap();
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let h = Header::decode(&head).unwrap();
    buf.resize(h.body_len() as usize, 0);
    s.read_exact(buf).unwrap();
    assert_eq!(h.opcode, want.as_u8(), "unexpected answer");
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// One daemon under test: its store, its process, its connection and histograms.
struct Arm {
    label: String,
    used_bytes: u64,
    _dir: tempfile::TempDir,
    _daemon: Daemon,
    sock: UnixStream,
    entity: Histogram<u64>,
    tensor: Histogram<u64>,
}

impl Arm {
    fn start(
        label: &str,
        n: u64,
        binary: &Path,
        dtype: FeatureDType,
        order: Fill,
        busy_poll_us: u32,
    ) -> Arm {
        let dir = tempfile::tempdir().unwrap();
        let used_bytes = fill(&dir.path().join("store"), n, dtype, order);
        let daemon = start(dir.path(), binary, dtype, busy_poll_us);
        let sock = UnixStream::connect(dir.path().join("d.sock")).unwrap();
        Arm {
            label: label.to_owned(),
            used_bytes,
            _dir: dir,
            _daemon: daemon,
            sock,
            entity: Histogram::new(3).unwrap(),
            tensor: Histogram::new(3).unwrap(),
        }
    }

    /// (by-entity p50, p99, by-tensor p50, p99) in µs.
    fn figures(&self) -> (f64, f64, f64, f64) {
        (
            pct(&self.entity, 0.5),
            pct(&self.entity, 0.99),
            pct(&self.tensor, 0.5),
            pct(&self.tensor, 0.99),
        )
    }
}

/// Runs every arm over the same keys, interleaved request by request.
fn measure(n: u64, arms: &mut [Arm]) {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let (mut fe, mut ft, mut buf) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..WARMUP + SAMPLES {
        let i = next(&mut seed) % n;
        let req = PredictByEntityRequest {
            model: "lr".into(),
            keys: vec![key(i)],
            ..Default::default()
        };
        encode_message(Opcode::PredictByEntity, round as u64, &req, &mut fe).unwrap();
        let v = values(i);
        let shape = [1u64, WIDTH as u64];
        let t = TensorView {
            name: "float_input",
            dtype: DType::F32,
            shape: &shape,
            data: bytemuck::cast_slice(&v),
        };
        let mut preq = PredictRequest {
            model: "lr".into(),
            ..Default::default()
        };
        encode_predict(round as u64, &mut preq, &[t], &mut ft).unwrap();
        // Alternate which goes first, so neither always follows the other.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        // Rotate which arm goes first too: the first request of a round follows the
        // client's own work, the others another daemon's, and neither may favour one arm.
        let len = arms.len();
        for k in 0..len {
            let arm = &mut arms[(round + k) % len];
            for by_entity in order {
                let t0 = Instant::now();
                if by_entity {
                    round_trip(
                        &mut arm.sock,
                        &fe,
                        &mut buf,
                        Opcode::PredictByEntityResponse,
                    );
                } else {
                    round_trip(&mut arm.sock, &ft, &mut buf, Opcode::PredictResponse);
                }
                let ns = t0.elapsed().as_nanos() as u64;
                if round >= WARMUP {
                    let h = if by_entity {
                        &mut arm.entity
                    } else {
                        &mut arm.tensor
                    };
                    h.record(ns.max(1)).unwrap();
                }
            }
        }
    }
}

fn print(n: u64, arms: &[Arm]) {
    for arm in arms {
        let (e50, e99, t50, t99) = arm.figures();
        println!(
            "| {n} | {} | {:.0} | {e50:.2} | {e99:.2} | {t50:.2} | {t99:.2} | {:.2} |",
            arm.label,
            arm.used_bytes as f64 / f64::from(1u32 << 20),
            e50 - t50
        );
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with --bench (cargo bench) for figures");
        return;
    }
    let after = Path::new(env!("CARGO_BIN_EXE_edgeinferd"));
    let before = std::env::var_os("EDGEINFER_BENCH_BEFORE_DAEMON").map(std::path::PathBuf::from);
    // Binaries before the f32 row format (format 2) only read f64 rows.
    let before_rows = match std::env::var("EDGEINFER_BENCH_BEFORE_ROWS").as_deref() {
        Ok("f64") => FeatureDType::F64,
        _ => FeatureDType::F32,
    };
    println!(
        "| entities | daemon, store | store MiB | by entity p50 µs | p99 µs | by tensor p50 µs | p99 µs | added p50 µs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in [10_000u64, 1_000_000] {
        // Interleaved request by request: these daemons all sleep between requests.
        let mut arms = vec![
            Arm::start(
                "this build, sorted fill",
                n,
                after,
                FeatureDType::F32,
                Fill::Sorted,
                0,
            ),
            Arm::start(
                "this build, shuffled fill",
                n,
                after,
                FeatureDType::F32,
                Fill::Shuffled,
                0,
            ),
        ];
        if let Some(b) = &before {
            let label = format!("before, sorted fill, {} rows", before_rows.name());
            arms.push(Arm::start(&label, n, b, before_rows, Fill::Sorted, 0));
        }
        measure(n, &mut arms);
        print(n, &arms);
        drop(arms);
        // Alone: a busy-polling core would take the shared core from the daemons above.
        let mut busy = vec![Arm::start(
            "this build, sorted fill, server.busy_poll_us = 50",
            n,
            after,
            FeatureDType::F32,
            Fill::Sorted,
            50,
        )];
        measure(n, &mut busy);
        print(n, &busy);
    }
    println!();
    println!("target: predict-by-entity adds ≤ 2 µs p50 at 1M entities");
}
