//! Releases of the churn fixture as the release tooling publishes them: `model.onnx` and a
//! `bundle.json` (model config, golden samples with the ONNX Runtime outputs committed in
//! tests/fixtures/golden/churn_rf.json, lineage) as targets with `custom` naming the model,
//! the version and the release counter. Shared by the registry tests and the demo
//! repository generator (daemon/examples/demo_registry.rs).

use std::path::{Path, PathBuf};

use edgeinfer_registry::release::bundle::{Bundle, TargetCustom};
use edgeinfer_registry::tuf::testrepo::{sha256_hex, Repo};
use serde_json::json;

pub fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The churn RandomForest fixture.
pub fn churn_model() -> Vec<u8> {
    std::fs::read(checkout().join("tests/fixtures/models/churn_rf.onnx")).unwrap()
}

pub fn golden_json() -> serde_json::Value {
    let text =
        std::fs::read_to_string(checkout().join("tests/fixtures/golden/churn_rf.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Rows `[from, to)` of a golden tensor as a bundle golden tensor.
fn golden_tensor(t: &serde_json::Value, from: usize, to: usize) -> serde_json::Value {
    let shape: Vec<usize> = t["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let per: usize = shape.iter().skip(1).product();
    let data = &t["data"].as_array().unwrap()[from * per..to * per];
    let mut s = shape.clone();
    s[0] = to - from;
    json!({"name": t["name"], "dtype": t["dtype"], "shape": s, "data": data})
}

/// `bundle.json` for churn `version` with `model` (golden samples: rows 0-7 and 8-15).
pub fn bundle_bytes(name: &str, version: &str, model: &[u8]) -> Vec<u8> {
    let g = golden_json();
    let sample = |from, to| {
        json!({
            "inputs": [golden_tensor(&g["inputs"][0], from, to)],
            "outputs": g["outputs"].as_array().unwrap().iter().map(|o| golden_tensor(o, from, to)).collect::<Vec<_>>(),
        })
    };
    let v = json!({
        "schema_version": 1,
        "name": name,
        "version": version,
        "model": {
            "file": "model.onnx",
            "sha256": sha256_hex(model),
            "inputs": [{"name": "float_input", "dtype": "f32", "shape": [null, 20]}],
            "outputs": [
                {"name": "label", "dtype": "i64", "shape": [null]},
                {"name": "probabilities", "dtype": "f32", "shape": [null, 2]}
            ]
        },
        "golden": [sample(0, 8), sample(8, 16)],
        "lineage": {"source": "tests/fixtures/models/churn_rf.onnx", "created": "2030-01-01T00:00:00Z", "tool": "edgeinfer tests"}
    });
    let bytes = serde_json::to_vec_pretty(&v).unwrap();
    // The release engineer's type must accept what we publish.
    Bundle::from_slice(&bytes).expect("a valid bundle");
    bytes
}

/// Adds `name`@`version` (model + bundle) to the top-level targets with their `custom`
/// identity, without publishing.
pub fn add_release(repo: &mut Repo, name: &str, version: &str, counter: u64, model: &[u8]) {
    let bundle = bundle_bytes(name, version, model);
    add_release_files(repo, name, version, counter, model, bundle);
}

/// [`add_release`] with the given `bundle.json` bytes.
pub fn add_release_files(
    repo: &mut Repo,
    name: &str,
    version: &str,
    counter: u64,
    model: &[u8],
    bundle: Vec<u8>,
) {
    let custom = TargetCustom {
        name: name.into(),
        version: version.into(),
        release_counter: counter,
    }
    .to_value();
    for (file, data) in [("model.onnx", model.to_vec()), ("bundle.json", bundle)] {
        let path = format!("models/{name}/{version}/{file}");
        repo.add_target("targets", &path, &data);
        repo.signed.get_mut("targets").unwrap()["targets"][&path]["custom"] = custom.clone();
    }
}

/// [`add_release`], then publish targets, snapshot and timestamp.
pub fn publish_release(repo: &mut Repo, name: &str, version: &str, counter: u64, model: &[u8]) {
    add_release(repo, name, version, counter, model);
    repo.publish(&["targets", "snapshot", "timestamp"]);
}
