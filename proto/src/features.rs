//! The feature-cache messages: PREDICT_BY_ENTITY (0x05/0x85), PUT_FEATURES (0x07/0x87) and
//! GET_FEATURES (0x08/0x88) (docs/protocol.md §5, docs/features.md). Tags are stable.

use prost::Message;

use crate::frame::{split_body, validate_tensors};
use crate::{
    encode_frame_head, layout_tensors, Header, Limits, Opcode, PredictResponse, ProtoError,
    TensorView,
};

/// One feature of one row given by the request instead of the store's value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureOverride {
    /// Index into `keys`.
    #[prost(uint32, tag = "1")]
    pub row: u32,
    /// Feature name, as in the model's feature schema.
    #[prost(string, tag = "2")]
    pub feature: String,
    #[prost(double, tag = "3")]
    pub value: f64,
}

/// PREDICT_BY_ENTITY (0x05): entity keys in; the server assembles one feature row per key
/// from its store, in the model's feature order, and runs the model. No tensor data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PredictByEntityRequest {
    #[prost(string, tag = "1")]
    pub model: String,
    #[prost(string, optional, tag = "2")]
    pub version: Option<String>,
    /// One row per key, in this order.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub keys: Vec<Vec<u8>>,
    /// Outputs wanted, by name; empty = all.
    #[prost(string, repeated, tag = "4")]
    pub outputs: Vec<String>,
    #[prost(uint64, tag = "5")]
    pub deadline_us: u64,
    #[prost(bytes = "vec", tag = "6")]
    pub routing_key: Vec<u8>,
    #[prost(message, repeated, tag = "7")]
    pub overrides: Vec<FeatureOverride>,
    /// The feature-schema version the client expects; 0 = whatever the model has. A
    /// different version is refused (BAD_INPUT): the client was built for another schema.
    #[prost(uint32, tag = "8")]
    pub schema_version: u32,
}

/// What assembly found for one row. Feature indexes are in the model's feature order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntityRowReport {
    /// The store has a row for this key.
    #[prost(bool, tag = "1")]
    pub found: bool,
    /// The stored row was written under another schema version: every feature defaulted.
    #[prost(bool, tag = "2")]
    pub version_mismatch: bool,
    /// Features served as their default (missing entity or feature, stale by policy).
    #[prost(uint32, repeated, tag = "3")]
    pub defaulted: Vec<u32>,
    /// Features older than their max age (served per the schema's stale policy).
    #[prost(uint32, repeated, tag = "4")]
    pub stale: Vec<u32>,
    /// The stored row's event time, Unix ms; 0 when not found.
    #[prost(int64, tag = "5")]
    pub event_ts_ms: i64,
}

/// PREDICT_BY_ENTITY_RESPONSE (0x85): a PREDICT_RESPONSE plus one report per key. The tensor
/// data section holds the outputs exactly as in PREDICT_RESPONSE.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PredictByEntityResponse {
    #[prost(message, optional, tag = "1")]
    pub prediction: Option<PredictResponse>,
    #[prost(message, repeated, tag = "2")]
    pub rows: Vec<EntityRowReport>,
    /// The model's feature-schema version.
    #[prost(uint32, tag = "3")]
    pub schema_version: u32,
}

/// One named value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(double, tag = "2")]
    pub value: f64,
}

/// One entity's row for PUT_FEATURES; features not named are absent (served as defaults).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureRowMsg {
    #[prost(bytes = "vec", tag = "1")]
    pub entity: Vec<u8>,
    /// Unix ms. A row older than the stored one is skipped (idempotent by event time).
    #[prost(int64, tag = "2")]
    pub event_ts_ms: i64,
    #[prost(message, repeated, tag = "3")]
    pub values: Vec<FeatureValue>,
}

/// PUT_FEATURES (0x07): rows written all-or-nothing in one transaction.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutFeaturesRequest {
    #[prost(uint32, tag = "1")]
    pub schema_version: u32,
    #[prost(message, repeated, tag = "2")]
    pub rows: Vec<FeatureRowMsg>,
}

/// PUT_FEATURES_RESPONSE (0x87).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutFeaturesResponse {
    #[prost(uint64, tag = "1")]
    pub written: u64,
    /// Rows not written because the stored row is newer by event time.
    #[prost(uint64, tag = "2")]
    pub skipped_older: u64,
}

/// GET_FEATURES (0x08).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetFeaturesRequest {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub entities: Vec<Vec<u8>>,
}

/// One stored row as GET_FEATURES returns it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredFeatures {
    #[prost(bool, tag = "1")]
    pub found: bool,
    #[prost(int64, tag = "2")]
    pub event_ts_ms: i64,
    #[prost(uint32, tag = "3")]
    pub schema_version: u32,
    /// The values present in the row, in the stored layout's order.
    #[prost(message, repeated, tag = "4")]
    pub values: Vec<FeatureValue>,
}

/// GET_FEATURES_RESPONSE (0x88): one entry per requested entity, in order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetFeaturesResponse {
    #[prost(message, repeated, tag = "1")]
    pub rows: Vec<StoredFeatures>,
}

/// A decoded, validated PREDICT_BY_ENTITY_RESPONSE, tensor bytes borrowed from the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictByEntityResponseView<'a> {
    pub response: PredictByEntityResponse,
    data: &'a [u8],
}

impl<'a> PredictByEntityResponseView<'a> {
    /// The embedded PREDICT_RESPONSE metadata (always present once decoded).
    pub fn prediction(&self) -> &PredictResponse {
        self.response
            .prediction
            .as_ref()
            .expect("checked when decoding")
    }

    /// Output `i` as a view into the frame.
    pub fn output(&self, i: usize) -> Option<crate::TensorView<'_>> {
        let m = self.prediction().outputs.get(i)?;
        let start = usize::try_from(m.offset).ok()?;
        let end = start.checked_add(usize::try_from(m.length).ok()?)?;
        Some(crate::TensorView {
            name: &m.name,
            dtype: crate::DType::from_code(m.dtype)?,
            shape: &m.shape,
            data: self.data.get(start..end)?,
        })
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

/// Decodes and validates a PREDICT_BY_ENTITY_RESPONSE body (everything after the header).
pub fn decode_predict_by_entity_response<'a>(
    header: &Header,
    body: &'a [u8],
    limits: &Limits,
) -> Result<PredictByEntityResponseView<'a>, ProtoError> {
    if header.opcode != Opcode::PredictByEntityResponse.as_u8() {
        return Err(ProtoError::WrongOpcode {
            expected: Opcode::PredictByEntityResponse,
            got: header.opcode,
        });
    }
    let (meta, data) = split_body(header, body)?;
    let mut response = PredictByEntityResponse::decode(meta)?;
    let prediction = response
        .prediction
        .get_or_insert_with(PredictResponse::default);
    validate_tensors(&prediction.outputs, data.len() as u64, limits)?;
    Ok(PredictByEntityResponseView { response, data })
}

/// Encodes a PREDICT_BY_ENTITY_RESPONSE head (header, metadata, padding), filling
/// `response.prediction.outputs` with the canonical layout of `outputs`, and returns the
/// data section length; the caller writes the outputs as for PREDICT_RESPONSE.
pub fn encode_predict_by_entity_response_head(
    request_id: u64,
    response: &mut PredictByEntityResponse,
    outputs: &[TensorView<'_>],
    out: &mut Vec<u8>,
) -> Result<u64, ProtoError> {
    let prediction = response
        .prediction
        .get_or_insert_with(PredictResponse::default);
    let data_len = layout_tensors(outputs, &mut prediction.outputs)?;
    encode_frame_head(
        Opcode::PredictByEntityResponse,
        0,
        request_id,
        response,
        data_len,
        out,
    )?;
    Ok(data_len)
}

/// Encodes a whole PREDICT_BY_ENTITY_RESPONSE frame (copying the tensor bytes).
pub fn encode_predict_by_entity_response(
    request_id: u64,
    response: &mut PredictByEntityResponse,
    outputs: &[TensorView<'_>],
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    encode_predict_by_entity_response_head(request_id, response, outputs, out)?;
    crate::frame::append_tensor_data(outputs, out);
    Ok(())
}
