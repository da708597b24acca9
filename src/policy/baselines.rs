//! The batching baselines a user would otherwise run, as real policies:
//!
//! - (a) [`TritonMaxClock`]: clocks locked at f_max and Triton's dynamic batcher;
//! - (b) [`ClipperAimd`]: Clipper's additive-increase/multiplicative-decrease batch size at f_max;
//! - (c) [`TritonMaxClock::default_clocks`]: the same batcher with no clock lock, so the GPU runs
//!   its own default/boost clock under load and drops to its P-state idle clock when idle.
//!
//! The per-batch-DVFS baseline (d) and the oracle (e) live in their own modules.

use std::ops::Range;

use super::{Action, BatchDone, BatchPlan, ClockTarget, Policy};

/// The whole model as one unit.
fn whole(layers: usize) -> Vec<Range<usize>> {
    std::iter::once(0..layers).collect()
}

/// Triton's `dynamic_batching { max_queue_delay_microseconds }` with `max_batch_size`, configured
/// the way a user tuning for an SLO would (see [`TritonConfig::for_slo`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TritonConfig {
    pub max_batch: u32,
    pub max_queue_delay_s: f64,
}

impl TritonConfig {
    /// The configuration a Triton user would pick for latency SLO `slo_s`, given the measured
    /// execution time per batch size at the clock the GPU will run (`exec_s[b - 1]`, as Model
    /// Analyzer reports it):
    ///
    /// - `max_batch_size`: the largest batch that executes within a third of the SLO;
    /// - `max_queue_delay`: a third of the SLO.
    ///
    /// A request can wait for one batch in flight (≤ SLO/3), then up to the queue delay (SLO/3),
    /// then run in a batch (≤ SLO/3), so the worst case below saturation is the SLO.
    pub fn for_slo(exec_s: &[f64], slo_s: f64) -> Self {
        let third = slo_s / 3.0;
        let max_batch = exec_s
            .iter()
            .rposition(|&t| t <= third)
            .map_or(1, |i| i as u32 + 1);
        Self {
            max_batch,
            max_queue_delay_s: third,
        }
    }
}

/// (a) Max clocks + Triton dynamic batching, or (c) with `lock = None` the GPU's default clocks.
#[derive(Debug, Clone)]
pub struct TritonMaxClock {
    name: String,
    cfg: TritonConfig,
    units: Vec<Range<usize>>,
    lock: Option<u32>,
    plan: BatchPlan,
    saturated: bool,
}

impl TritonMaxClock {
    /// (a): clocks locked at `f_max_mhz` for the whole run.
    pub fn max_clock(layers: usize, f_max_mhz: u32, cfg: TritonConfig) -> Self {
        Self {
            name: "max-clock".into(),
            cfg,
            units: whole(layers),
            lock: Some(f_max_mhz),
            plan: BatchPlan {
                unit_clocks: vec![Some(f_max_mhz)],
                set_calls: Vec::new(),
            },
            saturated: false,
        }
    }

    /// (c): no lock; the GPU's default behaviour (boost or application clock under load, P-state
    /// idle clock when idle).
    pub fn default_clocks(layers: usize, cfg: TritonConfig) -> Self {
        Self {
            name: "default-clock".into(),
            cfg,
            units: whole(layers),
            lock: None,
            plan: BatchPlan::unmanaged(1),
            saturated: false,
        }
    }

    pub fn config(&self) -> TritonConfig {
        self.cfg
    }
}

impl Policy for TritonMaxClock {
    fn name(&self) -> &str {
        &self.name
    }
    fn units(&self) -> &[Range<usize>] {
        &self.units
    }
    fn max_batch(&self) -> u32 {
        self.cfg.max_batch
    }
    fn initial_clock(&self) -> Option<ClockTarget> {
        Some(self.lock.map_or(ClockTarget::Default, ClockTarget::Locked))
    }
    fn next_action(&mut self, now: f64, queue_len: usize, oldest_arrival: f64) -> Action {
        let full = queue_len >= self.cfg.max_batch as usize;
        let deadline = oldest_arrival + self.cfg.max_queue_delay_s;
        if full || now >= deadline {
            Action::Dispatch {
                batch: (queue_len as u32).min(self.cfg.max_batch),
            }
        } else {
            Action::WaitUntil(deadline)
        }
    }
    fn plan(&self) -> &BatchPlan {
        &self.plan
    }
    fn on_batch_done(&mut self, done: &BatchDone<'_>) {
        // Overloaded when full batches leave a full batch behind.
        self.saturated = done.batch == self.cfg.max_batch && done.queue_len >= done.batch as usize;
    }
    fn saturated(&self) -> bool {
        self.saturated
    }
}

/// (b) Clipper's adaptive batching at f_max: dispatch as soon as the GPU is free, with up to
/// `cap` requests; after each batch the cap grows by one while the batch's execution time stays
/// within the target and shrinks by 10 % when it exceeds it (Clipper, NSDI'17 §4.3).
///
/// Clipper's target is the latency objective for a batch's processing. Under a request-latency
/// SLO a request may also wait for the batch in flight, so the target here is half the SLO.
#[derive(Debug, Clone)]
pub struct ClipperAimd {
    units: Vec<Range<usize>>,
    f_max: u32,
    max_batch: u32,
    target_s: f64,
    /// Current cap, kept fractional so the multiplicative decrease is exact.
    cap: f64,
    plan: BatchPlan,
    saturated: bool,
}

impl ClipperAimd {
    pub const BACKOFF: f64 = 0.9;

    pub fn new(layers: usize, f_max_mhz: u32, max_batch: u32, slo_s: f64) -> Self {
        Self {
            units: whole(layers),
            f_max: f_max_mhz,
            max_batch: max_batch.max(1),
            target_s: slo_s / 2.0,
            cap: 1.0,
            plan: BatchPlan {
                unit_clocks: vec![Some(f_max_mhz)],
                set_calls: Vec::new(),
            },
            saturated: false,
        }
    }

    /// Current batch-size cap.
    pub fn cap(&self) -> u32 {
        (self.cap.floor() as u32).clamp(1, self.max_batch)
    }
}

impl Policy for ClipperAimd {
    fn name(&self) -> &str {
        "clipper-aimd"
    }
    fn units(&self) -> &[Range<usize>] {
        &self.units
    }
    fn max_batch(&self) -> u32 {
        self.max_batch
    }
    fn initial_clock(&self) -> Option<ClockTarget> {
        Some(ClockTarget::Locked(self.f_max))
    }
    fn next_action(&mut self, _now: f64, queue_len: usize, _oldest: f64) -> Action {
        Action::Dispatch {
            batch: (queue_len as u32).min(self.cap()),
        }
    }
    fn plan(&self) -> &BatchPlan {
        &self.plan
    }
    fn on_batch_done(&mut self, done: &BatchDone<'_>) {
        let exec = done.end_s - done.start_s;
        if exec > self.target_s {
            self.cap = (self.cap * Self::BACKOFF).max(1.0);
        } else if done.batch >= self.cap() {
            // Only grow when the cap was actually used: a half-empty batch says nothing about
            // whether a larger one would still fit.
            self.cap = (self.cap + 1.0).min(f64::from(self.max_batch));
        }
        self.saturated = done.batch >= self.cap() && done.queue_len >= done.batch as usize;
    }
    fn saturated(&self) -> bool {
        self.saturated
    }
}
