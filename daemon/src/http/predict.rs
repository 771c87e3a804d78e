//! `POST /predict` and `GET /health` in the shape of the FastAPI server our users run today,
//! so their clients move over unchanged:
//! `{"features": [[…], …], "model_version"?}` → `{"predictions", "model_version", "latency_ms"}`.
//!
//! `predictions` is what the FastAPI server returns: `predict_proba` rows for a classifier
//! (the model's `probabilities` output), the predicted values for a regressor.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgeinfer_engine::{DType, Dim, OutputTensor, Outputs};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::infer::{self, OwnedInput, SessionCache};
use super::kserve::{Data, ROUTING_KEY};
use super::{ApiError, HttpState};

#[derive(Deserialize)]
struct PredictRequest {
    features: Vec<Vec<f64>>,
    #[serde(default)]
    model_version: Option<String>,
}

#[derive(Serialize)]
struct PredictResponse<'a> {
    predictions: Predictions<'a>,
    model_version: &'a str,
    latency_ms: f64,
}

/// Rows of an output tensor as nested JSON arrays, or a flat list for one value per row.
struct Predictions<'a> {
    tensor: &'a OutputTensor,
    flat: bool,
}

impl Serialize for Predictions<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let t = self.tensor;
        let dtype = t.dtype.unwrap_or(DType::F32);
        if self.flat {
            return Data {
                dtype,
                bytes: &t.data,
            }
            .serialize(s);
        }
        let rows = t.shape.first().copied().unwrap_or(0);
        let row_bytes = t.data.len().checked_div(rows).unwrap_or(0);
        let mut seq = s.serialize_seq(Some(rows))?;
        if row_bytes > 0 {
            for row in t.data.chunks_exact(row_bytes) {
                seq.serialize_element(&Data { dtype, bytes: row })?;
            }
        }
        seq.end()
    }
}

pub(super) async fn predict(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let body = body?;
    let pool = state.pool.clone();
    pool.run(move |cache| predict_on(cache, &state, &headers, &body, start))
        .await?
}

/// The whole of `/predict` after the body is in: parse, check, run, render (on a pool thread).
fn predict_on(
    cache: &mut SessionCache,
    state: &HttpState,
    headers: &HeaderMap,
    body: &[u8],
    start: Instant,
) -> Result<Response, ApiError> {
    let req: PredictRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"features\": [[number, …], …], \"model_version\"?: string}}: {e}"
        ))
    })?;
    let routing_key = headers
        .get(ROUTING_KEY)
        .map(HeaderValue::as_bytes)
        .unwrap_or(b"");
    let v = infer::resolve(
        state,
        &state.predict_model,
        req.model_version.as_deref(),
        routing_key,
    )?;

    // /predict feeds one 2-D float input; anything else is a model for /v2.
    let info = &v.model.info;
    let spec = match info.inputs.as_slice() {
        [one] if one.shape.len() == 2 && matches!(one.dtype, DType::F32 | DType::F64) => one,
        _ => {
            return Err(ApiError::bad_request(format!(
                "model {:?} does not take one 2-D float input; use /v2/models/{}/infer",
                v.name, v.name
            )))
        }
    };
    let rows = req.features.len();
    let cols = req.features.first().map_or(0, Vec::len);
    let bad_shape = |msg: String| {
        v.stats.record(crate::model_table::Outcome::BadInput);
        ApiError::bad_request(msg)
    };
    if rows == 0 {
        return Err(bad_shape("features is empty: give at least one row".into()));
    }
    if let Some(i) = req.features.iter().position(|r| r.len() != cols) {
        return Err(bad_shape(format!(
            "row {i} has {} features, row 0 has {cols}",
            req.features[i].len()
        )));
    }
    if let Dim::Fixed(want) = spec.shape[1] {
        if cols != want {
            return Err(bad_shape(format!(
                "rows have {cols} features; model {:?} takes {want}",
                v.name
            )));
        }
    }
    let mut data = Vec::with_capacity(rows * cols * spec.dtype.size());
    infer::encode_floats(
        req.features.iter().flatten().copied(),
        spec.dtype,
        &mut data,
    );
    let input = OwnedInput {
        dtype: spec.dtype,
        shape: vec![rows, cols],
        data,
    };

    let out_idx = info
        .outputs
        .iter()
        .position(|o| o.name == "probabilities")
        .or_else(|| {
            info.outputs
                .iter()
                .position(|o| matches!(o.dtype, DType::F32 | DType::F64))
        })
        .unwrap_or(0);
    let version = v.version.clone();
    infer::run(
        cache,
        state,
        &v,
        std::slice::from_ref(&input),
        start,
        |outs: &Outputs| {
            let tensor = outs.tensors.get(out_idx).ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the model returned no outputs",
                )
            })?;
            // A regressor's [N] or [N, 1] output reads as one value per row, like sklearn's predict().
            let flat =
                tensor.name != "probabilities" && tensor.shape.iter().skip(1).all(|&d| d == 1);
            let latency_ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
            let resp = PredictResponse {
                predictions: Predictions { tensor, flat },
                model_version: &version,
                latency_ms,
            };
            let body = serde_json::to_vec(&resp)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok((
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response())
        },
    )
}

/// The FastAPI server's health answer, with the model `/predict` serves.
pub(super) async fn health(State(state): State<Arc<HttpState>>) -> Result<Json<Value>, ApiError> {
    let snap = state.table.snapshot();
    let v = snap.describe(&state.predict_model, None)?;
    if !v.is_ready() {
        return Err(ApiError::unavailable(format!(
            "model {:?} is not ready yet",
            v.name
        )));
    }
    Ok(Json(serde_json::json!({
        "status": "ok",
        "model": v.name,
        "model_version": v.version,
        "backend": v.model.backend().name(),
    })))
}
