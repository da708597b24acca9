//! The clock settings everything that changes a GPU's clock speaks: a scheduling policy's
//! set-calls, the simulated GPU, the clock guard's actuator, the agent's control socket.

use serde::Serialize;

/// A clock setting for one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockTarget {
    /// Graphics clock locked at one frequency: `nvmlDeviceSetGpuLockedClocks(f, f)`.
    Locked(u32),
    /// Graphics clocks locked to a range (Volta and newer).
    LockedRange { min_mhz: u32, max_mhz: u32 },
    /// Application clocks (the clock knob of older parts).
    Application { memory_mhz: u32, graphics_mhz: u32 },
    /// The GPU's own default behaviour: whatever was set is reset
    /// (`nvmlDeviceResetGpuLockedClocks`).
    Default,
}

impl ClockTarget {
    /// The graphics clock range the setting asks for (`None`: the GPU's own default).
    pub fn graphics_range(self) -> Option<(u32, u32)> {
        match self {
            ClockTarget::Locked(f) => Some((f, f)),
            ClockTarget::LockedRange { min_mhz, max_mhz } => Some((min_mhz, max_mhz)),
            ClockTarget::Application { graphics_mhz, .. } => Some((graphics_mhz, graphics_mhz)),
            ClockTarget::Default => None,
        }
    }

    /// The clock the setting is reported as (the top of a locked range), 0 for the default.
    pub fn mhz(self) -> u32 {
        self.graphics_range().map_or(0, |(_, hi)| hi)
    }
}

/// A set-call the clock thread issues `offset_s` after the batch is dispatched (ahead of the unit
/// boundary where the clock should be in force). The batch path never waits for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SetCall {
    pub offset_s: f64,
    pub target: ClockTarget,
}
