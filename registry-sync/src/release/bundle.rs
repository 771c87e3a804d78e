//! `models/<name>/<version>/bundle.json`: everything a box needs to know about one
//! signed model version besides its bytes, and the target `custom` fields that name it.
//!
//! A bundle is a TUF target like the model beside it, so it is trusted exactly as far as
//! its hash is (the pull agent checks it before parsing). [`Bundle::from_slice`] still
//! parses it strictly (`deny_unknown_fields`, a size cap, [`Bundle::validate`]) because a
//! validly signed bundle can still be wrong, and a box must refuse it with a clear error
//! instead of installing a model it cannot check.
//!
//! Consumers take their parts as their own types, so no crate needs to depend on this one
//! to read its section:
//! - the daemon's model table: [`ModelSection`] (inputs, `gpu` policy, batching);
//! - the feature cache: [`Bundle::features`], an `edgeinfer_features::FeatureSchema`;
//! - telemetry drift: [`Bundle::reference`], an `edgeinfer_telemetry::drift::ReferenceStats`
//!   (decile edges per numeric feature, top-K per categorical one), and
//!   [`Thresholds::drift`];
//! - online accuracy: [`Baseline::primary`], an `edgeinfer_telemetry::accuracy::Baseline`,
//!   and [`Thresholds::max_relative_drop`];
//! - install validation and `engine = "auto"`: [`Bundle::golden`] ([`GoldenSample::inputs`]
//!   gives engine input tensors, [`GoldenSample::check`] compares engine outputs);
//! - rollout and audit: [`Lineage`] and [`TargetCustom`].

use std::collections::{BTreeMap, HashSet};

use edgeinfer_engine::{DType, Dim, EngineChoice, GpuPolicy, InputTensor, Outputs, TensorSpec};
use edgeinfer_features::FeatureSchema;
use edgeinfer_telemetry::accuracy;
use edgeinfer_telemetry::drift::{self, ReferenceStats};
use serde::{Deserialize, Serialize};

/// The `schema_version` this build writes and reads. A bundle of another version is
/// refused with [`BundleErrorKind::UnsupportedSchema`] (a box never guesses at fields).
pub const BUNDLE_SCHEMA_VERSION: u32 = 1;

/// Bundles larger than this are refused before parsing (golden samples and reference
/// statistics are small; megabytes of them are a mistake or an attack).
pub const MAX_BUNDLE_BYTES: usize = 16 << 20;

/// Most golden samples one bundle may hold, and most rows in one of them.
pub const MAX_GOLDEN_SAMPLES: usize = 64;
pub const MAX_GOLDEN_ROWS: usize = 1024;

/// The target path of a version's model file.
pub fn model_target(name: &str, version: &str) -> String {
    format!("models/{name}/{version}/model.onnx")
}

/// The target path of a version's bundle.
pub fn bundle_target(name: &str, version: &str) -> String {
    format!("models/{name}/{version}/bundle.json")
}

/// One model version's release description (`bundle.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Format version of this file: [`BUNDLE_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Model name clients ask for: letters, digits, `_`, `-`, `.` (as in the daemon's config).
    pub name: String,
    /// Version string, one path segment (MLflow's registry versions are "1", "2", …).
    pub version: String,
    /// How to serve it.
    pub model: ModelSection,
    /// The feature schema PREDICT_BY_ENTITY assembles inputs with; absent for models
    /// that are only ever sent tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeatureSchema>,
    /// Reference distributions of the inputs (and outputs) for drift, computed by
    /// `release create` from the reference data file.
    #[serde(default)]
    pub reference: ReferenceStats,
    /// When drift and accuracy warn or alert.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// The metrics the version was released with.
    #[serde(default)]
    pub baseline: Baseline,
    /// Inputs with the outputs the model must give for them (install refuses a version
    /// whose engine does not reproduce them within tolerance).
    pub golden: Vec<GoldenSample>,
    /// Where the version came from.
    pub lineage: Lineage,
}

/// The model config of a version: what the daemon's `[[models]]` entry says for a local file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The model file's target path relative to the bundle's directory (`model.onnx`).
    pub file: String,
    /// sha256 of the model file, lower-case hex: binds the bundle to its model even when
    /// the two are copied around outside TUF.
    pub sha256: String,
    /// The model's declared inputs, in order (as the engine reads them from the file).
    pub inputs: Vec<TensorSpec>,
    /// The model's declared outputs, in order.
    pub outputs: Vec<TensorSpec>,
    /// Engine to run on; absent = the daemon's `engine.default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineChoice>,
    /// GPU stance: required, preferred, never; absent = the daemon's `engine.gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuPolicy>,
    #[serde(default)]
    pub batching: Batching,
}

/// Dynamic batching, as the daemon's `max_batch` / `max_delay_us` model keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    /// Most rows per engine run; 0 = off (lowest latency).
    pub max_batch: usize,
    /// Longest a request waits for company, microseconds.
    pub max_delay_us: u64,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_batch: 0,
            max_delay_us: 500,
        }
    }
}

/// Alert levels that travel with the version (the daemon's config may override).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Drift thresholds for features whose reference entry has none of its own.
    pub drift: drift::Thresholds,
    /// Online accuracy alerts when the window's metric is worse than the baseline by more
    /// than this share of it (0.05 = 5 %).
    pub max_relative_drop: f64,
    /// Labels per online-accuracy window.
    pub accuracy_window_labels: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            drift: drift::Thresholds::default(),
            max_relative_drop: 0.05,
            accuracy_window_labels: 1000,
        }
    }
}

/// Offline metrics of the version.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Every metric the training run logged (MLflow: the run's latest value of each).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// The metric online accuracy is judged by, if the model has one telemetry computes
    /// (accuracy, f1, mae).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<accuracy::Baseline>,
}

/// One tensor of a golden sample, as in `tests/fixtures/golden/*.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Row-major values. Integers must be exact in an f64 (|x| ≤ 2^53); bools are 0/1.
    pub data: Vec<f64>,
}

/// How close an engine's float outputs must be to the expected ones. Integer and bool
/// outputs (labels) must match exactly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            abs: edgeinfer_engine::OUTPUT_TOLERANCE,
            rel: edgeinfer_engine::OUTPUT_TOLERANCE,
        }
    }
}

/// Inputs, and the outputs the model gave for them when released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSample {
    /// One per model input, in the model's input order.
    pub inputs: Vec<GoldenTensor>,
    /// Expected outputs (every one the model declares).
    pub outputs: Vec<GoldenTensor>,
    #[serde(default)]
    pub tolerance: Tolerance,
}

/// Where a version came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// What `release create` read the model from: a file path or an MLflow `models:/` URI.
    pub source: String,
    /// The MLflow run that produced the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow_run_id: Option<String>,
    /// The MLflow registered model, its version and the alias it was resolved through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow_model: Option<MlflowModelRef>,
    /// Version of the training data set (MLflow: the run's `dataset_version` tag or param).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_version: Option<String>,
    /// sha256 of the reference data file the statistics and golden samples came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_data_sha256: Option<String>,
    /// When the bundle was created, `YYYY-MM-DDTHH:MM:SSZ`.
    pub created: String,
    /// The tool that wrote it (`edgeinfer 0.1.0`).
    pub tool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlflowModelRef {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// The `custom` object of a model or bundle target in `targets.json`: which model and
/// version the file belongs to, and the repository's release counter. Integers and
/// strings only (signed metadata is canonical JSON, which has no floats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetCustom {
    pub name: String,
    pub version: String,
    /// Strictly increasing over the releases of one repository (all models): a box
    /// refuses to install a release whose counter is below the rollout directive's
    /// `min_release_counter`, so an old signed version cannot be rolled back onto it.
    pub release_counter: u64,
}

impl TargetCustom {
    /// Parse a target's `custom` value (as [`crate::tuf::TargetFile::custom`] holds it).
    pub fn from_value(v: &serde_json::Value) -> Result<TargetCustom, BundleError> {
        let c: TargetCustom = serde_json::from_value(v.clone())
            .map_err(|e| BundleError::new(BundleErrorKind::Parse, "custom", e.to_string()))?;
        check_name(&c.name).map_err(|m| BundleError::new(BundleErrorKind::Identity, "name", m))?;
        check_version(&c.version)
            .map_err(|m| BundleError::new(BundleErrorKind::Identity, "version", m))?;
        Ok(c)
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain struct serialises")
    }
}

// === errors ===

/// Which part of a bundle is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleErrorKind {
    /// Not JSON, an unknown or missing field, a mistyped value, over the size cap.
    Parse,
    /// A `schema_version` this build does not read.
    UnsupportedSchema,
    /// The name or version is not a safe identifier.
    Identity,
    /// The model section: file, hash, inputs, outputs, batching.
    Model,
    /// The feature schema.
    Features,
    /// Reference statistics.
    Reference,
    /// Thresholds.
    Thresholds,
    /// Baseline metrics.
    Baseline,
    /// Golden samples: missing, shapes or dtypes that do not fit the model, or outputs
    /// that do not match.
    Golden,
    /// Lineage.
    Lineage,
}

/// A bundle error: a kind to match on, the field it is about, and a message for people.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bundle {field}: {message}")]
pub struct BundleError {
    pub kind: BundleErrorKind,
    /// Dotted path of the offending field (`golden[2].inputs[0].shape`).
    pub field: String,
    pub message: String,
}

impl BundleError {
    pub fn new(
        kind: BundleErrorKind,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        BundleError {
            kind,
            field: field.into(),
            message: message.into(),
        }
    }
}

fn fail<T>(
    kind: BundleErrorKind,
    field: impl Into<String>,
    message: impl Into<String>,
) -> Result<T, BundleError> {
    Err(BundleError::new(kind, field, message))
}

// === impl Bundle ===

impl Bundle {
    /// Parse and [`validate`](Self::validate) `bundle.json` bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Bundle, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return fail(
                BundleErrorKind::Parse,
                "",
                format!("{} bytes; the limit is {MAX_BUNDLE_BYTES}", bytes.len()),
            );
        }
        // Read the version first so an old box reports "unsupported" rather than the
        // first unknown field of a newer format.
        #[derive(Deserialize)]
        struct Probe {
            schema_version: Option<u32>,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::new(BundleErrorKind::Parse, "", e.to_string()))?;
        match probe.schema_version {
            Some(BUNDLE_SCHEMA_VERSION) => {}
            Some(v) => {
                return fail(
                    BundleErrorKind::UnsupportedSchema,
                    "schema_version",
                    format!("version {v}; this build reads {BUNDLE_SCHEMA_VERSION}"),
                )
            }
            None => return fail(BundleErrorKind::Parse, "schema_version", "missing"),
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let bundle: Bundle = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            BundleError::new(
                BundleErrorKind::Parse,
                e.path().to_string(),
                e.inner().to_string(),
            )
        })?;
        bundle.validate()?;
        Ok(bundle)
    }

    /// The bytes `release create` writes (pretty JSON, fields in declaration order).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a bundle always serialises");
        v.push(b'\n');
        v
    }

    /// The model target beside this bundle.
    pub fn model_target(&self) -> String {
        model_target(&self.name, &self.version)
    }

    /// This bundle's own target path.
    pub fn bundle_target(&self) -> String {
        bundle_target(&self.name, &self.version)
    }

    /// Check everything that does not need the model bytes or an engine.
    pub fn validate(&self) -> Result<(), BundleError> {
        use BundleErrorKind as K;
        if self.schema_version != BUNDLE_SCHEMA_VERSION {
            return fail(
                K::UnsupportedSchema,
                "schema_version",
                format!(
                    "version {}; this build reads {BUNDLE_SCHEMA_VERSION}",
                    self.schema_version
                ),
            );
        }
        check_name(&self.name).map_err(|m| BundleError::new(K::Identity, "name", m))?;
        check_version(&self.version).map_err(|m| BundleError::new(K::Identity, "version", m))?;
        self.validate_model()?;
        if let Some(f) = &self.features {
            f.validate()
                .map_err(|e| BundleError::new(K::Features, "features", e.to_string()))?;
            if let Some(input) = &f.input {
                if !self.model.inputs.iter().any(|i| &i.name == input) {
                    return fail(
                        K::Features,
                        "features.input",
                        format!("{input:?} is not an input of the model"),
                    );
                }
            }
            let target = match &f.input {
                Some(n) => self.model.inputs.iter().find(|i| &i.name == n),
                None => self.model.inputs.first(),
            };
            if let Some(Dim::Fixed(width)) = target.and_then(|t| t.shape.last()) {
                if *width != f.fields.len() {
                    return fail(
                        K::Features,
                        "features.fields",
                        format!(
                            "{} fields, but the model's input takes {width} values per row",
                            f.fields.len()
                        ),
                    );
                }
            }
        }
        self.validate_reference()?;
        self.validate_thresholds()?;
        for (k, v) in &self.baseline.metrics {
            if !v.is_finite() {
                return fail(K::Baseline, format!("baseline.metrics.{k}"), "not finite");
            }
        }
        if let Some(p) = &self.baseline.primary {
            if !p.value.is_finite() {
                return fail(K::Baseline, "baseline.primary.value", "not finite");
            }
        }
        self.validate_golden()?;
        if self.lineage.source.is_empty() {
            return fail(K::Lineage, "lineage.source", "empty");
        }
        if crate::tuf::metadata::parse_time(&self.lineage.created).is_err() {
            return fail(
                K::Lineage,
                "lineage.created",
                format!("{:?} is not YYYY-MM-DDTHH:MM:SSZ", self.lineage.created),
            );
        }
        for (field, h) in [
            ("model.sha256", Some(&self.model.sha256)),
            (
                "lineage.reference_data_sha256",
                self.lineage.reference_data_sha256.as_ref(),
            ),
        ] {
            if let Some(h) = h {
                if h.len() != 64 || !h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    let kind = if field.starts_with("model") {
                        K::Model
                    } else {
                        K::Lineage
                    };
                    return fail(kind, field, "not a lower-case hex sha256");
                }
            }
        }
        Ok(())
    }

    fn validate_model(&self) -> Result<(), BundleError> {
        let m = &self.model;
        let k = BundleErrorKind::Model;
        if m.file.is_empty() || m.file.contains('/') || m.file == "." || m.file == ".." {
            return fail(k, "model.file", format!("{:?} is not a file name", m.file));
        }
        for (what, specs) in [("inputs", &m.inputs), ("outputs", &m.outputs)] {
            if specs.is_empty() {
                return fail(k, format!("model.{what}"), "empty");
            }
            let mut seen = HashSet::new();
            for (i, s) in specs.iter().enumerate() {
                if s.name.is_empty() || !seen.insert(s.name.as_str()) {
                    return fail(
                        k,
                        format!("model.{what}[{i}].name"),
                        format!("{:?} is empty or repeated", s.name),
                    );
                }
            }
        }
        if m.batching.max_delay_us > 1_000_000 {
            return fail(
                k,
                "model.batching.max_delay_us",
                "more than one second; batching is for microseconds of company",
            );
        }
        Ok(())
    }

    fn validate_reference(&self) -> Result<(), BundleError> {
        let k = BundleErrorKind::Reference;
        let groups = [
            ("features", &self.reference.features),
            ("outputs", &self.reference.outputs),
        ];
        for (what, refs) in groups {
            let mut seen = HashSet::new();
            for (i, f) in refs.iter().enumerate() {
                let field = format!("reference.{what}[{i}]");
                if f.name.is_empty() || !seen.insert(f.name.as_str()) {
                    return fail(k, field, format!("name {:?} is empty or repeated", f.name));
                }
                f.dist
                    .validate()
                    .map_err(|m| BundleError::new(k, format!("{field}.{}", f.name), m))?;
                if let Some(t) = &f.thresholds {
                    check_drift_thresholds(t)
                        .map_err(|m| BundleError::new(k, format!("{field}.thresholds"), m))?;
                }
            }
        }
        // The column a feature reads must exist in the model's first input (or output).
        let width = |specs: &[TensorSpec]| match specs.first().and_then(|s| s.shape.last()) {
            Some(Dim::Fixed(n)) => Some(*n),
            _ => None,
        };
        for (what, refs, w) in [
            (
                "features",
                &self.reference.features,
                width(&self.model.inputs),
            ),
            (
                "outputs",
                &self.reference.outputs,
                width(&self.model.outputs),
            ),
        ] {
            if let Some(w) = w {
                if let Some((i, f)) = refs.iter().enumerate().find(|(_, f)| f.column >= w) {
                    return fail(
                        k,
                        format!("reference.{what}[{i}].column"),
                        format!(
                            "column {} of {:?} is past the tensor's width {w}",
                            f.column, f.name
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_thresholds(&self) -> Result<(), BundleError> {
        let k = BundleErrorKind::Thresholds;
        let t = &self.thresholds;
        check_drift_thresholds(&t.drift).map_err(|m| BundleError::new(k, "thresholds.drift", m))?;
        if !(t.max_relative_drop.is_finite() && (0.0..=1.0).contains(&t.max_relative_drop)) {
            return fail(k, "thresholds.max_relative_drop", "must be in [0, 1]");
        }
        if t.accuracy_window_labels == 0 {
            return fail(k, "thresholds.accuracy_window_labels", "must be at least 1");
        }
        Ok(())
    }

    fn validate_golden(&self) -> Result<(), BundleError> {
        let k = BundleErrorKind::Golden;
        if self.golden.is_empty() {
            return fail(k, "golden", "at least one golden sample is required");
        }
        if self.golden.len() > MAX_GOLDEN_SAMPLES {
            return fail(
                k,
                "golden",
                format!(
                    "{} samples; at most {MAX_GOLDEN_SAMPLES}",
                    self.golden.len()
                ),
            );
        }
        for (i, g) in self.golden.iter().enumerate() {
            let field = format!("golden[{i}]");
            let t = g.tolerance;
            if !(t.abs.is_finite() && t.abs >= 0.0 && t.rel.is_finite() && t.rel >= 0.0) {
                return fail(k, format!("{field}.tolerance"), "must be finite and >= 0");
            }
            check_tensors(&g.inputs, &self.model.inputs, &format!("{field}.inputs"))?;
            check_tensors(&g.outputs, &self.model.outputs, &format!("{field}.outputs"))?;
            let rows = g
                .inputs
                .first()
                .and_then(|t| t.shape.first())
                .copied()
                .unwrap_or(0);
            if rows > MAX_GOLDEN_ROWS {
                return fail(k, field, format!("{rows} rows; at most {MAX_GOLDEN_ROWS}"));
            }
        }
        Ok(())
    }
}

fn check_drift_thresholds(t: &drift::Thresholds) -> Result<(), String> {
    let all = [t.psi_warn, t.psi_alert, t.js_alert, t.linf_alert];
    if all.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err("thresholds must be finite and >= 0".into());
    }
    if t.psi_warn > t.psi_alert {
        return Err(format!(
            "psi_warn {} is above psi_alert {}",
            t.psi_warn, t.psi_alert
        ));
    }
    Ok(())
}

/// Each tensor of a golden sample against the model's declaration: same names in the
/// same order, dtype, a shape the declaration accepts, and data of that many values
/// that the dtype can hold.
fn check_tensors(
    got: &[GoldenTensor],
    specs: &[TensorSpec],
    field: &str,
) -> Result<(), BundleError> {
    let k = BundleErrorKind::Golden;
    if got.len() != specs.len() {
        return fail(
            k,
            field,
            format!("{} tensors, the model declares {}", got.len(), specs.len()),
        );
    }
    for (i, (t, s)) in got.iter().zip(specs).enumerate() {
        let f = format!("{field}[{i}]");
        if t.name != s.name {
            return fail(
                k,
                f,
                format!("named {:?}, the model's is {:?}", t.name, s.name),
            );
        }
        if t.dtype != s.dtype {
            return fail(
                k,
                f,
                format!("{:?} is {}, the model's is {}", t.name, t.dtype, s.dtype),
            );
        }
        if !s.accepts_shape(&t.shape) {
            return fail(
                k,
                format!("{f}.shape"),
                format!(
                    "{:?} does not fit the declared {}",
                    t.shape,
                    edgeinfer_engine::fmt_declared_shape(&s.shape)
                ),
            );
        }
        let n = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        if n != t.data.len() {
            return fail(
                k,
                format!("{f}.data"),
                format!("{} values for shape {:?} ({n})", t.data.len(), t.shape),
            );
        }
        if let Some((j, v)) = t.data.iter().enumerate().find(|(_, v)| !fits(t.dtype, **v)) {
            return fail(
                k,
                format!("{f}.data[{j}]"),
                format!("{v} is not a valid {}", t.dtype),
            );
        }
    }
    Ok(())
}

/// Whether `v` is a value of `dtype` (floats may be anything finite; ints exact).
fn fits(dtype: DType, v: f64) -> bool {
    match dtype {
        DType::F32 => v.is_finite() && v.abs() <= f64::from(f32::MAX),
        DType::F64 => v.is_finite(),
        DType::I64 => v.fract() == 0.0 && v.abs() <= 9_007_199_254_740_992.0,
        DType::I32 => v.fract() == 0.0 && (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&v),
        DType::U8 => v.fract() == 0.0 && (0.0..=255.0).contains(&v),
        DType::Bool => v == 0.0 || v == 1.0,
    }
}

// === impl GoldenTensor / GoldenSample ===

impl GoldenTensor {
    /// The tensor as the engine's little-endian bytes.
    pub fn to_input(&self) -> InputTensor {
        let mut data = Vec::with_capacity(self.data.len() * self.dtype.size());
        for &v in &self.data {
            match self.dtype {
                DType::F32 => data.extend_from_slice(&(v as f32).to_le_bytes()),
                DType::F64 => data.extend_from_slice(&v.to_le_bytes()),
                DType::I64 => data.extend_from_slice(&(v as i64).to_le_bytes()),
                DType::I32 => data.extend_from_slice(&(v as i32).to_le_bytes()),
                DType::U8 | DType::Bool => data.push(v as u8),
            }
        }
        InputTensor {
            name: self.name.clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            data,
        }
    }

    /// An engine output as a golden tensor (what `release create` records).
    pub fn from_output(t: &edgeinfer_engine::OutputTensor) -> Option<GoldenTensor> {
        Some(GoldenTensor {
            name: t.name.clone(),
            dtype: t.dtype?,
            shape: t.shape.clone(),
            data: t.to_f64_vec(),
        })
    }
}

impl GoldenSample {
    /// Engine inputs, in the model's input order.
    pub fn inputs(&self) -> Vec<InputTensor> {
        self.inputs.iter().map(GoldenTensor::to_input).collect()
    }

    /// Rows in this sample (the leading dimension of its first input).
    pub fn rows(&self) -> usize {
        self.inputs
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(0)
    }

    /// Whether an engine's outputs for [`inputs`](Self::inputs) match the expected ones:
    /// every expected output present with the same shape, integer and bool outputs
    /// exactly, floats within the tolerance (absolute or relative). The error says where
    /// they first differ.
    pub fn check(&self, got: &Outputs) -> Result<(), BundleError> {
        let k = BundleErrorKind::Golden;
        for want in &self.outputs {
            let Some(g) = got.get(&want.name) else {
                return fail(k, &want.name, "the engine gave no such output");
            };
            if g.shape != want.shape {
                return fail(
                    k,
                    &want.name,
                    format!("shape {:?}, expected {:?}", g.shape, want.shape),
                );
            }
            let exact = !matches!(want.dtype, DType::F32 | DType::F64);
            let t = self.tolerance;
            for (i, (a, b)) in want.data.iter().zip(g.to_f64_vec()).enumerate() {
                let ok = if exact {
                    *a == b
                } else {
                    let d = (a - b).abs();
                    d <= t.abs || d <= t.rel * a.abs().max(b.abs())
                };
                if !ok {
                    return fail(
                        k,
                        format!("{}[{i}]", want.name),
                        format!("engine gave {b}, expected {a}"),
                    );
                }
            }
        }
        Ok(())
    }
}

// === identifiers ===

/// A model name: what the daemon's config accepts (letters, digits, `_`, `-`, `.`),
/// not `.`/`..`, at most 128 bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1-128 letters, digits, '_', '-', '.' (and not . or ..)"
        ))
    }
}

/// A version: the same alphabet as a name (it is a path segment of the target).
pub fn check_version(version: &str) -> Result<(), String> {
    check_name(version).map_err(|m| m.replace("must be", "as a version must be"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeinfer_engine::OutputTensor;
    use edgeinfer_telemetry::drift::FeatureRef;

    fn spec(name: &str, dtype: DType, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
        }
    }

    pub(crate) fn sample_bundle() -> Bundle {
        let x: Vec<f64> = (0..8).map(|i| i as f64 * 0.5).collect();
        Bundle {
            schema_version: BUNDLE_SCHEMA_VERSION,
            name: "churn".into(),
            version: "3".into(),
            model: ModelSection {
                file: "model.onnx".into(),
                sha256: "ab".repeat(32),
                inputs: vec![spec("x", DType::F32, vec![Dim::Dynamic, Dim::Fixed(2)])],
                outputs: vec![
                    spec("label", DType::I64, vec![Dim::Dynamic]),
                    spec("p", DType::F32, vec![Dim::Dynamic, Dim::Fixed(2)]),
                ],
                engine: None,
                gpu: Some(GpuPolicy::Preferred),
                batching: Batching::default(),
            },
            features: None,
            reference: ReferenceStats {
                features: vec![
                    FeatureRef::numeric_from_samples("a", 0, &x),
                    FeatureRef::categorical_from_samples("b", 1, &[1, 1, 2, 3], 2),
                ],
                outputs: vec![],
            },
            thresholds: Thresholds::default(),
            baseline: Baseline {
                metrics: [("accuracy".to_string(), 0.9)].into(),
                primary: Some(accuracy::Baseline {
                    metric: accuracy::Metric::Accuracy,
                    value: 0.9,
                }),
            },
            golden: vec![GoldenSample {
                inputs: vec![GoldenTensor {
                    name: "x".into(),
                    dtype: DType::F32,
                    shape: vec![1, 2],
                    data: vec![0.5, 1.0],
                }],
                outputs: vec![
                    GoldenTensor {
                        name: "label".into(),
                        dtype: DType::I64,
                        shape: vec![1],
                        data: vec![1.0],
                    },
                    GoldenTensor {
                        name: "p".into(),
                        dtype: DType::F32,
                        shape: vec![1, 2],
                        data: vec![0.25, 0.75],
                    },
                ],
                tolerance: Tolerance::default(),
            }],
            lineage: Lineage {
                source: "models:/m-abc".into(),
                mlflow_run_id: Some("r1".into()),
                mlflow_model: None,
                dataset_version: Some("2026-11".into()),
                reference_data_sha256: None,
                created: "2026-12-01T12:00:00Z".into(),
                tool: "edgeinfer test".into(),
            },
        }
    }

    fn kind_of(b: &Bundle) -> BundleErrorKind {
        b.validate().unwrap_err().kind
    }

    #[test]
    fn a_sample_bundle_round_trips_and_validates() {
        let b = sample_bundle();
        b.validate().unwrap();
        let bytes = b.to_vec();
        assert_eq!(Bundle::from_slice(&bytes).unwrap(), b);
        assert_eq!(b.model_target(), "models/churn/3/model.onnx");
        assert_eq!(b.bundle_target(), "models/churn/3/bundle.json");
    }

    #[test]
    fn unknown_fields_other_versions_and_oversize_are_refused() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample_bundle().to_vec()).unwrap();
        v["model"]["extra"] = 1.into();
        let e = Bundle::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(e.kind, BundleErrorKind::Parse);
        assert!(e.field.starts_with("model"), "{e}");
        v["model"].as_object_mut().unwrap().remove("extra");
        v["schema_version"] = 2.into();
        v["new_thing"] = true.into();
        let e = Bundle::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(e.kind, BundleErrorKind::UnsupportedSchema, "{e}");
        let e = Bundle::from_slice(&vec![b' '; MAX_BUNDLE_BYTES + 1]).unwrap_err();
        assert_eq!(e.kind, BundleErrorKind::Parse);
        assert_eq!(
            Bundle::from_slice(b"[1]").unwrap_err().kind,
            BundleErrorKind::Parse
        );
    }

    #[test]
    fn validation_names_the_part_that_is_wrong() {
        let mut b = sample_bundle();
        b.name = "../etc".into();
        assert_eq!(kind_of(&b), BundleErrorKind::Identity);
        let mut b = sample_bundle();
        b.version = "3/4".into();
        assert_eq!(kind_of(&b), BundleErrorKind::Identity);
        let mut b = sample_bundle();
        b.model.sha256 = "AB".repeat(32);
        assert_eq!(kind_of(&b), BundleErrorKind::Model);
        let mut b = sample_bundle();
        b.model.outputs.clear();
        assert_eq!(kind_of(&b), BundleErrorKind::Model);
        let mut b = sample_bundle();
        b.reference.features[0].column = 2;
        assert_eq!(kind_of(&b), BundleErrorKind::Reference);
        let mut b = sample_bundle();
        if let drift::Distribution::Numeric { probs, .. } = &mut b.reference.features[0].dist {
            probs[0] += 0.5;
        }
        assert_eq!(kind_of(&b), BundleErrorKind::Reference);
        let mut b = sample_bundle();
        b.thresholds.drift.psi_warn = 0.5;
        assert_eq!(kind_of(&b), BundleErrorKind::Thresholds);
        let mut b = sample_bundle();
        b.baseline.metrics.insert("loss".into(), f64::INFINITY);
        assert_eq!(kind_of(&b), BundleErrorKind::Baseline);
        let mut b = sample_bundle();
        b.lineage.created = "yesterday".into();
        assert_eq!(kind_of(&b), BundleErrorKind::Lineage);
    }

    #[test]
    fn golden_samples_must_fit_the_model() {
        let mut b = sample_bundle();
        b.golden.clear();
        assert_eq!(kind_of(&b), BundleErrorKind::Golden);
        let mut b = sample_bundle();
        b.golden[0].inputs[0].shape = vec![1, 3];
        b.golden[0].inputs[0].data = vec![0.0; 3];
        let e = b.validate().unwrap_err();
        assert_eq!(e.kind, BundleErrorKind::Golden);
        assert_eq!(e.field, "golden[0].inputs[0].shape", "{e}");
        let mut b = sample_bundle();
        b.golden[0].inputs[0].data.push(1.0);
        assert_eq!(b.validate().unwrap_err().field, "golden[0].inputs[0].data");
        let mut b = sample_bundle();
        b.golden[0].outputs[0].data = vec![0.5];
        assert_eq!(
            b.validate().unwrap_err().field,
            "golden[0].outputs[0].data[0]"
        );
        let mut b = sample_bundle();
        b.golden[0].outputs.pop();
        assert_eq!(kind_of(&b), BundleErrorKind::Golden);
        let mut b = sample_bundle();
        b.golden[0].inputs[0].dtype = DType::F64;
        assert_eq!(kind_of(&b), BundleErrorKind::Golden);
    }

    #[test]
    fn feature_schema_must_match_the_input_width() {
        let mut b = sample_bundle();
        let schema: FeatureSchema = serde_json::from_value(serde_json::json!({
            "version": 1,
            "fields": [{"name": "a", "dtype": "f32"}, {"name": "b", "dtype": "i64"}]
        }))
        .unwrap();
        b.features = Some(schema.clone());
        b.validate().unwrap();
        b.features.as_mut().unwrap().fields.pop();
        assert_eq!(kind_of(&b), BundleErrorKind::Features);
        let mut s = schema;
        s.input = Some("nope".into());
        b.features = Some(s);
        assert_eq!(kind_of(&b), BundleErrorKind::Features);
    }

    #[test]
    fn golden_check_compares_within_tolerance_and_labels_exactly() {
        let g = &sample_bundle().golden[0];
        assert_eq!(g.rows(), 1);
        let input = g.inputs();
        assert_eq!(input[0].data.len(), 8);
        assert_eq!(&input[0].data[..4], &0.5f32.to_le_bytes());
        let out = |label: i64, p: [f32; 2]| {
            let mut l = OutputTensor {
                name: "label".into(),
                ..Default::default()
            };
            l.reset(DType::I64, &[1])
                .copy_from_slice(&label.to_le_bytes());
            let mut t = OutputTensor {
                name: "p".into(),
                ..Default::default()
            };
            let bytes: Vec<u8> = p.iter().flat_map(|x| x.to_le_bytes()).collect();
            t.reset(DType::F32, &[1, 2]).copy_from_slice(&bytes);
            Outputs {
                tensors: vec![l, t],
            }
        };
        g.check(&out(1, [0.25, 0.75])).unwrap();
        g.check(&out(1, [0.25005, 0.75])).unwrap();
        let e = g.check(&out(1, [0.26, 0.75])).unwrap_err();
        assert_eq!(e.field, "p[0]", "{e}");
        let e = g.check(&out(0, [0.25, 0.75])).unwrap_err();
        assert_eq!(e.field, "label[0]", "{e}");
        let mut missing = out(1, [0.25, 0.75]);
        missing.tensors.pop();
        assert_eq!(g.check(&missing).unwrap_err().kind, BundleErrorKind::Golden);
        let back = GoldenTensor::from_output(&out(1, [0.25, 0.75]).tensors[1]).unwrap();
        assert_eq!(back, g.outputs[1]);
    }

    #[test]
    fn target_custom_is_strict() {
        let c = TargetCustom {
            name: "churn".into(),
            version: "3".into(),
            release_counter: 7,
        };
        assert_eq!(TargetCustom::from_value(&c.to_value()).unwrap(), c);
        let mut v = c.to_value();
        v["extra"] = 1.into();
        assert_eq!(
            TargetCustom::from_value(&v).unwrap_err().kind,
            BundleErrorKind::Parse
        );
        let mut v = c.to_value();
        v["version"] = "..".into();
        assert_eq!(
            TargetCustom::from_value(&v).unwrap_err().kind,
            BundleErrorKind::Identity
        );
    }
}
