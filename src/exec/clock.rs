//! Clock control for the serving loop: the [`ClockActuator`] trait (what sets a GPU clock) and
//! the [`ClockThread`] that issues a batch's set-calls in order, one at a time, skipping a call
//! whose target is already requested, so the batch path never waits on a clock change.

use crate::gpu::ClockTarget;
use crate::gpu::{ClockChange, GpuBackend, GpuError};

use super::sim::SimDevice;

/// Something that can set a GPU's graphics clock: the simulated GPU in this process, NVML, or
/// (in a cluster) the node agent over its control socket.
pub trait ClockActuator: Send {
    /// Issues a set-call at device time `at_s` (the caller's clock thread makes it then).
    fn issue(&mut self, at_s: f64, target: ClockTarget) -> Result<ClockChange, GpuError>;
    /// Device time now (s).
    fn now_s(&self) -> f64;
    /// Graphics clock in force now (MHz).
    fn current_mhz(&self) -> Result<u32, GpuError>;
}

impl ClockActuator for SimDevice {
    fn issue(&mut self, at_s: f64, target: ClockTarget) -> Result<ClockChange, GpuError> {
        let mut g = self.lock();
        let at = at_s.max(g.now());
        match target.graphics_range() {
            Some((lo, hi)) => g.schedule_locked_clocks_at(at, lo, hi),
            None => g.schedule_reset_locked_clocks_at(at),
        }
    }
    fn now_s(&self) -> f64 {
        SimDevice::now_s(self)
    }
    fn current_mhz(&self) -> Result<u32, GpuError> {
        self.lock().clocks().map(|c| c.graphics_mhz)
    }
}

/// Serial set-calls: each starts when both its planned time and the previous call have come
/// (a set-call blocks its caller for the call latency), and a call for the target already
/// requested is skipped.
#[derive(Debug)]
pub struct ClockThread<A> {
    actuator: A,
    free_at_s: f64,
    last: Option<ClockTarget>,
    issued: u64,
    skipped: u64,
}

impl<A: ClockActuator> ClockThread<A> {
    pub fn new(actuator: A) -> Self {
        Self {
            actuator,
            free_at_s: f64::NEG_INFINITY,
            last: None,
            issued: 0,
            skipped: 0,
        }
    }

    /// Issues `target` at device time `at_s` or as soon after as the thread is free. Returns the
    /// change, or `None` when skipped.
    pub fn issue(
        &mut self,
        at_s: f64,
        target: ClockTarget,
    ) -> Result<Option<ClockChange>, GpuError> {
        if self.last == Some(target) {
            self.skipped += 1;
            return Ok(None);
        }
        let t = at_s.max(self.free_at_s).max(self.actuator.now_s());
        let change = self.actuator.issue(t, target)?;
        self.free_at_s = t + change.call_latency_s;
        self.last = Some(target);
        self.issued += 1;
        Ok(Some(change))
    }

    /// The target last requested (None before the first call).
    pub fn requested(&self) -> Option<ClockTarget> {
        self.last
    }
    pub fn issued(&self) -> u64 {
        self.issued
    }
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
    pub fn actuator(&self) -> &A {
        &self.actuator
    }

    /// Puts the GPU back to its default clocks (on shutdown: a GPU is never left locked).
    pub fn reset(&mut self) -> Result<(), GpuError> {
        self.last = None;
        let now = self.actuator.now_s();
        self.issue(now, ClockTarget::Default).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::sim::DeviceClock;
    use crate::gpu::sim::{GpuProfile, SimGpu};

    /// Records calls; each blocks for 4 ms and lands 20 ms later.
    struct Fake {
        now: f64,
        calls: Vec<(f64, ClockTarget)>,
    }
    impl ClockActuator for Fake {
        fn issue(&mut self, at_s: f64, target: ClockTarget) -> Result<ClockChange, GpuError> {
            self.calls.push((at_s, target));
            Ok(ClockChange {
                applied_mhz: 0,
                call_latency_s: 0.004,
                effective_at_s: at_s + 0.024,
            })
        }
        fn now_s(&self) -> f64 {
            self.now
        }
        fn current_mhz(&self) -> Result<u32, GpuError> {
            Ok(0)
        }
    }

    #[test]
    fn calls_are_serial_skip_repeats_and_never_go_back_in_time() {
        let mut ct = ClockThread::new(Fake {
            now: 1.0,
            calls: Vec::new(),
        });
        let (a, b) = (ClockTarget::Locked(900), ClockTarget::Locked(1300));
        ct.issue(1.0, a).unwrap().unwrap();
        assert!(ct.issue(1.001, a).unwrap().is_none());
        ct.issue(1.001, b).unwrap().unwrap();
        ct.issue(0.5, a).unwrap().unwrap();
        ct.issue(2.0, b).unwrap().unwrap();
        let times: Vec<f64> = ct.actuator().calls.iter().map(|c| c.0).collect();
        // The second call waits for the first's 4 ms; one planned in the past goes out now.
        for (t, want) in times.iter().zip([1.0, 1.004, 1.008, 2.0]) {
            assert!((t - want).abs() < 1e-12, "{times:?}");
        }
        assert_eq!(times.len(), 4);
        assert_eq!((ct.issued(), ct.skipped()), (4, 1));
        assert_eq!(ct.requested(), Some(b));
    }

    #[test]
    fn simulated_gpu_takes_the_clock_and_reset_unlocks_it() {
        let p = GpuProfile::builtin("v100-sxm2").unwrap();
        let fmax = p.max_clock_mhz();
        let low = p.floor_clock_mhz(fmax / 2);
        let dev = SimDevice::new(SimGpu::new(p, 0, 1), DeviceClock::Virtual);
        let mut ct = ClockThread::new(dev.clone());
        ct.issue(0.0, ClockTarget::Locked(low)).unwrap().unwrap();
        dev.lock().advance_to(1.0);
        assert_eq!(ct.actuator().current_mhz().unwrap(), low);
        assert_eq!(dev.lock().clocks().unwrap().locked, Some((low, low)));
        ct.reset().unwrap();
        dev.lock().advance_to(2.0);
        assert_eq!(dev.lock().clocks().unwrap().locked, None);
    }
}
