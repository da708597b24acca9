//! Attribution checks: conservation of the counter's energy and a hand-made case (the check
//! against the simulated GPU's ground truth is in `sim/attribution_tests.rs`).

use std::sync::Arc;

use super::*;

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
