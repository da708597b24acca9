//! [`GpuBackend`] for [`SimGpu`], and the layer runs the profiler's executor makes on it: the
//! NVML-shaped view of the simulated GPU, with NVML's generation limits (no locked clocks or energy counter before Volta) and
//! error behaviour (lost GPU, missing permission).

use super::device::{ClockCmd, SimGpu};
use crate::gpu::{
    ClockChange, ClockState, GpuBackend, GpuError, GpuInfo, HealthEvent, LayerWork, PowerLimit,
    PowerReading, PowerSemantics, Result, ThrottleReasons,
};

/// Noise of a repeated layer shrinks with the repetitions (kernel jitter averages out) down to a
/// quarter of the per-run figure (run-to-run variation that does not average out).
fn repeat_noise_scale(repeats: u32) -> f64 {
    (1.0 / f64::from(repeats.max(1)).sqrt()).max(0.25)
}

impl SimGpu {
    /// A blocking set-clock call made by the caller at `now`: the caller's time (and this GPU's,
    /// which idles meanwhile) advances by the call latency; the new clock follows after the
    /// settle delay.
    fn blocking_cmd(&mut self, cmd: ClockCmd, applied_mhz: u32) -> ClockChange {
        let change = self.schedule_cmd(self.now_s, cmd, applied_mhz);
        self.advance_to(self.now_s + change.call_latency_s);
        change
    }
}

impl GpuBackend for SimGpu {
    fn info(&self) -> &GpuInfo {
        &self.info
    }

    fn now_s(&self) -> f64 {
        self.now_s
    }

    fn supported_memory_clocks(&self) -> Result<Vec<u32>> {
        self.check_alive()?;
        Ok(vec![self.profile.memory_clock_mhz()])
    }

    fn supported_graphics_clocks(&self, memory_mhz: u32) -> Result<Vec<u32>> {
        self.check_alive()?;
        if memory_mhz != self.profile.memory_clock_mhz() {
            return Err(GpuError::InvalidArgument(format!(
                "memory clock {memory_mhz} MHz is not supported (supported: {})",
                self.profile.memory_clock_mhz()
            )));
        }
        Ok(self.profile.supported_clocks_mhz().to_vec())
    }

    fn default_graphics_clock(&self) -> Result<u32> {
        self.check_alive()?;
        Ok(self.profile.default_clock_under_load_mhz())
    }

    fn clocks(&self) -> Result<ClockState> {
        self.check_alive()?;
        Ok(ClockState {
            graphics_mhz: self.current_clock_mhz(),
            memory_mhz: self.profile.memory_clock_mhz(),
            locked: self.locked,
            application_mhz: self
                .app_mhz
                .unwrap_or(self.profile.spec().clocks.default_application_mhz),
        })
    }

    fn set_locked_clocks(&mut self, min_mhz: u32, max_mhz: u32) -> Result<ClockChange> {
        let (min, max) = self.check_lock(min_mhz, max_mhz)?;
        Ok(self.blocking_cmd(ClockCmd::Lock(min, max), max))
    }

    fn reset_locked_clocks(&mut self) -> Result<ClockChange> {
        self.check_setter("reset locked clocks")?;
        if !self.profile.has_locked_clocks() {
            return Err(self.not_supported("locked graphics clocks"));
        }
        let f = self
            .app_mhz
            .unwrap_or(self.profile.default_clock_under_load_mhz());
        Ok(self.blocking_cmd(ClockCmd::ResetLock, f))
    }

    fn set_application_clocks(
        &mut self,
        memory_mhz: u32,
        graphics_mhz: u32,
    ) -> Result<ClockChange> {
        self.check_setter("set application clocks")?;
        // NVML accepts only (memory, graphics) pairs from the supported list.
        if memory_mhz != self.profile.memory_clock_mhz()
            || !self.profile.is_supported_clock(graphics_mhz)
        {
            return Err(GpuError::InvalidArgument(format!(
                "application clocks ({memory_mhz}, {graphics_mhz}) MHz are not a supported pair"
            )));
        }
        Ok(self.blocking_cmd(ClockCmd::App(graphics_mhz), graphics_mhz))
    }

    fn reset_application_clocks(&mut self) -> Result<ClockChange> {
        self.check_setter("reset application clocks")?;
        let f = self.profile.default_clock_under_load_mhz();
        Ok(self.blocking_cmd(ClockCmd::ResetApp, f))
    }

    fn power(&self) -> Result<PowerReading> {
        self.check_alive()?;
        let semantics = self.profile.power_semantics();
        let watts = if self.meter.truth_j() == 0.0 {
            self.idle_power_now_w()
        } else {
            match semantics {
                PowerSemantics::Instantaneous => self.meter.last_power_w(),
                PowerSemantics::Averaged1s => self.meter.average_power_w(),
            }
        };
        Ok(PowerReading { watts, semantics })
    }

    fn energy_mj(&self) -> Result<u64> {
        self.check_alive()?;
        if !self.profile.has_energy_counter() {
            return Err(self.not_supported("total energy counter"));
        }
        Ok(self
            .faults
            .stuck_counter_mj
            .unwrap_or_else(|| self.meter.published_mj()))
    }

    fn power_limit(&self) -> Result<PowerLimit> {
        self.check_alive()?;
        let p = &self.profile.spec().power;
        Ok(PowerLimit {
            current_w: self.power_limit_w,
            default_w: p.limit_default_w,
            min_w: p.limit_min_w,
            max_w: p.limit_max_w,
        })
    }

    fn set_power_limit(&mut self, watts: f64) -> Result<()> {
        self.check_setter("set the power limit")?;
        let p = &self.profile.spec().power;
        if !(p.limit_min_w..=p.limit_max_w).contains(&watts) {
            return Err(GpuError::InvalidArgument(format!(
                "power limit {watts} W outside {}..{} W",
                p.limit_min_w, p.limit_max_w
            )));
        }
        self.power_limit_w = watts;
        Ok(())
    }

    fn throttle_reasons(&self) -> Result<ThrottleReasons> {
        self.check_alive()?;
        Ok(ThrottleReasons {
            gpu_idle: !self.busy_now,
            sw_power_cap: self.busy_now && self.last_run_capped,
            hw_slowdown: false,
            applications_clocks_setting: self.locked.is_none() && self.app_mhz.is_some(),
        })
    }

    fn temperature_c(&self) -> Result<u32> {
        self.check_alive()?;
        let t = &self.profile.spec().thermal;
        Ok((t.ambient_c + t.c_per_w * self.meter.thermal_w())
            .round()
            .max(0.0) as u32)
    }

    fn poll_health_events(&mut self) -> Result<Vec<HealthEvent>> {
        if self.faults.lost && self.faults.lost_reported && self.events.is_empty() {
            return Err(self.lost_error());
        }
        if self.faults.lost {
            self.faults.lost_reported = true;
        }
        Ok(std::mem::take(&mut self.events))
    }

    fn idle(&mut self, seconds: f64) -> Result<()> {
        self.check_alive()?;
        if seconds.is_nan() || seconds < 0.0 {
            return Err(GpuError::InvalidArgument(format!("idle for {seconds} s")));
        }
        self.advance_to(self.now_s + seconds);
        Ok(())
    }
}

impl SimGpu {
    /// Runs the layer `repeats` times back to back and returns the elapsed device time (s).
    /// O(1) in `repeats`: the repeated layer is one piece of work with scaled parts, capped by
    /// the power controller on its own power (a repeated layer runs long enough for that).
    pub fn run_layer(&mut self, work: &LayerWork, repeats: u32) -> Result<f64> {
        if repeats == 0 {
            self.check_alive()?;
            return Ok(0.0);
        }
        let parts = self.profile.physics().parts(work) * f64::from(repeats);
        let run = self.run_parts(&parts, repeat_noise_scale(repeats))?;
        Ok(run.duration_s())
    }
}
