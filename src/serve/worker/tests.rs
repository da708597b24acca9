//! The worker loop on virtual time: the same turns as the server's loop ([`Worker::turn`],
//! dispatch, refusal, drain and finish), driven by a clock that jumps to the next event instead
//! of waiting, over a simulated GPU whose time is virtual. Beside the wall-time server tests
//! (`tests/serve_*.rs`).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::*;
use crate::exec::{DeviceClock, SimDevice, SimExecutor};
use crate::gpu::GpuBackend;
use crate::gpu::sim::{GpuProfile, SimGpu};
use crate::model::zoo;
use crate::policy::build::PolicyKind;
use crate::serve::device::SimServing;
use crate::serve::model::default_io;
use crate::serve::oip::OipError;
use crate::serve::queue::{RequestDone, Slot};
use crate::telemetry::LayerPowerModel;

type Answer = oneshot::Receiver<Result<RequestDone, OipError>>;

struct Bench {
    worker: Box<Worker>,
    device: SimDevice,
    queue: Arc<Queue>,
}

/// The V100 with a switch of about 0.15 ms, where EALI keeps several units at their own clocks.
fn fast_switch_v100() -> GpuProfile {
    let mut spec = GpuProfile::builtin("v100-sxm2").unwrap().spec().clone();
    spec.name = "v100-fastswitch".into();
    spec.switch.call_median_ms = 0.05;
    spec.switch.call_p99_ms = 0.1;
    spec.switch.settle_floor_ms = 0.1;
    spec.switch.settle_extra_median_ms = 0.02;
    spec.switch.settle_extra_p99_ms = 0.05;
    GpuProfile::from_spec(spec).unwrap()
}

/// A worker serving `model` on a virtual-time simulated GPU of `profile` under `kind`.
fn bench(model: &str, profile: GpuProfile, kind: PolicyKind, slo_s: f64) -> Bench {
    bench_on(model, profile, kind, slo_s, |d| Box::new(d))
}

/// [`bench`] with the serving device made from the simulated one by `wrap`.
fn bench_on(
    model: &str,
    profile: GpuProfile,
    kind: PolicyKind,
    slo_s: f64,
    wrap: impl FnOnce(SimServing) -> Box<dyn ServingDevice>,
) -> Bench {
    let graph = Arc::new(zoo::build(model).unwrap());
    let max_batch = 32;
    let (costs, table) =
        crate::serve::runtime::simulated_costs(&graph, &profile, max_batch, 42, None).unwrap();
    let device = SimDevice::new(SimGpu::new(profile, 0, 5), DeviceClock::Virtual);
    let queue = Arc::new(Queue::new(4096));
    let info = Arc::new(ModelInfo {
        name: model.into(),
        namespace: "default".into(),
        io: default_io(&graph),
        graph: graph.clone(),
        max_batch,
        slo_s,
        percentile: 0.99,
    });
    let setup = WorkerSetup {
        info,
        queue: queue.clone(),
        metrics: Metrics::new().unwrap(),
        executor: Box::new(SimExecutor::new(device.clone(), graph)),
        device: Some(wrap(SimServing::new(device.clone()))),
        power: Some(LayerPowerModel::new(table)),
        policy: Box::new(move || {
            let policy = costs
                .policy(kind, "test", slo_s)
                .map_err(|e| e.to_string())?;
            let unit_names = costs.unit_names(kind, policy.units());
            Ok(BuiltPolicy { policy, unit_names })
        }),
        timebase: Timebase::new(),
        report_window_s: 10.0,
    };
    let worker = Box::new(Worker::new(setup, Arc::new(WorkerStats::default())).unwrap());
    Bench {
        worker,
        device,
        queue,
    }
}

/// ResNet-50 on a V100 at max clocks with Triton-style batching, SLO 50 ms.
fn max_clock_resnet50() -> Bench {
    bench(
        "resnet50",
        GpuProfile::builtin("v100-sxm2").unwrap(),
        PolicyKind::MaxClock,
        0.05,
    )
}

/// One request arriving at `t` with deadline `t + deadline_s`, queued now.
fn submit(queue: &Queue, t: f64, deadline_s: f64) -> Answer {
    let (mut slots, rx) = Slot::for_request(1);
    let job = Job {
        arrival_s: t,
        deadline_s: t + deadline_s,
        input: Vec::new(),
        slot: slots.remove(0),
    };
    assert!(queue.submit(vec![job]).is_ok());
    rx
}

impl Bench {
    fn now(&self) -> f64 {
        self.device.now_s()
    }

    fn advance(&self, t: f64) {
        self.device.lock().advance_to(t);
    }

    /// Runs the loop's turns over `arrivals` (ascending device times, each with its deadline
    /// after arrival), jumping the clock to the next arrival or the policy's wait instead of
    /// sleeping; once every request has arrived, drains (what SIGTERM does) and finishes.
    fn run(&mut self, arrivals: &[(f64, f64)]) -> Vec<Answer> {
        let mut pending: VecDeque<(f64, f64)> = arrivals.iter().copied().collect();
        let mut answers = Vec::new();
        let mut turns = 0;
        loop {
            turns += 1;
            assert!(turns < 1_000_000, "the loop does not end");
            while let Some(&(t, d)) = pending.front().filter(|a| a.0 <= self.now()) {
                answers.push(submit(&self.queue, t, d));
                pending.pop_front();
            }
            if pending.is_empty() && !self.queue.is_draining() {
                self.queue.drain();
            }
            let (step, idle_clock) = self.worker.turn();
            if let Some((at, target)) = idle_clock {
                self.worker.set_clock(at, target);
            }
            let next = pending.front().map(|a| a.0);
            match step {
                Step::Stop => break,
                Step::Idle => self.advance(next.unwrap_or(self.now() + TICK_S)),
                Step::WaitUntil(t) => self.advance(next.map_or(t, |n| n.min(t)).max(self.now())),
                Step::Reject(jobs) => self.worker.reject_late(jobs),
                Step::Unservable(jobs, why) => self.worker.reject_unservable(jobs, &why),
                Step::Dispatch { jobs, now, oldest } => self.worker.dispatch(jobs, now, oldest),
            }
        }
        self.worker.finish();
        answers
    }
}

/// Evenly spaced arrivals at `rate` for `secs`, each with deadline `deadline_s`.
fn steady(rate: f64, secs: f64, deadline_s: f64) -> Vec<(f64, f64)> {
    let n = (rate * secs) as usize;
    (0..n)
        .map(|i| (0.5 + i as f64 / rate, deadline_s))
        .collect()
}

fn outcomes(answers: Vec<Answer>) -> (Vec<u32>, Vec<OipError>) {
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for mut a in answers {
        match a.try_recv() {
            Ok(Ok(done)) => ok.push(done.batch),
            Ok(Err(e)) => failed.push(e),
            Err(e) => panic!("a request was never answered: {e}"),
        }
    }
    (ok, failed)
}

#[test]
fn every_request_is_answered_in_batches_within_its_deadline() {
    let mut b = max_clock_resnet50();
    let answers = b.run(&steady(300.0, 3.0, 0.05));
    let (ok, failed) = outcomes(answers);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(ok.len(), 900);
    // Answered, not refused: each finished before its deadline (the worker answers a request
    // whose batch ends past its deadline 503). Dynamic batching: at 300 req/s they share batches.
    let mean = f64::from(ok.iter().sum::<u32>()) / ok.len() as f64;
    assert!(mean > 1.5, "mean batch {mean}");
}

#[test]
fn requests_that_cannot_make_their_deadline_are_refused_and_not_run() {
    let mut b = max_clock_resnet50();
    // A deadline shorter than any batch of ResNet-50 on a V100 (a few ms at batch 1).
    let answers = b.run(&steady(100.0, 1.0, 0.0005));
    let (ok, failed) = outcomes(answers);
    assert!(ok.is_empty(), "{} answered", ok.len());
    assert_eq!(failed.len(), 100);
    assert!(failed.iter().all(|e| e.kind == ErrorKind::DeadlineExceeded));
    assert!(
        b.worker.ran.is_empty(),
        "a batch ran for requests it could not serve"
    );
}

#[test]
fn each_unit_starts_at_the_clock_its_plan_set_for_it() {
    let mut b = bench("alexnet", fast_switch_v100(), PolicyKind::Eali, 0.2);
    assert!(b.worker.units.len() >= 2, "{:?}", b.worker.units);
    let answers = b.run(&steady(250.0, 6.0, 0.4));
    let (ok, failed) = outcomes(answers);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(ok.len(), 1500);
    // After the first second and a half (the controller's rate estimate and its boundary
    // corrections settle), every unit of a full batch that the plan gave a clock started at that
    // clock, and units of one batch ran at different clocks. (A partial batch, the drain's last
    // one here, runs a plan made for a full one: its boundaries come earlier than planned.)
    let max = b.worker.policy.max_batch();
    let settled: Vec<_> = b
        .worker
        .ran
        .iter()
        .filter(|(r, planned, batch)| r.start_s > 1.5 && planned.is_some() && *batch == max)
        .collect();
    assert!(settled.len() > 60, "{}", settled.len());
    let wrong: Vec<_> = settled
        .iter()
        .filter(|(r, planned, _)| Some(r.clock_start_mhz) != *planned)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {}: {wrong:?}",
        wrong.len(),
        settled.len()
    );
    let clocks: std::collections::BTreeSet<Option<u32>> =
        settled.iter().map(|(_, planned, _)| *planned).collect();
    assert!(clocks.len() >= 2, "one clock for every unit: {clocks:?}");
}

#[test]
fn drain_answers_everything_queued_and_resets_the_clocks() {
    let mut b = max_clock_resnet50();
    // Max clocks are locked from the start.
    b.advance(1.0);
    assert!(b.device.lock().clocks().unwrap().locked.is_some());
    // A burst, all queued before the loop turns: the drain dispatches it at once, in full
    // batches.
    let answers: Vec<Answer> = (0..100).map(|_| submit(&b.queue, 1.0, 10.0)).collect();
    let answers = {
        let mut a = answers;
        a.extend(b.run(&[]));
        a
    };
    let (ok, failed) = outcomes(answers);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(ok.len(), 100);
    let max = b.worker.policy.max_batch();
    let in_full = ok.iter().filter(|&&batch| batch == max).count();
    assert!(
        in_full + max as usize > 100,
        "batches of {ok:?} (max {max})"
    );
    // finish() put the GPU back to its default clocks.
    let t = b.now() + 1.0;
    b.advance(t);
    assert_eq!(b.device.lock().clocks().unwrap().locked, None);
}

/// The simulated GPU, lost from device time `from_s` until `to_s` (as the node agent reports a
/// GPU lost and brought back).
struct LostBetween {
    inner: SimServing,
    from_s: f64,
    to_s: f64,
}

impl ServingDevice for LostBetween {
    fn label(&self) -> &str {
        self.inner.label()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn now_s(&self) -> f64 {
        self.inner.now_s()
    }
    fn unix_s(&self, t_s: f64) -> f64 {
        self.inner.unix_s(t_s)
    }
    fn set_clock_at(
        &mut self,
        at_s: f64,
        target: ClockTarget,
    ) -> Result<bool, crate::gpu::GpuError> {
        self.inner.set_clock_at(at_s, target)
    }
    fn requested(&self) -> Option<ClockTarget> {
        self.inner.requested()
    }
    fn reset_clocks(&mut self) -> Result<(), crate::gpu::GpuError> {
        self.inner.reset_clocks()
    }
    fn clock_mhz(&self) -> Option<u32> {
        self.inner.clock_mhz()
    }
    fn read(&self) -> crate::serve::device::Reading {
        self.inner.read()
    }
    fn fault(&self) -> Option<String> {
        let t = self.now_s();
        (self.from_s..self.to_s)
            .contains(&t)
            .then(|| "GPU-test is lost".to_string())
    }
}

#[test]
fn a_lost_gpu_answers_503_with_the_reason_and_serving_resumes_when_it_is_back() {
    let mut b = bench_on(
        "resnet50",
        GpuProfile::builtin("v100-sxm2").unwrap(),
        PolicyKind::MaxClock,
        0.05,
        |inner| {
            Box::new(LostBetween {
                inner,
                from_s: 1.5,
                to_s: 2.5,
            })
        },
    );
    let arrivals = steady(300.0, 3.0, 0.05);
    let answers = b.run(&arrivals);
    let (mut before, mut during, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for ((t, _), mut a) in arrivals.iter().zip(answers) {
        let r = a.try_recv().expect("every request is answered");
        match *t {
            t if t < 1.45 => before.push(r),
            t if (1.5..2.5).contains(&t) => during.push(r),
            t if t > 2.55 => after.push(r),
            _ => {}
        }
    }
    assert!(before.iter().all(Result::is_ok), "before the loss");
    assert!(after.iter().all(Result::is_ok), "after the GPU is back");
    assert!(!during.is_empty());
    for r in &during {
        let e = r.as_ref().expect_err("served while the GPU was lost");
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("GPU-test is lost"), "{}", e.message);
    }
    assert!(b.worker.stats.fault().is_none());
    assert!(b.worker.stats.ready.load(Ordering::Relaxed));
}
