//! Attribution checks: conservation of the counter's energy, a hand-made case, and per-unit
//! accuracy against the simulated GPU's ground truth.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::exec::sim::{DeviceClock, SimDevice, SimExecutor};
use crate::exec::{BatchRequest, Executor, UnitHook, UnitRecord};
use crate::gpu::GpuBackend;
use crate::gpu::sim::{GpuProfile, SimGpu};
use crate::model::zoo;
use crate::perf::profiler::spread_clocks;
use crate::sim::truth;

fn seg(start: f64, end: f64, power: f64, key: usize) -> Segment {
    Segment {
        start_s: start,
        end_s: end,
        power_w: power,
        shares: Arc::from(vec![(key, 1.0)]),
    }
}

#[test]
fn energy_is_conserved_and_split_by_predicted_power() {
    let mut a = Attributor::new(0.010);
    assert_eq!(a.reading(0.0, 1000, 50.0), None);
    // Two units, 200 W then 100 W, 5 ms each, inside the next publication window.
    a.busy(seg(0.000, 0.005, 200.0, 0));
    a.busy(seg(0.005, 0.010, 100.0, 1));
    // Unchanged counter: nothing yet.
    assert_eq!(a.reading(0.004, 1000, 50.0), None);
    // Published between 0.004 and 0.012 -> at 0.008; window [-0.005, 0.008].
    let out = a.reading(0.012, 3000, 50.0).unwrap();
    assert!((out.total_j() - 2.0).abs() < 1e-12);
    let (w0, w1, wi) = (200.0 * 0.005, 100.0 * 0.003, 50.0 * 0.005);
    let total = w0 + w1 + wi;
    assert!((out.busy[0].1 - 2.0 * w0 / total).abs() < 1e-12);
    assert_eq!(out.busy[1].0, 1);
    assert!((out.busy[1].1 - 2.0 * w1 / total).abs() < 1e-12);
    assert!((out.idle_j - 2.0 * wi / total).abs() < 1e-12);
    // The second unit's remaining 2 ms fall into the next window.
    let out = a.reading(0.030, 4000, 50.0).unwrap();
    assert_eq!(out.busy.len(), 1);
    assert_eq!(out.busy[0].0, 1);
    // A window with nothing predicted at all goes to idle.
    let out = a.reading(0.100, 4500, 0.0).unwrap();
    assert_eq!(out.idle_j, 0.5);
    assert!(out.busy.is_empty());
}

#[test]
fn power_model_interpolates_batches_and_picks_the_nearest_clock() {
    let t = LayerCostTable {
        model: "m".into(),
        gpu: "g".into(),
        layers: vec!["a".into(), "b".into()],
        batches: vec![1, 4],
        clocks_mhz: vec![500, 1000],
        time_s: vec![
            vec![vec![2.0, 1.0], vec![8.0, 4.0]],
            vec![vec![1.0, 1.0], vec![1.0, 1.0]],
        ],
        energy_j: vec![
            vec![vec![20.0, 30.0], vec![80.0, 120.0]],
            vec![vec![10.0, 10.0], vec![10.0, 10.0]],
        ],
        idle_power_w: vec![30.0, 40.0],
        batch_overhead_s: vec![0.0, 0.0],
    };
    let m = LayerPowerModel::new(t);
    assert_eq!(m.layer(0, 1, 990), (1.0, 30.0));
    assert_eq!(m.layer(0, 2, 510), (4.0, 40.0));
    assert_eq!(m.layer(0, 8, 1000), (8.0, 240.0));
    assert_eq!(m.idle_w(700), 30.0);
    let s = m.segment(0..2, 4, 1000, 1.0, 2.0);
    assert_eq!(s.power_w, 130.0 / 5.0);
    assert_eq!(s.shares.as_ref(), &[(0, 120.0 / 130.0), (1, 10.0 / 130.0)]);
}

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
