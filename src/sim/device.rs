//! The ground-truth GPU as the event loop drives it, and the table of precomputed span costs per
//! (unit, batch size) that keeps the loop free of per-batch cost computation.
//!
//! The simulated GPU implements [`Device`]; its span costs are clock-independent summaries of a
//! run of layers, so the clock in force (and any transition in the middle of a span) is applied
//! by the device when the span runs.

use std::ops::Range;

use crate::gpu::sim::{SimGpu, SpanCost};
use crate::gpu::{ClockChange, GpuBackend, GpuError, LayerWork};

use crate::policy::ClockTarget;

/// A GPU on virtual time that runs precomputed spans of layers.
pub trait Device {
    /// Ground-truth cost summary of a run of layers at one batch size.
    type Span;
    /// Builds the span for consecutive layers (whole-batch work figures).
    fn span(&self, works: &[LayerWork]) -> Self::Span;
    fn now_s(&self) -> f64;
    /// Runs the span at whatever clock is in force, applying clock changes that land during it.
    fn run_span(&mut self, span: &Self::Span) -> Result<(), GpuError>;
    /// Idles (at the clock in force, or the GPU's own idle behaviour when unlocked) until `t_s`.
    fn idle_until(&mut self, t_s: f64) -> Result<(), GpuError>;
    /// A set-call issued by the clock thread at device time `at_s ≥ now_s()`.
    fn schedule_clock(&mut self, at_s: f64, target: ClockTarget) -> Result<ClockChange, GpuError>;
    /// Graphics clock in force now (MHz).
    fn graphics_clock_mhz(&self) -> u32;
    /// Energy counter (whole mJ, updated every counter period).
    fn energy_mj(&self) -> Result<u64, GpuError>;
}

/// Spans for every unit of a chain and every batch size `1..=max_batch`.
#[derive(Debug, Clone)]
pub struct SpanTable<S> {
    max_batch: u32,
    /// `spans[unit * max_batch + (batch - 1)]`.
    spans: Vec<S>,
    units: usize,
}

impl<S> SpanTable<S> {
    /// Builds the table for `units` (layer ranges) with `work(layer, batch)` giving each layer's
    /// whole-batch work.
    pub fn build<D: Device<Span = S>>(
        device: &D,
        units: &[Range<usize>],
        max_batch: u32,
        mut work: impl FnMut(usize, u32) -> LayerWork,
    ) -> Self {
        let mut spans = Vec::with_capacity(units.len() * max_batch as usize);
        let mut works = Vec::new();
        for unit in units {
            for b in 1..=max_batch {
                works.clear();
                works.extend(unit.clone().map(|l| work(l, b)));
                spans.push(device.span(&works));
            }
        }
        Self {
            max_batch,
            spans,
            units: units.len(),
        }
    }

    pub fn units(&self) -> usize {
        self.units
    }
    pub fn max_batch(&self) -> u32 {
        self.max_batch
    }
    /// Span of `unit` at `batch` (1-based, ≤ max_batch).
    pub fn get(&self, unit: usize, batch: u32) -> &S {
        &self.spans[unit * self.max_batch as usize + (batch as usize - 1)]
    }
}

/// The calibrated simulated GPU as the ground truth. Spans carry only the summed work parts
/// (no clock table): the GPU prices them at whatever clock is in force, including transitions
/// that land mid-span, noise and the power cap.
impl Device for SimGpu {
    type Span = SpanCost;

    fn span(&self, works: &[LayerWork]) -> SpanCost {
        SpanCost::from_layers(self.profile(), works, &[])
    }
    fn now_s(&self) -> f64 {
        self.now()
    }
    fn run_span(&mut self, span: &SpanCost) -> Result<(), GpuError> {
        SimGpu::run_span(self, span).map(|_| ())
    }
    fn idle_until(&mut self, t_s: f64) -> Result<(), GpuError> {
        self.advance_to(t_s);
        Ok(())
    }
    fn schedule_clock(&mut self, at_s: f64, target: ClockTarget) -> Result<ClockChange, GpuError> {
        match target.graphics_range() {
            Some((lo, hi)) => self.schedule_locked_clocks_at(at_s, lo, hi),
            None => self.schedule_reset_locked_clocks_at(at_s),
        }
    }
    fn graphics_clock_mhz(&self) -> u32 {
        self.current_clock_mhz()
    }
    fn energy_mj(&self) -> Result<u64, GpuError> {
        GpuBackend::energy_mj(self)
    }
}
