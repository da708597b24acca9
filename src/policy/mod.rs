//! Scheduling policies: the seam between whatever drives a model's queue (the serving worker,
//! the discrete-event simulator) and the decision of when to dispatch how large a batch at which
//! clock per unit. A policy sees what a serving runtime sees (arrivals, queue length, age of the
//! oldest request, finished batches) and answers with a dispatch (batch size and a clock plan
//! over its own chain of units) or a time to wake up. EALI's online controller ([`controller`])
//! and every baseline ([`baselines`]) implement the same trait, and [`build`] makes them from an
//! InferenceService's targets, *predicted* costs and a *measured* switch latency.
//!
//! Pure: plain data in, decisions out; nothing here imports the simulator, the serving runtime,
//! tokio or Kubernetes.

use std::ops::Range;

pub mod baselines;
pub mod build;
pub mod controller;

pub use crate::gpu::{ClockTarget, SetCall};

/// Clocks for one batch: the clock intended for each unit of the policy's chain and the set-calls
/// that put them in force.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchPlan {
    /// Intended clock per unit (MHz); `None` = whatever the GPU does on its own.
    pub unit_clocks: Vec<Option<u32>>,
    pub set_calls: Vec<SetCall>,
}

impl BatchPlan {
    /// A plan that leaves the clock alone for all `units`.
    pub fn unmanaged(units: usize) -> Self {
        Self {
            unit_clocks: vec![None; units],
            set_calls: Vec::new(),
        }
    }
    /// One locked clock for the whole batch, set at dispatch (skipped by the clock thread when
    /// it is already in force).
    pub fn single(units: usize, mhz: u32) -> Self {
        Self {
            unit_clocks: vec![Some(mhz); units],
            set_calls: vec![SetCall {
                offset_s: 0.0,
                target: ClockTarget::Locked(mhz),
            }],
        }
    }
}

/// What a policy wants now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Run the `batch` oldest queued requests now with [`Policy::plan`].
    Dispatch { batch: u32 },
    /// Nothing until this time, or until the next arrival if that comes first.
    WaitUntil(f64),
}

/// What the event loop reports after a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchDone<'a> {
    pub start_s: f64,
    pub end_s: f64,
    pub batch: u32,
    /// Arrival time of the oldest request of the batch.
    pub oldest_arrival_s: f64,
    /// Energy counter difference over the batch (J); whole mJ with a 10 ms update period, so
    /// short batches read coarsely, as on a real GPU.
    pub energy_j: f64,
    /// Requests still queued after the batch.
    pub queue_len: usize,
    /// Latency of each request of the batch (arrival to batch end, s), oldest first.
    pub latencies_s: &'a [f64],
    /// When each unit started (device time, s), in unit order: where the batch's unit
    /// boundaries really fell, against the plan's predicted ones.
    pub unit_starts_s: &'a [f64],
}

/// A scheduling policy driven by a serving worker or the simulator's event loop.
pub trait Policy {
    /// Short name for tables.
    fn name(&self) -> &str;
    /// The policy's chain of units as contiguous layer ranges of the model in topological order;
    /// the simulator runs a batch unit by unit over these.
    fn units(&self) -> &[Range<usize>];
    /// Largest batch the policy may dispatch (the simulator precomputes costs up to this).
    fn max_batch(&self) -> u32;
    /// Set-call to issue when the run starts (e.g. lock f_max), if any.
    fn initial_clock(&self) -> Option<ClockTarget> {
        None
    }
    fn on_arrival(&mut self, _t: f64) {}
    /// Clock to hold while the GPU idles from `now` (after an [`Action::WaitUntil`], or with an
    /// empty queue); a set-call is issued when it is not the clock last asked for. E.g. the next
    /// batch's first clock, preset.
    fn idle_clock(&mut self, _now: f64) -> Option<ClockTarget> {
        None
    }
    /// Decide at `now` with `queue_len ≥ 1` requests waiting, the oldest since `oldest_arrival`.
    fn next_action(&mut self, now: f64, queue_len: usize, oldest_arrival: f64) -> Action;
    /// The clock plan of the last [`Action::Dispatch`].
    fn plan(&self) -> &BatchPlan;
    fn on_batch_done(&mut self, _done: &BatchDone<'_>) {}
    /// True while the policy cannot meet the SLO at the observed load (a scale-out signal).
    fn saturated(&self) -> bool {
        false
    }
}
