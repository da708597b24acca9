//! Predicted per-layer cost tables ([`LayerCostTable`]) for any batch list and clock list, from a
//! profile and a power model.
//!
//! - Time: the [`LatencyModel`] (t(f) = a + b·f_max/f per layer and measured batch, linear in the
//!   batch between measured batch sizes).
//! - Energy: predicted time × power predicted by the [`PowerModel`] for that time. This is what
//!   EALI's layer power prediction model is for: the scheduler plans over predicted power, not
//!   over the instrument's (or the simulator's) ground truth.
//! - Idle power per clock: the profile's idle measurements, linearly interpolated over the clock
//!   (held constant beyond the measured clocks).
//! - Per-batch overhead: the host→device copy of the input, batch × input bytes / PCIe bandwidth
//!   (default 12 GB/s, what PCIe 3.0 ×16 delivers in practice), plus a fixed launch/sync cost
//!   (default 20 µs).

use super::error::{PerfError, Result};
use super::features::LayerFeatures;
use super::latency::LatencyModel;
use super::power_model::PowerModel;
use super::profile::Profile;
use crate::eali::costs::LayerCostTable;

/// Constants of the per-batch overhead estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverheadModel {
    /// Effective host→device bandwidth (bytes/s).
    pub pcie_bytes_per_s: f64,
    /// Fixed cost per batch (s).
    pub fixed_s: f64,
}

impl Default for OverheadModel {
    fn default() -> Self {
        Self {
            pcie_bytes_per_s: 12e9,
            fixed_s: 20e-6,
        }
    }
}

impl OverheadModel {
    pub fn batch_overhead_s(&self, batch: u32, input_bytes_per_sample: u64) -> f64 {
        self.fixed_s + f64::from(batch) * input_bytes_per_sample as f64 / self.pcie_bytes_per_s
    }
}

/// Builds the predicted cost table with the default overhead model.
pub fn build_cost_table(
    profile: &Profile,
    power: &PowerModel,
    batches: &[u32],
    clocks_mhz: &[u32],
) -> Result<LayerCostTable> {
    build_cost_table_with(
        profile,
        power,
        batches,
        clocks_mhz,
        &OverheadModel::default(),
    )
}

/// Builds the predicted cost table for `batches` × `clocks_mhz` (each sorted and de-duplicated).
pub fn build_cost_table_with(
    profile: &Profile,
    power: &PowerModel,
    batches: &[u32],
    clocks_mhz: &[u32],
    overhead: &OverheadModel,
) -> Result<LayerCostTable> {
    if power.gpu() != profile.gpu.name {
        return Err(PerfError::InvalidInput(format!(
            "power model is for {}, profile is of {}",
            power.gpu(),
            profile.gpu.name
        )));
    }
    let batches = sorted_positive(batches, "batch sizes")?;
    let clocks = sorted_positive(clocks_mhz, "clocks")?;
    let latency = LatencyModel::from_profile(profile)?;
    let fmax = profile.gpu.max_clock_mhz;

    let n = profile.layers.len();
    let mut time_s = vec![vec![vec![0.0; clocks.len()]; batches.len()]; n];
    // One batched power prediction for the whole grid: far faster for tree ensembles.
    let mut queries = Vec::new();
    let mut slots = Vec::new();
    for (l, info) in profile.layers.iter().enumerate() {
        if !latency.is_measured(l) {
            continue;
        }
        for (bi, &b) in batches.iter().enumerate() {
            for (fi, &f) in clocks.iter().enumerate() {
                let t = latency.time_s(l, b, f);
                time_s[l][bi][fi] = t;
                queries.push(LayerFeatures {
                    kind: info.kind,
                    macs: info.macs(b),
                    flops: info.flops(b),
                    bytes: info.bytes(b),
                    batch: b,
                    clock_mhz: f,
                    max_clock_mhz: fmax,
                    time_s: t,
                });
                slots.push((l, bi, fi));
            }
        }
    }
    let watts = power.predict_many(&queries)?;
    let mut energy_j = vec![vec![vec![0.0; clocks.len()]; batches.len()]; n];
    for ((l, bi, fi), w) in slots.into_iter().zip(watts) {
        energy_j[l][bi][fi] = w * time_s[l][bi][fi];
    }

    Ok(LayerCostTable {
        model: profile.model.clone(),
        gpu: profile.gpu.name.clone(),
        layers: profile.layers.iter().map(|l| l.name.clone()).collect(),
        idle_power_w: clocks.iter().map(|&f| idle_power_at(profile, f)).collect(),
        batch_overhead_s: batches
            .iter()
            .map(|&b| overhead.batch_overhead_s(b, profile.input_bytes_per_sample))
            .collect(),
        batches,
        clocks_mhz: clocks,
        time_s,
        energy_j,
    })
}

fn sorted_positive(v: &[u32], what: &str) -> Result<Vec<u32>> {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.dedup();
    if s.is_empty() || s[0] == 0 {
        return Err(PerfError::InvalidInput(format!(
            "{what} must be a non-empty list of positive numbers"
        )));
    }
    Ok(s)
}

/// Idle power at `clock_mhz`, interpolated linearly between the profile's idle measurements.
pub fn idle_power_at(profile: &Profile, clock_mhz: u32) -> f64 {
    let mut pts: Vec<(f64, f64)> = profile
        .idle
        .iter()
        .map(|p| (f64::from(p.clock_mhz), p.power_w))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let f = f64::from(clock_mhz);
    match pts.as_slice() {
        [] => 0.0,
        [only] => only.1,
        [first, ..] if f <= first.0 => first.1,
        [.., last] if f >= last.0 => last.1,
        _ => {
            let i = pts.partition_point(|p| p.0 <= f);
            let ((f0, p0), (f1, p1)) = (pts[i - 1], pts[i]);
            p0 + (p1 - p0) * (f - f0) / (f1 - f0)
        }
    }
}

/// The cost table EALI's offline pipeline makes for a simulated GPU: profile every layer of
/// `graph` on a simulated GPU of `profile` (its own seed, so the measurements carry their own
/// noise), train the layer power model on that profile (the best of the default regressors by
/// 2-fold cross-validated RMSE, fitted on `threads` threads; the result does not depend on
/// them), and predict time and energy at `batches` × `clocks`. Two folds, not more: this runs at
/// every server start, the fits are most of its time, and on every zoo model and built-in GPU
/// of the bench's full suite they choose the regressor three folds chose (the suite's table is
/// the same). Predicted costs only: nothing
/// here reads the simulator's ground truth.
pub fn simulated(
    graph: &crate::model::Graph,
    profile: &crate::gpu::sim::GpuProfile,
    batches: &[u32],
    clocks: &[u32],
    threads: usize,
) -> Result<LayerCostTable> {
    use super::profiler;
    let gpu = crate::exec::SimDevice::new(
        crate::gpu::sim::SimGpu::new(profile.clone(), 1, 0x9f0f11e),
        crate::exec::DeviceClock::Virtual,
    );
    let mut exec = crate::exec::SimExecutor::new(gpu.clone(), std::sync::Arc::new(graph.clone()));
    let cfg = profiler::ProfileConfig {
        batches: batches.to_vec(),
        clocks: profiler::ClockSelection::List(clocks.to_vec()),
        backend: format!("sim:{}", profile.name()),
        ..profiler::ProfileConfig::default()
    };
    let prof = profiler::profile(&mut gpu.clone(), &mut exec, graph, &cfg, &mut |_| {})?;
    from_profile(&prof, None, batches, clocks, threads)
}

/// The cost table of a profile (simulated, or measured on a GPU by `eali profile`) at `batches`
/// × `clocks`, predicted by `power` where given (it must be of the profile's GPU), else by a
/// power model trained on the profile itself at once: the best of the default regressors by
/// 2-fold cross-validated RMSE on `threads` threads, as [`simulated`] does.
pub fn from_profile(
    profile: &Profile,
    power: Option<&PowerModel>,
    batches: &[u32],
    clocks: &[u32],
    threads: usize,
) -> Result<LayerCostTable> {
    if let Some(model) = power {
        return build_cost_table(profile, model, batches, clocks);
    }
    let fit_cfg = super::fit::FitConfig {
        folds: 2,
        leave_one_model_out: false,
        threads,
        ..super::fit::FitConfig::default()
    };
    let (model, _) = super::fit::fit_power_model(std::slice::from_ref(profile), &fit_cfg)?;
    build_cost_table(profile, &model, batches, clocks)
}
