//! `edgeinfer features import|get|stats|backup`: the feature store from the command line,
//! opened directly (LMDB allows it beside a running daemon).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use edgeinfer_features::import::{import_file, ImportOptions, Progress};
use edgeinfer_features::{FeatureSchema, FeatureStore, StoreOptions};

#[derive(Args)]
pub struct FeaturesArgs {
    #[command(subcommand)]
    command: FeaturesCommand,
}

#[derive(Subcommand)]
enum FeaturesCommand {
    /// Import a CSV or Parquet file (rows, rejects and each reason are reported).
    Import(ImportArgs),
    /// Print the stored features of one entity.
    Get(GetArgs),
    /// Entities, map size, fill ratio, readers.
    Stats(StoreArgs),
    /// A compacted copy of the store (mdb_copy -c) into a new file.
    Backup(BackupArgs),
}

#[derive(Args)]
struct StoreArgs {
    /// The LMDB directory (the daemon's `cache.path`, default `<state_dir>/cache`).
    #[arg(long, env = "EDGEINFER_FEATURE_STORE", default_value = "./var/cache")]
    store: PathBuf,
    /// LMDB map size in bytes (the daemon's `cache.max_bytes`).
    #[arg(long, default_value_t = 1 << 30)]
    map_size: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ImportArgs {
    /// CSV or Parquet file (Parquet is recognised by its magic bytes).
    file: PathBuf,
    /// The feature schema: a TOML file holding a model's `features` table.
    #[arg(long)]
    schema: PathBuf,
    #[arg(long, default_value = "entity")]
    key_column: String,
    #[arg(long, default_value = "event_ts_ms")]
    time_column: String,
    /// Rows per write transaction.
    #[arg(long, default_value_t = 10_000)]
    batch_rows: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct GetArgs {
    entity: String,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct BackupArgs {
    /// The copy to create (a file; it must not exist). Restore by placing it as
    /// `data.mdb` in an empty directory.
    dest: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

pub fn features(a: FeaturesArgs) -> Result<()> {
    match a.command {
        FeaturesCommand::Import(a) => import(a),
        FeaturesCommand::Get(a) => get(a),
        FeaturesCommand::Stats(a) => stats(a),
        FeaturesCommand::Backup(a) => backup(a),
    }
}

fn open(a: &StoreArgs) -> Result<FeatureStore> {
    FeatureStore::open(&StoreOptions::new(&a.store, a.map_size, 1))
        .with_context(|| format!("opening the feature store {}", a.store.display()))
}

pub fn read_schema(path: &Path) -> Result<FeatureSchema> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let schema: FeatureSchema =
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    schema
        .validate()
        .with_context(|| format!("{}", path.display()))?;
    Ok(schema)
}

fn import(a: ImportArgs) -> Result<()> {
    let schema = read_schema(&a.schema)?;
    let store = open(&a.store)?;
    let opts = ImportOptions {
        key_column: a.key_column,
        time_column: a.time_column,
        batch_rows: a.batch_rows,
    };
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    };
    let started = std::time::Instant::now();
    let result = import_file(&store, &schema, &a.file, &opts, &mut |p: Progress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    });
    bar.finish_and_clear();
    let report = result.with_context(|| format!("importing {}", a.file.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if a.store.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "read {} rows in {secs:.2} s ({:.0} rows/s): wrote {}, {} older than stored, \
             {} duplicates superseded, {} rejected",
            report.rows_read,
            report.rows_read as f64 / secs.max(1e-9),
            report.written,
            report.skipped_older,
            report.duplicates,
            report.rejected
        )?;
        for (kind, n) in &report.reject_kinds {
            writeln!(out, "  rejected ({kind}): {n}")?;
        }
        for r in &report.rejects {
            writeln!(out, "  line {}: {}", r.line, r.reason)?;
        }
        if report.rejected as usize > report.rejects.len() {
            writeln!(
                out,
                "  … {} more rejects not listed",
                report.rejected as usize - report.rejects.len()
            )?;
        }
    }
    Ok(())
}

fn get(a: GetArgs) -> Result<()> {
    let store = open(&a.store)?;
    let txn = store.read_txn()?;
    let Some(row) = store.get(&txn, a.entity.as_bytes())? else {
        bail!("entity {:?} is not in the store", a.entity);
    };
    let schema = store.schema(row.schema_version);
    let name = |i: usize| {
        schema
            .as_ref()
            .and_then(|s| s.fields.get(i))
            .map_or_else(|| format!("#{i}"), |f| f.name.clone())
    };
    let mut out = std::io::stdout().lock();
    if a.store.json {
        let values: serde_json::Map<String, serde_json::Value> = (0..row.len())
            .map(|i| {
                (
                    name(i),
                    row.get(i).map_or(serde_json::Value::Null, |v| v.into()),
                )
            })
            .collect();
        let doc = serde_json::json!({
            "entity": a.entity,
            "schema_version": row.schema_version,
            "event_ts_ms": row.event_ts_ms,
            "values": values,
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "entity {:?}  schema version {}  event_ts_ms {}",
            a.entity, row.schema_version, row.event_ts_ms
        )?;
        for i in 0..row.len() {
            match row.get(i) {
                Some(v) => writeln!(out, "  {} = {v}", name(i))?,
                None => writeln!(out, "  {} = (absent: default)", name(i))?,
            }
        }
    }
    Ok(())
}

fn stats(a: StoreArgs) -> Result<()> {
    let store = open(&a)?;
    let s = store.stats()?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &s)?;
        writeln!(out)?;
    } else {
        writeln!(out, "entities     {}", s.entities)?;
        writeln!(out, "map size     {} bytes", s.map_size)?;
        writeln!(
            out,
            "used         {} bytes ({:.1}% full)",
            s.used_bytes,
            s.fill_ratio * 100.0
        )?;
        writeln!(out, "readers      {} of {}", s.readers, s.max_readers)?;
    }
    Ok(())
}

fn backup(a: BackupArgs) -> Result<()> {
    let store = open(&a.store)?;
    let size = store
        .backup(&a.dest)
        .with_context(|| format!("backing up to {}", a.dest.display()))?;
    println!("wrote {} ({size} bytes, compacted)", a.dest.display());
    Ok(())
}
