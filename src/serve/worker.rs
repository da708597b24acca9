//! The EALI loop of one model, on its own thread: report arrivals to the scheduling policy, ask
//! it when to dispatch how many requests with which clock plan, issue the plan's set-calls ahead
//! of the unit boundaries through the clock thread, run the batch unit by unit on the executor,
//! attribute the energy counter to units and layers, answer the requests, and report the batch
//! back to the policy. The policy is the same [`Policy`] the discrete-event simulator runs, so
//! the server and the simulator schedule identically.
//!
//! Requests that cannot finish before their deadline are answered 503 instead of being run (or
//! answered late). On drain, everything queued is dispatched at once and the GPU's clocks are
//! reset before the thread exits.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::Counter;

use super::model::ModelInfo;
use super::oip::{ErrorKind, OipError};
use super::queue::{Job, Queue, SampleDone};
use crate::exec::{
    BatchRequest, ClockActuator, ClockThread, Executor, SimDevice, UnitHook, UnitRecord,
};
use crate::gpu::GpuBackend;
use crate::sim::{Action, BatchDone, ClockTarget, Policy};
use crate::telemetry::{Attribution, Attributor, LayerPowerModel, Metrics};

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
    pub policy: Box<dyn Policy>,
    pub unit_names: Vec<String>,
}

/// Builds the policy on the worker thread (policies need not be `Send`).
pub type PolicyFactory = Box<dyn FnOnce() -> Result<BuiltPolicy, String> + Send>;

/// Everything a worker needs.
pub struct WorkerSetup {
    pub info: Arc<ModelInfo>,
    pub queue: Arc<Queue>,
    pub metrics: Metrics,
    pub executor: Box<dyn Executor>,
    /// The simulated GPU behind the executor (clock control, energy counter, GPU metrics).
    pub device: Option<SimDevice>,
    /// Predicted per-layer power, for energy attribution.
    pub power: Option<LayerPowerModel>,
    pub policy: PolicyFactory,
    pub timebase: Timebase,
}

/// What the protocol handlers can see of a running worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Served samples per second (EWMA, f64 bits), for Retry-After.
    throughput: AtomicU64,
    pub ready: AtomicBool,
}

impl WorkerStats {
    pub fn throughput(&self) -> f64 {
        f64::from_bits(self.throughput.load(Ordering::Relaxed))
    }
    fn set_throughput(&self, v: f64) {
        self.throughput.store(v.to_bits(), Ordering::Relaxed);
    }
}

/// A started worker thread.
pub struct WorkerHandle {
    pub thread: JoinHandle<()>,
    pub stats: Arc<WorkerStats>,
}

/// Longest the loop sleeps without a look at the GPU's telemetry (s).
const TICK_S: f64 = 0.1;
/// Counter update period assumed for attribution (NVML's energy counter).
const COUNTER_PERIOD_S: f64 = 0.010;

/// Starts the worker thread; returns once the policy is built (or failed to build).
pub fn spawn(setup: WorkerSetup) -> Result<WorkerHandle, String> {
    let stats = Arc::new(WorkerStats::default());
    let (tx, rx) = mpsc::channel();
    let st = stats.clone();
    let name = format!("eali-worker-{}", setup.info.name);
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let WorkerSetup { policy, .. } = setup;
            let built = match policy() {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let rest = WorkerSetup {
                policy: Box::new(|| Err(String::new())),
                ..setup
            };
            match Worker::new(rest, built, st) {
                Ok(mut w) => {
                    let _ = tx.send(Ok(()));
                    w.run();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(|e| format!("cannot start worker thread: {e}"))?;
    match rx.recv() {
        Ok(Ok(())) => Ok(WorkerHandle { thread, stats }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err("worker thread ended during start-up".into()),
    }
}

struct Worker {
    info: Arc<ModelInfo>,
    queue: Arc<Queue>,
    metrics: Metrics,
    executor: Box<dyn Executor>,
    device: Option<SimDevice>,
    clock: Option<ClockThread<SimDevice>>,
    power: Option<LayerPowerModel>,
    attributor: Attributor,
    policy: Box<dyn Policy>,
    units: Vec<Range<usize>>,
    /// `eali_layer_energy_joules_total` handle per layer (labelled with its unit).
    layer_counters: Vec<Counter>,
    gpu_label: String,
    queue_depth: prometheus::IntGauge,
    batch_size: prometheus::Histogram,
    timebase: Timebase,
    stats: Arc<WorkerStats>,
    last_tick_s: f64,
    last_counter_mj: Option<u64>,
}

impl Worker {
    fn new(s: WorkerSetup, built: BuiltPolicy, stats: Arc<WorkerStats>) -> Result<Self, String> {
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
        for (u, r) in units.iter().enumerate() {
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
            .map_or_else(|| "none".to_string(), |d| d.lock().info().uuid.clone());
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
        let mut w = Self {
            queue_depth: m.queue_depth.with_label_values(&[&s.info.name]),
            batch_size: m.batch_size.with_label_values(&[&s.info.name]),
            clock: s.device.clone().map(ClockThread::new),
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
        };
        if let Some(target) = w.policy.initial_clock() {
            let now = w.now_s();
            w.set_clock(now, target);
        }
        w.stats.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            model = %w.info.name,
            architecture = %w.info.graph.name,
            executor = %w.executor.name(),
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
        let Some(clock) = self.clock.as_mut() else {
            return;
        };
        match clock.issue(at_s, target) {
            Ok(Some(_)) => {
                self.metrics
                    .clock_switches
                    .with_label_values(&[&self.gpu_label])
                    .inc();
                let hz = match target {
                    ClockTarget::Locked(f) => f64::from(f) * 1e6,
                    ClockTarget::Default => 0.0,
                };
                self.metrics
                    .clock_target
                    .with_label_values(&[&self.gpu_label])
                    .set(hz);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(model = %self.info.name, error = %e, "clock change failed"),
        }
    }

    fn run(&mut self) {
        loop {
            self.tick(false);
            let mut q = self.queue.lock();
            let n = q.jobs.len();
            let new = q.unreported.min(n);
            for j in q.jobs.range(n - new..) {
                self.policy.on_arrival(j.arrival_s);
            }
            q.unreported = 0;
            self.queue_depth.set(n as i64);
            if n == 0 {
                if q.draining {
                    break;
                }
                drop(q);
                self.hold_idle_clock();
                let q = self.queue.lock();
                if q.jobs.is_empty() && !q.draining {
                    let _q = self.queue.wait(q, Duration::from_secs_f64(TICK_S));
                }
                continue;
            }
            let now = self.now_s();
            // Requests already past their deadline are answered now, whatever the policy says.
            if q.jobs.iter().any(|j| j.deadline_s < now) {
                let (expired, kept): (Vec<Job>, Vec<Job>) =
                    q.jobs.drain(..).partition(|j| j.deadline_s < now);
                q.jobs.extend(kept);
                drop(q);
                reject_late(expired);
                continue;
            }
            let oldest = q.jobs[0].arrival_s;
            let max = self.policy.max_batch().max(1) as usize;
            let action = if q.draining {
                Action::Dispatch {
                    batch: n.min(max) as u32,
                }
            } else {
                self.policy.next_action(now, n, oldest)
            };
            match action {
                Action::WaitUntil(t) => {
                    drop(q);
                    self.hold_idle_clock();
                    let wait = (t - self.now_s()).clamp(0.0002, TICK_S);
                    let q = self.queue.lock();
                    if q.unreported == 0 {
                        let _q = self.queue.wait(q, Duration::from_secs_f64(wait));
                    }
                }
                Action::Dispatch { batch } => {
                    let b = (batch as usize).clamp(1, n.min(max));
                    let jobs: Vec<Job> = q.jobs.drain(..b).collect();
                    drop(q);
                    self.dispatch(jobs, now, oldest);
                }
            }
        }
        if let Some(c) = self.clock.as_mut()
            && let Err(e) = c.reset()
        {
            tracing::error!(model = %self.info.name, error = %e, "could not reset GPU clocks");
        }
        self.tick(true);
        tracing::info!(model = %self.info.name, "worker drained");
    }

    /// The clock the policy wants held while the GPU idles (e.g. the next batch's first clock,
    /// preset so the batch starts at it), as the simulator asks for it.
    fn hold_idle_clock(&mut self) {
        let now = self.now_s();
        if let Some(target) = self.policy.idle_clock(now) {
            self.set_clock(now, target);
        }
    }

    /// GPU telemetry and an energy-counter read for attribution, at most every [`TICK_S`].
    fn tick(&mut self, force: bool) {
        let now = self.now_s();
        if !force && now - self.last_tick_s < TICK_S {
            return;
        }
        self.last_tick_s = now;
        let Some(dev) = &self.device else { return };
        let (power, clock, counter) = {
            let g = dev.lock();
            (
                g.power().ok(),
                g.clocks().ok().map(|c| c.graphics_mhz),
                g.energy_mj().ok(),
            )
        };
        let gpu = [self.gpu_label.as_str()];
        if let Some(p) = power {
            self.metrics.gpu_power.with_label_values(&gpu).set(p.watts);
        }
        if let Some(f) = clock {
            self.metrics
                .clock_actual
                .with_label_values(&gpu)
                .set(f64::from(f) * 1e6);
        }
        if let Some(mj) = counter {
            self.counter_read(now, mj, clock.unwrap_or(0));
        }
    }

    /// Feeds one counter reading to the GPU energy total and the attribution.
    fn counter_read(&mut self, t_s: f64, mj: u64, clock_mhz: u32) {
        if let Some(prev) = self.last_counter_mj {
            let d = mj.saturating_sub(prev) as f64 / 1000.0;
            self.metrics
                .gpu_energy
                .with_label_values(&[&self.gpu_label])
                .inc_by(d);
        }
        self.last_counter_mj = Some(mj);
        let idle_w = self.power.as_ref().map_or(0.0, |p| p.idle_w(clock_mhz));
        if let Some(a) = self.attributor.reading(t_s, mj, idle_w) {
            self.apply(a);
        }
    }

    fn apply(&self, a: Attribution) {
        for (layer, j) in a.busy {
            if let Some(c) = self.layer_counters.get(layer) {
                c.inc_by(j);
            }
        }
        self.metrics
            .gpu_idle_energy
            .with_label_values(&[&self.gpu_label])
            .inc_by(a.idle_j);
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
        reject_late(late);
        if jobs.is_empty() {
            return;
        }
        let batch = jobs.len() as u32;
        let start = self.now_s();
        let e0 = self.device.as_ref().and_then(|d| d.lock().energy_mj().ok());
        if let Some(mj) = e0 {
            let clock = self
                .device
                .as_ref()
                .map_or(0, |d| d.current_mhz().unwrap_or(0));
            self.counter_read(start, mj, clock);
        }
        for call in &plan.set_calls {
            self.set_clock(start + call.offset_s, call.target);
        }
        let input: Option<Vec<f32>> = self
            .executor
            .computes_outputs()
            .then(|| jobs.iter().flat_map(|j| j.input.iter().copied()).collect());
        let units = std::mem::take(&mut self.units);
        let result = {
            let mut hook = Hook {
                worker: self,
                units: &units,
                batch,
            };
            let req = BatchRequest {
                batch,
                input: input.as_deref(),
                units: &units,
            };
            // The executor is moved out for the call so the hook can borrow the worker.
            let mut exec = std::mem::replace(
                &mut hook.worker.executor,
                Box::new(crate::exec::ZeroCost::new()),
            );
            let r = exec.run_batch(&req, &mut hook);
            hook.worker.executor = exec;
            r
        };
        self.units = units;
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
        let out_len = self.info.output_len();
        let latencies: Vec<f64> = jobs.iter().map(|j| run.end_s - j.arrival_s).collect();
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
        let energy_j = match (
            e0,
            self.device.as_ref().and_then(|d| d.lock().energy_mj().ok()),
        ) {
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
        };
        self.policy.on_batch_done(&done);
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

fn reject_late(jobs: Vec<Job>) {
    for j in jobs {
        j.slot.fail(deadline_error());
    }
}

/// Unit-boundary hook of the serving loop: energy attribution per unit and layer.
struct Hook<'a> {
    worker: &'a mut Worker,
    units: &'a [Range<usize>],
    batch: u32,
}

impl UnitHook for Hook<'_> {
    fn unit_end(&mut self, r: &UnitRecord) {
        let w = &mut *self.worker;
        if let (Some(power), Some(range)) = (&w.power, self.units.get(r.unit)) {
            let seg = power.segment(range.clone(), self.batch, r.clock_mhz, r.start_s, r.end_s);
            w.attributor.busy(seg);
        }
        if let Some(mj) = r.energy_counter_mj {
            w.counter_read(r.end_s, mj, r.clock_mhz);
        }
    }
}
