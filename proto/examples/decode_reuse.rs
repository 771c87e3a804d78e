//! Decoding a 1-row churn PREDICT's metadata afresh vs into a recycled request
//! (`decode_predict_into`, what the daemon's cores do), in ns per request, decode and drop:
//! `cargo run --release -p edgeinfer-proto --example decode_reuse`.
use edgeinfer_proto::*;
use std::hint::black_box;
use std::time::Instant;

const N: u32 = 3_000_000;

/// ns per call of `decode`, which gets last call's request back.
fn per_call(mut decode: impl FnMut(PredictRequest) -> PredictRequest) -> f64 {
    let mut spare = PredictRequest::default();
    let t0 = Instant::now();
    for _ in 0..N {
        spare = black_box(decode(spare));
    }
    t0.elapsed().as_nanos() as f64 / f64::from(N)
}

fn main() {
    let t = Tensor::from_f32("input", vec![1, 20], &[0.5; 20]).unwrap();
    let mut req = PredictRequest {
        model: "churn".into(),
        ..Default::default()
    };
    let mut frame = Vec::new();
    encode_predict(7, &mut req, &[t.view()], &mut frame).unwrap();
    let h = Header::decode(&frame).unwrap();
    let body = &frame[HEADER_LEN..];
    let l = Limits::DEFAULT;
    let into = |spare| decode_predict_into(&h, black_box(body), &l, spare).unwrap();
    for round in 0..3 {
        let fresh = per_call(|_| {
            decode_predict_with(&h, black_box(body), &l)
                .unwrap()
                .into_request()
        });
        let list_only = per_call(|mut spare| {
            // Only the model name and the inputs list reused (the inputs' own fields not).
            spare.inputs.clear();
            into(spare).into_request()
        });
        let all = per_call(|spare| into(spare).into_request());
        println!(
            "round {round}: fresh {fresh:.1} ns, reusing name+list {list_only:.1} ns, reusing all {all:.1} ns"
        );
    }
}
