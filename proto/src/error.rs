//! Wire error codes and the codec's typed error, each mapping to one code.

use crate::{ErrorResponse, Opcode};

/// Stable error codes carried in ERROR frames. Never renumbered; new codes are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    BadFrame = 1,
    UnsupportedVersion = 2,
    UnknownOpcode = 3,
    UnknownModel = 4,
    /// Wrong dtype, shape, input names, or values the model refuses (NaN).
    BadInput = 5,
    Overloaded = 6,
    DeadlineExceeded = 7,
    FrameTooLarge = 8,
    Internal = 9,
    NotReady = 10,
    NotImplemented = 11,
    ShuttingDown = 12,
    TooManyInFlight = 13,
    /// The server wants a token (in HELLO) or a peer it allows; the connection closes.
    Unauthenticated = 14,
    /// The feature store refused or failed: map full, not enabled, a stored row unreadable.
    FeatureStore = 15,
    /// FEEDBACK named a prediction the log does not hold (never served, or past its TTL).
    UnknownRequestId = 16,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownOpcode,
        ErrorCode::UnknownModel,
        ErrorCode::BadInput,
        ErrorCode::Overloaded,
        ErrorCode::DeadlineExceeded,
        ErrorCode::FrameTooLarge,
        ErrorCode::Internal,
        ErrorCode::NotReady,
        ErrorCode::NotImplemented,
        ErrorCode::ShuttingDown,
        ErrorCode::TooManyInFlight,
        ErrorCode::Unauthenticated,
        ErrorCode::FeatureStore,
        ErrorCode::UnknownRequestId,
    ];

    pub const fn from_u32(v: u32) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::BadFrame,
            2 => ErrorCode::UnsupportedVersion,
            3 => ErrorCode::UnknownOpcode,
            4 => ErrorCode::UnknownModel,
            5 => ErrorCode::BadInput,
            6 => ErrorCode::Overloaded,
            7 => ErrorCode::DeadlineExceeded,
            8 => ErrorCode::FrameTooLarge,
            9 => ErrorCode::Internal,
            10 => ErrorCode::NotReady,
            11 => ErrorCode::NotImplemented,
            12 => ErrorCode::ShuttingDown,
            13 => ErrorCode::TooManyInFlight,
            14 => ErrorCode::Unauthenticated,
            15 => ErrorCode::FeatureStore,
            16 => ErrorCode::UnknownRequestId,
            _ => return None,
        })
    }

    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "BAD_FRAME",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::UnknownOpcode => "UNKNOWN_OPCODE",
            ErrorCode::UnknownModel => "UNKNOWN_MODEL",
            ErrorCode::BadInput => "BAD_INPUT",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::NotReady => "NOT_READY",
            ErrorCode::NotImplemented => "NOT_IMPLEMENTED",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::TooManyInFlight => "TOO_MANY_IN_FLIGHT",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::FeatureStore => "FEATURE_STORE",
            ErrorCode::UnknownRequestId => "UNKNOWN_REQUEST_ID",
        }
    }

    /// Whether the same request may succeed if sent again later (after `retry_after_ms`).
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Overloaded
                | ErrorCode::NotReady
                | ErrorCode::ShuttingDown
                | ErrorCode::TooManyInFlight
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why one tensor of a request or response is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TensorProblem {
    #[error("empty name")]
    EmptyName,
    #[error("name appears twice")]
    DuplicateName,
    #[error("unknown dtype code {0}")]
    UnknownDType(u32),
    #[error("rank {rank} exceeds the limit of {max}")]
    Rank { rank: usize, max: u32 },
    #[error("byte size overflows u64")]
    SizeOverflow,
    #[error("length is {declared} bytes, dtype and shape need {expected}")]
    LengthMismatch { expected: u64, declared: u64 },
    #[error("offset is {offset}, the canonical layout puts it at {expected}")]
    Misplaced { offset: u64, expected: u64 },
}

impl TensorProblem {
    pub fn kind(&self) -> ErrorCode {
        match self {
            TensorProblem::Misplaced { .. } => ErrorCode::BadFrame,
            _ => ErrorCode::BadInput,
        }
    }
}

/// Everything the codec can refuse. [`ProtoError::kind`] gives the wire code to answer with;
/// [`ProtoError::closes_connection`] says whether framing is lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: u64, have: u64 },
    #[error("bad magic {0:#010x} (expected 0x464e4945, \"EINF\")")]
    BadMagic(u32),
    #[error("unsupported protocol version {0} (this codec speaks 1)")]
    UnsupportedVersion(u8),
    #[error("reserved header field is {0:#x}, must be 0")]
    ReservedNonZero(u32),
    #[error("unknown flag bits {0:#06x}")]
    UnknownFlags(u16),
    #[error("metadata of {len} bytes exceeds the limit of {max}")]
    MetaTooLarge { len: u64, max: u64 },
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: u64, max: u64 },
    #[error("frame body is {have} bytes, the header says {expected}")]
    BodyLength { expected: u64, have: u64 },
    #[error("padding between metadata and tensor data is not zero")]
    NonZeroPadding,
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("opcode {got:#04x} where {expected} was expected")]
    WrongOpcode { expected: Opcode, got: u8 },
    #[error("{opcode} carries {data_len} bytes of tensor data but takes none")]
    UnexpectedData { opcode: Opcode, data_len: u64 },
    #[error("metadata does not decode: {0}")]
    Meta(prost::DecodeError),
    #[error("{count} tensors exceed the limit of {max}")]
    TooManyTensors { count: usize, max: u32 },
    #[error("tensor {index} ({name:?}): {problem}")]
    Tensor {
        index: usize,
        name: String,
        problem: TensorProblem,
    },
    #[error("tensor data section is {have} bytes, the tensors need {expected}")]
    DataLength { expected: u64, have: u64 },
    /// A value given to [`crate::Tensor::from_f64_as`] that the dtype cannot hold.
    #[error("value {value} (element {index}) is not a valid {dtype}")]
    Value {
        index: usize,
        value: String,
        dtype: crate::DType,
    },
}

impl ProtoError {
    /// The wire error code a receiver answers with.
    pub fn kind(&self) -> ErrorCode {
        match self {
            ProtoError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            ProtoError::MetaTooLarge { .. } | ProtoError::FrameTooLarge { .. } => {
                ErrorCode::FrameTooLarge
            }
            ProtoError::UnknownOpcode(_) => ErrorCode::UnknownOpcode,
            ProtoError::TooManyTensors { .. } | ProtoError::Value { .. } => ErrorCode::BadInput,
            ProtoError::Tensor { problem, .. } => problem.kind(),
            ProtoError::Truncated { .. }
            | ProtoError::BadMagic(_)
            | ProtoError::ReservedNonZero(_)
            | ProtoError::UnknownFlags(_)
            | ProtoError::BodyLength { .. }
            | ProtoError::NonZeroPadding
            | ProtoError::WrongOpcode { .. }
            | ProtoError::UnexpectedData { .. }
            | ProtoError::Meta(_)
            | ProtoError::DataLength { .. } => ErrorCode::BadFrame,
        }
    }

    /// True for header errors: the receiver can no longer find the next frame, so it sends
    /// the ERROR and closes. Body errors leave the connection usable.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProtoError::Truncated { .. }
                | ProtoError::BadMagic(_)
                | ProtoError::UnsupportedVersion(_)
                | ProtoError::ReservedNonZero(_)
                | ProtoError::UnknownFlags(_)
                | ProtoError::MetaTooLarge { .. }
                | ProtoError::FrameTooLarge { .. }
        )
    }

    /// The ERROR message to send back for this refusal.
    pub fn to_response(&self) -> ErrorResponse {
        ErrorResponse::new(self.kind(), self.to_string())
    }
}

impl From<prost::DecodeError> for ProtoError {
    fn from(e: prost::DecodeError) -> Self {
        ProtoError::Meta(e)
    }
}
