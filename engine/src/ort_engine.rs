//! The ONNX Runtime backend (CPU and CUDA providers): loading the shared library once
//! per process without risking a hang, building one session per core, and running
//! borrowed input views without copying them.
//!
//! Nothing here is reachable before [`runtime`] has succeeded: any `ort` call before a
//! successful init would make `ort` load a library on its own (and panic or deadlock
//! on failure, pykeio/ort#560, #579, #583).

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ort::ep::ExecutionProvider;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session as OrtSession, SessionInputValue};
use ort::value::{
    DynValue, Outlet, PrimitiveTensorElementType, TensorElementType, TensorRef, ValueType,
};
use smallvec::SmallVec;

use crate::{
    validate_inputs, Backend, DType, Dim, EngineError, ErrorKind, LoadOptions, ModelInfo,
    OutputTensor, Outputs, Result, Session, SessionFactory, TensorSpec, TensorView,
};

/// How long the library load and environment creation may take before we call it hung.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The ONNX Runtime version this build speaks (`ort`'s API level), as "1.31".
pub fn expected_ort_version() -> String {
    format!("1.{}", ort::MINOR_VERSION)
}

/// What `edgeinfer doctor` shows about ONNX Runtime.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OrtStatus {
    /// The library path that was (or would be) loaded; `None` if none is configured.
    pub path: Option<PathBuf>,
    /// The version this build needs, e.g. "1.31".
    pub expected_version: String,
    /// The loaded library's version, when it loaded.
    pub version: Option<String>,
    /// Whether the loaded library was built with the CUDA provider.
    pub cuda_provider_built: Option<bool>,
    /// Why ORT is unavailable, when it is.
    pub error: Option<String>,
}

/// Load (or reuse) ONNX Runtime as `opts` configures it and report what happened.
pub fn ort_status(opts: &LoadOptions) -> OrtStatus {
    let path = library_path(opts).ok();
    let mut status = OrtStatus {
        path,
        expected_version: expected_ort_version(),
        version: None,
        cuda_provider_built: None,
        error: None,
    };
    match runtime(opts) {
        Ok(rt) => {
            status.path = Some(rt.path.clone());
            status.version = Some(rt.version.clone());
            status.cuda_provider_built = ort::ep::CUDA::is_available().ok();
        }
        Err(e) => status.error = Some(e.message),
    }
    status
}

// === process-wide runtime ===

/// A loaded ONNX Runtime: the library, its version and the one environment `ort`
/// allows per process. Leaked on purpose: it lives as long as the process.
pub(crate) struct OrtRuntime {
    env: ort::environment::Environment,
    pub path: PathBuf,
    pub version: String,
    _lib: libloading::Library,
}

#[derive(Clone)]
struct InitFailure {
    message: String,
    /// Whether `ort` itself was called; if not, another path may still be tried.
    ort_touched: bool,
}

enum SlotState {
    Running { timed_out: bool },
    Done(std::result::Result<&'static OrtRuntime, InitFailure>),
}

struct InitSlot {
    path: PathBuf,
    state: Mutex<SlotState>,
    done: Condvar,
}

static SLOT: Mutex<Option<Arc<InitSlot>>> = Mutex::new(None);

fn unavailable(message: impl Into<String>) -> EngineError {
    EngineError::new(ErrorKind::LibraryUnavailable, message)
}

/// The file name of the ONNX Runtime build this release is tested with. The default
/// places are searched for exactly this name, so no other version is picked up by chance.
pub const ORT_LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";

/// Where [`locate_ort_library`] looks when neither `engine.ort_library` (or a tool's
/// `--ort-library`) nor `ORT_DYLIB_PATH` names a library, in order: the `.cache/ort/` of
/// the checkout a binary was built in (`target/{debug,release}/` → `../../.cache/ort/`,
/// where `tools/ci/provision.sh` puts it), then `/usr/lib/edgeinfer/` (the install).
pub fn ort_library_defaults() -> Vec<PathBuf> {
    let mut places = Vec::new();
    if let Some(checkout) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
    {
        places.push(checkout.join(".cache/ort").join(ORT_LIBRARY_FILE));
    }
    places.push(Path::new("/usr/lib/edgeinfer").join(ORT_LIBRARY_FILE));
    places
}

/// The ONNX Runtime library the daemon and `edgeinfer doctor` both load: `configured`
/// (`engine.ort_library`, `--ort-library`) if set, else `ORT_DYLIB_PATH` if set and not
/// empty, else the first of [`ort_library_defaults`] that exists. A path named
/// explicitly is returned even if missing, so the error names what was asked for.
pub fn locate_ort_library(configured: Option<&Path>) -> Result<PathBuf> {
    search_ort_library(
        configured,
        std::env::var_os("ORT_DYLIB_PATH"),
        &ort_library_defaults(),
        |p| p.is_file(),
    )
}

/// [`locate_ort_library`] on explicit inputs.
fn search_ort_library(
    configured: Option<&Path>,
    env: Option<std::ffi::OsString>,
    defaults: &[PathBuf],
    exists: impl Fn(&Path) -> bool,
) -> Result<PathBuf> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(found) = defaults.iter().find(|p| exists(p)) {
        return Ok(found.clone());
    }
    let searched: Vec<String> = defaults.iter().map(|p| p.display().to_string()).collect();
    Err(unavailable(format!(
        "no ONNX Runtime library found: engine.ort_library and ORT_DYLIB_PATH are unset and \
         {ORT_LIBRARY_FILE} is in none of {} (ONNX Runtime {}.x; tools/ci/provision.sh fetches it)",
        searched.join(", "),
        expected_ort_version()
    )))
}

/// The library path for `opts`: see [`locate_ort_library`].
pub(crate) fn library_path(opts: &LoadOptions) -> Result<PathBuf> {
    locate_ort_library(opts.ort_library.as_deref())
}

/// The process's ONNX Runtime, loading it on first use.
pub(crate) fn runtime(opts: &LoadOptions) -> Result<&'static OrtRuntime> {
    let path = library_path(opts)?;
    let path = std::path::absolute(&path).unwrap_or(path);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(unavailable(format!(
                "ONNX Runtime library {} is not a file (expected ONNX Runtime {}.x)",
                path.display(),
                expected_ort_version()
            )))
        }
        Err(e) => {
            return Err(unavailable(format!(
                "ONNX Runtime library {} not found: {e} (expected ONNX Runtime {}.x)",
                path.display(),
                expected_ort_version()
            )))
        }
    }
    let slot = claim_slot(&path)?;
    wait_for(&slot)
}

/// Find the init for `path`, or start it on a helper thread.
fn claim_slot(path: &Path) -> Result<Arc<InitSlot>> {
    loop {
        let mut guard = SLOT.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = guard.as_ref() {
            if slot.path == path {
                return Ok(slot.clone());
            }
            let state = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
            match &*state {
                SlotState::Done(Ok(rt)) => {
                    return Err(unavailable(format!(
                        "ONNX Runtime {} is already loaded from {}; a process loads one library, so {} is not used",
                        rt.version,
                        rt.path.display(),
                        path.display()
                    )))
                }
                // A failure before `ort` was involved leaves the process clean: try this path.
                SlotState::Done(Err(f)) if !f.ort_touched => {}
                SlotState::Done(Err(f)) => {
                    return Err(unavailable(format!(
                        "ONNX Runtime init from {} already failed in this process ({}); restart to use {}",
                        slot.path.display(),
                        f.message,
                        path.display()
                    )))
                }
                SlotState::Running { timed_out: true } => {
                    return Err(unavailable(format!(
                        "ONNX Runtime is still loading from {} (hung); {} is not used",
                        slot.path.display(),
                        path.display()
                    )))
                }
                SlotState::Running { timed_out: false } => {
                    // Another path is being tried; its outcome decides whether this one may be.
                    let other = slot.clone();
                    drop(state);
                    drop(guard);
                    let _ = wait_for(&other);
                    continue;
                }
            }
        }
        let slot = Arc::new(InitSlot {
            path: path.to_path_buf(),
            state: Mutex::new(SlotState::Running { timed_out: false }),
            done: Condvar::new(),
        });
        let worker = slot.clone();
        std::thread::Builder::new()
            .name("ort-init".into())
            .spawn(move || {
                let result = init_runtime(&worker.path);
                *worker.state.lock().unwrap_or_else(PoisonError::into_inner) =
                    SlotState::Done(result);
                worker.done.notify_all();
            })
            .map_err(|e| {
                unavailable(format!("cannot start the ONNX Runtime loader thread: {e}"))
            })?;
        *guard = Some(slot.clone());
        return Ok(slot);
    }
}

fn wait_for(slot: &InitSlot) -> Result<&'static OrtRuntime> {
    let deadline = Instant::now() + INIT_TIMEOUT;
    let mut state = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        match &mut *state {
            SlotState::Done(Ok(rt)) => return Ok(rt),
            SlotState::Done(Err(f)) => return Err(unavailable(f.message.clone())),
            SlotState::Running { timed_out } => {
                let now = Instant::now();
                if *timed_out || now >= deadline {
                    // Later callers fail at once instead of each waiting out the timeout;
                    // if the load ever finishes, they get its result.
                    *timed_out = true;
                    return Err(unavailable(format!(
                        "loading ONNX Runtime from {} did not finish within {} s (a known ort load-dynamic hang, pykeio/ort#579); treating it as unavailable",
                        slot.path.display(),
                        INIT_TIMEOUT.as_secs()
                    )));
                }
                state = slot
                    .done
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}

/// Runs on the loader thread: dlopen, check the version ourselves, then let `ort` in.
fn init_runtime(path: &Path) -> std::result::Result<&'static OrtRuntime, InitFailure> {
    let expected = expected_ort_version();
    let fail = |ort_touched, message: String| InitFailure {
        message,
        ort_touched,
    };
    // SAFETY: loading a library runs its initialisers; this is the library the operator
    // configured as ONNX Runtime, which is exactly what we are here to run.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        fail(
            false,
            format!(
                "cannot load ONNX Runtime from {}: {e} (expected ONNX Runtime {expected}.x)",
                path.display()
            ),
        )
    })?;
    let version = library_version(&lib).map_err(|e| {
        fail(
            false,
            format!("{} is not ONNX Runtime: {e}", path.display()),
        )
    })?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    if (parts.next().flatten(), parts.next().flatten()) != (Some(1), Some(ort::MINOR_VERSION)) {
        return Err(fail(
            false,
            format!("{} is ONNX Runtime {version}, but edgeinfer needs ONNX Runtime {expected}.x (ORT API {})", path.display(), ort::MINOR_VERSION),
        ));
    }
    let builder = ort::init_from(path).map_err(|e| {
        fail(
            true,
            format!("ort could not initialise {}: {e}", path.display()),
        )
    })?;
    let logger: ort::logging::LoggerFunction = Arc::new(log_to_tracing);
    let env = builder
        .with_name("edgeinfer")
        .with_telemetry(false)
        .with_logger(logger)
        .build()
        .map_err(|e| {
            fail(
                true,
                format!(
                    "cannot create the ONNX Runtime environment from {}: {e}",
                    path.display()
                ),
            )
        })?;
    // A custom logger starts at verbose; formatting verbose logs on every run costs real time.
    env.set_log_level(ort::logging::LogLevel::Warning);
    tracing::info!(path = %path.display(), %version, "loaded ONNX Runtime");
    Ok(Box::leak(Box::new(OrtRuntime {
        env,
        path: path.to_path_buf(),
        version,
        _lib: lib,
    })))
}

fn library_version(lib: &libloading::Library) -> std::result::Result<String, String> {
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
    let get_base = unsafe { lib.get::<GetApiBase>(b"OrtGetApiBase") }
        .map_err(|e| format!("no OrtGetApiBase symbol: {e}"))?;
    // SAFETY: the function takes nothing and returns a pointer to a static struct (or null).
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err("OrtGetApiBase returned null".into());
    }
    // SAFETY: `base` is non-null and points to the library's static OrtApiBase.
    let version = unsafe { ((*base).GetVersionString)() };
    if version.is_null() {
        return Err("GetVersionString returned null".into());
    }
    // SAFETY: ORT returns a static NUL-terminated string.
    Ok(unsafe { CStr::from_ptr(version) }
        .to_string_lossy()
        .into_owned())
}

fn log_to_tracing(
    level: ort::logging::LogLevel,
    category: &str,
    _id: &str,
    location: &str,
    message: &str,
) {
    use ort::logging::LogLevel;
    match level {
        LogLevel::Fatal | LogLevel::Error => {
            tracing::error!(target: "onnxruntime", category, location, "{message}")
        }
        LogLevel::Warning => tracing::warn!(target: "onnxruntime", category, location, "{message}"),
        LogLevel::Info => tracing::debug!(target: "onnxruntime", category, location, "{message}"),
        LogLevel::Verbose => {
            tracing::trace!(target: "onnxruntime", category, location, "{message}")
        }
    }
}

// === loading a model ===

fn ort_error<R>(kind: ErrorKind, context: &str, e: ort::Error<R>) -> EngineError {
    EngineError::new(kind, format!("{context}: {e}"))
}

fn load_error<R>(e: ort::Error<R>) -> EngineError {
    let kind = match e.code() {
        ort::ErrorCode::NotImplemented => ErrorKind::Unsupported,
        _ => ErrorKind::BadModel,
    };
    ort_error(kind, "ONNX Runtime cannot load the model", e)
}

#[derive(Clone, Copy)]
struct SessionConfig {
    intra_op_threads: usize,
    cuda_device: Option<u32>,
}

fn build_session(rt: &OrtRuntime, model: &[u8], cfg: SessionConfig) -> Result<OrtSession> {
    let setup = |e: ort::Error<SessionBuilder>| {
        ort_error(ErrorKind::Runtime, "configuring an ONNX Runtime session", e)
    };
    let mut builder = SessionBuilder::new(&rt.env)
        .map_err(|e| ort_error(ErrorKind::Runtime, "creating an ONNX Runtime session", e))?
        .with_intra_threads(cfg.intra_op_threads)
        .map_err(setup)?
        .with_inter_threads(1)
        .map_err(setup)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(setup)?;
    if let Some(device) = cfg.cuda_device {
        let cuda = ort::ep::CUDA::default()
            .with_device_id(device as i32)
            .build()
            .error_on_failure();
        builder = builder
            .with_execution_providers([cuda])
            .map_err(|e| EngineError::new(ErrorKind::GpuUnavailable, e.to_string()))?;
    }
    builder.commit_from_memory(model).map_err(load_error)
}

/// Load `model` on ONNX Runtime: on CUDA `device` when given, else on CPU.
///
/// With a device, any failure is returned as is; the caller retries on CPU to tell a
/// provider that would not register from a model ORT cannot load at all.
pub(crate) fn load_ort(
    model: &[u8],
    opts: &LoadOptions,
    cuda_device: Option<u32>,
) -> Result<(ModelInfo, Arc<dyn SessionFactory>)> {
    let rt = runtime(opts)?;
    let cfg = SessionConfig {
        intra_op_threads: opts.intra_op_threads,
        cuda_device,
    };
    let session = build_session(rt, model, cfg)?;
    let info = model_info(&session)?;
    let factory = OrtFactory {
        rt,
        model: model.into(),
        info: Arc::new(info.clone()),
        cfg,
        backend: if cuda_device.is_some() {
            Backend::OrtCuda
        } else {
            Backend::OrtCpu
        },
        allow_non_finite: opts.allow_non_finite,
        first: Mutex::new(Some(session)),
    };
    Ok((info, Arc::new(factory)))
}

fn model_info(session: &OrtSession) -> Result<ModelInfo> {
    let inputs = session
        .inputs()
        .iter()
        .map(|o| spec_of(o, "input"))
        .collect::<Result<_>>()?;
    let outputs = session
        .outputs()
        .iter()
        .map(|o| spec_of(o, "output"))
        .collect::<Result<_>>()?;
    Ok(ModelInfo { inputs, outputs })
}

fn dtype_of(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Bool => DType::Bool,
        _ => return None,
    })
}

fn spec_of(outlet: &Outlet, role: &str) -> Result<TensorSpec> {
    let name = outlet.name();
    let unsupported = |what: String| {
        EngineError::new(ErrorKind::Unsupported, format!("{role} {name:?} is {what}"))
    };
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            let dtype = dtype_of(*ty).ok_or_else(|| {
                unsupported(format!("a tensor of {ty:?}; edgeinfer carries f32, f64, i64, i32, u8 and bool"))
            })?;
            let shape = shape.iter().map(|&d| if d < 0 { Dim::Dynamic } else { Dim::Fixed(d as usize) }).collect();
            Ok(TensorSpec { name: name.to_string(), dtype, shape })
        }
        ValueType::Sequence(_) | ValueType::Map { .. } => Err(unsupported(
            "a sequence or map (scikit-learn's ZipMap?); export classifiers with skl2onnx options {'zipmap': False}".into(),
        )),
        other => Err(unsupported(format!("{other:?}, not a tensor"))),
    }
}

struct OrtFactory {
    rt: &'static OrtRuntime,
    model: Arc<[u8]>,
    info: Arc<ModelInfo>,
    cfg: SessionConfig,
    backend: Backend,
    allow_non_finite: bool,
    /// The session built at load to read metadata, handed to the first caller.
    first: Mutex<Option<OrtSession>>,
}

impl SessionFactory for OrtFactory {
    fn new_session(&self) -> Result<Box<dyn Session>> {
        let first = self
            .first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let session = match first {
            Some(s) => s,
            None => build_session(self.rt, &self.model, self.cfg)?,
        };
        Ok(Box::new(OrtRunner {
            session,
            info: self.info.clone(),
            backend: self.backend,
            allow_non_finite: self.allow_non_finite,
            scratch: Vec::new(),
        }))
    }
}

// === running ===

/// Per-input buffers for the rare inputs that cannot be viewed in place; kept across runs.
#[derive(Default)]
struct Scratch {
    /// 8-byte-aligned copy of misaligned input bytes.
    words: Vec<u64>,
    bools: Vec<bool>,
}

struct OrtRunner {
    session: OrtSession,
    info: Arc<ModelInfo>,
    backend: Backend,
    allow_non_finite: bool,
    scratch: Vec<Scratch>,
}

impl Session for OrtRunner {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn backend(&self) -> Backend {
        self.backend
    }

    fn run(&mut self, inputs: &[TensorView<'_>], out: &mut Outputs) -> Result<()> {
        validate_inputs(&self.info, inputs, self.allow_non_finite)?;
        let OrtRunner {
            session,
            info,
            scratch,
            ..
        } = self;
        if scratch.len() < inputs.len() {
            scratch.resize_with(inputs.len(), Scratch::default);
        }
        let mut values: SmallVec<[SessionInputValue<'_>; 4]> = SmallVec::new();
        for (view, scratch) in inputs.iter().zip(scratch.iter_mut()) {
            values.push(input_value(view, scratch)?);
        }
        let results = session.run(&values[..]).map_err(|e| {
            let kind = if e.code() == ort::ErrorCode::InvalidArgument {
                ErrorKind::BadInput
            } else {
                ErrorKind::Runtime
            };
            ort_error(kind, "ONNX Runtime run failed", e)
        })?;
        if out.tensors.len() != info.outputs.len()
            || out
                .tensors
                .iter()
                .zip(&info.outputs)
                .any(|(t, s)| t.name != s.name)
        {
            *out = Outputs::for_model(info);
        }
        for ((_, value), (dst, spec)) in results
            .iter()
            .zip(out.tensors.iter_mut().zip(&info.outputs))
        {
            copy_output(&value, dst, &spec.name)?;
        }
        Ok(())
    }
}

fn input_value<'a>(
    view: &TensorView<'a>,
    scratch: &'a mut Scratch,
) -> Result<SessionInputValue<'a>> {
    match view.dtype {
        DType::F32 => typed_input::<f32>(view, scratch),
        DType::F64 => typed_input::<f64>(view, scratch),
        DType::I64 => typed_input::<i64>(view, scratch),
        DType::I32 => typed_input::<i32>(view, scratch),
        DType::U8 => tensor_ref::<u8>(view.shape, view.data),
        DType::Bool => {
            // validate_inputs has checked every byte is 0 or 1.
            scratch.bools.clear();
            scratch.bools.extend(view.data.iter().map(|&b| b == 1));
            tensor_ref::<bool>(view.shape, &scratch.bools)
        }
    }
}

/// View the bytes in place when aligned for `T`; otherwise copy them into aligned scratch.
fn typed_input<'a, T>(
    view: &TensorView<'a>,
    scratch: &'a mut Scratch,
) -> Result<SessionInputValue<'a>>
where
    T: bytemuck::Pod + PrimitiveTensorElementType + std::fmt::Debug,
{
    let data: &'a [T] = match bytemuck::try_cast_slice(view.data) {
        Ok(d) => d,
        Err(_) => {
            let len = view.data.len();
            scratch.words.clear();
            scratch.words.resize(len.div_ceil(8), 0);
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut scratch.words);
            bytes[..len].copy_from_slice(view.data);
            bytemuck::cast_slice(&bytemuck::cast_slice::<u64, u8>(&scratch.words)[..len])
        }
    };
    tensor_ref(view.shape, data)
}

fn tensor_ref<'a, T>(shape: &'a [usize], data: &'a [T]) -> Result<SessionInputValue<'a>>
where
    T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
{
    TensorRef::from_array_view((shape, data))
        .map(SessionInputValue::from)
        .map_err(|e| ort_error(ErrorKind::BadInput, "cannot view the input as a tensor", e))
}

fn copy_output(value: &DynValue, dst: &mut OutputTensor, name: &str) -> Result<()> {
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(EngineError::new(
                ErrorKind::Runtime,
                format!("output {name:?} came back as {other:?}, not a tensor"),
            ));
        }
    };
    let dtype = dtype_of(ty).ok_or_else(|| {
        EngineError::new(
            ErrorKind::Unsupported,
            format!("output {name:?} came back as a tensor of {ty:?}"),
        )
    })?;
    let extract =
        |e: ort::Error| ort_error(ErrorKind::Runtime, "reading an ONNX Runtime output", e);
    match dtype {
        DType::F32 => copy_pod::<f32>(value.try_extract_tensor().map_err(extract)?, dst),
        DType::F64 => copy_pod::<f64>(value.try_extract_tensor().map_err(extract)?, dst),
        DType::I64 => copy_pod::<i64>(value.try_extract_tensor().map_err(extract)?, dst),
        DType::I32 => copy_pod::<i32>(value.try_extract_tensor().map_err(extract)?, dst),
        DType::U8 => copy_pod::<u8>(value.try_extract_tensor().map_err(extract)?, dst),
        DType::Bool => {
            let (shape, data) = value.try_extract_tensor::<bool>().map_err(extract)?;
            set_shape(dst, shape);
            dst.data.clear();
            dst.data.extend(data.iter().map(|&b| b as u8));
        }
    }
    dst.dtype = Some(dtype);
    Ok(())
}

fn copy_pod<T: bytemuck::Pod>((shape, data): (&ort::value::Shape, &[T]), dst: &mut OutputTensor) {
    set_shape(dst, shape);
    dst.data.clear();
    dst.data.extend_from_slice(bytemuck::cast_slice(data));
}

fn set_shape(dst: &mut OutputTensor, shape: &[i64]) {
    dst.shape.clear();
    dst.shape.extend(shape.iter().map(|&d| d.max(0) as usize));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places() -> Vec<PathBuf> {
        vec![
            PathBuf::from("/repo/.cache/ort/libonnxruntime.so.1.31.1"),
            PathBuf::from("/usr/lib/edgeinfer/libonnxruntime.so.1.31.1"),
        ]
    }

    #[test]
    fn the_search_order_is_configured_then_env_then_defaults() {
        let all = |_: &Path| true;
        let configured = Path::new("/etc/edgeinfer/libonnxruntime.so");
        let env = Some(std::ffi::OsString::from(
            "/opt/ort/libonnxruntime.so.1.31.1",
        ));
        assert_eq!(
            search_ort_library(Some(configured), env.clone(), &places(), all).unwrap(),
            configured
        );
        assert_eq!(
            search_ort_library(None, env, &places(), all).unwrap(),
            Path::new("/opt/ort/libonnxruntime.so.1.31.1")
        );
        // An empty ORT_DYLIB_PATH is unset, as for `ort` itself.
        assert_eq!(
            search_ort_library(None, Some("".into()), &places(), all).unwrap(),
            places()[0]
        );
        let only_installed = |p: &Path| p.starts_with("/usr/lib/edgeinfer");
        assert_eq!(
            search_ort_library(None, None, &places(), only_installed).unwrap(),
            places()[1]
        );
    }

    #[test]
    fn nothing_found_names_every_place_searched() {
        let e = search_ort_library(None, None, &places(), |_| false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::LibraryUnavailable);
        for p in places() {
            assert!(e.message.contains(&p.display().to_string()), "{e}");
        }
        assert!(e.message.contains("ORT_DYLIB_PATH"), "{e}");
    }

    #[test]
    fn the_defaults_are_the_checkout_cache_then_the_install_dir() {
        let defaults = ort_library_defaults();
        let exe = std::env::current_exe().unwrap();
        // This test binary is target/debug/deps/<name>: three levels up is `target/`.
        let checkout = exe.parent().unwrap().parent().unwrap().parent().unwrap();
        assert_eq!(
            defaults,
            [
                checkout.join(".cache/ort/libonnxruntime.so.1.31.1"),
                PathBuf::from("/usr/lib/edgeinfer/libonnxruntime.so.1.31.1"),
            ]
        );
        assert_eq!(
            ORT_LIBRARY_FILE,
            format!("libonnxruntime.so.{}.1", expected_ort_version())
        );
    }
}
