//! The device seam under the serving worker: what the worker needs from the hardware a model
//! is served on, behind one trait, [`ServingDevice`], with three implementations:
//!
//! - [`SimServing`]: the simulated GPU in this process (standalone `eali serve`, the default);
//! - [`NvmlServing`]: a local GPU through the NVML backend, its set-calls made by the clock
//!   guard's actuator at their planned times (standalone `eali serve --device nvml:N` on a GPU
//!   machine; read-only where the process may not set clocks);
//! - [`AgentServing`]: the node agent's GPU through the control socket (a serving pod that was
//!   allocated a GPU: the pod itself has no NVML privileges).
//!
//! The worker tells the device what the plan wants (the set-calls at their offsets, none of
//! which blocks the batch path; the clock reset at drain) and runs each batch through it
//! ([`ServingDevice::run_batch`]): the executor runs the batch unit by unit, and the device puts
//! its own readings in each unit's record (the clock in force at the unit's start and end, the
//! energy counter at its end), so a record says what the GPU did, not what the executor's timing
//! model thinks. It reads time, clock and the energy counter from the device. Energy is attributed once: on
//! the simulated and the local GPU the worker attributes the counter to units and layers; on
//! the agent's GPU the agent does, from the unit timings the worker reports, and the worker
//! exports no GPU or layer energy of its own.
//!
//! Until a GPU executor times batches on the GPU itself, an executor's timing model (the
//! simulated GPU of the served profile) runs alongside a real device and follows the same
//! set-calls, so its timing reflects the clocks the plan puts in force.

use crate::control::proto::{ServingWindow, UnitTiming};
use crate::exec::{BatchRequest, BatchRun, ExecError, Executor, UnitHook, UnitRecord};
use crate::gpu::{ClockTarget, GpuError};

mod agent;
mod nvml;
mod sim;

pub use agent::AgentServing;
pub use nvml::{NvmlServing, NvmlServingOptions};
pub use sim::{SimClockThread, SimServing};

/// Sensor readings of the device; `None` where it cannot tell, or where another process (the
/// node agent) reads and attributes them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub power_w: Option<f64>,
    pub clock_mhz: Option<u32>,
    /// Total energy counter (whole mJ).
    pub energy_mj: Option<u64>,
}

/// What the serving worker drives (see the module docs).
pub trait ServingDevice: Send {
    /// The GPU's label in metrics (its UUID).
    fn label(&self) -> &str;
    /// What it is, for logs ("simulated v100-sxm2", "NVML GPU 0", "node agent's GPU-…").
    fn describe(&self) -> String;
    /// Device time (s) on the server's time axis (seconds since its epoch).
    fn now_s(&self) -> f64;
    /// Unix time of device time `t_s`.
    fn unix_s(&self, t_s: f64) -> f64;
    /// Puts `target` in force at device time `at_s` (a set-call planned ahead of a unit
    /// boundary); never waits for the hardware. `Ok(false)` when it is the setting already
    /// requested (nothing to do).
    fn set_clock_at(&mut self, at_s: f64, target: ClockTarget) -> Result<bool, GpuError>;
    /// The setting last requested (None before the first).
    fn requested(&self) -> Option<ClockTarget>;
    /// Back to the GPU's default clocks, waiting (bounded) until that is done: at drain, so a
    /// GPU is never left locked.
    fn reset_clocks(&mut self) -> Result<(), GpuError>;
    /// The graphics clock in force now (MHz), as well as the device can tell.
    fn clock_mhz(&self) -> Option<u32>;
    /// Power, clock and energy counter now.
    fn read(&self) -> Reading;
    /// The energy counter alone (whole mJ), read at unit boundaries.
    fn energy_mj(&self) -> Option<u64> {
        self.read().energy_mj
    }
    /// Whether the node agent attributes this GPU's energy (from [`ServingDevice::report_units`]);
    /// the worker then attributes none itself.
    fn agent_attributes(&self) -> bool {
        false
    }
    /// Executed units, for the agent's attribution (ignored where the worker attributes).
    fn report_units(&self, _timings: Vec<UnitTiming>) {}
    /// A closed serving window, for the agent's report in the InferenceService's status
    /// (ignored outside a pod).
    fn report_window(&self, _window: ServingWindow) {}
    /// Why the GPU cannot serve now (lost, or Unhealthy in the device plugin's view); the
    /// worker answers requests 503 with it meanwhile. `None` while it can.
    fn fault(&self) -> Option<String> {
        None
    }
    /// Runs one batch on `exec`, unit by unit, on this device: `hook` and the returned run see
    /// unit records with the device's clock and energy-counter readings (see the module docs).
    fn run_batch(
        &self,
        exec: &mut dyn Executor,
        req: &BatchRequest<'_>,
        hook: &mut dyn UnitHook,
    ) -> Result<BatchRun, ExecError> {
        run_measured(self, exec, req, hook)
    }
}

/// [`ServingDevice::run_batch`]: the executor's records with the device's readings in them.
fn run_measured<D: ServingDevice + ?Sized>(
    device: &D,
    exec: &mut dyn Executor,
    req: &BatchRequest<'_>,
    hook: &mut dyn UnitHook,
) -> Result<BatchRun, ExecError> {
    let mut measured = Measured {
        device,
        inner: hook,
        clock_at_start: None,
        records: Vec::with_capacity(req.units.len()),
    };
    let mut run = exec.run_batch(req, &mut measured)?;
    if measured.records.len() == run.units.len() {
        run.units = measured.records;
    }
    Ok(run)
}

/// The unit-boundary hook [`run_measured`] puts between the executor and the worker's hook.
struct Measured<'a, D: ?Sized> {
    device: &'a D,
    inner: &'a mut dyn UnitHook,
    clock_at_start: Option<u32>,
    records: Vec<UnitRecord>,
}

impl<D: ServingDevice + ?Sized> UnitHook for Measured<'_, D> {
    fn unit_start(&mut self, unit: usize, t_s: f64) {
        self.clock_at_start = self.device.clock_mhz();
        self.inner.unit_start(unit, t_s);
    }
    fn unit_end(&mut self, record: &UnitRecord) {
        let mut r = *record;
        if let Some(f) = self.clock_at_start.take() {
            r.clock_start_mhz = f;
        }
        if let Some(f) = self.device.clock_mhz() {
            r.clock_mhz = f;
        }
        // Only the device's counter: where another process attributes it (the node agent),
        // the record holds none rather than the timing model's.
        r.energy_counter_mj = self.device.energy_mj();
        self.inner.unit_end(&r);
        self.records.push(r);
    }
}

/// What a real GPU's device keeps besides the GPU itself: the server's time axis, the setting
/// last requested, and the executor's timing model (the simulated GPU of the profile until a GPU
/// executor times batches), which follows every set-call.
struct RealGpuTime {
    epoch: std::time::Instant,
    unix_offset_s: f64,
    requested: Option<ClockTarget>,
    model: Option<SimServing>,
}

impl RealGpuTime {
    fn new(epoch: std::time::Instant, model: Option<SimServing>) -> Self {
        Self {
            epoch,
            unix_offset_s: unix_now_s() - epoch.elapsed().as_secs_f64(),
            requested: None,
            model,
        }
    }

    /// The timing model's time where there is one (it runs ahead of the wall clock while a
    /// batch's simulated end is still to come, and the worker's time axis must agree with the
    /// executor's), else seconds since the epoch.
    fn now_s(&self) -> f64 {
        match &self.model {
            Some(m) => m.now_s(),
            None => self.epoch.elapsed().as_secs_f64(),
        }
    }

    fn unix_s(&self, t_s: f64) -> f64 {
        t_s + self.unix_offset_s
    }

    /// The wall-clock instant of device time `t_s`.
    fn instant_at(&self, t_s: f64) -> std::time::Instant {
        self.epoch + std::time::Duration::try_from_secs_f64(t_s.max(0.0)).unwrap_or_default()
    }

    /// Gives the timing model `target` at `at_s`; whether the GPU must be asked for it (not the
    /// setting already requested), recording it as requested.
    fn request(&mut self, at_s: f64, target: ClockTarget) -> Result<bool, GpuError> {
        if let Some(m) = self.model.as_mut() {
            m.set_clock_at(at_s, target)?;
        }
        if self.requested == Some(target) {
            return Ok(false);
        }
        self.requested = Some(target);
        Ok(true)
    }

    /// The timing model back to its default clocks; the reset recorded as requested.
    fn reset(&mut self) -> Result<(), GpuError> {
        if let Some(m) = self.model.as_mut() {
            m.reset_clocks()?;
        }
        self.requested = Some(ClockTarget::Default);
        Ok(())
    }
}

/// Unix time now (s).
fn unix_now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
