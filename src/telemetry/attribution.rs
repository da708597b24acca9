//! Energy attribution: the GPU's energy counter, read at every unit boundary, split over the
//! optimization units that ran and then over their layers.
//!
//! The counter (NVML's total energy, whole mJ) publishes a new value about every 10 ms, so each
//! change covers the window since the previous publication. A change seen between two reads at
//! `t₁ < t₂` was published inside `(t₁, t₂]`; with reads at unit boundaries (milliseconds apart)
//! that pins the publication time to the midpoint within half a unit. When reads are further apart
//! than a period (the GPU idled), the phase is unknown and the publication is taken half a period
//! before the read. The energy of a window is split over the unit segments inside it in proportion
//! to their *predicted* power × time in the window (the power model, as EALI plans with it), the
//! rest of the window being idle at the predicted idle power; within a unit, over its layers in
//! proportion to their predicted energies. Only the relative weights come from the model: every
//! joule attributed was measured by the counter.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use crate::eali::costs::LayerCostTable;

/// A stretch of device time when one unit ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start_s: f64,
    pub end_s: f64,
    /// Predicted mean board power of the unit over the segment (W).
    pub power_w: f64,
    /// Where the segment's energy goes: `(key, fraction)`, fractions summing to 1 (the caller's
    /// keys, e.g. one per layer).
    pub shares: Arc<[(usize, f64)]>,
}

/// Energy handed out for one counter change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attribution {
    /// `(key, joules)` per share key of the segments in the window.
    pub busy: Vec<(usize, f64)>,
    /// Energy of the window's idle time (J).
    pub idle_j: f64,
}

impl Attribution {
    pub fn total_j(&self) -> f64 {
        self.idle_j + self.busy.iter().map(|b| b.1).sum::<f64>()
    }
}

/// Splits energy-counter changes over unit segments.
#[derive(Debug, Clone)]
pub struct Attributor {
    period_s: f64,
    /// Last read: device time and counter value.
    last_read: Option<(f64, u64)>,
    /// Device time up to which energy has been handed out.
    accounted_to_s: f64,
    segments: VecDeque<Segment>,
}

impl Attributor {
    /// `period_s`: the counter's update period (10 ms on NVIDIA GPUs).
    pub fn new(period_s: f64) -> Self {
        Self {
            period_s: period_s.max(1e-6),
            last_read: None,
            accounted_to_s: f64::NEG_INFINITY,
            segments: VecDeque::new(),
        }
    }

    /// Records that a unit ran over `seg` (segments arrive in time order).
    pub fn busy(&mut self, seg: Segment) {
        if seg.end_s > seg.start_s {
            self.segments.push_back(seg);
        }
    }

    /// A counter read at device time `t_s`; `idle_w` is the predicted idle power for the gaps.
    /// Returns the attribution when the counter moved since the last read.
    pub fn reading(&mut self, t_s: f64, counter_mj: u64, idle_w: f64) -> Option<Attribution> {
        let Some((t_prev, prev_mj)) = self.last_read else {
            self.last_read = Some((t_s, counter_mj));
            self.accounted_to_s = t_s - self.period_s / 2.0;
            return None;
        };
        if counter_mj <= prev_mj {
            self.last_read = Some((t_s, prev_mj));
            return None;
        }
        let published = if t_s - t_prev <= self.period_s {
            (t_prev + t_s) / 2.0
        } else {
            t_s - self.period_s / 2.0
        };
        let from = self.accounted_to_s;
        let to = published.max(from);
        let joules = (counter_mj - prev_mj) as f64 / 1000.0;
        self.last_read = Some((t_s, counter_mj));
        self.accounted_to_s = to;
        Some(self.split(from, to, joules, idle_w))
    }

    fn split(&mut self, from: f64, to: f64, joules: f64, idle_w: f64) -> Attribution {
        let mut weights = Vec::new();
        let mut busy_s = 0.0;
        for (i, s) in self.segments.iter().enumerate() {
            let overlap = s.end_s.min(to) - s.start_s.max(from);
            if overlap > 0.0 {
                weights.push((i, s.power_w * overlap));
                busy_s += overlap;
            }
        }
        let idle_weight = idle_w.max(0.0) * ((to - from) - busy_s).max(0.0);
        let total: f64 = idle_weight + weights.iter().map(|w| w.1).sum::<f64>();
        let mut out = Attribution::default();
        if total.is_nan() || total <= 0.0 {
            out.idle_j = joules;
        } else {
            out.idle_j = joules * idle_weight / total;
            for (i, w) in weights {
                let j = joules * w / total;
                for &(key, frac) in self.segments[i].shares.iter() {
                    out.busy.push((key, j * frac));
                }
            }
        }
        while self.segments.front().is_some_and(|s| s.end_s <= to) {
            self.segments.pop_front();
        }
        out
    }
}

/// Predicted per-layer power from a cost table (the power model's predictions): the weights of
/// [`Segment`]s.
#[derive(Debug, Clone)]
pub struct LayerPowerModel {
    table: LayerCostTable,
}

impl LayerPowerModel {
    pub fn new(table: LayerCostTable) -> Self {
        Self { table }
    }

    pub fn table(&self) -> &LayerCostTable {
        &self.table
    }

    pub(crate) fn clock_index(&self, mhz: u32) -> usize {
        self.table.clock_index(mhz)
    }

    /// Predicted (time, energy) of `layer` at `batch` and `clock_mhz` ([`LayerCostTable::layer`]).
    pub fn layer(&self, layer: usize, batch: u32, clock_mhz: u32) -> (f64, f64) {
        self.table.layer(layer, batch, clock_mhz)
    }

    /// [`layer`](Self::layer) at the table's clock `fi`.
    pub(crate) fn layer_at(&self, layer: usize, batch: u32, fi: usize) -> (f64, f64) {
        self.table.layer_at(layer, batch, fi)
    }

    /// Predicted idle power at a clock (W).
    pub fn idle_w(&self, clock_mhz: u32) -> f64 {
        self.table.idle_w(clock_mhz)
    }

    /// The segment of a unit over `layers` that ran from `start_s` to `end_s` at `batch` and
    /// `clock_mhz`: predicted power, and shares keyed by layer index.
    pub fn segment(
        &self,
        layers: Range<usize>,
        batch: u32,
        clock_mhz: u32,
        start_s: f64,
        end_s: f64,
    ) -> Segment {
        let per: Vec<(usize, f64, f64)> = layers
            .map(|l| {
                let (t, e) = self.layer(l, batch, clock_mhz);
                (l, t, e)
            })
            .collect();
        let (time, energy): (f64, f64) = per.iter().fold((0.0, 0.0), |a, p| (a.0 + p.1, a.1 + p.2));
        let n = per.len().max(1) as f64;
        let shares: Arc<[(usize, f64)]> = per
            .iter()
            .map(|&(l, _, e)| (l, if energy > 0.0 { e / energy } else { 1.0 / n }))
            .collect();
        Segment {
            start_s,
            end_s,
            power_w: if time > 0.0 { energy / time } else { 0.0 },
            shares,
        }
    }
}

#[cfg(test)]
#[path = "attribution_tests.rs"]
mod tests;
