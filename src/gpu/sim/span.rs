//! Precomputed cost of a sequence of layers (a "span": an optimization unit, a whole batch), so
//! the discrete-event simulator can run one in O(1) whatever its length.

use serde::{Deserialize, Serialize};

use super::physics::{PowerCurve, WorkParts};
use super::profile::GpuProfile;
use crate::gpu::LayerWork;

/// Time and energy of a fixed sequence of layers on one GPU profile.
///
/// The summed [`WorkParts`] give the exact cost at *any* clock in O(1) (the physics is linear in
/// them); the table at the clocks of interest is there for callers that want plain numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanCost {
    profile: String,
    parts: WorkParts,
    curve: PowerCurve,
    clocks_mhz: Vec<u32>,
    time_s: Vec<f64>,
    energy_j: Vec<f64>,
}

impl SpanCost {
    /// Cost of running `layers` back to back, tabulated at `clocks_mhz` (kept in the given order).
    pub fn from_layers(profile: &GpuProfile, layers: &[LayerWork], clocks_mhz: &[u32]) -> Self {
        Self::from_parts(profile, profile.physics().parts_of(layers), clocks_mhz)
    }

    pub fn from_parts(profile: &GpuProfile, parts: WorkParts, clocks_mhz: &[u32]) -> Self {
        let curve = profile.physics().curve;
        let (time_s, energy_j) = clocks_mhz
            .iter()
            .map(|&f| curve.time_energy(&parts, curve.x(f64::from(f))))
            .unzip();
        Self {
            profile: profile.name().to_string(),
            parts,
            curve,
            clocks_mhz: clocks_mhz.to_vec(),
            time_s,
            energy_j,
        }
    }

    /// The span followed by `other` (same profile, tabulated at this span's clocks).
    pub fn then(&self, other: &SpanCost) -> SpanCost {
        debug_assert_eq!(self.profile, other.profile, "spans from different profiles");
        let parts = self.parts + other.parts;
        let curve = self.curve;
        let (time_s, energy_j) = self
            .clocks_mhz
            .iter()
            .map(|&f| curve.time_energy(&parts, curve.x(f64::from(f))))
            .unzip();
        SpanCost {
            profile: self.profile.clone(),
            parts,
            curve,
            clocks_mhz: self.clocks_mhz.clone(),
            time_s,
            energy_j,
        }
    }

    pub fn profile_name(&self) -> &str {
        &self.profile
    }
    pub fn parts(&self) -> &WorkParts {
        &self.parts
    }
    pub fn clocks_mhz(&self) -> &[u32] {
        &self.clocks_mhz
    }
    /// Noise-free time at each clock of [`Self::clocks_mhz`] (s).
    pub fn table_time_s(&self) -> &[f64] {
        &self.time_s
    }
    /// Noise-free board energy at each clock of [`Self::clocks_mhz`] (J).
    pub fn table_energy_j(&self) -> &[f64] {
        &self.energy_j
    }

    /// Noise-free time at any clock (s), no power cap.
    pub fn time_s(&self, f_mhz: u32) -> f64 {
        self.curve
            .time_s(&self.parts, self.curve.x(f64::from(f_mhz)))
    }

    /// Noise-free board energy at any clock (J), no power cap.
    pub fn energy_j(&self, f_mhz: u32) -> f64 {
        self.curve
            .time_energy(&self.parts, self.curve.x(f64::from(f_mhz)))
            .1
    }

    /// Average board power at any clock (W), no power cap.
    pub fn power_w(&self, f_mhz: u32) -> f64 {
        let (t, e) = self
            .curve
            .time_energy(&self.parts, self.curve.x(f64::from(f_mhz)));
        if t > 0.0 { e / t } else { 0.0 }
    }
}

/// What running a span did on the simulated GPU.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpanRun {
    /// Device time the span started (s).
    pub start_s: f64,
    /// Device time the span finished (s).
    pub end_s: f64,
    /// Ground-truth board energy over the span (J).
    pub energy_j: f64,
    /// Effective graphics clock when the span started and when it ended (MHz, after any cap).
    pub clock_start_mhz: u32,
    pub clock_end_mhz: u32,
    /// Whether the power cap lowered the clock for any part of the span.
    pub power_capped: bool,
    /// Clock changes that took effect while the span ran.
    pub transitions: u32,
}

impl SpanRun {
    pub fn duration_s(&self) -> f64 {
        self.end_s - self.start_s
    }
}
