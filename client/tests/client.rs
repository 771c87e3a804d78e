//! The blocking and async clients against a small in-test server that speaks the protocol
//! through the real codec, over real Unix and TCP sockets.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;

use edgeinfer_client::proto::*;
use edgeinfer_client::{blocking, r#async, ClientError, Endpoint, ErrorKind, PredictOptions};

// === the test server ===
//
// Models: "double" answers each f32 input `x` with an output `x2` = 2·x (version = the pin or
// "1", queue_us = deadline_us, compute_us = routing key length, so options are observable);
// "reverse" holds requests and answers them newest first once any other request arrives;
// "garbage" gets a header with a bad magic; "close" gets the connection closed. Anything
// else is UNKNOWN_MODEL.

fn answer_double(id: u64, v: &PredictView<'_>, out: &mut Vec<u8>) {
    let doubled: Vec<Tensor> = v
        .inputs()
        .map(|t| {
            let x = t.to_tensor().to_f32().expect("f32 input");
            let y: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
            Tensor::from_f32(format!("{}2", t.name), t.shape.to_vec(), &y).unwrap()
        })
        .filter(|t| v.request.outputs.is_empty() || v.request.outputs.contains(&t.name))
        .collect();
    let views: Vec<TensorView<'_>> = doubled.iter().map(Tensor::view).collect();
    let mut resp = PredictResponse {
        model: v.request.model.clone(),
        version: v.request.version.clone().unwrap_or_else(|| "1".into()),
        backend: "test".into(),
        queue_us: v.request.deadline_us,
        compute_us: v.request.routing_key.len() as u64,
        outputs: vec![],
        prediction_id: 0,
    };
    encode_predict_response(id, &mut resp, &views, out).unwrap();
}

fn serve(mut s: impl Read + Write) {
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut hb = [0u8; HEADER_LEN];
        if s.read_exact(&mut hb).is_err() {
            return;
        }
        let h = match Header::decode(&hb) {
            Ok(h) => h,
            Err(e) => {
                encode_error(
                    peek_request_id(&hb).unwrap_or(0),
                    e.kind(),
                    &e.to_string(),
                    0,
                    &mut out,
                )
                .unwrap();
                let _ = s.write_all(&out);
                return;
            }
        };
        let mut body = vec![0u8; h.body_len() as usize];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let id = h.request_id;
        match decode_payload(&h, &body) {
            Ok(Payload::Hello(m)) => {
                let r = HelloResponse {
                    version: negotiate(&m.versions).unwrap_or(0),
                    max_frame_bytes: 1 << 20,
                    max_in_flight: 16,
                    server: format!("test-server for {}", m.client),
                    ..Default::default()
                };
                encode_message(Opcode::HelloResponse, id, &r, &mut out).unwrap();
            }
            Ok(Payload::Predict(v)) => match v.request.model.as_str() {
                "double" => answer_double(id, &v, &mut out),
                "reverse" => {
                    answer_double(id, &v, &mut out);
                    held.push(out.clone());
                    continue;
                }
                "garbage" => {
                    out.clear();
                    out.extend_from_slice(&[0x58; HEADER_LEN]);
                }
                "close" => return,
                m => encode_error(
                    id,
                    ErrorCode::UnknownModel,
                    &format!("no model {m:?}"),
                    0,
                    &mut out,
                )
                .unwrap(),
            },
            Ok(Payload::Metadata(m)) if m.model == "double" => {
                let spec = |n: &str| TensorSpecMsg {
                    name: n.into(),
                    dtype: DType::F32.code(),
                    shape: vec![-1, 3],
                };
                let md = ModelMetadata {
                    name: m.model,
                    version: m.version.unwrap_or_else(|| "1".into()),
                    versions: vec!["1".into(), "2".into()],
                    inputs: vec![spec("x")],
                    outputs: vec![spec("x2")],
                    backend: "test".into(),
                    ready: true,
                    load_report: "{}".into(),
                };
                encode_message(Opcode::MetadataResponse, id, &md, &mut out).unwrap();
            }
            Ok(Payload::Metadata(m)) => {
                encode_error(id, ErrorCode::UnknownModel, &m.model, 0, &mut out).unwrap();
            }
            Ok(Payload::Health(_)) => {
                let st = ModelStatus {
                    name: "double".into(),
                    version: "1".into(),
                    backend: "test".into(),
                    ready: true,
                    default: true,
                    requests: 7,
                    errors: 1,
                };
                encode_message(
                    Opcode::HealthResponse,
                    id,
                    &HealthResponse {
                        ready: true,
                        models: vec![st],
                    },
                    &mut out,
                )
                .unwrap();
            }
            Ok(_) => encode_error(id, ErrorCode::NotImplemented, "", 0, &mut out).unwrap(),
            Err(e) => encode_error(id, e.kind(), &e.to_string(), 0, &mut out).unwrap(),
        }
        if s.write_all(&out).is_err() {
            return;
        }
        for frame in held.drain(..).rev() {
            if s.write_all(&frame).is_err() {
                return;
            }
        }
    }
}

/// A socket path in a fresh temp dir; the dir (and the socket) go when it is dropped.
fn socket_path() -> (PathBuf, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("edgeinfer-client-test-")
        .tempdir()
        .unwrap();
    (dir.path().join("server.sock"), dir)
}

/// A running test server: its endpoint, and for Unix its temp dir, removed on drop.
/// Connections made before the drop stay up (a connected socket needs no path).
struct Server {
    ep: Endpoint,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Server {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.ep
    }
}

/// Starts the test server on a Unix socket or TCP.
fn start(unix: bool) -> Server {
    if unix {
        let (path, dir) = socket_path();
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let s = s.unwrap();
                std::thread::spawn(move || serve(s));
            }
        });
        Server {
            ep: Endpoint::Unix(path),
            _dir: Some(dir),
        }
    } else {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let s = s.unwrap();
                std::thread::spawn(move || serve(s));
            }
        });
        Server {
            ep: Endpoint::Tcp(addr),
            _dir: None,
        }
    }
}

fn x(values: &[f32]) -> Tensor {
    Tensor::from_f32("x", vec![1, values.len() as u64], values).unwrap()
}

// === blocking ===

fn blocking_surface(unix: bool) {
    let ep = start(unix);
    let mut c = blocking::Client::connect(&ep).unwrap();
    c.set_timeout(Some(Duration::from_secs(10))).unwrap();

    let hello = c.hello().unwrap();
    assert_eq!(hello.version, 1);
    assert_eq!(hello.max_in_flight, 16);
    assert!(
        hello
            .server
            .starts_with("test-server for edgeinfer-client/"),
        "{}",
        hello.server
    );
    assert_eq!(c.server(), Some(&hello));

    let input = x(&[1.0, -2.5, 3.0]);
    let r = c
        .predict("double", &[input.view()], &PredictOptions::default())
        .unwrap();
    assert_eq!(
        (r.model.as_str(), r.version.as_str(), r.backend.as_str()),
        ("double", "1", "test")
    );
    let y = r.output("x2").unwrap();
    assert_eq!(y.shape, [1, 3]);
    assert_eq!(y.to_f32().unwrap(), [2.0, -5.0, 6.0]);

    // Options reach the server.
    let opts = PredictOptions {
        version: Some("2".into()),
        outputs: vec!["x2".into()],
        deadline: Some(Duration::from_micros(1500)),
        routing_key: b"user-1".to_vec(),
    };
    let r = c.predict("double", &[input.view()], &opts).unwrap();
    assert_eq!(
        (r.version.as_str(), r.queue_us, r.compute_us),
        ("2", 1500, 6)
    );
    let opts = PredictOptions {
        outputs: vec!["nope".into()],
        ..Default::default()
    };
    assert!(c
        .predict("double", &[input.view()], &opts)
        .unwrap()
        .outputs
        .is_empty());

    let md = c.metadata("double", Some("2")).unwrap();
    assert_eq!((md.name.as_str(), md.version.as_str()), ("double", "2"));
    assert_eq!(md.inputs[0].shape, [-1, 3]);

    let h = c.health().unwrap();
    assert!(h.ready);
    assert_eq!(h.models[0].requests, 7);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn blocking_surface_over_unix() {
    blocking_surface(true);
}

#[test]
fn blocking_surface_over_tcp() {
    blocking_surface(false);
}

#[test]
fn server_errors_are_typed_and_the_connection_survives() {
    let mut c = blocking::Client::connect(&start(true)).unwrap();
    let e = c
        .predict("nope", &[x(&[1.0]).view()], &PredictOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Server);
    assert_eq!(e.server_code(), Some(ErrorCode::UnknownModel));
    assert!(
        matches!(&e, ClientError::Server { code: 4, message, .. } if message.contains("nope")),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "server refused: UNKNOWN_MODEL (4): no model \"nope\""
    );
    let e = c.metadata("nope", None).unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::UnknownModel));
    // The server's codec refuses a bad input, typed.
    let e = c
        .predict(
            "double",
            &[],
            &PredictOptions {
                outputs: (0..65).map(|i| i.to_string()).collect(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::BadInput), "{e}");
    assert_eq!(
        c.predict("double", &[x(&[4.0]).view()], &PredictOptions::default())
            .unwrap()
            .outputs[0]
            .to_f32()
            .unwrap(),
        [8.0]
    );
}

#[test]
fn pipelined_answers_are_matched_by_id_whatever_their_order() {
    let mut c = blocking::Client::connect(&start(false)).unwrap();
    let opts = PredictOptions::default();
    let ids: Vec<u64> = (0..3)
        .map(|i| {
            c.send_predict("reverse", &[x(&[i as f32]).view()], &opts)
                .unwrap()
        })
        .collect();
    assert_eq!(c.in_flight(), 3);
    // A one-shot call in the middle gets its own answer; the held ones come after, newest first.
    assert!(c.health().unwrap().ready);
    let got: Vec<(u64, f32)> = (0..3)
        .map(|_| {
            let (id, r) = c.recv().unwrap();
            (id, r.unwrap().outputs[0].to_f32().unwrap()[0])
        })
        .collect();
    assert_eq!(got, [(ids[2], 4.0), (ids[1], 2.0), (ids[0], 0.0)]);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn answers_to_other_requests_are_kept_for_recv() {
    let mut c = blocking::Client::connect(&start(true)).unwrap();
    let opts = PredictOptions::default();
    let a = c
        .send_predict("double", &[x(&[5.0]).view()], &opts)
        .unwrap();
    let b = c.send_predict("nope", &[x(&[5.0]).view()], &opts).unwrap();
    // The server answers a and b first; metadata() must keep them rather than drop them.
    assert_eq!(c.metadata("double", None).unwrap().name, "double");
    let (id, r) = c.recv().unwrap();
    assert_eq!(
        (id, r.unwrap().outputs[0].to_f32().unwrap()),
        (a, vec![10.0])
    );
    let (id, r) = c.recv().unwrap();
    assert_eq!(id, b);
    assert_eq!(r.unwrap_err().server_code(), Some(ErrorCode::UnknownModel));
}

#[test]
fn prepared_frames_are_resent_with_fresh_ids() {
    let mut c = blocking::Client::connect(&start(true)).unwrap();
    let mut frame = Vec::new();
    let mut req = PredictRequest {
        model: "double".into(),
        ..Default::default()
    };
    encode_predict(0, &mut req, &[x(&[1.5]).view()], &mut frame).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let id = c.send_frame(&mut frame).unwrap();
        let (h, body) = c.recv_frame().unwrap();
        assert_eq!(h.request_id, id);
        let v = decode_predict_response(&h, body).unwrap();
        assert_eq!(v.output(0).unwrap().to_tensor().to_f32().unwrap(), [3.0]);
        seen.push(id);
    }
    seen.dedup();
    assert_eq!(seen.len(), 3);
}

#[test]
fn garbage_from_the_server_is_a_protocol_error() {
    let mut c = blocking::Client::connect(&start(true)).unwrap();
    let e = c
        .predict("garbage", &[x(&[1.0]).view()], &PredictOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e:?}");
    assert!(
        matches!(e, ClientError::Protocol(ProtoError::BadMagic(0x5858_5858))),
        "{e:?}"
    );
}

#[test]
fn a_server_that_hangs_up_is_an_io_error() {
    let mut c = blocking::Client::connect(&start(false)).unwrap();
    let e = c
        .predict("close", &[x(&[1.0]).view()], &PredictOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e:?}");
    let missing = Endpoint::Unix(socket_path().0);
    assert_eq!(
        blocking::Client::connect(&missing).err().unwrap().kind(),
        ErrorKind::Io
    );
}

#[test]
fn a_timeout_is_an_io_error_not_a_hang() {
    // A listener that accepts and never answers.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = Endpoint::Tcp(l.local_addr().unwrap().to_string());
    let mut c = blocking::Client::connect(&ep).unwrap();
    c.set_timeout(Some(Duration::from_millis(50))).unwrap();
    let e = c.health().unwrap_err();
    match &e {
        ClientError::Io(io) => assert!(
            matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{io:?}"
        ),
        other => panic!("{other:?}"),
    }
    drop(l);
}

#[test]
fn endpoints_parse() {
    assert_eq!(
        "/run/edgeinfer.sock".parse(),
        Ok(Endpoint::Unix("/run/edgeinfer.sock".into()))
    );
    assert_eq!(
        "unix:rel.sock".parse(),
        Ok(Endpoint::Unix("rel.sock".into()))
    );
    assert_eq!(
        "127.0.0.1:7070".parse(),
        Ok(Endpoint::Tcp("127.0.0.1:7070".into()))
    );
    assert_eq!(
        "tcp:localhost:1".parse(),
        Ok(Endpoint::Tcp("localhost:1".into()))
    );
    assert_eq!(Endpoint::Unix("a/b".into()).to_string(), "unix:a/b");
}

// === async ===

async fn async_surface(unix: bool) {
    let ep = start(unix);
    let mut c = r#async::Client::connect(&ep).await.unwrap();
    assert_eq!(c.hello().await.unwrap().version, 1);
    let r = c
        .predict("double", &[x(&[0.25]).view()], &PredictOptions::default())
        .await
        .unwrap();
    assert_eq!(r.outputs[0].to_f32().unwrap(), [0.5]);
    assert_eq!(
        c.metadata("double", None).await.unwrap().versions,
        ["1", "2"]
    );
    assert_eq!(c.health().await.unwrap().models.len(), 1);
    let e = c
        .predict("nope", &[], &PredictOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::UnknownModel));

    let opts = PredictOptions::default();
    let a = c
        .send_predict("reverse", &[x(&[1.0]).view()], &opts)
        .await
        .unwrap();
    let b = c
        .send_predict("reverse", &[x(&[2.0]).view()], &opts)
        .await
        .unwrap();
    assert!(c.health().await.unwrap().ready);
    let (id1, r1) = c.recv().await.unwrap();
    let (id2, _) = c.recv().await.unwrap();
    assert_eq!((id1, id2), (b, a));
    assert_eq!(r1.unwrap().outputs[0].to_f32().unwrap(), [4.0]);
    assert_eq!(c.in_flight(), 0);

    let e = c
        .predict("garbage", &[], &PredictOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
}

#[tokio::test]
async fn async_surface_over_unix() {
    async_surface(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_surface_over_tcp() {
    async_surface(false).await;
}

#[tokio::test]
async fn async_clients_are_send_and_run_concurrently() {
    let ep = start(true);
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let ep = ep.clone();
            tokio::spawn(async move {
                let mut c = r#async::Client::connect(&ep).await.unwrap();
                let mut frame = Vec::new();
                let mut req = PredictRequest {
                    model: "double".into(),
                    ..Default::default()
                };
                encode_predict(0, &mut req, &[x(&[i as f32]).view()], &mut frame).unwrap();
                let id = c.send_frame(&mut frame).await.unwrap();
                let (h, body) = c.recv_frame().await.unwrap();
                assert_eq!(h.request_id, id);
                decode_predict_response(&h, body)
                    .unwrap()
                    .output(0)
                    .unwrap()
                    .to_tensor()
                    .to_f32()
                    .unwrap()[0]
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert_eq!(got, [0.0, 2.0, 4.0, 6.0]);
}
