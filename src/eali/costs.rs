//! Predicted per-layer cost tables: the plain-data contract between the performance model
//! (`perf`, which fills them from profiles and the power model) and the scheduler (which sums them
//! into optimization units and plans over them).

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Time and energy of every layer of one model on one GPU, over a grid of batch sizes and
/// graphics clocks.
///
/// Indexing: `time_s[layer][bi][fi]` is the predicted time of layer `layer` for batch size
/// `batches[bi]` at graphics clock `clocks_mhz[fi]`; `energy_j` likewise (total board energy
/// while the layer runs, static power included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCostTable {
    pub model: String,
    pub gpu: String,
    /// Layer names, in the graph's topological order.
    pub layers: Vec<String>,
    /// Batch sizes, ascending.
    pub batches: Vec<u32>,
    /// Graphics clocks (MHz), ascending.
    pub clocks_mhz: Vec<u32>,
    pub time_s: Vec<Vec<Vec<f64>>>,
    pub energy_j: Vec<Vec<Vec<f64>>>,
    /// Board power while the GPU idles between batches at each clock of `clocks_mhz` (W).
    pub idle_power_w: Vec<f64>,
    /// Fixed per-batch overhead outside the layers (input copy, launch), per batch size (s).
    pub batch_overhead_s: Vec<f64>,
}

impl LayerCostTable {
    /// Index of the table clock nearest to `mhz`.
    pub fn clock_index(&self, mhz: u32) -> usize {
        let c = &self.clocks_mhz;
        (0..c.len())
            .min_by_key(|&i| c[i].abs_diff(mhz))
            .unwrap_or(0)
    }

    /// Predicted (time, energy) of `layer` at `batch` and `clock_mhz`: nearest table clock,
    /// linear in the batch between table batch sizes (proportional beyond the largest).
    pub fn layer(&self, layer: usize, batch: u32, clock_mhz: u32) -> (f64, f64) {
        self.layer_at(layer, batch, self.clock_index(clock_mhz))
    }

    /// [`layer`](Self::layer) at the table's clock `fi`.
    pub fn layer_at(&self, layer: usize, batch: u32, fi: usize) -> (f64, f64) {
        let at = |bi: usize| (self.time_s[layer][bi][fi], self.energy_j[layer][bi][fi]);
        let b = f64::from(batch);
        let hi = self.batches.partition_point(|&x| x < batch);
        if hi == 0 {
            return at(0);
        }
        if hi == self.batches.len() {
            let last = self.batches.len() - 1;
            let (tt, e) = at(last);
            let s = b / f64::from(self.batches[last]);
            return (tt * s, e * s);
        }
        let (b0, b1) = (f64::from(self.batches[hi - 1]), f64::from(self.batches[hi]));
        let w = (b - b0) / (b1 - b0);
        let ((t0, e0), (t1, e1)) = (at(hi - 1), at(hi));
        (t0 + w * (t1 - t0), e0 + w * (e1 - e0))
    }

    /// Predicted idle power at a clock (W).
    pub fn idle_w(&self, clock_mhz: u32) -> f64 {
        self.idle_power_w
            .get(self.clock_index(clock_mhz))
            .copied()
            .unwrap_or(0.0)
    }

    /// Predicted time of a whole batch of `batch` at `clock_mhz`: every layer plus the batch's
    /// overhead (s).
    pub fn batch_time_s(&self, batch: u32, clock_mhz: u32) -> f64 {
        // One unit of every layer.
        let all = 0..self.layers.len();
        self.plan_time_s(std::slice::from_ref(&all), batch, &[Some(clock_mhz)])
    }

    /// Predicted time of a batch of `batch` over `units` where unit `i` runs at
    /// `unit_clocks_mhz[i]` (a unit without a clock, or past the end, at the highest one), the
    /// batch's overhead included (s).
    pub fn plan_time_s(
        &self,
        units: &[Range<usize>],
        batch: u32,
        unit_clocks_mhz: &[Option<u32>],
    ) -> f64 {
        let top = self.clocks_mhz.len().saturating_sub(1);
        let layers: f64 = units
            .iter()
            .enumerate()
            .map(|(i, unit)| {
                let fi = unit_clocks_mhz
                    .get(i)
                    .copied()
                    .flatten()
                    .map_or(top, |mhz| self.clock_index(mhz));
                unit.clone()
                    .map(|l| self.layer_at(l, batch, fi).0)
                    .sum::<f64>()
            })
            .sum();
        let overhead = batch
            .checked_sub(1)
            .and_then(|i| self.batch_overhead_s.get(i as usize))
            .copied()
            .unwrap_or(0.0);
        layers + overhead
    }
}
