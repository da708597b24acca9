//! The physics floor of a case: an energy per request that no policy can go below on the
//! simulated GPU, however much it knows, so a target can be checked for reachability before a
//! policy is blamed for missing it.
//!
//! Over a run of `D` seconds serving `N` requests the GPU draws at least its lowest power `P₀`
//! all the time (idle at the lowest clock or in the idle P-state, whichever is lower), and each
//! layer it runs costs `e − P₀·t` above that. So
//!
//! `E / N ≥ P₀·D/N + min over batch sizes b ≤ max of (Σ over layers of min over clocks of
//! (e − P₀·t)) / b`
//!
//! with every supported clock allowed per layer, clock changes free and instant, no latency SLO
//! and no queueing: all of them only add energy. It is the noise-free physics (the same terms
//! the simulator draws its noise around), power cap included, so a run can land below it by the
//! noise alone, by a percent or so.

use serde::Serialize;

use crate::gpu::sim::GpuProfile;
use crate::model::Graph;

/// The floor's terms for one (model, GPU) pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Floor {
    /// Lowest power the GPU draws at all (W).
    pub idle_w: f64,
    /// Least energy per sample above `idle_w` with a clock per layer (J), and the batch size
    /// that reaches it.
    pub layer_clocks_j: f64,
    pub layer_clocks_batch: u32,
    /// The same with one clock for the whole batch (per-batch DVFS at its best) (J).
    pub batch_clock_j: f64,
}

impl Floor {
    /// Every batch size `1..=max_batch`, every supported clock.
    pub fn new(graph: &Graph, profile: &GpuProfile, max_batch: u32) -> Self {
        let limit = profile.spec().power.limit_default_w;
        let curve = profile.physics().curve;
        let clocks = profile.supported_clocks_mhz();
        let idle_w = clocks
            .iter()
            .map(|&f| profile.idle_power_w(f))
            .fold(profile.idle_floor_w(), f64::min);
        let mut floor = Self {
            idle_w,
            layer_clocks_j: f64::INFINITY,
            layer_clocks_batch: 1,
            batch_clock_j: f64::INFINITY,
        };
        let mut per_clock = vec![0.0; clocks.len()];
        for b in 1..=max_batch.max(1) {
            per_clock.fill(0.0);
            let mut layer_clocks = 0.0;
            for l in 0..graph.layers.len() {
                let parts = profile.physics().parts(&graph.layer_work(l, b));
                let mut best = f64::INFINITY;
                for (i, &f) in clocks.iter().enumerate() {
                    let (f_eff, _) = profile.power_capped_clock(&parts, f, limit);
                    let (t, e) = curve.time_energy(&parts, curve.x(f64::from(f_eff)));
                    let above = e - idle_w * t;
                    per_clock[i] += above;
                    best = best.min(above);
                }
                layer_clocks += best;
            }
            let per_sample = layer_clocks / f64::from(b);
            if per_sample < floor.layer_clocks_j {
                floor.layer_clocks_j = per_sample;
                floor.layer_clocks_batch = b;
            }
            let batch_clock = per_clock.iter().copied().fold(f64::INFINITY, f64::min);
            floor.batch_clock_j = floor.batch_clock_j.min(batch_clock / f64::from(b));
        }
        floor
    }

    /// Energy per request no policy goes below when `requests` arrive over `duration_s` (J).
    pub fn per_request_j(&self, duration_s: f64, requests: usize) -> f64 {
        if requests == 0 {
            return f64::NAN;
        }
        self.idle_w * duration_s / requests as f64 + self.layer_clocks_j
    }

    /// The same floor for a policy held to one clock per batch (J).
    pub fn per_request_batch_clock_j(&self, duration_s: f64, requests: usize) -> f64 {
        self.per_request_j(duration_s, requests) - self.layer_clocks_j + self.batch_clock_j
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::zoo;

    #[test]
    fn the_floor_lies_below_every_fixed_clock_and_batch() {
        let graph = zoo::build("resnet18").unwrap();
        let profile = GpuProfile::builtin("t4").unwrap();
        let floor = Floor::new(&graph, &profile, 16);
        assert!(floor.idle_w > 0.0 && floor.idle_w <= profile.idle_floor_w());
        assert!(floor.layer_clocks_j > 0.0);
        assert!(floor.layer_clocks_j <= floor.batch_clock_j);
        // Any one schedule (one batch size, one clock) costs at least the floor per sample.
        let curve = profile.physics().curve;
        let limit = profile.spec().power.limit_default_w;
        for b in [1, 4, 16] {
            for &f in profile.supported_clocks_mhz().iter().step_by(7) {
                let above: f64 = (0..graph.layers.len())
                    .map(|l| {
                        let parts = profile.physics().parts(&graph.layer_work(l, b));
                        let (f_eff, _) = profile.power_capped_clock(&parts, f, limit);
                        let (t, e) = curve.time_energy(&parts, curve.x(f64::from(f_eff)));
                        e - floor.idle_w * t
                    })
                    .sum();
                assert!(
                    above / f64::from(b) >= floor.batch_clock_j - 1e-12,
                    "b {b} f {f}"
                );
            }
        }
        // Idle time costs at least the lowest power: twice the time per request, more floor.
        assert!(floor.per_request_j(20.0, 100) > floor.per_request_j(10.0, 100));
        assert!(floor.per_request_j(1.0, 0).is_nan());
    }
}
