//! GPU health through the daemon, with a fake NVML (`telemetry.gpu_readings_file`): an
//! overheating GPU raises `gpu_unhealthy` and the `gpu` topic reports the engine on CPU;
//! it comes back only after three healthy readings (hysteresis), with `gpu_recovered`; the
//! daemon serves throughout. (This box has no GPU, so no version runs on `ort-cuda` and
//! the failover reloads nothing: what moves a CUDA version is not exercised here.)

mod telemetry_support;

use std::time::Duration;

use edgeinfer_telemetry::ModelMonitoring;
use telemetry_support::*;

fn reading(temperature_c: u32) -> String {
    serde_json::json!({"Gpus": [{
        "index": 0, "name": "fake", "utilization_pct": 40,
        "memory_used_bytes": 1u64 << 30, "memory_total_bytes": 8u64 << 30,
        "temperature_c": temperature_c, "power_w": 120.0,
        "throttle_reasons": [], "ecc_uncorrected": 0
    }]})
    .to_string()
}

#[test]
fn an_overheating_gpu_fails_over_and_recovers_after_three_healthy_readings() {
    watchdog("telemetry_gpu", 240);
    let gpu_dir = tempfile::tempdir().unwrap();
    let gpu_file = gpu_dir.path().join("gpu.json");
    std::fs::write(&gpu_file, reading(60)).unwrap();
    let b = start(
        &ModelMonitoring::default(),
        &format!(
            "interval_s = 1\ngpu_readings_file = \"{}\"",
            gpu_file.display()
        ),
    );
    let mut c = b.client();
    let engines = |b: &Box1| -> Vec<String> {
        b.payloads("gpu")
            .iter()
            .map(|g| g["engine"].as_str().unwrap().to_owned())
            .collect()
    };
    let events = |b: &Box1, ty: &str| -> usize {
        b.payloads("events")
            .iter()
            .filter(|e| e["type"] == ty)
            .count()
    };
    wait_for("a healthy gpu reading", Duration::from_secs(30), || {
        (engines(&b).last().map(String::as_str) == Some("gpu")).then_some(())
    });

    std::fs::write(&gpu_file, reading(95)).unwrap();
    wait_for("gpu_unhealthy", Duration::from_secs(30), || {
        (events(&b, "gpu_unhealthy") == 1).then_some(())
    });
    let unhealthy = b
        .payloads("events")
        .into_iter()
        .find(|e| e["type"] == "gpu_unhealthy")
        .unwrap();
    assert!(
        unhealthy["reason"].as_str().unwrap().contains("95"),
        "{unhealthy}"
    );
    predict(&mut c, &[0.5; WIDTH]);

    // 85 °C is under the limit but above the recovery bound: still on CPU.
    std::fs::write(&gpu_file, reading(85)).unwrap();
    let seen = engines(&b).len();
    wait_for("readings at 85 °C", Duration::from_secs(30), || {
        (engines(&b).len() >= seen + 3).then_some(())
    });
    assert_eq!(events(&b, "gpu_recovered"), 0);
    assert_eq!(engines(&b).last().unwrap(), "cpu");

    std::fs::write(&gpu_file, reading(70)).unwrap();
    let seen = engines(&b).len();
    wait_for("gpu_recovered", Duration::from_secs(30), || {
        (events(&b, "gpu_recovered") == 1).then_some(())
    });
    let after = &engines(&b)[seen..];
    assert!(
        after.len() >= 3 && after[..2].iter().all(|e| e == "cpu"),
        "two healthy readings are not enough: {after:?}"
    );
    assert_eq!(events(&b, "gpu_unhealthy"), 1, "no flapping");
    let (resp, _) = predict(&mut c, &[0.5; WIDTH]);
    assert_eq!(resp.model, "churn");
}
