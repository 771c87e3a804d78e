//! Bulk ingestion from CSV and Parquet files.
//!
//! An import runs in two phases so that a broken file writes nothing:
//! 1. **Read and validate** the whole file. A structural problem (truncated or malformed
//!    file, missing or unexpected columns) fails the import before any write. A row whose
//!    values break the schema (wrong dtype, NaN/Inf where forbidden, empty or oversized key,
//!    bad timestamp) is rejected with its line and reason; the others go on.
//! 2. **Write** the valid rows sorted by key (LMDB appends sorted keys fastest), in write
//!    transactions of `batch_rows`. Each transaction is all-or-nothing. If the map fills,
//!    the transaction in flight is rolled back and the error says how many rows were already
//!    committed; since writes keep the newer row by event time, running the import again
//!    after raising `cache.max_bytes` finishes it without duplicating anything.
//!
//! Duplicate keys in one file: the row with the latest event time wins; on a tie, the one
//! later in the file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use crate::row::FeatureRow;
use crate::schema::FeatureSchema;
use crate::store::FeatureStore;
use crate::FeatureError;

/// How to read an import file.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Column holding the entity key.
    pub key_column: String,
    /// Column holding the event time: integer milliseconds since the Unix epoch (CSV, Parquet
    /// INT64) or a Parquet TIMESTAMP.
    pub time_column: String,
    /// Rows per write transaction.
    pub batch_rows: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            key_column: "entity".into(),
            time_column: "event_ts_ms".into(),
            batch_rows: 10_000,
        }
    }
}

/// One rejected row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reject {
    /// 1-based line (CSV, header = line 1) or row number (Parquet, first row = 1).
    pub line: u64,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ImportReport {
    pub rows_read: u64,
    pub written: u64,
    /// Valid rows not written because the store already holds a newer one.
    pub skipped_older: u64,
    /// Rows superseded by a later row for the same key in the same file.
    pub duplicates: u64,
    pub rejected: u64,
    /// Rejected rows by reason kind (`invalid value`, `too large`, …).
    pub reject_kinds: BTreeMap<String, u64>,
    /// The first [`MAX_LISTED_REJECTS`] rejects.
    pub rejects: Vec<Reject>,
}

pub const MAX_LISTED_REJECTS: usize = 100;

/// Progress of the write phase, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// The file formats [`import_file`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    /// Parquet files start with `PAR1`; anything else is read as CSV.
    pub fn sniff(path: &Path) -> Result<Format, FeatureError> {
        let mut magic = [0u8; 4];
        let mut f = File::open(path).map_err(|e| FeatureError::io(path, e))?;
        let n = f.read(&mut magic).map_err(|e| FeatureError::io(path, e))?;
        Ok(if n == 4 && &magic == b"PAR1" {
            Format::Parquet
        } else {
            Format::Csv
        })
    }
}

/// A validated row waiting to be written.
struct Staged {
    key: Vec<u8>,
    seq: u64,
    row: FeatureRow,
}

/// Builds rows in the stored layout of the schema's version and collects rejects.
struct Stager<'a> {
    store: &'a FeatureStore,
    schema: &'a FeatureSchema,
    width: usize,
    /// The row format of the schema's stored layout (every staged row has it).
    format: u16,
    map: Vec<Option<usize>>,
    staged: Vec<Staged>,
    report: ImportReport,
}

impl<'a> Stager<'a> {
    fn new(store: &'a FeatureStore, schema: &'a FeatureSchema) -> Result<Self, FeatureError> {
        let (stored, map) = store.bind(schema)?;
        Ok(Stager {
            store,
            schema,
            width: stored.fields.len(),
            format: stored.row_format(),
            map,
            staged: Vec::new(),
            report: ImportReport::default(),
        })
    }

    fn reject(&mut self, line: u64, e: FeatureError) {
        self.report.rejected += 1;
        self.store
            .metrics()
            .rows_rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let kind = match e.kind() {
            crate::ErrorKind::InvalidValue => "invalid value",
            crate::ErrorKind::Oversized => "too large",
            crate::ErrorKind::Schema => "schema mismatch",
            _ => "other",
        };
        *self.report.reject_kinds.entry(kind.into()).or_default() += 1;
        if self.report.rejects.len() < MAX_LISTED_REJECTS {
            self.report.rejects.push(Reject {
                line,
                reason: e.to_string(),
            });
        }
    }

    /// `cells[i]` is the value of the schema's field i (`None` = empty: absent).
    fn stage(&mut self, line: u64, key: Vec<u8>, ts: i64, cells: &[Option<f64>]) {
        let mut values = vec![None; self.width];
        for (i, v) in cells.iter().enumerate() {
            if let (Some(j), Some(v)) = (self.map[i], v) {
                values[j] = Some(*v);
            }
        }
        let row = FeatureRow {
            event_ts_ms: ts,
            schema_version: self.schema.version,
            values,
        };
        match self.store.check(&key, &row) {
            Ok(()) => self.staged.push(Staged {
                key,
                seq: line,
                row,
            }),
            Err(e) => self.reject(line, e),
        }
    }

    fn write(
        mut self,
        batch_rows: usize,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImportReport, FeatureError> {
        let mut staged = std::mem::take(&mut self.staged);
        staged.sort_by(|a, b| {
            (&a.key, a.row.event_ts_ms, a.seq).cmp(&(&b.key, b.row.event_ts_ms, b.seq))
        });
        // Sorted by (key, time, line): the last of each run of equal keys wins.
        let mut rows: Vec<(Vec<u8>, FeatureRow)> = Vec::with_capacity(staged.len());
        for s in staged {
            match rows.last_mut() {
                Some(last) if last.0 == s.key => {
                    self.report.duplicates += 1;
                    last.1 = s.row;
                }
                _ => rows.push((s.key, s.row)),
            }
        }
        let total = rows.len() as u64;
        let mut done = 0;
        progress(Progress { done, total });
        for chunk in rows.chunks(batch_rows.max(1)) {
            // Each row was checked when staged.
            match self.store.put_checked(chunk, self.format) {
                Ok(o) => {
                    self.report.written += o.written;
                    self.report.skipped_older += o.skipped_older;
                }
                Err(FeatureError::MapFull { map_size, .. }) => {
                    tracing::warn!(done, total, "feature import stopped: map full");
                    return Err(FeatureError::MapFull {
                        map_size,
                        committed: done,
                    });
                }
                Err(e) => return Err(e),
            }
            done += chunk.len() as u64;
            progress(Progress { done, total });
        }
        Ok(self.report)
    }
}

/// Imports `path` (CSV or Parquet, sniffed) with `schema`.
pub fn import_file(
    store: &FeatureStore,
    schema: &FeatureSchema,
    path: &Path,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ImportReport, FeatureError> {
    match Format::sniff(path)? {
        Format::Csv => {
            let f = File::open(path).map_err(|e| FeatureError::io(path, e))?;
            import_csv(store, schema, f, opts, progress)
        }
        Format::Parquet => import_parquet(store, schema, path, opts, progress),
    }
}

/// Column positions of the key, the time and each schema field in a file's header.
fn columns(
    header: &[String],
    schema: &FeatureSchema,
    opts: &ImportOptions,
) -> Result<(usize, usize, Vec<usize>), FeatureError> {
    let find = |name: &str| header.iter().position(|h| h == name);
    let missing = |what: &str, name: &str| {
        FeatureError::Schema(format!(
            "the file has no {what} column {name:?} (columns: {header:?})"
        ))
    };
    if let Some(d) = header
        .iter()
        .enumerate()
        .find_map(|(i, h)| header[..i].contains(h).then_some(h))
    {
        return Err(FeatureError::Schema(format!("column {d:?} appears twice")));
    }
    let key = find(&opts.key_column).ok_or_else(|| missing("key", &opts.key_column))?;
    let time = find(&opts.time_column).ok_or_else(|| missing("time", &opts.time_column))?;
    let mut fields = Vec::with_capacity(schema.fields.len());
    for f in &schema.fields {
        fields.push(find(&f.name).ok_or_else(|| missing("feature", &f.name))?);
    }
    for (i, h) in header.iter().enumerate() {
        if i != key && i != time && !fields.contains(&i) {
            return Err(FeatureError::Schema(format!(
                "column {h:?} is not a feature of schema version {} (skew protection: \
                 every column must be known)",
                schema.version
            )));
        }
    }
    Ok((key, time, fields))
}

/// Imports CSV from a reader: a header line naming the key column, the time column and
/// every schema feature; empty cells are absent features.
pub fn import_csv<R: Read>(
    store: &FeatureStore,
    schema: &FeatureSchema,
    input: R,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ImportReport, FeatureError> {
    let mut st = Stager::new(store, schema)?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(input);
    let malformed = |e: csv::Error| FeatureError::Malformed(format!("CSV: {e}"));
    let header: Vec<String> = rdr
        .headers()
        .map_err(malformed)?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if header.iter().all(|h| h.is_empty()) {
        return Err(FeatureError::Malformed("CSV: empty file, no header".into()));
    }
    let (kc, tc, fc) = columns(&header, schema, opts)?;
    let mut rec = csv::ByteRecord::new();
    let mut cells = vec![None; schema.fields.len()];
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(malformed(e)),
        }
        let line = rec.position().map_or(0, |p| p.line());
        st.report.rows_read += 1;
        if rec.len() != header.len() {
            return Err(FeatureError::Malformed(format!(
                "CSV line {line}: {} fields, the header has {} (truncated or malformed file); \
                 nothing was imported",
                rec.len(),
                header.len()
            )));
        }
        let parsed = (|| {
            let ts_text = std::str::from_utf8(&rec[tc]).unwrap_or("");
            let ts = ts_text.trim().parse::<i64>().map_err(|_| {
                FeatureError::InvalidValue(format!(
                    "{:?}: {ts_text:?} is not integer milliseconds",
                    opts.time_column
                ))
            })?;
            for (i, f) in schema.fields.iter().enumerate() {
                let raw = &rec[fc[i]];
                cells[i] = if raw.is_empty() {
                    None
                } else {
                    let text = std::str::from_utf8(raw).map_err(|_| {
                        FeatureError::InvalidValue(format!("feature {:?}: not UTF-8", f.name))
                    })?;
                    Some(f.parse(text)?)
                };
            }
            Ok::<i64, FeatureError>(ts)
        })();
        match parsed {
            Ok(ts) => st.stage(line, rec[kc].to_vec(), ts, &cells),
            Err(e) => st.reject(line, e),
        }
    }
    st.write(opts.batch_rows, progress)
}

/// Imports a Parquet file: flat columns named as for CSV; features as any numeric or
/// boolean type, the time as INT64 milliseconds or a TIMESTAMP, the key as a string,
/// bytes or integer. Nulls are absent features.
pub fn import_parquet(
    store: &FeatureStore,
    schema: &FeatureSchema,
    path: &Path,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ImportReport, FeatureError> {
    let malformed = |e: parquet::errors::ParquetError| {
        FeatureError::Malformed(format!("Parquet {}: {e}", path.display()))
    };
    let file = File::open(path).map_err(|e| FeatureError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(malformed)?;
    let header: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.path().string())
        .collect();
    let (kc, tc, fc) = columns(&header, schema, opts)?;
    let mut st = Stager::new(store, schema)?;
    let mut cells = vec![None; schema.fields.len()];
    let iter = reader.get_row_iter(None).map_err(malformed)?;
    for (n, row) in iter.enumerate() {
        let line = n as u64 + 1;
        let row = row.map_err(malformed)?;
        st.report.rows_read += 1;
        let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
        if fields.len() != header.len() {
            return Err(FeatureError::Malformed(format!(
                "Parquet row {line}: {} columns, the schema has {} (nested columns are not \
                 supported)",
                fields.len(),
                header.len()
            )));
        }
        let parsed = (|| {
            let key = match fields[kc] {
                Field::Str(s) => s.as_bytes().to_vec(),
                Field::Bytes(b) => b.data().to_vec(),
                Field::Int(i) => i.to_string().into_bytes(),
                Field::Long(i) => i.to_string().into_bytes(),
                other => {
                    return Err(FeatureError::InvalidValue(format!(
                        "key {:?}: {other} is not a string or integer",
                        opts.key_column
                    )))
                }
            };
            let ts = match fields[tc] {
                Field::Long(v) | Field::TimestampMillis(v) => *v,
                Field::TimestampMicros(v) => v.div_euclid(1000),
                Field::Int(v) => i64::from(*v),
                other => {
                    return Err(FeatureError::InvalidValue(format!(
                        "{:?}: {other} is not milliseconds or a timestamp",
                        opts.time_column
                    )))
                }
            };
            for (i, f) in schema.fields.iter().enumerate() {
                let v = match fields[fc[i]] {
                    Field::Null => None,
                    Field::Bool(b) => Some(f64::from(u8::from(*b))),
                    Field::Byte(v) => Some(f64::from(*v)),
                    Field::Short(v) => Some(f64::from(*v)),
                    Field::Int(v) => Some(f64::from(*v)),
                    Field::Long(v) => Some(*v as f64),
                    Field::UByte(v) => Some(f64::from(*v)),
                    Field::UShort(v) => Some(f64::from(*v)),
                    Field::UInt(v) => Some(f64::from(*v)),
                    Field::ULong(v) => Some(*v as f64),
                    Field::Float(v) => Some(f64::from(*v)),
                    Field::Double(v) => Some(*v),
                    other => {
                        return Err(FeatureError::InvalidValue(format!(
                            "feature {:?}: {other} is not numeric",
                            f.name
                        )))
                    }
                };
                if let Some(v) = v {
                    f.check(v)?;
                }
                cells[i] = v;
            }
            Ok((key, ts))
        })();
        match parsed {
            Ok((key, ts)) => st.stage(line, key, ts, &cells),
            Err(e) => st.reject(line, e),
        }
    }
    st.write(opts.batch_rows, progress)
}
