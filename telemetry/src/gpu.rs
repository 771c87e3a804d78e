//! GPU health: readings from NVML (utilisation, memory, temperature, power, throttle
//! reasons, uncorrected ECC errors where the GPU counts them), and the pure decision of
//! whether the engine should leave the GPU for the CPU or come back, with hysteresis so a
//! GPU hovering at a limit does not flap. The decision is tested with fake readings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One GPU at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuReading {
    pub index: u32,
    pub name: String,
    pub utilization_pct: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    /// NVML's current clock-throttle reasons, by name; empty = none.
    pub throttle_reasons: Vec<String>,
    /// Volatile uncorrected ECC errors; `None` where the GPU has no ECC.
    pub ecc_uncorrected: Option<u64>,
}

/// What NVML answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GpuSample {
    /// NVML (or the driver) is not there: publish "no GPU" once.
    NoNvml { reason: String },
    /// NVML answered; `gpus` may be empty (GPU lost).
    Gpus(Vec<GpuReading>),
}

/// Reads every GPU through NVML. Never panics; a missing library is `NoNvml`.
pub fn read_gpus() -> GpuSample {
    use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            return GpuSample::NoNvml {
                reason: format!("NVML unavailable: {e}"),
            }
        }
    };
    let n = nvml.device_count().unwrap_or(0);
    let mut out = Vec::new();
    for index in 0..n {
        let Ok(d) = nvml.device_by_index(index) else {
            continue;
        };
        let mem = d.memory_info().ok();
        out.push(GpuReading {
            index,
            name: d.name().unwrap_or_default(),
            utilization_pct: d.utilization_rates().ok().map(|u| u.gpu),
            memory_used_bytes: mem.as_ref().map(|m| m.used),
            memory_total_bytes: mem.as_ref().map(|m| m.total),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
            power_w: d.power_usage().ok().map(|mw| mw as f64 / 1000.0),
            throttle_reasons: d
                .current_throttle_reasons()
                .map(|r| {
                    r.iter_names()
                        .map(|(name, _)| name.to_lowercase())
                        .filter(|n| n != "gpu_idle" && n != "none")
                        .collect()
                })
                .unwrap_or_default(),
            ecc_uncorrected: d
                .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                .ok(),
        });
    }
    GpuSample::Gpus(out)
}

/// Where readings come from: NVML, or a file standing in for it.
pub trait GpuSource: Send {
    fn read(&mut self) -> GpuSample;
}

/// The real GPUs, through NVML.
#[derive(Debug, Default)]
pub struct NvmlSource;

impl GpuSource for NvmlSource {
    fn read(&mut self) -> GpuSample {
        read_gpus()
    }
}

/// A fake NVML: each reading is the JSON [`GpuSample`] in a file, re-read every time
/// (`telemetry.gpu_readings_file`), so a test or a drill can make a GPU overheat, get lost
/// or recover. An unreadable file reads as a lost GPU, as a dead driver would.
#[derive(Debug)]
pub struct FileSource(pub PathBuf);

impl GpuSource for FileSource {
    fn read(&mut self) -> GpuSample {
        match std::fs::read(&self.0)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("GPU readings file {}: {e}", self.0.display());
                GpuSample::Gpus(Vec::new())
            }
        }
    }
}

/// Limits and hysteresis of the failover decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthPolicy {
    /// At or above: unhealthy (overheating).
    pub max_temperature_c: u32,
    /// Must be at or below to count as healthy again.
    pub recover_temperature_c: u32,
    /// Consecutive healthy readings needed before going back to the GPU.
    pub healthy_readings_to_recover: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            max_temperature_c: 90,
            recover_temperature_c: 80,
            healthy_readings_to_recover: 3,
        }
    }
}

/// Where the engine should run now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GpuHealth {
    Healthy,
    /// On CPU; `healthy_streak` counts toward recovery.
    Unhealthy {
        reason: String,
        healthy_streak: u32,
    },
}

/// A change the daemon acts on (fail over / come back) and publishes as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    FailOver { reason: String },
    Recover,
}

/// Why this reading is unhealthy, judged by `temperature_limit`.
fn problem(s: &GpuSample, ecc_before: Option<u64>, temperature_limit: u32) -> Option<String> {
    match s {
        GpuSample::NoNvml { reason } => Some(format!("GPU lost: {reason}")),
        GpuSample::Gpus(g) if g.is_empty() => Some("GPU lost: NVML lists no GPU".into()),
        GpuSample::Gpus(g) => {
            let r = &g[0];
            if let Some(t) = r.temperature_c.filter(|&t| t >= temperature_limit) {
                return Some(format!(
                    "GPU {} at {t} °C (limit {temperature_limit} °C)",
                    r.index
                ));
            }
            match (r.ecc_uncorrected, ecc_before) {
                (Some(now), Some(before)) if now > before => Some(format!(
                    "GPU {}: {} new uncorrected ECC errors",
                    r.index,
                    now - before
                )),
                _ => None,
            }
        }
    }
}

/// The decision, with no IO: next state and the transition, if any. `ecc_before` is the
/// previous reading's uncorrected ECC count (new errors are what count).
pub fn decide(
    state: &GpuHealth,
    s: &GpuSample,
    ecc_before: Option<u64>,
    p: &HealthPolicy,
) -> (GpuHealth, Option<Transition>) {
    match state {
        GpuHealth::Healthy => match problem(s, ecc_before, p.max_temperature_c) {
            Some(reason) => (
                GpuHealth::Unhealthy {
                    reason: reason.clone(),
                    healthy_streak: 0,
                },
                Some(Transition::FailOver { reason }),
            ),
            None => (GpuHealth::Healthy, None),
        },
        GpuHealth::Unhealthy {
            reason,
            healthy_streak,
        } => {
            // Coming back needs the stricter recovery temperature, several times in a row.
            match problem(s, ecc_before, p.recover_temperature_c + 1) {
                Some(_) => (
                    GpuHealth::Unhealthy {
                        reason: reason.clone(),
                        healthy_streak: 0,
                    },
                    None,
                ),
                None if healthy_streak + 1 >= p.healthy_readings_to_recover => {
                    (GpuHealth::Healthy, Some(Transition::Recover))
                }
                None => (
                    GpuHealth::Unhealthy {
                        reason: reason.clone(),
                        healthy_streak: healthy_streak + 1,
                    },
                    None,
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: u32, ecc: Option<u64>) -> GpuSample {
        GpuSample::Gpus(vec![GpuReading {
            index: 0,
            name: "fake".into(),
            utilization_pct: Some(50),
            memory_used_bytes: Some(1 << 30),
            memory_total_bytes: Some(8 << 30),
            temperature_c: Some(t),
            power_w: Some(100.0),
            throttle_reasons: vec![],
            ecc_uncorrected: ecc,
        }])
    }

    fn run(readings: &[GpuSample]) -> Vec<Option<Transition>> {
        let p = HealthPolicy::default();
        let mut st = GpuHealth::Healthy;
        let mut ecc = None;
        readings
            .iter()
            .map(|r| {
                let (n, t) = decide(&st, r, ecc, &p);
                st = n;
                if let GpuSample::Gpus(g) = r {
                    ecc = g.first().and_then(|g| g.ecc_uncorrected);
                }
                t
            })
            .collect()
    }

    #[test]
    fn overheating_fails_over_and_recovery_needs_hysteresis() {
        let t = run(&[
            at(70, None),
            at(91, None),
            at(85, None),
            at(79, None),
            at(79, None),
            at(86, None),
            at(79, None),
            at(78, None),
            at(77, None),
            at(88, None),
        ]);
        assert!(matches!(t[1], Some(Transition::FailOver { .. })), "{t:?}");
        // 85 is under the limit but above the recovery bound; 86 resets the streak.
        assert_eq!(t.iter().filter(|x| x.is_some()).count(), 2, "{t:?}");
        assert_eq!(t[8], Some(Transition::Recover), "{t:?}");
        assert_eq!(t[9], None, "88 °C is healthy again (below 90)");
    }

    #[test]
    fn a_readings_file_stands_in_for_nvml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu.json");
        let mut src = FileSource(path.clone());
        assert_eq!(
            src.read(),
            GpuSample::Gpus(vec![]),
            "missing file = GPU lost"
        );
        std::fs::write(&path, serde_json::to_vec(&at(95, Some(1))).unwrap()).unwrap();
        assert_eq!(src.read(), at(95, Some(1)));
        std::fs::write(&path, br#"{"NoNvml": {"reason": "driver gone"}}"#).unwrap();
        assert!(matches!(src.read(), GpuSample::NoNvml { reason } if reason == "driver gone"));
    }

    #[test]
    fn lost_gpu_and_new_ecc_errors_are_unhealthy() {
        let t = run(&[at(60, Some(0)), GpuSample::Gpus(vec![])]);
        assert!(matches!(&t[1], Some(Transition::FailOver { reason }) if reason.contains("lost")));
        let t = run(&[at(60, Some(2)), at(60, Some(2)), at(60, Some(3))]);
        assert_eq!(t[1], None, "old errors do not count");
        assert!(matches!(&t[2], Some(Transition::FailOver { reason }) if reason.contains("ECC")));
        let t = run(&[GpuSample::NoNvml { reason: "x".into() }]);
        assert!(matches!(t[0], Some(Transition::FailOver { .. })));
    }
}
