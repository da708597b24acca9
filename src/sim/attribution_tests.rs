//! Energy attribution ([`crate::telemetry`]) checked against the simulated GPU's ground truth:
//! the simulator is the instrument, so the check lives with it, not in the serving path.

use std::ops::Range;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::exec::sim::{DeviceClock, SimDevice, SimExecutor};
use crate::exec::{BatchRequest, Executor, UnitHook, UnitRecord};
use crate::gpu::GpuBackend;
use crate::gpu::sim::{GpuProfile, SimGpu};
use crate::model::zoo;
use crate::perf::profiler::spread_clocks;
use crate::sim::truth;
use crate::telemetry::{Attribution, Attributor, LayerPowerModel};

/// Feeds the attributor from unit boundaries, as the serving loop does.
struct Feed<'a> {
    attr: &'a mut Attributor,
    model: &'a LayerPowerModel,
    units: &'a [Range<usize>],
    batch: u32,
    attributed: &'a mut [f64],
    unit_of_layer: &'a [usize],
}

impl Feed<'_> {
    fn take(&mut self, a: Option<Attribution>) {
        for (layer, j) in a.map(|a| a.busy).unwrap_or_default() {
            self.attributed[self.unit_of_layer[layer]] += j;
        }
    }
}

impl UnitHook for Feed<'_> {
    fn unit_end(&mut self, r: &UnitRecord) {
        let s = self.model.segment(
            self.units[r.unit].clone(),
            self.batch,
            r.clock_mhz,
            r.start_s,
            r.end_s,
        );
        self.attr.busy(s);
        let idle = self.model.idle_w(r.clock_mhz);
        let a = self
            .attr
            .reading(r.end_s, r.energy_counter_mj.unwrap_or(0), idle);
        self.take(a);
    }
}

#[test]
fn per_unit_energy_within_five_percent_of_ground_truth() {
    let graph = Arc::new(zoo::build("resnet50").unwrap());
    let profile = GpuProfile::builtin("v100-sxm2").unwrap();
    let clocks = spread_clocks(profile.supported_clocks_mhz(), 8);
    let table = truth::layer_table(&graph, &profile, &[1, 2, 4, 8, 16], &clocks);
    let model = LayerPowerModel::new(table);
    let n = graph.layers.len();
    // Eight units of about equal layer count.
    let cuts: Vec<usize> = (0..=8).map(|i| i * n / 8).collect();
    let units: Vec<Range<usize>> = cuts.windows(2).map(|w| w[0]..w[1]).collect();
    let unit_of_layer: Vec<usize> = (0..n)
        .map(|l| units.iter().position(|u| u.contains(&l)).unwrap())
        .collect();

    let device = SimDevice::new(SimGpu::new(profile.clone(), 0, 5), DeviceClock::Virtual);
    let mut exec = SimExecutor::new(device.clone(), graph.clone());
    let mut attr = Attributor::new(0.010);
    let mut attributed = vec![0.0; units.len()];
    let mut truth_j = vec![0.0; units.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..400 {
        let f = clocks[rng.random_range(2..clocks.len())];
        let batch = [1, 4, 8, 16][rng.random_range(0..4)];
        {
            let mut g = device.lock();
            let now = g.now();
            let t = now + rng.random_range(0.0..0.03);
            g.schedule_locked_clocks_at(now, f, f).unwrap();
            g.advance_to(t);
            let (now, e) = (g.now(), g.energy_mj().unwrap());
            let a = attr.reading(now, e, model.idle_w(f));
            for (layer, j) in a.map(|a| a.busy).unwrap_or_default() {
                attributed[unit_of_layer[layer]] += j;
            }
        }
        let mut feed = Feed {
            attr: &mut attr,
            model: &model,
            units: &units,
            batch,
            attributed: &mut attributed,
            unit_of_layer: &unit_of_layer,
        };
        let run = exec
            .run_batch(
                &BatchRequest {
                    batch,
                    input: None,
                    units: &units,
                },
                &mut feed,
            )
            .unwrap();
        for r in &run.units {
            truth_j[r.unit] += r.truth_energy_j.unwrap();
        }
    }
    // Let the last windows publish.
    let (now, e) = {
        let mut g = device.lock();
        let end = g.now() + 0.05;
        g.advance_to(end);
        (g.now(), g.energy_mj().unwrap())
    };
    let a = attr.reading(now, e, model.idle_w(clocks[0]));
    for (layer, j) in a.map(|a| a.busy).unwrap_or_default() {
        attributed[unit_of_layer[layer]] += j;
    }
    for (u, (a, t)) in attributed.iter().zip(&truth_j).enumerate() {
        let err = (a / t - 1.0).abs();
        assert!(
            err < 0.05,
            "unit {u}: attributed {a:.3} J, truth {t:.3} J ({:.1} %)",
            100.0 * err
        );
    }
}
