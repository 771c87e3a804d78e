//! Transport-independent client state: request ids, encode buffers, answer decoding, and the
//! stash of answers that arrived while a one-shot call waited for its own.

use std::collections::VecDeque;

use edgeinfer_proto::{
    self as proto, decode_message, decode_predict_response, encode_message, encode_predict,
    ErrorResponse, Header, Opcode, PredictRequest, TensorView,
};

use crate::{ClientError, PredictOptions, PredictResult};

pub(crate) struct Conn {
    next_id: u64,
    pub(crate) wbuf: Vec<u8>,
    /// Reused between PREDICTs so its strings and vectors keep their capacity.
    req: PredictRequest,
    pub(crate) rbuf: Vec<u8>,
    stash: VecDeque<(Header, Vec<u8>)>,
    pub(crate) in_flight: usize,
    pub(crate) limits: proto::Limits,
}

impl Conn {
    pub(crate) fn new() -> Conn {
        Conn {
            // Id 0 is what a server uses when it could not read a request's id.
            next_id: 1,
            wbuf: Vec::with_capacity(4096),
            req: PredictRequest::default(),
            rbuf: Vec::with_capacity(4096),
            stash: VecDeque::new(),
            in_flight: 0,
            limits: proto::Limits::DEFAULT,
        }
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    pub(crate) fn encode_predict(
        &mut self,
        model: &str,
        inputs: &[TensorView<'_>],
        opts: &PredictOptions,
    ) -> Result<u64, ClientError> {
        let id = self.next_id();
        set_request(&mut self.req, model, opts);
        encode_predict(id, &mut self.req, inputs, &mut self.wbuf)?;
        Ok(id)
    }

    pub(crate) fn encode_message<M: proto::prost::Message>(
        &mut self,
        op: Opcode,
        msg: &M,
    ) -> Result<u64, ClientError> {
        let id = self.next_id();
        encode_message(op, id, msg, &mut self.wbuf)?;
        Ok(id)
    }

    /// An answer received earlier: for `id`, or the oldest one when `id` is `None`.
    pub(crate) fn unstash(&mut self, id: Option<u64>) -> Option<(Header, Vec<u8>)> {
        let i = match id {
            Some(id) => self.stash.iter().position(|(h, _)| h.request_id == id)?,
            None => 0,
        };
        self.stash.remove(i)
    }

    pub(crate) fn stash(&mut self, header: Header) {
        self.stash.push_back((header, self.rbuf.clone()));
    }
}

/// Fills a reused PREDICT's fields (all but the inputs) from `model` and `opts`.
pub(crate) fn set_request(r: &mut PredictRequest, model: &str, opts: &PredictOptions) {
    r.model.clear();
    r.model.push_str(model);
    r.version.clone_from(&opts.version);
    r.outputs.clone_from(&opts.outputs);
    r.deadline_us = opts.deadline.map_or(0, |d| {
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
    });
    r.routing_key.clone_from(&opts.routing_key);
}

fn server_error(header: &Header, body: &[u8]) -> ClientError {
    match decode_message::<ErrorResponse>(header, body) {
        Ok(e) => ClientError::Server {
            code: e.code,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        },
        Err(e) => e.into(),
    }
}

/// The message answering a request of opcode `request`, or the error it carries.
pub(crate) fn answer<M: proto::prost::Message + Default>(
    header: &Header,
    body: &[u8],
    request: Opcode,
) -> Result<M, ClientError> {
    let expected = request.response().unwrap_or(Opcode::Error);
    if header.opcode == Opcode::Error.as_u8() {
        return Err(server_error(header, body));
    }
    if header.opcode != expected.as_u8() {
        return Err(ClientError::Unexpected {
            request_id: header.request_id,
            got: header.opcode,
            expected,
        });
    }
    Ok(decode_message(header, body)?)
}

pub(crate) fn answer_predict(header: &Header, body: &[u8]) -> Result<PredictResult, ClientError> {
    if header.opcode == Opcode::Error.as_u8() {
        return Err(server_error(header, body));
    }
    if header.opcode != Opcode::PredictResponse.as_u8() {
        return Err(ClientError::Unexpected {
            request_id: header.request_id,
            got: header.opcode,
            expected: Opcode::PredictResponse,
        });
    }
    let v = decode_predict_response(header, body)?;
    let outputs = v.outputs().map(|t| t.to_tensor()).collect();
    let r = v.response;
    Ok(PredictResult {
        model: r.model,
        version: r.version,
        backend: r.backend,
        queue_us: r.queue_us,
        compute_us: r.compute_us,
        outputs,
    })
}

/// The body length as a buffer size (the header decoder has already bounded it).
pub(crate) fn body_len(header: &Header) -> Result<usize, ClientError> {
    usize::try_from(header.body_len()).map_err(|_| {
        ClientError::Protocol(proto::ProtoError::FrameTooLarge {
            len: header.frame_len(),
            max: usize::MAX as u64,
        })
    })
}
