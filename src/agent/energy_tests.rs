use super::*;
use crate::control::proto::{LayerShare, UnitTiming};

fn pod() -> PodName {
    PodName {
        namespace: "serving".into(),
        name: "resnet-0".into(),
    }
}

fn timing(
    unit: u32,
    start: f64,
    end: f64,
    layers: &[(&str, f64)],
    power_w: f64,
) -> AttributedTiming {
    AttributedTiming {
        gpu_uuid: "GPU-1".into(),
        pod: pod(),
        timing: UnitTiming {
            model: "resnet50".into(),
            inference_service: "resnet".into(),
            unit,
            batch: 4,
            start_unix_s: start,
            end_unix_s: end,
            predicted_power_w: power_w,
            layers: layers
                .iter()
                .map(|(n, e)| LayerShare {
                    name: (*n).into(),
                    predicted_energy_j: *e,
                })
                .collect(),
            ..UnitTiming::default()
        },
    }
}

fn layer_j(m: &AgentMetrics, unit: &str, layer: &str) -> f64 {
    m.layer_energy
        .with_label_values(&["serving", "resnet-0", "resnet", "resnet50", unit, layer])
        .get()
}

fn unit_j(m: &AgentMetrics, unit: &str) -> f64 {
    m.unit_energy
        .with_label_values(&["serving", "resnet-0", "resnet", "resnet50", unit])
        .get()
}

/// A GPU drawing `busy_w` over `[b0, b1)` and `idle_w` otherwise, its counter read every
/// 10 ms (whole mJ, as NVML publishes it) from `t0` to `t1`.
fn drive(
    e: &mut GpuEnergy,
    m: &AgentMetrics,
    (t0, t1): (f64, f64),
    (b0, b1): (f64, f64),
    busy_w: f64,
    idle_w: f64,
) -> u64 {
    let energy_at = |t: f64| {
        let busy = (t.min(b1) - b0).max(0.0);
        busy * busy_w + (t - t0 - busy) * idle_w
    };
    let steps = ((t1 - t0) / 0.01).round() as usize;
    let mut last = 0;
    for i in 0..=steps {
        let t = t0 + i as f64 * 0.01;
        let power = if t > b0 && t <= b1 { busy_w } else { idle_w };
        last = 5_000 + (energy_at(t) * 1000.0) as u64;
        e.reading(t, last, power, m);
    }
    last - 5_000
}

#[test]
fn counter_energy_is_conserved_and_split_by_predicted_layer_energy() {
    let cfg = EnergyConfig {
        lag_s: 0.5,
        ..EnergyConfig::default()
    };
    let m = AgentMetrics::new().unwrap();
    let mut table = SeriesTable::new(&cfg);
    let mut e = GpuEnergy::new("GPU-1", &cfg);
    // One batch of two units, 1.20-1.30 s and 1.30-1.40 s, at 200 W; 50 W idle around it.
    e.timing(
        &timing(0, 1.20, 1.30, &[("conv1", 1.0), ("conv2", 3.0)], 200.0),
        &mut table,
        &m,
    );
    e.timing(&timing(1, 1.30, 1.40, &[], 0.0), &mut table, &m);
    let counted_mj = drive(&mut e, &m, (1.0, 2.0), (1.20, 1.40), 200.0, 50.0);
    // Nothing is attributed before the lag has passed.
    e.process(1.4, &table, &m);
    assert_eq!(unit_j(&m, "0"), 0.0);
    e.process(3.0, &table, &m);

    let (u0, u1) = (unit_j(&m, "0"), unit_j(&m, "1"));
    let idle = m.gpu_idle_energy.with_label_values(&["GPU-1"]).get();
    let total = u0 + u1 + idle;
    let counted = counted_mj as f64 / 1000.0;
    println!("unit0 {u0:.3} J, unit1 {u1:.3} J, idle {idle:.3} J, counter {counted:.3} J");
    // Every counted joule after the first reading is handed out, no more.
    assert!((total - counted).abs() < 1e-6, "{total} vs {counted}");
    assert!(
        (m.gpu_energy.with_label_values(&["GPU-1"]).get() - counted).abs() < 1e-9,
        "the GPU counter family follows the counter"
    );
    // Each unit drew 20 J; window edges blur by at most half a counter period at each end.
    for u in [u0, u1] {
        assert!((u - 20.0).abs() < 2.0, "{u}");
    }
    let (c1, c2) = (layer_j(&m, "0", "conv1"), layer_j(&m, "0", "conv2"));
    assert!((c1 + c2 - u0).abs() < 1e-9);
    assert!((c2 / c1 - 3.0).abs() < 1e-9, "{c1} {c2}");
    assert_eq!(e.services().len(), 1);
    assert!((e.services()[0].joules - (u0 + u1)).abs() < 1e-9);
}

#[test]
fn a_timing_after_its_window_was_attributed_is_late() {
    let cfg = EnergyConfig {
        lag_s: 0.1,
        ..EnergyConfig::default()
    };
    let m = AgentMetrics::new().unwrap();
    let mut table = SeriesTable::new(&cfg);
    let mut e = GpuEnergy::new("GPU-1", &cfg);
    drive(&mut e, &m, (1.0, 2.0), (1.2, 1.3), 200.0, 50.0);
    e.process(3.0, &table, &m);
    e.timing(&timing(0, 1.2, 1.3, &[], 0.0), &mut table, &m);
    assert_eq!(m.timings.with_label_values(&["late"]).get(), 1);
    assert_eq!(m.timings.with_label_values(&["attributed"]).get(), 0);
    assert!(table.is_empty(), "a late timing creates no series");
}

#[test]
fn series_are_capped_per_pod_and_removed_with_the_pod() {
    let cfg = EnergyConfig {
        max_units_per_pod: 2,
        max_layers_per_pod: 3,
        lag_s: 0.0,
        ..EnergyConfig::default()
    };
    let m = AgentMetrics::new().unwrap();
    let mut table = SeriesTable::new(&cfg);
    let p = pod();
    let layers = ["a", "b", "c", "d", "e"];
    let keys: Vec<usize> = layers
        .iter()
        .map(|l| table.key(&p, "svc", "m", "0", Some(l), &m))
        .collect();
    // Three layer series, then everything else in one `_other` series of the unit.
    assert_eq!(keys[3], keys[4]);
    assert_eq!(table.len(), 4);
    assert_eq!(m.series_capped.with_label_values(&["layer"]).get(), 2);
    let u: Vec<usize> = (0..4)
        .map(|i| table.key(&p, "svc", "m", &i.to_string(), None, &m))
        .collect();
    assert_ne!(u[0], u[1]);
    assert_eq!(u[2], u[3], "units past the cap share the `_other` series");
    // A long label value is cut.
    let long = "x".repeat(1000);
    let other = PodName {
        namespace: "ns".into(),
        name: "p".into(),
    };
    table.key(&other, &long, "m", "0", None, &m);
    m.unit_energy
        .with_label_values(&["ns", "p", &long[..128], "m", "0"])
        .inc();
    let before = table.len();
    m.unit_energy
        .with_label_values(&["serving", "resnet-0", "svc", "m", "0"])
        .inc();
    assert!(m.render().contains("pod=\"resnet-0\""));
    table.remove_pod(&p, &m);
    assert_eq!(
        table.len(),
        1,
        "{before} series before, only the other pod's left"
    );
    assert!(!m.render().contains("pod=\"resnet-0\""));
    assert!(m.render().contains("pod=\"p\""));
}

#[test]
fn attribution_restarts_when_the_counter_goes_back() {
    let cfg = EnergyConfig {
        lag_s: 0.0,
        ..EnergyConfig::default()
    };
    let m = AgentMetrics::new().unwrap();
    let mut table = SeriesTable::new(&cfg);
    let mut e = GpuEnergy::new("GPU-1", &cfg);
    drive(&mut e, &m, (1.0, 1.5), (9.0, 9.0), 200.0, 50.0);
    e.process(1.5, &table, &m);
    // A driver reload: the counter starts low again; a unit runs afterwards.
    e.timing(&timing(0, 2.2, 2.4, &[], 200.0), &mut table, &m);
    drive(&mut e, &m, (2.0, 3.0), (2.2, 2.4), 200.0, 50.0);
    e.process(3.0, &table, &m);
    let u = unit_j(&m, "0");
    assert!((u - 40.0).abs() < 2.0, "{u}");
}
