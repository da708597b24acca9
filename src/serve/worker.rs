//! The EALI loop of one model, an async task: report arrivals to the scheduling policy, ask
//! it when to dispatch how many requests with which clock plan, issue the plan's set-calls ahead
//! of the unit boundaries through the device, run the batch unit by unit on the executor through
//! the device (whose clock and counter readings the unit records carry), attribute the energy
//! counter to units and layers, answer the requests, and report the batch back to the policy. The policy is the same [`Policy`] the discrete-event simulator runs, so
//! the server and the simulator schedule identically.
//!
//! Requests that cannot finish before their deadline are answered 503 instead of being run (or
//! answered late). On drain, everything queued is dispatched at once and the GPU's clocks are
//! reset before the task ends.
//!
//! The loop runs on the server's tokio runtime, woken by the queue's [`Queue::arrival`], so a
//! request reaches the policy and its answer reaches the handler without a hand-off between OS
//! threads. (Measured with a zero-cost model on a busy two-core machine, a worker thread took
//! 0.2 ms at p90 and 0.5 ms at p99 to pick a request up, waiting for a core; the task takes a
//! few microseconds, 0.02-0.1 ms at p99.) Batches whose executor takes time (the simulated GPU
//! sleeping to GPU speed, the CPU computing) run on the blocking pool, and so do the
//! sub-millisecond ends of waits for a batch to fill, which tokio's 1 ms timer cannot time.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::Counter;

mod energy;
#[cfg(test)]
mod tests;

use energy::Hook;

use super::admission::Forecast;
use super::device::ServingDevice;
use super::model::ModelInfo;
use super::oip::{ErrorKind, OipError};
use super::queue::{Job, Queue, SampleDone};
use crate::exec::{BatchRequest, Executor};
use crate::policy::{Action, BatchDone, ClockTarget, Policy};
use crate::telemetry::{Attributor, LayerPowerModel, Metrics, WindowMeter};

/// Seconds since the server's epoch: the time axis of arrivals, deadlines and the device.
#[derive(Debug, Clone, Copy)]
pub struct Timebase {
    pub epoch: Instant,
}

impl Timebase {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
    pub fn now_s(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }
}

impl Default for Timebase {
    fn default() -> Self {
        Self::new()
    }
}

/// A policy with names for its units (metric labels).
pub struct BuiltPolicy {
    pub policy: Box<dyn Policy + Send>,
    pub unit_names: Vec<String>,
}

/// Builds the policy on the blocking pool (planning can take a while).
pub type PolicyFactory = Box<dyn FnOnce() -> Result<BuiltPolicy, String> + Send>;

/// Everything a worker needs.
pub struct WorkerSetup {
    pub info: Arc<ModelInfo>,
    pub queue: Arc<Queue>,
    pub metrics: Metrics,
    pub executor: Box<dyn Executor>,
    /// The GPU the model is served on (clock control, time, energy counter, GPU metrics);
    /// `None` for an executor with no GPU under it.
    pub device: Option<Box<dyn ServingDevice>>,
    /// Predicted per-layer power, for energy attribution.
    pub power: Option<LayerPowerModel>,
    pub policy: PolicyFactory,
    pub timebase: Timebase,
    /// Length of the serving windows reported to the node agent (s).
    pub report_window_s: f64,
}

/// What the protocol handlers can see of a running worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Served samples per second (EWMA, f64 bits), for Retry-After.
    throughput: AtomicU64,
    pub ready: AtomicBool,
    /// When the running batch is predicted to end (f64 bits, s).
    busy_until_s: AtomicU64,
    /// How late batches recently ended against admission's schedule (f64 bits, s).
    margin_s: AtomicU64,
    /// Predicted batch times at the highest clock, by batch size ([`Forecast::batch_s`]).
    batch_s: Mutex<Arc<[f64]>>,
    /// Why the device cannot serve now (see [`ServingDevice::fault`]).
    fault: Mutex<Option<String>>,
}

impl WorkerStats {
    pub fn throughput(&self) -> f64 {
        f64::from_bits(self.throughput.load(Ordering::Relaxed))
    }
    fn set_throughput(&self, v: f64) {
        self.throughput.store(v.to_bits(), Ordering::Relaxed);
    }

    /// What admission predicts a request's answer time from.
    pub fn forecast(&self) -> Forecast {
        Forecast {
            busy_until_s: f64::from_bits(self.busy_until_s.load(Ordering::Relaxed)),
            margin_s: f64::from_bits(self.margin_s.load(Ordering::Relaxed)),
            batch_s: self
                .batch_s
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
    /// Why the model's GPU cannot serve now; `None` while it can.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the device's fault, the model not ready while there is one; whether it changed.
    fn set_fault(&self, fault: Option<String>) -> bool {
        let mut f = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if *f == fault {
            return false;
        }
        self.ready.store(fault.is_none(), Ordering::Relaxed);
        *f = fault;
        true
    }

    fn set_margin(&self, s: f64) {
        self.margin_s.store(s.to_bits(), Ordering::Relaxed);
    }
    fn set_busy_until(&self, s: f64) {
        self.busy_until_s.store(s.to_bits(), Ordering::Relaxed);
    }
    fn set_batch_times(&self, times: Arc<[f64]>) {
        *self.batch_s.lock().unwrap_or_else(|e| e.into_inner()) = times;
    }
}

/// A started worker task.
pub struct WorkerHandle {
    pub task: tokio::task::JoinHandle<()>,
    pub stats: Arc<WorkerStats>,
}

/// Batches whose lateness against admission's schedule sets its margin.
const LATENESS_BATCHES: usize = 32;

/// The margin is forgotten when no batch has ended for this long (s).
const MARGIN_MEMORY_S: f64 = 1.0;

/// Longest the loop sleeps without a look at the GPU's telemetry (s).
const TICK_S: f64 = 0.1;
/// Counter update period assumed for attribution (NVML's energy counter).
const COUNTER_PERIOD_S: f64 = 0.010;

/// tokio's timer resolution: waits are timed on it up to this much before their end.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);
/// Shortest wait for a batch to fill, so a policy asking to wait for a time already past
/// cannot spin the loop.
const MIN_WAIT_S: f64 = 0.0002;
/// Step of the wait for requests still uploading into a batch (`await_incoming`), s: an
/// upload over loopback or a LAN takes about a millisecond.
const INCOMING_WAIT_S: f64 = 0.0005;

/// Starts the worker task on the current runtime; returns once the policy is built (or failed
/// to build).
pub async fn spawn(setup: WorkerSetup) -> Result<WorkerHandle, String> {
    let stats = Arc::new(WorkerStats::default());
    let st = stats.clone();
    let worker = tokio::task::spawn_blocking(move || Worker::new(setup, st))
        .await
        .map_err(|e| format!("worker start-up failed: {e}"))??;
    let task = tokio::spawn(run(Box::new(worker)));
    Ok(WorkerHandle { task, stats })
}

/// What the loop does next, decided under the queue lock.
enum Step {
    /// Drained and empty: the loop ends.
    Stop,
    /// Nothing queued.
    Idle,
    /// The policy waits for the batch to fill until this device time.
    WaitUntil(f64),
    /// Requests past their deadline, to answer 503.
    Reject(Vec<Job>),
    /// Requests the device cannot serve now, to answer 503 with the reason.
    Unservable(Vec<Job>, String),
    Dispatch {
        jobs: Vec<Job>,
        now: f64,
        oldest: f64,
    },
}

/// The loop (see the module docs), then the drain's clock reset.
async fn run(w: Box<Worker>) {
    let name = w.info.name.clone();
    if let Some(mut w) = run_loop(w).await {
        // Resetting the clocks may block on a real actuator (the node agent's flush).
        if let Err(e) = tokio::task::spawn_blocking(move || w.finish()).await {
            tracing::error!(model = %name, error = %e, "worker shutdown failed");
        }
    }
}

/// Runs until drained; `None` when the worker was lost to a panic.
async fn run_loop(mut w: Box<Worker>) -> Option<Box<Worker>> {
    let queue = w.queue.clone();
    let blocking = w.executor.takes_time();
    loop {
        let (step, idle_clock) = w.turn();
        if let Some((at, target)) = idle_clock {
            // A set-call can wait on a real actuator; workers with a GPU make it off the runtime.
            if blocking {
                w = on_blocking_pool(w, move |w| w.set_clock(at, target)).await?;
            } else {
                w.set_clock(at, target);
            }
        }
        match step {
            Step::Stop => return Some(w),
            Step::Idle => {
                let _ =
                    tokio::time::timeout(Duration::from_secs_f64(TICK_S), queue.arrival()).await;
            }
            Step::WaitUntil(t) => {
                // A policy's NaN or infinite time waits one tick rather than panicking.
                let wait = (t - w.now_s()).clamp(MIN_WAIT_S, TICK_S);
                let wait = if wait.is_finite() { wait } else { TICK_S };
                wait_for_arrival(&queue, Duration::from_secs_f64(wait)).await;
            }
            Step::Reject(jobs) => w.reject_late(jobs),
            Step::Unservable(jobs, why) => w.reject_unservable(jobs, &why),
            Step::Dispatch { jobs, now, oldest } if blocking => {
                w = on_blocking_pool(w, move |w| w.dispatch(jobs, now, oldest)).await?;
            }
            Step::Dispatch { jobs, now, oldest } => {
                w.dispatch(jobs, now, oldest);
                // A queue that never empties would keep this task from ever giving its thread
                // back to the handlers that fill it; the budget yields now and then. (Not
                // `yield_now` after each batch: that defers the task until the scheduler next
                // polls its I/O driver, which delays the next pick-up by up to a scheduler tick.)
                tokio::task::coop::consume_budget().await;
            }
        }
    }
}

/// Runs `f` on the worker on the blocking pool; `None` when it panicked (the worker is then
/// lost and its queue answered).
async fn on_blocking_pool(
    mut w: Box<Worker>,
    f: impl FnOnce(&mut Worker) + Send + 'static,
) -> Option<Box<Worker>> {
    let (queue, stats, name) = (w.queue.clone(), w.stats.clone(), w.info.name.clone());
    let joined = tokio::task::spawn_blocking(move || {
        f(&mut w);
        w
    })
    .await;
    match joined {
        Ok(w) => Some(w),
        Err(e) => {
            worker_lost(&queue, &stats, &name, &e.to_string());
            None
        }
    }
}

/// Waits `wait` or until a new request arrives: on the async timer up to its resolution before
/// the end, then precisely on the blocking pool.
async fn wait_for_arrival(queue: &Arc<Queue>, wait: Duration) {
    let deadline = Instant::now() + wait;
    if let Some(coarse) = deadline.checked_sub(TIMER_RESOLUTION)
        && coarse > Instant::now()
        && tokio::time::timeout_at(coarse.into(), queue.arrival())
            .await
            .is_ok()
    {
        return;
    }
    if Instant::now() < deadline {
        let q = queue.clone();
        let _ = tokio::task::spawn_blocking(move || q.wait_until(deadline)).await;
    }
}

/// The worker panicked: the model is no longer ready, and nothing queued is left waiting.
fn worker_lost(queue: &Queue, stats: &WorkerStats, model: &str, why: &str) {
    tracing::error!(model = %model, error = %why, "model worker failed");
    stats.ready.store(false, Ordering::Relaxed);
    queue.drain();
    for j in queue.take_all() {
        j.slot.fail(OipError::internal(
            "the model worker failed; see the server log",
        ));
    }
}

struct Worker {
    info: Arc<ModelInfo>,
    queue: Arc<Queue>,
    metrics: Metrics,
    executor: Box<dyn Executor>,
    device: Option<Box<dyn ServingDevice>>,
    power: Option<LayerPowerModel>,
    attributor: Attributor,
    policy: Box<dyn Policy + Send>,
    units: Vec<Range<usize>>,
    /// `eali_layer_energy_joules_total` handle per layer (labelled with its unit).
    layer_counters: Vec<Counter>,
    gpu_label: String,
    queue_depth: prometheus::IntGauge,
    batch_size: prometheus::Histogram,
    decision_seconds: prometheus::Histogram,
    timebase: Timebase,
    stats: Arc<WorkerStats>,
    last_tick_s: f64,
    last_counter_mj: Option<u64>,
    /// The current serving window (tail latency, load, energy estimate for the node agent).
    window: WindowMeter,
    /// Max-clock capacity at the SLO (req/s), the reference of the reported load ratio.
    capacity_rps: Option<f64>,
    /// Clock of each unit of the batch running now, as the unit-boundary hook saw it.
    unit_clocks: Vec<u32>,
    /// Arrival times read under the queue's lock, reported to the policy after it (reused).
    arrivals: Vec<f64>,
    /// When admission's schedule has the batch taken last end (s).
    scheduled_end_s: f64,
    /// When admission's schedule, made at the last dispatch, sends the next batch (s).
    next_send_s: f64,
    /// How late the last batches ended against it (s), newest last.
    lateness_s: VecDeque<f64>,
    /// When the last batch's lateness was noted (s).
    lateness_at_s: f64,
    /// Every unit run, with its planned clock (tests).
    #[cfg(test)]
    ran: Vec<(crate::exec::UnitRecord, Option<u32>, u32)>,
}

impl Worker {
    /// Builds the policy and the worker (blocking: planning takes a while).
    fn new(mut s: WorkerSetup, stats: Arc<WorkerStats>) -> Result<Self, String> {
        let factory = std::mem::replace(&mut s.policy, Box::new(|| Err(String::new())));
        let built = factory()?;
        let units = built.policy.units().to_vec();
        crate::exec::check_units(&units, s.info.graph.layers.len()).map_err(|e| e.to_string())?;
        let names: Vec<String> = if built.unit_names.len() == units.len() {
            built.unit_names
        } else {
            units
                .iter()
                .map(|r| {
                    let l = &s.info.graph.layers;
                    format!("{}..{}", l[r.start].name, l[r.end - 1].name)
                })
                .collect()
        };
        let mut layer_counters = Vec::with_capacity(s.info.graph.layers.len());
        // On the agent's GPU the agent exports the layers' energy; this process has none.
        let attributes = s.device.as_ref().is_some_and(|d| !d.agent_attributes());
        for (u, r) in units.iter().enumerate().filter(|_| attributes) {
            for l in r.clone() {
                layer_counters.push(s.metrics.layer_energy.with_label_values(&[
                    s.info.namespace.as_str(),
                    s.info.name.as_str(),
                    s.info.graph.name.as_str(),
                    names[u].as_str(),
                    s.info.graph.layers[l].name.as_str(),
                ]));
            }
        }
        let gpu_label = s
            .device
            .as_ref()
            .map_or_else(|| "none".to_string(), |d| d.label().to_string());
        let m = &s.metrics;
        m.slo_seconds
            .with_label_values(&[&s.info.name])
            .set(s.info.slo_s);
        m.slo_percentile
            .with_label_values(&[&s.info.name])
            .set(s.info.percentile);
        // Series that start at zero are exported from the start, not from their first event.
        m.slo_violations
            .with_label_values(&[&s.info.name])
            .inc_by(0);
        m.requests
            .with_label_values(&[s.info.name.as_str(), crate::telemetry::outcome::OK])
            .inc_by(0);
        m.saturated.with_label_values(&[&s.info.name]).set(0);
        let capacity_rps = s.power.as_ref().and_then(|p| {
            p.capacity_at_slo(
                s.info.graph.layers.len(),
                built.policy.max_batch(),
                s.info.slo_s,
            )
        });
        let started_s = s
            .device
            .as_ref()
            .map_or_else(|| s.timebase.now_s(), |d| d.now_s());
        let window = WindowMeter::new(started_s, s.report_window_s, s.info.percentile);
        let mut w = Self {
            queue_depth: m.queue_depth.with_label_values(&[&s.info.name]),
            batch_size: m.batch_size.with_label_values(&[&s.info.name]),
            decision_seconds: m.decision_seconds.with_label_values(&[&s.info.name]),
            info: s.info,
            queue: s.queue,
            metrics: s.metrics,
            executor: s.executor,
            device: s.device,
            power: s.power,
            attributor: Attributor::new(COUNTER_PERIOD_S),
            policy: built.policy,
            units,
            layer_counters,
            gpu_label,
            timebase: s.timebase,
            stats,
            last_tick_s: f64::NEG_INFINITY,
            last_counter_mj: None,
            window,
            capacity_rps,
            unit_clocks: Vec::new(),
            arrivals: Vec::new(),
            scheduled_end_s: f64::NEG_INFINITY,
            next_send_s: f64::NEG_INFINITY,
            lateness_s: VecDeque::with_capacity(LATENESS_BATCHES),
            lateness_at_s: 0.0,
            #[cfg(test)]
            ran: Vec::new(),
        };
        w.publish_forecast();
        if let Some(target) = w.policy.initial_clock() {
            let now = w.now_s();
            w.set_clock(now, target);
        }
        w.stats.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            model = %w.info.name,
            architecture = %w.info.graph.name,
            executor = %w.executor.name(),
            device = %w.device.as_ref().map_or_else(|| "none".to_string(), |d| d.describe()),
            policy = %w.policy.name(),
            units = w.units.len(),
            max_batch = w.policy.max_batch(),
            "model ready"
        );
        Ok(w)
    }

    fn now_s(&self) -> f64 {
        match &self.device {
            Some(d) => d.now_s(),
            None => self.timebase.now_s(),
        }
    }

    fn set_clock(&mut self, at_s: f64, target: ClockTarget) {
        let Some(device) = self.device.as_mut() else {
            return;
        };
        match device.set_clock_at(at_s, target) {
            Ok(true) => {
                self.metrics
                    .clock_switches
                    .with_label_values(&[&self.gpu_label])
                    .inc();
                let hz = f64::from(target.mhz()) * 1e6;
                self.metrics
                    .clock_target
                    .with_label_values(&[&self.gpu_label])
                    .set(hz);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(model = %self.info.name, error = %e, "clock change failed"),
        }
    }

    /// One turn of the loop before it waits or runs something: telemetry, the next step, and
    /// the clock the policy wants held while the GPU waits (for the caller to set: on a real
    /// device that may block).
    fn turn(&mut self) -> (Step, Option<(f64, ClockTarget)>) {
        self.tick(false);
        if let Some(step) = self.fault_step() {
            return (step, None);
        }
        let step = self.next_step();
        let idle = matches!(step, Step::Idle | Step::WaitUntil(_))
            .then(|| self.idle_clock_change())
            .flatten();
        (step, idle)
    }

    /// While the device reports a fault: every queued request, to answer 503 with the reason
    /// (the model is not ready meanwhile, so new requests are refused at the door). `None`
    /// while it can serve.
    fn fault_step(&mut self) -> Option<Step> {
        let fault = self.device.as_ref().and_then(|d| d.fault());
        if self.stats.set_fault(fault.clone()) {
            match &fault {
                Some(why) => tracing::error!(model = %self.info.name, reason = %why, "not serving"),
                None => tracing::info!(model = %self.info.name, "the GPU can serve again"),
            }
        }
        let why = fault?;
        let now = self.now_s();
        let mut q = self.queue.lock();
        let jobs: Vec<Job> = q.jobs.drain(..).collect();
        q.tail = self.stats.forecast().schedule(now, now, std::iter::empty());
        self.queue_depth.set(0);
        Some(if !jobs.is_empty() {
            Step::Unservable(jobs, why)
        } else if q.draining {
            Step::Stop
        } else {
            Step::Idle
        })
    }

    /// Reports new arrivals to the policy and decides the next step. The queue's lock, which
    /// the request handlers take to submit, is held only to read and take jobs: the policy's
    /// decisions (which may re-plan) run outside it. Only this worker removes jobs while it
    /// runs, so the oldest jobs seen under the first lock are still the oldest under the second.
    fn next_step(&mut self) -> Step {
        let mut arrivals = std::mem::take(&mut self.arrivals);
        arrivals.clear();
        let now = self.now_s();
        // A margin is learnt from batches that ran; one so large that admission refuses
        // everything (a slow first batch, a clock switch) would run none and never be unlearnt.
        if !self.lateness_s.is_empty() && now - self.lateness_at_s > MARGIN_MEMORY_S {
            self.lateness_s.clear();
            self.stats.set_margin(0.0);
        }
        let (n, oldest, draining, expired) = {
            let mut q = self.queue.lock();
            let n = q.jobs.len();
            let new = q.unreported.min(n);
            arrivals.extend(q.jobs.range(n - new..).map(|j| j.arrival_s));
            q.unreported = 0;
            self.queue_depth.set(n as i64);
            // Requests already past their deadline are answered now, whatever the policy says.
            let expired: Vec<Job> = if q.jobs.iter().any(|j| j.deadline_s < now) {
                let (expired, kept): (Vec<Job>, Vec<Job>) =
                    q.jobs.drain(..).partition(|j| j.deadline_s < now);
                q.jobs.extend(kept);
                let forecast = self.stats.forecast();
                let send = now.max(forecast.busy_until_s);
                q.tail = forecast.schedule(send, now, q.jobs.iter().map(|j| j.deadline_s));
                expired
            } else {
                Vec::new()
            };
            (n, q.jobs.front().map(|j| j.arrival_s), q.draining, expired)
        };
        for &a in &arrivals {
            self.policy.on_arrival(a);
        }
        self.arrivals = arrivals;
        if !expired.is_empty() {
            return Step::Reject(expired);
        }
        let Some(oldest) = oldest.filter(|_| n > 0) else {
            return if draining { Step::Stop } else { Step::Idle };
        };
        let max = self.policy.max_batch().max(1) as usize;
        let action = if draining {
            Action::Dispatch {
                batch: n.min(max) as u32,
            }
        } else {
            let t0 = Instant::now();
            let a = self.policy.next_action(now, n, oldest);
            self.decision_seconds.observe(t0.elapsed().as_secs_f64());
            a
        };
        match action {
            Action::WaitUntil(t) => Step::WaitUntil(t),
            Action::Dispatch { batch } => {
                let queue = self.queue.clone();
                let mut q = queue.lock();
                let b = (batch as usize).clamp(1, n.min(max)).min(q.jobs.len());
                let deadlines: Vec<f64> = q.jobs.iter().take(b).map(|j| j.deadline_s).collect();
                if let Some(t) = self.await_incoming(now, b, q.jobs.len(), q.incoming, &deadlines) {
                    return Step::WaitUntil(t);
                }
                let (step, ends) = match self.meetable_batch(now, &deadlines) {
                    0 => {
                        // The oldest cannot be answered in time even alone: refused, not run.
                        let t1 = self.batch_time_s(1).unwrap_or(0.0);
                        let k = deadlines.iter().take_while(|&&d| d < now + t1).count();
                        (Step::Reject(q.jobs.drain(..k.max(1)).collect()), now)
                    }
                    b => {
                        let t = self.batch_time_s(b as u32).unwrap_or(0.0);
                        // Admission scheduled a batch whose samples waited through the last
                        // one to start when that one was to end; otherwise now.
                        let send = if oldest < self.next_send_s {
                            self.next_send_s
                        } else {
                            now
                        };
                        self.scheduled_end_s = send + t;
                        // Admission's schedule restarts from here (below), not from the
                        // schedule before, so lateness does not add up over batches.
                        self.next_send_s = now + t;
                        let jobs = q.jobs.drain(..b).collect();
                        (Step::Dispatch { jobs, now, oldest }, now + t)
                    }
                };
                // Admission places new requests behind what is left, from when this ends.
                let forecast = self.stats.forecast();
                q.tail = forecast.schedule(ends, now, q.jobs.iter().map(|j| j.deadline_s));
                step
            }
        }
    }

    /// Predicted time (s) of a batch of `b` at the plan's clocks, by the cost model admission
    /// predicts with, so the worker cuts batches where admission expects them.
    fn batch_time_s(&self, b: u32) -> Option<f64> {
        let p = self.power.as_ref()?;
        Some(
            p.table()
                .plan_time_s(&self.units, b, &self.policy.plan().unit_clocks),
        )
    }

    /// When to look again instead of sending the `b` of `queued` requests now: requests
    /// admitted from their headers and still uploading (`incoming`) were placed by admission in
    /// the batch about to go, and sending it without them leaves them a later, smaller one.
    /// The worker waits for them in short steps while the batch, grown by them, still answers
    /// the oldest (`deadlines`) in time; a batch the policy cut from a longer queue, or one
    /// already the largest, goes at once.
    fn await_incoming(
        &self,
        now: f64,
        b: usize,
        queued: usize,
        incoming: usize,
        deadlines: &[f64],
    ) -> Option<f64> {
        let max = self.policy.max_batch().max(1) as usize;
        if incoming == 0 || b != queued || b >= max {
            return None;
        }
        let grown = (b + incoming).min(max) as u32;
        let t = self.batch_time_s(grown)?;
        let earliest = deadlines.iter().copied().fold(f64::INFINITY, f64::min);
        let until = now + INCOMING_WAIT_S;
        (until + t + self.stats.forecast().margin_s <= earliest).then_some(until)
    }

    /// The largest batch of the oldest queued requests (of the `deadlines.len()` the policy
    /// chose) that is predicted to answer each of them in time; 0 when not even the oldest
    /// alone would be. Under overload the policy's batch can hold so many that its oldest
    /// would be late: running fewer answers them and leaves the rest for the next batch,
    /// where refusing the oldest and running the newest would throw away the requests that
    /// waited longest. Without a prediction, the policy's batch.
    fn meetable_batch(&self, now: f64, deadlines: &[f64]) -> usize {
        let fits = |w: &Self, b: usize| match w.batch_time_s(b as u32) {
            Some(t) => deadlines[..b].iter().all(|&d| d >= now + t),
            None => true,
        };
        let b = deadlines.len();
        // Batch time grows with the batch and the prefix's earliest deadline only falls, so
        // whether a prefix fits is monotone: search for the largest that does.
        if b == 0 || fits(self, b) {
            return b;
        }
        let (mut lo, mut hi) = (0, b); // lo fits (or is 0), hi does not
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if fits(self, mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Records how late a batch ended against admission's schedule and publishes the margin
    /// admission keeps: the latest of the last [`LATENESS_BATCHES`], so a delay that recurs
    /// (a slower batch, a worker turn's overhead, a busy CPU) is planned for, and one that
    /// passes is forgotten.
    fn note_lateness(&mut self, late_s: f64) {
        if !late_s.is_finite() {
            return;
        }
        if self.lateness_s.len() == LATENESS_BATCHES {
            self.lateness_s.pop_front();
        }
        self.lateness_s.push_back(late_s);
        self.lateness_at_s = self.now_s();
        let margin = self.lateness_s.iter().copied().fold(0.0, f64::max);
        self.stats.set_margin(margin);
    }

    /// After the drain: the GPU's clocks back to default, the last telemetry.
    fn finish(&mut self) {
        if let Some(d) = self.device.as_mut()
            && let Err(e) = d.reset_clocks()
        {
            tracing::error!(model = %self.info.name, error = %e, "could not reset GPU clocks");
        }
        self.tick(true);
        tracing::info!(model = %self.info.name, "worker drained");
    }

    /// The clock the policy wants held while the GPU idles (e.g. the next batch's first clock,
    /// preset so the batch starts at it), as the simulator asks for it, when it is not the one
    /// already requested.
    fn idle_clock_change(&mut self) -> Option<(f64, ClockTarget)> {
        let now = self.now_s();
        let target = self.policy.idle_clock(now)?;
        let requested = self.device.as_ref()?.requested();
        (requested != Some(target)).then_some((now, target))
    }

    /// Publishes the predicted time of every batch size for admission, at the highest clock:
    /// what a policy runs under overload, so admission refuses only what no clock would answer
    /// in time, and below capacity a policy that plans slower clocks keeps the requests it could
    /// still serve by speeding up. It depends only on the model, so it is published once.
    fn publish_forecast(&self) {
        let Some(p) = self.power.as_ref() else {
            return;
        };
        let times: Arc<[f64]> = (1..=self.policy.max_batch())
            .map(|b| p.table().batch_time_s(b, p.max_clock_mhz()))
            .collect();
        self.stats.set_batch_times(times);
    }

    fn dispatch(&mut self, jobs: Vec<Job>, now: f64, oldest: f64) {
        let plan = self.policy.plan().clone();
        // Requests the batch would finish too late for are answered 503 now.
        let finish = self
            .executor
            .predict_s(&self.units, jobs.len() as u32, &plan.unit_clocks)
            .map(|t| now + t);
        let (late, jobs): (Vec<Job>, Vec<Job>) = match finish {
            Some(f) => jobs.into_iter().partition(|j| j.deadline_s < f),
            None => (Vec::new(), jobs),
        };
        self.reject_late(late);
        if jobs.is_empty() {
            return;
        }
        let batch = jobs.len() as u32;
        let start = self.now_s();
        if let Some(t) = self.batch_time_s(batch) {
            self.stats.set_busy_until(start + t);
        }
        // The clock the GPU held while this batch waited (the idle power of the window's gap).
        let rest_mhz = self.device.as_ref().and_then(|d| d.clock_mhz());
        self.unit_clocks.clear();
        let e0 = self.device.as_ref().and_then(|d| d.energy_mj());
        if let Some(mj) = e0 {
            self.counter_read(start, mj, rest_mhz.unwrap_or(0));
        }
        for call in &plan.set_calls {
            self.set_clock(start + call.offset_s, call.target);
        }
        let input: Option<Vec<f32>> = self
            .executor
            .computes_outputs()
            .then(|| jobs.iter().flat_map(|j| j.input.iter().copied()).collect());
        let units = std::mem::take(&mut self.units);
        // The executor and the device are held outside the worker for the call, so the hook
        // can borrow the worker.
        let mut exec =
            std::mem::replace(&mut self.executor, Box::new(crate::exec::ZeroCost::new()));
        let device = self.device.take();
        let result = {
            let mut hook = Hook {
                worker: self,
                device: device.as_deref(),
                units: &units,
                planned: &plan.unit_clocks,
                batch,
            };
            let req = BatchRequest {
                batch,
                input: input.as_deref(),
                units: &units,
            };
            match device.as_deref() {
                Some(d) => d.run_batch(exec.as_mut(), &req, &mut hook),
                None => exec.run_batch(&req, &mut hook),
            }
        };
        self.executor = exec;
        self.device = device;
        self.units = units;
        self.stats.set_busy_until(self.now_s());
        if let Ok(run) = &result {
            self.note_lateness(run.end_s - self.scheduled_end_s);
        }
        // A GPU lost while the batch ran: its outputs are not to be trusted.
        if let Some(why) = self.device.as_ref().and_then(|d| d.fault()) {
            self.reject_unservable(jobs, &why);
            return;
        }
        let run = match result {
            Ok(run) => run,
            Err(e) => {
                tracing::error!(model = %self.info.name, error = %e, batch, "batch failed");
                for j in jobs {
                    j.slot
                        .fail(OipError::internal(format!("batch failed: {e}")));
                }
                return;
            }
        };
        let unit_starts: Vec<f64> = run.units.iter().map(|u| u.start_s).collect();
        let out_len = self.info.output_len();
        let latencies: Vec<f64> = jobs.iter().map(|j| run.end_s - j.arrival_s).collect();
        let estimate = self
            .power
            .as_ref()
            .map(|p| p.batch_estimate(&self.units, batch, &self.unit_clocks));
        let idle_w = match (&self.power, rest_mhz) {
            (Some(p), Some(f)) => p.idle_w(f),
            (Some(p), None) => p.idle_w(p.max_clock_mhz()),
            (None, _) => 0.0,
        };
        self.window.batch(
            run.start_s,
            run.end_s,
            &latencies,
            estimate.as_ref(),
            idle_w,
        );
        for (i, j) in jobs.into_iter().enumerate() {
            if run.end_s > j.deadline_s {
                j.slot.fail(deadline_error());
                continue;
            }
            let output = run
                .outputs
                .as_ref()
                .and_then(|o| o.get(i * out_len..(i + 1) * out_len))
                .map(<[f32]>::to_vec);
            j.slot.complete(SampleDone { output, batch });
        }
        self.batch_size.observe(f64::from(batch));
        let energy_j = match (e0, self.device.as_ref().and_then(|d| d.energy_mj())) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1000.0,
            _ => 0.0,
        };
        let exec_s = (run.end_s - run.start_s).max(1e-9);
        let rate = f64::from(batch) / exec_s;
        let prev = self.stats.throughput();
        self.stats.set_throughput(if prev > 0.0 {
            0.8 * prev + 0.2 * rate
        } else {
            rate
        });
        let done = BatchDone {
            start_s: run.start_s,
            end_s: run.end_s,
            batch,
            oldest_arrival_s: oldest,
            energy_j,
            queue_len: self.queue.len(),
            latencies_s: &latencies,
            unit_starts_s: &unit_starts,
        };
        let t0 = Instant::now();
        self.policy.on_batch_done(&done);
        self.decision_seconds.observe(t0.elapsed().as_secs_f64());
        self.window.saturated(self.policy.saturated());
        self.metrics
            .saturated
            .with_label_values(&[&self.info.name])
            .set(i64::from(self.policy.saturated()));
        tracing::debug!(model = %self.info.name, batch, exec_ms = exec_s * 1e3, energy_j, "batch done");
    }
}

fn deadline_error() -> OipError {
    OipError::new(
        ErrorKind::DeadlineExceeded,
        "the request's deadline cannot be met; it was not run",
    )
}

impl Worker {
    /// Answers requests that cannot make their deadline 503; the window counts each at the
    /// time it waited, so the reported tail shows them (they are past their deadline, which is
    /// at least the SLO).
    fn reject_late(&mut self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let now = self.now_s();
        let waited: Vec<f64> = jobs.iter().map(|j| now - j.arrival_s).collect();
        self.window.unanswered(&waited);
        for j in jobs {
            j.slot.fail(deadline_error());
        }
    }

    /// Answers requests the device cannot serve 503 with the reason.
    fn reject_unservable(&mut self, jobs: Vec<Job>, why: &str) {
        let now = self.now_s();
        let waited: Vec<f64> = jobs.iter().map(|j| now - j.arrival_s).collect();
        self.window.unanswered(&waited);
        for j in jobs {
            j.slot.fail(OipError::new(ErrorKind::Unavailable, why));
        }
    }
}
