//! PREDICT_BY_ENTITY, PUT_FEATURES and GET_FEATURES against the real `edgeinferd` binary
//! over its Unix socket, with a real LMDB store and the real logreg fixture model.

mod appliance_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use appliance_support::{
    daemon_command, daemon_log, field, http_addr, http_get, repo, write_config, NotifySocket,
    Reaper, STARTUP,
};
use edgeinfer_proto::*;

const WIDTH: usize = 20;

/// 20 features f0..f19: f0 is an i32, f1 goes stale after 60 s, defaults are `i / 100`.
fn schema_toml(prefix: &str, version: u32, stale: &str) -> String {
    let mut s = format!("[{prefix}]\nversion = {version}\nstale = \"{stale}\"\n");
    for i in 0..WIDTH {
        let dtype = if i == 0 { "i32" } else { "f32" };
        let default = if i == 0 {
            "0".to_owned()
        } else {
            format!("{}", i as f64 / 100.0)
        };
        s.push_str(&format!(
            "[[{prefix}.fields]]\nname = \"f{i}\"\ndtype = \"{dtype}\"\ndefault = {default}\n"
        ));
        if i == 1 {
            s.push_str("max_age_s = 60\n");
        }
    }
    s
}

fn default_of(i: usize) -> f32 {
    if i == 0 {
        0.0
    } else {
        (i as f64 / 100.0) as f32
    }
}

/// A daemon serving logreg three times: `lr` (schema 1, stale → default), `lr_value`
/// (schema 1, stale → value) and `lr2` (schema 2), with a store of `max_bytes`.
struct Daemon {
    _dir: tempfile::TempDir,
    sock: std::path::PathBuf,
    http: std::net::SocketAddr,
    config: std::path::PathBuf,
    notify: NotifySocket,
    child: Reaper,
}

fn start(max_bytes: u64) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("tests/fixtures/models/logreg.onnx");
    let mut extra = format!("[cache]\nenabled = true\nmax_bytes = {max_bytes}\nttl_s = 0\n\n");
    for (name, version, stale) in [
        ("lr", 1, "default"),
        ("lr_value", 1, "value"),
        ("lr2", 2, "default"),
    ] {
        extra.push_str(&format!(
            "[[models]]\nname = \"{name}\"\npath = \"{}\"\n",
            model.display()
        ));
        extra.push_str(&schema_toml("models.features", version, stale));
    }
    // `write_config` appends [server] and [http]: put ours before them.
    let config = write_config(dir.path(), &extra);
    let mut notify = NotifySocket::bind(dir.path());
    let mut cmd = daemon_command(&config);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut child = Reaper(Some(cmd.spawn().unwrap()));
    // READY=1 comes after the store is open and the models are warm.
    let end = Instant::now() + STARTUP;
    let ready = loop {
        if let Some(st) = child.child().try_wait().unwrap() {
            panic!("edgeinferd exited ({st}):\n{}", daemon_log(&config));
        }
        assert!(Instant::now() < end, "not ready:\n{}", daemon_log(&config));
        if let Some(m) = notify.recv(Duration::from_millis(200)) {
            if m.lines().any(|l| l == "READY=1") {
                break m;
            }
        }
    };
    let status = field(&ready, "STATUS").expect("STATUS with READY=1");
    Daemon {
        sock: dir.path().join("edgeinferd.sock"),
        http: http_addr(status),
        config,
        notify,
        child,
        _dir: dir,
    }
}

impl Daemon {
    /// Rewrites the config with `edit`, sends SIGHUP and waits for the reload's READY=1.
    fn reload(&mut self, edit: impl FnOnce(String) -> String) -> String {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(text)).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.pid(), libc::SIGHUP) }, 0);
        let end = Instant::now() + STARTUP;
        let mut reloading = false;
        loop {
            assert!(
                Instant::now() < end,
                "no reload:\n{}",
                daemon_log(&self.config)
            );
            if let Some(m) = self.notify.recv(Duration::from_millis(200)) {
                reloading |= m.lines().any(|l| l == "RELOADING=1");
                if reloading && m.lines().any(|l| l == "READY=1") {
                    return field(&m, "STATUS").unwrap_or_default().to_owned();
                }
            }
        }
    }
}

struct Conn {
    s: UnixStream,
    id: u64,
}

impl Conn {
    fn open(path: &Path) -> std::io::Result<Conn> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn { s, id: 0 })
    }

    fn send_raw(&mut self, frame: &[u8]) -> (Header, Vec<u8>) {
        self.s.write_all(frame).unwrap();
        let mut head = [0u8; HEADER_LEN];
        self.s.read_exact(&mut head).unwrap();
        let h = Header::decode(&head).unwrap();
        let mut body = vec![0u8; h.body_len() as usize];
        self.s.read_exact(&mut body).unwrap();
        (h, body)
    }

    fn call<M: prost::Message>(&mut self, op: Opcode, msg: &M) -> (Header, Vec<u8>) {
        self.id += 1;
        let mut f = Vec::new();
        encode_message(op, self.id, msg, &mut f).unwrap();
        let (h, body) = self.send_raw(&f);
        assert_eq!(h.request_id, self.id);
        (h, body)
    }

    /// The ERROR's code and message, or panics on a success.
    fn refused<M: prost::Message>(&mut self, op: Opcode, msg: &M) -> (ErrorCode, String) {
        let (h, body) = self.call(op, msg);
        assert_eq!(h.op().unwrap(), Opcode::Error, "{op} was not refused");
        let e: ErrorResponse = decode_message(&h, &body).unwrap();
        (e.error_code().unwrap(), e.message)
    }

    fn put(&mut self, version: u32, rows: Vec<FeatureRowMsg>) -> PutFeaturesResponse {
        let (h, body) = self.call(
            Opcode::PutFeatures,
            &PutFeaturesRequest {
                schema_version: version,
                rows,
            },
        );
        expect_op(&h, &body, Opcode::PutFeaturesResponse);
        decode_message(&h, &body).unwrap()
    }

    fn get(&mut self, keys: &[&str]) -> GetFeaturesResponse {
        let req = GetFeaturesRequest {
            entities: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        };
        let (h, body) = self.call(Opcode::GetFeatures, &req);
        expect_op(&h, &body, Opcode::GetFeaturesResponse);
        decode_message(&h, &body).unwrap()
    }

    /// PREDICT_BY_ENTITY: (probabilities per row, label per row, reports).
    fn by_entity(
        &mut self,
        req: &PredictByEntityRequest,
    ) -> (Vec<u8>, Vec<u8>, Vec<EntityRowReport>) {
        let (h, body) = self.call(Opcode::PredictByEntity, req);
        expect_op(&h, &body, Opcode::PredictByEntityResponse);
        let v = decode_predict_by_entity_response(&h, &body, &Limits::DEFAULT).unwrap();
        let p = v.prediction();
        let out = |name: &str| {
            let i = p.outputs.iter().position(|o| o.name == name).unwrap();
            v.output(i).unwrap().data.to_vec()
        };
        (out("probabilities"), out("label"), v.response.rows.clone())
    }

    /// PREDICT with the tensor itself: (probabilities, label).
    fn by_tensor(&mut self, model: &str, rows: &[Vec<f32>]) -> (Vec<u8>, Vec<u8>) {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let t =
            Tensor::from_f32("float_input", vec![rows.len() as u64, WIDTH as u64], &flat).unwrap();
        let mut req = PredictRequest {
            model: model.into(),
            ..Default::default()
        };
        self.id += 1;
        let mut f = Vec::new();
        encode_predict(self.id, &mut req, &[t.view()], &mut f).unwrap();
        let (h, body) = self.send_raw(&f);
        expect_op(&h, &body, Opcode::PredictResponse);
        let v = decode_predict_response(&h, &body).unwrap();
        let out = |name: &str| {
            let i = v
                .response
                .outputs
                .iter()
                .position(|o| o.name == name)
                .unwrap();
            v.output(i).unwrap().data.to_vec()
        };
        (out("probabilities"), out("label"))
    }
}

fn expect_op(h: &Header, body: &[u8], op: Opcode) {
    if h.opcode == Opcode::Error.as_u8() {
        let e: ErrorResponse = decode_message(h, body).unwrap();
        panic!(
            "expected {op}, got ERROR {:?}: {}",
            e.error_code(),
            e.message
        );
    }
    assert_eq!(h.opcode, op.as_u8());
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn row(key: &str, ts: i64, values: &[(usize, f64)]) -> FeatureRowMsg {
    FeatureRowMsg {
        entity: key.as_bytes().to_vec(),
        event_ts_ms: ts,
        values: values
            .iter()
            .map(|&(i, value)| FeatureValue {
                name: format!("f{i}"),
                value,
            })
            .collect(),
    }
}

fn entity_req(model: &str, keys: &[&str]) -> PredictByEntityRequest {
    PredictByEntityRequest {
        model: model.into(),
        keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

/// Full rows for keys: value of feature i for entity n is `n + i / 10` (f0: n).
fn full_values(n: usize) -> Vec<(usize, f64)> {
    (0..WIDTH)
        .map(|i| {
            (
                i,
                if i == 0 {
                    n as f64
                } else {
                    n as f64 + i as f64 / 10.0
                },
            )
        })
        .collect()
}

/// Two f32 tensors (little-endian bytes) equal within a few units in the last place.
fn assert_close(got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "probabilities: lengths differ");
    let f = |b: &[u8]| f32::from_le_bytes(b.try_into().unwrap());
    for (i, (g, w)) in got.chunks(4).zip(want.chunks(4)).enumerate() {
        let (g, w) = (f(g), f(w));
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "probability {i} differs from predict-by-tensor: {g} vs {w}"
        );
    }
}

fn vector(values: &[(usize, f64)]) -> Vec<f32> {
    let mut v: Vec<f32> = (0..WIDTH).map(default_of).collect();
    for &(i, x) in values {
        v[i] = x as f32;
    }
    v
}

fn metric(d: &Daemon, name: &str) -> f64 {
    let (code, body) = http_get(d.http, "/metrics");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

#[test]
fn predict_by_entity_matches_predict_by_tensor_and_flags_what_it_defaulted() {
    let d = start(64 << 20);
    let mut c = Conn::open(&d.sock).unwrap();
    let now = now_ms();
    let fresh: Vec<Vec<(usize, f64)>> = (0..3).map(full_values).collect();
    let put = c.put(
        1,
        vec![
            row("e0", now, &fresh[0]),
            row("e1", now, &fresh[1]),
            row("e2", now, &fresh[2]),
            // Only f5 present: the rest default.
            row("partial", now, &[(5, 7.5)]),
            // An hour old: f1 (max age 60 s) is stale.
            row("old", now - 3_600_000, &fresh[1]),
        ],
    );
    assert_eq!((put.written, put.skipped_older), (5, 0));

    // Same outputs as PREDICT with the assembled vectors, several rows at once.
    let keys = ["e0", "e1", "e2", "partial", "nobody"];
    let (p, l, reports) = c.by_entity(&entity_req("lr", &keys));
    let expected = vec![
        vector(&fresh[0]),
        vector(&fresh[1]),
        vector(&fresh[2]),
        vector(&[(5, 7.5)]),
        vector(&[]),
    ];
    let (tp, tl) = c.by_tensor("lr", &expected);
    // Equal to rounding, not to the bit: the core may run a job in row chunks (their size
    // follows measured timing) or batch it with others, and a matrix product over 4 rows
    // and over 5 can round the last bit differently. The labels must agree exactly.
    assert_close(&p, &tp);
    assert_eq!(l, tl);
    assert_eq!(reports.len(), 5);
    for r in &reports[..3] {
        assert!(
            r.found && r.defaulted.is_empty() && r.stale.is_empty(),
            "{r:?}"
        );
        assert_eq!(r.event_ts_ms, now);
    }
    let all_but_5: Vec<u32> = (0..WIDTH as u32).filter(|&i| i != 5).collect();
    assert_eq!(reports[3].defaulted, all_but_5);
    assert!(!reports[4].found);
    assert_eq!(reports[4].defaulted, (0..WIDTH as u32).collect::<Vec<_>>());

    // Stale: "default" serves f1's default and flags it both ways; "value" serves it.
    let (p, _, r) = c.by_entity(&entity_req("lr", &["old"]));
    assert_eq!(
        (r[0].stale.clone(), r[0].defaulted.clone()),
        (vec![1], vec![1])
    );
    let mut v = vector(&fresh[1]);
    v[1] = default_of(1);
    assert_close(&p, &c.by_tensor("lr", &[v]).0);
    let (p, _, r) = c.by_entity(&entity_req("lr_value", &["old"]));
    assert_eq!(
        (r[0].stale.clone(), r[0].defaulted.clone()),
        (vec![1], vec![])
    );
    assert_close(&p, &c.by_tensor("lr", &[vector(&fresh[1])]).0);

    // Overrides replace the store's value and clear the flags of that feature.
    let mut req = entity_req("lr", &["e0", "nobody"]);
    req.overrides = vec![
        FeatureOverride {
            row: 0,
            feature: "f3".into(),
            value: -4.0,
        },
        FeatureOverride {
            row: 1,
            feature: "f7".into(),
            value: 2.5,
        },
    ];
    let (p, _, r) = c.by_entity(&req);
    let mut v0 = vector(&fresh[0]);
    v0[3] = -4.0;
    let v1 = vector(&[(7, 2.5)]);
    assert_close(&p, &c.by_tensor("lr", &[v0, v1]).0);
    assert!(!r[1].defaulted.contains(&7) && r[1].defaulted.len() == WIDTH - 1);

    // A row written under schema 1 is never served to a schema-2 model: all defaults.
    let (p, _, r) = c.by_entity(&entity_req("lr2", &["e0"]));
    assert!(r[0].found && r[0].version_mismatch);
    assert_eq!(r[0].defaulted.len(), WIDTH);
    assert_close(&p, &c.by_tensor("lr", &[vector(&[])]).0);

    // A client built for another schema version gets a typed error.
    let mut req = entity_req("lr", &["e0"]);
    req.schema_version = 2;
    let (code, msg) = c.refused(Opcode::PredictByEntity, &req);
    assert_eq!(code, ErrorCode::BadInput);
    assert!(msg.contains("schema version 2"), "{msg}");

    // Every lookup and default is counted in /metrics.
    assert_eq!(metric(&d, "edgeinfer_features_lookups_total"), 10.0);
    assert!(metric(&d, "edgeinfer_features_missing_entity_total") >= 2.0);
    assert!(metric(&d, "edgeinfer_features_stale_total") >= 2.0);
    assert!(metric(&d, "edgeinfer_features_version_mismatch_total") >= 1.0);
    assert!(metric(&d, "edgeinfer_features_missing_feature_total") >= 19.0);
    // partial 19 + nobody 20 + old 1 + nobody-with-override 19 + lr2 20 = 79.
    assert_eq!(metric(&d, "edgeinfer_features_defaulted_total"), 79.0);
    let fill = metric(&d, "edgeinfer_features_fill_ratio");
    assert!(fill > 0.0 && fill < 1.0, "{fill}");
    assert_eq!(metric(&d, "edgeinfer_features_entities"), 5.0);
}

#[test]
fn put_then_get_round_trips_and_bad_input_gets_typed_errors() {
    let d = start(64 << 20);
    let mut c = Conn::open(&d.sock).unwrap();
    let now = now_ms();
    let put = c.put(1, vec![row("k", now, &[(0, 3.0), (4, 0.25)])]);
    assert_eq!(put.written, 1);
    let got = c.get(&["k", "missing"]);
    assert_eq!(got.rows.len(), 2);
    let r = &got.rows[0];
    assert!(r.found);
    assert_eq!((r.event_ts_ms, r.schema_version), (now, 1));
    let values: Vec<(String, f64)> = r.values.iter().map(|v| (v.name.clone(), v.value)).collect();
    assert_eq!(values, [("f0".to_owned(), 3.0), ("f4".to_owned(), 0.25)]);
    assert!(!got.rows[1].found);

    // Idempotent by event time: an older write is skipped, the row stays.
    let put = c.put(1, vec![row("k", now - 1, &[(0, 9.0)])]);
    assert_eq!((put.written, put.skipped_older), (0, 1));
    assert_eq!(c.get(&["k"]).rows[0].values[0].value, 3.0);

    let bad_cases: Vec<(&str, PutFeaturesRequest)> = vec![
        (
            "not an integer",
            PutFeaturesRequest {
                schema_version: 1,
                rows: vec![row("a", now, &[(0, 4.5)])],
            },
        ),
        (
            "NaN",
            PutFeaturesRequest {
                schema_version: 1,
                rows: vec![row("a", now, &[(3, f64::NAN)])],
            },
        ),
        (
            "not finite",
            PutFeaturesRequest {
                schema_version: 1,
                rows: vec![row("a", now, &[(3, f64::INFINITY)])],
            },
        ),
        (
            "at most 256",
            PutFeaturesRequest {
                schema_version: 1,
                rows: vec![row(&"x".repeat(300), now, &[(3, 1.0)])],
            },
        ),
        (
            "empty",
            PutFeaturesRequest {
                schema_version: 1,
                rows: vec![row("", now, &[(3, 1.0)])],
            },
        ),
        (
            "not known",
            PutFeaturesRequest {
                schema_version: 9,
                rows: vec![row("a", now, &[(3, 1.0)])],
            },
        ),
        (
            "not in schema",
            PutFeaturesRequest {
                schema_version: 1,
                rows: vec![FeatureRowMsg {
                    entity: b"a".to_vec(),
                    event_ts_ms: now,
                    values: vec![FeatureValue {
                        name: "bogus".into(),
                        value: 1.0,
                    }],
                }],
            },
        ),
    ];
    for (why, req) in &bad_cases {
        let (code, msg) = c.refused(Opcode::PutFeatures, req);
        assert_eq!(code, ErrorCode::BadInput, "{why}: {msg}");
        assert!(msg.contains(why), "{why}: {msg}");
    }
    // One bad row in a batch: nothing of the batch is written.
    let req = PutFeaturesRequest {
        schema_version: 1,
        rows: vec![
            row("good", now, &[(2, 1.0)]),
            row("bad", now, &[(2, f64::NAN)]),
        ],
    };
    assert_eq!(c.refused(Opcode::PutFeatures, &req).0, ErrorCode::BadInput);
    assert!(!c.get(&["good"]).rows[0].found);

    // PREDICT_BY_ENTITY: oversized key, NaN override, unknown feature, no keys, no schema.
    let long = "y".repeat(300);
    for (why, req) in [
        ("at most 256", entity_req("lr", &[long.as_str()])),
        ("at least one", entity_req("lr", &[])),
        ("\"nope\"", entity_req("nope", &["k"])),
    ] {
        let (code, msg) = c.refused(Opcode::PredictByEntity, &req);
        assert!(
            matches!(code, ErrorCode::BadInput | ErrorCode::UnknownModel),
            "{why}: {code} {msg}"
        );
        assert!(msg.contains(why), "{why}: {msg}");
    }
    let mut req = entity_req("lr", &["k"]);
    req.overrides = vec![FeatureOverride {
        row: 0,
        feature: "f2".into(),
        value: f64::NAN,
    }];
    let (code, msg) = c.refused(Opcode::PredictByEntity, &req);
    assert_eq!(code, ErrorCode::BadInput);
    assert!(msg.contains("NaN"), "{msg}");
    req.overrides = vec![FeatureOverride {
        row: 0,
        feature: "zz".into(),
        value: 1.0,
    }];
    assert!(c
        .refused(Opcode::PredictByEntity, &req)
        .1
        .contains("unknown feature"));
    req.overrides = vec![FeatureOverride {
        row: 3,
        feature: "f2".into(),
        value: 1.0,
    }];
    assert!(c.refused(Opcode::PredictByEntity, &req).1.contains("row 3"));
    assert_eq!(
        c.refused(
            Opcode::GetFeatures,
            &GetFeaturesRequest {
                entities: vec![vec![b'z'; 300]]
            }
        )
        .0,
        ErrorCode::BadInput
    );
    // Metadata that does not decode.
    let mut f = Vec::new();
    encode_message(Opcode::PutFeatures, 77, &HealthRequest {}, &mut f).unwrap();
    f.truncate(HEADER_LEN);
    let bogus = [0x0a, 0xff, 0xff];
    let mut h = Header::decode(&f).unwrap();
    h.meta_len = bogus.len() as u32;
    let mut frame = h.to_bytes().to_vec();
    frame.extend_from_slice(&bogus);
    let (h, body) = c.send_raw(&frame);
    let e: ErrorResponse = decode_message(&h, &body).unwrap();
    assert_eq!(e.error_code(), Some(ErrorCode::BadFrame));

    // The same connection still serves.
    let (_, _, r) = c.by_entity(&entity_req("lr", &["k"]));
    assert!(r[0].found);
}

#[test]
fn a_full_map_is_a_feature_store_error_and_reads_go_on() {
    let d = start(1 << 20);
    let mut c = Conn::open(&d.sock).unwrap();
    let now = now_ms();
    c.put(1, vec![row("keep", now, &full_values(1))]);
    // Batches of 100 full rows with 200-byte keys (under the 64 KiB metadata limit): the
    // 1 MiB map fills within a few dozen.
    let mut full = None;
    for b in 0..200 {
        let rows = (0..100)
            .map(|i| {
                row(
                    &format!("{b:04}-{i:06}-{}", "p".repeat(190)),
                    now,
                    &full_values(i),
                )
            })
            .collect();
        let (h, body) = c.call(
            Opcode::PutFeatures,
            &PutFeaturesRequest {
                schema_version: 1,
                rows,
            },
        );
        if h.opcode == Opcode::Error.as_u8() {
            let e: ErrorResponse = decode_message(&h, &body).unwrap();
            full = Some((b, e));
            break;
        }
    }
    let (batch, e) = full.expect("the map never filled");
    assert_eq!(
        e.error_code(),
        Some(ErrorCode::FeatureStore),
        "{}",
        e.message
    );
    assert!(e.message.contains("full"), "{}", e.message);
    assert!(metric(&d, "edgeinfer_features_map_full_total") >= 1.0);
    // The failed batch wrote nothing: its first row is absent, the earlier ones are there.
    let first_failed = format!("{batch:04}-{:06}-{}", 0, "p".repeat(190));
    assert!(!c.get(&[first_failed.as_str()]).rows[0].found);
    // Reads keep working, on this connection and a new one.
    let (p, _, r) = c.by_entity(&entity_req("lr", &["keep"]));
    assert!(r[0].found);
    assert_close(&p, &c.by_tensor("lr", &[vector(&full_values(1))]).0);
    let mut c2 = Conn::open(&d.sock).unwrap();
    assert!(c2.get(&["keep"]).rows[0].found);
    assert!(metric(&d, "edgeinfer_features_fill_ratio") > 0.5);
}

/// A SIGHUP reload that changes a model's `[models.features]` binds the new schema: lr2
/// moves from schema version 2 to 4, so its rows of version 2 are no longer served to it
/// (every feature defaulted, flagged) until rows of version 4 are written.
#[test]
fn a_reload_binds_a_changed_feature_schema() {
    let mut d = start(64 << 20);
    let mut c = Conn::open(&d.sock).unwrap();
    let now = now_ms();
    c.put(2, vec![row("k", now, &full_values(WIDTH))]);
    let schema_of = |c: &mut Conn| {
        let (h, body) = c.call(Opcode::PredictByEntity, &entity_req("lr2", &["k"]));
        expect_op(&h, &body, Opcode::PredictByEntityResponse);
        let v = decode_predict_by_entity_response(&h, &body, &Limits::DEFAULT).unwrap();
        (v.response.schema_version, v.response.rows[0].clone())
    };
    let (sv, r) = schema_of(&mut c);
    assert_eq!(sv, 2);
    assert!(
        r.found && !r.version_mismatch && r.defaulted.is_empty(),
        "{r:?}"
    );

    let status = d.reload(|t| {
        let old = "[models.features]\nversion = 2\n";
        assert_eq!(t.matches(old).count(), 1, "{t}");
        t.replace(old, "[models.features]\nversion = 4\n")
    });
    assert!(!status.contains("failed"), "{status}");
    let mut c = Conn::open(&d.sock).unwrap();
    let (sv, r) = schema_of(&mut c);
    assert_eq!(sv, 4, "the reloaded schema is bound");
    assert!(r.found && r.version_mismatch, "{r:?}");
    assert_eq!(r.defaulted, (0..WIDTH as u32).collect::<Vec<_>>());
    c.put(4, vec![row("k", now + 1, &full_values(WIDTH))]);
    let (sv, r) = schema_of(&mut c);
    assert_eq!(sv, 4);
    assert!(
        r.found && !r.version_mismatch && r.defaulted.is_empty(),
        "{r:?}"
    );
    // The other models kept their schema.
    let (h, body) = c.call(Opcode::PredictByEntity, &entity_req("lr", &["k"]));
    expect_op(&h, &body, Opcode::PredictByEntityResponse);
    let v = decode_predict_by_entity_response(&h, &body, &Limits::DEFAULT).unwrap();
    assert_eq!(v.response.schema_version, 1);
}
