//! In-process latency of the tract backend (our tree kernel in place of tract's tree
//! ops) against stock tract-onnx and ONNX Runtime on CPU, on every committed fixture,
//! at 1 and 64 rows. All three are measured in the same run, so the ratios hold on
//! any machine.
//!
//! `cargo bench -p edgeinfer-engine --bench tract_trees` (a `harness = false` bench).
//! `ORT_DYLIB_PATH` enables the ORT column; `BENCH_MODELS` overrides the model directory.
//! Stock tract runs twice: with the batch fixed to the measured size (its fastest
//! configuration, but one compiled plan per batch size) and with a dynamic batch (what
//! serving variable batches needs, and what our backend compiles).

// Under the default libtest harness `main` is not the entry point; nothing here is a test.
#![cfg_attr(test, allow(dead_code))]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgeinfer_engine::{
    load_model, synth_inputs, DType, Dim, EngineChoice, InputTensor, LoadOptions, ModelInfo,
    Outputs, TensorView,
};
use tract_onnx::prelude::*;

const ROWS: [usize; 2] = [1, 64];
/// Each measurement runs for about this long after warming up.
const BUDGET: Duration = Duration::from_millis(400);

fn main() {
    let dir = std::env::var_os("BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models"));
    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    models.sort();
    let ort = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if ort.is_none() {
        eprintln!("ORT_DYLIB_PATH is not set: no ONNX Runtime column");
    }

    println!(
        "| model | rows | tract+trees | stock tract, fixed batch | stock tract, dynamic batch | ORT CPU | vs ORT | vs stock fixed | vs stock dynamic |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for path in &models {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(path).unwrap();
        let ours = match load_model(&bytes, &opts(EngineChoice::Tract, None)) {
            Ok(m) => m,
            Err(e) => {
                println!(
                    "| {name} | – | refused ({:?}: {}) | | | | | | |",
                    e.kind,
                    one_line(&e.message)
                );
                continue;
            }
        };
        let ort_model = ort
            .as_ref()
            .map(|lib| load_model(&bytes, &opts(EngineChoice::OrtCpu, Some(lib.clone()))));
        for rows in ROWS {
            if !batch_fits(&ours.info, rows) {
                continue;
            }
            let inputs = synth_inputs(&ours.info, rows, 42);
            let ours_us = time_engine(&ours, &inputs);
            let fixed_us = time_stock_tract(&bytes, &ours.info, &inputs, false);
            let dynamic_us = time_stock_tract(&bytes, &ours.info, &inputs, true);
            let ort_us = match &ort_model {
                Some(Ok(m)) => Ok(time_engine(m, &inputs)),
                Some(Err(e)) => Err(format!("{:?}", e.kind)),
                None => Err("n/a".into()),
            };
            let cell = |r: &Result<f64, String>| match r {
                Ok(us) => format!("{us:.2} µs"),
                Err(why) => why.clone(),
            };
            let ratio = |r: &Result<f64, String>| match r {
                Ok(us) if ours_us / us < 0.1 => format!("1/{:.0}", us / ours_us),
                Ok(us) => format!("{:.2}×", ours_us / us),
                Err(_) => "–".into(),
            };
            println!(
                "| {name} | {rows} | {ours_us:.2} µs | {} | {} | {} | {} | {} | {} |",
                cell(&fixed_us),
                cell(&dynamic_us),
                cell(&ort_us),
                ratio(&ort_us),
                ratio(&fixed_us),
                ratio(&dynamic_us)
            );
        }
    }
}

fn opts(engine: EngineChoice, ort_library: Option<PathBuf>) -> LoadOptions {
    LoadOptions {
        engine,
        ort_library,
        ..LoadOptions::default()
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(100).collect()
}

fn batch_fits(info: &ModelInfo, rows: usize) -> bool {
    info.inputs.iter().all(|i| match i.shape.first() {
        Some(Dim::Fixed(n)) => *n == rows,
        _ => true,
    })
}

/// Median of per-call times of `f`, in µs.
fn median_us(mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < BUDGET / 4 {
        f();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < BUDGET || times.len() < 20 {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn time_engine(model: &edgeinfer_engine::Model, inputs: &[InputTensor]) -> f64 {
    let views: Vec<TensorView<'_>> = inputs.iter().map(|t| t.view()).collect();
    let mut session = model.new_session().unwrap();
    let mut out = Outputs::for_model(&model.info);
    median_us(|| session.run(&views, &mut out).unwrap())
}

/// Stock tract-onnx as a user would run it: its own op registry, one reused state,
/// inputs already in tract tensors; the batch dimension fixed, or a symbol.
fn time_stock_tract(
    bytes: &[u8],
    info: &ModelInfo,
    inputs: &[InputTensor],
    dynamic_batch: bool,
) -> Result<f64, String> {
    let run = || -> TractResult<f64> {
        let mut model = tract_onnx::onnx().model_for_read(&mut &bytes[..])?;
        let mut values = TVec::new();
        for (ix, (spec, input)) in info.inputs.iter().zip(inputs).enumerate() {
            let view = input.view();
            let tensor = to_tensor(spec.dtype, view.shape, view.data)?;
            let mut shape: TVec<TDim> = tensor.shape().iter().map(|d| d.to_dim()).collect();
            if dynamic_batch && spec.shape.first() == Some(&Dim::Dynamic) {
                shape[0] = model.symbols.sym("batch").to_dim();
            }
            model.set_input_fact(ix, InferenceFact::dt_shape(tensor.datum_type(), shape))?;
            values.push(tensor.into_tvalue());
        }
        let plan = model.into_optimized()?.into_runnable()?;
        let mut state = TypedSimpleState::new(&plan)?;
        state.run(values.clone())?;
        Ok(median_us(|| {
            state.run(values.clone()).unwrap();
        }))
    };
    run().map_err(|e| format!("refused: {}", one_line(&format!("{e:#}"))))
}

fn to_tensor(dtype: DType, shape: &[usize], data: &[u8]) -> TractResult<Tensor> {
    fn typed<T: Datum + bytemuck::Pod>(shape: &[usize], data: &[u8]) -> TractResult<Tensor> {
        let v: Vec<T> = data
            .chunks_exact(size_of::<T>())
            .map(bytemuck::pod_read_unaligned)
            .collect();
        Tensor::from_shape(shape, &v)
    }
    match dtype {
        DType::F32 => typed::<f32>(shape, data),
        DType::F64 => typed::<f64>(shape, data),
        DType::I64 => typed::<i64>(shape, data),
        DType::I32 => typed::<i32>(shape, data),
        DType::U8 => typed::<u8>(shape, data),
        DType::Bool => {
            Tensor::from_shape(shape, &data.iter().map(|&b| b != 0).collect::<Vec<bool>>())
        }
    }
}
