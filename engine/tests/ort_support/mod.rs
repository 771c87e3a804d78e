//! Shared by the ORT and auto test binaries: the ORT library path (required), the
//! committed fixtures and their golden files, and tiny ONNX graphs built in place
//! for the dtype paths scikit-learn models never exercise.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use edgeinfer_engine::{DType, LoadOptions, Outputs, TensorView};
use prost::Message;
use tract_onnx::pb;

/// The ORT library the test script provisions. A test that needs ORT fails without it.
pub fn ort_lib() -> PathBuf {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .expect("ORT_DYLIB_PATH must point at libonnxruntime.so.1.31.1 (the test script sets it)");
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "ORT_DYLIB_PATH={} is not a file",
        path.display()
    );
    path
}

pub fn ort_opts(engine: edgeinfer_engine::EngineChoice) -> LoadOptions {
    LoadOptions {
        engine,
        ort_library: Some(ort_lib()),
        ..LoadOptions::default()
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ sits in the workspace")
        .to_path_buf()
}

/// Every committed fixture model, sorted. Fails if there are none: the fixtures are part of the repo.
pub fn fixture_models() -> Vec<PathBuf> {
    let dir = repo_root().join("tests/fixtures/models");
    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    models.sort();
    assert!(!models.is_empty(), "no fixture models in {}", dir.display());
    models
}

pub fn model_stem(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

/// One tensor from a golden file, as raw little-endian bytes.
#[derive(Debug, Clone)]
pub struct GoldenTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl GoldenTensor {
    pub fn view(&self) -> TensorView<'_> {
        TensorView::new(self.dtype, &self.shape, &self.data).expect("golden tensor is well formed")
    }

    pub fn values(&self) -> Vec<f64> {
        edgeinfer_engine::OutputTensor {
            name: self.name.clone(),
            dtype: Some(self.dtype),
            shape: self.shape.clone(),
            data: self.data.clone(),
        }
        .to_f64_vec()
    }
}

#[derive(Debug, Clone)]
pub struct Golden {
    pub inputs: Vec<GoldenTensor>,
    pub outputs: Vec<GoldenTensor>,
}

/// The golden file for a fixture model: `tests/fixtures/golden/<stem>.json`.
pub fn golden_for(model: &Path) -> Golden {
    let path = repo_root()
        .join("tests/fixtures/golden")
        .join(format!("{}.json", model_stem(model)));
    golden_file(&path)
}

/// Every golden file for a fixture: `<stem>.json` and variants such as `<stem>.1.json`
/// (one row), sorted, each with its file name.
pub fn golden_files_for(model: &Path) -> Vec<(String, Golden)> {
    let dir = repo_root().join("tests/fixtures/golden");
    let stem = model_stem(model);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name == format!("{stem}.json")
                || (name.starts_with(&format!("{stem}.")) && name.ends_with(".json"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden file for {stem}");
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                golden_file(&p),
            )
        })
        .collect()
}

pub fn golden_file(path: &Path) -> Golden {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = |key: &str| -> Vec<GoldenTensor> {
        json[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no {key:?} array", path.display()))
            .iter()
            .map(parse_tensor)
            .collect()
    };
    Golden {
        inputs: tensors("inputs"),
        outputs: tensors("outputs"),
    }
}

pub fn parse_dtype(s: &str) -> DType {
    match s {
        "f32" | "float32" | "float" | "FP32" => DType::F32,
        "f64" | "float64" | "double" | "FP64" => DType::F64,
        "i64" | "int64" | "INT64" => DType::I64,
        "i32" | "int32" | "INT32" => DType::I32,
        "u8" | "uint8" | "UINT8" => DType::U8,
        "bool" | "BOOL" => DType::Bool,
        other => panic!("golden dtype {other:?} is not one edgeinfer carries"),
    }
}

fn flatten(v: &serde_json::Value, out: &mut Vec<f64>) {
    match v {
        serde_json::Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        serde_json::Value::Bool(b) => out.push(*b as u8 as f64),
        serde_json::Value::Number(n) => out.push(n.as_f64().expect("number")),
        other => panic!("unexpected golden value {other}"),
    }
}

fn parse_tensor(v: &serde_json::Value) -> GoldenTensor {
    let name = v["name"].as_str().expect("tensor name").to_string();
    let dtype = parse_dtype(v["dtype"].as_str().expect("tensor dtype"));
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .expect("tensor shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let mut values = Vec::new();
    flatten(&v["data"], &mut values);
    assert_eq!(
        values.len(),
        shape.iter().product::<usize>(),
        "golden tensor {name:?}: data does not fill its shape"
    );
    let data = match dtype {
        DType::F32 => values
            .iter()
            .flat_map(|x| (*x as f32).to_le_bytes())
            .collect(),
        DType::F64 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I64 => values
            .iter()
            .flat_map(|x| (*x as i64).to_le_bytes())
            .collect(),
        DType::I32 => values
            .iter()
            .flat_map(|x| (*x as i32).to_le_bytes())
            .collect(),
        DType::U8 | DType::Bool => values.iter().map(|x| *x as u8).collect(),
    };
    GoldenTensor {
        name,
        dtype,
        shape,
        data,
    }
}

/// Check `got` against golden outputs: integer outputs (labels) exactly, floats within 1e-4.
pub fn assert_matches_golden(model: &str, golden: &[GoldenTensor], got: &Outputs) {
    for want in golden {
        let out = got
            .get(&want.name)
            .unwrap_or_else(|| panic!("{model}: no output {:?} (got {:?})", want.name, names(got)));
        assert_eq!(out.shape, want.shape, "{model}: shape of {:?}", want.name);
        let exact = !matches!(want.dtype, DType::F32 | DType::F64);
        for (i, (w, g)) in want.values().into_iter().zip(out.to_f64_vec()).enumerate() {
            if exact {
                assert_eq!(g, w, "{model}: {:?}[{i}]", want.name);
            } else {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{model}: {:?}[{i}] = {g}, golden {w}",
                    want.name
                );
            }
        }
    }
}

fn names(o: &Outputs) -> Vec<&str> {
    o.tensors.iter().map(|t| t.name.as_str()).collect()
}

// === tiny ONNX graphs ===

pub fn onnx_elem_type(d: DType) -> i32 {
    use pb::tensor_proto::DataType;
    (match d {
        DType::F32 => DataType::Float,
        DType::F64 => DataType::Double,
        DType::I64 => DataType::Int64,
        DType::I32 => DataType::Int32,
        DType::U8 => DataType::Uint8,
        DType::Bool => DataType::Bool,
    }) as i32
}

/// `dims`: `Some(n)` fixed, `None` the symbolic "batch".
pub fn value_info(name: &str, dtype: DType, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value as D, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => D::DimValue(*n),
                None => D::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: onnx_elem_type(dtype),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn model(
    nodes: Vec<pb::NodeProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
) -> Vec<u8> {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "edgeinfer-tests".into(),
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: nodes,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// One Identity per dtype: input `x_<dtype>` [batch, 3] → output `y_<dtype>`.
pub fn identity_all_dtypes() -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for d in DType::ALL {
        let (x, y) = (format!("x_{d}"), format!("y_{d}"));
        nodes.push(node("Identity", &[&x], &[&y]));
        inputs.push(value_info(&x, d, &[None, Some(3)]));
        outputs.push(value_info(&y, d, &[None, Some(3)]));
    }
    model(nodes, inputs, outputs)
}

/// `z = x + y` on f32 [batch, 4].
pub fn add_f32() -> Vec<u8> {
    model(
        vec![node("Add", &["x", "y"], &["z"])],
        vec![
            value_info("x", DType::F32, &[None, Some(4)]),
            value_info("y", DType::F32, &[None, Some(4)]),
        ],
        vec![value_info("z", DType::F32, &[None, Some(4)])],
    )
}

// === stand-in shared libraries ===

/// A fresh directory under the system temp dir, removed when the returned guard drops.
pub fn scratch_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("edgeinfer-{tag}-"))
        .tempdir()
        .unwrap()
}

/// A file in a scratch directory; both are removed when this drops. Derefs to the path.
pub struct ScratchFile {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for ScratchFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

/// Compile `c_source` into a shared library named `file_name` with the system C compiler.
pub fn build_c_library(tag: &str, file_name: &str, c_source: &str) -> ScratchFile {
    let dir = scratch_dir(tag);
    let src = dir.path().join(format!("{file_name}.c"));
    std::fs::write(&src, c_source).unwrap();
    let lib = dir.path().join(file_name);
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .expect("a C compiler (cc) is needed to build the stand-in library");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ScratchFile {
        path: lib,
        _dir: dir,
    }
}

/// A library exporting ONNX Runtime's entry point, but reporting `version`.
pub fn fake_ort_library(tag: &str, version: &str) -> ScratchFile {
    let source = format!(
        r#"
typedef struct {{ const void* (*GetApi)(unsigned); const char* (*GetVersionString)(void); }} OrtApiBase;
static const void* get_api(unsigned v) {{ (void)v; return 0; }}
static const char* version(void) {{ return "{version}"; }}
static const OrtApiBase base = {{ get_api, version }};
const OrtApiBase* OrtGetApiBase(void) {{ return &base; }}
"#
    );
    build_c_library(tag, &format!("libonnxruntime.so.{version}"), &source)
}
