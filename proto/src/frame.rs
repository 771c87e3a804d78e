//! Whole frames: splitting a body into metadata and tensor data, validating the tensor
//! layout, and encoding frame heads (header + metadata + padding) into reusable buffers.

use prost::Message;

use crate::header::align_up;
use crate::tensor::byte_len;
use crate::{
    frame_layout, DType, ErrorCode, ErrorResponse, FeedbackRequest, FeedbackResponse, Header,
    HealthRequest, HealthResponse, Hello, HelloResponse, Limits, MetadataRequest, ModelMetadata,
    Opcode, PredictRequest, PredictResponse, ProtoError, TensorMeta, TensorProblem, TensorView,
    HEADER_LEN, KNOWN_FLAGS,
};

static ZEROS: [u8; 64] = [0u8; 64];

/// The zero bytes that follow a tensor of `len` bytes so the next one starts 64-aligned.
/// The last tensor of a frame is not followed by padding.
pub fn padding(len: u64) -> &'static [u8] {
    let pad = (crate::ALIGN - len % crate::ALIGN) % crate::ALIGN;
    ZEROS.get(..pad as usize).unwrap_or(&[])
}

// === decoding ===

/// A frame split into its three parts. Nothing beyond the header has been validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    pub meta: &'a [u8],
    pub data: &'a [u8],
}

/// Splits `body` (everything after the 32-byte header, exactly `header.body_len()` bytes)
/// into metadata and tensor data, checking that the padding between them is zero.
pub fn split_body<'a>(header: &Header, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ProtoError> {
    let expected = header.body_len();
    if body.len() as u64 != expected {
        return Err(ProtoError::BodyLength {
            expected,
            have: body.len() as u64,
        });
    }
    let meta_len = header.meta_len as usize;
    // body.len() == body_len fits in usize, and data_offset - 32 <= body_len.
    let data_start = (header.data_offset() - HEADER_LEN as u64) as usize;
    let meta = body.get(..meta_len).ok_or(ProtoError::BodyLength {
        expected,
        have: body.len() as u64,
    })?;
    let pad = body.get(meta_len..data_start).unwrap_or(&[]);
    if pad.iter().any(|&b| b != 0) {
        return Err(ProtoError::NonZeroPadding);
    }
    let data = body.get(data_start..).unwrap_or(&[]);
    Ok((meta, data))
}

/// Decodes a buffer holding exactly one frame (header included), against default limits.
pub fn decode_frame(buf: &[u8]) -> Result<Frame<'_>, ProtoError> {
    decode_frame_with(buf, &Limits::DEFAULT)
}

pub fn decode_frame_with<'a>(buf: &'a [u8], limits: &Limits) -> Result<Frame<'a>, ProtoError> {
    let header = Header::decode_with(buf, limits)?;
    let body = buf.get(HEADER_LEN..).unwrap_or(&[]);
    let (meta, data) = split_body(&header, body)?;
    Ok(Frame { header, meta, data })
}

fn expect_op(header: &Header, expected: Opcode) -> Result<(), ProtoError> {
    if header.opcode != expected.as_u8() {
        return Err(ProtoError::WrongOpcode {
            expected,
            got: header.opcode,
        });
    }
    Ok(())
}

/// Decodes the metadata of a frame that carries no tensor data (everything but PREDICT and
/// its response). Does not look at the opcode: the caller has dispatched on it.
pub fn decode_message<M: Message + Default>(header: &Header, body: &[u8]) -> Result<M, ProtoError> {
    let (meta, data) = split_body(header, body)?;
    if !data.is_empty() {
        return Err(ProtoError::UnexpectedData {
            opcode: header.op()?,
            data_len: data.len() as u64,
        });
    }
    Ok(M::decode(meta)?)
}

/// Checks that `metas` describe the canonical layout of `data_len` bytes: tensor 0 at offset
/// 0, each next tensor at the first multiple of 64 after the previous one ends, the data
/// section ending where the last tensor ends; known dtypes, bounded rank and count, lengths
/// equal to product(shape) × dtype size, unique non-empty names.
pub fn validate_tensors(
    metas: &[TensorMeta],
    data_len: u64,
    limits: &Limits,
) -> Result<(), ProtoError> {
    if metas.len() as u64 > u64::from(limits.max_tensors) {
        return Err(ProtoError::TooManyTensors {
            count: metas.len(),
            max: limits.max_tensors,
        });
    }
    let mut next = 0u64;
    let mut end = 0u64;
    for (index, m) in metas.iter().enumerate() {
        let fail = |problem| ProtoError::Tensor {
            index,
            name: m.name.clone(),
            problem,
        };
        if m.name.is_empty() {
            return Err(fail(TensorProblem::EmptyName));
        }
        if metas[..index].iter().any(|p| p.name == m.name) {
            return Err(fail(TensorProblem::DuplicateName));
        }
        let dtype =
            DType::from_code(m.dtype).ok_or_else(|| fail(TensorProblem::UnknownDType(m.dtype)))?;
        if m.shape.len() as u64 > u64::from(limits.max_rank) {
            return Err(fail(TensorProblem::Rank {
                rank: m.shape.len(),
                max: limits.max_rank,
            }));
        }
        let len = byte_len(dtype, &m.shape).ok_or_else(|| fail(TensorProblem::SizeOverflow))?;
        if len != m.length {
            return Err(fail(TensorProblem::LengthMismatch {
                expected: len,
                declared: m.length,
            }));
        }
        if m.offset != next {
            return Err(fail(TensorProblem::Misplaced {
                offset: m.offset,
                expected: next,
            }));
        }
        end = m
            .offset
            .checked_add(len)
            .ok_or_else(|| fail(TensorProblem::SizeOverflow))?;
        if end > data_len {
            return Err(ProtoError::DataLength {
                expected: end,
                have: data_len,
            });
        }
        next = align_up(end);
    }
    if end != data_len {
        return Err(ProtoError::DataLength {
            expected: end,
            have: data_len,
        });
    }
    Ok(())
}

fn view_of<'v>(m: &'v TensorMeta, data: &'v [u8]) -> Option<TensorView<'v>> {
    let start = usize::try_from(m.offset).ok()?;
    let end = start.checked_add(usize::try_from(m.length).ok()?)?;
    Some(TensorView {
        name: &m.name,
        dtype: DType::from_code(m.dtype)?,
        shape: &m.shape,
        data: data.get(start..end)?,
    })
}

fn data_of<'a>(m: &TensorMeta, data: &'a [u8]) -> Option<&'a [u8]> {
    let start = usize::try_from(m.offset).ok()?;
    let end = start.checked_add(usize::try_from(m.length).ok()?)?;
    data.get(start..end)
}

/// A decoded, validated PREDICT: owned metadata plus tensor bytes borrowed from the frame.
/// Tensor data is 64-aligned in memory when the frame (header included) was received at a
/// 64-aligned address.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictView<'a> {
    pub request: PredictRequest,
    data: &'a [u8],
}

impl<'a> PredictView<'a> {
    pub fn len(&self) -> usize {
        self.request.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.request.inputs.is_empty()
    }

    pub fn input(&self, i: usize) -> Option<TensorView<'_>> {
        view_of(self.request.inputs.get(i)?, self.data)
    }

    pub fn inputs(&self) -> impl Iterator<Item = TensorView<'_>> + '_ {
        self.request
            .inputs
            .iter()
            .filter_map(|m| view_of(m, self.data))
    }

    /// Input `i`'s bytes with the frame's lifetime, to hand to an engine after this view is
    /// dropped.
    pub fn input_data(&self, i: usize) -> Option<&'a [u8]> {
        data_of(self.request.inputs.get(i)?, self.data)
    }

    /// The whole data section.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    pub fn into_request(self) -> PredictRequest {
        self.request
    }
}

/// A decoded, validated PREDICT_RESPONSE, tensor bytes borrowed from the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictResponseView<'a> {
    pub response: PredictResponse,
    data: &'a [u8],
}

impl<'a> PredictResponseView<'a> {
    pub fn output(&self, i: usize) -> Option<TensorView<'_>> {
        view_of(self.response.outputs.get(i)?, self.data)
    }

    pub fn outputs(&self) -> impl Iterator<Item = TensorView<'_>> + '_ {
        self.response
            .outputs
            .iter()
            .filter_map(|m| view_of(m, self.data))
    }

    pub fn output_data(&self, i: usize) -> Option<&'a [u8]> {
        data_of(self.response.outputs.get(i)?, self.data)
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

pub fn decode_predict<'a>(header: &Header, body: &'a [u8]) -> Result<PredictView<'a>, ProtoError> {
    decode_predict_with(header, body, &Limits::DEFAULT)
}

/// Decodes and validates a PREDICT body (everything after the header).
pub fn decode_predict_with<'a>(
    header: &Header,
    body: &'a [u8],
    limits: &Limits,
) -> Result<PredictView<'a>, ProtoError> {
    decode_predict_into(header, body, limits, PredictRequest::default())
}

/// [`decode_predict_with`], decoding into `spare`, a request of an earlier frame: the new
/// request starts out as a default one, but reuses the capacity of the model name, the
/// inputs list and each input's name and shape, so a server that hands its requests back
/// here does not allocate those per request. The result (and every error) is the same as `decode_predict_with`'s.
pub fn decode_predict_into<'a>(
    header: &Header,
    body: &'a [u8],
    limits: &Limits,
    spare: PredictRequest,
) -> Result<PredictView<'a>, ProtoError> {
    expect_op(header, Opcode::Predict)?;
    let (meta, data) = split_body(header, body)?;
    let PredictRequest {
        mut model, inputs, ..
    } = spare;
    model.clear();
    let mut request = PredictRequest {
        model,
        inputs,
        ..PredictRequest::default()
    };
    if merge_reusing_inputs(&mut request, meta).is_err() {
        // Whatever the reuse did, the outcome (a refusal) is exactly `Message::decode`'s.
        request = PredictRequest::decode(meta)?;
    }
    validate_tensors(&request.inputs, data.len() as u64, limits)?;
    if request.outputs.len() as u64 > u64::from(limits.max_tensors) {
        return Err(ProtoError::TooManyTensors {
            count: request.outputs.len(),
            max: limits.max_tensors,
        });
    }
    Ok(PredictView { request, data })
}

/// What `Message::merge` does into a default request (prost 0.14's loop), except that the
/// inputs (field 3) are decoded into the `TensorMeta`s `request.inputs` already holds, each
/// reset to a default one first, so their names' and shapes' capacity is reused; the
/// entries not reached are dropped at the end. Every other field goes to prost.
fn merge_reusing_inputs(
    request: &mut PredictRequest,
    mut buf: &[u8],
) -> Result<(), prost::DecodeError> {
    use prost::encoding::{decode_key, message, DecodeContext};
    let ctx = DecodeContext::default();
    let mut n = 0;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag != 3 {
            request.merge_field(tag, wire_type, &mut buf, ctx.clone())?;
            continue;
        }
        if n == request.inputs.len() {
            request.inputs.push(TensorMeta::default());
        }
        let m = &mut request.inputs[n];
        let (mut name, mut shape) = (std::mem::take(&mut m.name), std::mem::take(&mut m.shape));
        name.clear();
        shape.clear();
        *m = TensorMeta {
            name,
            shape,
            ..TensorMeta::default()
        };
        n += 1;
        message::merge(wire_type, m, &mut buf, ctx.clone())?;
    }
    request.inputs.truncate(n);
    Ok(())
}

pub fn decode_predict_response<'a>(
    header: &Header,
    body: &'a [u8],
) -> Result<PredictResponseView<'a>, ProtoError> {
    decode_predict_response_with(header, body, &Limits::DEFAULT)
}

pub fn decode_predict_response_with<'a>(
    header: &Header,
    body: &'a [u8],
    limits: &Limits,
) -> Result<PredictResponseView<'a>, ProtoError> {
    expect_op(header, Opcode::PredictResponse)?;
    let (meta, data) = split_body(header, body)?;
    let response = PredictResponse::decode(meta)?;
    validate_tensors(&response.outputs, data.len() as u64, limits)?;
    Ok(PredictResponseView { response, data })
}

/// Any frame, decoded by opcode.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload<'a> {
    Hello(Hello),
    HelloResponse(HelloResponse),
    Predict(PredictView<'a>),
    PredictResponse(PredictResponseView<'a>),
    Metadata(MetadataRequest),
    MetadataResponse(ModelMetadata),
    Health(HealthRequest),
    HealthResponse(HealthResponse),
    Error(ErrorResponse),
    Feedback(FeedbackRequest),
    FeedbackResponse(FeedbackResponse),
    PredictByEntity(crate::PredictByEntityRequest),
    PredictByEntityResponse(crate::PredictByEntityResponseView<'a>),
    PutFeatures(crate::PutFeaturesRequest),
    PutFeaturesResponse(crate::PutFeaturesResponse),
    GetFeatures(crate::GetFeaturesRequest),
    GetFeaturesResponse(crate::GetFeaturesResponse),
    /// An opcode of §3 whose messages are not defined yet (none in v1 today).
    Reserved {
        opcode: Opcode,
        meta: &'a [u8],
        data: &'a [u8],
    },
}

pub fn decode_payload<'a>(header: &Header, body: &'a [u8]) -> Result<Payload<'a>, ProtoError> {
    decode_payload_with(header, body, &Limits::DEFAULT)
}

/// Decodes any frame body by its opcode (UNKNOWN_OPCODE for opcodes not in v1).
pub fn decode_payload_with<'a>(
    header: &Header,
    body: &'a [u8],
    limits: &Limits,
) -> Result<Payload<'a>, ProtoError> {
    Ok(match header.op()? {
        Opcode::Hello => Payload::Hello(decode_message(header, body)?),
        Opcode::HelloResponse => Payload::HelloResponse(decode_message(header, body)?),
        Opcode::Predict => Payload::Predict(decode_predict_with(header, body, limits)?),
        Opcode::PredictResponse => {
            Payload::PredictResponse(decode_predict_response_with(header, body, limits)?)
        }
        Opcode::Metadata => Payload::Metadata(decode_message(header, body)?),
        Opcode::MetadataResponse => Payload::MetadataResponse(decode_message(header, body)?),
        Opcode::Health => Payload::Health(decode_message(header, body)?),
        Opcode::HealthResponse => Payload::HealthResponse(decode_message(header, body)?),
        Opcode::Error => Payload::Error(decode_message(header, body)?),
        Opcode::Feedback => Payload::Feedback(decode_message(header, body)?),
        Opcode::FeedbackResponse => Payload::FeedbackResponse(decode_message(header, body)?),
        Opcode::PredictByEntity => Payload::PredictByEntity(decode_message(header, body)?),
        Opcode::PredictByEntityResponse => Payload::PredictByEntityResponse(
            crate::decode_predict_by_entity_response(header, body, limits)?,
        ),
        Opcode::PutFeatures => Payload::PutFeatures(decode_message(header, body)?),
        Opcode::PutFeaturesResponse => Payload::PutFeaturesResponse(decode_message(header, body)?),
        Opcode::GetFeatures => Payload::GetFeatures(decode_message(header, body)?),
        Opcode::GetFeaturesResponse => Payload::GetFeaturesResponse(decode_message(header, body)?),
    })
}

// === encoding ===

/// Clears `out` and writes header, metadata and (when `data_len > 0`) the zero padding up to
/// the data section. The caller then writes exactly `data_len` bytes of tensor data, e.g. as
/// further slices of a vectored write, so tensor bytes are never copied into `out`.
pub fn encode_frame_head<M: Message>(
    opcode: Opcode,
    flags: u16,
    request_id: u64,
    meta: &M,
    data_len: u64,
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    if flags & !KNOWN_FLAGS != 0 {
        return Err(ProtoError::UnknownFlags(flags & !KNOWN_FLAGS));
    }
    let len = meta.encoded_len();
    let meta_len = u32::try_from(len).map_err(|_| ProtoError::MetaTooLarge {
        len: len as u64,
        max: u64::from(u32::MAX),
    })?;
    let header = Header {
        flags,
        ..Header::new(opcode, request_id, meta_len, data_len)
    };
    let (data_offset, _) = frame_layout(meta_len, data_len);
    out.clear();
    out.reserve(data_offset as usize);
    out.extend_from_slice(&header.to_bytes());
    meta.encode_raw(out);
    out.resize(data_offset as usize, 0);
    Ok(())
}

/// Encodes a frame with no tensor data.
pub fn encode_message<M: Message>(
    opcode: Opcode,
    request_id: u64,
    meta: &M,
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    encode_frame_head(opcode, 0, request_id, meta, 0, out)
}

/// Encodes an ERROR frame.
pub fn encode_error(
    request_id: u64,
    code: ErrorCode,
    message: &str,
    retry_after_ms: u64,
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    let msg = ErrorResponse {
        code: code.as_u32(),
        message: message.to_owned(),
        retry_after_ms,
    };
    encode_message(Opcode::Error, request_id, &msg, out)
}

/// Fills `metas` (reusing its allocation) with the canonical layout of `tensors` and returns
/// the data section length. Fails if a view's data does not match its dtype and shape.
pub fn layout_tensors(
    tensors: &[TensorView<'_>],
    metas: &mut Vec<TensorMeta>,
) -> Result<u64, ProtoError> {
    metas.truncate(tensors.len());
    let mut next = 0u64;
    let mut end = 0u64;
    for (index, t) in tensors.iter().enumerate() {
        let length = t.check_len().map_err(|e| match e {
            ProtoError::Tensor { name, problem, .. } => ProtoError::Tensor {
                index,
                name,
                problem,
            },
            other => other,
        })?;
        let meta = TensorMeta {
            name: String::new(),
            dtype: t.dtype.code(),
            shape: Vec::new(),
            offset: next,
            length,
        };
        if let Some(m) = metas.get_mut(index) {
            // Reuse the String and Vec capacity of a previous request.
            let (mut name, mut shape) = (std::mem::take(&mut m.name), std::mem::take(&mut m.shape));
            name.clear();
            name.push_str(t.name);
            shape.clear();
            shape.extend_from_slice(t.shape);
            *m = TensorMeta {
                name,
                shape,
                ..meta
            };
        } else {
            metas.push(TensorMeta {
                name: t.name.to_owned(),
                shape: t.shape.to_vec(),
                ..meta
            });
        }
        end = next.checked_add(length).ok_or(ProtoError::Tensor {
            index,
            name: t.name.to_owned(),
            problem: TensorProblem::SizeOverflow,
        })?;
        next = align_up(end);
    }
    Ok(end)
}

pub(crate) fn append_tensor_data(tensors: &[TensorView<'_>], out: &mut Vec<u8>) {
    let last = tensors.len().saturating_sub(1);
    for (i, t) in tensors.iter().enumerate() {
        out.extend_from_slice(t.data);
        if i != last {
            out.extend_from_slice(padding(t.data.len() as u64));
        }
    }
}

/// Encodes a whole PREDICT frame into `out`. `request.inputs` is overwritten with the
/// canonical layout of `inputs`; the other fields are sent as given.
pub fn encode_predict(
    request_id: u64,
    request: &mut PredictRequest,
    inputs: &[TensorView<'_>],
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    let data_len = layout_tensors(inputs, &mut request.inputs)?;
    encode_frame_head(Opcode::Predict, 0, request_id, request, data_len, out)?;
    append_tensor_data(inputs, out);
    Ok(())
}

/// Encodes a PREDICT_RESPONSE head only (header, metadata, padding), filling
/// `response.outputs`, and returns the data section length. The caller writes, for each
/// output in order, its bytes followed by [`padding`] of its length, except after the last.
pub fn encode_predict_response_head(
    request_id: u64,
    response: &mut PredictResponse,
    outputs: &[TensorView<'_>],
    out: &mut Vec<u8>,
) -> Result<u64, ProtoError> {
    let data_len = layout_tensors(outputs, &mut response.outputs)?;
    encode_frame_head(
        Opcode::PredictResponse,
        0,
        request_id,
        response,
        data_len,
        out,
    )?;
    Ok(data_len)
}

/// Encodes a whole PREDICT_RESPONSE frame into `out` (copying the tensor bytes).
pub fn encode_predict_response(
    request_id: u64,
    response: &mut PredictResponse,
    outputs: &[TensorView<'_>],
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    encode_predict_response_head(request_id, response, outputs, out)?;
    append_tensor_data(outputs, out);
    Ok(())
}
