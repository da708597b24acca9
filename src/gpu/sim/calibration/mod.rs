//! Calibration checks: the simulated GPU against published measurements (`docs/architecture.md`,
//! "Calibration"). Shared by `tests/calibration.rs` and `eali calibrate`, so both print the same
//! table.
//!
//! Each check measures the simulator the way the publication measured the real GPU (power limits
//! and the energy counter for Zeus, a clock sweep for Tang et al., clock polling for the switch
//! latency tool), never through the physics functions directly.

use std::fmt::Write as _;

use serde::Serialize;

use super::device::SimGpu;
use super::profile::ProfileError;
use super::span::SpanCost;
use crate::gpu::{GpuBackend, GpuError, LayerWork};
use crate::model::{ModelError, zoo};

mod behaviour;
mod measured;
mod published;

pub use behaviour::{b200_switch_latency, determinism, energy_counter, switch_latency};
pub use measured::{
    ModelRun, PowerFit, fit_h100_power, h100_idle_power_w, h100_measured_power, h100_runs,
};
pub use published::{idle_power, layer_clock_scaling, tang_best_clock, zeus_power_limit_sweep};

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A recorded measurement that cannot be read or explained.
    #[error("measurement: {0}")]
    Measurement(String),
}

/// How close the simulated figure must be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Tolerance {
    /// |sim − pub| ≤ r·|pub|.
    Relative(f64),
    /// |sim − pub| ≤ a.
    Absolute(f64),
    /// lo ≤ sim ≤ hi (a published range, or a published bound).
    Within(f64, f64),
}

impl Tolerance {
    fn accepts(self, published: f64, simulated: f64) -> bool {
        match self {
            Tolerance::Relative(r) => (simulated - published).abs() <= r * published.abs(),
            Tolerance::Absolute(a) => (simulated - published).abs() <= a,
            Tolerance::Within(lo, hi) => (lo..=hi).contains(&simulated),
        }
    }

    fn describe(self, unit: &str) -> String {
        match self {
            Tolerance::Relative(r) => format!("±{:.0} %", r * 100.0),
            Tolerance::Absolute(a) => format!("±{} {unit}", fmt_num(a)),
            Tolerance::Within(lo, hi) => format!("in [{}, {}]", fmt_num(lo), fmt_num(hi)),
        }
    }
}

/// One published figure next to the simulator's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationCheck {
    pub name: String,
    /// Where the published figure comes from.
    pub source: &'static str,
    pub published: f64,
    pub simulated: f64,
    pub unit: &'static str,
    pub tolerance: Tolerance,
    pub pass: bool,
}

impl CalibrationCheck {
    pub fn new(
        name: impl Into<String>,
        source: &'static str,
        published: f64,
        simulated: f64,
        unit: &'static str,
        tolerance: Tolerance,
    ) -> Self {
        Self {
            name: name.into(),
            source,
            published,
            simulated,
            unit,
            tolerance,
            pass: tolerance.accepts(published, simulated),
        }
    }
}

fn fmt_num(x: f64) -> String {
    if x == 0.0 || (x.abs() >= 0.01 && x.abs() < 1e6) {
        let s = format!("{x:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{x:.3e}")
    }
}

/// A fixed-width table of checks (what `eali calibrate` and the tests print).
pub fn format_table(checks: &[CalibrationCheck]) -> String {
    let w = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(4)
        .max(5);
    let mut out = format!(
        "{:<w$}  {:>12}  {:>12}  {:<6} {:<20} {:<4}  source\n",
        "check", "published", "simulated", "unit", "tolerance", "ok"
    );
    for c in checks {
        let _ = writeln!(
            out,
            "{:<w$}  {:>12}  {:>12}  {:<6} {:<20} {:<4}  {}",
            c.name,
            fmt_num(c.published),
            fmt_num(c.simulated),
            c.unit,
            c.tolerance.describe(c.unit),
            if c.pass { "pass" } else { "FAIL" },
            c.source
        );
    }
    out
}

/// Seed of every calibration run (the checks must pass for the documented seed, and the
/// determinism check shows the figures depend on it only through the noise).
pub const SEED: u64 = 2022;

/// ResNet-50 (torchvision) at a batch size, layer by layer, from the model zoo.
pub fn resnet50(batch: u32) -> Result<Vec<LayerWork>, CalibrationError> {
    let g = zoo::build("resnet50")?;
    Ok((0..g.layers.len())
        .map(|id| g.layer_work(id, batch))
        .collect())
}

/// Every check, in the order of the table.
pub fn run_all() -> Result<Vec<CalibrationCheck>, CalibrationError> {
    let mut all = Vec::new();
    all.extend(zeus_power_limit_sweep()?);
    all.extend(tang_best_clock()?);
    all.extend(idle_power()?);
    all.extend(h100_measured_power()?);
    all.extend(layer_clock_scaling()?);
    all.extend(switch_latency()?);
    all.extend(b200_switch_latency()?);
    all.extend(energy_counter()?);
    all.extend(determinism()?);
    Ok(all)
}

/// Energy (J) and time (s) of `n` back-to-back runs of `span`, measured like Zeus does: time by
/// the device clock, energy by the NVML energy counter.
pub(crate) fn measure(
    gpu: &mut SimGpu,
    span: &SpanCost,
    n: u32,
) -> Result<(f64, f64), CalibrationError> {
    // One run first so the power controller and clocks are in their steady state.
    gpu.run_span(span)?;
    let (t0, e0) = (gpu.now_s(), gpu.energy_mj()?);
    for _ in 0..n {
        gpu.run_span(span)?;
    }
    let (t1, e1) = (gpu.now_s(), gpu.energy_mj()?);
    Ok((t1 - t0, (e1 - e0) as f64 * 1e-3))
}
