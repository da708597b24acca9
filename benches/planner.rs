//! Planner speed on a ResNet-50-sized instance (16 units, 16 clocks, batches up to 64).
//! Targets (`docs/architecture.md`, "Targets"): full re-plan ≤ 1 ms, per-batch decision ≤ 5 µs.
//! `plan_set_fallback/64_batches/v100_switch`: 1.91 ms before the latency pre-check and the cheap
//! overhead/stability budgets, 0.54 ms after (same plans; the full suite is unchanged).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench's setup failing is a failed bench

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use eali::eali::controller::{Action, Controller, ControllerConfig};
use eali::eali::synthetic::SyntheticGpu;
use eali::eali::units::{self, UnitConfig};
use eali::eali::{
    FillBound, PlanRequest, PlanTable, Planner, PlannerConfig, Solver, SwitchCost, SwitchLatency,
    TableConfig,
};
use eali::model::zoo;

const SLO_S: f64 = 0.1;

/// ResNet-50 on the synthetic V100: 18 structural units capped at 16, 16 clocks.
fn instance(batches: Vec<u32>) -> (units::UnitChain, units::UnitCostTable) {
    let graph = zoo::build("resnet50").expect("zoo model");
    let gpu = SyntheticGpu {
        batches,
        ..SyntheticGpu::default()
    };
    let table = gpu.graph_table(&graph);
    units::build(&graph, &table, &UnitConfig::structural_only(16)).expect("units")
}

fn switch_fast() -> SwitchLatency {
    // A GPU whose clock changes land in ~1 ms: in-batch switching is on the table.
    SwitchLatency {
        call_median_s: 0.0002,
        total_median_s: 0.001,
        total_p95_s: 0.0015,
    }
}

fn bench_replan(c: &mut Criterion) {
    let mut g = c.benchmark_group("replan");
    let grids: [(&str, Vec<u32>); 2] = [
        ("8_batches", vec![1, 2, 4, 8, 16, 32, 48, 64]),
        ("64_batches", (1..=64).collect()),
    ];
    for (grid, batches) in grids {
        let (_, costs) = instance(batches);
        for (sw_name, sw) in [
            ("v100_switch", SwitchLatency::v100_like()),
            ("1ms_switch", switch_fast()),
        ] {
            for solver in [Solver::Fast, Solver::Exact] {
                let cfg = PlannerConfig {
                    solver,
                    ..PlannerConfig::new(SLO_S)
                };
                let planner = Planner::new(costs.clone(), SwitchCost::from_latency(&sw), cfg)
                    .expect("planner");
                let rate = planner.max_clock_capacity() * 0.3;
                let req = PlanRequest::new(rate, rate * 1.1, 0.1);
                let name = format!("{grid}/{sw_name}/{solver:?}");
                g.bench_function(format!("plan/{name}"), |b| {
                    b.iter(|| black_box(planner.plan(black_box(&req))))
                });
                if solver == Solver::Fast {
                    g.bench_function(format!("plan_set/{name}"), |b| {
                        b.iter(|| black_box(planner.plan_set(black_box(&req))))
                    });
                    // The slowest re-plan: a load where no batch size fills in time, so the
                    // search runs twice (the second time with the dispatch-deadline bound);
                    // the first SLO and load (tighter SLOs, higher loads) where that happens.
                    let fallback = [SLO_S, SLO_S / 2.0, SLO_S / 4.0, SLO_S / 8.0]
                        .into_iter()
                        .find_map(|slo| {
                            let cfg = PlannerConfig {
                                solver,
                                ..PlannerConfig::new(slo)
                            };
                            let p = Planner::new(costs.clone(), SwitchCost::from_latency(&sw), cfg)
                                .expect("planner");
                            let req = (5..100).find_map(|pct| {
                                let rate = p.max_clock_capacity() * f64::from(pct) / 100.0;
                                let req = PlanRequest::new(rate, rate * 1.1, 0.1);
                                let plan = p.plan(&req);
                                (plan.fill_bound == FillBound::DispatchDeadline && !plan.saturated)
                                    .then_some(req)
                            })?;
                            Some((slo, p, req))
                        });
                    match fallback {
                        Some((slo, p, req)) => {
                            let ms = slo * 1e3;
                            g.bench_function(format!("plan_set_fallback/{name}/slo_{ms}ms"), |b| {
                                b.iter(|| black_box(p.plan_set(black_box(&req))))
                            });
                        }
                        None => eprintln!("{name}: no SLO and load where the fallback plans"),
                    }
                }
            }
        }
    }
    g.finish();
}

fn bench_decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("decision");
    let (chain, costs) = instance(vec![1, 2, 4, 8, 16, 32, 48, 64]);
    let planner = Planner::new(
        costs.clone(),
        SwitchCost::from_latency(&switch_fast()),
        PlannerConfig::new(SLO_S),
    )
    .expect("planner");
    let rate = planner.max_clock_capacity() * 0.3;
    let mut table =
        PlanTable::new(planner, TableConfig::default(), Default::default()).expect("table");
    table.fill_all();
    g.bench_function("table_lookup", |b| {
        b.iter(|| black_box(table.lookup(black_box(rate), black_box(0.1))))
    });

    let mut cfg = ControllerConfig::new(SLO_S);
    cfg.rate.initial_rate = rate;
    let mut ctl = Controller::new(cfg, &chain, costs, switch_fast(), 0.0).expect("controller");
    let best = ctl.current_plan().batch;
    assert!(best > 1, "the bench wants a batching plan");
    // Partial queue, deadline not reached: the wait path.
    g.bench_function("next_action_wait", |b| {
        b.iter(
            || match ctl.next_action(black_box(0.5), black_box(1), black_box(Some(0.4999))) {
                Action::WaitUntil { until, .. } => black_box(until),
                Action::Dispatch { .. } => unreachable!("expected to wait"),
            },
        )
    });
    // Full batch queued: the dispatch path (clones the plan).
    g.bench_function("next_action_dispatch", |b| {
        b.iter(
            || match ctl.next_action(black_box(0.5), black_box(best), black_box(Some(0.45))) {
                Action::Dispatch { batch, .. } => black_box(batch),
                Action::WaitUntil { .. } => unreachable!("expected to dispatch"),
            },
        )
    });
    g.finish();
}

criterion_group!(benches, bench_replan, bench_decision);
criterion_main!(benches);
