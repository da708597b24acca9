use std::collections::VecDeque;

use super::*;
use crate::eali::synthetic::SyntheticGpu;
use crate::eali::units::{UnitConfig, merge_units};

fn costs() -> (UnitChain, UnitCostTable) {
    let t = SyntheticGpu::default().random_table(21, 24, 0.05, 0.4);
    // Per-layer units capped at 6, so that the plan has several clocks to choose.
    let per_layer = UnitChain {
        model: t.model.clone(),
        units: t
            .layers
            .iter()
            .enumerate()
            .map(|(i, n)| crate::eali::units::Unit {
                name: n.clone(),
                kind: crate::eali::units::UnitKind::Layer,
                layers: vec![i],
                layer_names: vec![n.clone()],
                parts: vec![n.clone()],
            })
            .collect(),
    };
    let per = UnitCostTable::from_layers(&per_layer, &t).unwrap();
    merge_units(per_layer, per, &UnitConfig::structural_only(6)).unwrap()
}

fn switch() -> SwitchLatency {
    SwitchLatency {
        call_median_s: 0.0002,
        total_median_s: 0.001,
        total_p95_s: 0.0015,
    }
}

fn poisson(rate: f64, from: f64, to: f64, seed: u64) -> Vec<f64> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Exp};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let exp = Exp::new(rate).unwrap();
    let (mut t, mut out) = (from, Vec::new());
    loop {
        t += exp.sample(&mut rng);
        if t >= to {
            return out;
        }
        out.push(t);
    }
}

/// What the toy loop saw.
struct Trace {
    /// (completion time, latency) per request.
    done: Vec<(f64, f64)>,
    /// (dispatch time, requests, plan batch, plan energy per request) per batch.
    batches: Vec<(f64, u32, u32, f64)>,
}

/// A minimal event loop around the controller: a GPU that runs each batch for the plan's
/// predicted time × `slow` and spends its predicted energy × `hungry`.
fn run(ctl: &mut Controller, arrivals: &[f64], slow: f64, hungry: f64) -> Trace {
    let mut queue: VecDeque<f64> = VecDeque::new();
    let mut busy: Option<(f64, Vec<f64>, Plan, u32)> = None;
    let mut wake = f64::INFINITY;
    let mut i = 0;
    let mut trace = Trace {
        done: Vec::new(),
        batches: Vec::new(),
    };
    loop {
        let next_arrival = arrivals.get(i).copied().unwrap_or(f64::INFINITY);
        let next_done = busy.as_ref().map_or(f64::INFINITY, |b| b.0);
        let now = next_arrival.min(next_done).min(wake);
        if !now.is_finite() {
            return trace;
        }
        if now == next_done {
            let (t, reqs, plan, n) = busy.take().unwrap();
            let lat: Vec<f64> = reqs.iter().map(|a| t - a).collect();
            trace.done.extend(lat.iter().map(|l| (t, *l)));
            // The GPU deviates from the raw model, not from the α-corrected prediction.
            let (obs_t, obs_e) = (
                plan.exec_time_s / plan.corrections.time * slow,
                plan.batch_energy_j / plan.corrections.energy * hungry,
            );
            let report = BatchReport::new(&plan, n, t, obs_t, obs_e, lat);
            ctl.on_batch_done(&report);
        } else if now == next_arrival {
            ctl.on_arrival(now);
            queue.push_back(now);
            i += 1;
        } else {
            wake = f64::INFINITY;
        }
        if busy.is_none() {
            let oldest = queue.front().copied();
            match ctl.next_action(now, queue.len() as u32, oldest) {
                Action::Dispatch { batch, plan } => {
                    let reqs: Vec<f64> = queue.drain(..batch as usize).collect();
                    trace
                        .batches
                        .push((now, batch, plan.batch, plan.energy_per_request_j));
                    busy = Some((
                        now + plan.exec_time_s / plan.corrections.time * slow,
                        reqs,
                        plan,
                        batch,
                    ));
                    wake = f64::INFINITY;
                }
                Action::WaitUntil { until, .. } => {
                    // With an empty queue, only the next control tick matters.
                    wake = if queue.is_empty() && i >= arrivals.len() {
                        f64::INFINITY
                    } else {
                        until.max(now)
                    };
                }
            }
        }
    }
}

fn p99(lat: &mut [f64]) -> f64 {
    lat.sort_by(f64::total_cmp);
    lat[((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1]
}

#[test]
fn reacts_to_a_rate_step() {
    let (chain, uc) = costs();
    let slo = 0.15;
    let mut ctl = Controller::new(ControllerConfig::new(slo), &chain, uc, switch(), 0.0).unwrap();
    let cap = ctl.planner().max_clock_capacity();
    // Up to 40 % of the asymptotic (batch-64, max-clock) capacity: there no batch size of this
    // synthetic GPU fills within a 150 ms p99 at the fill quantile, and the planner plans with
    // the fill wait capped by the dispatch deadline instead of declaring overload.
    let (low, high) = (cap * 0.05, cap * 0.4);
    let mut arrivals = poisson(low, 0.0, 6.0, 1);
    arrivals.extend(poisson(high, 6.0, 12.0, 2));
    let trace = run(&mut ctl, &arrivals, 1.0, 1.0);
    assert_eq!(trace.done.len(), arrivals.len());
    assert!(ctl.stats().rate_changes >= 1, "{:?}", ctl.stats());
    assert!(!ctl.saturated());
    assert_eq!(
        ctl.current_plan().fill_bound,
        crate::eali::FillBound::DispatchDeadline
    );
    // The estimate follows the new rate and the plan batches more.
    assert!(
        (ctl.rate_estimate() / high - 1.0).abs() < 0.2,
        "{} vs {high}",
        ctl.rate_estimate()
    );
    let batch_at = |from: f64, to: f64| {
        let v: Vec<u32> = trace
            .batches
            .iter()
            .filter(|b| b.0 >= from && b.0 < to)
            .map(|b| b.2)
            .collect();
        v.iter().map(|&b| f64::from(b)).sum::<f64>() / v.len().max(1) as f64
    };
    assert!(
        batch_at(7.0, 12.0) > batch_at(2.0, 6.0),
        "{} vs {}",
        batch_at(7.0, 12.0),
        batch_at(2.0, 6.0)
    );
    // Reacted quickly: a larger batch within a quarter second of the step (the short window),
    // well before the next control tick.
    let before = trace
        .batches
        .iter()
        .filter(|b| b.0 < 6.0)
        .map(|b| b.2)
        .next_back()
        .unwrap();
    let first_larger = trace
        .batches
        .iter()
        .find(|b| b.0 >= 6.0 && b.2 > before)
        .map(|b| b.0);
    assert!(first_larger.is_some_and(|t| t < 6.25), "{first_larger:?}");
    // With an exact model the SLO holds.
    let mut lat: Vec<f64> = trace.done.iter().map(|d| d.1).collect();
    assert!(p99(&mut lat) <= slo, "p99 {}", p99(&mut lat));
    assert!(!ctl.saturated());
    assert_eq!(
        ctl.current_plan().fill_bound,
        crate::eali::FillBound::DispatchDeadline
    );
}

#[test]
fn partial_batches_wait_until_the_deadline() {
    let (chain, uc) = costs();
    let slo = 0.2;
    let cap = Planner::new(
        uc.clone(),
        SwitchCost::from_latency(&switch()),
        PlannerConfig::new(slo),
    )
    .unwrap()
    .max_clock_capacity();
    // Start from a known moderate rate so that the best plan batches several requests.
    let mut cfg = ControllerConfig::new(slo);
    cfg.rate.initial_rate = cap * 0.2;
    let mut ctl = Controller::new(cfg, &chain, uc, switch(), 0.0).unwrap();
    ctl.on_arrival(0.5);
    let best = ctl.current_plan().clone();
    assert!(best.batch > 1, "{best:?}");
    match ctl.next_action(0.5, 1, Some(0.5)) {
        Action::WaitUntil {
            until,
            hold_clock_mhz,
        } => {
            let p1 = ctl.current_plans().for_queue(1).clone();
            let deadline = 0.5 + (1.0 - ctl.margin()) * slo - p1.exec_time_s;
            // The clock is not known yet, so a switch reserve is kept as well.
            assert!(until <= deadline && until > 0.5, "{until} vs {deadline}");
            assert_eq!(hold_clock_mhz, best.entry_clock_mhz());
            match ctl.next_action(until, 1, Some(0.5)) {
                Action::Dispatch { batch, plan } => {
                    assert_eq!(batch, 1);
                    assert_eq!(plan, p1);
                }
                other => panic!("expected dispatch at the deadline, got {other:?}"),
            }
        }
        other => panic!("expected to wait, got {other:?}"),
    }
}

#[test]
fn aimd_margin_follows_violations() {
    let (chain, uc) = costs();
    let slo = 0.1;
    let mut ctl = Controller::new(ControllerConfig::new(slo), &chain, uc, switch(), 0.0).unwrap();
    let plan = ctl.current_plan().clone();
    let m0 = ctl.margin();
    // A period with 10 % of requests over the SLO: m ← 2m + 0.02 at the tick.
    let lat: Vec<f64> = (0..100).map(|i| if i < 10 { 0.12 } else { 0.05 }).collect();
    ctl.on_batch_done(&BatchReport::new(
        &plan,
        plan.batch,
        0.9,
        plan.exec_time_s,
        plan.batch_energy_j,
        lat,
    ));
    ctl.on_batch_done(&BatchReport::new(
        &plan,
        plan.batch,
        1.0,
        plan.exec_time_s,
        plan.batch_energy_j,
        vec![],
    ));
    assert!(
        (ctl.margin() - (2.0 * m0 + 0.02)).abs() < 1e-12,
        "{} vs {m0}",
        ctl.margin()
    );
    // Then comfortable periods: −0.01 each, down to the floor.
    let m1 = ctl.margin();
    for k in 1..=3 {
        ctl.on_batch_done(&BatchReport::new(
            &plan,
            plan.batch,
            1.0 + k as f64 - 0.5,
            plan.exec_time_s,
            plan.batch_energy_j,
            vec![0.01; 50],
        ));
        ctl.on_batch_done(&BatchReport::new(
            &plan,
            plan.batch,
            1.0 + k as f64,
            plan.exec_time_s,
            plan.batch_energy_j,
            vec![],
        ));
    }
    assert!((ctl.margin() - (m1 - 0.03)).abs() < 1e-12);
    let u = ctl.last_margin_update().unwrap();
    assert_eq!(u.requests, 50);
    assert_eq!(u.violation_rate, 0.0);
}

#[test]
fn slower_gpu_is_learned_and_slo_still_holds() {
    let (chain, uc) = costs();
    let slo = 0.15;
    let mut ctl = Controller::new(ControllerConfig::new(slo), &chain, uc, switch(), 0.0).unwrap();
    let rate = ctl.planner().max_clock_capacity() * 0.3;
    let arrivals = poisson(rate, 0.0, 20.0, 5);
    let trace = run(&mut ctl, &arrivals, 1.25, 1.1);
    let c = ctl.corrections();
    assert!((c.time - 1.25).abs() < 0.03, "{c:?}");
    assert!((c.energy - 1.1).abs() < 0.03, "{c:?}");
    assert!(ctl.stats().table_resolves >= 1);
    // Once α has converged (after the first seconds) the tail is back under the SLO.
    let mut late: Vec<f64> = trace
        .done
        .iter()
        .filter(|d| d.0 > 8.0)
        .map(|d| d.1)
        .collect();
    assert!(p99(&mut late) <= slo, "p99 {}", p99(&mut late));
}

#[test]
fn overload_sets_saturated() {
    let (chain, uc) = costs();
    let mut ctl = Controller::new(ControllerConfig::new(0.1), &chain, uc, switch(), 0.0).unwrap();
    let rate = ctl.planner().max_clock_capacity() * 2.0;
    let arrivals = poisson(rate, 0.0, 3.0, 9);
    let _ = run(&mut ctl, &arrivals[..arrivals.len() / 2], 1.0, 1.0);
    assert!(ctl.saturated());
    let fmax = *ctl.planner().costs().clocks_mhz.last().unwrap();
    assert!(
        ctl.current_plan()
            .unit_clocks_mhz
            .iter()
            .all(|&c| c == fmax)
    );
}

#[test]
fn a_late_backlog_is_drained_in_larger_batches() {
    let (chain, uc) = costs();
    let slo = 0.15;
    let mut ctl = Controller::new(ControllerConfig::new(slo), &chain, uc, switch(), 0.0).unwrap();
    let planned = ctl.current_plan().batch;
    let largest = ctl
        .current_plans()
        .by_batch
        .last()
        .map_or(planned, |p| p.batch);
    assert!(
        largest > planned,
        "the case needs room above the plan's batch"
    );
    let now = 1.0;
    let queued = largest * 2;
    // A fresh queue beyond one batch: the plan's batch, at the plan's pace.
    match ctl.next_action(now, queued, Some(now - 1e-3)) {
        Action::Dispatch { batch, .. } => assert_eq!(batch, planned),
        a => panic!("{a:?}"),
    }
    // The oldest past its dispatch time: as many as the largest planned batch holds.
    match ctl.next_action(now, queued, Some(now - slo)) {
        Action::Dispatch { batch, plan } => {
            assert_eq!(batch, largest);
            assert!(plan.batch >= batch);
        }
        a => panic!("{a:?}"),
    }
}
