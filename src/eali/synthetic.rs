//! Synthetic, deterministic layer cost tables for tests and benches of the scheduler.
//!
//! Physically plausible but not calibrated: time follows a roofline split (memory part + compute
//! part × f_max/f, compute efficiency rising with batch size), power is static + dynamic ∝ V²·f
//! with a flat voltage below a knee. The calibrated numbers live in the simulated GPU and `perf`;
//! nothing here feeds an evaluation.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::costs::LayerCostTable;
use crate::model::{Graph, Op};

/// A made-up V100-like GPU for synthetic tables.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticGpu {
    pub clocks_mhz: Vec<u32>,
    pub batches: Vec<u32>,
    /// Idle board power at the lowest voltage (W).
    pub idle_w: f64,
    /// Dynamic power of a fully busy chip at f_max (W).
    pub dyn_max_w: f64,
    /// Peak FP32 throughput at f_max (FLOP/s) and memory bandwidth (B/s).
    pub peak_flops: f64,
    pub mem_bw: f64,
    /// Voltage at and below the knee, and at f_max (V); knee as a fraction of f_max.
    pub v_min: f64,
    pub v_max: f64,
    pub knee: f64,
}

impl Default for SyntheticGpu {
    fn default() -> Self {
        // 16 clocks from ~40 % to 100 % of 1530 MHz; batches 1..64 in powers of two plus 48.
        let clocks_mhz = (0..16).map(|i| 600 + 62 * i).collect();
        Self {
            clocks_mhz,
            batches: vec![1, 2, 4, 8, 16, 32, 48, 64],
            idle_w: 40.0,
            dyn_max_w: 220.0,
            peak_flops: 15.7e12,
            mem_bw: 900e9,
            v_min: 0.70,
            v_max: 1.08,
            knee: 0.5,
        }
    }
}

impl SyntheticGpu {
    fn f_max(&self) -> f64 {
        f64::from(*self.clocks_mhz.last().unwrap_or(&1))
    }

    fn voltage(&self, f: f64) -> f64 {
        let f_knee = self.knee * self.f_max();
        if f <= f_knee {
            self.v_min
        } else {
            self.v_min + (self.v_max - self.v_min) * (f - f_knee) / (self.f_max() - f_knee)
        }
    }

    /// Idle power at clock `f`: leakage grows with voltage.
    pub fn idle_power(&self, f: f64) -> f64 {
        let v = self.voltage(f) / self.v_max;
        self.idle_w * (0.85 + 0.15 * v * v)
    }

    /// Time and energy of a layer with `comp_s`/`mem_s` seconds of compute/memory work at f_max.
    pub fn layer_cost(&self, comp_s: f64, mem_s: f64, f_mhz: u32) -> (f64, f64) {
        let f = f64::from(f_mhz);
        let comp = comp_s * self.f_max() / f;
        let t = (comp + mem_s).max(2e-6);
        // Activity: the share of time the SMs are busy computing; memory traffic still burns some.
        let activity = (comp + 0.35 * mem_s) / t;
        let v = self.voltage(f) / self.v_max;
        let p = self.idle_power(f) + self.dyn_max_w * activity * v * v * (f / self.f_max());
        (t, p * t)
    }

    /// Table for layers given by their per-sample compute and memory seconds at f_max and batch 1.
    pub fn table(&self, model: &str, layers: &[(String, f64, f64)]) -> LayerCostTable {
        let (mut time_s, mut energy_j) = (Vec::new(), Vec::new());
        for (_, comp1, mem1) in layers {
            let (mut tl, mut el) = (Vec::new(), Vec::new());
            for &b in &self.batches {
                let bf = f64::from(b);
                // Efficiency b/(b + 2.3) rises with batch size: batch 1 runs at ~30 % of the
                // large-batch rate, so compute time is comp1·b/eff = comp1·(b + 2.3).
                let comp = comp1 * (bf + 2.3);
                let mem = mem1 * (0.3 + 0.7 * bf);
                let (tr, er): (Vec<f64>, Vec<f64>) = self
                    .clocks_mhz
                    .iter()
                    .map(|&f| self.layer_cost(comp, mem, f))
                    .unzip();
                tl.push(tr);
                el.push(er);
            }
            time_s.push(tl);
            energy_j.push(el);
        }
        LayerCostTable {
            model: model.to_string(),
            gpu: "synthetic-v100".to_string(),
            layers: layers.iter().map(|l| l.0.clone()).collect(),
            batches: self.batches.clone(),
            clocks_mhz: self.clocks_mhz.clone(),
            time_s,
            energy_j,
            idle_power_w: self
                .clocks_mhz
                .iter()
                .map(|&f| self.idle_power(f64::from(f)))
                .collect(),
            batch_overhead_s: self
                .batches
                .iter()
                .map(|&b| 50e-6 + 8e-6 * f64::from(b))
                .collect(),
        }
    }

    /// Table for a graph, from its MACs and bytes (roofline at f_max).
    pub fn graph_table(&self, graph: &Graph) -> LayerCostTable {
        let layers: Vec<(String, f64, f64)> = graph
            .layers
            .iter()
            .map(|l| {
                let c = graph.layer_cost(l.id, 1);
                let depthwise = matches!(l.op, Op::Conv2d { groups, .. } if groups > 1);
                let eff = if depthwise { 0.1 } else { 0.6 };
                let comp = 2.0 * c.macs as f64 / (self.peak_flops * eff);
                let mem = (c.bytes_read + c.bytes_written) as f64 / self.mem_bw;
                (l.name.clone(), comp, mem)
            })
            .collect();
        self.table(&graph.name, &layers)
    }

    /// `n` layers with random compute fractions and sizes (deterministic in `seed`); each layer
    /// takes between `min_ms` and `max_ms` per sample at f_max.
    pub fn random_table(&self, seed: u64, n: usize, min_ms: f64, max_ms: f64) -> LayerCostTable {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers: Vec<(String, f64, f64)> = (0..n)
            .map(|i| {
                let total = rng.random_range(min_ms..=max_ms) * 1e-3;
                // Bimodal: mostly compute-bound convs, some memory-bound layers.
                let frac = if rng.random_bool(0.6) {
                    rng.random_range(0.75..0.97)
                } else {
                    rng.random_range(0.05..0.35)
                };
                (format!("l{i}"), total * frac, total * (1.0 - frac))
            })
            .collect();
        self.table(&format!("random{seed}"), &layers)
    }
}
