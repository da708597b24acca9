use super::*;
use crate::eali::costs::LayerCostTable;

/// Two layers, batches 1 and 4, clocks 500 and 1000 MHz; `[layer][batch][clock]`.
fn model() -> LayerPowerModel {
    LayerPowerModel::new(LayerCostTable {
        model: "m".into(),
        gpu: "g".into(),
        layers: vec!["conv".into(), "fc".into()],
        batches: vec![1, 4],
        clocks_mhz: vec![500, 1000],
        time_s: vec![
            vec![vec![0.02, 0.01], vec![0.05, 0.03]],
            vec![vec![0.04, 0.02], vec![0.10, 0.06]],
        ],
        energy_j: vec![
            vec![vec![0.8, 1.0], vec![2.4, 3.0]],
            vec![vec![1.2, 1.6], vec![3.6, 4.8]],
        ],
        idle_power_w: vec![40.0, 60.0],
        batch_overhead_s: vec![0.0; 4],
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * b.abs().max(1.0)
}

#[test]
fn batch_estimate_prices_each_unit_at_its_clock_and_all_at_the_highest() {
    let m = model();
    assert_eq!(m.max_clock_mhz(), 1000);
    let e = m.batch_estimate(&[0..1, 1..2], 1, &[500, 1000]);
    assert!(close(e.energy_j, 0.8 + 1.6), "{e:?}");
    assert!(close(e.max_clock_energy_j, 1.0 + 1.6), "{e:?}");
    assert!(close(e.max_clock_time_s, 0.01 + 0.02), "{e:?}");
    // A unit without a clock counts at the highest one.
    let whole = vec![Range { start: 0, end: 2 }];
    let e = m.batch_estimate(&whole, 4, &[]);
    assert!(close(e.energy_j, 3.0 + 4.8) && close(e.max_clock_energy_j, 7.8));
}

#[test]
fn plan_time_is_each_unit_at_its_planned_clock() {
    let m = model();
    let t = m.table();
    let units = [0..1, 1..2];
    let max = m.batch_estimate(&units, 2, &[]).max_clock_time_s;
    assert!(close(t.plan_time_s(&units, 2, &[None, None]), max));
    assert!(close(t.plan_time_s(&units, 2, &[]), max));
    // The first unit at the lower clock takes longer, the second is as at max.
    let (slow, _) = m.layer(0, 2, 500);
    let (second, _) = m.layer(1, 2, 1000);
    assert!(close(
        t.plan_time_s(&units, 2, &[Some(500), None]),
        slow + second
    ));
    assert!(slow + second > max);
}

#[test]
fn capacity_is_max_clock_triton_full_batches() {
    let m = model();
    // Max-clock batch times: b1 0.03, b2 0.05, b3 0.07, b4 0.09 s (linear between 1 and 4).
    // SLO 0.3 s: a third is 0.1, every batch fits: 4 / 0.09.
    let c = m.capacity_at_slo(2, 4, 0.3).expect("capacity");
    assert!(close(c, 4.0 / 0.09), "{c}");
    // SLO 0.18 s: a third is 0.06, batch 2 is the largest: 2 / 0.05.
    let c = m.capacity_at_slo(2, 4, 0.18).expect("capacity");
    assert!(close(c, 40.0), "{c}");
    assert_eq!(m.capacity_at_slo(0, 4, 0.3), None);
}

#[test]
fn a_window_reports_tail_rate_load_saturation_and_both_energies() {
    let m = model();
    let est = m.batch_estimate(&[0..1, 1..2], 1, &[500, 1000]);
    let mut w = WindowMeter::new(0.0, 10.0, 0.99);
    w.batch(2.0, 2.1, &[0.1, 0.15], Some(&est), 40.0);
    w.saturated(false);
    w.batch(5.0, 5.2, &[0.3], Some(&est), 60.0);
    w.saturated(true);
    w.saturated(false);
    assert!(!w.due(9.9));
    assert!(w.due(10.0));
    let f = w.close(10.0, 40.0, 60.0, Some(0.5));
    assert_eq!(f.requests, 3);
    assert_eq!(
        f.latency_s,
        Some(0.3),
        "nearest rank: p99 of three is the largest"
    );
    assert!(close(f.requests_per_second, 0.3));
    assert!(close(f.load_ratio.expect("load"), 0.6));
    assert!(f.saturated, "saturated at some point in the window");
    // As run: busy 2 × 2.4 J, idle 2 s at 40 W, 2.9 s at 60 W, 4.8 s at 40 W.
    let run = 2.0 * 2.4 + 40.0 * 2.0 + 60.0 * 2.9 + 40.0 * 4.8;
    // Max clocks: busy 2 × 2.6 J in 2 × 0.03 s, idle the rest of 10 s at 60 W.
    let max = 2.0 * 2.6 + 60.0 * (10.0 - 0.06);
    assert!(close(f.predicted_energy_j.expect("run"), run), "{f:?}");
    assert!(close(f.max_clock_energy_j.expect("max"), max), "{f:?}");
    assert!(close(
        f.energy_saved_ratio().expect("ratio"),
        1.0 - run / max
    ));

    // The next window starts where this one ended, empty.
    assert!(!w.due(19.0));
    let f = w.close(20.0, 40.0, 60.0, Some(0.5));
    assert_eq!((f.start_s, f.end_s, f.requests), (10.0, 20.0, 0));
    assert_eq!((f.latency_s, f.load_ratio), (None, Some(0.0)));
    assert!(!f.saturated);
    assert_eq!(f.energy_saved_ratio(), None, "no batch, no estimate");
}

#[test]
fn requests_refused_for_their_deadline_count_in_the_tail_not_the_rate() {
    let mut w = WindowMeter::new(0.0, 1.0, 0.5);
    w.batch(0.1, 0.2, &[0.05, 0.06], None, 0.0);
    w.unanswered(&[0.4, 0.5]);
    let f = w.close(1.0, 0.0, 0.0, Some(10.0));
    assert_eq!(f.requests, 2);
    assert!(close(f.requests_per_second, 2.0));
    assert!(close(f.load_ratio.expect("load"), 0.2));
    // Nearest rank: the median of four is the second smallest.
    assert_eq!(f.latency_s, Some(0.06));
    let mut w = WindowMeter::new(0.0, 1.0, 0.75);
    w.batch(0.1, 0.2, &[0.05, 0.06], None, 0.0);
    w.unanswered(&[0.4, 0.5]);
    assert_eq!(w.close(1.0, 0.0, 0.0, None).latency_s, Some(0.4));
}

#[test]
fn without_a_power_model_or_capacity_the_estimates_stay_empty() {
    let mut w = WindowMeter::new(0.0, 1.0, 0.95);
    w.batch(0.1, 0.2, &[0.05, 0.06], None, 0.0);
    let f = w.close(1.0, 0.0, 0.0, None);
    assert_eq!(f.requests, 2);
    assert_eq!(f.latency_s, Some(0.06));
    assert_eq!(
        (f.load_ratio, f.predicted_energy_j, f.max_clock_energy_j),
        (None, None, None)
    );
}
