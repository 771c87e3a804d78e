//! The KServe v2 REST inference protocol (the "Open Inference Protocol"), as Triton and
//! `tritonclient[http]` speak it: server and model metadata, readiness, and `infer` with
//! JSON tensors or the binary-tensor extension (`Inference-Header-Content-Length`,
//! `binary_data_size`, `binary_data`, `binary_data_output`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgeinfer_engine::{DType, Dim, Outputs, TensorSpec};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::infer::{self, OwnedInput, SessionCache};
use super::{ApiError, HttpState};
use crate::model_table::ModelVersion;

/// Splits a binary-extension body into its JSON header and the tensor bytes after it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// Picks the A/B arm for requests without a version pin (see the binary protocol's routing key).
pub const ROUTING_KEY: &str = "x-routing-key";

// === Metadata and readiness ===

pub(super) async fn server_metadata() -> Json<Value> {
    Json(serde_json::json!({
        "name": "edgeinferd",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_configuration"],
    }))
}

pub(super) async fn model_metadata(
    state: State<Arc<HttpState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    metadata(&state, &name, None)
}

pub(super) async fn model_metadata_v(
    state: State<Arc<HttpState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    metadata(&state, &name, Some(&version))
}

fn metadata(state: &HttpState, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let snap = state.table.snapshot();
    let v = snap.describe(name, version)?;
    let versions: Vec<&str> = match version {
        Some(_) => vec![v.version.as_str()],
        None => snap.models[name]
            .versions
            .iter()
            .map(|m| m.version.as_str())
            .collect(),
    };
    Ok(Json(serde_json::json!({
        "name": name,
        "versions": versions,
        "platform": platform(v),
        "engine": v.model.backend().name(),
        "inputs": v.model.info.inputs.iter().map(spec_json).collect::<Vec<_>>(),
        "outputs": v.model.info.outputs.iter().map(spec_json).collect::<Vec<_>>(),
    })))
}

fn platform(v: &ModelVersion) -> &'static str {
    match v.model.backend() {
        edgeinfer_engine::Backend::Tract => "tract_onnx",
        _ => "onnxruntime_onnx",
    }
}

fn dims(spec: &TensorSpec) -> Vec<i64> {
    spec.shape
        .iter()
        .map(|d| if let Dim::Fixed(n) = d { *n as i64 } else { -1 })
        .collect()
}

fn spec_json(spec: &TensorSpec) -> Value {
    serde_json::json!({ "name": spec.name, "datatype": spec.dtype.kserve_name(), "shape": dims(spec) })
}

pub(super) async fn model_config(
    state: State<Arc<HttpState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    config(&state, &name, None)
}

pub(super) async fn model_config_v(
    state: State<Arc<HttpState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    config(&state, &name, Some(&version))
}

/// Triton's model configuration, for clients such as `perf_analyzer` that read it: no
/// server-side batching dimension (`max_batch_size` 0), so the shapes are the model's own.
fn config(state: &HttpState, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let snap = state.table.snapshot();
    let v = snap.describe(name, version)?;
    let tensors = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| serde_json::json!({ "name": s.name, "data_type": format!("TYPE_{}", s.dtype.kserve_name()), "dims": dims(s) }))
            .collect()
    };
    Ok(Json(serde_json::json!({
        "name": name,
        "platform": platform(v),
        "backend": if platform(v) == "tract_onnx" { "tract" } else { "onnxruntime" },
        "max_batch_size": 0,
        "input": tensors(&v.model.info.inputs),
        "output": tensors(&v.model.info.outputs),
    })))
}

pub(super) async fn model_ready(
    state: State<Arc<HttpState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    ready(&state, &name, None)
}

pub(super) async fn model_ready_v(
    state: State<Arc<HttpState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    ready(&state, &name, Some(&version))
}

fn ready(state: &HttpState, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let snap = state.table.snapshot();
    let v = snap.describe(name, version)?;
    if !v.is_ready() {
        return Err(ApiError::unavailable(format!(
            "model {name:?} version {:?} is not ready yet",
            v.version
        )));
    }
    Ok(Json(
        serde_json::json!({ "name": name, "version": v.version, "ready": true }),
    ))
}

// === Infer ===

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestOutput>>,
}

#[derive(Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

pub(super) async fn infer(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    infer_pooled(state, name, None, headers, body?).await
}

pub(super) async fn infer_v(
    State(state): State<Arc<HttpState>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    infer_pooled(state, name, Some(version), headers, body?).await
}

/// Hands the request to the inference pool: decoding a large body is work too.
async fn infer_pooled(
    state: Arc<HttpState>,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let pool = state.pool.clone();
    pool.run(move |cache| {
        infer_any(
            cache,
            &state,
            &name,
            version.as_deref(),
            &headers,
            &body,
            start,
        )
    })
    .await?
}

fn infer_any(
    cache: &mut SessionCache,
    state: &HttpState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    start: Instant,
) -> Result<Response, ApiError> {
    let (json, binary) = split_body(headers, body)?;
    let req: InferRequest = serde_json::from_slice(json).map_err(|e| {
        ApiError::bad_request(format!(
            "request body is not a KServe v2 inference request: {e}"
        ))
    })?;
    let routing_key = headers
        .get(ROUTING_KEY)
        .map(HeaderValue::as_bytes)
        .or_else(|| {
            req.parameters
                .get("routing_key")
                .and_then(Value::as_str)
                .map(str::as_bytes)
        })
        .unwrap_or(b"");
    let v = infer::resolve(state, name, version, routing_key)?;
    if req.parameters.contains_key("classification") {
        return Err(ApiError::bad_request(
            "the classification extension is not supported",
        ));
    }
    let inputs = decode_inputs(&v.model.info.inputs, &req.inputs, binary).inspect_err(|_| {
        v.stats.record(crate::model_table::Outcome::BadInput);
    })?;

    // Which outputs, and which of them go back as binary.
    let binary_default = flag(&req.parameters, "binary_data_output")?;
    let infos = &v.model.info.outputs;
    let wanted: Vec<(usize, bool)> = match &req.outputs {
        None => (0..infos.len()).map(|i| (i, binary_default)).collect(),
        Some(list) => list
            .iter()
            .map(|o| {
                let idx = infos.iter().position(|s| s.name == o.name).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "unknown output {:?}; the model gives: {}",
                        o.name,
                        names(infos)
                    ))
                })?;
                if o.parameters.contains_key("classification") {
                    return Err(ApiError::bad_request(
                        "the classification extension is not supported",
                    ));
                }
                let bin = match o.parameters.get("binary_data") {
                    None => binary_default,
                    Some(_) => flag(&o.parameters, "binary_data")?,
                };
                Ok((idx, bin))
            })
            .collect::<Result<_, _>>()
            .inspect_err(|_| v.stats.record(crate::model_table::Outcome::BadInput))?,
    };

    let model_version = v.version.clone();
    infer::run(cache, state, &v, &inputs, start, |outs: &Outputs| {
        let mut tail = Vec::new();
        let mut tensors = Vec::with_capacity(wanted.len());
        for &(idx, bin) in &wanted {
            let t = outs.tensors.get(idx).ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "engine returned fewer outputs than declared",
                )
            })?;
            let dtype = t.dtype.unwrap_or(infos[idx].dtype);
            let (parameters, data) = if bin {
                tail.extend_from_slice(&t.data);
                (
                    Some(BinaryParams {
                        binary_data_size: t.data.len(),
                    }),
                    None,
                )
            } else {
                (
                    None,
                    Some(Data {
                        dtype,
                        bytes: &t.data,
                    }),
                )
            };
            tensors.push(ResponseTensor {
                name: &t.name,
                datatype: dtype.kserve_name(),
                shape: &t.shape,
                parameters,
                data,
            });
        }
        let resp = InferResponse {
            model_name: name,
            model_version: &model_version,
            id: req.id.as_deref(),
            outputs: tensors,
        };
        let mut body = serde_json::to_vec(&resp)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if tail.is_empty() {
            return Ok((
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response());
        }
        let json_len = body.len();
        body.extend_from_slice(&tail);
        Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (
                    HeaderName::from_static(HEADER_LENGTH),
                    HeaderValue::from(json_len),
                ),
            ],
            body,
        )
            .into_response())
    })
}

fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    let Some(h) = headers.get(HEADER_LENGTH) else {
        return Ok((body, &[]));
    };
    let n: usize = h
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ApiError::bad_request("Inference-Header-Content-Length is not a number"))?;
    if n > body.len() {
        return Err(ApiError::bad_request(format!(
            "Inference-Header-Content-Length is {n} but the body has only {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(n))
}

fn flag(params: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match params.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::bad_request(format!(
            "parameter {key:?} must be true or false, not {other}"
        ))),
    }
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The KServe datatype names this server accepts.
pub fn dtype_from_kserve(name: &str) -> Option<DType> {
    DType::ALL.into_iter().find(|d| d.kserve_name() == name)
}

/// Decodes the request's tensors into the model's declared input order.
fn decode_inputs(
    specs: &[TensorSpec],
    inputs: &[RequestInput],
    binary: &[u8],
) -> Result<Vec<OwnedInput>, ApiError> {
    // Binary data is laid out in the order of the request's inputs.
    let mut cursor = 0usize;
    let mut decoded: Vec<Option<OwnedInput>> = (0..specs.len()).map(|_| None).collect();
    for input in inputs {
        let name = &input.name;
        let idx = specs.iter().position(|s| &s.name == name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown input {name:?}; the model takes: {}",
                names(specs)
            ))
        })?;
        if decoded[idx].is_some() {
            return Err(ApiError::bad_request(format!(
                "input {name:?} is given twice"
            )));
        }
        let spec = &specs[idx];
        let dtype = dtype_from_kserve(&input.datatype).ok_or_else(|| {
            ApiError::bad_request(format!(
                "input {name:?}: datatype {:?} is not supported (FP32, FP64, INT64, INT32, UINT8, BOOL)",
                input.datatype
            ))
        })?;
        if dtype != spec.dtype {
            return Err(ApiError::bad_request(format!(
                "input {name:?}: datatype {}, but the model takes {}",
                input.datatype,
                spec.dtype.kserve_name()
            )));
        }
        let shape: Vec<usize> = input
            .shape
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| {
                    ApiError::bad_request(format!(
                        "input {name:?}: negative dimension {d} in shape {:?}",
                        input.shape
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        if !spec.accepts_shape(&shape) {
            return Err(ApiError::bad_request(format!(
                "input {name:?}: shape {:?}, but the model takes {:?} (-1 = any)",
                input.shape,
                dims(spec)
            )));
        }
        let elems = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&e| e.checked_mul(dtype.size()).is_some_and(|b| b <= 1 << 30))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "input {name:?}: shape {:?} is too large",
                    input.shape
                ))
            })?;
        let data = match input.parameters.get("binary_data_size") {
            Some(size) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "input {name:?}: binary_data_size must be a byte count"
                        ))
                    })?;
                if input.data.is_some() {
                    return Err(ApiError::bad_request(format!(
                        "input {name:?} has both data and binary_data_size"
                    )));
                }
                // The declared size must match the shape before any byte is copied.
                if size != elems * dtype.size() {
                    return Err(ApiError::bad_request(format!(
                        "input {name:?}: {size} bytes of binary data for shape {:?} of {} ({} bytes expected)",
                        input.shape,
                        input.datatype,
                        elems * dtype.size()
                    )));
                }
                let end = cursor.checked_add(size).filter(|&e| e <= binary.len()).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "input {name:?}: binary_data_size {size} runs past the end of the body ({} binary bytes)",
                        binary.len()
                    ))
                })?;
                let bytes = binary[cursor..end].to_vec();
                cursor = end;
                bytes
            }
            None => {
                let value = input
                    .data
                    .as_ref()
                    .ok_or_else(|| ApiError::bad_request(format!("input {name:?} has no data")))?;
                // Count what the body holds before reserving what the shape declares: a
                // 60-byte body must not reserve a gigabyte.
                let count = count_elements(value, elems);
                if count > elems {
                    return Err(ApiError::bad_request(format!(
                        "input {name:?}: more values than the shape holds ({elems})"
                    )));
                }
                if count != elems {
                    return Err(ApiError::bad_request(format!(
                        "input {name:?}: {count} values for shape {:?} ({elems} expected)",
                        input.shape
                    )));
                }
                let mut bytes = Vec::with_capacity(elems * dtype.size());
                let mut count = 0usize;
                json_elements(value, dtype, &mut bytes, &mut count, elems)
                    .map_err(|m| ApiError::bad_request(format!("input {name:?}: {m}")))?;
                bytes
            }
        };
        decoded[idx] = Some(OwnedInput { dtype, shape, data });
    }
    if cursor != binary.len() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data after the JSON header are not claimed by any input's binary_data_size",
            binary.len() - cursor
        )));
    }
    decoded
        .into_iter()
        .zip(specs)
        .map(|(d, s)| {
            d.ok_or_else(|| {
                ApiError::bad_request(format!(
                    "missing input {:?}; the model takes: {}",
                    s.name,
                    names(specs)
                ))
            })
        })
        .collect()
}

/// The leaf values of a (possibly nested) JSON array, counted up to `limit + 1`.
fn count_elements(v: &Value, limit: usize) -> usize {
    match v {
        Value::Array(items) => {
            let mut n = 0usize;
            for item in items {
                n += count_elements(item, limit - n.min(limit));
                if n > limit {
                    break;
                }
            }
            n
        }
        _ => 1,
    }
}

/// Appends the elements of a (possibly nested) JSON array, row-major, as `dtype` bytes.
fn json_elements(
    v: &Value,
    dtype: DType,
    out: &mut Vec<u8>,
    count: &mut usize,
    limit: usize,
) -> Result<(), String> {
    if let Value::Array(items) = v {
        for item in items {
            json_elements(item, dtype, out, count, limit)?;
        }
        return Ok(());
    }
    *count += 1;
    if *count > limit {
        // Stop early: a huge array for a small shape should not be decoded whole.
        return Err(format!("more values than the shape holds ({limit})"));
    }
    let at = *count - 1;
    let bad = || format!("element {at} is {v}, not a {}", dtype.kserve_name());
    match dtype {
        DType::F32 => out.extend_from_slice(&(v.as_f64().ok_or_else(bad)? as f32).to_le_bytes()),
        DType::F64 => out.extend_from_slice(&v.as_f64().ok_or_else(bad)?.to_le_bytes()),
        DType::I64 => out.extend_from_slice(&v.as_i64().ok_or_else(bad)?.to_le_bytes()),
        DType::I32 => {
            let n = v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(bad)?;
            out.extend_from_slice(&n.to_le_bytes())
        }
        DType::U8 => out.push(
            v.as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(bad)?,
        ),
        DType::Bool => out.push(v.as_bool().ok_or_else(bad)? as u8),
    }
    Ok(())
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<ResponseTensor<'a>>,
}

#[derive(Serialize)]
struct ResponseTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data<'a>>,
}

#[derive(Serialize)]
struct BinaryParams {
    binary_data_size: usize,
}

/// Output elements as a flat JSON array, straight from the engine's bytes.
pub(super) struct Data<'a> {
    pub dtype: DType,
    pub bytes: &'a [u8],
}

impl Serialize for Data<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.bytes.len() / self.dtype.size();
        let mut seq = s.serialize_seq(Some(n))?;
        let b = self.bytes;
        match self.dtype {
            DType::F32 => {
                for c in b.chunks_exact(4) {
                    seq.serialize_element(&f32::from_le_bytes([c[0], c[1], c[2], c[3]]))?;
                }
            }
            DType::F64 => {
                for c in b.chunks_exact(8) {
                    seq.serialize_element(&f64::from_le_bytes(c.try_into().expect("8 bytes")))?;
                }
            }
            DType::I64 => {
                for c in b.chunks_exact(8) {
                    seq.serialize_element(&i64::from_le_bytes(c.try_into().expect("8 bytes")))?;
                }
            }
            DType::I32 => {
                for c in b.chunks_exact(4) {
                    seq.serialize_element(&i32::from_le_bytes([c[0], c[1], c[2], c[3]]))?;
                }
            }
            DType::U8 => {
                for &x in b {
                    seq.serialize_element(&x)?;
                }
            }
            DType::Bool => {
                for &x in b {
                    seq.serialize_element(&(x != 0))?;
                }
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DType, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
        }
    }

    fn inputs(json: Value) -> Vec<RequestInput> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn decodes_nested_and_flat_json_in_model_order() {
        let specs = [
            spec("a", DType::F32, vec![Dim::Dynamic, Dim::Fixed(2)]),
            spec("b", DType::Bool, vec![Dim::Fixed(2)]),
        ];
        let req = inputs(serde_json::json!([
            {"name": "b", "shape": [2], "datatype": "BOOL", "data": [true, false]},
            {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]},
        ]));
        let out = decode_inputs(&specs, &req, &[]).unwrap();
        assert_eq!(out[0].shape, [2, 2]);
        assert_eq!(
            bytemuck::cast_slice::<u8, f32>(&out[0].data),
            [1.0, 2.5, 3.0, 4.0]
        );
        assert_eq!(out[1].data, [1, 0]);
    }

    #[test]
    fn binary_inputs_are_taken_in_request_order() {
        let specs = [
            spec("x", DType::I32, vec![Dim::Fixed(2)]),
            spec("y", DType::U8, vec![Dim::Fixed(3)]),
        ];
        let req = inputs(serde_json::json!([
            {"name": "y", "shape": [3], "datatype": "UINT8", "parameters": {"binary_data_size": 3}},
            {"name": "x", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}},
        ]));
        let mut bin = vec![7u8, 8, 9];
        bin.extend_from_slice(&5i32.to_le_bytes());
        bin.extend_from_slice(&(-6i32).to_le_bytes());
        let out = decode_inputs(&specs, &req, &bin).unwrap();
        assert_eq!(bytemuck::cast_slice::<u8, i32>(&out[0].data), [5, -6]);
        assert_eq!(out[1].data, [7, 8, 9]);
        // A byte too many is an error, not ignored.
        bin.push(0);
        let e = decode_inputs(&specs, &req, &bin).unwrap_err();
        assert!(e.message.contains("not claimed"), "{}", e.message);
    }

    #[test]
    fn bad_tensors_are_explained() {
        let specs = [spec("x", DType::F32, vec![Dim::Dynamic, Dim::Fixed(3)])];
        for (req, words) in [
            (
                serde_json::json!([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]),
                "shape [1, 4]",
            ),
            (
                serde_json::json!([{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]),
                "the model takes FP32",
            ),
            (
                serde_json::json!([{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]),
                "2 values",
            ),
            (
                serde_json::json!([{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3, 4]}]),
                "more values",
            ),
            (
                serde_json::json!([{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, "a", 3]}]),
                "element 1",
            ),
            (
                serde_json::json!([{"name": "x", "shape": [-1, 3], "datatype": "FP32", "data": []}]),
                "negative",
            ),
            (
                serde_json::json!([{"name": "x", "shape": [1, 3], "datatype": "FP16", "data": [1, 2, 3]}]),
                "not supported",
            ),
            (
                serde_json::json!([{"name": "y", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]),
                "unknown input \"y\"",
            ),
            (serde_json::json!([]), "missing input \"x\""),
            (
                serde_json::json!([{"name": "x", "shape": [1, 3], "datatype": "FP32"}]),
                "no data",
            ),
            (
                serde_json::json!([{"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]),
                "runs past the end",
            ),
        ] {
            let e = decode_inputs(&specs, &inputs(req.clone()), &[]).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(words), "{req}: {}", e.message);
        }
    }

    #[test]
    fn a_tiny_body_with_a_huge_shape_is_refused_before_anything_is_reserved() {
        // 2^28 f32 = 1 GiB declared, two values given: the count is checked first, so the
        // error comes back without a gigabyte reservation (the daemon-level VmPeak check is
        // in daemon/tests/http_hostile.rs).
        let specs = [spec("x", DType::F32, vec![Dim::Dynamic, Dim::Fixed(2)])];
        let req = inputs(serde_json::json!([
            {"name": "x", "shape": [1 << 27, 2], "datatype": "FP32", "data": [1, 2]},
        ]));
        let e = decode_inputs(&specs, &req, &[]).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("2 values"), "{}", e.message);
        assert!(e.message.contains("268435456 expected"), "{}", e.message);
        // The binary extension: the declared size is checked against the shape first.
        let req = inputs(serde_json::json!([
            {"name": "x", "shape": [1 << 27, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
        ]));
        let e = decode_inputs(&specs, &req, &[0; 8]).unwrap_err();
        assert!(
            e.message.contains("1073741824 bytes expected"),
            "{}",
            e.message
        );
        assert_eq!(
            count_elements(&serde_json::json!([[1, 2], [3, [4, 5]]]), 10),
            5
        );
        assert_eq!(count_elements(&serde_json::json!([1, 2, 3, 4, 5]), 2), 3);
    }

    #[test]
    fn output_data_serialises_from_bytes() {
        let f: Vec<u8> = [0.1f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            serde_json::to_string(&Data {
                dtype: DType::F32,
                bytes: &f
            })
            .unwrap(),
            "[0.1,2.0]"
        );
        let i: Vec<u8> = [-1i64, 7].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            serde_json::to_string(&Data {
                dtype: DType::I64,
                bytes: &i
            })
            .unwrap(),
            "[-1,7]"
        );
        assert_eq!(
            serde_json::to_string(&Data {
                dtype: DType::Bool,
                bytes: &[1, 0]
            })
            .unwrap(),
            "[true,false]"
        );
    }
}
