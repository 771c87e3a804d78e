//! The prost metadata messages, one per opcode. Tags are stable: never reuse or renumber.

use crate::ErrorCode;

/// One tensor in a frame's data section.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorMeta {
    #[prost(string, tag = "1")]
    pub name: String,
    /// A [`crate::DType`] code.
    #[prost(uint32, tag = "2")]
    pub dtype: u32,
    #[prost(uint64, repeated, tag = "3")]
    pub shape: Vec<u64>,
    /// From the start of the data section; a multiple of 64.
    #[prost(uint64, tag = "4")]
    pub offset: u64,
    /// Bytes: product(shape) × dtype size.
    #[prost(uint64, tag = "5")]
    pub length: u64,
}

/// PREDICT (0x02).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PredictRequest {
    /// Model name (as configured in `[[models]]`).
    #[prost(string, tag = "1")]
    pub model: String,
    /// Version pin; absent = the model's default version.
    #[prost(string, optional, tag = "2")]
    pub version: Option<String>,
    #[prost(message, repeated, tag = "3")]
    pub inputs: Vec<TensorMeta>,
    /// Outputs wanted, by name; empty = all.
    #[prost(string, repeated, tag = "4")]
    pub outputs: Vec<String>,
    /// Budget in µs from the server's receipt of the frame; 0 = none.
    #[prost(uint64, tag = "5")]
    pub deadline_us: u64,
    /// Opaque key for A/B routing; the server hashes it.
    #[prost(bytes = "vec", tag = "6")]
    pub routing_key: Vec<u8>,
}

/// PREDICT_RESPONSE (0x82).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PredictResponse {
    #[prost(string, tag = "1")]
    pub model: String,
    /// The version that actually served the request.
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(message, repeated, tag = "3")]
    pub outputs: Vec<TensorMeta>,
    /// Engine that ran it, e.g. "ort-cpu", "ort-cuda", "tract".
    #[prost(string, tag = "4")]
    pub backend: String,
    /// Time spent queued (batching, backpressure) in µs.
    #[prost(uint64, tag = "5")]
    pub queue_us: u64,
    /// Time spent in the engine in µs.
    #[prost(uint64, tag = "6")]
    pub compute_us: u64,
    /// Id of the request's first row in the prediction log (row `k` is `prediction_id + k`),
    /// for FEEDBACK; 0 = not logged (telemetry off).
    #[prost(uint64, tag = "7")]
    pub prediction_id: u64,
}

/// ERROR (0xFF), the answer to any request that failed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorResponse {
    /// An [`ErrorCode`].
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub message: String,
    /// For retryable codes: a hint, 0 = none.
    #[prost(uint64, tag = "3")]
    pub retry_after_ms: u64,
}

impl ErrorResponse {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorResponse {
        ErrorResponse {
            code: code.as_u32(),
            message: message.into(),
            retry_after_ms: 0,
        }
    }

    /// The typed code; `None` for a code this codec does not know (a newer peer).
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u32(self.code)
    }
}

/// HELLO (0x01).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// Protocol versions the client speaks.
    #[prost(uint32, repeated, tag = "1")]
    pub versions: Vec<u32>,
    /// Free-form client identification, for logs.
    #[prost(string, tag = "2")]
    pub client: String,
    /// The shared secret of a server configured with a token (`server.auth_token_file`);
    /// empty = none. Sent in the clear: use it over a Unix socket, loopback or a trusted link.
    #[prost(string, tag = "3")]
    pub token: String,
    /// Asks for the shared-memory transport (docs/protocol.md §11): the bytes wanted for
    /// each of the two rings; 0 = the socket only. Only over a Unix socket.
    #[prost(uint64, tag = "4")]
    pub shm_ring_bytes: u64,
}

/// HELLO_RESPONSE (0x81): the chosen version and the server's limits.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloResponse {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(uint64, tag = "2")]
    pub max_frame_bytes: u64,
    #[prost(uint32, tag = "3")]
    pub max_in_flight: u32,
    #[prost(string, tag = "4")]
    pub server: String,
    #[prost(uint32, tag = "5")]
    pub max_meta_bytes: u32,
    #[prost(uint32, tag = "6")]
    pub max_tensors: u32,
    #[prost(uint32, tag = "7")]
    pub max_rank: u32,
    /// The shared-memory grant (docs/protocol.md §11): bytes of each ring in the memfd
    /// passed with this frame (SCM_RIGHTS); 0 = no shared memory.
    #[prost(uint64, tag = "8")]
    pub shm_ring_bytes: u64,
}

/// METADATA (0x03).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataRequest {
    #[prost(string, tag = "1")]
    pub model: String,
    #[prost(string, optional, tag = "2")]
    pub version: Option<String>,
}

/// A declared model input or output; `-1` in `shape` is a dynamic dimension.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorSpecMsg {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub dtype: u32,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
}

/// METADATA_RESPONSE (0x83).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    /// The version described.
    #[prost(string, tag = "2")]
    pub version: String,
    /// Every loaded version of this model.
    #[prost(string, repeated, tag = "3")]
    pub versions: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    pub inputs: Vec<TensorSpecMsg>,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<TensorSpecMsg>,
    #[prost(string, tag = "6")]
    pub backend: String,
    #[prost(bool, tag = "7")]
    pub ready: bool,
    /// JSON: how the engine was chosen and what loading found.
    #[prost(string, tag = "8")]
    pub load_report: String,
}

/// HEALTH (0x04).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthRequest {}

/// One loaded model version in HEALTH_RESPONSE.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelStatus {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(string, tag = "3")]
    pub backend: String,
    #[prost(bool, tag = "4")]
    pub ready: bool,
    /// This version serves requests that carry no version pin.
    #[prost(bool, tag = "5")]
    pub default: bool,
    #[prost(uint64, tag = "6")]
    pub requests: u64,
    #[prost(uint64, tag = "7")]
    pub errors: u64,
}

/// HEALTH_RESPONSE (0x84).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthResponse {
    #[prost(bool, tag = "1")]
    pub ready: bool,
    #[prost(message, repeated, tag = "2")]
    pub models: Vec<ModelStatus>,
}

/// FEEDBACK (0x06): the true label or value of one logged prediction, named by its
/// prediction id or by an entity and a time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeedbackRequest {
    /// A `prediction_id` from PREDICT_RESPONSE (plus the row); 0 = use `entity`.
    #[prost(uint64, tag = "1")]
    pub prediction_id: u64,
    /// The entity of a PREDICT_BY_ENTITY request: the latest prediction for it at or before
    /// `timestamp_ms` is labelled.
    #[prost(string, tag = "2")]
    pub entity: String,
    /// Unix milliseconds; 0 = now.
    #[prost(uint64, tag = "3")]
    pub timestamp_ms: u64,
    /// The true class id or regression value.
    #[prost(double, tag = "4")]
    pub label: f64,
}

/// FEEDBACK_RESPONSE (0x86): what the label was joined to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeedbackResponse {
    #[prost(uint64, tag = "1")]
    pub prediction_id: u64,
    #[prost(string, tag = "2")]
    pub model: String,
    #[prost(string, tag = "3")]
    pub version: String,
    /// The A/B arm that served the prediction.
    #[prost(string, tag = "4")]
    pub arm: String,
    /// What the model predicted (its first output of that row).
    #[prost(double, tag = "5")]
    pub predicted: f64,
}
