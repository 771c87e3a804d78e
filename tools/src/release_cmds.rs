//! `edgeinfer keys gen`, `repo init`, `root rotate`, `release create|sign|status|publish`
//! and `verify`: the release engineer's side of signed model versions (docs/release.md).
//!
//! The repository logic lives in `edgeinfer_registry::release` (the `rollout set`
//! command builds on the same API); this file parses flags, runs the model for golden
//! samples and reference statistics, and draws progress.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use edgeinfer_engine::{
    DType, Dim, EngineChoice, GpuPolicy, InputTensor, LoadOptions, Outputs, TensorView,
};
use edgeinfer_features::{FeatureDType, FeatureSchema, FieldSpec, StalePolicy};
use edgeinfer_registry::mlflow::{self, MlflowClient, MlflowDestination};
use edgeinfer_registry::release::bundle::{
    self, Baseline, Batching, Bundle, GoldenSample, GoldenTensor, Lineage, MlflowModelRef,
    ModelSection, TargetCustom, Thresholds, Tolerance,
};
use edgeinfer_registry::release::keys::{self, SigningKey};
use edgeinfer_registry::release::repo::{sha256_hex, RepoConfig, RoleKeys};
use edgeinfer_registry::release::{
    format_time, Destination, DirDestination, Progress, Repo, BUNDLE_SCHEMA_VERSION,
};
use edgeinfer_registry::tuf::{fetch, Updater, UpdaterConfig};
use edgeinfer_telemetry::accuracy;
use edgeinfer_telemetry::drift::{self, FeatureRef, ReferenceStats};

/// The release commands, flattened into `edgeinfer`'s top level.
#[derive(Subcommand)]
pub enum Commands {
    /// Signing keys: `keys gen`.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The TUF repository: `repo init`.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Root metadata: `root rotate`.
    Root {
        #[command(subcommand)]
        command: RootCommand,
    },
    /// Model releases: create, sign, status, publish.
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
    /// Download and verify a published repository with the daemon's TUF client.
    Verify(VerifyArgs),
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Generate an Ed25519 key: DIR/NAME.key.json (private, 0600) and DIR/NAME.pub.json.
    Gen {
        /// Directory to write the key files into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Base name of the files (e.g. targets-alice).
        #[arg(long)]
        name: String,
    },
}

/// The working repository directory (metadata/, targets/, staged/, repo.json).
#[derive(Args, Clone)]
pub struct DirArg {
    #[arg(long, env = "EDGEINFER_RELEASE_DIR", default_value = ".")]
    dir: PathBuf,
}

#[derive(Subcommand)]
pub enum RepoCommand {
    /// Create a repository: root v1 with the given keys and thresholds, empty targets.
    /// Sign it with `release sign` and publish it like a release.
    Init(InitArgs),
}

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Public key files of the root role (repeat).
    #[arg(long = "root-key", required = true)]
    root_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    root_threshold: u64,
    /// Public key files of the targets role (repeat: separate key holders).
    #[arg(long = "targets-key", required = true)]
    targets_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    targets_threshold: u64,
    #[arg(long = "snapshot-key", required = true)]
    snapshot_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    snapshot_threshold: u64,
    /// The online key that re-signs the short-lived timestamp.
    #[arg(long = "timestamp-key", required = true)]
    timestamp_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    timestamp_threshold: u64,
    #[arg(long, default_value_t = 365)]
    root_expires_days: u32,
    #[arg(long, default_value_t = 90)]
    targets_expires_days: u32,
    #[arg(long, default_value_t = 30)]
    snapshot_expires_days: u32,
    #[arg(long, default_value_t = 1)]
    timestamp_expires_days: u32,
}

#[derive(Subcommand)]
pub enum RootCommand {
    /// Stage root N+1 with a role's keys or threshold changed. The new root must then be
    /// signed by a threshold of the previous root's root keys and of its own.
    Rotate(RotateArgs),
}

#[derive(Args)]
pub struct RotateArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The role whose keys change: root, targets, snapshot, timestamp.
    #[arg(long, default_value = "root")]
    role: String,
    /// Public key files to add to the role (repeat).
    #[arg(long = "add-key")]
    add_keys: Vec<PathBuf>,
    /// Keys to remove: a key id, or a public/private key file (repeat).
    #[arg(long = "remove-key")]
    remove_keys: Vec<String>,
    /// The role's new threshold.
    #[arg(long)]
    threshold: Option<u64>,
}

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Stage a model version: models/<name>/<version>/model.onnx and bundle.json, with
    /// reference statistics and golden samples computed from a reference data file.
    Create(Box<CreateArgs>),
    /// Add this key holder's signatures to everything staged that the key may sign.
    Sign(SignArgs),
    /// What is staged and how many signatures each role still needs.
    Status(DirArg),
    /// Publish once every staged role meets its threshold: --repo DIR or
    /// --repo mlflow+http://HOST:PORT/PREFIX (MLflow's artifact store).
    Publish(PublishArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The ONNX model file (without --from-mlflow).
    #[arg(long, conflicts_with = "from_mlflow")]
    model: Option<PathBuf>,
    /// MLflow tracking server, http://HOST:PORT: the model comes from its registry.
    #[arg(long)]
    from_mlflow: Option<String>,
    /// Model name (with --from-mlflow: the registered model's name).
    #[arg(long)]
    name: String,
    /// With --from-mlflow: the alias to resolve (e.g. champion).
    #[arg(long, requires = "from_mlflow")]
    alias: Option<String>,
    /// Version (without --from-mlflow; with it, the registry's version is used).
    #[arg(long, conflicts_with = "from_mlflow")]
    version: Option<String>,
    /// The release's model name, if not --name.
    #[arg(long)]
    release_name: Option<String>,
    /// CSV with a header row: one column per value of the model's input row, in order.
    #[arg(long)]
    reference_data: PathBuf,
    /// Columns that are categorical (top-K reference instead of deciles); repeat.
    #[arg(long = "categorical")]
    categorical: Vec<String>,
    /// Categories kept per categorical feature (the rest count as OTHER).
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Rows in the larger golden sample (a 1-row sample is always made too).
    #[arg(long, default_value_t = 64)]
    golden_rows: usize,
    /// Rows per window the drift thresholds are calibrated for (at most the reference
    /// data's row count).
    #[arg(long, default_value_t = 1000)]
    drift_window_rows: usize,
    /// The feature schema (JSON or TOML, edgeinfer_features::FeatureSchema); default:
    /// the CSV header as f32 fields (i64 for --categorical), version 1.
    #[arg(long)]
    feature_schema: Option<PathBuf>,
    /// Engine that computes the golden outputs.
    #[arg(long, default_value = "auto")]
    engine: EngineChoice,
    /// The model's GPU stance: required, preferred, never (unset: the daemon's default).
    #[arg(long)]
    gpu: Option<String>,
    #[arg(long, default_value_t = 0)]
    max_batch: usize,
    #[arg(long, default_value_t = 500)]
    max_delay_us: u64,
    /// Baseline metric NAME=VALUE (repeat; with --from-mlflow the run's metrics are used).
    #[arg(long = "metric")]
    metrics: Vec<String>,
    /// The metric online accuracy is judged by: accuracy, f1 or mae (default: the first
    /// of those the baseline has).
    #[arg(long)]
    primary_metric: Option<String>,
    /// Lineage without MLflow: the training run id.
    #[arg(long)]
    run_id: Option<String>,
    /// Lineage: the training data set's version (MLflow: the run's dataset_version
    /// param or tag).
    #[arg(long)]
    dataset_version: Option<String>,
    /// Replace a version that is already a target (otherwise refused).
    #[arg(long)]
    replace: bool,
}

#[derive(Args)]
pub struct SignArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Private key file (repeat to sign with several keys held here).
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// Stage a fresh timestamp first (the online key keeps the repository fresh).
    #[arg(long)]
    refresh_timestamp: bool,
}

#[derive(Args)]
pub struct PublishArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Destination: a directory, or mlflow+http://HOST:PORT/PREFIX.
    #[arg(long)]
    repo: String,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The published repository: a directory, http://BASE, or mlflow+http://HOST:PORT/PREFIX.
    #[arg(long)]
    repo: String,
    /// The root to trust (a box's pinned root; usually metadata/1.root.json).
    #[arg(long)]
    root: PathBuf,
    /// Targets to check (default: every target).
    #[arg(long = "target")]
    targets: Vec<String>,
}

pub fn run(c: Commands) -> Result<()> {
    match c {
        Commands::Keys {
            command: KeysCommand::Gen { out, name },
        } => keys_gen(&out, &name),
        Commands::Repo {
            command: RepoCommand::Init(a),
        } => repo_init(a),
        Commands::Root {
            command: RootCommand::Rotate(a),
        } => root_rotate(a),
        Commands::Release { command } => match command {
            ReleaseCommand::Create(a) => release_create(*a),
            ReleaseCommand::Sign(a) => release_sign(a),
            ReleaseCommand::Status(d) => print_status(&open(&d)?),
            ReleaseCommand::Publish(a) => release_publish(a),
        },
        Commands::Verify(a) => verify(a),
    }
}

fn open(d: &DirArg) -> Result<Repo> {
    Repo::open(&d.dir).with_context(|| format!("opening the repository in {}", d.dir.display()))
}

fn print_status(repo: &Repo) -> Result<()> {
    let status = repo.status()?;
    if status.is_empty() {
        println!("nothing staged");
    }
    for s in &status {
        println!("{s}");
    }
    if !status.is_empty() && status.iter().all(|s| s.complete()) {
        println!("ready: run `edgeinfer release publish`");
    }
    Ok(())
}

// === keys, repo, root ===

fn keys_gen(out: &Path, name: &str) -> Result<()> {
    let key = SigningKey::generate()?;
    key.save(out, name)
        .with_context(|| format!("saving key {name:?}"))?;
    println!(
        "{} {}",
        key.keyid(),
        out.join(format!("{name}.key.json")).display()
    );
    Ok(())
}

fn read_publics(files: &[PathBuf]) -> Result<Vec<serde_json::Value>> {
    files
        .iter()
        .map(|f| keys::read_public(f).map_err(anyhow::Error::from))
        .collect()
}

fn repo_init(a: InitArgs) -> Result<()> {
    let mut roles = BTreeMap::new();
    for (role, files, threshold) in [
        ("root", &a.root_keys, a.root_threshold),
        ("targets", &a.targets_keys, a.targets_threshold),
        ("snapshot", &a.snapshot_keys, a.snapshot_threshold),
        ("timestamp", &a.timestamp_keys, a.timestamp_threshold),
    ] {
        roles.insert(
            role.to_string(),
            RoleKeys {
                keys: read_publics(files)?,
                threshold,
            },
        );
    }
    let config = RepoConfig {
        root_expires_days: a.root_expires_days,
        targets_expires_days: a.targets_expires_days,
        snapshot_expires_days: a.snapshot_expires_days,
        timestamp_expires_days: a.timestamp_expires_days,
    };
    let repo = Repo::init(
        &a.dir.dir,
        &roles,
        config,
        edgeinfer_registry::release::now(),
    )?;
    println!("initialised {}: root v1 staged", a.dir.dir.display());
    print_status(&repo)
}

fn root_rotate(a: RotateArgs) -> Result<()> {
    let mut repo = open(&a.dir)?;
    let add = read_publics(&a.add_keys)?;
    let remove = a
        .remove_keys
        .iter()
        .map(|r| {
            if Path::new(r).is_file() {
                keys::key_id(&keys::read_public(Path::new(r))?).map_err(anyhow::Error::from)
            } else {
                Ok(r.clone())
            }
        })
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        !add.is_empty() || !remove.is_empty() || a.threshold.is_some(),
        "nothing to change: give --add-key, --remove-key or --threshold"
    );
    repo.rotate_root(&a.role, &add, &remove, a.threshold)?;
    print_status(&repo)
}

// === release sign / publish ===

fn release_sign(a: SignArgs) -> Result<()> {
    let mut repo = open(&a.dir)?;
    if a.refresh_timestamp {
        repo.refresh_timestamp()?;
    }
    let keys = a
        .keys
        .iter()
        .map(|p| SigningKey::load(p).with_context(|| format!("loading key {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&SigningKey> = keys.iter().collect();
    for (role, keyid) in repo.sign_with(&refs)? {
        eprintln!("signed {role} with {}", &keyid[..16]);
    }
    print_status(&repo)
}

/// Byte progress on stderr, one bar per file (drawn only on a terminal).
struct Bars {
    bar: Option<indicatif::ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        Bars { bar: None }
    }
}

impl Progress for Bars {
    fn start(&mut self, name: &str, len: u64) {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            bar.set_style(style);
        }
        bar.set_message(name.to_owned());
        self.bar = Some(bar);
    }

    fn advance(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn destination(repo: &str) -> Result<Box<dyn Destination>> {
    Ok(if repo.starts_with("mlflow+") {
        Box::new(MlflowDestination::new(repo)?)
    } else {
        ensure!(
            !repo.contains("://"),
            "--repo {repo:?}: a directory or mlflow+http://HOST:PORT/PREFIX"
        );
        Box::new(DirDestination::new(repo))
    })
}

fn release_publish(a: PublishArgs) -> Result<()> {
    let mut repo = open(&a.dir)?;
    let dest = destination(&a.repo)?;
    let report = repo
        .publish(dest.as_ref(), &mut Bars::new())
        .with_context(|| format!("publishing to {}", dest.describe()))?;
    println!(
        "published to {}: {} files ({} bytes) sent, {} already there",
        dest.describe(),
        report.sent.len(),
        report.bytes,
        report.skipped
    );
    let (meta, targets) = mlflow::repo_urls(&a.repo)?;
    println!("clients: metadata {meta}  targets {targets}");
    Ok(())
}

// === verify ===

fn verify(a: VerifyArgs) -> Result<()> {
    let root = std::fs::read(&a.root).with_context(|| format!("reading {}", a.root.display()))?;
    let (meta_url, targets_url) = mlflow::repo_urls(&a.repo)?;
    let work = std::env::temp_dir().join(format!(
        "edgeinfer-verify-{}-{}",
        std::process::id(),
        edgeinfer_registry::release::now()
    ));
    let result = verify_in(&work, &root, &meta_url, &targets_url, &a.targets);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn verify_in(
    work: &Path,
    root: &[u8],
    meta_url: &str,
    targets_url: &str,
    wanted: &[String],
) -> Result<()> {
    let mut up = Updater::new(
        &work.join("metadata"),
        meta_url,
        fetch::for_location(meta_url),
        Some(root),
        edgeinfer_registry::release::now(),
        UpdaterConfig::default(),
    )
    .context("the given root does not verify")?
    .with_targets_base(targets_url);
    up.refresh().context("refresh failed")?;
    let t = up.trusted();
    println!(
        "verified metadata: root v{}, timestamp v{}, snapshot v{}, targets v{}",
        t.root().common.version,
        t.timestamp().map_or(0, |x| x.common.version),
        t.snapshot().map_or(0, |x| x.common.version),
        t.targets("targets").map_or(0, |x| x.common.version),
    );
    let all: Vec<String> = t
        .targets("targets")
        .map(|x| x.targets.keys().cloned().collect())
        .unwrap_or_default();
    let names = if wanted.is_empty() {
        all
    } else {
        wanted.to_vec()
    };
    let mut failures = Vec::new();
    for name in &names {
        match verify_target(&mut up, work, name) {
            Ok(line) => println!("ok   {name}: {line}"),
            Err(e) => {
                println!("FAIL {name}: {e:#}");
                failures.push(name.clone());
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} targets failed verification: {}",
        failures.len(),
        names.len(),
        failures.join(", ")
    );
    Ok(())
}

fn verify_target(up: &mut Updater, work: &Path, name: &str) -> Result<String> {
    let info = up
        .get_targetinfo(name)?
        .with_context(|| format!("{name:?} is not a target of this repository"))?;
    let file = work
        .join("targets")
        .join(edgeinfer_registry::tuf::target_file_name(name));
    up.download_target(&info, &file)?;
    let mut line = format!("{} bytes", info.length);
    if name.ends_with("/bundle.json") {
        let b = Bundle::from_slice(&std::fs::read(&file)?)?;
        ensure!(
            name == b.bundle_target(),
            "bundle names {}, not this path",
            b.bundle_target()
        );
        let model = up
            .get_targetinfo(&b.model_target())?
            .with_context(|| format!("its model {} is not a target", b.model_target()))?;
        ensure!(
            model.hashes.get("sha256") == Some(&b.model.sha256),
            "the bundle's model sha256 is not the model target's"
        );
        if let Some(c) = &info.custom {
            let c = TargetCustom::from_value(c)?;
            ensure!(
                c.name == b.name && c.version == b.version,
                "custom names {} {}, the bundle {} {}",
                c.name,
                c.version,
                b.name,
                b.version
            );
            line.push_str(&format!(", release {}", c.release_counter));
        }
        line.push_str(&format!(", {} golden samples", b.golden.len()));
    }
    Ok(line)
}

// === release create ===

/// A model and what is known of it before it runs.
struct Source {
    bytes: Vec<u8>,
    name: String,
    version: String,
    lineage: Lineage,
    metrics: BTreeMap<String, f64>,
}

fn release_create(a: CreateArgs) -> Result<()> {
    let src = match (&a.from_mlflow, &a.model) {
        (Some(url), None) => from_mlflow(url, &a)?,
        (None, Some(path)) => from_file(path, &a)?,
        _ => bail!("give --model FILE, or --from-mlflow URL --name N --alias A"),
    };
    let name = a.release_name.clone().unwrap_or_else(|| src.name.clone());
    bundle::check_name(&name).map_err(anyhow::Error::msg)?;
    bundle::check_version(&src.version).map_err(anyhow::Error::msg)?;
    let mut repo = open(&a.dir)?;
    let model_target = bundle::model_target(&name, &src.version);
    if repo.targets()?.contains_key(&model_target) && !a.replace {
        bail!("{model_target} is already a target (give --replace to replace it)");
    }
    let bundle = build_bundle(&a, &name, &src)?;
    let counter = repo.next_release_counter()?;
    let custom = TargetCustom {
        name: bundle.name.clone(),
        version: bundle.version.clone(),
        release_counter: counter,
    }
    .to_value();
    repo.put_target(&model_target, &src.bytes, Some(custom.clone()))?;
    repo.put_target(&bundle.bundle_target(), &bundle.to_vec(), Some(custom))?;
    println!(
        "staged {} and {} (release {counter}): {} golden samples, {} features with reference statistics",
        model_target,
        bundle.bundle_target(),
        bundle.golden.len(),
        bundle.reference.features.len()
    );
    print_status(&repo)
}

fn from_file(path: &Path, a: &CreateArgs) -> Result<Source> {
    let version = a
        .version
        .clone()
        .context("--version is required with --model")?;
    let art = edgeinfer_registry::read_local(&a.name, &version, path)?;
    let mut metrics = BTreeMap::new();
    for m in &a.metrics {
        let (k, v) = m
            .split_once('=')
            .with_context(|| format!("--metric {m:?}: expected NAME=VALUE"))?;
        let v: f64 = v.parse().with_context(|| format!("--metric {m:?}"))?;
        ensure!(v.is_finite(), "--metric {m:?} is not finite");
        metrics.insert(k.to_owned(), v);
    }
    Ok(Source {
        bytes: art.bytes,
        name: a.name.clone(),
        version,
        lineage: Lineage {
            source: std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.to_owned())
                .display()
                .to_string(),
            mlflow_run_id: a.run_id.clone(),
            dataset_version: a.dataset_version.clone(),
            ..Lineage::default()
        },
        metrics,
    })
}

fn from_mlflow(url: &str, a: &CreateArgs) -> Result<Source> {
    let alias = a.alias.as_deref().context("--from-mlflow needs --alias")?;
    let client = MlflowClient::new(url)?;
    let mv = client
        .ready_version_by_alias(&a.name, alias)
        .with_context(|| format!("resolving {}@{alias} at {url}", a.name))?;
    let uri = client.download_uri(&mv.name, &mv.version)?;
    let dir = mlflow::artifact_path(&uri)?;
    let files = client.list(&dir)?;
    let onnx: Vec<_> = files
        .iter()
        .filter(|f| !f.is_dir && f.path.ends_with(".onnx"))
        .collect();
    let file = match onnx.as_slice() {
        [one] => one,
        [] => bail!("{uri} holds no .onnx file (log the model with mlflow.onnx.log_model)"),
        many => bail!("{uri} holds {} .onnx files; expected one", many.len()),
    };
    let fname = file.path.rsplit('/').next().unwrap_or(&file.path);
    let mut bytes = Vec::new();
    client.download(
        &format!("{dir}/{fname}"),
        edgeinfer_registry::MAX_MODEL_BYTES,
        &mut bytes,
        &mut Bars::new(),
    )?;
    ensure!(!bytes.is_empty(), "{uri}/{fname} is empty");
    let run = if mv.run_id.is_empty() {
        None
    } else {
        Some(client.run(&mv.run_id)?)
    };
    let dataset_version = a.dataset_version.clone().or_else(|| {
        let r = run.as_ref()?;
        r.params
            .get("dataset_version")
            .or_else(|| r.tags.get("dataset_version"))
            .cloned()
    });
    eprintln!(
        "{}@{alias} is version {} ({}), run {}",
        mv.name, mv.version, mv.source, mv.run_id
    );
    Ok(Source {
        bytes,
        name: mv.name.clone(),
        version: mv.version.clone(),
        lineage: Lineage {
            source: if mv.source.is_empty() {
                uri.clone()
            } else {
                mv.source.clone()
            },
            mlflow_run_id: (!mv.run_id.is_empty()).then(|| mv.run_id.clone()),
            mlflow_model: Some(MlflowModelRef {
                name: mv.name.clone(),
                version: mv.version.clone(),
                alias: Some(alias.to_owned()),
            }),
            dataset_version,
            ..Lineage::default()
        },
        metrics: run.map(|r| r.metrics).unwrap_or_default(),
    })
}

/// The reference data file: column names and rows.
struct Reference {
    names: Vec<String>,
    rows: Vec<Vec<f64>>,
    sha256: String,
}

fn read_reference(path: &Path) -> Result<Reference> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = sha256_hex(&bytes);
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes.as_slice());
    let names: Vec<String> = rdr.headers()?.iter().map(str::to_owned).collect();
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{} row {}", path.display(), i + 2))?;
        let row = rec
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if cell.is_empty() || cell.eq_ignore_ascii_case("nan") {
                    Ok(f64::NAN)
                } else {
                    cell.parse::<f64>().with_context(|| {
                        format!(
                            "{} row {} column {:?}: {cell:?}",
                            path.display(),
                            i + 2,
                            names[c]
                        )
                    })
                }
            })
            .collect::<Result<Vec<f64>>>()?;
        rows.push(row);
    }
    ensure!(!rows.is_empty(), "{} has no data rows", path.display());
    Ok(Reference {
        names,
        rows,
        sha256,
    })
}

/// `rows` as the model's one 2-D input tensor.
fn input_tensor(spec_name: &str, dtype: DType, rows: &[Vec<f64>]) -> InputTensor {
    let width = rows.first().map_or(0, Vec::len);
    let mut data = Vec::with_capacity(rows.len() * width * dtype.size());
    for r in rows {
        for &v in r {
            match dtype {
                DType::F64 => data.extend_from_slice(&v.to_le_bytes()),
                _ => data.extend_from_slice(&(v as f32).to_le_bytes()),
            }
        }
    }
    InputTensor {
        name: spec_name.to_owned(),
        dtype,
        shape: vec![rows.len(), width],
        data,
    }
}

fn build_bundle(a: &CreateArgs, name: &str, src: &Source) -> Result<Bundle> {
    let opts = LoadOptions {
        engine: a.engine,
        gpu: GpuPolicy::Never,
        ..LoadOptions::default()
    };
    let model = edgeinfer_engine::load_model(&src.bytes, &opts).context("loading the model")?;
    let info = model.info.clone();
    let [input] = info.inputs.as_slice() else {
        bail!(
            "the model has {} inputs; release create computes golden samples for models with one [N, W] input",
            info.inputs.len()
        );
    };
    let width = match input.shape.as_slice() {
        [_, Dim::Fixed(w)] => *w,
        _ => bail!(
            "input {:?} is {}; release create needs [N, W]",
            input.name,
            edgeinfer_engine::fmt_declared_shape(&input.shape)
        ),
    };
    ensure!(
        matches!(input.dtype, DType::F32 | DType::F64),
        "input {:?} is {}; release create needs f32 or f64",
        input.name,
        input.dtype
    );
    let reference = read_reference(&a.reference_data)?;
    ensure!(
        reference.names.len() == width,
        "{} has {} columns, the model's input {:?} takes {width} values per row",
        a.reference_data.display(),
        reference.names.len(),
        input.name
    );
    for c in &a.categorical {
        ensure!(
            reference.names.contains(c),
            "--categorical {c:?} is not a column of {}",
            a.reference_data.display()
        );
    }
    eprintln!(
        "model on {} ({}); {} reference rows",
        model.backend(),
        model.report.reason,
        reference.rows.len()
    );

    // Run the model over the reference rows: golden samples and the output reference.
    let mut session = model.new_session()?;
    let mut run = |rows: &[Vec<f64>]| -> Result<Outputs> {
        let t = input_tensor(&input.name, input.dtype, rows);
        let mut out = Outputs::for_model(&info);
        session.run(&[TensorView::new(t.dtype, &t.shape, &t.data)?], &mut out)?;
        Ok(out)
    };
    let mut golden = Vec::new();
    let mut sizes = vec![1, a.golden_rows.min(reference.rows.len())];
    sizes.dedup();
    for n in sizes.into_iter().filter(|n| *n > 0) {
        let rows = &reference.rows[..n];
        ensure!(
            rows.iter().flatten().all(|v| v.is_finite()),
            "the first {n} reference rows hold missing values; golden samples need complete rows"
        );
        let out = run(rows)?;
        golden.push(GoldenSample {
            inputs: vec![GoldenTensor {
                name: input.name.clone(),
                dtype: input.dtype,
                shape: vec![n, width],
                data: rows.iter().flatten().copied().collect(),
            }],
            outputs: out
                .tensors
                .iter()
                .map(|t| GoldenTensor::from_output(t).context("an output without a dtype"))
                .collect::<Result<_>>()?,
            tolerance: Tolerance::default(),
        });
    }
    let mut first_output: Vec<Vec<f64>> = Vec::new();
    let out_spec = info.outputs.first().context("the model has no outputs")?;
    for chunk in reference.rows.chunks(256) {
        if chunk.iter().flatten().any(|v| !v.is_finite()) {
            continue; // rows with missing values cannot run; their inputs still count
        }
        let out = run(chunk)?;
        let t = out.get(&out_spec.name).context("first output missing")?;
        let vals = t.to_f64_vec();
        let per_row = vals.len() / chunk.len().max(1);
        first_output.extend(vals.chunks(per_row.max(1)).map(<[f64]>::to_vec));
    }

    let stats = reference_stats(a, &reference, out_spec, &first_output);
    let features = match &a.feature_schema {
        Some(p) => read_feature_schema(p)?,
        None => FeatureSchema {
            version: 1,
            input: None,
            max_age_s: 0,
            stale: StalePolicy::Default,
            fields: reference
                .names
                .iter()
                .map(|n| FieldSpec {
                    name: n.clone(),
                    dtype: if a.categorical.contains(n) {
                        FeatureDType::I64
                    } else {
                        FeatureDType::F32
                    },
                    default: 0.0,
                    max_age_s: None,
                    allow_non_finite: false,
                })
                .collect(),
        },
    };
    let primary = primary_metric(a.primary_metric.as_deref(), &src.metrics)?;
    let gpu = a
        .gpu
        .as_deref()
        .map(|g| match g {
            "required" => Ok(GpuPolicy::Required),
            "preferred" => Ok(GpuPolicy::Preferred),
            "never" => Ok(GpuPolicy::Never),
            other => bail!("--gpu {other:?}: required, preferred or never"),
        })
        .transpose()?;
    let mut lineage = src.lineage.clone();
    lineage.reference_data_sha256 = Some(reference.sha256.clone());
    lineage.created = format_time(edgeinfer_registry::release::now());
    lineage.tool = concat!("edgeinfer ", env!("CARGO_PKG_VERSION")).into();
    let sha256 = sha256_hex(&src.bytes);
    let bundle = Bundle {
        schema_version: BUNDLE_SCHEMA_VERSION,
        name: name.to_owned(),
        version: src.version.clone(),
        model: ModelSection {
            file: "model.onnx".into(),
            sha256,
            inputs: info.inputs.clone(),
            outputs: info.outputs.clone(),
            engine: None,
            gpu,
            batching: Batching {
                max_batch: a.max_batch,
                max_delay_us: a.max_delay_us,
            },
        },
        features: Some(features),
        reference: stats,
        thresholds: Thresholds::default(),
        baseline: Baseline {
            metrics: src.metrics.clone(),
            primary,
        },
        golden,
        lineage,
    };
    bundle.validate().context("the bundle does not validate")?;
    Ok(bundle)
}

fn reference_stats(
    a: &CreateArgs,
    r: &Reference,
    out_spec: &edgeinfer_engine::TensorSpec,
    outputs: &[Vec<f64>],
) -> ReferenceStats {
    let column = |c: usize, rows: &[Vec<f64>]| -> Vec<f64> {
        rows.iter()
            .map(|row| row.get(c).copied().unwrap_or(f64::NAN))
            .collect()
    };
    // Windows no larger than the reference itself: a bootstrap of 1,000-row windows from
    // 64 reference rows would claim a precision the reference does not have.
    let window = a.drift_window_rows.min(r.rows.len()).max(1);
    let calibrated = |mut f: FeatureRef, samples: &[f64]| {
        f.thresholds = Some(drift::calibrate(&f, samples, window, 100, 1));
        f
    };
    let features = r
        .names
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let samples = column(c, &r.rows);
            let f = if a.categorical.contains(name) {
                let ints: Vec<i64> = samples
                    .iter()
                    .filter(|v| v.is_finite())
                    .map(|v| *v as i64)
                    .collect();
                FeatureRef::categorical_from_samples(name, c, &ints, a.top_k)
            } else {
                FeatureRef::numeric_from_samples(name, c, &samples)
            };
            calibrated(f, &samples)
        })
        .collect();
    // The first output: labels are categorical, scores numeric per column (at most 16).
    let width = outputs.first().map_or(0, Vec::len).min(16);
    let integer = matches!(
        out_spec.dtype,
        DType::I64 | DType::I32 | DType::U8 | DType::Bool
    );
    let outs = (0..width)
        .map(|c| {
            let samples = column(c, outputs);
            let name = if width == 1 {
                out_spec.name.clone()
            } else {
                format!("{}[{c}]", out_spec.name)
            };
            let f = if integer {
                let ints: Vec<i64> = samples.iter().map(|v| *v as i64).collect();
                FeatureRef::categorical_from_samples(&name, c, &ints, a.top_k)
            } else {
                FeatureRef::numeric_from_samples(&name, c, &samples)
            };
            calibrated(f, &samples)
        })
        .collect();
    ReferenceStats {
        features,
        outputs: outs,
    }
}

fn primary_metric(
    wanted: Option<&str>,
    metrics: &BTreeMap<String, f64>,
) -> Result<Option<accuracy::Baseline>> {
    let parse = |m: &str| match m {
        "accuracy" => Some(accuracy::Metric::Accuracy),
        "f1" => Some(accuracy::Metric::F1),
        "mae" => Some(accuracy::Metric::Mae),
        _ => None,
    };
    if let Some(w) = wanted {
        let metric =
            parse(w).with_context(|| format!("--primary-metric {w:?}: accuracy, f1 or mae"))?;
        let value = *metrics
            .get(w)
            .with_context(|| format!("--primary-metric {w:?}: the baseline has no such metric"))?;
        return Ok(Some(accuracy::Baseline { metric, value }));
    }
    Ok(["accuracy", "f1", "mae"].into_iter().find_map(|m| {
        Some(accuracy::Baseline {
            metric: parse(m)?,
            value: *metrics.get(m)?,
        })
    }))
}

fn read_feature_schema(p: &Path) -> Result<FeatureSchema> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let schema: FeatureSchema = if p.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).with_context(|| format!("{}", p.display()))?
    } else {
        serde_json::from_str(&text).with_context(|| format!("{}", p.display()))?
    };
    Ok(schema)
}
