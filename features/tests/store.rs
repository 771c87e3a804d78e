//! The LMDB store, assembly, expiry and backup against a real LMDB environment.

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::*;
use edgeinfer_features::housekeeping::sweep;
use edgeinfer_features::update::{apply, NamedUpdate};
use edgeinfer_features::{
    Assembler, ErrorKind, FeatureDType, FeatureRow, FeatureStore, Override, StalePolicy,
    StoreOptions,
};

fn put(store: &FeatureStore, key: &str, ts: i64, values: Vec<Option<f64>>) {
    store
        .put(&[(
            key.as_bytes().to_vec(),
            FeatureRow {
                event_ts_ms: ts,
                schema_version: 1,
                values,
            },
        )])
        .unwrap();
}

#[test]
fn writes_keep_the_newer_row_by_event_time() {
    let (_d, s) = store();
    Assembler::new(&s, schema()).unwrap();
    put(&s, "c1", 100, vec![Some(40.0), Some(0.1), Some(1.0)]);
    // Older: ignored (a replayed MQTT message).
    let o = s
        .put(&[(
            b"c1".to_vec(),
            FeatureRow {
                event_ts_ms: 50,
                schema_version: 1,
                values: vec![Some(1.0), None, None],
            },
        )])
        .unwrap();
    assert_eq!((o.written, o.skipped_older), (0, 1));
    assert_eq!(row(&s, "c1").unwrap().values[0], Some(40.0));
    // Same time: the later write wins.
    put(&s, "c1", 100, vec![Some(41.0), None, None]);
    assert_eq!(row(&s, "c1").unwrap().values, vec![Some(41.0), None, None]);
    assert_eq!(s.metrics().rows_written.load(Relaxed), 2);
}

#[test]
fn assembly_defaults_stale_overrides_and_version_checks() {
    let (_d, s) = store();
    let a = Assembler::new(&s, schema()).unwrap();
    let now = 1_000_000;
    put(
        &s,
        "fresh",
        now - 1_000,
        vec![Some(40.0), Some(0.25), Some(1.0)],
    );
    put(
        &s,
        "partial",
        now - 1_000,
        vec![Some(41.0), None, Some(0.0)],
    );
    put(
        &s,
        "old",
        now - 120_000,
        vec![Some(42.0), Some(0.75), Some(1.0)],
    );
    // A row under another schema version with the same width.
    let mut v2 = schema();
    v2.version = 2;
    Assembler::new(&s, v2).unwrap();
    s.put(&[(
        b"v2".to_vec(),
        FeatureRow {
            event_ts_ms: now,
            schema_version: 2,
            values: vec![Some(1.0), Some(1.0), Some(1.0)],
        },
    )])
    .unwrap();

    let keys: Vec<&[u8]> = vec![b"fresh", b"partial", b"old", b"nobody", b"v2"];
    let ov = [a.override_by_name(3, "score", 0.9).unwrap()];
    let (mut out, mut reps) = (Vec::new(), Vec::new());
    let txn = s.read_txn().unwrap();
    a.assemble(&s, &txn, &keys, &ov, now, &mut out, &mut reps)
        .unwrap();
    #[rustfmt::skip]
    assert_eq!(out, vec![
        40.0, 0.25, 1.0,
        41.0, 0.5, 0.0,   // score missing → default
        30.0, 0.5, 0.0,   // stale → defaults by policy
        30.0, 0.9, 0.0,   // unknown entity, score overridden
        30.0, 0.5, 0.0,   // version mismatch → defaults
    ]);
    assert!(reps[0].found && reps[0].defaulted.is_empty() && reps[0].stale.is_empty());
    assert_eq!(reps[1].defaulted, [1]);
    assert_eq!(
        (reps[2].stale.as_slice(), reps[2].defaulted.as_slice()),
        (&[0, 1, 2][..], &[0, 1, 2][..])
    );
    assert!(!reps[3].found);
    assert_eq!(reps[3].defaulted, [0, 2]);
    assert!(reps[4].found && reps[4].version_mismatch);
    let m = s.metrics();
    assert_eq!(m.missing_entity.load(Relaxed), 1);
    assert_eq!(m.missing_feature.load(Relaxed), 1);
    assert_eq!(m.stale.load(Relaxed), 3);
    assert_eq!(m.version_mismatch.load(Relaxed), 1);

    // Policy "value": stale values are served, still flagged.
    let mut sv = schema();
    sv.stale = StalePolicy::Value;
    let a2 = Assembler::new(&s, sv).unwrap();
    a2.assemble(&s, &txn, &[b"old"], &[], now, &mut out, &mut reps)
        .unwrap();
    assert_eq!(out, vec![42.0, 0.75, 1.0]);
    assert_eq!(reps[0].stale, [0, 1, 2]);
    assert!(reps[0].defaulted.is_empty());

    // Out-of-range overrides and overrides of unknown features are errors.
    let bad = [Override {
        row: 5,
        feature: 0,
        value: 1.0,
    }];
    assert!(a
        .assemble(&s, &txn, &keys, &bad, now, &mut out, &mut reps)
        .is_err());
    assert_eq!(
        a.override_by_name(0, "nope", 1.0).unwrap_err().kind(),
        ErrorKind::Schema
    );
    assert_eq!(
        a.override_by_name(0, "vip", 3.0).unwrap_err().kind(),
        ErrorKind::InvalidValue
    );
}

#[test]
fn a_model_schema_binds_by_name_in_its_own_order() {
    let (_d, s) = store();
    Assembler::new(&s, schema()).unwrap();
    put(&s, "c", 0, vec![Some(40.0), Some(0.25), Some(1.0)]);
    // Same version, the model wants (vip, age, extra) in that order.
    let mut m = schema();
    m.fields = vec![
        field("vip", FeatureDType::Bool, 0.0),
        field("age", FeatureDType::I32, 30.0),
        field("extra", FeatureDType::F32, 7.0),
    ];
    m.max_age_s = 0;
    let a = Assembler::new(&s, m).unwrap();
    let (mut out, mut reps) = (Vec::new(), Vec::new());
    a.assemble(
        &s,
        &s.read_txn().unwrap(),
        &[b"c"],
        &[],
        10,
        &mut out,
        &mut reps,
    )
    .unwrap();
    assert_eq!(out, vec![1.0, 40.0, 7.0]);
    assert_eq!(reps[0].defaulted, [2]);
    // A dtype that disagrees with the stored layout is a schema error.
    let mut wrong = schema();
    wrong.fields[0].dtype = FeatureDType::F64;
    assert_eq!(
        Assembler::new(&s, wrong).unwrap_err().kind(),
        ErrorKind::Schema
    );
}

#[test]
fn bad_writes_are_refused_whole() {
    let (_d, s) = store();
    Assembler::new(&s, schema()).unwrap();
    let up = |key: &[u8], values: Vec<(&str, f64)>| NamedUpdate {
        key: key.to_vec(),
        event_ts_ms: 1,
        schema_version: 1,
        values: values.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
    };
    let good = up(b"ok", vec![("age", 3.0)]);
    for (bad, kind) in [
        (up(b"x", vec![("age", 1.5)]), ErrorKind::InvalidValue),
        (up(b"x", vec![("score", f64::NAN)]), ErrorKind::InvalidValue),
        (
            up(b"x", vec![("score", f64::INFINITY)]),
            ErrorKind::InvalidValue,
        ),
        (up(b"x", vec![("nope", 1.0)]), ErrorKind::Schema),
        (up(&[b'k'; 300], vec![("age", 1.0)]), ErrorKind::Oversized),
        (up(b"", vec![("age", 1.0)]), ErrorKind::InvalidValue),
        (
            NamedUpdate {
                schema_version: 9,
                ..up(b"x", vec![])
            },
            ErrorKind::Schema,
        ),
    ] {
        let e = apply(&s, &[good.clone(), bad]).unwrap_err();
        assert_eq!(e.kind(), kind, "{e}");
        assert_eq!(entities(&s), 0, "nothing written after {e}");
    }
    // A row wider than the stored layout.
    let wide = FeatureRow {
        event_ts_ms: 0,
        schema_version: 1,
        values: vec![Some(1.0); 5000],
    };
    assert_eq!(
        s.put(&[(b"w".to_vec(), wide)]).unwrap_err().kind(),
        ErrorKind::Oversized
    );
    apply(&s, &[good]).unwrap();
    assert_eq!(row(&s, "ok").unwrap().values, vec![Some(3.0), None, None]);
}

#[test]
fn map_full_is_a_clean_error_and_reads_keep_working() {
    let (_d, s) = store_with(256 << 10);
    Assembler::new(&s, schema()).unwrap();
    put(&s, "first", 1, vec![Some(1.0), Some(1.0), Some(1.0)]);
    let batch: Vec<_> = (0..20_000)
        .map(|i| {
            (
                format!("entity-{i:08}").into_bytes(),
                FeatureRow {
                    event_ts_ms: 2,
                    schema_version: 1,
                    values: vec![Some(i as f64), Some(0.0), Some(0.0)],
                },
            )
        })
        .collect();
    let e = s.put(&batch).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MapFull, "{e}");
    assert!(e.to_string().contains("cache.max_bytes"));
    assert_eq!(s.metrics().map_full.load(Relaxed), 1);
    // Nothing of the failed batch, the earlier row intact, and small writes still fit.
    assert_eq!(entities(&s), 1);
    assert_eq!(row(&s, "first").unwrap().values[0], Some(1.0));
    put(&s, "second", 1, vec![Some(2.0), None, None]);
    assert_eq!(entities(&s), 2);
    let st = s.stats().unwrap();
    assert!(st.fill_ratio > 0.0 && st.fill_ratio <= 1.0, "{st:?}");
    assert_eq!(st.map_size, 256 << 10);
}

#[test]
fn expiry_deletes_only_old_rows_in_bounded_batches() {
    let (_d, s) = store();
    Assembler::new(&s, schema()).unwrap();
    for i in 0..25 {
        // Every 3rd row is fresh.
        let ts = if i % 3 == 0 { 10_000 } else { 1_000 };
        put(&s, &format!("e{i:02}"), ts, vec![Some(1.0), None, None]);
    }
    let mut cursor = None;
    let n = s.expire_step(10_500, 5_000, 4, &mut cursor).unwrap();
    assert_eq!(n, 4, "one step deletes at most the batch");
    assert!(cursor.is_some());
    let rest = sweep(&s, 10_500, 5_000, 4).unwrap();
    assert_eq!(n + rest as usize, 16);
    assert_eq!(entities(&s), 9);
    assert!(row(&s, "e00").is_some() && row(&s, "e01").is_none());
    assert_eq!(s.metrics().rows_expired.load(Relaxed), 16);
}

#[test]
fn backup_is_a_compacted_readable_copy() {
    let (d, s) = store();
    Assembler::new(&s, schema()).unwrap();
    for i in 0..500 {
        put(&s, &format!("e{i}"), 5, vec![Some(i as f64), None, None]);
    }
    let copy_dir = d.path().join("copy");
    std::fs::create_dir(&copy_dir).unwrap();
    let size = s.backup(&copy_dir.join("data.mdb")).unwrap();
    assert!(size > 0);
    assert_eq!(
        s.backup(&copy_dir.join("data.mdb")).unwrap_err().kind(),
        ErrorKind::Io
    );
    let c = FeatureStore::open(&StoreOptions::new(&copy_dir, 64 << 20, 1)).unwrap();
    assert_eq!(entities(&c), 500);
    assert_eq!(row(&c, "e42").unwrap().values[0], Some(42.0));
    assert_eq!(c.schema(1).unwrap().fields.len(), 3);
}

/// A held read transaction is renewed by every write this process commits (the next read
/// sees it), by age, and is let go when idle past its age, freeing its reader slot.
#[test]
fn a_held_reader_sees_each_committed_write_and_lets_go_when_idle() {
    use std::time::{Duration, Instant};
    let (_d, s) = store();
    Assembler::new(&s, schema()).unwrap();
    put(&s, "c1", 100, vec![Some(40.0), None, None]);
    let mut h = edgeinfer_features::HeldReader::new(s.clone(), Duration::from_millis(50));
    let t0 = Instant::now();
    let id0 = h.txn(t0).unwrap().id();
    let get = |h: &mut edgeinfer_features::HeldReader, at| {
        let txn = h.txn(at).unwrap();
        s.get(txn, b"c1").unwrap().unwrap().get(0)
    };
    assert_eq!(get(&mut h, t0), Some(40.0));
    // No write: the same transaction is reused.
    assert_eq!(h.txn(t0 + Duration::from_millis(10)).unwrap().id(), id0);
    assert_eq!(s.stats().unwrap().readers, 1);
    put(&s, "c1", 200, vec![Some(41.0), None, None]);
    assert_eq!(get(&mut h, t0 + Duration::from_millis(10)), Some(41.0));
    let id1 = h.txn(t0 + Duration::from_millis(10)).unwrap().id();
    assert!(id1 > id0, "renewed after the commit ({id0} -> {id1})");
    // Idle: kept while young, released once older than its age.
    assert!(h.release_if_old(t0 + Duration::from_millis(20)));
    assert!(!h.release_if_old(t0 + Duration::from_millis(100)));
    // A reader slot is free again (LMDB counts slots ever used; none is held by a txn).
    assert_eq!(get(&mut h, t0 + Duration::from_millis(100)), Some(41.0));
}

/// A schema of f32 and bool features only stores its rows as f32 (format 2, smaller);
/// assembly serves the same f32s as from f64 rows; stored values read back widened.
#[test]
fn an_f32_schema_stores_f32_rows_and_assembles_the_same() {
    let (_d, s) = store();
    let mut f32_schema = schema();
    f32_schema.version = 7;
    f32_schema.max_age_s = 0;
    f32_schema.fields[0] = field("age", FeatureDType::F32, 30.0);
    assert_eq!(f32_schema.row_format(), edgeinfer_features::ROW_F32);
    assert_eq!(schema().row_format(), edgeinfer_features::ROW_F64);
    let a = Assembler::new(&s, f32_schema).unwrap();
    s.put(&[(
        b"c1".to_vec(),
        FeatureRow {
            event_ts_ms: 100,
            schema_version: 7,
            values: vec![Some(40.5), Some(0.1), None],
        },
    )])
    .unwrap();
    let txn = s.read_txn().unwrap();
    let r = s.get(&txn, b"c1").unwrap().unwrap();
    assert_eq!(r.format(), edgeinfer_features::ROW_F32);
    assert_eq!(r.get(1), Some(f64::from(0.1f32)));
    let (mut out, mut reps) = (Vec::new(), Vec::new());
    a.assemble(&s, &txn, &[b"c1"], &[], 1000, &mut out, &mut reps)
        .unwrap();
    assert_eq!(out, vec![40.5f32, 0.1f32, 0.0]);
    assert_eq!(reps[0].defaulted, vec![2]);
}

/// A model whose features are the stored ones in the stored order, with no max age, takes
/// each full row whole (`RowView::extend_dense_f32`): the same matrix and reports as a
/// reordered model of the same features assembling value by value, for keys of every
/// length mod 8 (so LMDB hands back values at every alignment), a row with a value absent
/// and a missing entity.
#[test]
fn whole_row_assembly_matches_assembly_by_name() {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    let with = |order: &[usize]| edgeinfer_features::FeatureSchema {
        version: 1,
        input: None,
        max_age_s: 0,
        stale: StalePolicy::Default,
        fields: order
            .iter()
            .map(|&i| field(names[i], FeatureDType::F32, i as f64 + 0.5))
            .collect(),
    };
    let stored: Vec<usize> = (0..names.len()).collect();
    let reversed: Vec<usize> = stored.iter().rev().copied().collect();
    let (_d, s) = store();
    let dense = Assembler::new(&s, with(&stored)).unwrap();
    let by_name = Assembler::new(&s, with(&reversed)).unwrap();
    let keys: Vec<String> = (1..=8).map(|n| "k".repeat(n)).collect();
    for (j, k) in keys.iter().enumerate() {
        let mut values: Vec<Option<f64>> = (0..names.len())
            .map(|i| Some(j as f64 * 10.0 + i as f64 * 0.25))
            .collect();
        if j == 3 {
            values[4] = None;
        }
        put(&s, k, 7, values);
    }
    let mut all: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    all.push(b"absent");
    let txn = s.read_txn().unwrap();
    let (mut a, mut ra, mut b, mut rb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    dense
        .assemble(&s, &txn, &all, &[], 0, &mut a, &mut ra)
        .unwrap();
    by_name
        .assemble(&s, &txn, &all, &[], 0, &mut b, &mut rb)
        .unwrap();
    let w = names.len();
    for row in 0..all.len() {
        let back: Vec<f32> = b[row * w..(row + 1) * w].iter().rev().copied().collect();
        assert_eq!(&a[row * w..(row + 1) * w], back.as_slice(), "row {row}");
        let flip = |v: &[u32]| {
            let mut v: Vec<u32> = v.iter().map(|&i| (w - 1) as u32 - i).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(ra[row].defaulted, flip(&rb[row].defaulted), "row {row}");
        assert_eq!(ra[row].found, rb[row].found);
    }
    assert_eq!(a[2 * w + 1], 20.25);
    assert_eq!((a[3 * w + 4], ra[3].defaulted.as_slice()), (4.5, &[4][..]));
    assert_eq!(ra[8].defaulted.len(), w);
}
