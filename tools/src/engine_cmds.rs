//! `edgeinfer doctor` and `edgeinfer bench-engine`: engine-side commands that need no daemon.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use edgeinfer_engine::{Dim, EngineChoice, LoadOptions, Outputs, TensorView};

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// ONNX Runtime library to check (default: ORT_DYLIB_PATH, then the places the daemon
    /// also searches: <checkout>/.cache/ort/, /usr/lib/edgeinfer/).
    #[arg(long)]
    pub ort_library: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct BenchEngineArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// tract, ort-cpu, ort-cuda or auto.
    #[arg(long, default_value = "auto")]
    pub engine: String,
    /// Rows per run (the model's batch dimension).
    #[arg(long, default_value_t = 1)]
    pub rows: usize,
    /// Timed runs, after a short untimed warm-up.
    #[arg(long, default_value_t = 1000)]
    pub iters: usize,
    #[arg(long)]
    pub json: bool,
    /// ONNX Runtime library (default: as for `doctor`).
    #[arg(long)]
    pub ort_library: Option<PathBuf>,
}

// === doctor ===

#[derive(serde::Serialize)]
struct Doctor {
    cores: Cores,
    gpu: edgeinfer_engine::GpuProbe,
    ort: edgeinfer_engine::OrtStatus,
    tract: Tract,
}

#[derive(serde::Serialize)]
struct Cores {
    allowed: Vec<usize>,
    error: Option<String>,
}

#[derive(serde::Serialize)]
struct Tract {
    version: &'static str,
    available: bool,
}

/// Reports what this machine offers. Findings are never errors: it exits 0 unless
/// stdout itself fails.
pub fn doctor(args: DoctorArgs) -> anyhow::Result<()> {
    let cores = match edgeinfer_engine::cores::allowed_cores() {
        Ok(allowed) => Cores {
            allowed,
            error: None,
        },
        Err(e) => Cores {
            allowed: Vec::new(),
            error: Some(e.to_string()),
        },
    };
    // NVML before ORT: a hung ORT load would hold the dynamic linker's lock that NVML's dlopen needs.
    let gpu = edgeinfer_engine::probe_gpus();
    let opts = LoadOptions {
        ort_library: args.ort_library,
        ..LoadOptions::default()
    };
    let ort = edgeinfer_engine::ort_status(&opts);
    let report = Doctor {
        cores,
        gpu,
        ort,
        tract: Tract {
            version: edgeinfer_engine::TRACT_VERSION,
            available: true,
        },
    };

    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_doctor_text(&mut out, &report)?;
    }
    out.flush()?;
    Ok(())
}

fn write_doctor_text(out: &mut impl Write, d: &Doctor) -> std::io::Result<()> {
    match &d.cores.error {
        None => writeln!(
            out,
            "cores:        {:?} ({} allowed)",
            d.cores.allowed,
            d.cores.allowed.len()
        )?,
        Some(e) => writeln!(out, "cores:        unknown: {e}")?,
    }
    if !d.gpu.nvml_available {
        writeln!(
            out,
            "gpu (NVML):   none: {}",
            d.gpu.error.as_deref().unwrap_or("unknown")
        )?;
    } else {
        writeln!(
            out,
            "gpu (NVML):   driver {}, {} GPU(s)",
            d.gpu.driver_version.as_deref().unwrap_or("?"),
            d.gpu.gpus.len()
        )?;
        for g in &d.gpu.gpus {
            writeln!(
                out,
                "  [{}] {}: {} / {} MiB free, {} util, {}{}",
                g.index,
                g.name,
                g.memory_free_bytes >> 20,
                g.memory_total_bytes >> 20,
                g.utilization_percent
                    .map_or("?".into(), |u| format!("{u}%")),
                g.temperature_c.map_or("?".into(), |t| format!("{t} °C")),
                g.problem
                    .as_ref()
                    .map_or(String::new(), |p| format!(" — unusable: {p}")),
            )?;
        }
        if let Some(e) = &d.gpu.error {
            writeln!(out, "  {e}")?;
        }
    }
    match (&d.ort.version, &d.ort.error) {
        (Some(v), _) => writeln!(
            out,
            "onnxruntime:  {v} at {} (CUDA provider {})",
            d.ort
                .path
                .as_ref()
                .map_or("?".into(), |p| p.display().to_string()),
            match d.ort.cuda_provider_built {
                Some(true) => "built in",
                Some(false) => "not built in",
                None => "unknown",
            }
        )?,
        (None, e) => writeln!(
            out,
            "onnxruntime:  unavailable (need {}.x): {}",
            d.ort.expected_version,
            e.as_deref().unwrap_or("unknown")
        )?,
    }
    writeln!(
        out,
        "tract:        tract-onnx {} (always available)",
        d.tract.version
    )
}

// === bench-engine ===

#[derive(serde::Serialize)]
struct BenchResult {
    /// The backend that ran (for `auto`, the one it chose).
    engine: &'static str,
    requested: String,
    model: String,
    rows: usize,
    iters: usize,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    choice: Option<edgeinfer_engine::LoadReport>,
}

/// Time one model in-process on one engine, on deterministic pseudo-random inputs.
pub fn bench_engine(args: BenchEngineArgs) -> anyhow::Result<()> {
    let engine: EngineChoice = args.engine.parse().map_err(anyhow::Error::msg)?;
    if args.rows == 0 || args.iters == 0 {
        bail!("--rows and --iters must be at least 1");
    }
    let bytes =
        std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let opts = LoadOptions {
        engine,
        ort_library: args.ort_library.clone(),
        ..LoadOptions::default()
    };
    let model = edgeinfer_engine::load_model(&bytes, &opts)
        .with_context(|| format!("loading {} on {}", args.model.display(), args.engine))?;
    for spec in &model.info.inputs {
        if let Some(Dim::Fixed(n)) = spec.shape.first() {
            if *n != args.rows {
                bail!(
                    "input {:?} has a fixed batch of {n}; run with --rows {n}",
                    spec.name
                );
            }
        }
    }

    let inputs = edgeinfer_engine::synth_inputs(&model.info, args.rows, 42);
    let views: Vec<TensorView<'_>> = inputs.iter().map(|t| t.view()).collect();
    let mut session = model.new_session().context("creating a session")?;
    let mut outputs = Outputs::for_model(&model.info);
    for _ in 0..(args.iters / 10).clamp(1, 100) {
        session.run(&views, &mut outputs).context("warm-up run")?;
    }
    // Nanoseconds, 3 significant figures, up to a minute per run.
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for _ in 0..args.iters {
        let t = Instant::now();
        session.run(&views, &mut outputs).context("timed run")?;
        hist.saturating_record(t.elapsed().as_nanos().max(1) as u64);
    }

    let result = BenchResult {
        engine: model.backend().name(),
        requested: args.engine.clone(),
        model: args.model.display().to_string(),
        rows: args.rows,
        iters: args.iters,
        p50_us: hist.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1e3,
        // Nanosecond resolution is all a mean of nanosecond samples carries.
        mean_us: hist.mean().round() / 1e3,
        choice: (engine == EngineChoice::Auto).then(|| model.report.clone()),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &result)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{} on {} ({} row(s), {} iters): p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs",
            result.model,
            result.engine,
            result.rows,
            result.iters,
            result.p50_us,
            result.p99_us,
            result.mean_us
        )?;
        if let Some(choice) = &result.choice {
            writeln!(out, "auto chose {}: {}", choice.backend, choice.reason)?;
            for c in &choice.candidates {
                writeln!(
                    out,
                    "  candidate {}: p50 {:.1} µs{}",
                    c.backend,
                    c.p50_us,
                    if c.matches_reference {
                        ""
                    } else {
                        " (mismatch)"
                    }
                )?;
            }
            for f in &choice.fallbacks {
                writeln!(out, "  fallback {}: {}", f.backend, f.reason)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
