//! The fixed 32-byte frame header, opcodes, limits and the frame layout arithmetic.

use crate::ProtoError;

/// `"EINF"` read as a little-endian u32.
pub const MAGIC: u32 = 0x464E_4945;
/// The only protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// Versions this codec can negotiate in HELLO, oldest first.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];
/// Size of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Alignment of the tensor data section and of every tensor in it, from the frame start.
pub const ALIGN: u64 = 64;
/// Flag bit 0: end of stream. Every v1 message is a single frame, so v1 receivers ignore it;
/// it is defined now so that streaming can be added without a new header layout.
pub const FLAG_END_OF_STREAM: u16 = 0x0001;
/// Flag bits a v1 receiver accepts. Any other bit is rejected (BAD_FRAME) so that a future
/// flag which changes how a frame must be read can never be silently misread by an old peer.
pub const KNOWN_FLAGS: u16 = FLAG_END_OF_STREAM;

/// What a frame asks for or answers. Responses are the request opcode with bit 7 set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    Hello = 0x01,
    Predict = 0x02,
    Metadata = 0x03,
    Health = 0x04,
    /// Predict from entity keys: the server assembles the features (docs/features.md).
    PredictByEntity = 0x05,
    /// The true label of a logged prediction (online accuracy).
    Feedback = 0x06,
    /// Write feature rows into the server's feature store.
    PutFeatures = 0x07,
    /// Read feature rows from the server's feature store.
    GetFeatures = 0x08,
    HelloResponse = 0x81,
    PredictResponse = 0x82,
    MetadataResponse = 0x83,
    HealthResponse = 0x84,
    PredictByEntityResponse = 0x85,
    FeedbackResponse = 0x86,
    PutFeaturesResponse = 0x87,
    GetFeaturesResponse = 0x88,
    Error = 0xFF,
}

impl Opcode {
    pub const ALL: [Opcode; 17] = [
        Opcode::Hello,
        Opcode::Predict,
        Opcode::Metadata,
        Opcode::Health,
        Opcode::PredictByEntity,
        Opcode::Feedback,
        Opcode::HelloResponse,
        Opcode::PredictResponse,
        Opcode::MetadataResponse,
        Opcode::HealthResponse,
        Opcode::PredictByEntityResponse,
        Opcode::FeedbackResponse,
        Opcode::Error,
        Opcode::PutFeatures,
        Opcode::GetFeatures,
        Opcode::PutFeaturesResponse,
        Opcode::GetFeaturesResponse,
    ];

    pub const fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            0x01 => Opcode::Hello,
            0x02 => Opcode::Predict,
            0x03 => Opcode::Metadata,
            0x04 => Opcode::Health,
            0x05 => Opcode::PredictByEntity,
            0x06 => Opcode::Feedback,
            0x81 => Opcode::HelloResponse,
            0x82 => Opcode::PredictResponse,
            0x83 => Opcode::MetadataResponse,
            0x84 => Opcode::HealthResponse,
            0x85 => Opcode::PredictByEntityResponse,
            0x86 => Opcode::FeedbackResponse,
            0x07 => Opcode::PutFeatures,
            0x08 => Opcode::GetFeatures,
            0x87 => Opcode::PutFeaturesResponse,
            0x88 => Opcode::GetFeaturesResponse,
            0xFF => Opcode::Error,
            _ => return None,
        })
    }

    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The opcode of a successful answer to this request; `None` for responses and ERROR.
    pub const fn response(self) -> Option<Opcode> {
        match self {
            Opcode::Hello => Some(Opcode::HelloResponse),
            Opcode::Predict => Some(Opcode::PredictResponse),
            Opcode::Metadata => Some(Opcode::MetadataResponse),
            Opcode::Health => Some(Opcode::HealthResponse),
            Opcode::PredictByEntity => Some(Opcode::PredictByEntityResponse),
            Opcode::Feedback => Some(Opcode::FeedbackResponse),
            Opcode::PutFeatures => Some(Opcode::PutFeaturesResponse),
            Opcode::GetFeatures => Some(Opcode::GetFeaturesResponse),
            _ => None,
        }
    }

    pub const fn is_request(self) -> bool {
        (self as u8) & 0x80 == 0
    }

    /// Opcodes whose messages are not defined yet (their issues fill them in).
    /// None in v1 today: every opcode of §3 has its messages (kept so that a future
    /// reservation has its place).
    pub const fn is_reserved(self) -> bool {
        let _ = self;
        false
    }

    pub const fn name(self) -> &'static str {
        match self {
            Opcode::Hello => "HELLO",
            Opcode::Predict => "PREDICT",
            Opcode::Metadata => "METADATA",
            Opcode::Health => "HEALTH",
            Opcode::PredictByEntity => "PREDICT_BY_ENTITY",
            Opcode::Feedback => "FEEDBACK",
            Opcode::HelloResponse => "HELLO_RESPONSE",
            Opcode::PredictResponse => "PREDICT_RESPONSE",
            Opcode::MetadataResponse => "METADATA_RESPONSE",
            Opcode::HealthResponse => "HEALTH_RESPONSE",
            Opcode::PredictByEntityResponse => "PREDICT_BY_ENTITY_RESPONSE",
            Opcode::FeedbackResponse => "FEEDBACK_RESPONSE",
            Opcode::PutFeatures => "PUT_FEATURES",
            Opcode::GetFeatures => "GET_FEATURES",
            Opcode::PutFeaturesResponse => "PUT_FEATURES_RESPONSE",
            Opcode::GetFeaturesResponse => "GET_FEATURES_RESPONSE",
            Opcode::Error => "ERROR",
        }
    }
}

impl std::fmt::Display for Opcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Receiver-side limits. The defaults are the protocol's stated maxima; a server may
/// configure lower values and announces them in HELLO_RESPONSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole frame, header included.
    pub max_frame_bytes: u64,
    pub max_meta_bytes: u32,
    /// Requests a client may have outstanding on one connection.
    pub max_in_flight: u32,
    /// Tensors in one request or response (also bounds the wanted-outputs list).
    pub max_tensors: u32,
    pub max_rank: u32,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_frame_bytes: 64 << 20,
        max_meta_bytes: 64 << 10,
        max_in_flight: 128,
        max_tensors: 64,
        max_rank: 8,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// The decoded fixed header. `opcode` stays raw so that a receiver can answer an unknown
/// opcode with UNKNOWN_OPCODE on the same request id and skip the body (framing is intact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    pub version: u8,
    pub opcode: u8,
    pub flags: u16,
    pub request_id: u64,
    pub meta_len: u32,
    pub data_len: u64,
}

impl Header {
    /// A v1 header with no flags.
    pub const fn new(opcode: Opcode, request_id: u64, meta_len: u32, data_len: u64) -> Header {
        Header {
            version: VERSION,
            opcode: opcode as u8,
            flags: 0,
            request_id,
            meta_len,
            data_len,
        }
    }

    /// Decodes the first 32 bytes of `buf` against the default [`Limits`].
    pub fn decode(buf: &[u8]) -> Result<Header, ProtoError> {
        Header::decode_with(buf, &Limits::DEFAULT)
    }

    /// Decodes and checks magic, version, reserved field, flags, metadata and frame size.
    /// Every error here means framing is lost: answer (see [`peek_request_id`]) and close.
    pub fn decode_with(buf: &[u8], limits: &Limits) -> Result<Header, ProtoError> {
        let b: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(ProtoError::Truncated {
                need: HEADER_LEN as u64,
                have: buf.len() as u64,
            })?;
        let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if magic != MAGIC {
            return Err(ProtoError::BadMagic(magic));
        }
        let version = b[4];
        if version != VERSION {
            return Err(ProtoError::UnsupportedVersion(version));
        }
        let reserved = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
        if reserved != 0 {
            return Err(ProtoError::ReservedNonZero(reserved));
        }
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(ProtoError::UnknownFlags(flags & !KNOWN_FLAGS));
        }
        let header = Header {
            version,
            opcode: b[5],
            flags,
            request_id: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
            meta_len: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
            data_len: u64::from_le_bytes([b[24], b[25], b[26], b[27], b[28], b[29], b[30], b[31]]),
        };
        if header.meta_len > limits.max_meta_bytes {
            return Err(ProtoError::MetaTooLarge {
                len: u64::from(header.meta_len),
                max: u64::from(limits.max_meta_bytes),
            });
        }
        let frame_len = header.frame_len();
        if frame_len > limits.max_frame_bytes {
            return Err(ProtoError::FrameTooLarge {
                len: frame_len,
                max: limits.max_frame_bytes,
            });
        }
        Ok(header)
    }

    /// Writes the header; the reserved field is always written as 0.
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = self.version;
        out[5] = self.opcode;
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.meta_len.to_le_bytes());
        out[20..24].copy_from_slice(&0u32.to_le_bytes());
        out[24..32].copy_from_slice(&self.data_len.to_le_bytes());
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.encode(&mut out);
        out
    }

    /// The opcode, or UNKNOWN_OPCODE.
    pub fn op(&self) -> Result<Opcode, ProtoError> {
        Opcode::from_u8(self.opcode).ok_or(ProtoError::UnknownOpcode(self.opcode))
    }

    /// Offset of the tensor data section from the frame start.
    pub fn data_offset(&self) -> u64 {
        frame_layout(self.meta_len, self.data_len).0
    }

    /// Whole frame length, header included (saturating: an absurd value fails every limit).
    pub fn frame_len(&self) -> u64 {
        frame_layout(self.meta_len, self.data_len).1
    }

    /// Bytes after the header: metadata, padding and tensor data.
    pub fn body_len(&self) -> u64 {
        self.frame_len().saturating_sub(HEADER_LEN as u64)
    }
}

/// `(data_offset, total_len)` of a frame, both from the frame start. With `data_len == 0`
/// there is no padding, so `data_offset == 32 + meta_len`. `total_len` saturates at
/// `u64::MAX` (which no limit admits) instead of overflowing.
pub const fn frame_layout(meta_len: u32, data_len: u64) -> (u64, u64) {
    let meta_end = HEADER_LEN as u64 + meta_len as u64;
    let data_offset = if data_len == 0 {
        meta_end
    } else {
        align_up(meta_end)
    };
    (data_offset, data_offset.saturating_add(data_len))
}

/// Rounds up to the next multiple of [`ALIGN`], saturating near `u64::MAX`.
pub const fn align_up(n: u64) -> u64 {
    match n.checked_add(ALIGN - 1) {
        Some(v) => v & !(ALIGN - 1),
        None => !(ALIGN - 1),
    }
}

/// The request id of a frame whose header failed to decode, so that the ERROR can still be
/// matched by the client. `None` when fewer than 32 bytes are given or the magic is wrong
/// (then nothing in the buffer can be trusted to be an id; answer with id 0).
pub fn peek_request_id(buf: &[u8]) -> Option<u64> {
    let b = buf.get(..HEADER_LEN)?;
    if b.get(0..4)? != MAGIC.to_le_bytes() {
        return None;
    }
    Some(u64::from_le_bytes(b.get(8..16)?.try_into().ok()?))
}

/// Rewrites the request id of an encoded frame in place, so a load generator can encode a
/// request once and resend it with fresh ids.
pub fn set_request_id(frame: &mut [u8], request_id: u64) -> Result<(), ProtoError> {
    let have = frame.len() as u64;
    let slot = frame.get_mut(8..16).ok_or(ProtoError::Truncated {
        need: HEADER_LEN as u64,
        have,
    })?;
    slot.copy_from_slice(&request_id.to_le_bytes());
    Ok(())
}

/// The highest version both sides speak, for answering HELLO.
pub fn negotiate(client_versions: &[u32]) -> Option<u32> {
    SUPPORTED_VERSIONS
        .iter()
        .rev()
        .copied()
        .find(|v| client_versions.contains(v))
}
