//! Every committed fixture model, on ONNX Runtime (CPU), gives its golden outputs
//! (the batch and the one-row files): labels exactly, probabilities and values within 1e-4.

mod ort_support;

use edgeinfer_engine::{load_model, Backend, EngineChoice, Outputs, TensorView};
use ort_support::*;

#[test]
fn every_fixture_matches_its_golden_outputs_on_ort() {
    let mut checked = 0;
    for path in fixture_models() {
        let name = model_stem(&path);
        let bytes = std::fs::read(&path).unwrap();
        let model = load_model(&bytes, &ort_opts(EngineChoice::OrtCpu))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(model.backend(), Backend::OrtCpu);
        // One session serves every golden file, batch and single row alike, into the same buffers.
        let mut session = model.new_session().unwrap();
        let mut out = Outputs::for_model(&model.info);

        for (file, golden) in golden_files_for(&path) {
            // Metadata follows the model's declaration, which the golden inputs were made from.
            assert_eq!(model.info.inputs.len(), golden.inputs.len(), "{file}");
            let mut views: Vec<TensorView<'_>> = Vec::new();
            for spec in &model.info.inputs {
                let g = golden
                    .inputs
                    .iter()
                    .find(|g| g.name == spec.name)
                    .unwrap_or_else(|| panic!("{file}: no golden input {:?}", spec.name));
                assert_eq!(spec.dtype, g.dtype, "{file}: dtype of {:?}", spec.name);
                assert!(
                    spec.accepts_shape(&g.shape),
                    "{file}: {:?} does not accept {:?}",
                    spec.shape,
                    g.shape
                );
                views.push(g.view());
            }
            for g in &golden.outputs {
                let spec = model.info.outputs.iter().find(|s| s.name == g.name);
                let spec =
                    spec.unwrap_or_else(|| panic!("{file}: no declared output {:?}", g.name));
                assert_eq!(
                    spec.dtype, g.dtype,
                    "{file}: declared dtype of {:?}",
                    g.name
                );
            }

            session
                .run(&views, &mut out)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_matches_golden(&file, &golden.outputs, &out);
            checked += 1;
        }
    }
    assert!(checked >= 2 * 8, "only {checked} golden files checked");
}
