//! Clock-switch latency as the planner sees it: what a set-clock call costs in time and energy,
//! and how far ahead of a unit boundary it must be issued.

use serde::{Deserialize, Serialize};

/// Measured latency of a graphics-clock change (from issuing the call until the new clock is in
/// force), e.g. from the agent's start-up measurement or a GPU profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SwitchLatency {
    /// Median time the set-clock call blocks its caller (s).
    pub call_median_s: f64,
    /// Median total latency: call + settle until the new clock is in force (s).
    pub total_median_s: f64,
    /// 95th percentile of the total latency (s).
    pub total_p95_s: f64,
}

impl SwitchLatency {
    /// V100-class figures (`docs/architecture.md`, "Switch latency"): call p50 ≈ 4.5 ms, total
    /// p50 ≈ 25 ms, p95 ≈ 32 ms.
    pub fn v100_like() -> Self {
        Self {
            call_median_s: 0.0045,
            total_median_s: 0.025,
            total_p95_s: 0.032,
        }
    }

    /// A switch that costs nothing (for tests and for hypothetical instant DVFS).
    pub fn zero() -> Self {
        Self {
            call_median_s: 0.0,
            total_median_s: 0.0,
            total_p95_s: 0.0,
        }
    }
}

/// What the planner charges for one clock change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SwitchCost {
    /// Time reserved in the batch's execution-time budget for each change (s). Conservative: the
    /// p95 of the total latency, covering a change that lands late and runs part of a unit at the
    /// old clock.
    pub reserve_s: f64,
    /// How far ahead of a unit boundary the set-call is issued so that the clock is in force when
    /// the unit starts (s): the median call + settle latency.
    pub lead_s: f64,
}

impl SwitchCost {
    /// The planner's default reading of a measured latency: reserve the p95, lead by the median.
    pub fn from_latency(lat: &SwitchLatency) -> Self {
        Self {
            reserve_s: lat.total_p95_s.max(0.0),
            lead_s: lat.total_median_s.max(0.0),
        }
    }

    /// A less conservative reading for executors that really issue each change `lead_s` ahead
    /// (the GPU keeps running at the old clock until the new one lands): a change then lands
    /// within its latency jitter of the boundary, so only the jitter (p95 − median) is reserved.
    pub fn pre_issued(lat: &SwitchLatency) -> Self {
        Self {
            reserve_s: (lat.total_p95_s - lat.total_median_s).max(0.0),
            lead_s: lat.total_median_s.max(0.0),
        }
    }
}

/// Measures the clock-switch latency the way the agent does at start-up: `changes` locked-clock
/// changes alternating between f_max and a mid clock, each timed from the call until the new
/// clock is in force, with the GPU idling in between. Clocks are reset afterwards (never leave a
/// GPU locked). Works on any backend; on the simulated GPU it runs in virtual time.
pub fn measure_latency<G>(
    gpu: &mut G,
    changes: usize,
) -> Result<SwitchLatency, crate::gpu::GpuError>
where
    G: crate::gpu::GpuBackend + crate::gpu::LayerExecutor + ?Sized,
{
    let memory = gpu
        .supported_memory_clocks()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let mut clocks = gpu.supported_graphics_clocks(memory)?;
    clocks.sort_unstable();
    let (Some(&hi), Some(&mid)) = (clocks.last(), clocks.get(clocks.len() / 2)) else {
        return Err(crate::gpu::GpuError::Other(
            "GPU reports no graphics clocks".into(),
        ));
    };
    let (mut calls, mut totals) = (Vec::with_capacity(changes), Vec::with_capacity(changes));
    let mut result = Ok(());
    for i in 0..changes.max(2) {
        let target = if i % 2 == 0 { mid } else { hi };
        let t0 = gpu.now_s();
        match gpu.set_locked_clocks(target, target) {
            Ok(change) => {
                calls.push(change.call_latency_s);
                totals.push((change.effective_at_s - t0).max(change.call_latency_s));
                // Let the change land (and some more) before the next one.
                let wait = (change.effective_at_s - gpu.now_s()).max(0.0) + 0.01;
                if let Err(e) = gpu.idle(wait) {
                    result = Err(e);
                    break;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let reset = gpu.reset_locked_clocks();
    result?;
    reset?;
    if totals.is_empty() {
        return Err(crate::gpu::GpuError::InvalidArgument(
            "no switch-latency samples".into(),
        ));
    }
    let q = |v: &mut Vec<f64>, p: f64| crate::stats::percentile(v, p);
    Ok(SwitchLatency {
        call_median_s: q(&mut calls, 0.5),
        total_median_s: q(&mut totals, 0.5),
        total_p95_s: q(&mut totals, 0.95),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim::{GpuProfile, SimGpu};
    use crate::gpu::{GpuBackend, LayerExecutor};

    #[test]
    fn measures_the_simulated_v100_switch() {
        let profile = GpuProfile::load("v100-sxm2").unwrap();
        let mut gpu = SimGpu::new(profile, 0, 7);
        let lat = measure_latency(&mut gpu, 60).unwrap();
        // The DVFS latency tool's V100 reports (`docs/architecture.md`, "Switch latency"): call
        // p50 4.1–5.2 ms, total p50 24.5–25.3 ms, p99 32–37 ms.
        assert!(
            lat.call_median_s > 0.003 && lat.call_median_s < 0.007,
            "{lat:?}"
        );
        assert!(
            lat.total_median_s > 0.020 && lat.total_median_s < 0.030,
            "{lat:?}"
        );
        assert!(
            lat.total_p95_s >= lat.total_median_s && lat.total_p95_s < 0.045,
            "{lat:?}"
        );
        // Left unlocked once the reset has landed.
        gpu.idle(0.1).unwrap();
        assert_eq!(gpu.clocks().unwrap().locked, None);
        let cost = SwitchCost::from_latency(&lat);
        assert_eq!(
            (cost.reserve_s, cost.lead_s),
            (lat.total_p95_s, lat.total_median_s)
        );
        let pre = SwitchCost::pre_issued(&lat);
        assert_eq!(pre.lead_s, cost.lead_s);
        assert!(pre.reserve_s < cost.reserve_s && pre.reserve_s >= 0.0);
    }
}
