//! The controller-driven policies and the oracle on the calibrated simulated GPU: (d) asks for
//! one clock per batch, EALI's in-batch set-calls follow its plan's timeline, and the oracle
//! keeps every request within the SLO at less energy than max clocks.

use std::ops::Range;

use super::bench::testbed::{ORACLE_BATCHES, unit_ranges};
use super::des::{SimConfig, run};
use super::device::SpanTable;
use super::oracle::Oracle;
use super::truth;
use super::workload::{Workload, WorkloadKind};
use crate::eali::controller::{Controller, ControllerConfig};
use crate::eali::planner::{Planner, PlannerConfig};
use crate::eali::switch::{SwitchCost, SwitchLatency};
use crate::eali::units::{self, UnitConfig};
use crate::gpu::sim::{GpuProfile, SimGpu};
use crate::model::{Graph, zoo};
use crate::perf::profiler::spread_clocks;
use crate::policy::baselines::{TritonConfig, TritonMaxClock};
use crate::policy::controller::ControllerPolicy;
use crate::policy::{Action, BatchDone, BatchPlan, ClockTarget, Policy};

const SLO: f64 = 0.1;

fn setup() -> (Graph, GpuProfile, Vec<u32>) {
    let graph = zoo::build("resnet18").unwrap();
    let profile = GpuProfile::builtin("v100").unwrap();
    let clocks = spread_clocks(profile.supported_clocks_mhz(), 12);
    (graph, profile, clocks)
}

fn v100_switch() -> SwitchLatency {
    SwitchLatency {
        call_median_s: 0.0045,
        total_median_s: 0.025,
        total_p95_s: 0.031,
    }
}

/// Records the plan of every dispatch of the policy it wraps.
struct Recorder<P> {
    inner: P,
    plans: Vec<BatchPlan>,
}

impl<P: Policy> Policy for Recorder<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn units(&self) -> &[Range<usize>] {
        self.inner.units()
    }
    fn max_batch(&self) -> u32 {
        self.inner.max_batch()
    }
    fn initial_clock(&self) -> Option<ClockTarget> {
        self.inner.initial_clock()
    }
    fn on_arrival(&mut self, t: f64) {
        self.inner.on_arrival(t)
    }
    fn idle_clock(&mut self, now: f64) -> Option<ClockTarget> {
        self.inner.idle_clock(now)
    }
    fn next_action(&mut self, now: f64, q: usize, oldest: f64) -> Action {
        let a = self.inner.next_action(now, q, oldest);
        if matches!(a, Action::Dispatch { .. }) {
            self.plans.push(self.inner.plan().clone());
        }
        a
    }
    fn plan(&self) -> &BatchPlan {
        self.inner.plan()
    }
    fn on_batch_done(&mut self, d: &BatchDone<'_>) {
        self.inner.on_batch_done(d)
    }
    fn saturated(&self) -> bool {
        self.inner.saturated()
    }
}

fn run_policy<P: Policy>(
    p: &mut P,
    graph: &Graph,
    profile: &GpuProfile,
    arrivals: &[f64],
) -> super::RunResult {
    let mut gpu = SimGpu::new(profile.clone(), 0, 3);
    let spans = SpanTable::build(&gpu, p.units(), p.max_batch(), |l, b| {
        graph.layer_work(l, b)
    });
    let mut cfg = SimConfig::new(SLO);
    cfg.record_timeline = true;
    run(&mut gpu, &spans, p, arrivals, &cfg).unwrap()
}

#[test]
fn per_batch_dvfs_asks_for_one_clock_per_batch() {
    let (graph, profile, clocks) = setup();
    let table = truth::layer_table(&graph, &profile, &[1, 2, 4, 8, 16, 32], &clocks);
    let (chain, costs) = units::single_unit(&table).unwrap();
    let ctl = Controller::new(
        ControllerConfig::new(SLO),
        &chain,
        costs,
        v100_switch(),
        0.0,
    )
    .unwrap();
    let inner = ControllerPolicy::new("per-batch-dvfs", ctl, unit_ranges(&chain).unwrap());
    let mut p = Recorder {
        inner,
        plans: Vec::new(),
    };
    let arrivals = Workload::new(WorkloadKind::step(), 800.0, 60.0)
        .generate(2)
        .unwrap();
    let r = run_policy(&mut p, &graph, &profile, &arrivals);
    assert_eq!(r.completed, arrivals.len());
    assert_eq!(p.plans.len(), r.batches);
    for plan in &p.plans {
        assert_eq!(plan.unit_clocks.len(), 1);
        let f = plan.unit_clocks[0].unwrap();
        assert_eq!(plan.set_calls.len(), 1, "only the entry clock, at dispatch");
        assert_eq!(plan.set_calls[0].offset_s, 0.0);
        assert_eq!(plan.set_calls[0].target, ClockTarget::Locked(f));
    }
    // The load steps between 0.5× and 1.5× the mean: the controller must use more than one clock.
    let distinct: std::collections::BTreeSet<u32> =
        p.plans.iter().filter_map(|p| p.unit_clocks[0]).collect();
    assert!(distinct.len() > 1, "{distinct:?}");
    assert!(r.slo_attainment >= 0.8, "attainment {}", r.slo_attainment);
}

#[test]
fn eali_set_calls_follow_the_plan_timeline() {
    let (graph, profile, clocks) = setup();
    let table = truth::layer_table(&graph, &profile, &[1, 2, 4, 8, 16, 32], &clocks);
    // Free switches and no merging: the planner may give every unit its own clock.
    let (chain, costs) = units::build(&graph, &table, &UnitConfig::structural_only(6)).unwrap();
    assert!(chain.len() > 1);
    let ctl = Controller::new(
        ControllerConfig::new(SLO),
        &chain,
        costs,
        SwitchLatency::zero(),
        0.0,
    )
    .unwrap();
    let inner = ControllerPolicy::new("eali", ctl, unit_ranges(&chain).unwrap());
    let mut p = Recorder {
        inner,
        plans: Vec::new(),
    };
    let arrivals = Workload::new(WorkloadKind::Poisson, 300.0, 20.0)
        .generate(4)
        .unwrap();
    let r = run_policy(&mut p, &graph, &profile, &arrivals);
    let tl = r.timeline.as_ref().unwrap();
    assert_eq!(tl.units, chain.len());
    assert_eq!(r.completed, arrivals.len());
    for plan in &p.plans {
        assert_eq!(plan.unit_clocks.len(), chain.len());
        // The entry clock at dispatch, then the in-batch changes in time order.
        assert_eq!(plan.set_calls[0].offset_s, 0.0);
        assert_eq!(
            plan.set_calls[0].target,
            ClockTarget::Locked(plan.unit_clocks[0].unwrap())
        );
        assert!(
            plan.set_calls
                .windows(2)
                .all(|w| w[0].offset_s <= w[1].offset_s)
        );
        for c in &plan.set_calls[1..] {
            let ClockTarget::Locked(f) = c.target else {
                panic!("in-batch reset")
            };
            assert!(plan.unit_clocks.contains(&Some(f)));
        }
    }
    // The clock thread's calls are serial: each starts after the previous one returned.
    assert_eq!(tl.set_calls.len(), r.switches);
    assert!(
        tl.set_calls
            .windows(2)
            .all(|w| w[1].issued_s > w[0].issued_s)
    );
    let in_batch: usize = p
        .plans
        .iter()
        .map(|p| p.set_calls.len().saturating_sub(1))
        .sum();
    assert!(
        in_batch > 0,
        "with free switches the plans should change clocks inside batches"
    );
}

#[test]
fn oracle_meets_the_slo_below_max_clock_energy() {
    let (graph, profile, clocks) = setup();
    let batches: Vec<u32> = ORACLE_BATCHES
        .iter()
        .copied()
        .filter(|&b| b <= 32)
        .collect();
    let table = truth::layer_table(&graph, &profile, &batches, &clocks);
    let cfg = UnitConfig {
        switch_median_s: 0.025,
        ..UnitConfig::default()
    };
    let (chain, costs) = units::build(&graph, &table, &cfg).unwrap();
    let mut pc = PlannerConfig::new(SLO);
    pc.max_batch = 32;
    let planner = Planner::new(costs, SwitchCost::from_latency(&v100_switch()), pc).unwrap();
    let arrivals = Workload::new(WorkloadKind::Poisson, 600.0, 30.0)
        .generate(6)
        .unwrap();
    let mut oracle = Oracle::plan(
        &planner,
        unit_ranges(&chain).unwrap(),
        &arrivals,
        SLO,
        0.06,
        0.025,
        |f| profile.idle_power_w(f),
    );
    let sched = oracle.schedule().to_vec();
    assert_eq!(
        sched.iter().map(|b| b.size as usize).sum::<usize>(),
        arrivals.len()
    );
    assert!(
        sched
            .windows(2)
            .all(|w| w[1].first == w[0].first + w[0].size as usize)
    );
    let r = run_policy(&mut oracle, &graph, &profile, &arrivals);
    assert_eq!(r.completed, arrivals.len());
    assert!(r.within_slo > 0.999, "{}", r.within_slo);
    assert_eq!(r.slo_attainment, 1.0);

    let exec = truth::batch_times_s(&graph, &profile, 32, profile.max_clock_mhz());
    let mut max = TritonMaxClock::max_clock(
        graph.layers.len(),
        profile.max_clock_mhz(),
        TritonConfig::for_slo(&exec, SLO),
    );
    let m = run_policy(&mut max, &graph, &profile, &arrivals);
    assert!(
        r.energy_j < 0.9 * m.energy_j,
        "oracle {} J vs max-clock {} J",
        r.energy_j,
        m.energy_j
    );
}
