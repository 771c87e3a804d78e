//! CSV and Parquet import into a real LMDB store: good files, rejects with reasons,
//! duplicates, broken files that must write nothing, and a map that fills mid-import.

mod common;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use common::*;
use edgeinfer_features::import::{import_file, ImportOptions, Progress};
use edgeinfer_features::ErrorKind;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

fn csv_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("in.csv");
    std::fs::write(&p, text).unwrap();
    p
}

fn import(
    store: &edgeinfer_features::FeatureStore,
    path: &Path,
) -> Result<edgeinfer_features::import::ImportReport, edgeinfer_features::FeatureError> {
    let mut last = None;
    let r = import_file(
        store,
        &schema(),
        path,
        &ImportOptions::default(),
        &mut |p: Progress| last = Some(p),
    );
    if let Ok(rep) = &r {
        let p = last.expect("progress reported");
        assert_eq!(p.done, p.total);
        assert_eq!(p.total, rep.written + rep.skipped_older);
    }
    r
}

#[test]
fn csv_rows_rejects_and_duplicates() {
    let (d, s) = store();
    let p = csv_file(
        d.path(),
        "entity,event_ts_ms,age,score,vip\n\
         c1,100,40,0.25,true\n\
         c2,100,41,,0\n\
         c1,300,42,0.5,1\n\
         c1,200,43,0.5,1\n\
         bad-dtype,100,4.5,0.1,0\n\
         bad-nan,100,4,NaN,0\n\
         bad-inf,100,4,inf,0\n\
         bad-bool,100,4,0.1,maybe\n\
         bad-ts,yesterday,4,0.1,0\n\
         ,100,4,0.1,0\n",
    );
    let long = "k".repeat(300);
    std::fs::write(
        &p,
        std::fs::read_to_string(&p).unwrap() + &format!("{long},100,1,1,1\n"),
    )
    .unwrap();
    let r = import(&s, &p).unwrap();
    assert_eq!(r.rows_read, 11);
    assert_eq!(r.written, 2);
    assert_eq!(r.duplicates, 2);
    assert_eq!(r.rejected, 7);
    assert_eq!(r.reject_kinds["invalid value"], 6);
    assert_eq!(r.reject_kinds["too large"], 1);
    let lines: Vec<u64> = r.rejects.iter().map(|x| x.line).collect();
    assert_eq!(lines, [6, 7, 8, 9, 10, 11, 12]);
    assert!(
        r.rejects[0].reason.contains("\"age\""),
        "{:?}",
        r.rejects[0]
    );
    assert!(r.rejects[1].reason.contains("NaN"), "{:?}", r.rejects[1]);
    // c1: the latest event time (300) wins, not the last line.
    let c1 = row(&s, "c1").unwrap();
    assert_eq!((c1.event_ts_ms, c1.values[0]), (300, Some(42.0)));
    assert_eq!(
        row(&s, "c2").unwrap().values,
        vec![Some(41.0), None, Some(0.0)]
    );
    // Importing again writes nothing new (idempotent by event time).
    let again = import(&s, &p).unwrap();
    assert_eq!((again.written, again.skipped_older), (2, 0));
    // Older rows than stored are skipped.
    let older = csv_file(d.path(), "entity,event_ts_ms,age,score,vip\nc1,1,1,1,1\n");
    let o = import(&s, &older).unwrap();
    assert_eq!((o.written, o.skipped_older), (0, 1));
}

#[test]
fn broken_csv_files_write_nothing() {
    let (d, s) = store();
    for (text, kind, needle) in [
        // Truncated mid-line.
        (
            "entity,event_ts_ms,age,score,vip\nc1,1,1,1,1\nc2,1,1",
            ErrorKind::Malformed,
            "truncated",
        ),
        (
            "entity,event_ts_ms,age,score,vip\nc1,1,1,1,1,9\n",
            ErrorKind::Malformed,
            "fields",
        ),
        ("", ErrorKind::Malformed, "empty"),
        // Schema mismatch: a missing feature column, an unknown one, a repeated one.
        (
            "entity,event_ts_ms,age,score\nc1,1,1,1\n",
            ErrorKind::Schema,
            "vip",
        ),
        (
            "entity,event_ts_ms,age,score,vip,height\nc1,1,1,1,1,2\n",
            ErrorKind::Schema,
            "height",
        ),
        (
            "entity,event_ts_ms,age,score,vip,age\nc1,1,1,1,1,2\n",
            ErrorKind::Schema,
            "twice",
        ),
        (
            "id,event_ts_ms,age,score,vip\nc1,1,1,1,1\n",
            ErrorKind::Schema,
            "key column",
        ),
    ] {
        let p = csv_file(d.path(), text);
        let e = import(&s, &p).unwrap_err();
        assert_eq!(e.kind(), kind, "{text:?}: {e}");
        assert!(e.to_string().contains(needle), "{text:?}: {e}");
        assert_eq!(entities(&s), 0, "{text:?} wrote rows");
    }
}

#[test]
fn map_full_mid_import_keeps_committed_batches_and_reads() {
    let (d, s) = store_with(512 << 10);
    let mut text = String::from("entity,event_ts_ms,age,score,vip\n");
    for i in 0..40_000 {
        text.push_str(&format!("entity-{i:08},5,{},0.5,1\n", i % 100));
    }
    let p = csv_file(d.path(), &text);
    let opts = ImportOptions {
        batch_rows: 1000,
        ..ImportOptions::default()
    };
    let e = import_file(&s, &schema(), &p, &opts, &mut |_| {}).unwrap_err();
    let edgeinfer_features::FeatureError::MapFull { committed, .. } = e else {
        panic!("expected MapFull, got {e}");
    };
    assert!(
        committed > 0 && committed < 40_000 && committed % 1000 == 0,
        "{committed}"
    );
    // Exactly the committed batches are there, all readable.
    assert_eq!(entities(&s), committed);
    assert_eq!(row(&s, "entity-00000007").unwrap().values[0], Some(7.0));
    assert!(
        s.metrics()
            .map_full
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

fn write_parquet(path: &Path, keys: &[&str], ts: &[i64], age: &[i64], score: &[f64], vip: &[i64]) {
    let schema = Arc::new(
        parse_message_type(
            "message m { required binary entity (UTF8); required int64 event_ts_ms; \
             required int64 age; required double score; required int64 vip; }",
        )
        .unwrap(),
    );
    let file = File::create(path).unwrap();
    let props = Arc::new(WriterProperties::builder().build());
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let k: Vec<ByteArray> = keys.iter().map(|k| ByteArray::from(*k)).collect();
    col.typed::<ByteArrayType>()
        .write_batch(&k, None, None)
        .unwrap();
    col.close().unwrap();
    for data in [ts, age] {
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<Int64Type>()
            .write_batch(data, None, None)
            .unwrap();
        col.close().unwrap();
    }
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<DoubleType>()
        .write_batch(score, None, None)
        .unwrap();
    col.close().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<Int64Type>()
        .write_batch(vip, None, None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_import_and_bad_rows() {
    let (d, s) = store();
    let p = d.path().join("in.parquet");
    write_parquet(
        &p,
        &["a", "b", "a", "nan", "bool"],
        &[10, 10, 20, 10, 10],
        &[1, 2, 3, 4, 5],
        &[0.5, 0.25, 0.75, f64::NAN, 0.1],
        &[0, 1, 1, 0, 7],
    );
    let r = import(&s, &p).unwrap();
    assert_eq!(
        (r.rows_read, r.written, r.duplicates, r.rejected),
        (5, 2, 1, 2)
    );
    assert_eq!(
        row(&s, "a").unwrap().values,
        vec![Some(3.0), Some(0.75), Some(1.0)]
    );
    assert_eq!(r.rejects[0].line, 4);
    assert!(r.rejects[1].reason.contains("bool"), "{:?}", r.rejects);
}

#[test]
fn truncated_or_malformed_parquet_writes_nothing() {
    let (d, s) = store();
    let good = d.path().join("good.parquet");
    write_parquet(&good, &["a"], &[1], &[1], &[0.5], &[1]);
    let bytes = std::fs::read(&good).unwrap();
    let cut = d.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let e = import(&s, &cut).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    let junk = d.path().join("junk.parquet");
    std::fs::write(&junk, b"PAR1 this is not parquet at all PAR1").unwrap();
    assert_eq!(import(&s, &junk).unwrap_err().kind(), ErrorKind::Malformed);
    assert_eq!(entities(&s), 0);
}

/// A Parquet file of one row with the given flat columns: (name, physical type, value)
/// where a value is text for BYTE_ARRAY columns and an integer for INT64 ones.
fn write_parquet_columns(path: &Path, cols: &[(&str, &str, &str)]) {
    let fields: Vec<String> = cols
        .iter()
        .map(|(name, ty, _)| match *ty {
            "utf8" => format!("required binary {name} (UTF8);"),
            _ => format!("required int64 {name};"),
        })
        .collect();
    let schema =
        Arc::new(parse_message_type(&format!("message m {{ {} }}", fields.join(" "))).unwrap());
    let file = File::create(path).unwrap();
    let props = Arc::new(WriterProperties::builder().build());
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    for (_, ty, value) in cols {
        let mut col = rg.next_column().unwrap().unwrap();
        match *ty {
            "utf8" => {
                col.typed::<ByteArrayType>()
                    .write_batch(&[ByteArray::from(*value)], None, None)
                    .unwrap();
            }
            _ => {
                col.typed::<Int64Type>()
                    .write_batch(&[value.parse::<i64>().unwrap()], None, None)
                    .unwrap();
            }
        }
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}

/// Parquet against the schema: a missing or unknown feature column fails the import with a
/// schema error before any write; a feature column of a non-numeric type rejects its rows
/// with the reason (wrong dtype), and nothing of them is written.
#[test]
fn parquet_schema_mismatch_and_wrong_column_types() {
    let (d, s) = store();
    let base = [
        ("entity", "utf8", "a"),
        ("event_ts_ms", "int64", "10"),
        ("age", "int64", "3"),
        ("score", "int64", "1"),
        ("vip", "int64", "1"),
    ];
    let missing = d.path().join("missing.parquet");
    write_parquet_columns(&missing, &base[..4]);
    let e = import(&s, &missing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Schema, "{e}");
    assert!(e.to_string().contains("vip"), "{e}");
    let mut extra = base.to_vec();
    extra.push(("height", "int64", "180"));
    let unknown = d.path().join("unknown.parquet");
    write_parquet_columns(&unknown, &extra);
    let e = import(&s, &unknown).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Schema, "{e}");
    assert!(e.to_string().contains("height"), "{e}");
    assert_eq!(entities(&s), 0);

    let mut text = base.to_vec();
    text[3] = ("score", "utf8", "high");
    let wrong = d.path().join("wrong.parquet");
    write_parquet_columns(&wrong, &text);
    let r = import(&s, &wrong).unwrap();
    assert_eq!((r.rows_read, r.written, r.rejected), (1, 0, 1));
    assert!(
        r.rejects[0].reason.contains("score") && r.rejects[0].reason.contains("not numeric"),
        "{:?}",
        r.rejects
    );
    // An int64 where the schema says bool, out of range: the row is rejected too.
    let mut bad_bool = base.to_vec();
    bad_bool[4] = ("vip", "int64", "7");
    let p = d.path().join("bool.parquet");
    write_parquet_columns(&p, &bad_bool);
    let r = import(&s, &p).unwrap();
    assert_eq!((r.written, r.rejected), (0, 1));
    assert_eq!(entities(&s), 0);
}
