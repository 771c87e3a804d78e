//! End-to-end PREDICT_BY_ENTITY against PREDICT (by tensor, the same assembled vector) over
//! the real daemon's Unix socket, at 10k and 1M entities: what predicting by entity adds.
//!
//! Run: `bash benches/features.sh` (or `cargo bench -p edgeinferd --bench entity_e2e --
//! --bench`). One connection, one request at a time, the two kinds interleaved so that drift
//! on the VM touches both alike; the daemon serves on one core.
//!
//! With `EDGEINFER_BENCH_BEFORE_DAEMON=/path/to/an/older/edgeinferd`, that binary is run
//! beside this build's, with its own store of f64 rows (what every row was before the f32
//! format), and the two daemons' requests are interleaved too: a before/after in one run.

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

fn fill(dir: &Path, n: u64, dtype: FeatureDType) {
    let store = FeatureStore::open(&StoreOptions::new(dir, 4 << 30, 2)).unwrap();
    Assembler::new(&store, schema(dtype)).unwrap();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
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
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, binary: &Path, dtype: FeatureDType) -> Daemon {
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
        "[server]\nunix_socket = \"{d}/d.sock\"\ntcp = \"\"\ncores = [1]\n[http]\nlisten = \"127.0.0.1:0\"\n",
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
    _dir: tempfile::TempDir,
    _daemon: Daemon,
    sock: UnixStream,
    entity: Histogram<u64>,
    tensor: Histogram<u64>,
}

impl Arm {
    fn start(n: u64, binary: &Path, dtype: FeatureDType) -> Arm {
        let dir = tempfile::tempdir().unwrap();
        fill(&dir.path().join("store"), n, dtype);
        let daemon = start(dir.path(), binary, dtype);
        let sock = UnixStream::connect(dir.path().join("d.sock")).unwrap();
        Arm {
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
        for arm in arms.iter_mut() {
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

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with --bench (cargo bench) for figures");
        return;
    }
    let after = Path::new(env!("CARGO_BIN_EXE_edgeinferd"));
    let before = std::env::var_os("EDGEINFER_BENCH_BEFORE_DAEMON").map(std::path::PathBuf::from);
    println!(
        "| entities | daemon | by entity p50 µs | p99 µs | by tensor p50 µs | p99 µs | added p50 µs |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in [10_000u64, 1_000_000] {
        let mut arms = vec![Arm::start(n, after, FeatureDType::F32)];
        if let Some(b) = &before {
            arms.push(Arm::start(n, b, FeatureDType::F64));
        }
        measure(n, &mut arms);
        for (k, arm) in arms.iter().enumerate() {
            let (e50, e99, t50, t99) = arm.figures();
            let label = if k == 0 {
                "this build, f32 rows"
            } else {
                "before (EDGEINFER_BENCH_BEFORE_DAEMON), f64 rows"
            };
            println!(
                "| {n} | {label} | {e50:.2} | {e99:.2} | {t50:.2} | {t99:.2} | {:.2} |",
                e50 - t50
            );
        }
    }
    println!();
    println!("target: predict-by-entity adds ≤ 2 µs p50 at 1M entities");
}
