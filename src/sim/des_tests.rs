//! Event-loop invariants on the exact test device: conservation of requests, energy equal to the
//! counter, a consistent timeline, determinism, and the baselines' clock behaviour.

use std::ops::Range;

use super::des::{SimConfig, SimError, run};
use super::device::{Device, SpanTable};
use super::testdev::{CALL_S, F_DEFAULT, F_MAX, SETTLE_S, TestDevice};
use super::workload::{Workload, WorkloadKind};
use crate::gpu::{LayerWork, WorkKind};
use crate::policy::baselines::{ClipperAimd, TritonConfig, TritonMaxClock};
use crate::policy::{Action, BatchPlan, ClockTarget, Policy, SetCall};

const LAYERS: usize = 4;

/// 4 layers; per sample 2 GFLOP and 4 MB each, so a batch of b takes 0.816 ms·b at f_max.
fn work(_layer: usize, b: u32) -> LayerWork {
    LayerWork {
        kind: WorkKind::Conv,
        flops: 2e9 * f64::from(b),
        bytes: 4e6 * f64::from(b),
        batch: b,
    }
}

fn spans(
    dev: &TestDevice,
    units: &[Range<usize>],
    max_batch: u32,
) -> SpanTable<<TestDevice as Device>::Span> {
    SpanTable::build(dev, units, max_batch, work)
}

/// Predicted batch time at f_max on the test device.
fn exec_at_fmax(b: u32) -> f64 {
    LAYERS as f64 * (2e9 * f64::from(b) / 1e13 + 4e6 * f64::from(b) / 1e12)
}

fn triton(slo: f64) -> TritonMaxClock {
    let exec: Vec<f64> = (1..=64).map(exec_at_fmax).collect();
    TritonMaxClock::max_clock(LAYERS, F_MAX, TritonConfig::for_slo(&exec, slo))
}

fn poisson(rate: f64, dur: f64, seed: u64) -> Vec<f64> {
    Workload::new(WorkloadKind::Poisson, rate, dur)
        .generate(seed)
        .unwrap()
}

#[test]
fn triton_config_follows_the_slo() {
    let exec: Vec<f64> = (1..=64).map(exec_at_fmax).collect();
    let c = TritonConfig::for_slo(&exec, 0.030);
    // exec(b) = 0.816 ms·b ≤ 10 ms → b = 12.
    assert_eq!(c.max_batch, 12);
    assert!((c.max_queue_delay_s - 0.010).abs() < 1e-12);
    assert_eq!(TritonConfig::for_slo(&exec, 0.001).max_batch, 1);
}

#[test]
fn conserves_requests_under_overload_with_drops() {
    let mut p = triton(0.05);
    let arrivals = poisson(3000.0, 5.0, 1); // beyond capacity (≈ 1225/s)
    let mut dev = TestDevice::new();
    let table = spans(&dev, p.units(), p.max_batch());
    let mut cfg = SimConfig::new(0.05);
    cfg.queue_capacity = 100;
    cfg.record_timeline = true;
    let r = run(&mut dev, &table, &mut p, &arrivals, &cfg).unwrap();
    assert_eq!(r.arrivals, arrivals.len());
    assert!(r.dropped > 0, "overload with a bounded queue must drop");
    assert_eq!(r.completed + r.dropped, r.arrivals);
    let tl = r.timeline.unwrap();
    assert_eq!(
        tl.batches.iter().map(|b| b.batch as usize).sum::<usize>(),
        r.completed
    );
    assert!(r.saturated_s > 0.0);
    assert!(r.slo_attainment < 0.5);
}

#[test]
fn energy_is_the_counter_reading_and_timeline_is_consistent() {
    let mut p = triton(0.05);
    let arrivals = poisson(200.0, 20.0, 2);
    let mut dev = TestDevice::new();
    let table = spans(&dev, p.units(), p.max_batch());
    let mut cfg = SimConfig::new(0.05);
    cfg.record_timeline = true;
    cfg.duration_s = Some(20.0);
    let r = run(&mut dev, &table, &mut p, &arrivals, &cfg).unwrap();
    assert_eq!(r.completed, arrivals.len());
    assert_eq!(r.energy_j, dev.energy_mj().unwrap() as f64 / 1000.0);
    assert!((r.energy_j - dev.exact_energy_j()).abs() < 1e-3);
    assert!((r.energy_per_request_j - r.energy_j / r.completed as f64).abs() < 1e-12);
    assert!(r.horizon_s >= 20.0);

    let tl = r.timeline.as_ref().unwrap();
    assert_eq!(tl.batches.len(), r.batches);
    assert_eq!(tl.unit_clocks.len(), r.batches * tl.units);
    let mut busy = 0.0;
    for (i, b) in tl.batches.iter().enumerate() {
        assert!(b.end_s > b.start_s);
        busy += b.end_s - b.start_s;
        if i > 0 {
            assert!(
                b.start_s >= tl.batches[i - 1].end_s,
                "batches overlap at {i}"
            );
        }
        let starts = &tl.unit_starts[b.first_unit..b.first_unit + tl.units];
        assert_eq!(starts[0], b.start_s);
        assert!(starts.windows(2).all(|w| w[0] <= w[1]) && starts[tl.units - 1] < b.end_s);
        assert!(b.batch >= 1 && b.batch <= p.max_batch());
    }
    assert!((busy - r.busy_s).abs() < 1e-9);
    // Below saturation Triton's rule keeps every request within the SLO.
    assert!(r.p99_ms <= 50.0, "p99 {}", r.p99_ms);
    assert_eq!(r.slo_attainment, 1.0);
    assert_eq!(r.windows, 2);
}

#[test]
fn max_clock_never_changes_clocks() {
    let mut p = triton(0.05);
    let arrivals = poisson(300.0, 10.0, 3);
    let mut dev = TestDevice::new();
    let table = spans(&dev, p.units(), p.max_batch());
    let mut cfg = SimConfig::new(0.05);
    cfg.record_timeline = true;
    let r = run(&mut dev, &table, &mut p, &arrivals, &cfg).unwrap();
    assert_eq!(r.switches, 1, "only the initial lock");
    assert_eq!(dev.calls, vec![(0.0, ClockTarget::Locked(F_MAX))]);
    let tl = r.timeline.unwrap();
    for (i, b) in tl.batches.iter().enumerate() {
        if b.start_s >= CALL_S + SETTLE_S {
            assert!(tl.clocks_of(i).iter().all(|&c| c == F_MAX));
        }
    }
}

#[test]
fn default_clock_policy_never_locks() {
    let exec: Vec<f64> = (1..=64).map(exec_at_fmax).collect();
    let mut p = TritonMaxClock::default_clocks(LAYERS, TritonConfig::for_slo(&exec, 0.05));
    let arrivals = poisson(100.0, 5.0, 4);
    let mut dev = TestDevice::new();
    let table = spans(&dev, p.units(), p.max_batch());
    let r = run(&mut dev, &table, &mut p, &arrivals, &SimConfig::new(0.05)).unwrap();
    assert!(dev.calls.iter().all(|c| c.1 == ClockTarget::Default));
    assert!(r.switches <= 1);
    assert_eq!(dev.graphics_clock_mhz(), F_DEFAULT);
}

#[test]
fn deterministic_under_seed() {
    let go = |seed| {
        let mut p = ClipperAimd::new(LAYERS, F_MAX, 32, 0.05);
        let arrivals = Workload::new(WorkloadKind::bursty(), 250.0, 20.0)
            .generate(seed)
            .unwrap();
        let mut dev = TestDevice::new();
        let table = spans(&dev, p.units(), p.max_batch());
        let mut cfg = SimConfig::new(0.05);
        cfg.record_timeline = true;
        run(&mut dev, &table, &mut p, &arrivals, &cfg).unwrap()
    };
    assert_eq!(go(9), go(9));
    assert_ne!(go(9).energy_j, go(10).energy_j);
}

#[test]
fn clipper_aimd_settles_near_the_target() {
    // exec(b) = 0.816 ms·b; target = SLO/2 = 20 ms → batches above 24 back off.
    let mut p = ClipperAimd::new(LAYERS, F_MAX, 64, 0.040);
    let arrivals = poisson(2000.0, 10.0, 5); // overload: the queue always has enough
    let mut dev = TestDevice::new();
    let table = spans(&dev, p.units(), p.max_batch());
    let mut cfg = SimConfig::new(0.040);
    cfg.record_timeline = true;
    cfg.queue_capacity = 64;
    let r = run(&mut dev, &table, &mut p, &arrivals, &cfg).unwrap();
    let tl = r.timeline.unwrap();
    let late = &tl.batches[tl.batches.len() / 2..];
    assert!(
        late.iter().all(|b| (22..=25).contains(&b.batch)),
        "AIMD should hover at 24"
    );
    assert!(late.iter().any(|b| b.batch == 25) && late.iter().any(|b| b.batch == 22));
}

/// A policy that dispatches at once, alternating two clocks per unit, to exercise the clock
/// thread.
struct Alternating {
    units: Vec<Range<usize>>,
    plan: BatchPlan,
}

impl Policy for Alternating {
    fn name(&self) -> &str {
        "alternating"
    }
    fn units(&self) -> &[Range<usize>] {
        &self.units
    }
    fn max_batch(&self) -> u32 {
        8
    }
    fn next_action(&mut self, _now: f64, q: usize, _o: f64) -> Action {
        Action::Dispatch {
            batch: q.min(8) as u32,
        }
    }
    fn plan(&self) -> &BatchPlan {
        &self.plan
    }
}

#[test]
fn clock_thread_serialises_and_skips_repeated_targets() {
    let units = vec![0..2, 2..4];
    let plan = BatchPlan {
        unit_clocks: vec![Some(900), Some(900)],
        set_calls: vec![
            SetCall {
                offset_s: 0.0,
                target: ClockTarget::Locked(900),
            },
            SetCall {
                offset_s: 0.0,
                target: ClockTarget::Locked(900),
            },
            SetCall {
                offset_s: 0.001,
                target: ClockTarget::Locked(1200),
            },
            SetCall {
                offset_s: 0.001,
                target: ClockTarget::Locked(900),
            },
        ],
    };
    let mut p = Alternating { units, plan };
    let arrivals = poisson(50.0, 2.0, 6);
    let mut dev = TestDevice::new();
    let table = spans(&dev, p.units(), p.max_batch());
    let mut cfg = SimConfig::new(0.1);
    cfg.record_timeline = true;
    let r = run(&mut dev, &table, &mut p, &arrivals, &cfg).unwrap();
    // First batch: 900 issued, 900 skipped, 1200 and 900 issued. Later batches start with 900
    // already requested, so both 900s are skipped and 1200, 900 issued.
    assert_eq!(r.switches, 1 + 2 * r.batches);
    assert_eq!(r.skipped_set_calls, 2 * r.batches - 1);
    let calls = &r.timeline.as_ref().unwrap().set_calls;
    assert!(
        calls
            .windows(2)
            .all(|w| w[1].issued_s >= w[0].issued_s + CALL_S - 1e-12)
    );
}

#[test]
fn stalled_policy_is_an_error() {
    struct Stall(Vec<Range<usize>>, BatchPlan);
    impl Policy for Stall {
        fn name(&self) -> &str {
            "stall"
        }
        fn units(&self) -> &[Range<usize>] {
            &self.0
        }
        fn max_batch(&self) -> u32 {
            1
        }
        fn next_action(&mut self, now: f64, _q: usize, _o: f64) -> Action {
            Action::WaitUntil(now)
        }
        fn plan(&self) -> &BatchPlan {
            &self.1
        }
    }
    let mut p = Stall(
        std::iter::once(0..LAYERS).collect(),
        BatchPlan::unmanaged(1),
    );
    let mut dev = TestDevice::new();
    let table = spans(&dev, p.units(), 1);
    let err = run(&mut dev, &table, &mut p, &[0.5], &SimConfig::new(0.1)).unwrap_err();
    assert!(matches!(err, SimError::PolicyStalled { .. }), "{err}");
    let err = run(&mut dev, &table, &mut p, &[0.5, 0.1], &SimConfig::new(0.1)).unwrap_err();
    assert_eq!(err, SimError::BadArrivals);
}
