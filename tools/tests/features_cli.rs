//! `edgeinfer features import|get|stats|backup`, run as the built binary on real CSV and
//! Parquet files and a real LMDB store in a temp dir.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::Value;

const SCHEMA: &str = r#"
version = 1
[[fields]]
name = "age"
dtype = "i32"
default = 30
[[fields]]
name = "score"
dtype = "f32"
default = 0.5
"#;

fn edgeinfer(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
        .arg("features")
        .args(args)
        .arg("--store")
        .arg(store)
        .args(["--map-size", "67108864"])
        .env_remove("EDGEINFER_FEATURE_STORE")
        .output()
        .expect("run edgeinfer")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("JSON on stdout")
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_parquet(path: &Path, keys: &[&str], ts: &[i64], age: &[i64], score: &[f64]) {
    let schema = Arc::new(
        parse_message_type(
            "message m { required binary entity (UTF8); required int64 event_ts_ms; \
             required int64 age; required double score; }",
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
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn csv_import_reports_rejects_with_reasons_then_get_stats_backup() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let schema = d.path().join("schema.toml");
    std::fs::write(&schema, SCHEMA).unwrap();
    let csv = d.path().join("in.csv");
    std::fs::write(
        &csv,
        "entity,event_ts_ms,age,score\n\
         c-1,1000,41,0.25\n\
         c-2,1000,4.5,0.1\n\
         c-3,1000,20,NaN\n\
         c-1,2000,42,\n\
         ,1000,1,1\n\
         c-4,1000,33,0.75\n",
    )
    .unwrap();
    let s = schema.to_str().unwrap();
    let out = edgeinfer(
        &store,
        &[
            "import",
            csv.to_str().unwrap(),
            "--schema",
            s,
            "--quiet",
            "--json",
        ],
    );
    let r = json(&out);
    assert_eq!(r["rows_read"], 6);
    assert_eq!(r["written"], 2, "{r}");
    assert_eq!(r["duplicates"], 1);
    assert_eq!(r["rejected"], 3);
    let reasons: Vec<String> = r["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| format!("{} {}", x["line"], x["reason"].as_str().unwrap()))
        .collect();
    assert!(
        reasons[0].starts_with("3 ") && reasons[0].contains("4.5"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("4 ") && reasons[1].contains("NaN"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].starts_with("6 ") && reasons[2].contains("empty"),
        "{reasons:?}"
    );

    // The text report names each reject and its line too.
    let again = edgeinfer(
        &store,
        &["import", csv.to_str().unwrap(), "--schema", s, "--quiet"],
    );
    let text = ok(&again);
    assert!(text.contains("read 6 rows"), "{text}");
    // Same event times: on a tie the later write wins, so the re-run rewrites both rows.
    assert!(text.contains("wrote 2, 0 older than stored"), "{text}");
    assert!(
        text.contains("line 3:") && text.contains("line 6:"),
        "{text}"
    );

    // get: the later duplicate won (age 42, score absent → default).
    let g = json(&edgeinfer(&store, &["get", "c-1", "--json"]));
    assert_eq!(g["event_ts_ms"], 2000);
    assert_eq!(g["values"]["age"], 42.0);
    assert_eq!(g["values"]["score"], Value::Null);
    let text = ok(&edgeinfer(&store, &["get", "c-4"]));
    assert!(text.contains("score = 0.75"), "{text}");
    assert!(failed(&edgeinfer(&store, &["get", "nobody"])).contains("not in the store"));

    // stats.
    let st = json(&edgeinfer(&store, &["stats", "--json"]));
    assert_eq!(st["entities"], 2);
    assert_eq!(st["map_size"], 67_108_864);
    let fill = st["fill_ratio"].as_f64().unwrap();
    assert!(fill > 0.0 && fill < 0.01, "{fill}");

    // backup: a compacted copy that opens as a store with the same rows; never overwrites.
    let copy = d.path().join("backup.mdb");
    let text = ok(&edgeinfer(&store, &["backup", copy.to_str().unwrap()]));
    assert!(text.contains("compacted"), "{text}");
    let restored = d.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::copy(&copy, restored.join("data.mdb")).unwrap();
    let g = json(&edgeinfer(&restored, &["get", "c-4", "--json"]));
    assert_eq!(g["values"]["age"], 33.0);
    assert!(failed(&edgeinfer(&store, &["backup", copy.to_str().unwrap()])).contains("exists"));
}

#[test]
fn parquet_import_and_bad_files_are_refused_whole() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let schema = d.path().join("schema.toml");
    std::fs::write(&schema, SCHEMA).unwrap();
    let s = schema.to_str().unwrap();
    let pq = d.path().join("in.parquet");
    write_parquet(
        &pq,
        &["p-1", "p-2", "p-3"],
        &[10, 10, 10],
        &[1, 2, 3_000_000_000],
        &[0.5, f64::INFINITY, 0.25],
    );
    let r = json(&edgeinfer(
        &store,
        &[
            "import",
            pq.to_str().unwrap(),
            "--schema",
            s,
            "--quiet",
            "--json",
        ],
    ));
    assert_eq!(
        (r["written"].as_u64(), r["rejected"].as_u64()),
        (Some(1), Some(2)),
        "{r}"
    );
    let g = json(&edgeinfer(&store, &["get", "p-1", "--json"]));
    assert_eq!(g["values"]["score"], 0.5);

    // A truncated Parquet file, a malformed CSV line, a missing column: refused, nothing written.
    let cut = d.path().join("cut.parquet");
    let bytes = std::fs::read(&pq).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let bad_csv = d.path().join("bad.csv");
    std::fs::write(
        &bad_csv,
        "entity,event_ts_ms,age,score\nz-1,1,2,0.5\nz-2,1,2\n",
    )
    .unwrap();
    let no_col = d.path().join("nocol.csv");
    std::fs::write(&no_col, "entity,event_ts_ms,age\nz-3,1,2\n").unwrap();
    for (file, why) in [(&cut, "parquet"), (&bad_csv, "line 3"), (&no_col, "score")] {
        let err = failed(&edgeinfer(
            &store,
            &["import", file.to_str().unwrap(), "--schema", s, "--quiet"],
        ));
        assert!(err.to_lowercase().contains(why), "{why}: {err}");
    }
    let st = json(&edgeinfer(&store, &["stats", "--json"]));
    assert_eq!(st["entities"], 1, "a refused file wrote rows");
    // A schema that is not valid is refused before the store is touched.
    let bad_schema = d.path().join("bad.toml");
    std::fs::write(&bad_schema, "version = 1\nfields = []\n").unwrap();
    let err = failed(&edgeinfer(
        &store,
        &[
            "import",
            pq.to_str().unwrap(),
            "--schema",
            bad_schema.to_str().unwrap(),
        ],
    ));
    assert!(err.contains("at least one field"), "{err}");
}
