//! A small exact device for testing the event loop in isolation from the calibrated simulator:
//! roofline time, linear power in the clock, deterministic set-call latency and settling, and a
//! whole-mJ energy counter.

use crate::gpu::{ClockChange, GpuError, LayerWork};

use super::device::Device;
use crate::policy::ClockTarget;

pub const F_MAX: u32 = 1500;
pub const F_DEFAULT: u32 = 1300;
pub const CALL_S: f64 = 0.004;
pub const SETTLE_S: f64 = 0.020;

#[derive(Debug, Clone, Copy)]
pub struct Span {
    comp_s: f64,
    mem_s: f64,
}

#[derive(Debug, Clone)]
pub struct TestDevice {
    now: f64,
    clock: u32,
    /// Pending (effective time, clock), ascending.
    pending: Vec<(f64, u32)>,
    energy_j: f64,
    pub calls: Vec<(f64, ClockTarget)>,
}

impl TestDevice {
    pub fn new() -> Self {
        Self {
            now: 0.0,
            clock: F_DEFAULT,
            pending: Vec::new(),
            energy_j: 0.0,
            calls: Vec::new(),
        }
    }
    fn busy_power(f: u32) -> f64 {
        60.0 + 0.12 * f64::from(f)
    }
    fn idle_power(f: u32) -> f64 {
        30.0 + 0.01 * f64::from(f)
    }
    /// Idles until `until`, applying pending clock changes on the way.
    fn advance_idle(&mut self, until: f64) {
        while self.now < until {
            let next_change = self.pending.first().map_or(f64::INFINITY, |p| p.0);
            let seg_end = until.min(next_change);
            self.energy_j += Self::idle_power(self.clock) * (seg_end - self.now);
            self.now = seg_end;
            if seg_end >= next_change {
                self.clock = self.pending.remove(0).1;
            }
        }
    }
    pub fn exact_energy_j(&self) -> f64 {
        self.energy_j
    }
}

impl Device for TestDevice {
    type Span = Span;

    fn span(&self, works: &[LayerWork]) -> Span {
        // 10 TFLOP/s and 1 TB/s at f_max; memory part clock-independent.
        let comp_s = works.iter().map(|w| w.flops).sum::<f64>() / 1e13;
        let mem_s = works.iter().map(|w| w.bytes).sum::<f64>() / 1e12;
        Span { comp_s, mem_s }
    }
    fn now_s(&self) -> f64 {
        self.now
    }
    fn run_span(&mut self, span: &Span) -> Result<(), GpuError> {
        // Fraction of the span done; each clock segment progresses at its own speed.
        let mut left = 1.0;
        while left > 0.0 {
            let f = self.clock;
            let dur_full = span.mem_s + span.comp_s * f64::from(F_MAX) / f64::from(f);
            let next_change = self.pending.first().map_or(f64::INFINITY, |p| p.0);
            let finish = self.now + left * dur_full;
            let seg_end = finish.min(next_change);
            self.energy_j += Self::busy_power(f) * (seg_end - self.now);
            if dur_full > 0.0 {
                left -= (seg_end - self.now) / dur_full;
            } else {
                left = 0.0;
            }
            self.now = seg_end;
            if seg_end >= next_change && seg_end < finish {
                self.clock = self.pending.remove(0).1;
            } else {
                left = 0.0;
            }
        }
        Ok(())
    }
    fn idle_until(&mut self, t_s: f64) -> Result<(), GpuError> {
        self.advance_idle(t_s);
        Ok(())
    }
    fn schedule_clock(&mut self, at_s: f64, target: ClockTarget) -> Result<ClockChange, GpuError> {
        let mhz = target
            .graphics_range()
            .map_or(F_DEFAULT, |(_, f)| f.min(F_MAX));
        self.calls.push((at_s, target));
        let eff = at_s + CALL_S + SETTLE_S;
        self.pending.push((eff, mhz));
        self.pending.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(ClockChange {
            applied_mhz: mhz,
            call_latency_s: CALL_S,
            effective_at_s: eff,
        })
    }
    fn graphics_clock_mhz(&self) -> u32 {
        self.clock
    }
    fn energy_mj(&self) -> Result<u64, GpuError> {
        Ok((self.energy_j * 1000.0).floor() as u64)
    }
}
