//! The engine layer: load an ONNX model on the best available backend and run it
//! on plain typed tensors.
//!
//! Architecture invariant: no `ort` or `tract` type appears in this crate's public
//! API. Engines never see sockets, frames or configuration files: they get model
//! bytes, [`LoadOptions`] and [`TensorView`]s, and give back [`Outputs`].
//!
//! Backends: ONNX Runtime with the CUDA provider ([`Backend::OrtCuda`]), ONNX
//! Runtime on CPU ([`Backend::OrtCpu`]), and pure-Rust tract with our own
//! tree-ensemble kernel ([`Backend::Tract`]), which always works.

mod auto;
pub mod cores;
pub mod gpu;
mod ort_engine;
mod tensor;
mod tract_engine;
mod tree;

pub use auto::{
    compare_outputs, load_model_on_samples, load_model_with_probe, synth_inputs, InputTensor,
    OUTPUT_TOLERANCE,
};
pub use gpu::{probe_gpus, GpuInfo, GpuProbe};
pub use ort_engine::{
    expected_ort_version, locate_ort_library, ort_library_defaults, ort_status, OrtStatus,
    ORT_LIBRARY_FILE,
};
pub use tensor::{DType, Dim, ModelInfo, OutputTensor, Outputs, TensorSpec, TensorView};

/// The tract-onnx release line the tract backend is built on (the workspace pins
/// `tract-onnx = "0.23"`; a unit test checks Cargo.lock agrees).
pub const TRACT_VERSION: &str = "0.23";

/// Load a model as `opts` asks: an explicit engine, or `auto`, which times every
/// available backend on a sample input and keeps the fastest whose outputs match.
/// Probes the GPUs through NVML first when the choice may involve CUDA.
pub fn load_model(model_bytes: &[u8], opts: &LoadOptions) -> Result<Model> {
    load_model_with_samples(model_bytes, opts, &[])
}

/// [`load_model`], with `engine = "auto"` deciding on `samples` (see
/// [`load_model_on_samples`]): the pull agent passes a release's golden samples.
pub fn load_model_with_samples(
    model_bytes: &[u8],
    opts: &LoadOptions,
    samples: &[Vec<InputTensor>],
) -> Result<Model> {
    let may_use_cuda = matches!(opts.engine, EngineChoice::Auto | EngineChoice::OrtCuda)
        && opts.gpu != GpuPolicy::Never;
    // Only probe once ORT is known to be loaded: NVML's own dlopen would queue behind a
    // hung ORT load on the dynamic linker's lock, and without ORT there is no CUDA anyway.
    let probe = if may_use_cuda && ort_engine::runtime(opts).is_ok() {
        probe_gpus()
    } else {
        GpuProbe {
            nvml_available: false,
            driver_version: None,
            gpus: Vec::new(),
            error: Some("not probed: CUDA is out of the question for this load".into()),
        }
    };
    load_model_on_samples(model_bytes, opts, &probe, samples)
}

use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong, for callers to match on (the server maps these to wire error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The model bytes are not a model this backend can load.
    BadModel,
    /// The model uses something this backend does not implement.
    Unsupported,
    /// The inputs do not fit the model: wrong count, name, dtype, shape, or a NaN.
    BadInput,
    /// The ONNX Runtime shared library is missing, unloadable or the wrong version.
    LibraryUnavailable,
    /// A GPU was required and none is usable.
    GpuUnavailable,
    /// The backend failed while running.
    Runtime,
}

/// An engine error: a kind to match on and a message for humans.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub kind: ErrorKind,
    pub message: String,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        EngineError {
            kind,
            message: message.into(),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// A concrete backend a session runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    OrtCuda,
    OrtCpu,
    Tract,
}

impl Backend {
    pub const fn name(self) -> &'static str {
        match self {
            Backend::OrtCuda => "ort-cuda",
            Backend::OrtCpu => "ort-cpu",
            Backend::Tract => "tract",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which engine the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineChoice {
    /// Try every available backend on the sample input; keep the fastest that matches.
    #[default]
    Auto,
    Tract,
    OrtCpu,
    OrtCuda,
}

impl std::str::FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "tract" => Ok(EngineChoice::Tract),
            "ort-cpu" => Ok(EngineChoice::OrtCpu),
            "ort-cuda" => Ok(EngineChoice::OrtCuda),
            other => Err(format!(
                "unknown engine {other:?}: expected auto, tract, ort-cpu or ort-cuda"
            )),
        }
    }
}

/// A model's stance on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuPolicy {
    /// Refuse to load unless the CUDA provider is usable.
    Required,
    /// Use the GPU when usable, otherwise fall back to CPU (and say so).
    #[default]
    Preferred,
    /// Never use the GPU.
    Never,
}

/// How to load one model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub engine: EngineChoice,
    pub gpu: GpuPolicy,
    /// Path of `libonnxruntime.so` (ONNX Runtime 1.31.x); `None` means `ORT_DYLIB_PATH`,
    /// then the default places ([`locate_ort_library`]), which hold only the tested build.
    pub ort_library: Option<PathBuf>,
    /// Threads ORT may use inside one run. Serving uses 1: one session per core.
    pub intra_op_threads: usize,
    /// Whether NaN/inf are accepted in float inputs (off: they are a [`ErrorKind::BadInput`]).
    pub allow_non_finite: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            engine: EngineChoice::Auto,
            gpu: GpuPolicy::Preferred,
            ort_library: None,
            intra_op_threads: 1,
            allow_non_finite: false,
        }
    }
}

/// A backend that was considered and not used, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Fallback {
    pub backend: Backend,
    pub reason: String,
}

/// A backend timed by `engine = "auto"` on the sample input.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Candidate {
    pub backend: Backend,
    pub p50_us: f64,
    pub matches_reference: bool,
}

/// How a model came to run where it runs. Visible in the model's status; no fallback is silent.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoadReport {
    pub backend: Backend,
    /// One line on why this backend was chosen.
    pub reason: String,
    pub fallbacks: Vec<Fallback>,
    pub candidates: Vec<Candidate>,
}

/// One runnable instance of a model. Sessions are `Send` but used by one thread at a
/// time: the server keeps one per core.
pub trait Session: Send {
    fn info(&self) -> &ModelInfo;
    fn backend(&self) -> Backend;
    /// Run on `inputs`, given in the model's declared input order, writing into `out`
    /// (which keeps its buffers' capacity across calls).
    fn run(&mut self, inputs: &[TensorView<'_>], out: &mut Outputs) -> Result<()>;
}

/// Makes sessions for one loaded model (one per serving core).
pub trait SessionFactory: Send + Sync {
    fn new_session(&self) -> Result<Box<dyn Session>>;
}

/// A model loaded on a chosen backend.
#[derive(Clone)]
pub struct Model {
    pub info: ModelInfo,
    pub report: LoadReport,
    factory: Arc<dyn SessionFactory>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("info", &self.info)
            .field("report", &self.report)
            .finish()
    }
}

impl Model {
    pub fn new(info: ModelInfo, report: LoadReport, factory: Arc<dyn SessionFactory>) -> Self {
        Model {
            info,
            report,
            factory,
        }
    }

    pub fn backend(&self) -> Backend {
        self.report.backend
    }

    pub fn new_session(&self) -> Result<Box<dyn Session>> {
        self.factory.new_session()
    }
}

/// A declared shape as a user reads it: `[N, 20]`, a dynamic dimension as `N`.
pub fn fmt_declared_shape(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Dynamic => "N".to_string(),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

/// Why `shape` does not fit `spec`, in the model's terms: the common case (rows of the
/// wrong width) says "expected 20 values per row, got 3".
fn shape_mismatch(spec: &TensorSpec, shape: &[usize]) -> String {
    let declared = fmt_declared_shape(&spec.shape);
    let got = format!("{shape:?}");
    let name = &spec.name;
    if shape.len() != spec.shape.len() {
        return format!(
            "input {name:?} has {} dimension(s) {got}, the model declares {}: {declared}",
            shape.len(),
            spec.shape.len()
        );
    }
    let last = shape.len() - 1;
    let (axis, want) = spec
        .shape
        .iter()
        .zip(shape)
        .enumerate()
        .find_map(|(i, (d, s))| match d {
            Dim::Fixed(n) if n != s => Some((i, *n)),
            _ => None,
        })
        .expect("a shape that is refused differs in some fixed dimension");
    if axis == last && shape.len() == 2 {
        format!(
            "input {name:?}: expected {want} values per row, got {} (shape {got}, the model declares {declared})",
            shape[axis]
        )
    } else {
        format!(
            "input {name:?}: dimension {axis} is {}, the model declares {want} (shape {got}, declared {declared})",
            shape[axis]
        )
    }
}

/// Check inputs against the model's declaration before any backend sees them.
pub fn validate_inputs(
    info: &ModelInfo,
    inputs: &[TensorView<'_>],
    allow_non_finite: bool,
) -> Result<()> {
    if inputs.len() != info.inputs.len() {
        return Err(EngineError::new(
            ErrorKind::BadInput,
            format!(
                "model takes {} input(s), got {}",
                info.inputs.len(),
                inputs.len()
            ),
        ));
    }
    for (spec, view) in info.inputs.iter().zip(inputs) {
        if spec.dtype != view.dtype {
            return Err(EngineError::new(
                ErrorKind::BadInput,
                format!(
                    "input {:?} has dtype {}, the model declares {}",
                    spec.name, view.dtype, spec.dtype
                ),
            ));
        }
        if !spec.accepts_shape(view.shape) {
            return Err(EngineError::new(
                ErrorKind::BadInput,
                shape_mismatch(spec, view.shape),
            ));
        }
        if view.dtype == DType::Bool {
            if let Some(i) = view.data.iter().position(|&b| b > 1) {
                return Err(EngineError::new(
                    ErrorKind::BadInput,
                    format!(
                        "input {:?} has byte {} at element {i}; a bool is 0 or 1",
                        spec.name, view.data[i]
                    ),
                ));
            }
        }
        if !allow_non_finite {
            let bad = match view.dtype {
                DType::F32 => view
                    .data
                    .chunks_exact(4)
                    .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
                DType::F64 => view.data.chunks_exact(8).position(|c| {
                    !f64::from_le_bytes(c.try_into().expect("chunk of 8")).is_finite()
                }),
                _ => None,
            };
            if let Some(i) = bad {
                return Err(EngineError::new(
                    ErrorKind::BadInput,
                    format!(
                        "input {:?} has a NaN or infinite value at element {i}",
                        spec.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tract_version_matches_the_lockfile() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        let at = lock
            .find("name = \"tract-onnx\"\nversion = \"")
            .expect("tract-onnx in Cargo.lock");
        let version = lock[at..].lines().nth(1).unwrap();
        assert!(
            version.starts_with(&format!("version = \"{TRACT_VERSION}.")),
            "{version}"
        );
    }

    #[test]
    fn bool_inputs_must_be_zero_or_one() {
        let info = ModelInfo {
            inputs: vec![TensorSpec {
                name: "m".into(),
                dtype: DType::Bool,
                shape: vec![Dim::Fixed(3)],
            }],
            outputs: vec![],
        };
        let ok = [0u8, 1, 1];
        validate_inputs(
            &info,
            &[TensorView::new(DType::Bool, &[3], &ok).unwrap()],
            false,
        )
        .unwrap();
        let bad = [0u8, 2, 1];
        let err = validate_inputs(
            &info,
            &[TensorView::new(DType::Bool, &[3], &bad).unwrap()],
            false,
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadInput);
        assert!(err.message.contains("element 1"), "{err}");
    }

    #[test]
    fn a_wrong_shape_is_said_in_the_models_terms() {
        let info = ModelInfo {
            inputs: vec![TensorSpec {
                name: "input".into(),
                dtype: DType::F32,
                shape: vec![Dim::Dynamic, Dim::Fixed(20)],
            }],
            outputs: vec![],
        };
        let check = |shape: &[usize], want: &str| {
            let n: usize = shape.iter().product();
            let data = vec![0.5f32; n];
            let err =
                validate_inputs(&info, &[TensorView::from_f32(shape, &data)], false).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadInput);
            assert_eq!(err.message, want);
            assert!(!err.message.contains("Fixed") && !err.message.contains("Dynamic"));
        };
        check(
            &[1, 3],
            "input \"input\": expected 20 values per row, got 3 (shape [1, 3], the model declares [N, 20])",
        );
        check(
            &[3],
            "input \"input\" has 1 dimension(s) [3], the model declares 2: [N, 20]",
        );
        check(
            &[1, 2, 20],
            "input \"input\" has 3 dimension(s) [1, 2, 20], the model declares 2: [N, 20]",
        );
        let info = ModelInfo {
            inputs: vec![TensorSpec {
                name: "image".into(),
                dtype: DType::F32,
                shape: vec![Dim::Dynamic, Dim::Fixed(3), Dim::Fixed(8), Dim::Fixed(8)],
            }],
            outputs: vec![],
        };
        let data = vec![0.5f32; 64];
        let err = validate_inputs(&info, &[TensorView::from_f32(&[1, 1, 8, 8], &data)], false)
            .unwrap_err();
        assert_eq!(
            err.message,
            "input \"image\": dimension 1 is 1, the model declares 3 (shape [1, 1, 8, 8], declared [N, 3, 8, 8])"
        );
    }
}
