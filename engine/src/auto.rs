//! Choosing where a model runs: an explicit engine, or `engine = "auto"`, which loads
//! every available backend, runs each on a synthesised sample input, and keeps the
//! fastest one whose outputs match the reference (ONNX Runtime on CPU when present).
//!
//! Every backend that is skipped leaves a [`Fallback`] with its reason in the
//! [`LoadReport`] and a `warn!` in the log: no fallback is silent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gpu::{plan_gpu, settle_cuda_registration, GpuPlan, GpuProbe};
use crate::{
    ort_engine, tract_engine, Backend, Candidate, DType, Dim, EngineChoice, EngineError, ErrorKind,
    Fallback, GpuPolicy, LoadOptions, LoadReport, Model, ModelInfo, Outputs, Result,
    SessionFactory, TensorView,
};

/// Relative and absolute tolerance when comparing float outputs across backends.
pub const OUTPUT_TOLERANCE: f64 = 1e-4;

/// Timed runs per candidate are capped by count and by wall time, so a slow backend
/// (tract on a big forest, a CNN) cannot stall a model load.
const MAX_TIMED_RUNS: usize = 25;
const MIN_TIMED_RUNS: usize = 3;
const TIMING_BUDGET: Duration = Duration::from_millis(150);

/// An owned input tensor, for sample and benchmark inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

impl InputTensor {
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            dtype: self.dtype,
            shape: &self.shape,
            data: &self.data,
        }
    }
}

/// Deterministic inputs for `info`: `batch` for a dynamic leading dimension, 1 for
/// any other dynamic dimension, and small pseudo-random values per dtype (floats in
/// [-1, 1), integers in 0..4, bools 0/1, bytes 0..=255). The same `seed` gives the
/// same bytes on every machine.
pub fn synth_inputs(info: &ModelInfo, batch: usize, seed: u64) -> Vec<InputTensor> {
    let mut rng = SplitMix64(seed);
    info.inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Dynamic if i == 0 => batch,
                    Dim::Dynamic => 1,
                })
                .collect();
            let n: usize = shape.iter().product();
            let mut data = Vec::with_capacity(n * spec.dtype.size());
            for _ in 0..n {
                let r = rng.next();
                match spec.dtype {
                    DType::F32 => data.extend_from_slice(&(unit(r) as f32).to_le_bytes()),
                    DType::F64 => data.extend_from_slice(&unit(r).to_le_bytes()),
                    DType::I64 => data.extend_from_slice(&((r % 4) as i64).to_le_bytes()),
                    DType::I32 => data.extend_from_slice(&((r % 4) as i32).to_le_bytes()),
                    DType::U8 => data.push(r as u8),
                    DType::Bool => data.push((r & 1) as u8),
                }
            }
            InputTensor {
                name: spec.name.clone(),
                dtype: spec.dtype,
                shape,
                data,
            }
        })
        .collect()
}

/// A value in [-1, 1) from 53 random bits.
fn unit(r: u64) -> f64 {
    (r >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Whether two output sets agree: same names and shapes, integer and bool outputs
/// (labels) exactly, floats within [`OUTPUT_TOLERANCE`] absolute or relative.
/// The error says where they first differ.
pub fn compare_outputs(reference: &Outputs, other: &Outputs) -> std::result::Result<(), String> {
    for want in &reference.tensors {
        let Some(got) = other.get(&want.name) else {
            return Err(format!("no output named {:?}", want.name));
        };
        if got.shape != want.shape {
            return Err(format!(
                "output {:?} has shape {:?}, reference {:?}",
                want.name, got.shape, want.shape
            ));
        }
        let exact = !matches!(want.dtype, Some(DType::F32 | DType::F64))
            && !matches!(got.dtype, Some(DType::F32 | DType::F64));
        for (i, (a, b)) in want
            .to_f64_vec()
            .into_iter()
            .zip(got.to_f64_vec())
            .enumerate()
        {
            let ok = if exact {
                a == b
            } else {
                let diff = (a - b).abs();
                diff <= OUTPUT_TOLERANCE
                    || diff <= OUTPUT_TOLERANCE * a.abs().max(b.abs())
                    || (a.is_nan() && b.is_nan())
            };
            if !ok {
                return Err(format!("output {:?}[{i}] is {b}, reference {a}", want.name));
            }
        }
    }
    Ok(())
}

// === loading ===

/// A backend that loaded the model.
struct Loaded {
    backend: Backend,
    info: ModelInfo,
    factory: Arc<dyn SessionFactory>,
}

fn record(fallbacks: &mut Vec<Fallback>, backend: Backend, reason: String) {
    tracing::warn!(backend = %backend, %reason, "engine fallback");
    fallbacks.push(Fallback { backend, reason });
}

/// Load `model_bytes` as `opts` asks, deciding about the GPU from `gpu` (the daemon
/// probes once and reuses the probe for every model; tests pass a described GPU).
pub fn load_model_with_probe(
    model_bytes: &[u8],
    opts: &LoadOptions,
    gpu: &GpuProbe,
) -> Result<Model> {
    load_model_on_samples(model_bytes, opts, gpu, &[])
}

/// [`load_model_with_probe`], where `engine = "auto"` decides on `samples` (each a full set
/// of model inputs, e.g. a release's golden samples at 1 and at 64 rows) instead of one
/// synthesised row: every candidate must match the reference on each set, and the fastest
/// by the sum of its per-set p50s wins. Empty `samples`: the synthesised row.
pub fn load_model_on_samples(
    model_bytes: &[u8],
    opts: &LoadOptions,
    gpu: &GpuProbe,
    samples: &[Vec<InputTensor>],
) -> Result<Model> {
    let mut fallbacks = Vec::new();
    if opts.gpu == GpuPolicy::Required
        && matches!(opts.engine, EngineChoice::Tract | EngineChoice::OrtCpu)
    {
        let engine = if opts.engine == EngineChoice::Tract {
            Backend::Tract
        } else {
            Backend::OrtCpu
        };
        return Err(EngineError::new(
            ErrorKind::GpuUnavailable,
            format!("gpu = \"required\" but engine = \"{engine}\" never runs on a GPU"),
        ));
    }
    match opts.engine {
        EngineChoice::Tract => {
            let (info, factory) = tract_engine::load_tract(model_bytes, opts)?;
            let report = LoadReport {
                backend: Backend::Tract,
                reason: "engine = \"tract\"".into(),
                fallbacks,
                candidates: Vec::new(),
            };
            Ok(Model::new(info, report, factory))
        }
        EngineChoice::OrtCpu => {
            let (info, factory) = ort_engine::load_ort(model_bytes, opts, None)?;
            let report = LoadReport {
                backend: Backend::OrtCpu,
                reason: "engine = \"ort-cpu\"".into(),
                fallbacks,
                candidates: Vec::new(),
            };
            Ok(Model::new(info, report, factory))
        }
        EngineChoice::OrtCuda => {
            let loads = load_ort_backends(model_bytes, opts, gpu, false, &mut fallbacks)?;
            let (chosen, reason) = match (loads.cuda, loads.cpu) {
                (Some(cuda), _) => (cuda, "engine = \"ort-cuda\"".to_string()),
                (None, Some(cpu)) => (
                    cpu,
                    "engine = \"ort-cuda\", on CPU: CUDA is not usable here".to_string(),
                ),
                (None, None) => {
                    return Err(EngineError::new(
                        ErrorKind::Runtime,
                        "ONNX Runtime loaded the model on no provider",
                    ))
                }
            };
            let report = LoadReport {
                backend: chosen.backend,
                reason,
                fallbacks,
                candidates: Vec::new(),
            };
            Ok(Model::new(chosen.info, report, chosen.factory))
        }
        EngineChoice::Auto => load_auto(model_bytes, opts, gpu, fallbacks, samples),
    }
}

struct OrtLoads {
    cuda: Option<Loaded>,
    cpu: Option<Loaded>,
}

/// Load on ONNX Runtime under the GPU policy. `want_cpu` also loads the CPU provider
/// when CUDA works (auto compares them). Errors: the library is unavailable, the GPU is
/// required and unusable, or ORT cannot load the model at all.
fn load_ort_backends(
    model_bytes: &[u8],
    opts: &LoadOptions,
    gpu: &GpuProbe,
    want_cpu: bool,
    fallbacks: &mut Vec<Fallback>,
) -> Result<OrtLoads> {
    // Fail on a missing library before saying anything about GPUs.
    ort_engine::runtime(opts)?;
    let mut loads = OrtLoads {
        cuda: None,
        cpu: None,
    };
    let cpu = |loaded: (ModelInfo, Arc<dyn SessionFactory>)| Loaded {
        backend: Backend::OrtCpu,
        info: loaded.0,
        factory: loaded.1,
    };
    let plan = match (opts.engine, opts.gpu) {
        // In auto mode "never" simply means CUDA is not a candidate; that is no fallback.
        (EngineChoice::Auto, GpuPolicy::Never) => None,
        (_, GpuPolicy::Never) => Some(GpuPlan::Cpu {
            reason: Some("gpu = \"never\"".into()),
        }),
        _ => Some(plan_gpu(opts.gpu, gpu)?),
    };
    match plan {
        None | Some(GpuPlan::Cpu { reason: None }) => {}
        Some(GpuPlan::Cpu {
            reason: Some(reason),
        }) => record(fallbacks, Backend::OrtCuda, reason),
        Some(GpuPlan::TryCuda { device }) => {
            match ort_engine::load_ort(model_bytes, opts, Some(device)) {
                Ok((info, factory)) => {
                    loads.cuda = Some(Loaded {
                        backend: Backend::OrtCuda,
                        info,
                        factory,
                    })
                }
                Err(cuda_err) => {
                    // Tell "the provider would not register" from "ORT cannot load this model":
                    // only the first leaves the CPU provider working.
                    let on_cpu = ort_engine::load_ort(model_bytes, opts, None)?;
                    if let Some(reason) = settle_cuda_registration(opts.gpu, Err(cuda_err.message))?
                    {
                        record(fallbacks, Backend::OrtCuda, reason);
                    }
                    loads.cpu = Some(cpu(on_cpu));
                }
            }
        }
    }
    if loads.cpu.is_none() && (loads.cuda.is_none() || want_cpu) {
        loads.cpu = Some(cpu(ort_engine::load_ort(model_bytes, opts, None)?));
    }
    Ok(loads)
}

fn load_auto(
    model_bytes: &[u8],
    opts: &LoadOptions,
    gpu: &GpuProbe,
    mut fallbacks: Vec<Fallback>,
    samples: &[Vec<InputTensor>],
) -> Result<Model> {
    let gpu_only = opts.gpu == GpuPolicy::Required;
    let mut loaded: Vec<Loaded> = Vec::new();
    let mut errors: Vec<(Backend, EngineError)> = Vec::new();

    match load_ort_backends(model_bytes, opts, gpu, !gpu_only, &mut fallbacks) {
        Ok(loads) => {
            loaded.extend(loads.cuda);
            loaded.extend(loads.cpu);
        }
        // "required" with no usable GPU refuses outright: no CPU engine may serve it.
        Err(e) if e.kind == ErrorKind::GpuUnavailable => return Err(e),
        Err(e) if gpu_only => {
            return Err(EngineError::new(
                ErrorKind::GpuUnavailable,
                format!("gpu = \"required\" needs ONNX Runtime: {}", e.message),
            ))
        }
        Err(e) => {
            record(&mut fallbacks, Backend::OrtCpu, e.message.clone());
            errors.push((Backend::OrtCpu, e));
        }
    }
    if !gpu_only {
        match tract_engine::load_tract(model_bytes, opts) {
            Ok((info, factory)) => loaded.push(Loaded {
                backend: Backend::Tract,
                info,
                factory,
            }),
            Err(e) => {
                record(&mut fallbacks, Backend::Tract, e.message.clone());
                errors.push((Backend::Tract, e));
            }
        }
    }

    if loaded.is_empty() {
        // Prefer an error about the model over "the library is missing".
        let kind = errors
            .iter()
            .map(|(_, e)| e.kind)
            .find(|k| *k != ErrorKind::LibraryUnavailable)
            .unwrap_or(ErrorKind::LibraryUnavailable);
        let detail: Vec<String> = errors
            .iter()
            .map(|(b, e)| format!("{b}: {}", e.message))
            .collect();
        return Err(EngineError::new(
            kind,
            format!("no engine can load the model: {}", detail.join("; ")),
        ));
    }
    if loaded.len() == 1 {
        let only = loaded.pop().expect("one loaded backend");
        let reason = if fallbacks.is_empty() {
            format!("{}: the only engine available", only.backend)
        } else {
            let why: Vec<String> = fallbacks
                .iter()
                .map(|f| format!("{}: {}", f.backend, f.reason))
                .collect();
            format!(
                "{}: the only engine that loaded the model ({})",
                only.backend,
                why.join("; ")
            )
        };
        let report = LoadReport {
            backend: only.backend,
            reason,
            fallbacks,
            candidates: Vec::new(),
        };
        return Ok(Model::new(only.info, report, only.factory));
    }
    choose_fastest(loaded, fallbacks, samples)
}

/// What running one candidate on the sample inputs gave (one output set per input set).
struct Trial {
    outputs: Vec<Outputs>,
    p50_us: f64,
}

fn trial(loaded: &Loaded, samples: &[Vec<InputTensor>]) -> Result<Trial> {
    let synth;
    let sets = if samples.is_empty() {
        synth = [synth_inputs(&loaded.info, 1, 0x5eed)];
        &synth[..]
    } else {
        samples
    };
    let mut session = loaded.factory.new_session()?;
    let mut trial = Trial {
        outputs: Vec::with_capacity(sets.len()),
        p50_us: 0.0,
    };
    for inputs in sets {
        let (outputs, p50_us) = time_runs(loaded, session.as_mut(), inputs)?;
        trial.outputs.push(outputs);
        trial.p50_us += p50_us;
    }
    Ok(trial)
}

/// The outputs of one untimed run on `inputs`, then the p50 of the timed runs.
fn time_runs(
    loaded: &Loaded,
    session: &mut dyn crate::Session,
    inputs: &[InputTensor],
) -> Result<(Outputs, f64)> {
    let views: Vec<TensorView<'_>> = inputs.iter().map(InputTensor::view).collect();
    let mut outputs = Outputs::for_model(&loaded.info);
    // The first run also pays for lazy initialisation; it is not timed.
    session.run(&views, &mut outputs)?;
    let mut scratch = Outputs::for_model(&loaded.info);
    let mut times = Vec::with_capacity(MAX_TIMED_RUNS);
    let started = Instant::now();
    while times.len() < MIN_TIMED_RUNS
        || (times.len() < MAX_TIMED_RUNS && started.elapsed() < TIMING_BUDGET)
    {
        let t = Instant::now();
        session.run(&views, &mut scratch)?;
        times.push(t.elapsed());
    }
    times.sort();
    let p50_us = times[times.len() / 2].as_secs_f64() * 1e6;
    Ok((outputs, p50_us))
}

/// The rule of `auto`: the lowest p50 among the candidates whose outputs matched the
/// reference; on a tie, the first listed (ORT's CUDA, then CPU, then tract).
fn fastest_matching(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .filter(|c| c.matches_reference)
        .reduce(|best, c| if c.p50_us < best.p50_us { c } else { best })
}

fn choose_fastest(
    loaded: Vec<Loaded>,
    mut fallbacks: Vec<Fallback>,
    samples: &[Vec<InputTensor>],
) -> Result<Model> {
    let trials: Vec<Result<Trial>> = loaded.iter().map(|l| trial(l, samples)).collect();
    // ONNX Runtime on CPU is the reference implementation; without it, the first that ran.
    let reference = loaded
        .iter()
        .zip(&trials)
        .position(|(l, t)| l.backend == Backend::OrtCpu && t.is_ok())
        .or_else(|| trials.iter().position(Result::is_ok));

    let Some(reference) = reference else {
        for (l, t) in loaded.iter().zip(&trials) {
            if let Err(e) = t {
                record(
                    &mut fallbacks,
                    l.backend,
                    format!("could not run the sample input: {}", e.message),
                );
            }
        }
        let first = loaded
            .into_iter()
            .next()
            .expect("at least two loaded backends");
        let reason = format!(
            "{}: no engine ran the sample input, kept by preference",
            first.backend
        );
        let report = LoadReport {
            backend: first.backend,
            reason,
            fallbacks,
            candidates: Vec::new(),
        };
        return Ok(Model::new(first.info, report, first.factory));
    };
    let reference_outputs = &trials[reference].as_ref().expect("reference ran").outputs;
    let reference_backend = loaded[reference].backend;

    let mut candidates = Vec::new();
    for (l, t) in loaded.iter().zip(&trials) {
        match t {
            Err(e) => record(
                &mut fallbacks,
                l.backend,
                format!("could not run the sample input: {}", e.message),
            ),
            Ok(t) => {
                let matches = reference_outputs
                    .iter()
                    .zip(&t.outputs)
                    .try_for_each(|(r, o)| compare_outputs(r, o));
                if let Err(why) = &matches {
                    record(
                        &mut fallbacks,
                        l.backend,
                        format!(
                            "outputs differ from {reference_backend} on the sample input: {why}"
                        ),
                    );
                }
                candidates.push(Candidate {
                    backend: l.backend,
                    p50_us: t.p50_us,
                    matches_reference: matches.is_ok(),
                });
            }
        }
    }
    let best = fastest_matching(&candidates)
        .expect("the reference matches itself")
        .clone();
    let others: Vec<String> = candidates
        .iter()
        .filter(|c| c.backend != best.backend)
        .map(|c| {
            format!(
                "{} {}{}",
                c.backend,
                fmt_us(c.p50_us),
                if c.matches_reference {
                    ""
                } else {
                    ", mismatched"
                }
            )
        })
        .collect();
    let reason = if others.is_empty() {
        format!(
            "{}: the only engine that matched ({})",
            best.backend,
            fmt_us(best.p50_us)
        )
    } else {
        format!(
            "{}: fastest matching ({} vs {})",
            best.backend,
            fmt_us(best.p50_us),
            others.join(", ")
        )
    };
    let reason = if samples.is_empty() {
        reason
    } else {
        let rows: Vec<String> = samples
            .iter()
            .map(|s| {
                s.first()
                    .and_then(|t| t.shape.first())
                    .copied()
                    .unwrap_or(0)
                    .to_string()
            })
            .collect();
        format!(
            "{reason}, on the given samples at {} rows",
            rows.join(" and ")
        )
    };
    tracing::info!(backend = %best.backend, %reason, "engine chosen");
    let chosen = loaded
        .into_iter()
        .find(|l| l.backend == best.backend)
        .expect("the best candidate loaded");
    let report = LoadReport {
        backend: chosen.backend,
        reason,
        fallbacks,
        candidates,
    };
    Ok(Model::new(chosen.info, report, chosen.factory))
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OutputTensor, TensorSpec};

    fn cand(backend: Backend, p50_us: f64, matches_reference: bool) -> Candidate {
        Candidate {
            backend,
            p50_us,
            matches_reference,
        }
    }

    /// Each table's winner is written down by hand, not recomputed.
    #[test]
    fn auto_keeps_the_fastest_candidate_that_matched() {
        use Backend::{OrtCpu, OrtCuda, Tract};
        let winner = |c: &[Candidate]| fastest_matching(c).map(|c| c.backend);
        assert_eq!(
            winner(&[cand(OrtCpu, 12.0, true), cand(Tract, 3.5, true)]),
            Some(Tract)
        );
        assert_eq!(
            winner(&[cand(OrtCpu, 2.0, true), cand(Tract, 3.5, true)]),
            Some(OrtCpu)
        );
        // The fastest gave different answers: it is out.
        assert_eq!(
            winner(&[cand(OrtCpu, 12.0, true), cand(Tract, 1.0, false)]),
            Some(OrtCpu)
        );
        assert_eq!(
            winner(&[
                cand(OrtCuda, 40.0, true),
                cand(OrtCpu, 9.0, true),
                cand(Tract, 8.0, false)
            ]),
            Some(OrtCpu)
        );
        // A tie keeps the first listed.
        assert_eq!(
            winner(&[cand(OrtCpu, 5.0, true), cand(Tract, 5.0, true)]),
            Some(OrtCpu)
        );
        assert_eq!(winner(&[cand(Tract, 5.0, false)]), None);
        assert_eq!(winner(&[]), None);
    }

    fn spec(name: &str, dtype: DType, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
        }
    }

    #[test]
    fn sample_inputs_follow_the_declaration_and_are_deterministic() {
        let info = ModelInfo {
            inputs: vec![
                spec("x", DType::F32, vec![Dim::Dynamic, Dim::Fixed(20)]),
                spec("ids", DType::I64, vec![Dim::Dynamic, Dim::Dynamic]),
                spec("mask", DType::Bool, vec![Dim::Fixed(2)]),
                spec(
                    "img",
                    DType::U8,
                    vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(4), Dim::Fixed(4)],
                ),
            ],
            outputs: vec![],
        };
        let a = synth_inputs(&info, 8, 1);
        assert_eq!(a[0].shape, vec![8, 20]);
        assert_eq!(a[0].data.len(), 8 * 20 * 4);
        assert_eq!(a[1].shape, vec![8, 1]);
        assert_eq!(a[2].shape, vec![2]);
        assert!(a[2].data.iter().all(|&b| b <= 1));
        assert_eq!(a[3].shape, vec![1, 3, 4, 4]);
        let floats: Vec<f32> = a[0]
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(floats.iter().all(|v| (-1.0..1.0).contains(v)));
        assert!(floats.iter().any(|v| *v != floats[0]), "values vary");
        assert_eq!(synth_inputs(&info, 8, 1), a);
        assert_ne!(synth_inputs(&info, 8, 2), a);
        // Every view is well formed.
        for t in &a {
            TensorView::new(t.dtype, &t.shape, &t.data).unwrap();
        }
    }

    fn out(name: &str, dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> OutputTensor {
        OutputTensor {
            name: name.into(),
            dtype: Some(dtype),
            shape,
            data,
        }
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn labels_compare_exactly_and_floats_within_tolerance() {
        let reference = Outputs {
            tensors: vec![
                out(
                    "label",
                    DType::I64,
                    vec![2],
                    [1i64, 0].iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                out(
                    "probabilities",
                    DType::F32,
                    vec![2, 2],
                    f32s(&[0.25, 0.75, 0.9, 0.1]),
                ),
            ],
        };
        let mut close = reference.clone();
        close.tensors[1].data = f32s(&[0.25005, 0.74995, 0.9, 0.1]);
        assert_eq!(compare_outputs(&reference, &close), Ok(()));

        let mut far = reference.clone();
        far.tensors[1].data = f32s(&[0.2505, 0.7495, 0.9, 0.1]);
        let why = compare_outputs(&reference, &far).unwrap_err();
        assert!(why.contains("\"probabilities\"[0]"), "{why}");

        let mut wrong_label = reference.clone();
        wrong_label.tensors[0].data = [1i64, 1].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert!(compare_outputs(&reference, &wrong_label)
            .unwrap_err()
            .contains("\"label\"[1]"));

        let mut reshaped = reference.clone();
        reshaped.tensors[1].shape = vec![4];
        assert!(compare_outputs(&reference, &reshaped)
            .unwrap_err()
            .contains("shape"));

        let mut missing = reference.clone();
        missing.tensors.pop();
        assert!(compare_outputs(&reference, &missing)
            .unwrap_err()
            .contains("no output named"));
    }

    #[test]
    fn large_floats_compare_relatively() {
        let a = Outputs {
            tensors: vec![out(
                "y",
                DType::F64,
                vec![1],
                123456.0f64.to_le_bytes().to_vec(),
            )],
        };
        let b = Outputs {
            tensors: vec![out(
                "y",
                DType::F64,
                vec![1],
                123460.0f64.to_le_bytes().to_vec(),
            )],
        };
        let c = Outputs {
            tensors: vec![out(
                "y",
                DType::F64,
                vec![1],
                123500.0f64.to_le_bytes().to_vec(),
            )],
        };
        assert_eq!(compare_outputs(&a, &b), Ok(()));
        assert!(compare_outputs(&a, &c).is_err());
    }

    #[test]
    fn microseconds_format_for_humans() {
        assert_eq!(fmt_us(6.14), "6.1 µs");
        assert_eq!(fmt_us(7612.0), "7.61 ms");
    }
}
