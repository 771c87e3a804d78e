//! The HTTP API end to end over a real socket: health and readiness, `/predict` against the
//! golden outputs, KServe v2 metadata and infer (JSON and binary tensors), `/metrics`, the
//! bearer token, and the status code and `{"error"}` of every kind of bad request.

mod http_support;

use std::sync::atomic::Ordering::Relaxed;

use edgeinfer_engine::EngineChoice;
use edgeinferd::config::Config;
use http_support::*;
use serde_json::json;

/// The churn forest on tract: always available, no ORT needed for the HTTP layer.
fn churn_table() -> std::sync::Arc<edgeinferd::model_table::ModelTable> {
    table(&[
        spec("churn", "churn_rf", EngineChoice::Tract),
        spec("reg", "rf_regressor", EngineChoice::Tract),
    ])
}

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn health_and_readiness_follow_the_model_table() {
    let t = churn_table();
    let h = serve(&Config::default(), t.clone());
    let a = h.local_addr();
    assert_eq!(get(a, "/healthz").status, 200);
    assert_eq!(get(a, "/v2/health/live").status, 200);
    assert_eq!(get(a, "/readyz").status, 200);
    assert_eq!(get(a, "/v2/health/ready").status, 200);
    assert_eq!(get(a, "/v2/models/churn/ready").status, 200);

    // A version that is not warm makes the daemon not ready, and that model unavailable.
    let snap = t.snapshot();
    let churn = snap.resolve("churn", None, b"").unwrap();
    churn.ready.store(false, Relaxed);
    let r = get(a, "/readyz");
    assert_eq!(r.status, 503);
    assert!(r.error().contains("churn@1"), "{}", r.text());
    assert_eq!(get(a, "/v2/health/ready").status, 503);
    assert_eq!(get(a, "/v2/models/churn/ready").status, 503);
    assert_eq!(get(a, "/v2/models/reg/ready").status, 200);
    let r = post_json(a, "/predict", &json!({"features": [vec![0.0; 20]]}));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        get(a, "/healthz").status,
        200,
        "liveness does not depend on models"
    );
    churn.ready.store(true, Relaxed);
    assert_eq!(get(a, "/readyz").status, 200);

    // An empty table is not ready.
    let h2 = serve(&Config::default(), std::sync::Arc::new(Default::default()));
    assert_eq!(get(h2.local_addr(), "/readyz").status, 503);
}

#[test]
fn predict_matches_the_golden_probabilities() {
    let g = churn_golden();
    let h = serve(&Config::default(), churn_table());
    let a = h.local_addr();
    let r = post_json(a, "/predict", &json!({ "features": g.rows }));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["model_version"], "1");
    assert!(body["latency_ms"].as_f64().unwrap() > 0.0);
    let preds = body["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), g.rows.len());
    for (i, (p, want)) in preds.iter().zip(&g.probabilities).enumerate() {
        assert_close(&f32s(p), want, &format!("row {i}"));
    }
    // A version pin that exists, and one that does not (404, like the FastAPI server).
    let r = post_json(
        a,
        "/predict",
        &json!({ "features": [g.rows[0]], "model_version": "1" }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_json(
        a,
        "/predict",
        &json!({ "features": [g.rows[0]], "model_version": "7" }),
    );
    assert_eq!(r.status, 404);
    assert!(r.error().contains("no version \"7\""), "{}", r.error());
}

#[test]
fn predict_serves_the_configured_model_and_regressor_values() {
    let mut cfg = Config::default();
    cfg.http.predict_model = Some("reg".into());
    let h = serve(&cfg, churn_table());
    let r = post_json(
        h.local_addr(),
        "/predict",
        &json!({ "features": [vec![0.5; 20], vec![-0.5; 20]] }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let preds = r.json()["predictions"].clone();
    let values = preds.as_array().unwrap();
    assert_eq!(values.len(), 2);
    assert!(
        values.iter().all(|v| v.is_number()),
        "a regressor gives one value per row: {preds}"
    );
}

#[test]
fn predict_rejects_bad_bodies_with_400_and_a_reason() {
    let h = serve(&Config::default(), churn_table());
    let a = h.local_addr();
    for (body, words) in [
        (&b"not json"[..], "expected {\"features\""),
        (br#"{"features": "x"}"#, "invalid type"),
        (br#"{"rows": [[1]]}"#, "missing field `features`"),
        (br#"{"features": [[1, "a"]]}"#, "invalid type"),
        (br#"{"features": []}"#, "features is empty"),
        (
            br#"{"features": [[1,2,3]]}"#,
            "rows have 3 features; model \"churn\" takes 20",
        ),
        (
            br#"{"features": [[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],[1]]}"#,
            "row 1 has 1 features",
        ),
    ] {
        let r = request(
            a,
            "POST",
            "/predict",
            &[("Content-Type", "application/json")],
            body,
        );
        assert_eq!(
            r.status,
            400,
            "{}: {}",
            String::from_utf8_lossy(body),
            r.text()
        );
        assert!(
            r.error().contains(words),
            "{}: {}",
            String::from_utf8_lossy(body),
            r.error()
        );
    }
    // The daemon keeps serving after all that.
    let r = post_json(a, "/predict", &json!({"features": [vec![0.0; 20]]}));
    assert_eq!(r.status, 200);
}

#[test]
fn kserve_metadata_and_readiness() {
    let h = serve(&Config::default(), churn_table());
    let a = h.local_addr();
    let r = get(a, "/v2");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "edgeinferd");
    assert!(r.json()["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));

    let m = get(a, "/v2/models/churn").json();
    assert_eq!(m["name"], "churn");
    assert_eq!(m["versions"], json!(["1"]));
    assert_eq!(m["engine"], "tract");
    assert_eq!(
        m["inputs"],
        json!([{"name": "float_input", "datatype": "FP32", "shape": [-1, 20]}])
    );
    assert_eq!(
        m["outputs"][0],
        json!({"name": "label", "datatype": "INT64", "shape": [-1]})
    );
    assert_eq!(
        m["outputs"][1],
        json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]})
    );
    assert_eq!(
        get(a, "/v2/models/churn/versions/1").json()["versions"],
        json!(["1"])
    );
    assert_eq!(get(a, "/v2/models/churn/versions/1/ready").status, 200);
    let c = get(a, "/v2/models/churn/config").json();
    assert_eq!(c["max_batch_size"], 0);
    assert_eq!(c["input"][0]["data_type"], "TYPE_FP32");

    for path in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/churn/versions/9",
        "/v2/models/churn/versions/9/ready",
    ] {
        let r = get(a, path);
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.error().is_empty());
    }
    let r = get(a, "/no/such/route");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("/no/such/route"));
    let r = get(a, "/v2/models/churn/infer");
    assert_eq!(r.status, 405);
    assert!(r.error().contains("GET"), "{}", r.error());
}

#[test]
fn kserve_infer_with_json_tensors() {
    let g = churn_golden();
    let h = serve(&Config::default(), churn_table());
    let a = h.local_addr();
    let rows = &g.rows[..8];
    let req = json!({
        "id": "req-1",
        "inputs": [{"name": "float_input", "shape": [rows.len(), 20], "datatype": "FP32", "data": rows}],
        "outputs": [{"name": "probabilities"}, {"name": "label"}],
    });
    let r = post_json(a, "/v2/models/churn/infer", &req);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("inference-header-content-length").is_none());
    let body = r.json();
    assert_eq!(body["model_name"], "churn");
    assert_eq!(body["model_version"], "1");
    assert_eq!(body["id"], "req-1");
    let outs = body["outputs"].as_array().unwrap();
    assert_eq!(outs[0]["name"], "probabilities");
    assert_eq!(outs[0]["datatype"], "FP32");
    assert_eq!(outs[0]["shape"], json!([8, 2]));
    let want: Vec<f32> = g.probabilities[..8].concat();
    assert_close(&f32s(&outs[0]["data"]), &want, "probabilities");
    assert_eq!(outs[1]["datatype"], "INT64");
    let labels: Vec<i64> = outs[1]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(labels, g.label[..8]);

    // Pinned version, flat data, no outputs list: every output, as JSON.
    let flat: Vec<f32> = g.rows[0].clone();
    let req = json!({"inputs": [{"name": "float_input", "shape": [1, 20], "datatype": "FP32", "data": flat}]});
    let r = post_json(a, "/v2/models/churn/versions/1/infer", &req);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outputs"].as_array().unwrap().len(), 2);
}

/// The binary-tensor extension, built by hand as tritonclient builds it.
#[test]
fn kserve_infer_with_binary_tensors() {
    let g = churn_golden();
    let h = serve(&Config::default(), churn_table());
    let a = h.local_addr();
    let rows = &g.rows[..4];
    let data: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let header = json!({
        "inputs": [{"name": "float_input", "shape": [4, 20], "datatype": "FP32", "parameters": {"binary_data_size": data.len()}}],
        "parameters": {"binary_data_output": true},
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&data);
    let hlen = header.len().to_string();
    let r = request(
        a,
        "POST",
        "/v2/models/churn/infer",
        &[("Inference-Header-Content-Length", &hlen)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let n: usize = r
        .header("inference-header-content-length")
        .expect("binary reply")
        .parse()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&r.body[..n]).unwrap();
    let mut tail = &r.body[n..];
    let mut got = std::collections::HashMap::new();
    for o in json["outputs"].as_array().unwrap() {
        assert!(
            o.get("data").is_none(),
            "binary outputs carry no JSON data: {o}"
        );
        let size = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        got.insert(
            o["name"].as_str().unwrap().to_owned(),
            tail[..size].to_vec(),
        );
        tail = &tail[size..];
    }
    assert!(tail.is_empty());
    let p: Vec<f32> = got["probabilities"]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_close(&p, &g.probabilities[..4].concat(), "probabilities");
    let l: Vec<i64> = got["label"]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(l, g.label[..4]);
}

#[test]
fn kserve_bad_requests_get_400_and_a_reason() {
    let h = serve(&Config::default(), churn_table());
    let a = h.local_addr();
    let row = vec![0.0f32; 20];
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!({"inputs": [{"name": "float_input", "shape": [1, 19], "datatype": "FP32", "data": vec![0.0; 19]}]}),
            "shape [1, 19]",
        ),
        (
            json!({"inputs": [{"name": "float_input", "shape": [20], "datatype": "FP32", "data": row}]}),
            "shape [20]",
        ),
        (
            json!({"inputs": [{"name": "float_input", "shape": [1, 20], "datatype": "FP64", "data": row}]}),
            "the model takes FP32",
        ),
        (
            json!({"inputs": [{"name": "float_input", "shape": [2, 20], "datatype": "FP32", "data": row}]}),
            "20 values",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP32", "data": row}]}),
            "unknown input \"x\"",
        ),
        (json!({"inputs": []}), "missing input \"float_input\""),
        (
            json!({"inputs": [{"name": "float_input", "shape": [1, 20], "datatype": "FP32", "data": row}], "outputs": [{"name": "nope"}]}),
            "unknown output",
        ),
        (json!({"input": []}), "missing field `inputs`"),
        (
            json!({"inputs": [{"name": "float_input", "shape": [1, 20], "datatype": "FP32", "data": vec![f64::MAX; 20]}]}),
            "NaN or infinite",
        ),
    ];
    for (req, words) in cases {
        let r = post_json(a, "/v2/models/churn/infer", &req);
        assert_eq!(r.status, 400, "{req}: {}", r.text());
        assert!(r.error().contains(words), "{req}: {}", r.error());
    }
    for (headers, body, words) in [
        (vec![], &b"{"[..], "not a KServe v2 inference request"),
        (
            vec![("Inference-Header-Content-Length", "999")],
            &b"{}"[..],
            "only 2 bytes",
        ),
        (
            vec![("Inference-Header-Content-Length", "x")],
            &b"{}"[..],
            "not a number",
        ),
    ] {
        let r = request(a, "POST", "/v2/models/churn/infer", &headers, body);
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.error().contains(words), "{}", r.error());
    }
    let r = post_json(a, "/v2/models/nope/infer", &json!({"inputs": []}));
    assert_eq!(r.status, 404);
    assert!(
        r.error().contains("unknown model \"nope\""),
        "{}",
        r.error()
    );
}

#[test]
fn oversized_bodies_are_refused_with_413() {
    let mut cfg = Config::default();
    cfg.http.max_body_bytes = 4096;
    let h = serve(&cfg, churn_table());
    let big = vec![b' '; 8192];
    let r = request(h.local_addr(), "POST", "/predict", &[], &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.error().to_lowercase().contains("length limit"),
        "{}",
        r.error()
    );
}

#[test]
fn metrics_count_requests_by_model_version_and_status() {
    let h = serve(&Config::default(), churn_table());
    let a = h.local_addr();
    for _ in 0..3 {
        assert_eq!(
            post_json(
                a,
                "/predict",
                &json!({"features": [vec![0.1; 20], vec![0.2; 20]]})
            )
            .status,
            200
        );
    }
    assert_eq!(
        post_json(a, "/predict", &json!({"features": [vec![0.1; 3]]})).status,
        400
    );
    let r = get(a, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    for line in [
        "edgeinfer_requests_total{model=\"churn\",version=\"1\",status=\"ok\"} 3",
        "edgeinfer_requests_total{model=\"churn\",version=\"1\",status=\"bad_input\"} 1",
        "edgeinfer_rows_total{model=\"churn\",version=\"1\"} 6",
        "edgeinfer_request_duration_seconds_count{model=\"churn\",version=\"1\"} 3",
        "edgeinfer_engine_run_seconds_count{model=\"churn\",version=\"1\"} 3",
        "edgeinfer_batch_rows_bucket{model=\"churn\",version=\"1\",le=\"2\"} 3",
        "edgeinfer_model_engine_info{model=\"churn\",version=\"1\",engine=\"tract\"} 1",
        "edgeinfer_model_ready{model=\"reg\",version=\"1\"} 1",
        "edgeinfer_http_requests_total{route=\"/predict\",code=\"200\"} 3",
        "edgeinfer_http_requests_total{route=\"/predict\",code=\"400\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    check_exposition(&text);
}

/// Every line is a comment or `name{labels} value`, every series has a TYPE, and every
/// histogram is cumulative and ends in a +Inf bucket equal to its count.
fn check_exposition(text: &str) {
    let mut typed = std::collections::HashMap::new();
    let mut last_bucket: Option<(String, f64)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice for {name}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("edgeinfer_"), "{line}");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| typed.get(*b).is_some_and(|k| k == "histogram"));
        let family = base.unwrap_or(name);
        let kind = typed
            .get(family)
            .unwrap_or_else(|| panic!("no TYPE for {family}"));
        if kind == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
        }
        if name.ends_with("_bucket") {
            let key = series.split(",le=").next().unwrap().to_owned();
            if let Some((k, prev)) = &last_bucket {
                if *k == key {
                    assert!(v >= *prev, "histogram not cumulative at {line}");
                }
            }
            last_bucket = Some((key, v));
        } else if name.ends_with("_count") && base.is_some() {
            let (_, inf) = last_bucket.take().expect("buckets before _count");
            assert_eq!(inf, v, "+Inf bucket != count at {line}");
        }
        // Durations are histograms; points in time (`…_timestamp_seconds`, `…_time_seconds`) are gauges.
        if family.ends_with("_seconds")
            && !family.ends_with("_timestamp_seconds")
            && !family.ends_with("_time_seconds")
        {
            assert_eq!(kind, "histogram", "{family}");
        }
    }
}

#[test]
fn a_bearer_token_guards_everything_but_health() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let tok = d.path().join("http.token");
    std::fs::write(&tok, "correct-horse-battery-staple\n").unwrap();
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg = Config::default();
    cfg.http.auth_token_file = Some(tok);
    let h = serve(&cfg, churn_table());
    let a = h.local_addr();
    for path in ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"] {
        assert_eq!(get(a, path).status, 200, "{path} is open");
    }
    for path in ["/metrics", "/v2", "/v2/models/churn"] {
        let r = get(a, path);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(r.error().contains("bearer token"));
    }
    let body = json!({"features": [vec![0.0; 20]]}).to_string();
    let r = request(
        a,
        "POST",
        "/predict",
        &[("Authorization", "Bearer wrong-token-wrong-token")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 401);
    let r = request(
        a,
        "POST",
        "/predict",
        &[("Authorization", "Bearer correct-horse-battery-staple")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        a,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer correct-horse-battery-staple")],
        b"",
    );
    assert_eq!(r.status, 200);
}
