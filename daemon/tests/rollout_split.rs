//! A model serving two versions at once over the real socket: a rollout split is sticky by
//! routing key under the rollout crate's bucketing (the arm the crate predicts is the
//! version that answers), random without a key, pinnable by arm or version for debugging,
//! counted per arm, and a rollback to stable is a routing change that takes effect at once.
//!
//! The app runs in-process on real listeners with the real churn fixture on tract, loaded
//! as two versions.

mod serve_support;

use edgeinfer_client::blocking::Client;
use edgeinfer_client::PredictOptions;
use edgeinfer_engine::EngineChoice;
use edgeinfer_proto::ErrorCode;
use edgeinfer_rollout::{Arm, Serve};
use edgeinferd::app::ModelSpec;
use edgeinferd::server::Driver;
use serve_support::*;

const SALT: &str = "churn-4-2026-12";

fn churn_spec(version: &str) -> ModelSpec {
    ModelSpec {
        version: version.into(),
        ..spec("churn", "churn_rf", EngineChoice::Tract, None)
    }
}

fn predict(
    c: &mut Client,
    key: &[u8],
    pin: Option<&str>,
) -> Result<String, edgeinfer_client::ClientError> {
    let row = churn_row(0.5);
    let opts = PredictOptions {
        version: pin.map(Into::into),
        routing_key: key.to_vec(),
        ..Default::default()
    };
    c.predict("churn", &[row.view()], &opts).map(|r| r.version)
}

fn split(candidate_bp: u32) -> Serve {
    Serve::Split {
        stable: "3".into(),
        candidate: "4".into(),
        candidate_bp,
        salt: SALT.into(),
    }
}

fn requests(srv: &TestServer, version: &str) -> u64 {
    let snap = srv.app().table().snapshot();
    let v = snap
        .resolve("churn", Some(version), b"")
        .expect("version loaded");
    v.stats.total()
}

#[test]
fn two_versions_served_with_a_sticky_split() {
    let srv = start(options(Driver::Epoll), &[churn_spec("3"), churn_spec("4")]);
    srv.app()
        .control()
        .serve_rollout("churn", &split(3000))
        .unwrap();
    let mut c = srv.client();

    // Keyed: every key answered by the arm the rollout crate computes, twice over.
    let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let mut on_candidate = 0u64;
    for round in 0..2 {
        for k in &keys {
            let want = match Arm::for_key(SALT, k.as_bytes(), 3000) {
                Arm::Candidate => "4",
                Arm::Stable => "3",
            };
            let got = predict(&mut c, k.as_bytes(), None).unwrap();
            assert_eq!(got, want, "key {k}, round {round}");
            on_candidate += (got == "4") as u64;
        }
    }
    // 30 % of 300 keys: the hash is not skewed (±5 σ of a binomial).
    assert!(
        (2 * 60..2 * 120).contains(&on_candidate),
        "{on_candidate} of 600 on the candidate"
    );

    // Each arm counts its own requests.
    assert_eq!(requests(&srv, "4"), on_candidate);
    assert_eq!(requests(&srv, "3"), 600 - on_candidate);

    // No key: both arms answer.
    let unkeyed: Vec<String> = (0..200)
        .map(|_| predict(&mut c, b"", None).unwrap())
        .collect();
    assert!(unkeyed.iter().any(|v| v == "4") && unkeyed.iter().any(|v| v == "3"));

    // Pins, for debugging: by arm and by version, whatever the key says.
    let stable_key = keys
        .iter()
        .find(|k| Arm::for_key(SALT, k.as_bytes(), 3000) == Arm::Stable)
        .unwrap();
    assert_eq!(
        predict(&mut c, stable_key.as_bytes(), Some("@candidate")).unwrap(),
        "4"
    );
    assert_eq!(
        predict(&mut c, stable_key.as_bytes(), Some("@0")).unwrap(),
        "4"
    );
    assert_eq!(predict(&mut c, b"", Some("@stable")).unwrap(), "3");
    assert_eq!(predict(&mut c, b"", Some("4")).unwrap(), "4");
    let e = predict(&mut c, b"", Some("@7")).unwrap_err();
    assert_eq!(e.server_code(), Some(ErrorCode::UnknownModel), "{e}");
    // The connection keeps serving after a refused pin.
    assert_eq!(predict(&mut c, b"", Some("3")).unwrap(), "3");

    // Raising the split moves keys only towards the candidate.
    srv.app()
        .control()
        .serve_rollout("churn", &split(6000))
        .unwrap();
    for k in &keys {
        if Arm::for_key(SALT, k.as_bytes(), 3000) == Arm::Candidate {
            assert_eq!(predict(&mut c, k.as_bytes(), None).unwrap(), "4", "{k}");
        }
    }

    // Rollback: stable alone, at once, for every key; the candidate stays pinnable.
    srv.app()
        .control()
        .serve_rollout(
            "churn",
            &Serve::Stable {
                version: "3".into(),
            },
        )
        .unwrap();
    for k in &keys {
        assert_eq!(predict(&mut c, k.as_bytes(), None).unwrap(), "3", "{k}");
    }
    assert_eq!(predict(&mut c, b"", Some("4")).unwrap(), "4");
    assert_eq!(
        predict(&mut c, b"", Some("@candidate"))
            .unwrap_err()
            .server_code(),
        Some(ErrorCode::UnknownModel)
    );
}

#[test]
fn a_split_naming_a_version_not_installed_is_refused_and_changes_nothing() {
    let srv = start(options(Driver::Epoll), &[churn_spec("3")]);
    let e = srv
        .app()
        .control()
        .serve_rollout("churn", &split(5000))
        .unwrap_err();
    assert!(format!("{e:#}").contains("\"4\""), "{e:#}");
    let mut c = srv.client();
    for i in 0..20 {
        assert_eq!(
            predict(&mut c, format!("user-{i}").as_bytes(), None).unwrap(),
            "3"
        );
    }
}
