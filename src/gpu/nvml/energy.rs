//! Where power and energy readings come from on a real GPU, and the fallback when the energy
//! counter is missing or does not advance: integrating power over time.

use std::time::Instant;

use serde::Serialize;

use crate::gpu::PowerSemantics;

/// Where [`crate::gpu::GpuBackend::power`] reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerSource {
    /// `NVML_FI_DEV_POWER_INSTANT` through `nvmlDeviceGetFieldValues`: instantaneous everywhere.
    InstantField,
    /// `nvmlDeviceGetPowerUsage`, with its per-generation meaning.
    PowerUsage(PowerSemantics),
}

/// Where [`crate::gpu::GpuBackend::energy_mj`] reads from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergySource {
    /// `nvmlDeviceGetTotalEnergyConsumption`, checked to advance when the GPU was opened.
    Counter,
    /// Power integrated over the times it was read (trapezoids between readings): as good as
    /// the polling is frequent. `reason` says why the counter is not used.
    IntegratedPower { reason: String },
}

/// The `nvmlDeviceGetPowerUsage` meaning for a GPU: a 1 s average on Ampere except GA100 and on
/// newer parts, instantaneous on GA100 and older (NVML API 13 `nvml.h`; `docs/architecture.md`,
/// "NVML by generation").
pub fn power_usage_semantics(arch: crate::gpu::Architecture, name: &str) -> PowerSemantics {
    let ga100 = name.contains("A100") || name.contains("A30");
    if arch >= crate::gpu::Architecture::Ampere && !ga100 {
        PowerSemantics::Averaged1s
    } else {
        PowerSemantics::Instantaneous
    }
}

/// Trapezoidal integral of power readings.
#[derive(Debug, Default)]
pub(crate) struct Integrator {
    last: Option<(Instant, f64)>,
    total_j: f64,
}

impl Integrator {
    /// Adds a reading of `watts` taken at `at`; returns the energy so far (J).
    pub(crate) fn add(&mut self, at: Instant, watts: f64) -> f64 {
        if let Some((t0, w0)) = self.last {
            let dt = at.saturating_duration_since(t0).as_secs_f64();
            self.total_j += 0.5 * (w0 + watts) * dt;
        }
        self.last = Some((at, watts));
        self.total_j
    }

    pub(crate) fn total_j(&self) -> f64 {
        self.total_j
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gpu::Architecture;

    #[test]
    fn integrates_trapezoids() {
        let t0 = Instant::now();
        let mut i = Integrator::default();
        assert_eq!(i.add(t0, 100.0), 0.0);
        let e = i.add(t0 + Duration::from_secs(2), 200.0);
        assert!((e - 300.0).abs() < 1e-9, "{e}");
        // A reading out of order adds nothing rather than subtracting.
        let e2 = i.add(t0 + Duration::from_secs(1), 200.0);
        assert!((e2 - 300.0).abs() < 1e-9);
    }

    #[test]
    fn power_usage_meaning_by_generation() {
        use PowerSemantics::*;
        assert_eq!(
            power_usage_semantics(Architecture::Volta, "Tesla V100-SXM2-32GB"),
            Instantaneous
        );
        assert_eq!(
            power_usage_semantics(Architecture::Ampere, "NVIDIA A100-SXM4-40GB"),
            Instantaneous
        );
        assert_eq!(
            power_usage_semantics(Architecture::Ampere, "NVIDIA A10"),
            Averaged1s
        );
        assert_eq!(
            power_usage_semantics(Architecture::Hopper, "NVIDIA H100 80GB HBM3"),
            Averaged1s
        );
    }
}
