//! GPU hardware seam: the [`GpuBackend`] trait (what NVML offers an agent), with the NVML backend
//! and a calibrated simulated GPU behind it. Running work on a GPU is an executor's
//! (`exec::Executor`).
//!
//! Time is explicit: every method that observes or changes the device state takes place at the
//! device's own clock ([`GpuBackend::now`]), which is wall time on a real GPU and virtual time on the
//! simulated one. That keeps the simulator deterministic and lets the profiler and the
//! discrete-event simulator drive it as fast as the CPU allows.

use serde::{Deserialize, Serialize};

pub mod calibrate_switch;
mod clock;
pub mod clockguard;
pub mod nvml;
pub mod sim;

pub use clock::{ClockTarget, SerialSetCalls, SetCall, SetCallQueue};

// What a layer asks of the GPU is plain data of the model layer; the GPU layer runs it.
pub use crate::model::{LayerWork, WorkKind};

/// Identity and static facts of one GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub pci_bus_id: String,
    pub numa_node: Option<u32>,
    pub memory_bytes: u64,
    pub architecture: Architecture,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    Maxwell,
    Pascal,
    Volta,
    Turing,
    Ampere,
    Hopper,
}

impl Architecture {
    /// Locked graphics clocks (`nvmlDeviceSetGpuLockedClocks`) exist from Volta on.
    pub fn has_locked_clocks(self) -> bool {
        self >= Architecture::Volta
    }
    /// `nvmlDeviceGetTotalEnergyConsumption` exists from Volta on.
    pub fn has_energy_counter(self) -> bool {
        self >= Architecture::Volta
    }
}

/// Current clock state as NVML reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockState {
    /// Graphics clock in force now (MHz): what `nvmlDeviceGetClockInfo(GRAPHICS)` returns.
    pub graphics_mhz: u32,
    pub memory_mhz: u32,
    /// Locked range requested through `set_locked_clocks`, if any.
    pub locked: Option<(u32, u32)>,
    /// Application clock (graphics MHz) in force on parts without locked clocks.
    pub application_mhz: u32,
}

/// Whether a power reading is an instantaneous sample or a 1 s moving average.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerSemantics {
    Instantaneous,
    Averaged1s,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerReading {
    pub watts: f64,
    pub semantics: PowerSemantics,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerLimit {
    pub current_w: f64,
    pub default_w: f64,
    pub min_w: f64,
    pub max_w: f64,
}

/// Why the GPU runs below the requested clock (subset of NVML's throttle-reason bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleReasons {
    pub gpu_idle: bool,
    pub sw_power_cap: bool,
    pub hw_slowdown: bool,
    pub applications_clocks_setting: bool,
}

/// Health-relevant events (NVML event set: XID, ECC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HealthEvent {
    Xid { code: u64, at_s: f64 },
    DoubleBitEcc { at_s: f64 },
    SingleBitEcc { at_s: f64 },
    Lost { at_s: f64 },
}

/// What a set-clock call did: how long the call blocked, and when the new clock takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockChange {
    /// Requested graphics clock after rounding to a supported point (MHz).
    pub applied_mhz: u32,
    /// Time the API call blocked its caller (s).
    pub call_latency_s: f64,
    /// Device time at which the new clock is in force (s).
    pub effective_at_s: f64,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum GpuError {
    #[error("{what} is not supported on this GPU ({arch:?})")]
    NotSupported {
        what: &'static str,
        arch: Architecture,
    },
    #[error("no permission to {what}: {fix}")]
    NoPermission {
        what: &'static str,
        fix: &'static str,
    },
    #[error("GPU {uuid} is lost (fell off the bus or driver reset)")]
    GpuLost { uuid: String },
    #[error("NVIDIA driver or libnvidia-ml is not loaded: {0}")]
    DriverNotLoaded(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("GPU backend error: {0}")]
    Other(String),
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

/// One GPU as an NVML-speaking agent sees it. Implemented by the simulated GPU here and by the
/// NVML backend; the profiler, the agent and the simulator only talk to this trait.
pub trait GpuBackend {
    fn info(&self) -> &GpuInfo;
    /// Device time in seconds (wall time on a real GPU, virtual time on the simulated one).
    fn now_s(&self) -> f64;
    fn supported_memory_clocks(&self) -> Result<Vec<u32>>;
    /// Supported graphics clocks for a memory clock, highest first (as NVML orders them).
    fn supported_graphics_clocks(&self, memory_mhz: u32) -> Result<Vec<u32>>;
    /// Graphics clock the GPU runs at under load with no lock set (its default behaviour).
    fn default_graphics_clock(&self) -> Result<u32>;
    fn clocks(&self) -> Result<ClockState>;
    /// `nvmlDeviceSetGpuLockedClocks` (Volta+).
    fn set_locked_clocks(&mut self, min_mhz: u32, max_mhz: u32) -> Result<ClockChange>;
    /// `nvmlDeviceResetGpuLockedClocks` (Volta+).
    fn reset_locked_clocks(&mut self) -> Result<ClockChange>;
    /// `nvmlDeviceSetApplicationsClocks` (the only clock knob before Volta).
    fn set_application_clocks(&mut self, memory_mhz: u32, graphics_mhz: u32)
    -> Result<ClockChange>;
    fn reset_application_clocks(&mut self) -> Result<ClockChange>;
    fn power(&self) -> Result<PowerReading>;
    /// Total energy since driver load in whole millijoules, advancing in ~10 ms steps (Volta+).
    fn energy_mj(&self) -> Result<u64>;
    fn power_limit(&self) -> Result<PowerLimit>;
    fn set_power_limit(&mut self, watts: f64) -> Result<()>;
    fn throttle_reasons(&self) -> Result<ThrottleReasons>;
    fn temperature_c(&self) -> Result<u32>;
    /// Events since the last call (XID, ECC, lost GPU).
    fn poll_health_events(&mut self) -> Result<Vec<HealthEvent>>;
    /// Lets the GPU idle for `seconds` of device time: a sleep on a real GPU, virtual time on
    /// the simulated one (so waits for a clock or a counter tick take no wall time there).
    fn idle(&mut self, seconds: f64) -> Result<()> {
        let d = std::time::Duration::try_from_secs_f64(seconds)
            .map_err(|_| GpuError::InvalidArgument(format!("idle for {seconds} s")))?;
        std::thread::sleep(d);
        Ok(())
    }
}
