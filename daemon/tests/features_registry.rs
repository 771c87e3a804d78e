//! PREDICT_BY_ENTITY for registry-installed versions: the feature schema in each signed
//! bundle is bound when the version is installed (before it is served), a new version's
//! schema change is honoured (rows of the old schema version are not served to it), and a
//! bundle schema that clashes with the store's stored layout is refused at install while
//! the daemon keeps serving. The real pull agent, a signed repository on a loopback HTTP
//! server, a real LMDB store, the churn fixture, the real Unix socket; in-process.

mod registry_support;

use std::time::Duration;

use edgeinfer_client::blocking::Client;
use edgeinfer_client::Endpoint;
use edgeinfer_proto::*;
use edgeinfer_registry::agent::{AgentEvent, RejectKind};
use edgeinfer_registry::tuf::testrepo::Repo;
use edgeinferd::config::Config;
use edgeinferd::server::entity;
use registry_support::*;

const WIDTH: usize = 20;

/// A feature schema of `version` naming the model's 20 inputs `{prefix}0..{prefix}19`.
fn schema(version: u32, prefix: &str, dtype0: &str) -> serde_json::Value {
    let fields: Vec<_> = (0..WIDTH)
        .map(|i| {
            let dtype = if i == 0 { dtype0 } else { "f32" };
            serde_json::json!({"name": format!("{prefix}{i}"), "dtype": dtype, "default": -1.0})
        })
        .collect();
    serde_json::json!({"version": version, "fields": fields})
}

/// Publishes churn `version` whose bundle carries `features`.
fn publish_with_schema(repo: &mut Repo, version: &str, counter: u64, features: serde_json::Value) {
    let model = churn_model();
    let mut bundle: serde_json::Value =
        serde_json::from_slice(&bundle_bytes("churn", version, &model)).unwrap();
    bundle["features"] = features;
    let bytes = serde_json::to_vec_pretty(&bundle).unwrap();
    add_release_files(repo, "churn", version, counter, &model, bytes);
    repo.publish(&["targets", "snapshot", "timestamp"]);
}

/// [`Daemon::start`] with the feature store opened first, as `edgeinferd` does.
fn start(cfg: &Config) -> Daemon {
    Daemon::start_with(cfg, clock(), |table| {
        entity::start(cfg, table, 1).expect("open the feature store")
    })
}

fn call<M: prost::Message>(c: &mut Client, op: Opcode, msg: &M) -> (Header, Vec<u8>) {
    let mut frame = Vec::new();
    encode_message(op, 0, msg, &mut frame).unwrap();
    c.send_frame(&mut frame).unwrap();
    let (h, body) = c.recv_frame().unwrap();
    (h, body.to_vec())
}

/// Golden input rows 0..4 as PUT_FEATURES rows named `{prefix}i` under `schema_version`.
fn put_golden(c: &mut Client, schema_version: u32, prefix: &str, ts: i64) {
    let (input, _) = golden_rows(0, 4);
    let values: &[f32] = bytemuck::cast_slice(input.view().data);
    let rows = (0..4)
        .map(|r| FeatureRowMsg {
            entity: format!("c-{r}").into_bytes(),
            event_ts_ms: ts,
            values: (0..WIDTH)
                .map(|i| FeatureValue {
                    name: format!("{prefix}{i}"),
                    value: f64::from(values[r * WIDTH + i]),
                })
                .collect(),
        })
        .collect();
    let (h, body) = call(
        c,
        Opcode::PutFeatures,
        &PutFeaturesRequest {
            schema_version,
            rows,
        },
    );
    assert_eq!(
        h.opcode,
        Opcode::PutFeaturesResponse.as_u8(),
        "PUT_FEATURES: {:?}",
        decode_message::<ErrorResponse>(&h, &body).map(|e| e.message)
    );
}

/// PREDICT_BY_ENTITY of c-0..c-3: (version served, schema version, reports, label bytes).
fn predict_by_entity(c: &mut Client) -> (String, u32, Vec<EntityRowReport>, Vec<u8>) {
    let req = PredictByEntityRequest {
        model: "churn".into(),
        keys: (0..4).map(|r| format!("c-{r}").into_bytes()).collect(),
        ..Default::default()
    };
    let (h, body) = call(c, Opcode::PredictByEntity, &req);
    assert_eq!(
        h.opcode,
        Opcode::PredictByEntityResponse.as_u8(),
        "PREDICT_BY_ENTITY: {:?}",
        decode_message::<ErrorResponse>(&h, &body).map(|e| e.message)
    );
    match decode_payload(&h, &body).unwrap() {
        Payload::PredictByEntityResponse(v) => {
            let p = v.prediction();
            let k = p.outputs.iter().position(|o| o.name == "label").unwrap();
            let label = v.output(k).unwrap().data.to_vec();
            (
                p.version.clone(),
                v.response.schema_version,
                v.response.rows.clone(),
                label,
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn registry_versions_are_predicted_by_entity_with_their_bundle_schema() {
    let mut repo = Repo::new();
    publish_with_schema(&mut repo, "1", 1, schema(1, "f", "f32"));
    let mut env = Env {
        dir: tempfile::tempdir().unwrap(),
        repo,
    };
    env.write();
    std::fs::write(env.root_file(), env.repo.version("root", 1)).unwrap();
    let server = StaticServer::start(&env.repo_dir());
    let mut text = config_text(
        &server.url(),
        &env.root_file(),
        &env.state_dir(),
        env.dir.path(),
    );
    text.push_str("[cache]\nenabled = true\nmax_bytes = 67108864\nttl_s = 0\n");
    let cfg = Config::from_toml_str(&text).unwrap();
    cfg.validate().unwrap();
    let d = start(&cfg);
    expect_installed(&d, 0, "1");
    d.assert_serving("1");
    let (_, want) = golden_rows(0, 4);
    let want_labels = want[0].view().data.to_vec();

    let mut c = Client::connect(&Endpoint::Unix(d.sock.clone())).unwrap();
    c.set_timeout(Some(Duration::from_secs(20))).unwrap();
    // Bound at install: version 1 assembles with its bundle's schema 1.
    put_golden(&mut c, 1, "f", 1_000);
    let (version, sv, reports, labels) = predict_by_entity(&mut c);
    assert_eq!((version.as_str(), sv), ("1", 1));
    assert!(reports.iter().all(|r| r.found && r.defaulted.is_empty()));
    assert_eq!(labels, want_labels, "the golden labels, by entity");

    // Version 2 renames every feature under schema version 2: the rows of schema 1 are
    // not served to it (every feature defaulted, flagged), until rows of schema 2 exist.
    let n = d.event_count();
    publish_with_schema(&mut env.repo, "2", 2, schema(2, "g", "f32"));
    env.write();
    d.poll();
    expect_installed(&d, n, "2");
    let (version, sv, reports, _) = predict_by_entity(&mut c);
    assert_eq!((version.as_str(), sv), ("2", 2));
    for r in &reports {
        assert!(r.found && r.version_mismatch, "{r:?}");
        assert_eq!(r.defaulted, (0..WIDTH as u32).collect::<Vec<_>>());
    }
    put_golden(&mut c, 2, "g", 2_000);
    let (version, sv, reports, labels) = predict_by_entity(&mut c);
    assert_eq!((version.as_str(), sv), ("2", 2));
    assert!(reports
        .iter()
        .all(|r| r.found && !r.version_mismatch && r.defaulted.is_empty()));
    assert_eq!(labels, want_labels);

    // Version 3 claims schema version 1 but with g0 an i32 where the stored layout of
    // version 1 has f0..f19 f32: refused at install; version 2 keeps serving by entity.
    let n = d.event_count();
    publish_with_schema(&mut env.repo, "3", 3, schema(1, "f", "i32"));
    env.write();
    d.poll();
    let reason = expect_rejection(&d, n, "a clashing feature schema", |k| {
        *k == RejectKind::Validation
    });
    assert!(
        reason.contains("features") && reason.contains("\"f0\" is i32"),
        "{reason}"
    );
    assert!(
        !d.events_since(n)
            .iter()
            .any(|e| matches!(e, AgentEvent::Installed { .. })),
        "{:?}",
        d.events_since(n)
    );
    let (version, sv, _, labels) = predict_by_entity(&mut c);
    assert_eq!((version.as_str(), sv), ("2", 2));
    assert_eq!(labels, want_labels);
    drop(server);
}
