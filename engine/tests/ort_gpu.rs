//! The GPU policy end to end on ONNX Runtime. Each path is driven by a probe that
//! describes it (no driver, a healthy GPU), so the tests pass on any machine; one test
//! takes the real probe and checks the outcome against what that probe found. With a
//! described GPU the real (CPU-only) ORT library refuses the CUDA provider, which is
//! exactly the "provider does not register" case.

mod ort_support;

use edgeinfer_engine::{
    load_model, load_model_with_probe, probe_gpus, Backend, EngineChoice, ErrorKind, GpuInfo,
    GpuPolicy, GpuProbe, LoadOptions, Outputs, TensorView,
};
use ort_support::*;

fn opts(engine: EngineChoice, gpu: GpuPolicy) -> LoadOptions {
    LoadOptions {
        gpu,
        ..ort_opts(engine)
    }
}

fn healthy_gpu() -> GpuProbe {
    GpuProbe {
        nvml_available: true,
        driver_version: Some("550.54.15".into()),
        gpus: vec![GpuInfo {
            index: 0,
            name: "NVIDIA L4".into(),
            memory_total_bytes: 24 << 30,
            memory_free_bytes: 23 << 30,
            utilization_percent: Some(0),
            temperature_c: Some(35),
            problem: None,
        }],
        error: None,
    }
}

fn runs(model: &edgeinfer_engine::Model) {
    let mut session = model.new_session().unwrap();
    let mut out = Outputs::for_model(&model.info);
    let x = [1.0f32, 2.0, 3.0, 4.0];
    session
        .run(
            &[
                TensorView::from_f32(&[1, 4], &x),
                TensorView::from_f32(&[1, 4], &x),
            ],
            &mut out,
        )
        .unwrap();
    assert_eq!(out.tensors[0].to_f64_vec(), vec![2.0, 4.0, 6.0, 8.0]);
}

/// What `probe_gpus` reports on a machine without the NVIDIA driver.
fn no_driver() -> GpuProbe {
    GpuProbe {
        nvml_available: false,
        driver_version: None,
        gpus: Vec::new(),
        error: Some(
            "NVML unavailable (no NVIDIA driver or libnvidia-ml.so): a libloading error".into(),
        ),
    }
}

fn cuda_fallback(model: &edgeinfer_engine::Model) -> &str {
    &model
        .report
        .fallbacks
        .iter()
        .find(|f| f.backend == Backend::OrtCuda)
        .unwrap_or_else(|| panic!("a CUDA fallback is recorded: {:?}", model.report))
        .reason
}

#[test]
fn without_nvml_ort_cuda_takes_the_cpu_path_and_says_why() {
    let model = load_model_with_probe(
        &add_f32(),
        &opts(EngineChoice::OrtCuda, GpuPolicy::Preferred),
        &no_driver(),
    )
    .unwrap();
    assert_eq!(model.backend(), Backend::OrtCpu);
    assert!(
        model.report.reason.contains("on CPU: CUDA is not usable"),
        "{}",
        model.report.reason
    );
    let reason = cuda_fallback(&model);
    assert!(
        reason.contains("no usable GPU") && reason.contains("NVML unavailable"),
        "{reason}"
    );
    runs(&model);
}

#[test]
fn without_nvml_auto_records_the_cuda_fallback() {
    let model = load_model_with_probe(
        &add_f32(),
        &opts(EngineChoice::Auto, GpuPolicy::Preferred),
        &no_driver(),
    )
    .unwrap();
    assert_ne!(model.backend(), Backend::OrtCuda);
    let reason = cuda_fallback(&model);
    assert!(reason.contains("NVML unavailable"), "{reason}");
    runs(&model);
}

#[test]
fn gpu_required_refuses_to_load_without_a_gpu() {
    for engine in [EngineChoice::OrtCuda, EngineChoice::Auto] {
        let err =
            load_model_with_probe(&add_f32(), &opts(engine, GpuPolicy::Required), &no_driver())
                .unwrap_err();
        assert_eq!(err.kind, ErrorKind::GpuUnavailable, "{engine:?}: {err}");
        assert!(
            err.message.contains("gpu = \"required\"") && err.message.contains("NVML unavailable"),
            "{err}"
        );
    }
}

/// `load_model` probes the real machine: whatever the probe found decides the path.
/// With no usable GPU the reason is the probe's own; with one, ONNX Runtime either runs
/// on CUDA or (a CPU-only library) says the provider did not register.
#[test]
fn ort_cuda_follows_what_the_real_probe_found() {
    let probe = probe_gpus();
    let model = load_model(
        &add_f32(),
        &opts(EngineChoice::OrtCuda, GpuPolicy::Preferred),
    )
    .unwrap();
    match probe.why_unusable() {
        Some(why) => {
            assert_eq!(model.backend(), Backend::OrtCpu, "{probe:?}");
            let reason = cuda_fallback(&model);
            assert_eq!(reason, format!("no usable GPU: {why}"));
        }
        None if model.backend() == Backend::OrtCuda => {
            assert!(model.report.fallbacks.is_empty(), "{:?}", model.report);
        }
        None => {
            assert_eq!(model.backend(), Backend::OrtCpu);
            let reason = cuda_fallback(&model);
            assert!(
                reason.contains("CUDA provider did not register"),
                "{reason}"
            );
        }
    }
    runs(&model);

    let required = load_model(
        &add_f32(),
        &opts(EngineChoice::OrtCuda, GpuPolicy::Required),
    );
    match (probe.why_unusable(), required) {
        (Some(why), Err(err)) => {
            assert_eq!(err.kind, ErrorKind::GpuUnavailable);
            assert!(err.message.contains(&why), "{err}");
        }
        (None, Ok(m)) => assert_eq!(m.backend(), Backend::OrtCuda),
        (None, Err(err)) => {
            assert_eq!(err.kind, ErrorKind::GpuUnavailable);
            assert!(
                err.message.contains("CUDA provider did not register"),
                "{err}"
            );
        }
        (Some(why), Ok(m)) => panic!("gpu = required loaded on {} though {why}", m.backend()),
    }
}

#[test]
fn gpu_required_with_a_cpu_only_engine_is_refused() {
    for engine in [EngineChoice::Tract, EngineChoice::OrtCpu] {
        let err = load_model_with_probe(
            &add_f32(),
            &opts(engine, GpuPolicy::Required),
            &healthy_gpu(),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::GpuUnavailable, "{engine:?}");
        assert!(err.message.contains("never runs on a GPU"), "{err}");
    }
}

#[test]
fn gpu_never_keeps_cuda_out_without_a_fallback_in_auto() {
    let model = load_model(&add_f32(), &opts(EngineChoice::Auto, GpuPolicy::Never)).unwrap();
    assert!(
        model
            .report
            .fallbacks
            .iter()
            .all(|f| f.backend != Backend::OrtCuda),
        "{:?}",
        model.report
    );
    let model = load_model(&add_f32(), &opts(EngineChoice::OrtCuda, GpuPolicy::Never)).unwrap();
    assert_eq!(model.backend(), Backend::OrtCpu);
    assert!(model
        .report
        .fallbacks
        .iter()
        .any(|f| f.backend == Backend::OrtCuda && f.reason.contains("never")));
}

#[test]
fn a_healthy_gpu_tries_cuda_and_a_failed_registration_falls_back() {
    let model = load_model_with_probe(
        &add_f32(),
        &opts(EngineChoice::OrtCuda, GpuPolicy::Preferred),
        &healthy_gpu(),
    )
    .unwrap();
    assert_eq!(model.backend(), Backend::OrtCpu);
    let fallback = model
        .report
        .fallbacks
        .iter()
        .find(|f| f.backend == Backend::OrtCuda)
        .expect("a CUDA fallback is recorded");
    // The probe planned CUDA; the provider itself is what refused.
    assert!(
        fallback.reason.contains("CUDA provider did not register"),
        "{}",
        fallback.reason
    );
    runs(&model);
}

#[test]
fn a_healthy_gpu_whose_provider_fails_refuses_when_required() {
    let err = load_model_with_probe(
        &add_f32(),
        &opts(EngineChoice::OrtCuda, GpuPolicy::Required),
        &healthy_gpu(),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::GpuUnavailable);
    assert!(
        err.message.contains("CUDA provider did not register"),
        "{err}"
    );
}

#[test]
fn a_bad_model_is_reported_as_such_even_when_cuda_was_planned() {
    // The CPU retry tells "provider failed" from "model is broken".
    let err = load_model_with_probe(
        b"not a model",
        &opts(EngineChoice::OrtCuda, GpuPolicy::Preferred),
        &healthy_gpu(),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadModel, "{err}");
}
