//! The simulated GPU as a serving device: set-calls are scheduled on the simulator at their
//! times through [`SimClockThread`], which makes them one at a time as a real clock thread
//! would (each call blocks its caller for the call latency), and the simulator's sensors and
//! energy counter are read directly.

use super::{Reading, ServingDevice, unix_now_s};
use crate::exec::SimDevice;
use crate::gpu::{ClockChange, ClockTarget, GpuBackend, GpuError, SerialSetCalls};

/// The simulated GPU's clock thread: set-calls timed as [`SerialSetCalls`] makes them, scheduled
/// on the simulator.
#[derive(Debug)]
pub struct SimClockThread {
    device: SimDevice,
    calls: SerialSetCalls,
    /// Device time the last call was made at.
    last_at_s: f64,
}

impl SimClockThread {
    pub fn new(device: SimDevice) -> Self {
        Self {
            device,
            calls: SerialSetCalls::default(),
            last_at_s: f64::NEG_INFINITY,
        }
    }

    /// Issues `target` at device time `at_s` or as soon after as the thread is free. Returns the
    /// change, or `None` when skipped.
    pub fn issue(
        &mut self,
        at_s: f64,
        target: ClockTarget,
    ) -> Result<Option<ClockChange>, GpuError> {
        let mut g = self.device.lock();
        let Some(t) = self.calls.start(at_s, g.now(), target) else {
            return Ok(None);
        };
        let change = match target.graphics_range() {
            Some((lo, hi)) => g.schedule_locked_clocks_at(t, lo, hi),
            None => g.schedule_reset_locked_clocks_at(t),
        }?;
        self.calls.made(t, target, change.call_latency_s);
        self.last_at_s = t;
        Ok(Some(change))
    }

    /// The target last requested (None before the first call).
    pub fn requested(&self) -> Option<ClockTarget> {
        self.calls.requested()
    }

    /// Device time the last call was made at.
    pub fn last_issued_at_s(&self) -> f64 {
        self.last_at_s
    }

    pub fn device(&self) -> &SimDevice {
        &self.device
    }
}

/// The simulated GPU in this process (see the module docs).
pub struct SimServing {
    clock: SimClockThread,
    label: String,
    profile: String,
    /// Unix time minus device time (the device clock runs in real time when serving).
    unix_offset_s: f64,
}

impl SimServing {
    pub fn new(device: SimDevice) -> Self {
        let (label, profile) = {
            let g = device.lock();
            (g.info().uuid.clone(), g.profile().name().to_string())
        };
        let unix_offset_s = unix_now_s() - device.now_s();
        Self {
            clock: SimClockThread::new(device),
            label,
            profile,
            unix_offset_s,
        }
    }

    pub fn device(&self) -> &SimDevice {
        self.clock.device()
    }
}

impl ServingDevice for SimServing {
    fn label(&self) -> &str {
        &self.label
    }
    fn describe(&self) -> String {
        format!("simulated {}", self.profile)
    }
    fn now_s(&self) -> f64 {
        self.device().now_s()
    }
    fn unix_s(&self, t_s: f64) -> f64 {
        t_s + self.unix_offset_s
    }
    fn set_clock_at(&mut self, at_s: f64, target: ClockTarget) -> Result<bool, GpuError> {
        self.clock.issue(at_s, target).map(|c| c.is_some())
    }
    fn requested(&self) -> Option<ClockTarget> {
        self.clock.requested()
    }
    fn reset_clocks(&mut self) -> Result<(), GpuError> {
        let now = self.now_s();
        self.clock.issue(now, ClockTarget::Default).map(|_| ())
    }
    fn clock_mhz(&self) -> Option<u32> {
        self.device().lock().clocks().ok().map(|c| c.graphics_mhz)
    }
    fn read(&self) -> Reading {
        let g = self.device().lock();
        Reading {
            power_w: g.power().ok().map(|p| p.watts),
            clock_mhz: g.clocks().ok().map(|c| c.graphics_mhz),
            energy_mj: g.energy_mj().ok(),
        }
    }
    fn energy_mj(&self) -> Option<u64> {
        self.device().lock().energy_mj().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::DeviceClock;
    use crate::gpu::sim::{GpuProfile, SimGpu};

    fn device() -> SimDevice {
        let p = GpuProfile::builtin("v100-sxm2").unwrap();
        SimDevice::new(SimGpu::new(p, 0, 1), DeviceClock::Virtual)
    }

    #[test]
    fn calls_are_serial_skip_repeats_and_never_go_back_in_time() {
        let dev = device();
        dev.lock().advance_to(1.0);
        let mut ct = SimClockThread::new(dev);
        let (a, b) = (ClockTarget::Locked(900), ClockTarget::Locked(1305));
        let first = ct.issue(1.0, a).unwrap().unwrap();
        assert_eq!(ct.last_issued_at_s(), 1.0);
        assert!(ct.issue(1.001, a).unwrap().is_none());
        // The second call waits for the first's call latency.
        ct.issue(1.0, b).unwrap().unwrap();
        let second_at = ct.last_issued_at_s();
        assert!(
            (second_at - (1.0 + first.call_latency_s)).abs() < 1e-12,
            "{second_at} vs {first:?}"
        );
        // One planned in the past goes out when the thread is free, not before.
        let c = ct.issue(0.5, a).unwrap().unwrap();
        assert!(ct.last_issued_at_s() >= second_at);
        assert!(c.effective_at_s > ct.last_issued_at_s());
        assert_eq!(ct.requested(), Some(a));
    }

    #[test]
    fn simulated_gpu_takes_the_clock_and_reset_unlocks_it() {
        let dev = device();
        let p = GpuProfile::builtin("v100-sxm2").unwrap();
        let low = p.floor_clock_mhz(p.max_clock_mhz() / 2);
        let mut sd = SimServing::new(dev.clone());
        assert!(sd.set_clock_at(0.0, ClockTarget::Locked(low)).unwrap());
        assert!(!sd.set_clock_at(0.0, ClockTarget::Locked(low)).unwrap());
        dev.lock().advance_to(1.0);
        assert_eq!(sd.clock_mhz(), Some(low));
        assert_eq!(dev.lock().clocks().unwrap().locked, Some((low, low)));
        let r = sd.read();
        assert!(r.energy_mj.is_some() && r.power_w.is_some());
        sd.reset_clocks().unwrap();
        dev.lock().advance_to(2.0);
        assert_eq!(dev.lock().clocks().unwrap().locked, None);
        assert!(!sd.agent_attributes());
    }

    #[test]
    fn a_batch_run_through_the_device_carries_its_clock_and_counter() {
        use crate::exec::{BatchRequest, Executor, NoHook, SimExecutor};
        let dev = device();
        let p = GpuProfile::builtin("v100-sxm2").unwrap();
        let low = p.floor_clock_mhz(p.max_clock_mhz() / 2);
        let graph = std::sync::Arc::new(crate::model::zoo::build("resnet18").unwrap());
        let n = graph.layers.len();
        let mut exec = SimExecutor::new(dev.clone(), graph);
        let mut sd = SimServing::new(dev.clone());
        sd.set_clock_at(0.0, ClockTarget::Locked(low)).unwrap();
        dev.lock().advance_to(1.0);
        let units = [0..10, 10..n];
        let run = sd
            .run_batch(
                &mut exec as &mut dyn Executor,
                &BatchRequest {
                    batch: 8,
                    input: None,
                    units: &units,
                },
                &mut NoHook,
            )
            .unwrap();
        assert_eq!(run.units.len(), 2);
        let mut last = 0;
        for u in &run.units {
            assert_eq!((u.clock_start_mhz, u.clock_mhz), (low, low));
            let mj = u.energy_counter_mj.unwrap();
            assert!(mj >= last, "the counter goes forward");
            last = mj;
        }
        assert_eq!(Some(last), sd.energy_mj(), "read at the last unit's end");
    }
}
