//! Profile files: what `eali profile` measured for one model on one GPU, one record per
//! (layer, batch size, graphics clock), plus the idle power at each clock. Plain JSON, free of
//! dates and host names so that the same seed gives the same file byte for byte.

use serde::{Deserialize, Serialize};

use super::error::{PerfError, Result};
use crate::gpu::{Architecture, WorkKind};

/// Version of the profile file layout.
pub const PROFILE_FORMAT: u32 = 1;

/// How the energy of each record was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergySource {
    /// Difference of the cumulative energy counter (`nvmlDeviceGetTotalEnergyConsumption`,
    /// Volta and newer), read at counter ticks.
    Counter,
    /// Mean of power samples (`nvmlDeviceGetPowerUsage`) times the run time: the only way on
    /// GPUs without an energy counter (Maxwell, Pascal).
    PowerSampling,
}

/// The GPU a profile was taken on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuMeta {
    /// Marketing name as the backend reports it (e.g. "Tesla V100-SXM2-32GB").
    pub name: String,
    /// Backend selector that produced the profile (e.g. "sim:v100", "nvml:0").
    pub backend: String,
    pub architecture: Architecture,
    /// Highest supported graphics clock (MHz): the f_max of the f/f_max features.
    pub max_clock_mhz: u32,
    /// Memory clock the graphics clocks were chosen for (MHz).
    pub memory_clock_mhz: u32,
}

/// Static facts of one layer, from the model graph. Byte counts are affine in the batch size
/// (weights read once per batch, activations per sample), so the two numbers give the bytes of
/// any batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub name: String,
    /// Operator name (`conv2d`, `batch_norm`, ...).
    pub op: String,
    pub kind: WorkKind,
    pub macs_per_sample: u64,
    pub flops_per_sample: f64,
    pub params: u64,
    /// Bytes moved per batch independent of its size (parameters).
    pub bytes_fixed: f64,
    /// Bytes moved per sample (activations in and out).
    pub bytes_per_sample: f64,
}

impl LayerInfo {
    pub fn macs(&self, batch: u32) -> f64 {
        self.macs_per_sample as f64 * f64::from(batch)
    }
    pub fn flops(&self, batch: u32) -> f64 {
        self.flops_per_sample * f64::from(batch)
    }
    pub fn bytes(&self, batch: u32) -> f64 {
        self.bytes_fixed + self.bytes_per_sample * f64::from(batch)
    }
    /// Views (flatten, dropout at inference) launch no kernel: nothing to measure.
    pub fn is_noop(&self) -> bool {
        self.flops_per_sample == 0.0 && self.bytes_fixed == 0.0 && self.bytes_per_sample == 0.0
    }
}

/// One measurement: a layer at a batch size and a graphics clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileRecord {
    /// Index into [`Profile::layers`].
    pub layer: usize,
    pub name: String,
    pub kind: WorkKind,
    /// MACs of the whole batch.
    pub macs: f64,
    /// FLOPs of the whole batch (2 × MACs for conv/linear, per-element ops otherwise).
    pub flops: f64,
    pub params: u64,
    /// Bytes read plus written for the whole batch.
    pub bytes: f64,
    pub batch: u32,
    pub clock_mhz: u32,
    /// Time of one run of the layer (s).
    pub time_s: f64,
    /// Board energy of one run (J), static power included.
    pub energy_j: f64,
    /// Mean board power while the layer runs (W) = energy_j / time_s.
    pub power_w: f64,
    /// Back-to-back runs measured together.
    pub repeats: u32,
    /// The GPU reported the software power cap right after the run: it ran below `clock_mhz`.
    #[serde(default)]
    pub power_capped: bool,
}

/// Board power of the idle GPU held at a clock.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IdlePoint {
    pub clock_mhz: u32,
    pub power_w: f64,
}

/// A whole profile file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub format: u32,
    pub model: String,
    pub gpu: GpuMeta,
    /// Seed of the simulated GPU, if the backend is simulated.
    pub seed: Option<u64>,
    /// Batch sizes measured, ascending.
    pub batches: Vec<u32>,
    /// Graphics clocks measured (MHz), ascending.
    pub clocks_mhz: Vec<u32>,
    pub energy_source: EnergySource,
    /// Minimum device time each measurement ran for (s).
    pub min_measure_s: f64,
    /// Input bytes of one sample (for the host→device copy estimate).
    pub input_bytes_per_sample: u64,
    pub layers: Vec<LayerInfo>,
    pub idle: Vec<IdlePoint>,
    pub records: Vec<ProfileRecord>,
    /// Device time the whole profile took (s).
    pub device_time_s: f64,
    /// Caveats worth knowing when reading the numbers (e.g. power sampling instead of a counter).
    pub notes: Vec<String>,
}

impl Profile {
    /// Parses and checks a profile (the contents of a profile file; the caller reads it).
    pub fn from_json(text: &str) -> Result<Self> {
        let p: Profile = serde_json::from_str(text).map_err(PerfError::Json)?;
        p.validate().map_err(PerfError::InvalidInput)?;
        Ok(p)
    }

    /// The profile as pretty JSON with a final newline (what a profile file holds).
    pub fn to_json(&self) -> Result<String> {
        to_pretty_json(self)
    }

    /// Checks the invariants other code relies on (file contents are external input).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format != PROFILE_FORMAT {
            return Err(format!(
                "profile format {} (this build reads {PROFILE_FORMAT})",
                self.format
            ));
        }
        if self.gpu.max_clock_mhz == 0 {
            return Err("gpu.max_clock_mhz is 0".into());
        }
        if self.batches.is_empty() || self.batches.windows(2).any(|w| w[0] >= w[1]) {
            return Err("batches must be non-empty and strictly ascending".into());
        }
        if self.clocks_mhz.is_empty() || self.clocks_mhz.windows(2).any(|w| w[0] >= w[1]) {
            return Err("clocks_mhz must be non-empty and strictly ascending".into());
        }
        if self.batches[0] == 0 || self.clocks_mhz[0] == 0 {
            return Err("batch sizes and clocks must be positive".into());
        }
        for r in &self.records {
            if r.layer >= self.layers.len() {
                return Err(format!("record for layer index {} out of range", r.layer));
            }
            let ok = r.time_s.is_finite()
                && r.time_s > 0.0
                && r.energy_j.is_finite()
                && r.energy_j >= 0.0
                && r.power_w.is_finite()
                && r.flops.is_finite()
                && r.bytes.is_finite();
            if !ok {
                return Err(format!(
                    "record {} batch {} clock {} has non-finite or non-positive values",
                    r.name, r.batch, r.clock_mhz
                ));
            }
        }
        if self
            .idle
            .iter()
            .any(|p| !(p.power_w.is_finite() && p.power_w >= 0.0))
        {
            return Err("idle power must be finite and non-negative".into());
        }
        Ok(())
    }

    /// Records of one layer at one batch size, in clock order.
    pub fn records_of(&self, layer: usize, batch: u32) -> Vec<&ProfileRecord> {
        let mut v: Vec<&ProfileRecord> = self
            .records
            .iter()
            .filter(|r| r.layer == layer && r.batch == batch)
            .collect();
        v.sort_by_key(|r| r.clock_mhz);
        v
    }
}

/// Pretty JSON with a final newline.
pub(crate) fn to_pretty_json<T: Serialize>(value: &T) -> Result<String> {
    let mut text = serde_json::to_string_pretty(value).map_err(PerfError::Json)?;
    text.push('\n');
    Ok(text)
}
