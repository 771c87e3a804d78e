//! The release commands on a directory repository, without MLflow: `release create
//! --model`, signing, publishing, `verify` (and its refusal of a tampered file), and
//! `root rotate` with the threshold going up then down, followed by `edgeinfer tuf`.

mod cli_support;

use cli_support::{checkout, edgeinfer, fails, logreg_reference_csv, ok};

#[test]
fn create_sign_publish_verify_and_rotate_root_on_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let keys = t.join("keys");
    let ks = keys.to_str().unwrap();
    for k in [
        "root1",
        "root2",
        "root3",
        "targets",
        "snapshot",
        "timestamp",
    ] {
        ok(&["keys", "gen", "--out", ks, "--name", k]);
    }
    let key = |n: &str, kind: &str| keys.join(format!("{n}.{kind}.json")).display().to_string();
    let work = t.join("work");
    let w = work.to_str().unwrap();
    let served = t.join("served");
    let s = served.to_str().unwrap();
    ok(&[
        "repo",
        "init",
        "--dir",
        w,
        "--root-key",
        &key("root1", "pub"),
        "--targets-key",
        &key("targets", "pub"),
        "--snapshot-key",
        &key("snapshot", "pub"),
        "--timestamp-key",
        &key("timestamp", "pub"),
    ]);
    let online = [
        "--key".to_string(),
        key("targets", "key"),
        "--key".into(),
        key("snapshot", "key"),
        "--key".into(),
        key("timestamp", "key"),
    ];
    let sign = |extra: &[&str]| {
        let mut args = vec!["release", "sign", "--dir", w];
        args.extend(online.iter().map(String::as_str));
        args.extend(extra);
        ok(&args)
    };
    sign(&["--key", &key("root1", "key")]);
    ok(&["release", "publish", "--dir", w, "--repo", s]);
    let root_v1 = served.join("metadata/1.root.json");
    let r1 = root_v1.to_str().unwrap();

    let reference = t.join("ref.csv");
    logreg_reference_csv(&reference);
    let model = checkout().join("tests/fixtures/models/logreg.onnx");
    let create = [
        "release",
        "create",
        "--dir",
        w,
        "--model",
        model.to_str().unwrap(),
        "--name",
        "churn",
        "--version",
        "4",
        "--reference-data",
        reference.to_str().unwrap(),
        "--categorical",
        "f3",
        "--metric",
        "accuracy=0.88",
        "--dataset-version",
        "d7",
    ];
    ok(&create);
    // The same version again is refused.
    let e = fails(&create);
    assert!(e.contains("already a target"), "{e}");
    // Unsigned: publishing is refused and nothing changes for clients.
    let e = fails(&["release", "publish", "--dir", w, "--repo", s]);
    assert!(e.contains("not signed enough"), "{e}");
    let out = ok(&["verify", "--repo", s, "--root", r1]);
    assert!(out.contains("targets v1"), "{out}");
    sign(&[]);
    ok(&["release", "publish", "--dir", w, "--repo", s]);
    let out = ok(&["verify", "--repo", s, "--root", r1]);
    assert!(out.contains("ok   models/churn/4/bundle.json"), "{out}");
    assert!(out.contains("ok   models/churn/4/model.onnx"), "{out}");

    // Root v2: two more root keys, threshold 2 (signed by v1's key and two of v2's).
    ok(&[
        "root",
        "rotate",
        "--dir",
        w,
        "--add-key",
        &key("root2", "pub"),
        "--add-key",
        &key("root3", "pub"),
        "--threshold",
        "2",
    ]);
    ok(&["release", "sign", "--dir", w, "--key", &key("root1", "key")]);
    let e = fails(&["release", "publish", "--dir", w, "--repo", s]);
    assert!(e.contains("root v2: 1/2"), "{e}");
    ok(&["release", "sign", "--dir", w, "--key", &key("root2", "key")]);
    ok(&["release", "publish", "--dir", w, "--repo", s]);
    // Root v3: threshold back to 1, root1 removed; v2's threshold (2) still signs it.
    ok(&[
        "root",
        "rotate",
        "--dir",
        w,
        "--remove-key",
        &key("root1", "pub"),
        "--threshold",
        "1",
    ]);
    ok(&["release", "sign", "--dir", w, "--key", &key("root3", "key")]);
    let e = fails(&["release", "publish", "--dir", w, "--repo", s]);
    assert!(e.contains("previous root's keys: 1/2"), "{e}");
    ok(&["release", "sign", "--dir", w, "--key", &key("root2", "key")]);
    ok(&["release", "publish", "--dir", w, "--repo", s]);

    // The online key keeps the repository fresh: a new timestamp, nothing else.
    let out = ok(&[
        "release",
        "sign",
        "--dir",
        w,
        "--key",
        &key("timestamp", "key"),
        "--refresh-timestamp",
    ]);
    assert!(out.contains("timestamp v3: 1/1"), "{out}");
    ok(&["release", "publish", "--dir", w, "--repo", s]);

    // A box pinned to root v1 follows to v3 (our TUF client, the conformance CLI).
    let md = t.join("box");
    let m = md.to_str().unwrap();
    ok(&["tuf", "--metadata-dir", m, "init", r1]);
    let meta_url = served.join("metadata");
    let out = edgeinfer(&[
        "tuf",
        "--metadata-dir",
        m,
        "--metadata-url",
        meta_url.to_str().unwrap(),
        "refresh",
    ]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("root v3, timestamp v3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Substitute the model in the served directory: verify names it.
    let model_bytes = std::fs::read(&model).unwrap();
    let sha = edgeinfer_registry::release::repo::sha256_hex(&model_bytes);
    let served_model = served.join(format!("targets/models/churn/4/{sha}.model.onnx"));
    assert!(served_model.is_file());
    std::fs::write(&served_model, b"not the model").unwrap();
    let out = fails(&["verify", "--repo", s, "--root", r1]);
    assert!(out.contains("FAIL models/churn/4/model.onnx"), "{out}");
    assert!(out.contains("1 of 2 targets failed"), "{out}");
}
