//! The edgeinfer wire protocol: a pure codec on byte slices. No IO, never panics.
//!
//! A frame is `header (32 B) | metadata (prost) | zero padding to 64 | tensor data`; the
//! specification is `docs/protocol.md`. Receivers read 32 bytes, [`Header::decode`], read
//! [`Header::body_len`] more bytes, then dispatch on [`Header::op`] to [`decode_predict`],
//! [`decode_message`] or [`decode_payload`]. Senders use [`encode_predict`],
//! [`encode_message`], or [`encode_frame_head`] plus their own vectored write of tensor data.

// Tensor bytes are little-endian on the wire and are viewed in place by both ends.
#[cfg(target_endian = "big")]
compile_error!("edgeinfer-proto assumes a little-endian host");

mod error;
mod features;
mod frame;
mod header;
mod msg;
pub mod shm;
mod tensor;

pub use error::{ErrorCode, ProtoError, TensorProblem};
pub use features::{
    decode_predict_by_entity_response, encode_predict_by_entity_response,
    encode_predict_by_entity_response_head, EntityRowReport, FeatureOverride, FeatureRowMsg,
    FeatureValue, GetFeaturesRequest, GetFeaturesResponse, PredictByEntityRequest,
    PredictByEntityResponse, PredictByEntityResponseView, PutFeaturesRequest, PutFeaturesResponse,
    StoredFeatures,
};
pub use frame::{
    decode_frame, decode_frame_with, decode_message, decode_payload, decode_payload_with,
    decode_predict, decode_predict_into, decode_predict_response, decode_predict_response_with,
    decode_predict_with, encode_error, encode_frame_head, encode_message, encode_predict,
    encode_predict_response, encode_predict_response_head, layout_tensors, padding, split_body,
    validate_tensors, Frame, Payload, PredictResponseView, PredictView,
};
pub use header::{
    align_up, frame_layout, negotiate, peek_request_id, set_request_id, Header, Limits, Opcode,
    ALIGN, FLAG_END_OF_STREAM, HEADER_LEN, KNOWN_FLAGS, MAGIC, SUPPORTED_VERSIONS, VERSION,
};
pub use msg::{
    ErrorResponse, FeedbackRequest, FeedbackResponse, HealthRequest, HealthResponse, Hello,
    HelloResponse, MetadataRequest, ModelMetadata, ModelStatus, PredictRequest, PredictResponse,
    TensorMeta, TensorSpecMsg,
};
pub use prost;
pub use tensor::{byte_len, element_count, DType, Tensor, TensorView};
