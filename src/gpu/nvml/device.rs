//! [`NvmlGpu`]: one GPU through NVML behind [`GpuBackend`].
//!
//! NVML cannot tell which graphics clocks are locked, so [`ClockState::locked`] is what this
//! process set; the clock guard (`crate::gpu::clockguard`) keeps the on-disk record that
//! covers other processes.

use std::ffi::c_uint;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nvml_wrapper::Device;
use nvml_wrapper::bitmasks::device::ThrottleReasons as NvmlThrottle;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::{GpuLockedClocksSetting, SampleValue};
use nvml_wrapper::error::{NvmlError, nvml_try};
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::NVML_FI_DEV_POWER_INSTANT;
use nvml_wrapper_sys::bindings::{
    nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE, nvmlReturn_enum_NVML_SUCCESS,
};

use super::NvmlSystem;
use super::energy::{EnergySource, Integrator, PowerSource, power_usage_semantics};
use super::error::{Ctx, device_error, system_error};
use super::events::HealthEvents;
use super::inventory::read_info;
use crate::gpu::{
    Architecture, ClockChange, ClockState, GpuBackend, GpuError, GpuInfo, HealthEvent, PowerLimit,
    PowerReading, PowerSemantics, Result, ThrottleReasons,
};

/// How a GPU is opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// How long to watch the energy counter for a step before rejecting it (it steps about
    /// every 10 ms on a real GPU, idle or not).
    pub counter_check: Duration,
    /// Time from the return of a set-clock call until the clock is in force, used for
    /// [`ClockChange::effective_at_s`] (≈20 ms on V100; replace with a calibrated value).
    pub settle_s: f64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            counter_check: Duration::from_millis(300),
            settle_s: 0.020,
        }
    }
}

/// One GPU through NVML.
pub struct NvmlGpu {
    sys: &'static NvmlSystem,
    device: Device<'static>,
    info: GpuInfo,
    memory_mhz: u32,
    /// Supported graphics clocks at `memory_mhz`, highest first (empty if NVML has no list).
    graphics_clocks: Vec<u32>,
    locked: Option<(u32, u32)>,
    mem_locked: Option<(u32, u32)>,
    power_source: PowerSource,
    energy_source: EnergySource,
    integrator: Mutex<Integrator>,
    events: Option<HealthEvents>,
    lost_reported: bool,
    settle_s: f64,
}

impl std::fmt::Debug for NvmlGpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlGpu")
            .field("info", &self.info)
            .field("power_source", &self.power_source)
            .field("energy_source", &self.energy_source)
            .finish_non_exhaustive()
    }
}

impl NvmlGpu {
    /// Opens GPU `index`: reads its inventory and clock table, picks the power source, checks
    /// that the energy counter advances, and registers for XID/ECC events.
    pub fn open(sys: &'static NvmlSystem, index: u32, opts: &OpenOptions) -> Result<Self> {
        let device = sys
            .nvml()
            .device_by_index(index)
            .map_err(|e| system_error(e, "open a GPU"))?;
        let info = read_info(&device, index)?;
        let ctx = Ctx {
            uuid: &info.uuid,
            arch: info.architecture,
        };
        let memory_mhz = match device.supported_memory_clocks() {
            Ok(list) if !list.is_empty() => list.into_iter().max().unwrap_or(0),
            _ => device
                .max_clock_info(Clock::Memory)
                .map_err(|e| device_error(e, "read the memory clock", ctx))?,
        };
        let mut gpu = Self {
            sys,
            device,
            memory_mhz,
            graphics_clocks: Vec::new(),
            locked: None,
            mem_locked: None,
            power_source: PowerSource::PowerUsage(power_usage_semantics(
                info.architecture,
                &info.name,
            )),
            energy_source: EnergySource::Counter,
            integrator: Mutex::new(Integrator::default()),
            events: None,
            lost_reported: false,
            settle_s: opts.settle_s,
            info,
        };
        gpu.graphics_clocks = match gpu.graphics_clocks_raw(memory_mhz) {
            Ok(list) => list,
            Err(NvmlError::NotSupported) => Vec::new(),
            Err(e) => return Err(gpu.err(e, "read the supported graphics clocks")),
        };
        if gpu.instant_field_w().is_ok() {
            gpu.power_source = PowerSource::InstantField;
        }
        gpu.energy_source = gpu.check_energy_counter(opts.counter_check)?;
        gpu.events = match HealthEvents::register(sys.nvml(), &gpu.device) {
            Ok(ev) => ev,
            Err(NvmlError::GpuLost) => {
                return Err(gpu.err(NvmlError::GpuLost, "register for events"));
            }
            Err(e) => {
                tracing::warn!(uuid = %gpu.info.uuid, "no XID/ECC events from this GPU: {e}");
                None
            }
        };
        Ok(gpu)
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            uuid: &self.info.uuid,
            arch: self.info.architecture,
        }
    }

    fn err(&self, e: NvmlError, what: &'static str) -> GpuError {
        device_error(e, what, self.ctx())
    }

    /// The energy counter if it exists and advances within `window`, else why not.
    fn check_energy_counter(&self, window: Duration) -> Result<EnergySource> {
        if !self.info.architecture.has_energy_counter() {
            return Ok(EnergySource::IntegratedPower {
                reason: format!(
                    "no energy counter before Volta ({:?})",
                    self.info.architecture
                ),
            });
        }
        let first = match self.device.total_energy_consumption() {
            Ok(v) => v,
            Err(NvmlError::GpuLost) => {
                return Err(self.err(NvmlError::GpuLost, "read the energy counter"));
            }
            Err(e) => {
                return Ok(EnergySource::IntegratedPower {
                    reason: format!("energy counter unreadable: {e}"),
                });
            }
        };
        let start = Instant::now();
        while start.elapsed() < window {
            std::thread::sleep(Duration::from_millis(5));
            let v = self
                .device
                .total_energy_consumption()
                .map_err(|e| self.err(e, "read the energy counter"))?;
            if v > first {
                return Ok(EnergySource::Counter);
            }
            if v < first {
                return Ok(EnergySource::IntegratedPower {
                    reason: format!("energy counter went backwards ({first} → {v} mJ)"),
                });
            }
        }
        Ok(EnergySource::IntegratedPower {
            reason: format!(
                "energy counter stuck at {first} mJ for {} ms",
                window.as_millis()
            ),
        })
    }

    /// `nvmlDeviceGetSupportedGraphicsClocks` with NVML's size protocol. nvml-wrapper 0.13
    /// treats INSUFFICIENT_SIZE as success and would return a partial list for parts with more
    /// than 128 clocks (V100 has 187), so the call is made here.
    fn graphics_clocks_raw(&self, memory_mhz: u32) -> std::result::Result<Vec<u32>, NvmlError> {
        let lib = self.sys.nvml().lib();
        let f = lib
            .nvmlDeviceGetSupportedGraphicsClocks
            .as_ref()
            .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
        // SAFETY: the handle belongs to the process's NVML instance, which is never shut down.
        let handle = unsafe { self.device.handle() };
        let mut items: Vec<c_uint> = vec![0; 256];
        loop {
            let mut count = items.len() as c_uint;
            // SAFETY: `items` holds `count` entries; NVML writes at most that many.
            let r = unsafe { f(handle, memory_mhz, &mut count, items.as_mut_ptr()) };
            if r == nvmlReturn_enum_NVML_SUCCESS {
                items.truncate(count as usize);
                break;
            } else if r == nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
                && count as usize > items.len()
            {
                items = vec![0; count as usize];
            } else {
                return Err(nvml_try(r).err().unwrap_or(NvmlError::Unknown));
            }
        }
        items.sort_unstable_by(|a, b| b.cmp(a));
        items.dedup();
        Ok(items)
    }

    fn instant_field_w(&self) -> std::result::Result<f64, NvmlError> {
        let mut v = self
            .device
            .field_values_for(&[FieldId(NVML_FI_DEV_POWER_INSTANT)])?;
        let sample = v.pop().ok_or(NvmlError::NotSupported)??;
        match sample.value? {
            SampleValue::U32(mw) => Ok(f64::from(mw) / 1e3),
            SampleValue::U64(mw) => Ok(mw as f64 / 1e3),
            _ => Err(NvmlError::NotSupported),
        }
    }

    /// Highest supported clock at or below `mhz` (what the driver rounds a request to).
    fn floor_clock(&self, mhz: u32) -> u32 {
        self.graphics_clocks
            .iter()
            .copied()
            .find(|&c| c <= mhz)
            .or(self.graphics_clocks.last().copied())
            .unwrap_or(mhz)
    }

    fn change(&self, applied_mhz: u32, t0: Instant) -> ClockChange {
        let call = t0.elapsed().as_secs_f64();
        ClockChange {
            applied_mhz,
            call_latency_s: call,
            effective_at_s: self.now_s() + self.settle_s,
        }
    }

    pub fn system(&self) -> &'static NvmlSystem {
        self.sys
    }
    pub fn power_source(&self) -> PowerSource {
        self.power_source
    }
    pub fn energy_source(&self) -> &EnergySource {
        &self.energy_source
    }
    pub fn has_health_events(&self) -> bool {
        self.events.is_some()
    }
    /// Sets the settle time used for [`ClockChange::effective_at_s`] (from calibration).
    pub fn set_settle_estimate(&mut self, seconds: f64) {
        self.settle_s = seconds.max(0.0);
    }

    /// GPU and memory utilisation (%) over NVML's last sample period.
    pub fn utilization(&self) -> Result<(u32, u32)> {
        let u = self
            .device
            .utilization_rates()
            .map_err(|e| self.err(e, "read utilisation"))?;
        Ok((u.gpu, u.memory))
    }

    /// Whether auto boost is on (Maxwell and older; newer parts report NotSupported).
    pub fn auto_boost(&self) -> Result<bool> {
        let s = self
            .device
            .auto_boosted_clocks_enabled()
            .map_err(|e| self.err(e, "read auto boost"))?;
        Ok(s.is_enabled)
    }

    /// Memory locked clocks (`nvmlDeviceSetMemoryLockedClocks`, Ampere and newer).
    pub fn set_memory_locked_clocks(&mut self, min_mhz: u32, max_mhz: u32) -> Result<()> {
        if self.info.architecture < Architecture::Ampere {
            return Err(GpuError::NotSupported {
                what: "memory locked clocks",
                arch: self.info.architecture,
            });
        }
        self.device
            .set_mem_locked_clocks(min_mhz, max_mhz)
            .map_err(|e| self.err(e, "set memory locked clocks"))?;
        self.mem_locked = Some((min_mhz, max_mhz));
        Ok(())
    }

    pub fn reset_memory_locked_clocks(&mut self) -> Result<()> {
        if self.info.architecture < Architecture::Ampere {
            return Err(GpuError::NotSupported {
                what: "memory locked clocks",
                arch: self.info.architecture,
            });
        }
        self.device
            .reset_mem_locked_clocks()
            .map_err(|e| self.err(e, "reset memory locked clocks"))?;
        self.mem_locked = None;
        Ok(())
    }

    /// Memory clock range this process locked, if any.
    pub fn memory_locked(&self) -> Option<(u32, u32)> {
        self.mem_locked
    }

    /// Auto boost matters on Maxwell and older, where application clocks leave it on.
    fn set_auto_boost(&mut self, on: bool) -> Result<()> {
        if self.info.architecture >= Architecture::Pascal {
            return Ok(());
        }
        match self.device.set_auto_boosted_clocks(on) {
            Ok(()) | Err(NvmlError::NotSupported) => Ok(()),
            Err(e) => Err(self.err(e, "set auto boost")),
        }
    }

    fn lost(&mut self, at_s: f64) -> Result<Vec<HealthEvent>> {
        if self.lost_reported {
            return Err(GpuError::GpuLost {
                uuid: self.info.uuid.clone(),
            });
        }
        self.lost_reported = true;
        Ok(vec![HealthEvent::Lost { at_s }])
    }
}

impl GpuBackend for NvmlGpu {
    fn info(&self) -> &GpuInfo {
        &self.info
    }

    fn now_s(&self) -> f64 {
        self.sys.epoch().elapsed().as_secs_f64()
    }

    fn supported_memory_clocks(&self) -> Result<Vec<u32>> {
        let mut v = self
            .device
            .supported_memory_clocks()
            .map_err(|e| self.err(e, "read supported memory clocks"))?;
        v.sort_unstable_by(|a, b| b.cmp(a));
        Ok(v)
    }

    fn supported_graphics_clocks(&self, memory_mhz: u32) -> Result<Vec<u32>> {
        if memory_mhz == self.memory_mhz && !self.graphics_clocks.is_empty() {
            return Ok(self.graphics_clocks.clone());
        }
        self.graphics_clocks_raw(memory_mhz).map_err(|e| match e {
            NvmlError::NotFound => {
                GpuError::InvalidArgument(format!("memory clock {memory_mhz} MHz is not supported"))
            }
            e => self.err(e, "read supported graphics clocks"),
        })
    }

    fn default_graphics_clock(&self) -> Result<u32> {
        // GPU Boost runs Volta and newer up to the maximum clock while power allows; older parts
        // run at their default application clock.
        if self.info.architecture.has_locked_clocks() {
            self.device
                .max_clock_info(Clock::Graphics)
                .map_err(|e| self.err(e, "read the maximum clock"))
        } else {
            self.device
                .default_applications_clock(Clock::Graphics)
                .map_err(|e| self.err(e, "read the default application clock"))
        }
    }

    fn clocks(&self) -> Result<ClockState> {
        let graphics_mhz = self
            .device
            .clock_info(Clock::Graphics)
            .map_err(|e| self.err(e, "read the graphics clock"))?;
        let memory_mhz = self
            .device
            .clock_info(Clock::Memory)
            .map_err(|e| self.err(e, "read the memory clock"))?;
        let application_mhz = match self.device.applications_clock(Clock::Graphics) {
            Ok(v) => v,
            Err(NvmlError::NotSupported) => 0,
            Err(e) => return Err(self.err(e, "read the application clock")),
        };
        Ok(ClockState {
            graphics_mhz,
            memory_mhz,
            locked: self.locked,
            application_mhz,
        })
    }

    fn set_locked_clocks(&mut self, min_mhz: u32, max_mhz: u32) -> Result<ClockChange> {
        if !self.info.architecture.has_locked_clocks() {
            return Err(GpuError::NotSupported {
                what: "locked graphics clocks",
                arch: self.info.architecture,
            });
        }
        if min_mhz > max_mhz {
            return Err(GpuError::InvalidArgument(format!(
                "locked clock range {min_mhz}..{max_mhz} MHz is reversed"
            )));
        }
        let t0 = Instant::now();
        self.device
            .set_gpu_locked_clocks(GpuLockedClocksSetting::Numeric {
                min_clock_mhz: min_mhz,
                max_clock_mhz: max_mhz,
            })
            .map_err(|e| self.err(e, "set locked clocks"))?;
        self.locked = Some((min_mhz, max_mhz));
        Ok(self.change(self.floor_clock(max_mhz), t0))
    }

    fn reset_locked_clocks(&mut self) -> Result<ClockChange> {
        if !self.info.architecture.has_locked_clocks() {
            return Err(GpuError::NotSupported {
                what: "locked graphics clocks",
                arch: self.info.architecture,
            });
        }
        let t0 = Instant::now();
        self.device
            .reset_gpu_locked_clocks()
            .map_err(|e| self.err(e, "reset locked clocks"))?;
        self.locked = None;
        let f = self.default_graphics_clock().unwrap_or(0);
        Ok(self.change(f, t0))
    }

    fn set_application_clocks(
        &mut self,
        memory_mhz: u32,
        graphics_mhz: u32,
    ) -> Result<ClockChange> {
        let t0 = Instant::now();
        self.device
            .set_applications_clocks(memory_mhz, graphics_mhz)
            .map_err(|e| self.err(e, "set application clocks"))?;
        self.set_auto_boost(false)?;
        Ok(self.change(graphics_mhz, t0))
    }

    fn reset_application_clocks(&mut self) -> Result<ClockChange> {
        let t0 = Instant::now();
        self.device
            .reset_applications_clocks()
            .map_err(|e| self.err(e, "reset application clocks"))?;
        self.set_auto_boost(true)?;
        let f = self.default_graphics_clock().unwrap_or(0);
        Ok(self.change(f, t0))
    }

    fn power(&self) -> Result<PowerReading> {
        let at = Instant::now();
        let (watts, semantics) = match self.power_source {
            PowerSource::InstantField => (
                self.instant_field_w()
                    .map_err(|e| self.err(e, "read instantaneous power"))?,
                PowerSemantics::Instantaneous,
            ),
            PowerSource::PowerUsage(s) => {
                let mw = self
                    .device
                    .power_usage()
                    .map_err(|e| self.err(e, "read power"))?;
                (f64::from(mw) / 1e3, s)
            }
        };
        self.integrator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(at, watts);
        Ok(PowerReading { watts, semantics })
    }

    fn energy_mj(&self) -> Result<u64> {
        match self.energy_source {
            EnergySource::Counter => self
                .device
                .total_energy_consumption()
                .map_err(|e| self.err(e, "read the energy counter")),
            EnergySource::IntegratedPower { .. } => {
                // The reading itself extends the integral.
                self.power()?;
                let j = self
                    .integrator
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .total_j();
                Ok((j * 1e3).floor() as u64)
            }
        }
    }

    fn power_limit(&self) -> Result<PowerLimit> {
        let d = &self.device;
        let current = d
            .power_management_limit()
            .map_err(|e| self.err(e, "read the power limit"))?;
        let default = d
            .power_management_limit_default()
            .map_err(|e| self.err(e, "read the default power limit"))?;
        let c = d
            .power_management_limit_constraints()
            .map_err(|e| self.err(e, "read the power limit range"))?;
        let w = |mw: u32| f64::from(mw) / 1e3;
        Ok(PowerLimit {
            current_w: w(current),
            default_w: w(default),
            min_w: w(c.min_limit),
            max_w: w(c.max_limit),
        })
    }

    fn set_power_limit(&mut self, watts: f64) -> Result<()> {
        if !(watts.is_finite() && watts > 0.0) {
            return Err(GpuError::InvalidArgument(format!("power limit {watts} W")));
        }
        let mw = (watts * 1e3).round() as u32;
        self.device
            .set_power_management_limit(mw)
            .map_err(|e| self.err(e, "set the power limit"))
    }

    fn throttle_reasons(&self) -> Result<ThrottleReasons> {
        let r = self
            .device
            .current_throttle_reasons()
            .map_err(|e| self.err(e, "read throttle reasons"))?;
        Ok(ThrottleReasons {
            gpu_idle: r.contains(NvmlThrottle::GPU_IDLE),
            sw_power_cap: r.contains(NvmlThrottle::SW_POWER_CAP),
            // Every hardware or thermal slowdown holds the clock below the request the same way.
            hw_slowdown: r.intersects(
                NvmlThrottle::HW_SLOWDOWN
                    | NvmlThrottle::HW_THERMAL_SLOWDOWN
                    | NvmlThrottle::HW_POWER_BRAKE_SLOWDOWN
                    | NvmlThrottle::SW_THERMAL_SLOWDOWN,
            ),
            applications_clocks_setting: r.contains(NvmlThrottle::APPLICATIONS_CLOCKS_SETTING),
        })
    }

    fn temperature_c(&self) -> Result<u32> {
        self.device
            .temperature(TemperatureSensor::Gpu)
            .map_err(|e| self.err(e, "read the temperature"))
    }

    fn poll_health_events(&mut self) -> Result<Vec<HealthEvent>> {
        let at = self.now_s();
        let polled = match self.events.as_mut() {
            Some(ev) => ev.drain(at),
            // Without events, a cheap query tells whether the GPU is still there.
            None => self.device.clock_info(Clock::Graphics).map(|_| Vec::new()),
        };
        match polled {
            Ok(v) => Ok(v),
            Err(NvmlError::GpuLost) => self.lost(at),
            Err(e) => Err(self.err(e, "read events")),
        }
    }
}
