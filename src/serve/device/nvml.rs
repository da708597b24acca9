//! A local GPU through NVML as a serving device (standalone `eali serve --device nvml:N`): the
//! sensors and the energy counter are read through the NVML backend, and set-calls go to the
//! clock guard's actuator, which makes each at its planned time on its own thread, records a
//! lock before making it and resets every lock when the process ends (a later start resets what
//! a killed one left, from the record). Where the process may not set clocks (not root, no
//! administrator grant) the first refusal turns the device read-only: the plan still runs at
//! whatever clock the GPU holds, and the energy counter is still attributed. A GPU that NVML
//! reports lost is a fault: requests are answered 503 with the reason until it answers again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Reading, RealGpuTime, ServingDevice, SimServing};
use crate::gpu::clockguard::{ClockActuator, ClockEvent, ClockGuard};
use crate::gpu::nvml::{NvmlGpu, NvmlResetter, NvmlSystem, OpenOptions};
use crate::gpu::{ClockTarget, GpuBackend, GpuError};

/// How a local GPU is opened for serving.
#[derive(Debug, Clone)]
pub struct NvmlServingOptions {
    pub index: u32,
    /// The NVML library (else `EALI_NVML_LIB`, else the driver's).
    pub library: Option<PathBuf>,
    /// The clock guard's record of the locks this server makes.
    pub record: PathBuf,
}

/// A local GPU (see the module docs).
pub struct NvmlServing {
    gpu: NvmlGpu,
    clocks: ClockActuator,
    uuid: String,
    index: u32,
    time: RealGpuTime,
    /// Set at the first refusal for lack of permission (seen by any call, reads included).
    read_only: std::cell::Cell<bool>,
    /// The last health check: when it ran, and why the GPU could not serve then.
    health: std::cell::RefCell<(Option<Instant>, Option<String>)>,
}

/// How often [`ServingDevice::fault`] asks the GPU (the worker asks at every step; a pod asks
/// its agent as often).
const HEALTH_CHECK: Duration = Duration::from_millis(250);

impl NvmlServing {
    /// Opens GPU `opts.index`, resets what an earlier server left locked (its record), and
    /// starts the clock thread. Device time counts from `epoch` (the server's).
    pub fn open(
        opts: &NvmlServingOptions,
        epoch: Instant,
        model: Option<SimServing>,
    ) -> Result<Self, GpuError> {
        let sys = NvmlSystem::global(opts.library.as_deref())?;
        let gpu = sys.open(opts.index, &OpenOptions::default())?;
        // The clock thread's own handle: it needs no energy-counter check.
        let setter = sys.open(
            opts.index,
            &OpenOptions {
                counter_check: Duration::ZERO,
                ..OpenOptions::default()
            },
        )?;
        let (guard, report) = ClockGuard::start(&opts.record, Arc::new(NvmlResetter::new(sys)))
            .map_err(|e| GpuError::Other(format!("clock record {}: {e}", opts.record.display())))?;
        if !report.reset.is_empty() || !report.is_clean() {
            tracing::warn!(?report, "reset clocks an earlier server left locked");
        }
        let uuid = gpu.info().uuid.clone();
        let clocks = ClockActuator::spawn(vec![Box::new(setter)], guard);
        Ok(Self {
            gpu,
            clocks,
            uuid,
            index: opts.index,
            time: RealGpuTime::new(epoch, model),
            read_only: std::cell::Cell::new(false),
            health: std::cell::RefCell::new((None, None)),
        })
    }

    /// Reads what the clock thread reported; a refusal for lack of permission makes the device
    /// read-only.
    fn check_events(&self) {
        for e in self.clocks.drain_events() {
            match e {
                ClockEvent::Failed { target, error, .. } => {
                    if matches!(error, GpuError::NoPermission { .. }) && !self.read_only.get() {
                        self.read_only.set(true);
                        tracing::error!(gpu = %self.uuid, %error, "no permission to set clocks: serving read-only at the GPU's own clocks");
                    } else if !self.read_only.get() {
                        tracing::warn!(gpu = %self.uuid, ?target, %error, "clock change failed");
                    }
                }
                ClockEvent::BelowRequest {
                    target,
                    actual_mhz,
                    reasons,
                    ..
                } => {
                    tracing::warn!(gpu = %self.uuid, ?target, actual_mhz, ?reasons, "GPU runs below the requested clock");
                }
                _ => {}
            }
        }
    }
}

impl ServingDevice for NvmlServing {
    fn label(&self) -> &str {
        &self.uuid
    }
    fn describe(&self) -> String {
        let mode = if self.read_only.get() {
            ", read-only"
        } else {
            ""
        };
        format!("NVML GPU {} ({}{mode})", self.index, self.uuid)
    }
    fn now_s(&self) -> f64 {
        self.time.now_s()
    }
    fn unix_s(&self, t_s: f64) -> f64 {
        self.time.unix_s(t_s)
    }
    fn set_clock_at(&mut self, at_s: f64, target: ClockTarget) -> Result<bool, GpuError> {
        self.check_events();
        if !self.time.request(at_s, target)? || self.read_only.get() {
            return Ok(false);
        }
        self.clocks
            .request_at(0, self.time.instant_at(at_s), target);
        Ok(true)
    }
    fn requested(&self) -> Option<ClockTarget> {
        self.time.requested
    }
    fn reset_clocks(&mut self) -> Result<(), GpuError> {
        self.time.reset()?;
        self.clocks.request(0, ClockTarget::Default);
        self.clocks.flush();
        self.check_events();
        Ok(())
    }
    fn clock_mhz(&self) -> Option<u32> {
        self.gpu.clocks().ok().map(|c| c.graphics_mhz)
    }
    fn read(&self) -> Reading {
        self.check_events();
        Reading {
            power_w: self.gpu.power().ok().map(|p| p.watts),
            clock_mhz: self.clock_mhz(),
            energy_mj: self.gpu.energy_mj().ok(),
        }
    }
    fn energy_mj(&self) -> Option<u64> {
        self.gpu.energy_mj().ok()
    }
    fn fault(&self) -> Option<String> {
        let mut h = self.health.borrow_mut();
        if h.0.is_none_or(|at| at.elapsed() >= HEALTH_CHECK) {
            // A lost GPU fails every call with GPU_IS_LOST; other errors are not a fault.
            h.1 = match self.gpu.clocks() {
                Err(e @ GpuError::GpuLost { .. }) => Some(e.to_string()),
                _ => None,
            };
            h.0 = Some(Instant::now());
        }
        h.1.clone()
    }
}
