//! The bench suite end to end on a small spec: every policy runs every case, records are complete
//! and consistent, runs are deterministic under the seed, and every policy serves the same
//! arrivals.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use eali::sim::bench::{self, PolicyId, SuiteSpec, report};
use eali::sim::{WorkloadKind, truth};

fn spec(seed: u64) -> SuiteSpec {
    SuiteSpec {
        name: "test".into(),
        models: vec!["resnet18".into()],
        gpus: vec!["v100-sxm2".into()],
        loads: vec![0.3, 0.6],
        slos_ms: vec![100.0],
        workloads: vec![WorkloadKind::Poisson, WorkloadKind::diurnal()],
        policies: PolicyId::all().to_vec(),
        duration_s: 20.0,
        max_batch: 32,
        seed,
    }
}

fn run(seed: u64) -> bench::SuiteResult {
    // Ground-truth costs instead of the profiled prediction keep the test fast.
    let costs = |g: &_, p: &_, b: &[u32], c: &[u32]| Ok(truth::layer_table(g, p, b, c));
    bench::run_suite(&spec(seed), &costs, Some(1), &mut |_| {}).expect("suite runs")
}

#[test]
fn suite_runs_every_policy_on_every_case() {
    let suite = run(3);
    assert_eq!(suite.cases.len(), 4);
    let recs = report::records(&suite);
    assert_eq!(recs.len(), 4 * PolicyId::all().len());
    for c in &suite.cases {
        assert!(c.rate > 0.0 && (c.rate / c.capacity - c.case.load).abs() < 1e-9);
        let arrivals = c.runs[0].1.arrivals;
        for (p, r) in &c.runs {
            // Same arrivals for every policy, all accounted for.
            assert_eq!(r.arrivals, arrivals, "{p:?}");
            assert_eq!(r.completed + r.dropped, r.arrivals);
            assert!(r.energy_per_request_j > 0.0 && r.p99_ms >= r.p50_ms);
            assert!((0.0..=1.0).contains(&r.slo_attainment));
            // No policy, the oracle included, gets below the physics floor (noise aside: the
            // floor is noise-free, the runs draw a few percent around it).
            assert!(
                r.energy_per_request_j >= 0.97 * c.floor_j,
                "{p:?} {} below the floor {}",
                r.energy_per_request_j,
                c.floor_j
            );
        }
        assert!(c.floor_j > 0.0);
        // Max clocks never change the clock after the initial lock.
        assert_eq!(c.run(PolicyId::MaxClock).unwrap().switches, 1);
    }
    let tl = suite.timeline.as_ref().expect("timeline of case 1");
    assert_eq!(tl.0, 1);
    assert_eq!(tl.1, PolicyId::Eali);
    assert!(!tl.2.batches.is_empty());

    let table = report::table(&suite);
    assert_eq!(table.lines().count(), 2 + 4);
    let s = report::summary(&suite);
    assert_eq!(s.cases, 4);
    let json = serde_json::to_value(&recs).unwrap();
    for key in [
        "model",
        "gpu",
        "workload",
        "load",
        "slo_ms",
        "policy",
        "requests",
        "energy_per_request_j",
        "p50_ms",
        "p99_ms",
        "slo_attainment",
        "switches",
        "saturated",
        "floor_energy_per_request_j",
    ] {
        assert!(json[0].get(key).is_some(), "record lacks {key}");
    }
}

#[test]
fn suite_is_deterministic_under_its_seed() {
    let a = report::records(&run(5));
    let b = report::records(&run(5));
    assert_eq!(a, b);
    let c = report::records(&run(6));
    assert_ne!(a, c);
}
