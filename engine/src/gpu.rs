//! GPU discovery through NVML, and the pure decision of whether a model runs on CUDA.
//!
//! Probing and deciding are split on purpose: [`probe_gpus`] talks to the driver,
//! [`plan_gpu`] is a pure function of a [`GpuProbe`], so the CUDA path can be tested
//! on machines without a GPU by handing it a probe that describes one.

use serde::Serialize;

use crate::{EngineError, ErrorKind, GpuPolicy};

/// Below this much free device memory a GPU is not worth a model: ORT's CUDA arena
/// alone reserves a few hundred MiB on first run.
pub const MIN_FREE_MEMORY_BYTES: u64 = 256 << 20;

/// At or above this temperature the GPU is throttling or about to; do not add load.
pub const MAX_TEMPERATURE_C: u32 = 90;

/// What NVML said about one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// Percent of the last sample period a kernel was running; `None` if NVML would not say.
    pub utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    /// Why this GPU is not usable, if it is not.
    pub problem: Option<String>,
}

impl GpuInfo {
    pub fn usable(&self) -> bool {
        self.problem.is_none()
    }
}

/// Everything the GPU probe found, or why it found nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuProbe {
    /// Whether NVML itself (libnvidia-ml and the driver) answered.
    pub nvml_available: bool,
    pub driver_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
    /// Set when NVML is absent or failed before listing GPUs.
    pub error: Option<String>,
}

impl GpuProbe {
    /// The usable GPU with the most free memory.
    pub fn best_usable(&self) -> Option<&GpuInfo> {
        self.gpus
            .iter()
            .filter(|g| g.usable())
            .max_by_key(|g| g.memory_free_bytes)
    }

    /// One line on why no GPU is usable (or `None` if one is).
    pub fn why_unusable(&self) -> Option<String> {
        if self.best_usable().is_some() {
            return None;
        }
        if let Some(e) = &self.error {
            return Some(e.clone());
        }
        if self.gpus.is_empty() {
            return Some("NVML reports no GPUs".to_string());
        }
        let problems: Vec<String> = self
            .gpus
            .iter()
            .map(|g| {
                format!(
                    "GPU {} ({}): {}",
                    g.index,
                    g.name,
                    g.problem.as_deref().unwrap_or("unusable")
                )
            })
            .collect();
        Some(problems.join("; "))
    }
}

/// Ask NVML about the GPUs. Never fails: an absent driver is a finding, not an error.
pub fn probe_gpus() -> GpuProbe {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => return nvml_absent(e),
    };
    let driver_version = nvml.sys_driver_version().ok();
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => {
            return GpuProbe {
                nvml_available: true,
                driver_version,
                gpus: Vec::new(),
                error: Some(format!("NVML could not count GPUs: {e}")),
            }
        }
    };
    let gpus = (0..count).map(|i| probe_one(&nvml, i)).collect();
    GpuProbe {
        nvml_available: true,
        driver_version,
        gpus,
        error: None,
    }
}

/// The finding when NVML itself does not answer (no driver, no libnvidia-ml.so).
fn nvml_absent(e: impl std::fmt::Display) -> GpuProbe {
    GpuProbe {
        nvml_available: false,
        driver_version: None,
        gpus: Vec::new(),
        error: Some(format!(
            "NVML unavailable (no NVIDIA driver or libnvidia-ml.so): {e}"
        )),
    }
}

fn probe_one(nvml: &nvml_wrapper::Nvml, index: u32) -> GpuInfo {
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;

    let mut info = GpuInfo {
        index,
        name: String::new(),
        memory_total_bytes: 0,
        memory_free_bytes: 0,
        utilization_percent: None,
        temperature_c: None,
        problem: None,
    };
    let device = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(e) => {
            info.problem = Some(format!("NVML cannot open it: {e}"));
            return info;
        }
    };
    info.name = device
        .name()
        .unwrap_or_else(|e| format!("<name unavailable: {e}>"));
    info.utilization_percent = device.utilization_rates().ok().map(|u| u.gpu);
    info.temperature_c = device.temperature(TemperatureSensor::Gpu).ok();
    match device.memory_info() {
        Ok(m) => {
            info.memory_total_bytes = m.total;
            info.memory_free_bytes = m.free;
        }
        Err(e) => info.problem = Some(format!("memory query failed: {e}")),
    }
    if info.problem.is_none() {
        info.problem = health_problem(&info);
    }
    info
}

/// Why a GPU that answered NVML should still not take a model.
pub fn health_problem(info: &GpuInfo) -> Option<String> {
    if info.memory_free_bytes < MIN_FREE_MEMORY_BYTES {
        return Some(format!(
            "only {} MiB free (need {} MiB)",
            info.memory_free_bytes >> 20,
            MIN_FREE_MEMORY_BYTES >> 20
        ));
    }
    match info.temperature_c {
        Some(t) if t >= MAX_TEMPERATURE_C => Some(format!("{t} °C (limit {MAX_TEMPERATURE_C} °C)")),
        _ => None,
    }
}

/// Where a model should try to run, decided from the policy and the probe alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuPlan {
    /// Register the CUDA provider on this device (the provider may still refuse).
    TryCuda { device: u32 },
    /// Run on CPU; `reason` is the fallback to report, `None` when the policy is `never`.
    Cpu { reason: Option<String> },
}

/// Decide from `policy` and `probe`; `Required` with no usable GPU refuses.
pub fn plan_gpu(policy: GpuPolicy, probe: &GpuProbe) -> Result<GpuPlan, EngineError> {
    if policy == GpuPolicy::Never {
        return Ok(GpuPlan::Cpu { reason: None });
    }
    if let Some(gpu) = probe.best_usable() {
        return Ok(GpuPlan::TryCuda { device: gpu.index });
    }
    let why = probe
        .why_unusable()
        .unwrap_or_else(|| "no usable GPU".to_string());
    match policy {
        GpuPolicy::Required => Err(EngineError::new(
            ErrorKind::GpuUnavailable,
            format!("gpu = \"required\" but no GPU is usable: {why}"),
        )),
        _ => Ok(GpuPlan::Cpu {
            reason: Some(format!("no usable GPU: {why}")),
        }),
    }
}

/// Settle a [`GpuPlan::TryCuda`] once the CUDA provider registration has been tried:
/// `Ok(None)` keeps CUDA, `Ok(Some(reason))` falls back to CPU, `Err` refuses (`Required`).
pub fn settle_cuda_registration(
    policy: GpuPolicy,
    registration: Result<(), String>,
) -> Result<Option<String>, EngineError> {
    match registration {
        Ok(()) => Ok(None),
        Err(e) if policy == GpuPolicy::Required => Err(EngineError::new(
            ErrorKind::GpuUnavailable,
            format!("gpu = \"required\" but the CUDA provider did not register: {e}"),
        )),
        Err(e) => Ok(Some(format!("CUDA provider did not register: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> GpuProbe {
        GpuProbe {
            nvml_available: true,
            driver_version: Some("550.54".into()),
            gpus: vec![GpuInfo {
                index: 0,
                name: "NVIDIA T4".into(),
                memory_total_bytes: 16 << 30,
                memory_free_bytes: 15 << 30,
                utilization_percent: Some(3),
                temperature_c: Some(41),
                problem: None,
            }],
            error: None,
        }
    }

    /// No usable GPU: "preferred" runs on CPU saying `why`, "required" refuses with it.
    fn assert_plans_cpu_because(probe: &GpuProbe, why: &str) {
        assert_eq!(
            plan_gpu(GpuPolicy::Preferred, probe).unwrap(),
            GpuPlan::Cpu {
                reason: Some(format!("no usable GPU: {why}"))
            }
        );
        let err = plan_gpu(GpuPolicy::Required, probe).unwrap_err();
        assert_eq!(err.kind, ErrorKind::GpuUnavailable);
        assert!(err.message.contains(why), "{err}");
    }

    #[test]
    fn absent_nvml_is_a_finding_with_a_reason() {
        let probe = nvml_absent("libnvidia-ml.so.1: cannot open shared object file");
        assert!(probe.gpus.is_empty());
        let why = probe.why_unusable().unwrap();
        assert_eq!(
            why,
            "NVML unavailable (no NVIDIA driver or libnvidia-ml.so): \
             libnvidia-ml.so.1: cannot open shared object file"
        );
        assert_plans_cpu_because(&probe, &why);
    }

    /// The real probe on whatever machine runs this: it must not fail or panic, and
    /// what it found must be self-consistent and planned accordingly (GPU or not).
    #[test]
    fn the_real_probe_is_consistent_with_its_plan() {
        let probe = probe_gpus();
        if !probe.nvml_available {
            assert!(probe.gpus.is_empty(), "{probe:?}");
            assert!(
                probe.error.as_deref().unwrap().contains("NVML unavailable"),
                "{probe:?}"
            );
        }
        for g in &probe.gpus {
            assert_eq!(g.usable(), g.problem.is_none(), "{g:?}");
            if g.problem.is_none() {
                assert!(g.memory_free_bytes >= MIN_FREE_MEMORY_BYTES, "{g:?}");
                assert!(g.memory_free_bytes <= g.memory_total_bytes, "{g:?}");
            }
        }
        match probe.best_usable() {
            Some(gpu) => {
                assert_eq!(probe.why_unusable(), None);
                for policy in [GpuPolicy::Preferred, GpuPolicy::Required] {
                    assert_eq!(
                        plan_gpu(policy, &probe).unwrap(),
                        GpuPlan::TryCuda { device: gpu.index }
                    );
                }
            }
            None => {
                let why = probe
                    .why_unusable()
                    .expect("a reason when no GPU is usable");
                assert_plans_cpu_because(&probe, &why);
            }
        }
        assert_eq!(
            plan_gpu(GpuPolicy::Never, &probe).unwrap(),
            GpuPlan::Cpu { reason: None }
        );
    }

    #[test]
    fn a_healthy_gpu_is_planned_for_cuda_unless_never() {
        let probe = healthy();
        assert_eq!(
            plan_gpu(GpuPolicy::Preferred, &probe).unwrap(),
            GpuPlan::TryCuda { device: 0 }
        );
        assert_eq!(
            plan_gpu(GpuPolicy::Required, &probe).unwrap(),
            GpuPlan::TryCuda { device: 0 }
        );
        assert_eq!(
            plan_gpu(GpuPolicy::Never, &probe).unwrap(),
            GpuPlan::Cpu { reason: None }
        );
    }

    #[test]
    fn the_gpu_with_most_free_memory_is_chosen_and_unhealthy_ones_skipped() {
        let mut probe = healthy();
        let mut second = probe.gpus[0].clone();
        second.index = 1;
        second.memory_free_bytes = 15 << 30;
        probe.gpus[0].memory_free_bytes = 2 << 30;
        let mut hot = second.clone();
        hot.index = 2;
        hot.memory_free_bytes = 16 << 30;
        hot.temperature_c = Some(95);
        hot.problem = health_problem(&hot);
        probe.gpus.push(second);
        probe.gpus.push(hot);
        assert_eq!(
            plan_gpu(GpuPolicy::Preferred, &probe).unwrap(),
            GpuPlan::TryCuda { device: 1 }
        );
    }

    #[test]
    fn a_full_or_hot_gpu_is_unusable_with_the_reason() {
        let mut probe = healthy();
        probe.gpus[0].memory_free_bytes = 100 << 20;
        probe.gpus[0].problem = health_problem(&probe.gpus[0]);
        let why = probe.why_unusable().unwrap();
        assert!(why.contains("only 100 MiB free"), "{why}");
        assert!(
            matches!(plan_gpu(GpuPolicy::Preferred, &probe).unwrap(), GpuPlan::Cpu { reason: Some(r) } if r.contains("100 MiB"))
        );

        let mut probe = healthy();
        probe.gpus[0].temperature_c = Some(91);
        probe.gpus[0].problem = health_problem(&probe.gpus[0]);
        assert!(probe.why_unusable().unwrap().contains("91 °C"));
        assert_eq!(
            plan_gpu(GpuPolicy::Required, &probe).unwrap_err().kind,
            ErrorKind::GpuUnavailable
        );
    }

    #[test]
    fn a_failed_registration_falls_back_or_refuses_by_policy() {
        assert_eq!(
            settle_cuda_registration(GpuPolicy::Preferred, Ok(())).unwrap(),
            None
        );
        let reason =
            settle_cuda_registration(GpuPolicy::Preferred, Err("libcudart.so.13 missing".into()))
                .unwrap()
                .unwrap();
        assert!(reason.contains("libcudart.so.13 missing"), "{reason}");
        let err =
            settle_cuda_registration(GpuPolicy::Required, Err("libcudart.so.13 missing".into()))
                .unwrap_err();
        assert_eq!(err.kind, ErrorKind::GpuUnavailable);
        assert!(err.message.contains("libcudart.so.13 missing"));
    }
}
