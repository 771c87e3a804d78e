//! The Sparkplug B profile through the real daemon: with `[telemetry.sparkplug]` the served
//! model is a device of the edge node. A Python host that joins after the daemon has
//! connected (so it missed the first NBIRTH, which is QoS 0 and not retained) writes
//! `Node Control/Rebirth` to NCMD and gets NBIRTH and the model's DBIRTH; predictions then
//! arrive as DDATA by alias, every payload decoded from the committed .proto. The JSON topics
//! keep working beside it.

mod telemetry_support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use telemetry_support::*;

fn kind(m: &Value) -> &str {
    m["kind"].as_str().unwrap_or("")
}

#[test]
fn a_late_host_gets_a_rebirth_and_predictions_arrive_as_ddata() {
    watchdog("telemetry_sparkplug", 180);
    let group = format!("plant{}", std::process::id());
    let b = start(
        &normal_reference(WIDTH),
        &format!("interval_s = 1\n[telemetry.sparkplug]\ngroup_id = \"{group}\"\nedge_node_id = \"box1\""),
    );
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../telemetry/proto/sparkplug_b.proto");
    let host = Consumer::script(
        "sparkplug_consumer.py",
        b.broker.port,
        &[group.as_ref(), proto.as_os_str(), "box1".as_ref()],
    );
    host.wait_until(
        "NBIRTH and the churn DBIRTH after the rebirth command",
        |_| {
            let m = host.messages();
            m.iter().any(|x| kind(x) == "NBIRTH")
                && m.iter()
                    .any(|x| kind(x) == "DBIRTH" && x["device"] == "churn")
        },
    );
    // Cores hand their histograms over on their first request after an interval ends, so
    // requests keep coming until a DDATA shows them.
    let mut c = b.client();
    let mut i = 0usize;
    wait_for(
        "a DDATA with the latency of the predictions",
        Duration::from_secs(30),
        || {
            let row: Vec<f32> = (0..WIDTH)
                .map(|k| ((i + k) % 7) as f32 * 0.3 - 1.0)
                .collect();
            predict(&mut c, &row);
            i += 1;
            host.messages()
                .iter()
                .any(|x| kind(x) == "DDATA" && x["device"] == "churn")
                .then_some(())
        },
    );
    let msgs = host.messages();
    let nbirth = msgs.iter().position(|x| kind(x) == "NBIRTH").unwrap();
    let session = &msgs[nbirth..];
    let nb = &session[0];
    assert_eq!(nb["seq"], 0, "{nb}");
    let bd = nb["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "bdSeq")
        .expect("bdSeq in NBIRTH");
    assert!(bd["value"].as_u64().is_some(), "{nb}");
    let dbirth = session
        .iter()
        .find(|x| kind(x) == "DBIRTH" && x["device"] == "churn")
        .unwrap();
    let declared: Vec<(String, u64)> = dbirth["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_owned(),
                x["alias"].as_u64().unwrap(),
            )
        })
        .collect();
    let alias = |name: &str| declared.iter().find(|(n, _)| n == name).unwrap().1;
    let mut expect = 0u64;
    let mut requests = 0u64;
    for m in session.iter().filter(|x| kind(x) != "NDEATH") {
        assert!(m.get("error").is_none(), "undecodable: {m}");
        assert_eq!(m["qos"], 0, "{m}");
        if kind(m) == "NBIRTH" {
            // The node's own NBIRTH may have arrived before the rebirth's: each starts at 0.
            expect = 0;
        }
        assert_eq!(m["seq"].as_u64(), Some(expect), "seq +1 mod 256: {m}");
        expect = (expect + 1) % 256;
        if kind(m) == "DDATA" {
            for x in m["metrics"].as_array().unwrap() {
                assert!(x["name"].is_null(), "DDATA by alias only: {m}");
                assert!(
                    declared.iter().any(|(_, a)| x["alias"] == *a),
                    "undeclared: {m}"
                );
                if x["alias"] == alias("latency/count") {
                    requests += x["value"].as_u64().unwrap();
                }
            }
        }
    }
    assert!(requests >= 1, "latency/count reached DDATA: {session:?}");
    // The JSON profile is untouched: its latency topic still validates.
    wait_for("a JSON latency message", Duration::from_secs(20), || {
        predict(&mut c, &[0.5; WIDTH]);
        (!b.payloads("latency").is_empty()).then_some(())
    });
}
