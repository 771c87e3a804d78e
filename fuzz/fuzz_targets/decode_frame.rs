//! Fuzz target: any bytes through the receiving path never panic, and whatever decodes
//! re-encodes to something that decodes to the same values.
#![no_main]

use edgeinfer_proto::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = peek_request_id(data);
    let Ok(frame) = decode_frame(data) else {
        return;
    };
    let body = &data[HEADER_LEN..];
    let mut out = Vec::new();
    match decode_payload(&frame.header, body) {
        Ok(Payload::Predict(v)) => {
            let inputs: Vec<TensorView<'_>> = v.inputs().collect();
            assert_eq!(inputs.len(), v.request.inputs.len(), "every validated input is viewable");
            for t in &inputs {
                assert_eq!(byte_len(t.dtype, t.shape), Some(t.data.len() as u64));
            }
            let mut req = v.request.clone();
            encode_predict(frame.header.request_id, &mut req, &inputs, &mut out).unwrap();
            let again = decode_frame(&out).unwrap();
            let v2 = decode_predict(&again.header, &out[HEADER_LEN..]).unwrap();
            assert_eq!(v2.request, v.request);
            assert!(v2.inputs().eq(v.inputs()));
        }
        Ok(Payload::PredictResponse(v)) => {
            let outputs: Vec<TensorView<'_>> = v.outputs().collect();
            let mut resp = v.response.clone();
            encode_predict_response(frame.header.request_id, &mut resp, &outputs, &mut out).unwrap();
            let again = decode_frame(&out).unwrap();
            let v2 = decode_predict_response(&again.header, &out[HEADER_LEN..]).unwrap();
            assert_eq!(v2.response, v.response);
            assert!(v2.outputs().eq(v.outputs()));
        }
        Ok(_) | Err(_) => {}
    }
});
