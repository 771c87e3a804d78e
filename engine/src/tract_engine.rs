//! The pure-Rust backend: tract-onnx on CPU, with our own tree-ensemble kernel
//! registered in place of tract's tree ops.
//!
//! A model that is nothing but one tree ensemble (what skl2onnx emits for forests
//! and gradient boosting) skips tract's plan altogether: the session reads the
//! caller's bytes in place and writes straight into the caller's output buffers.
//! Everything else (pipelines with scalers, MLPs, CNNs) runs through a tract plan,
//! trees included, via the registered op (and our `Scaler`, which tract lacks).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::DimLike;

use crate::tree::onnx::TreeEnsembleOp;
use crate::tree::{Rows, Scratch, TreeEnsemble};
use crate::{
    validate_inputs, Backend, DType, Dim, EngineError, ErrorKind, LoadOptions, ModelInfo,
    OutputTensor, Outputs, Result, Session, SessionFactory, TensorSpec, TensorView,
};

/// Loads `model_bytes` on tract. Never panics: tract is called behind `catch_unwind`.
pub(crate) fn load_tract(
    model_bytes: &[u8],
    opts: &LoadOptions,
) -> Result<(ModelInfo, Arc<dyn SessionFactory>)> {
    match catch_unwind(AssertUnwindSafe(|| load(model_bytes, opts))) {
        Ok(r) => r,
        Err(panic) => Err(EngineError::new(
            ErrorKind::Unsupported,
            format!(
                "tract panicked while loading the model: {}",
                panic_message(&*panic)
            ),
        )),
    }
}

/// The tract ONNX front-end with our tree kernel in its registry.
fn framework() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    crate::tree::onnx::register(&mut onnx.op_register);
    onnx
}

fn load(bytes: &[u8], opts: &LoadOptions) -> Result<(ModelInfo, Arc<dyn SessionFactory>)> {
    let onnx = framework();
    let bad = |m: String| EngineError::new(ErrorKind::BadModel, m);
    let proto = onnx
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| bad(format!("not an ONNX model: {e:#}")))?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| bad("the ONNX model has no graph".into()))?;
    if graph.output.is_empty() {
        return Err(bad("the ONNX graph has no outputs".into()));
    }
    if let Some(node) = graph
        .node
        .iter()
        .find(|n| !onnx.op_register.0.contains_key(&n.op_type))
    {
        let domain = if node.domain.is_empty() {
            "ai.onnx"
        } else {
            &node.domain
        };
        let which = match (node.name.is_empty(), node.output.first()) {
            (false, _) => format!("node {:?}", node.name),
            (true, Some(out)) => format!("the node computing {out:?}"),
            (true, None) => "a node".into(),
        };
        return Err(EngineError::new(
            ErrorKind::Unsupported,
            format!(
                "tract does not implement operator {domain}:{} ({which})",
                node.op_type
            ),
        ));
    }
    let declared = declared_info(graph)?;

    let mut model = onnx
        .model_for_proto_model(&proto)
        .map_err(|e| classify("reading", e))?;
    // Give unknown dimensions (skl2onnx's `None` batch) a symbol so tract can type the graph.
    let mut batch_symbols = Vec::new();
    for (ix, spec) in declared.inputs.iter().enumerate() {
        let mut shape: TVec<TDim> = TVec::new();
        for (j, d) in spec.shape.iter().enumerate() {
            shape.push(match d {
                Dim::Fixed(n) => n.to_dim(),
                Dim::Dynamic => {
                    let sym = model.symbols.sym(&format!(
                        "{}_{ix}_{j}",
                        if j == 0 { "batch" } else { "dim" }
                    ));
                    if j == 0 {
                        batch_symbols.push(sym.clone());
                    }
                    sym.to_dim()
                }
            });
        }
        let fact = InferenceFact::dt_shape(tract_dt(spec.dtype), shape);
        model
            .set_input_fact(ix, fact)
            .map_err(|e| classify("typing the inputs of", e))?;
    }
    let typed = model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(|e| classify("analysing", e))?;
    let optimized = typed
        .clone()
        .into_optimized()
        .map_err(|e| classify("optimising", e))?;
    let info = final_info(declared, &optimized)?;
    let native = native_trees(&optimized, &info);
    let one_row = if native.is_none()
        && !batch_symbols.is_empty()
        && batch_symbols.len() == info.inputs.len()
        && bytes.len() <= ONE_ROW_PLAN_MAX_MODEL_BYTES
    {
        one_row_plan(&typed, &batch_symbols)
    } else {
        None
    };
    let plan = optimized
        .into_runnable()
        .map_err(|e| classify("planning", e))?;
    let factory = TractFactory {
        info: info.clone(),
        plan,
        one_row,
        native,
        allow_non_finite: opts.allow_non_finite,
    };
    Ok((info, Arc::new(factory)))
}

/// Models up to this size get a one-row plan. The second plan holds its own copy of the
/// packed weights, so big models (whose latency is all compute anyway) do without.
const ONE_ROW_PLAN_MAX_MODEL_BYTES: usize = 8 << 20;

/// A second plan with the batch fixed at one row, the common serving case: tract
/// optimises fixed shapes better (measured: logistic regression 1.5 µs instead of
/// 1.8, the MLP 4.7 µs instead of 5.3). Optional: if tract cannot specialise the
/// model, every call takes the general plan.
fn one_row_plan(typed: &TypedModel, batch_symbols: &[Symbol]) -> Option<Arc<TypedSimplePlan>> {
    let subs = batch_symbols
        .iter()
        .map(|s| (s.clone(), 1.to_dim()))
        .collect();
    let plan = typed
        .set_symbols(&subs)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable());
    match plan {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "tract: no one-row plan; every batch takes the general plan");
            None
        }
    }
}

/// Maps a tract error to our kinds: a tree ensemble with contradictory attributes is a
/// bad model; anything else tract cannot handle is "unsupported" (ONNX Runtime may run it).
fn classify(stage: &str, e: TractError) -> EngineError {
    if let Some(b) = e
        .chain()
        .find_map(|c| c.downcast_ref::<crate::tree::BuildError>())
    {
        let kind = match b {
            crate::tree::BuildError::Invalid(_) => ErrorKind::BadModel,
            crate::tree::BuildError::Unsupported(_) => ErrorKind::Unsupported,
        };
        return EngineError::new(kind, format!("{stage} the model: {b}"));
    }
    EngineError::new(
        ErrorKind::Unsupported,
        format!("tract failed {stage} the model: {e:#}"),
    )
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

// === model metadata ===

fn dtype_of_onnx(code: i32) -> Option<DType> {
    Some(match DataType::try_from(code).ok()? {
        DataType::Float => DType::F32,
        DataType::Double => DType::F64,
        DataType::Int64 => DType::I64,
        DataType::Int32 => DType::I32,
        DataType::Uint8 => DType::U8,
        DataType::Bool => DType::Bool,
        _ => return None,
    })
}

fn dtype_of_tract(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        // tract computes some integer outputs (labels, shapes) as symbolic dimensions.
        DatumType::I64 | DatumType::TDim => DType::I64,
        DatumType::I32 => DType::I32,
        DatumType::U8 => DType::U8,
        DatumType::Bool => DType::Bool,
        _ => return None,
    })
}

fn tract_dt(d: DType) -> DatumType {
    match d {
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::I64 => DatumType::I64,
        DType::I32 => DatumType::I32,
        DType::U8 => DatumType::U8,
        DType::Bool => DatumType::Bool,
    }
}

/// A tensor as the ONNX graph declares it; `None` parts are left for tract to infer.
struct Declared {
    name: String,
    dtype: Option<DType>,
    shape: Option<Vec<Dim>>,
}

fn declared(v: &pb::ValueInfoProto) -> Result<Declared> {
    let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Ok(Declared {
            name: v.name.clone(),
            dtype: None,
            shape: None,
        });
    };
    let dtype = if t.elem_type == 0 {
        None
    } else {
        Some(dtype_of_onnx(t.elem_type).ok_or_else(|| {
            let name = DataType::try_from(t.elem_type)
                .map(|d| d.as_str_name())
                .unwrap_or("unknown");
            EngineError::new(
                ErrorKind::Unsupported,
                format!("tensor {:?} has element type {name}", v.name),
            )
        })?)
    };
    let shape = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(DimValue::DimValue(n)) if n > 0 => Dim::Fixed(n as usize),
                _ => Dim::Dynamic,
            })
            .collect()
    });
    Ok(Declared {
        name: v.name.clone(),
        dtype,
        shape,
    })
}

struct DeclaredInfo {
    inputs: Vec<TensorSpec>,
    outputs: Vec<Declared>,
}

fn declared_info(graph: &pb::GraphProto) -> Result<DeclaredInfo> {
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut inputs = Vec::new();
    for v in graph
        .input
        .iter()
        .filter(|v| !initializers.contains(v.name.as_str()))
    {
        let d = declared(v)?;
        let missing = |kind, what: &str| {
            EngineError::new(kind, format!("input {:?} declares no {what}", v.name))
        };
        inputs.push(TensorSpec {
            dtype: d
                .dtype
                .ok_or_else(|| missing(ErrorKind::BadModel, "element type"))?,
            // Legal ONNX, but callers must know what to send.
            shape: d
                .shape
                .ok_or_else(|| missing(ErrorKind::Unsupported, "shape"))?,
            name: d.name,
        });
    }
    let outputs = graph.output.iter().map(declared).collect::<Result<_>>()?;
    Ok(DeclaredInfo { inputs, outputs })
}

/// Output metadata: the graph's declaration where it has one, tract's inference otherwise.
fn final_info(declared: DeclaredInfo, typed: &TypedModel) -> Result<ModelInfo> {
    let outlets = typed
        .output_outlets()
        .map_err(|e| classify("reading the outputs of", e))?;
    let mut outputs = Vec::new();
    for (d, outlet) in declared.outputs.into_iter().zip(outlets) {
        let fact = typed
            .outlet_fact(*outlet)
            .map_err(|e| classify("reading the outputs of", e))?;
        let dtype = match d.dtype.or_else(|| dtype_of_tract(fact.datum_type)) {
            Some(dt) => dt,
            None => {
                return Err(EngineError::new(
                    ErrorKind::Unsupported,
                    format!("output {:?} has element type {:?}", d.name, fact.datum_type),
                ))
            }
        };
        let shape = match d.shape {
            Some(s) if s.len() == fact.rank() => s,
            _ => fact
                .shape
                .iter()
                .map(|dim| dim.to_usize().map(Dim::Fixed).unwrap_or(Dim::Dynamic))
                .collect(),
        };
        outputs.push(TensorSpec {
            name: d.name,
            dtype,
            shape,
        });
    }
    Ok(ModelInfo {
        inputs: declared.inputs,
        outputs,
    })
}

// === the whole-model tree fast path ===

/// A model that is one tree ensemble over its single input, evaluated without tract.
#[derive(Clone)]
struct NativeTrees {
    ensemble: Arc<TreeEnsemble>,
    /// For each model output, which output of the ensemble it is (0: labels of a
    /// classifier, last: scores).
    slots: Vec<usize>,
}

fn native_trees(model: &TypedModel, info: &ModelInfo) -> Option<NativeTrees> {
    let inputs = model.input_outlets().ok()?;
    if inputs.len() != 1
        || model.nodes().len() != 2
        || !matches!(info.inputs[0].dtype, DType::F32 | DType::F64)
    {
        return None;
    }
    let node = model.nodes().iter().find(|n| n.op_is::<TreeEnsembleOp>())?;
    if node.inputs[..] != inputs[..] {
        return None;
    }
    let ensemble = node.op_as::<TreeEnsembleOp>()?.ensemble.clone();
    let mut slots = Vec::new();
    for (outlet, spec) in model.output_outlets().ok()?.iter().zip(&info.outputs) {
        if outlet.node != node.id {
            return None;
        }
        let is_scores = outlet.slot + 1 == node.outputs.len();
        let wanted = if is_scores { DType::F32 } else { DType::I64 };
        if spec.dtype != wanted
            || (!is_scores
                && !matches!(ensemble.labels(), Some(crate::tree::ClassLabels::Int64(_))))
        {
            return None;
        }
        slots.push(outlet.slot);
    }
    Some(NativeTrees { ensemble, slots })
}

// === sessions ===

struct TractFactory {
    info: ModelInfo,
    plan: Arc<TypedSimplePlan>,
    one_row: Option<Arc<TypedSimplePlan>>,
    native: Option<NativeTrees>,
    allow_non_finite: bool,
}

impl SessionFactory for TractFactory {
    fn new_session(&self) -> Result<Box<dyn Session>> {
        let runner = match &self.native {
            Some(trees) => Runner::Trees(TreeRunner {
                trees: trees.clone(),
                scratch: Scratch::default(),
                x32: Vec::new(),
                x64: Vec::new(),
                labels: Vec::new(),
                scores: Vec::new(),
            }),
            None => Runner::Plan(PlanRunner::new(&self.plan, self.one_row.as_ref())?),
        };
        Ok(Box::new(TractSession {
            info: self.info.clone(),
            allow_non_finite: self.allow_non_finite,
            runner,
        }))
    }
}

struct TractSession {
    info: ModelInfo,
    allow_non_finite: bool,
    runner: Runner,
}

enum Runner {
    Plan(PlanRunner),
    Trees(TreeRunner),
}

impl Session for TractSession {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn backend(&self) -> Backend {
        Backend::Tract
    }

    fn run(&mut self, inputs: &[TensorView<'_>], out: &mut Outputs) -> Result<()> {
        validate_inputs(&self.info, inputs, self.allow_non_finite)?;
        if out.tensors.len() != self.info.outputs.len() {
            *out = Outputs::for_model(&self.info);
        }
        let info = &self.info;
        match &mut self.runner {
            // The kernel is not expected to panic; if it ever does, the caller still gets an error.
            Runner::Trees(t) => catch_unwind(AssertUnwindSafe(|| t.run(info, inputs[0], out)))
                .unwrap_or_else(|panic| {
                    Err(EngineError::new(
                        ErrorKind::Runtime,
                        format!("the tree kernel panicked: {}", panic_message(&*panic)),
                    ))
                }),
            Runner::Plan(p) => p.run(info, inputs, out),
        }
    }
}

/// Runs the tract plans, keeping their states (and so their buffers) across calls.
struct PlanRunner {
    state: TypedSimpleState,
    /// For batches of one row, when the model has a dynamic batch (see [`one_row_plan`]).
    one_row: Option<TypedSimpleState>,
    /// The previous call's input tensors, refilled in place when the shape repeats.
    inputs: Vec<Option<Arc<Tensor>>>,
}

fn new_state(plan: &Arc<TypedSimplePlan>) -> Result<TypedSimpleState> {
    TypedSimpleState::new(plan).map_err(|e| {
        EngineError::new(
            ErrorKind::Runtime,
            format!("tract could not start a session: {e:#}"),
        )
    })
}

impl PlanRunner {
    fn new(
        plan: &Arc<TypedSimplePlan>,
        one_row: Option<&Arc<TypedSimplePlan>>,
    ) -> Result<PlanRunner> {
        Ok(PlanRunner {
            state: new_state(plan)?,
            one_row: one_row.map(new_state).transpose()?,
            inputs: Vec::new(),
        })
    }

    fn run(
        &mut self,
        info: &ModelInfo,
        inputs: &[TensorView<'_>],
        out: &mut Outputs,
    ) -> Result<()> {
        let runtime = |m: String| EngineError::new(ErrorKind::Runtime, m);
        self.inputs.resize(inputs.len(), None);
        let values = inputs
            .iter()
            .zip(&mut self.inputs)
            .map(|(v, slot)| input_value(slot, v))
            .collect::<TractResult<TVec<_>>>()
            .map_err(|e| runtime(format!("preparing the inputs: {e:#}")))?;
        let single = inputs.iter().all(|v| v.shape.first() == Some(&1));
        let state = match &mut self.one_row {
            Some(s) if single => s,
            _ => &mut self.state,
        };
        let result = catch_unwind(AssertUnwindSafe(|| state.run(values)));
        let values = match result {
            Ok(r) => r.map_err(|e| runtime(format!("tract failed: {e:#}")))?,
            Err(panic) => {
                // The state may be half-updated: start the next call from a fresh one.
                *state = new_state(&state.plan().clone())?;
                return Err(runtime(format!(
                    "tract panicked: {}",
                    panic_message(&*panic)
                )));
            }
        };
        for ((value, spec), tensor) in values.iter().zip(&info.outputs).zip(out.tensors.iter_mut())
        {
            write_output(value, spec.dtype, tensor)
                .map_err(|e| runtime(format!("output {:?}: {e:#}", spec.name)))?;
        }
        Ok(())
    }
}

/// The input as a tract value: last call's tensor refilled when tract has let go of it
/// and the shape repeats (no allocation in steady state), a new tensor otherwise.
fn input_value(slot: &mut Option<Arc<Tensor>>, v: &TensorView<'_>) -> TractResult<TValue> {
    if let Some(t) = slot.as_mut().and_then(Arc::get_mut) {
        if t.shape() == v.shape && t.datum_type() == tract_dt(v.dtype) {
            let bytes = t.as_bytes_mut();
            if v.dtype == DType::Bool {
                // Only 0 and 1 are valid `bool` bytes.
                for (o, &b) in bytes.iter_mut().zip(v.data) {
                    *o = (b != 0) as u8;
                }
            } else {
                // Wire bytes are little-endian, as tract's tensors are on the hosts we build for.
                bytes.copy_from_slice(v.data);
            }
            return Ok(TValue::from_const(slot.clone().expect("just borrowed")));
        }
    }
    let t = Arc::new(to_tensor(v)?);
    *slot = Some(t.clone());
    Ok(TValue::from_const(t))
}

/// Copies an input into a tract tensor, viewing the bytes in place when aligned.
fn to_tensor(v: &TensorView<'_>) -> TractResult<Tensor> {
    fn typed<T: Datum + bytemuck::Pod>(v: &TensorView<'_>) -> TractResult<Tensor> {
        match bytemuck::try_cast_slice::<u8, T>(v.data) {
            Ok(s) => Tensor::from_shape(v.shape, s),
            Err(_) => {
                let owned: Vec<T> = v
                    .data
                    .chunks_exact(size_of::<T>())
                    .map(bytemuck::pod_read_unaligned)
                    .collect();
                Tensor::from_shape(v.shape, &owned)
            }
        }
    }
    match v.dtype {
        DType::F32 => typed::<f32>(v),
        DType::F64 => typed::<f64>(v),
        DType::I64 => typed::<i64>(v),
        DType::I32 => typed::<i32>(v),
        DType::U8 => typed::<u8>(v),
        DType::Bool => {
            let b: Vec<bool> = v.data.iter().map(|&b| b != 0).collect();
            Tensor::from_shape(v.shape, &b)
        }
    }
}

/// Writes a tract output in the model's declared dtype.
fn write_output(value: &Tensor, dtype: DType, out: &mut OutputTensor) -> TractResult<()> {
    let cast = value.cast_to_dt(tract_dt(dtype))?;
    let buf = out.reset(dtype, cast.shape());
    if dtype == DType::Bool {
        let src = cast.try_as_plain_ram()?;
        for (o, &b) in buf.iter_mut().zip(src.as_slice::<bool>()?) {
            *o = b as u8;
        }
    } else {
        buf.copy_from_slice(cast.as_bytes());
    }
    Ok(())
}

/// Runs a whole-model tree ensemble straight from the caller's bytes.
struct TreeRunner {
    trees: NativeTrees,
    scratch: Scratch,
    /// Copies of the input, used only when the caller's bytes are misaligned.
    x32: Vec<f32>,
    x64: Vec<f64>,
    /// Outputs, used only when an output buffer is misaligned.
    labels: Vec<i64>,
    scores: Vec<f32>,
}

impl TreeRunner {
    fn run(&mut self, info: &ModelInfo, input: TensorView<'_>, out: &mut Outputs) -> Result<()> {
        let e = &self.trees.ensemble;
        let (n_rows, n_features) = match *input.shape {
            [f] => (1, f),
            [n, f] => (n, f),
            _ => {
                return Err(EngineError::new(
                    ErrorKind::BadInput,
                    "tree models take a rank-1 or rank-2 input",
                ))
            }
        };
        let rows = match input.dtype {
            DType::F32 => Rows::F32(view_or_copy(input.data, &mut self.x32)),
            DType::F64 => Rows::F64(view_or_copy(input.data, &mut self.x64)),
            other => {
                return Err(EngineError::new(
                    ErrorKind::BadInput,
                    format!("tree models take f32 or f64, got {other}"),
                ))
            }
        };
        let n_scores = e.n_scores();
        let label_slot = if e.is_classifier() {
            self.trees.slots.iter().position(|&s| s == 0)
        } else {
            None
        };
        let score_slot = self
            .trees
            .slots
            .iter()
            .position(|&s| s == usize::from(e.is_classifier()));

        // Work in place in the output buffers when they are aligned (they are: Vec<u8>
        // from the system allocator), through the scratch vectors otherwise.
        let mut labels_tmp = std::mem::take(&mut self.labels);
        let mut scores_tmp = std::mem::take(&mut self.scores);
        labels_tmp.clear();
        scores_tmp.clear();
        let mut dummy_labels = Vec::new();
        let result = {
            let (label_t, score_t) = split_two(&mut out.tensors, label_slot, score_slot);
            let labels: &mut [i64] = match label_t {
                Some(t) => aligned_or(t.reset(DType::I64, &[n_rows]), &mut labels_tmp, n_rows),
                None if e.is_classifier() => {
                    dummy_labels.resize(n_rows, 0);
                    &mut dummy_labels
                }
                None => &mut [],
            };
            let mut dummy_scores = Vec::new();
            let scores: &mut [f32] = match score_t {
                Some(t) => aligned_or(
                    t.reset(DType::F32, &[n_rows, n_scores]),
                    &mut scores_tmp,
                    n_rows * n_scores,
                ),
                None => {
                    dummy_scores.resize(n_rows * n_scores, 0.0);
                    &mut dummy_scores
                }
            };
            e.eval(rows, n_rows, n_features, labels, scores, &mut self.scratch)
        };
        result.map_err(|m| EngineError::new(ErrorKind::Runtime, m))?;
        if !labels_tmp.is_empty() {
            if let Some(i) = label_slot {
                out.tensors[i]
                    .data
                    .copy_from_slice(bytemuck::cast_slice(&labels_tmp));
            }
        }
        if !scores_tmp.is_empty() {
            if let Some(i) = score_slot {
                out.tensors[i]
                    .data
                    .copy_from_slice(bytemuck::cast_slice(&scores_tmp));
            }
        }
        self.labels = labels_tmp;
        self.scores = scores_tmp;
        debug_assert_eq!(out.tensors.len(), info.outputs.len());
        Ok(())
    }
}

/// Views little-endian bytes as `T` in place, or copies them when misaligned.
fn view_or_copy<'a, T: bytemuck::Pod>(data: &'a [u8], copy: &'a mut Vec<T>) -> &'a [T] {
    match bytemuck::try_cast_slice(data) {
        Ok(s) => s,
        Err(_) => {
            copy.clear();
            copy.extend(
                data.chunks_exact(size_of::<T>())
                    .map(bytemuck::pod_read_unaligned::<T>),
            );
            copy
        }
    }
}

/// Views an output byte buffer as `T`, or hands out `fallback` (copied back by the caller).
fn aligned_or<'a, T: bytemuck::Pod + Default>(
    buf: &'a mut [u8],
    fallback: &'a mut Vec<T>,
    n: usize,
) -> &'a mut [T] {
    match bytemuck::try_cast_slice_mut(buf) {
        Ok(s) => s,
        Err(_) => {
            fallback.resize(n, T::default());
            fallback
        }
    }
}

/// Two distinct elements of `v`, each optional.
fn split_two<T>(
    v: &mut [T],
    a: Option<usize>,
    b: Option<usize>,
) -> (Option<&mut T>, Option<&mut T>) {
    match (a, b) {
        (Some(a), Some(b)) if a < b => {
            let (lo, hi) = v.split_at_mut(b);
            (Some(&mut lo[a]), Some(&mut hi[0]))
        }
        (Some(a), Some(b)) if b < a => {
            let (lo, hi) = v.split_at_mut(a);
            (Some(&mut hi[0]), Some(&mut lo[b]))
        }
        (Some(a), None) => (v.get_mut(a), None),
        (None, Some(b)) => (None, v.get_mut(b)),
        _ => (None, None),
    }
}
