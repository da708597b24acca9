//! GPU profiles: the data files under `profiles/gpus/` (embedded in the binary) that describe one
//! GPU model to the simulator: clock table, voltage/frequency curve, power constants, roofline
//! figures, switch latency, energy counter and power-reading semantics.
//!
//! Every number in a profile file carries a provenance label in a comment: `[src x]` (read in
//! source x of `docs/architecture.md`, "Sources"), `[ds]` (datasheet value, unverified) or `[est]`
//! (estimate; fitted ones name the published data they were fitted to).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::physics::{KindParams, Physics, WorkParts};
use crate::gpu::{Architecture, LayerWork, PowerSemantics, WorkKind};

/// Built-in profiles, embedded at compile time: (canonical name, TOML text).
const BUILTIN: &[(&str, &str)] = &[
    ("m40", include_str!("../../../profiles/gpus/m40.toml")),
    (
        "v100-sxm2",
        include_str!("../../../profiles/gpus/v100-sxm2.toml"),
    ),
    (
        "v100-pcie",
        include_str!("../../../profiles/gpus/v100-pcie.toml"),
    ),
    ("t4", include_str!("../../../profiles/gpus/t4.toml")),
    (
        "a100-sxm4",
        include_str!("../../../profiles/gpus/a100-sxm4.toml"),
    ),
    (
        "h100-sxm",
        include_str!("../../../profiles/gpus/h100-sxm.toml"),
    ),
    ("b200", include_str!("../../../profiles/gpus/b200.toml")),
];

/// Short names accepted by [`GpuProfile::builtin`] besides the canonical ones.
const ALIASES: &[(&str, &str)] = &[
    ("v100", "v100-sxm2"),
    ("a100", "a100-sxm4"),
    ("h100", "h100-sxm"),
    ("h100-sxm5", "h100-sxm"),
];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "unknown GPU profile `{0}` (built-in: m40, v100-sxm2, v100-pcie, t4, a100-sxm4, h100-sxm, b200)"
    )]
    Unknown(String),
    #[error("cannot read GPU profile {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("GPU profile {origin} does not parse: {source}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("GPU profile {name} is inconsistent: {reason}")]
    Invalid { name: String, reason: String },
}

/// What the GPU does with its graphics clock under load when no clock is locked or set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultClock {
    /// GPU Boost: run up to the maximum clock while power allows.
    MaxBoost,
    /// Run at the default application clock.
    Application,
}

/// The profile file as written (see `profiles/gpus/*.toml` for the meaning of each field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    pub name: String,
    pub marketing_name: String,
    pub architecture: Architecture,
    pub sm_count: u32,
    pub memory_bytes: u64,
    pub clocks: ClockSpec,
    pub voltage: VoltageSpec,
    pub power: PowerSpec,
    pub perf: PerfSpec,
    pub kinds: KindsSpec,
    pub switch: SwitchSpec,
    pub energy_counter: EnergyCounterSpec,
    pub noise: NoiseSpec,
    pub thermal: ThermalSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSpec {
    pub memory_mhz: u32,
    pub max_mhz: u32,
    pub min_mhz: u32,
    /// Spacing of supported graphics clocks; points are `floor(max − k·step)` down to `min`.
    /// Ignored when `explicit_mhz` is given.
    pub step_mhz: f64,
    #[serde(default)]
    pub explicit_mhz: Option<Vec<u32>>,
    pub default_application_mhz: u32,
    pub idle_mhz: u32,
    pub default_under_load: DefaultClock,
    /// How long an unlocked GPU keeps its load clock after work stops before it drops to the
    /// P-state idle clock.
    pub pstate_idle_delay_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoltageSpec {
    pub v_min: f64,
    pub v_max: f64,
    /// Below this clock the voltage stays at `v_min`.
    pub knee_mhz: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerSpec {
    /// Board power idling in the P-state idle clock with nothing locked.
    pub idle_floor_w: f64,
    pub limit_default_w: f64,
    pub limit_min_w: f64,
    pub limit_max_w: f64,
    pub reading: PowerSemantics,
    /// Leakage at `v_max`; scales with (V/V_max)².
    pub leakage_w_at_vmax: f64,
    /// Clock distribution and idle SM power with the clock held at f_max; ∝ V²·f.
    pub clock_tree_w_at_fmax: f64,
    /// Clock-independent extra power while work runs (uncore, crossbar, host interface).
    pub busy_w: f64,
    /// Dynamic power of fully active SMs at f_max and V_max; ∝ V²·f·activity.
    pub dynamic_w_at_fmax: f64,
    /// DRAM power at peak bandwidth; energy per byte = this / bandwidth.
    pub memory_w_at_peak_bw: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerfSpec {
    pub peak_fp32_flops: f64,
    pub memory_bandwidth_bps: f64,
    pub launch_overhead_s: f64,
    /// Below this fraction of f_max the SMs cannot issue enough requests to keep memory busy,
    /// so the memory part grows as 1/f too.
    pub memory_issue_floor: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindsSpec {
    pub conv: KindParams,
    pub depthwise_conv: KindParams,
    pub linear: KindParams,
    pub pool: KindParams,
    pub elementwise: KindParams,
    pub data_movement: KindParams,
}

impl KindsSpec {
    pub fn get(&self, kind: WorkKind) -> &KindParams {
        match kind {
            WorkKind::Conv => &self.conv,
            WorkKind::DepthwiseConv => &self.depthwise_conv,
            WorkKind::Linear => &self.linear,
            WorkKind::Pool => &self.pool,
            WorkKind::Elementwise => &self.elementwise,
            WorkKind::DataMovement => &self.data_movement,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSpec {
    /// Set-clock API call latency: log-normal with this median and 99th percentile.
    pub call_median_ms: f64,
    pub call_p99_ms: f64,
    /// Delay from the call's return until the new clock is in force: a fixed floor plus a
    /// log-normal tail with this median and 99th percentile.
    pub settle_floor_ms: f64,
    pub settle_extra_median_ms: f64,
    pub settle_extra_p99_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyCounterSpec {
    pub present: bool,
    pub period_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseSpec {
    /// Relative standard deviation of a run's time (one span or one `run_layer` call).
    pub time_sd: f64,
    /// Relative standard deviation of a run's average power.
    pub power_sd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThermalSpec {
    pub ambient_c: f64,
    pub c_per_w: f64,
    pub tau_s: f64,
}

/// A validated profile with its derived tables (supported clocks, physics constants).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuProfile {
    spec: ProfileSpec,
    /// Supported graphics clocks, highest first.
    clocks_desc: Vec<u32>,
    physics: Physics,
}

impl GpuProfile {
    /// Canonical names of the built-in profiles.
    pub fn names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// A built-in profile by canonical name or alias (case-insensitive).
    pub fn builtin(name: &str) -> Result<Self, ProfileError> {
        let lower = name.to_ascii_lowercase();
        let canonical = ALIASES
            .iter()
            .find(|(a, _)| *a == lower)
            .map_or(lower.as_str(), |(_, c)| *c);
        let (_, text) = BUILTIN
            .iter()
            .find(|(n, _)| *n == canonical)
            .ok_or_else(|| ProfileError::Unknown(name.to_string()))?;
        Self::from_toml_str(text, canonical)
    }

    /// A built-in name, or else a path to a profile file.
    pub fn load(name_or_path: &str) -> Result<Self, ProfileError> {
        match Self::builtin(name_or_path) {
            Ok(p) => Ok(p),
            Err(ProfileError::Unknown(_)) if Path::new(name_or_path).exists() => {
                Self::from_path(Path::new(name_or_path))
            }
            Err(e) => Err(e),
        }
    }

    pub fn from_path(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates a profile; `origin` names it in error messages.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ProfileError> {
        let spec: ProfileSpec = toml::from_str(text).map_err(|source| ProfileError::Parse {
            origin: origin.to_string(),
            source: Box::new(source),
        })?;
        Self::from_spec(spec)
    }

    pub fn from_spec(spec: ProfileSpec) -> Result<Self, ProfileError> {
        let invalid = |reason: String| ProfileError::Invalid {
            name: spec.name.clone(),
            reason,
        };
        let clocks_desc = clock_list(&spec.clocks).map_err(invalid)?;
        validate(&spec, &clocks_desc).map_err(invalid)?;
        let physics = Physics::from_spec(&spec).map_err(invalid)?;
        Ok(Self {
            spec,
            clocks_desc,
            physics,
        })
    }

    pub fn spec(&self) -> &ProfileSpec {
        &self.spec
    }
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    pub fn architecture(&self) -> Architecture {
        self.spec.architecture
    }
    /// The physics constants (hot-path struct, `Copy`).
    pub fn physics(&self) -> &Physics {
        &self.physics
    }
    /// Supported graphics clocks at the profile's memory clock, highest first (NVML order).
    pub fn supported_clocks_mhz(&self) -> &[u32] {
        &self.clocks_desc
    }
    pub fn max_clock_mhz(&self) -> u32 {
        self.clocks_desc[0]
    }
    pub fn min_clock_mhz(&self) -> u32 {
        self.clocks_desc[self.clocks_desc.len() - 1]
    }
    pub fn memory_clock_mhz(&self) -> u32 {
        self.spec.clocks.memory_mhz
    }
    pub fn power_semantics(&self) -> PowerSemantics {
        self.spec.power.reading
    }
    pub fn has_energy_counter(&self) -> bool {
        self.spec.energy_counter.present
    }
    pub fn has_locked_clocks(&self) -> bool {
        self.spec.architecture.has_locked_clocks()
    }

    /// Clock under load with nothing locked or set (before any power cap).
    pub fn default_clock_under_load_mhz(&self) -> u32 {
        match self.spec.clocks.default_under_load {
            DefaultClock::MaxBoost => self.max_clock_mhz(),
            DefaultClock::Application => self.spec.clocks.default_application_mhz,
        }
    }

    /// Highest supported clock at or below `mhz` (the lowest one if `mhz` is below the range).
    pub fn floor_clock_mhz(&self, mhz: u32) -> u32 {
        self.clocks_desc[self.floor_clock_index(mhz)]
    }

    /// Index into [`Self::supported_clocks_mhz`] of [`Self::floor_clock_mhz`].
    pub fn floor_clock_index(&self, mhz: u32) -> usize {
        let i = self.clocks_desc.partition_point(|&c| c > mhz);
        i.min(self.clocks_desc.len() - 1)
    }

    pub fn is_supported_clock(&self, mhz: u32) -> bool {
        self.clocks_desc.binary_search_by(|c| mhz.cmp(c)).is_ok()
    }
}

/// True for a positive number (false for NaN).
pub(crate) fn is_positive(x: f64) -> bool {
    x > 0.0
}

/// Supported graphics clocks, highest first.
fn clock_list(c: &ClockSpec) -> Result<Vec<u32>, String> {
    let mut list = if let Some(explicit) = &c.explicit_mhz {
        explicit.clone()
    } else {
        if !is_positive(c.step_mhz) {
            return Err("clocks.step_mhz must be positive".into());
        }
        // NVML lists e.g. 1530, 1522, 1515, 1507 on V100: floor of max − k·7.5.
        let mut v = Vec::new();
        let mut k = 0u32;
        loop {
            let f = (f64::from(c.max_mhz) - f64::from(k) * c.step_mhz).floor();
            if f < f64::from(c.min_mhz) {
                break;
            }
            v.push(f as u32);
            k += 1;
        }
        v
    };
    list.sort_unstable_by(|a, b| b.cmp(a));
    list.dedup();
    if list.is_empty() {
        return Err("no supported graphics clocks".into());
    }
    Ok(list)
}

fn validate(s: &ProfileSpec, clocks: &[u32]) -> Result<(), String> {
    let c = &s.clocks;
    if clocks[0] != c.max_mhz {
        return Err(format!(
            "highest clock {} is not max_mhz {}",
            clocks[0], c.max_mhz
        ));
    }
    if c.min_mhz > c.max_mhz {
        return Err("clocks.min_mhz above max_mhz".into());
    }
    let contains = |f: u32| clocks.contains(&f);
    if !contains(c.default_application_mhz) {
        return Err(format!(
            "default_application_mhz {} is not a supported clock",
            c.default_application_mhz
        ));
    }
    if !contains(c.idle_mhz) {
        return Err(format!("idle_mhz {} is not a supported clock", c.idle_mhz));
    }
    let p = &s.power;
    if !(p.limit_min_w <= p.limit_default_w && p.limit_default_w <= p.limit_max_w) {
        return Err("power limits must satisfy min ≤ default ≤ max".into());
    }
    if s.energy_counter.present && !s.architecture.has_energy_counter() {
        return Err("energy counter needs Volta or newer".into());
    }
    if s.energy_counter.present && !is_positive(s.energy_counter.period_ms) {
        return Err("energy_counter.period_ms must be positive".into());
    }
    let sw = &s.switch;
    if !(sw.call_p99_ms > sw.call_median_ms && sw.call_median_ms > 0.0) {
        return Err("switch: call_p99_ms must exceed call_median_ms > 0".into());
    }
    if !(sw.settle_extra_p99_ms > sw.settle_extra_median_ms && sw.settle_extra_median_ms > 0.0) {
        return Err("switch: settle_extra_p99_ms must exceed settle_extra_median_ms > 0".into());
    }
    if s.noise.time_sd < 0.0 || s.noise.power_sd < 0.0 || s.noise.time_sd > 0.2 {
        return Err("noise sd out of range".into());
    }
    if !is_positive(s.thermal.tau_s) {
        return Err("thermal.tau_s must be positive".into());
    }
    if s.clocks.pstate_idle_delay_s.is_nan() || s.clocks.pstate_idle_delay_s < 0.0 {
        return Err("clocks.pstate_idle_delay_s must be ≥ 0".into());
    }
    Ok(())
}

/// The physics functions, on the profile with clocks in MHz as NVML gives them.
impl GpuProfile {
    /// Time of one execution of `w` at graphics clock `f_mhz` (s).
    pub fn layer_time_s(&self, w: &LayerWork, f_mhz: u32) -> f64 {
        self.physics.layer_time_s(w, f64::from(f_mhz))
    }

    /// Average board power while `w` runs at `f_mhz` (W), before any power cap.
    pub fn layer_power_w(&self, w: &LayerWork, f_mhz: u32) -> f64 {
        self.physics.layer_power_w(w, f64::from(f_mhz))
    }

    /// Board energy of one execution of `w` at `f_mhz` (J).
    pub fn layer_energy_j(&self, w: &LayerWork, f_mhz: u32) -> f64 {
        self.physics.layer_energy_j(w, f64::from(f_mhz))
    }

    /// Power of an idle GPU whose clock is held at `f_mhz` by a lock (W).
    pub fn idle_power_w(&self, f_mhz: u32) -> f64 {
        self.physics.idle_power_w(f64::from(f_mhz))
    }

    /// Power of an idle GPU in its P-state idle clock with nothing locked (W).
    pub fn idle_floor_w(&self) -> f64 {
        self.physics.idle_floor_w
    }

    /// The clock the power controller allows for `parts` when `f_req_mhz` is asked for under a
    /// power limit: the highest supported clock at or below the request whose power fits, and
    /// whether the cap bound (the `sw_power_cap` throttle reason). When even the lowest clock
    /// does not fit, the lowest clock (capped).
    pub fn power_capped_clock(
        &self,
        parts: &WorkParts,
        f_req_mhz: u32,
        limit_w: f64,
    ) -> (u32, bool) {
        let curve = &self.physics.curve;
        let power = |f: u32| {
            let (t, e) = curve.time_energy(parts, curve.x(f64::from(f)));
            if t > 0.0 { e / t } else { 0.0 }
        };
        let i0 = self.floor_clock_index(f_req_mhz);
        let f0 = self.clocks_desc[i0];
        if power(f0) <= limit_w {
            return (f0, false);
        }
        // Power rises with the clock, so the clocks that fit form a suffix of the descending list.
        let rest = &self.clocks_desc[i0..];
        let first_fit = rest.partition_point(|&f| power(f) > limit_w);
        (rest[first_fit.min(rest.len() - 1)], true)
    }
}
