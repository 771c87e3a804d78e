//! ONNX Runtime missing or wrong: `auto` falls back to tract and says why; an explicit
//! ORT engine refuses with the path and the expected version.
//!
//! Its own test binary (process) on purpose: ORT's init is process-global, and no
//! test here may load a real ORT library.

mod ort_support;

use std::path::{Path, PathBuf};

use edgeinfer_engine::{
    load_model, ort_status, Backend, EngineChoice, ErrorKind, LoadOptions, Outputs, TensorView,
};
use ort_support::*;

fn with_library(engine: EngineChoice, lib: &Path) -> LoadOptions {
    LoadOptions {
        engine,
        ort_library: Some(lib.to_path_buf()),
        ..LoadOptions::default()
    }
}

fn missing() -> PathBuf {
    PathBuf::from("/nonexistent/edgeinfer/libonnxruntime.so.1.31.1")
}

fn adds_on(model: &edgeinfer_engine::Model) {
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

#[test]
fn auto_falls_back_to_tract_and_reports_the_missing_library() {
    let model = load_model(&add_f32(), &with_library(EngineChoice::Auto, &missing())).unwrap();
    assert_eq!(model.backend(), Backend::Tract);
    let fallback = model
        .report
        .fallbacks
        .iter()
        .find(|f| f.backend == Backend::OrtCpu)
        .expect("the ORT fallback is recorded");
    assert!(
        fallback.reason.contains(&missing().display().to_string()),
        "{}",
        fallback.reason
    );
    assert!(
        fallback.reason.contains("not found") && fallback.reason.contains("1.31"),
        "{}",
        fallback.reason
    );
    assert!(
        model
            .report
            .reason
            .starts_with("tract: the only engine that loaded the model"),
        "{}",
        model.report.reason
    );
    assert!(
        model.report.reason.contains("not found"),
        "{}",
        model.report.reason
    );
    adds_on(&model);
}

#[test]
fn explicit_ort_with_a_missing_library_is_library_unavailable() {
    for engine in [EngineChoice::OrtCpu, EngineChoice::OrtCuda] {
        let err = load_model(&add_f32(), &with_library(engine, &missing())).unwrap_err();
        assert_eq!(err.kind, ErrorKind::LibraryUnavailable, "{engine:?}: {err}");
        assert!(
            err.message
                .contains("/nonexistent/edgeinfer/libonnxruntime.so.1.31.1"),
            "{err}"
        );
        assert!(err.message.contains("1.31"), "{err}");
    }
}

#[test]
fn status_says_why_ort_is_unavailable() {
    let status = ort_status(&with_library(EngineChoice::Auto, &missing()));
    assert_eq!(status.path, Some(missing()));
    assert_eq!(status.version, None);
    assert_eq!(status.expected_version, "1.31");
    assert!(status.error.unwrap().contains("not found"));
}

#[test]
fn a_library_of_the_wrong_version_is_refused_by_name_and_version() {
    let lib = fake_ort_library("wrong-version", "1.20.0");
    let err = load_model(&add_f32(), &with_library(EngineChoice::OrtCpu, &lib)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::LibraryUnavailable);
    assert!(err.message.contains(&lib.display().to_string()), "{err}");
    assert!(
        err.message.contains("is ONNX Runtime 1.20.0")
            && err.message.contains("needs ONNX Runtime 1.31.x"),
        "{err}"
    );

    let model = load_model(&add_f32(), &with_library(EngineChoice::Auto, &lib)).unwrap();
    assert_eq!(model.backend(), Backend::Tract);
    assert!(
        model
            .report
            .fallbacks
            .iter()
            .any(|f| f.backend == Backend::OrtCpu && f.reason.contains("1.20.0")),
        "{:?}",
        model.report
    );
    adds_on(&model);
}

#[test]
fn a_library_that_is_not_onnx_runtime_is_refused() {
    // A real shared library without OrtGetApiBase.
    let lib = build_c_library(
        "not-ort",
        "libnot_ort.so",
        "int edgeinfer_not_ort(void) { return 7; }\n",
    );
    let err = load_model(&add_f32(), &with_library(EngineChoice::OrtCpu, &lib)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::LibraryUnavailable);
    assert!(
        err.message.contains("is not ONNX Runtime") && err.message.contains("OrtGetApiBase"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = scratch_dir("garbage-lib");
    let path = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&path, b"this is not an ELF file").unwrap();
    let err = load_model(&add_f32(), &with_library(EngineChoice::OrtCpu, &path)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::LibraryUnavailable);
    assert!(
        err.message.contains("cannot load ONNX Runtime from") && err.message.contains("1.31"),
        "{err}"
    );
    // A directory is not a library either.
    let err = load_model(
        &add_f32(),
        &with_library(EngineChoice::OrtCpu, scratch_dir("dir-lib").path()),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::LibraryUnavailable);
    assert!(err.message.contains("is not a file"), "{err}");
}

#[test]
fn garbage_model_bytes_without_ort_are_a_bad_model() {
    let err = load_model(b"garbage", &with_library(EngineChoice::Auto, &missing())).unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadModel, "{err}");
    assert!(
        err.message.contains("no engine can load the model") && err.message.contains("tract:"),
        "{err}"
    );
}
