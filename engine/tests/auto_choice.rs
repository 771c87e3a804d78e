//! `engine = "auto"` with ONNX Runtime present: every backend that loads is timed on a
//! sample input, the fastest matching one serves, and the report says why.

mod ort_support;

use edgeinfer_engine::{
    load_model, Backend, DType, EngineChoice, ErrorKind, Model, Outputs, TensorView,
};
use ort_support::*;

fn auto() -> edgeinfer_engine::LoadOptions {
    ort_opts(EngineChoice::Auto)
}

fn assert_fastest_matching(model: &Model) {
    let report = &model.report;
    let backends: Vec<Backend> = report.candidates.iter().map(|c| c.backend).collect();
    assert!(
        backends.contains(&Backend::OrtCpu) && backends.contains(&Backend::Tract),
        "{report:?}"
    );
    assert!(
        report.candidates.iter().all(|c| c.p50_us > 0.0),
        "{report:?}"
    );
    // Which backend wins depends on this machine's timings; the rule itself is unit-tested
    // on hand-written tables (auto.rs, `auto_keeps_the_fastest_candidate_that_matched`).
    // Here: the one serving is a candidate that matched, and the reason names it and
    // every other candidate with its time.
    let chosen = report
        .candidates
        .iter()
        .find(|c| c.backend == model.backend())
        .unwrap_or_else(|| panic!("the serving backend was timed: {report:?}"));
    assert!(chosen.matches_reference, "{report:?}");
    assert!(
        report
            .reason
            .starts_with(&format!("{}: fastest matching (", model.backend())),
        "{}",
        report.reason
    );
    for other in report
        .candidates
        .iter()
        .filter(|c| c.backend != model.backend())
    {
        assert!(
            report.reason.contains(&format!(" {} ", other.backend))
                || report.reason.contains(&format!("vs {} ", other.backend)),
            "{other:?} missing from {}",
            report.reason
        );
    }
}

#[test]
fn auto_times_both_engines_and_keeps_the_fastest_matching() {
    let model = load_model(&add_f32(), &auto()).unwrap();
    assert_fastest_matching(&model);
    assert!(
        model.report.candidates.iter().all(|c| c.matches_reference),
        "{:?}",
        model.report
    );
    let mut session = model.new_session().unwrap();
    assert_eq!(session.backend(), model.backend());
    let mut out = Outputs::for_model(&model.info);
    let x = [0.5f32, 1.5, 2.5, 3.5];
    session
        .run(
            &[
                TensorView::from_f32(&[1, 4], &x),
                TensorView::from_f32(&[1, 4], &x),
            ],
            &mut out,
        )
        .unwrap();
    assert_eq!(out.tensors[0].to_f64_vec(), vec![1.0, 3.0, 5.0, 7.0]);
}

#[test]
fn auto_serves_every_fixture_with_golden_outputs() {
    for path in fixture_models() {
        let name = model_stem(&path);
        let model = load_model(&std::fs::read(&path).unwrap(), &auto())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("tract_unsupported") {
            assert_eq!(
                model.backend(),
                Backend::OrtCpu,
                "{name}: {:?}",
                model.report
            );
        } else {
            assert_fastest_matching(&model);
        }
        let golden = golden_for(&path);
        let views: Vec<TensorView<'_>> = model
            .info
            .inputs
            .iter()
            .map(|s| {
                golden
                    .inputs
                    .iter()
                    .find(|g| g.name == s.name)
                    .unwrap()
                    .view()
            })
            .collect();
        let mut session = model.new_session().unwrap();
        let mut out = Outputs::for_model(&model.info);
        session
            .run(&views, &mut out)
            .unwrap_or_else(|e| panic!("{name} on {}: {e}", model.backend()));
        assert_matches_golden(
            &format!("{name} on {}", model.backend()),
            &golden.outputs,
            &out,
        );
    }
}

#[test]
fn a_model_tract_cannot_load_is_served_by_ort() {
    let unsupported: Vec<_> = fixture_models()
        .into_iter()
        .filter(|p| model_stem(p).starts_with("tract_unsupported"))
        .collect();
    assert!(
        !unsupported.is_empty(),
        "the fixtures include a tract_unsupported_* model"
    );
    for path in unsupported {
        let name = model_stem(&path);
        let bytes = std::fs::read(&path).unwrap();
        let tract_err = load_model(&bytes, &ort_opts(EngineChoice::Tract)).unwrap_err();
        assert!(
            matches!(tract_err.kind, ErrorKind::Unsupported | ErrorKind::BadModel),
            "{name}: {tract_err:?}"
        );

        let model = load_model(&bytes, &auto()).unwrap();
        assert_eq!(model.backend(), Backend::OrtCpu, "{name}");
        let fallback = model
            .report
            .fallbacks
            .iter()
            .find(|f| f.backend == Backend::Tract)
            .expect("a tract fallback");
        assert_eq!(fallback.reason, tract_err.message, "{name}");
        assert!(
            model
                .report
                .reason
                .starts_with("ort-cpu: the only engine that loaded the model"),
            "{}",
            model.report.reason
        );
    }
}

#[test]
fn garbage_bytes_are_a_bad_model_on_every_engine() {
    for engine in [
        EngineChoice::Auto,
        EngineChoice::Tract,
        EngineChoice::OrtCpu,
    ] {
        let err = load_model(b"\x08\x07garbage", &ort_opts(engine)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadModel, "{engine:?}: {err}");
    }
}

#[test]
fn a_graph_with_an_op_tract_lacks_is_served_by_ort() {
    // tract 0.23 has no `Det`; ONNX Runtime does.
    let bytes = model(
        vec![node("Det", &["m"], &["d"])],
        vec![value_info("m", DType::F32, &[None, Some(2), Some(2)])],
        vec![value_info("d", DType::F32, &[None])],
    );
    let tract_err = load_model(&bytes, &ort_opts(EngineChoice::Tract)).unwrap_err();
    let model = load_model(&bytes, &auto()).unwrap();
    assert_eq!(model.backend(), Backend::OrtCpu);
    let fallback = model
        .report
        .fallbacks
        .iter()
        .find(|f| f.backend == Backend::Tract)
        .expect("a tract fallback");
    assert_eq!(fallback.reason, tract_err.message);
    assert!(
        model
            .report
            .reason
            .contains("the only engine that loaded the model"),
        "{}",
        model.report.reason
    );

    let mut session = model.new_session().unwrap();
    let mut out = Outputs::for_model(&model.info);
    let m = [2.0f32, 1.0, 1.0, 3.0, 1.0, 2.0, 3.0, 4.0];
    session
        .run(&[TensorView::from_f32(&[2, 2, 2], &m)], &mut out)
        .unwrap();
    let det = out.tensors[0].to_f64_vec();
    assert!(
        (det[0] - 5.0).abs() < 1e-5 && (det[1] + 2.0).abs() < 1e-5,
        "{det:?}"
    );
}
