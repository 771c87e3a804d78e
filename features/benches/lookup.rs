//! Feature-store figures in one run: entity lookup + assembly p50/p99 at 10k and 1M
//! entities, one Redis GET of the same row over loopback (when `EDGEINFER_BENCH_REDIS`
//! names a running redis-server, as benches/features.sh arranges), and CSV import rows/s.
//!
//! Run: `bash benches/features.sh` (or `cargo bench -p edgeinfer-features --bench lookup`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use edgeinfer_features::import::{import_file, ImportOptions};
use edgeinfer_features::{
    encoded_len_as, Assembler, FeatureDType, FeatureRow, FeatureSchema, FeatureStore, FieldSpec,
    HeldReader, StalePolicy, StoreOptions,
};
use hdrhistogram::Histogram;

const WIDTH: usize = 20;
const SAMPLES: u64 = 200_000;

/// `dtype` F32: rows stored as f32 (format 2); F64: the same values stored as f64 (format
/// 1, what every row was before format 2): the before/after of the row size.
fn schema_of(dtype: FeatureDType) -> FeatureSchema {
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

fn schema() -> FeatureSchema {
    schema_of(FeatureDType::F32)
}

fn key(i: u64) -> Vec<u8> {
    format!("customer-{i:010}").into_bytes()
}

fn row(i: u64) -> FeatureRow {
    FeatureRow {
        event_ts_ms: 1_700_000_000_000,
        schema_version: 1,
        values: (0..WIDTH)
            .map(|j| Some((i as f64) + j as f64 * 0.5))
            .collect(),
    }
}

/// xorshift: a cheap, fixed sequence of keys so runs are comparable.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn pct(h: &Histogram<u64>) -> (f64, f64) {
    (
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

/// Where a lookup's time goes: (read txn begin + end alone, get of the row in one held txn,
/// assembly of an already fetched row), p50 µs each.
fn breakdown(store: &FeatureStore, asm: &Assembler, n: u64) -> (f64, f64, f64) {
    let mut ht = Histogram::<u64>::new(3).unwrap();
    let mut hg = Histogram::<u64>::new(3).unwrap();
    let mut ha = Histogram::<u64>::new(3).unwrap();
    let mut s = 0x1234_5678_9ABC_DEF1u64;
    for round in 0..SAMPLES / 2 {
        let t0 = Instant::now();
        drop(store.read_txn().unwrap());
        if round > 1000 {
            ht.record((t0.elapsed().as_nanos() as u64).max(1)).unwrap();
        }
    }
    let txn = store.read_txn().unwrap();
    let (mut out, mut reps) = (Vec::new(), Vec::new());
    for round in 0..SAMPLES / 2 {
        let k = key(next(&mut s) % n);
        let t0 = Instant::now();
        let r = store.get(&txn, &k).unwrap().unwrap();
        let ns = t0.elapsed().as_nanos() as u64;
        std::hint::black_box(r.get(0));
        // The same key again: its pages are now cached, so this is assembly alone.
        let t1 = Instant::now();
        asm.assemble(store, &txn, &[&k], &[], 0, &mut out, &mut reps)
            .unwrap();
        let ns_a = t1.elapsed().as_nanos() as u64;
        if round > 1000 {
            hg.record(ns.max(1)).unwrap();
            ha.record(ns_a.max(1)).unwrap();
        }
    }
    (
        ht.value_at_quantile(0.5) as f64 / 1000.0,
        hg.value_at_quantile(0.5) as f64 / 1000.0,
        ha.value_at_quantile(0.5) as f64 / 1000.0,
    )
}

/// p50 and p99 of lookup + assembly, µs: (a read txn per request, a held txn).
struct Lookup {
    per_request: (f64, f64),
    held: (f64, f64),
}

fn lookup(n: u64, dtype: FeatureDType) -> Lookup {
    let dir = tempfile::tempdir().unwrap();
    let store = FeatureStore::open(&StoreOptions::new(dir.path(), 4 << 30, 2)).unwrap();
    let asm = Assembler::new(&store, schema_of(dtype)).unwrap();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        batch.push((key(i), row(i)));
        if batch.len() == 10_000 {
            store.put(&batch).unwrap();
            batch.clear();
        }
    }
    store.put(&batch).unwrap();
    let (mut hp, mut hh) = (
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
    );
    let (mut out, mut reps) = (Vec::new(), Vec::new());
    let mut held = HeldReader::new(store.clone(), Duration::from_millis(10));
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..SAMPLES + 10_000 {
        // The two ways alternate, so drift on the VM touches both alike.
        for keep in [round % 2 == 0, round % 2 == 1] {
            let k = key(next(&mut s) % n);
            let t0 = Instant::now();
            // What PREDICT_BY_ENTITY does per request: a read txn, lookup, assembly.
            if keep {
                let txn = held.txn(t0).unwrap();
                asm.assemble(&store, txn, &[&k], &[], 0, &mut out, &mut reps)
                    .unwrap();
            } else {
                let txn = store.read_txn().unwrap();
                asm.assemble(&store, &txn, &[&k], &[], 0, &mut out, &mut reps)
                    .unwrap();
                drop(txn);
            }
            let ns = t0.elapsed().as_nanos() as u64;
            assert_eq!(out.len(), WIDTH);
            if round >= 10_000 {
                let h = if keep { &mut hh } else { &mut hp };
                h.record(ns.max(1)).unwrap();
            }
        }
    }
    drop(held);
    let (t, g, a) = breakdown(&store, &asm, n);
    eprintln!(
        "  {n} entities, {} rows of {} bytes, p50 breakdown: read txn {t:.2} µs, get in a \
         held txn {g:.2} µs, assembly of a cached row {a:.2} µs",
        dtype.name(),
        encoded_len_as(schema_of(dtype).row_format(), WIDTH)
    );
    Lookup {
        per_request: pct(&hp),
        held: pct(&hh),
    }
}

/// One GET per lookup over loopback with the RESP protocol, as Feast's Redis online store
/// does per entity, on one persistent connection (TCP_NODELAY), never pipelined: Redis holds
/// the same `n` rows under the same keys, as the bytes LMDB holds (an f32 row), and the
/// keys come in the same random order as the LMDB lookups. (Feast stores a hash per entity
/// and reads it with HMGET, which costs Redis more than one GET: this baseline favours it.)
fn redis(addr: &str, n: u64) -> (f64, f64) {
    let mut w = TcpStream::connect(addr).unwrap();
    w.set_nodelay(true).unwrap();
    let mut r = BufReader::new(w.try_clone().unwrap());
    let mut line = Vec::new();
    let cmd = |parts: &[&[u8]]| {
        let mut c = format!("*{}\r\n", parts.len()).into_bytes();
        for p in parts {
            c.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
            c.extend_from_slice(p);
            c.extend_from_slice(b"\r\n");
        }
        c
    };
    let value_of = |i: u64| {
        let mut v = Vec::new();
        row(i).encode_into_as(schema().row_format(), &mut v);
        v
    };
    w.write_all(&cmd(&[b"FLUSHALL"])).unwrap();
    r.read_until(b'\n', &mut line).unwrap();
    // The fill is pipelined (setup, not measured).
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut batch = Vec::new();
        for &i in chunk {
            batch.extend_from_slice(&cmd(&[b"SET", &key(i), &value_of(i)]));
        }
        w.write_all(&batch).unwrap();
        for _ in chunk {
            line.clear();
            r.read_until(b'\n', &mut line).unwrap();
            assert_eq!(line, b"+OK\r\n");
        }
    }
    let mut h = Histogram::<u64>::new(3).unwrap();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut body = Vec::new();
    for round in 0..50_000 + 2_000 {
        let i = next(&mut s) % n;
        let get = cmd(&[b"GET", &key(i)]);
        let want = value_of(i);
        body.resize(want.len() + 2, 0);
        let t0 = Instant::now();
        w.write_all(&get).unwrap();
        line.clear();
        r.read_until(b'\n', &mut line).unwrap();
        std::io::Read::read_exact(&mut r, &mut body).unwrap();
        let ns = t0.elapsed().as_nanos() as u64;
        assert_eq!(&body[..want.len()], &want[..]);
        if round >= 2_000 {
            h.record(ns.max(1)).unwrap();
        }
    }
    w.write_all(&cmd(&[b"FLUSHALL"])).unwrap();
    line.clear();
    r.read_until(b'\n', &mut line).unwrap();
    pct(&h)
}

fn import_rate(rows: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    write!(f, "entity,event_ts_ms").unwrap();
    for j in 0..WIDTH {
        write!(f, ",f{j}").unwrap();
    }
    writeln!(f).unwrap();
    for i in 0..rows {
        write!(f, "customer-{i:010},1700000000000").unwrap();
        for j in 0..WIDTH {
            write!(f, ",{}", (i % 1000) as f64 + j as f64 * 0.25).unwrap();
        }
        writeln!(f).unwrap();
    }
    drop(f);
    let store = FeatureStore::open(&StoreOptions::new(dir.path().join("db"), 4 << 30, 2)).unwrap();
    let t0 = Instant::now();
    let r = import_file(
        &store,
        &schema(),
        &path,
        &ImportOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(r.written, rows);
    rows as f64 / secs
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with --bench (cargo bench) for figures");
        return;
    }
    // `-- --bench import`: the import figure alone (to profile it).
    if std::env::args().any(|a| a == "import") {
        let rate = import_rate(1_000_000);
        println!("CSV import, 1M rows × {WIDTH} features: {rate:.0} rows/s (target ≥ 200000)");
        return;
    }
    println!("| measurement | p50 µs | p99 µs |");
    println!("|---|---|---|");
    let redis_addr = std::env::var("EDGEINFER_BENCH_REDIS").ok();
    let mut ratios = Vec::new();
    for (n, label) in [(10_000u64, "10k"), (1_000_000, "1M")] {
        let before = lookup(n, FeatureDType::F64);
        let now = lookup(n, FeatureDType::F32);
        let row = |what: &str, (p50, p99): (f64, f64)| {
            println!("| lookup + assembly, {label} entities, {WIDTH} features, {what} | {p50:.2} | {p99:.2} |");
        };
        row(
            "f64 rows, read txn per request (before)",
            before.per_request,
        );
        row("f64 rows, held read txn", before.held);
        row("f32 rows, read txn per request", now.per_request);
        row("f32 rows, held read txn (after)", now.held);
        match &redis_addr {
            Some(addr) => {
                let (r50, r99) = redis(addr, n);
                println!("| Redis GET of the same rows, {label} keys, loopback ({addr}) | {r50:.2} | {r99:.2} |");
                ratios.push((label, r50 / before.per_request.0, r50 / now.held.0));
            }
            None => println!("| Redis GET | not run: EDGEINFER_BENCH_REDIS unset | |"),
        }
    }
    println!();
    for (label, before, after) in &ratios {
        println!(
            "lookup vs Redis GET (p50), {label} entities: {before:.1}× before, {after:.1}× after (target ≥ 10×)"
        );
    }
    let rate = import_rate(1_000_000);
    println!();
    println!("CSV import, 1M rows × {WIDTH} features: {rate:.0} rows/s (target ≥ 200000)");
}
