//! The switch-aware planner: for an arrival rate, SLO and margin, the batch size and a clock per
//! unit that minimise energy per request (`docs/architecture.md`, "Planning objective" and
//! "Chain DP and Lagrangian fast path").
//!
//! For each candidate batch size b the time budget for the units is
//! `B(b) = min((1 − m)·L − W_q(b, λ) − T_o(b), b/λ̂⁺ − T_o(b))` (latency and stability), and the
//! chain problem over clocks is solved by the Lagrangian fast path ([`lagrange`]) with the exact
//! DP ([`dp`]) as the repair when the duality gap is wide (or always, with [`Solver::Exact`]).
//! The batch with the least energy per request wins; ties go to the smaller batch.
//!
//! Clock changes inside a batch are issued ahead of the unit boundary by the median switch
//! latency (the plan's timeline) and each reserves the p95 latency in the time budget. The first
//! unit's clock is normally *preset* while the GPU idles before the batch ([`EntryClock::Preset`]);
//! that needs an idle gap of one switch lead, so plans whose first and last clocks differ must
//! also fit `b/λ̂⁺ − lead`, while single-clock plans (what per-batch DVFS runs) need not.

use serde::{Deserialize, Serialize};

use super::error::EaliError;
use super::fill_time::FillQuantiles;
use super::switch::SwitchCost;
use super::units::UnitCostTable;

pub(crate) mod dp;
pub(crate) mod instance;
pub(crate) mod lagrange;
mod plan;
mod search;
#[cfg(test)]
mod tests;

pub use plan::{ClockSet, Plan, PlanSet};

use instance::{Entry, INF, Instance};

/// Which solver to run per batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// Lagrangian + greedy polish; the DP repairs instances whose duality gap exceeds the
    /// tolerance and that could still beat the best batch so far.
    Fast,
    /// DP on every batch size (and the fast path too; the better plan wins).
    Exact,
}

/// Planner settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlannerConfig {
    /// Latency SLO L (s) at percentile `percentile` (e.g. 0.99).
    pub slo_s: f64,
    pub percentile: f64,
    /// Largest batch size to consider.
    pub max_batch: u32,
    /// Time steps of the DP over the budget.
    pub dp_steps: usize,
    /// Relative duality gap above which the fast path calls the DP.
    pub gap_tolerance: f64,
    pub solver: Solver,
    /// At most this many clocks (evenly spread, f_max always kept) enter the search.
    pub max_clocks: usize,
}

impl PlannerConfig {
    pub fn new(slo_s: f64) -> Self {
        Self {
            slo_s,
            percentile: 0.99,
            max_batch: 64,
            dp_steps: 400,
            gap_tolerance: 0.01,
            solver: Solver::Fast,
            max_clocks: 24,
        }
    }
}

/// Multiplicative corrections of the cost model from observed batches (α in
/// `docs/architecture.md`, "Online controller"): predicted times and energies are multiplied by
/// these.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Corrections {
    pub time: f64,
    pub energy: f64,
}

impl Default for Corrections {
    fn default() -> Self {
        Self {
            time: 1.0,
            energy: 1.0,
        }
    }
}

/// What clock the GPU is at when a batch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryClock {
    /// The plan's first clock is set while the GPU idles before the batch (and held while idle).
    Preset,
    /// The GPU is at this clock (MHz); a different first clock costs a switch at batch start,
    /// and the GPU idles at the last unit's clock afterwards.
    At(u32),
}

/// One planning question.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// Arrival rate λ (req/s): sets the cycle b/λ over which idle energy is counted.
    pub rate: f64,
    /// Rate used for the fill-time quantile (normally = `rate`; a bucket's lower edge in the table).
    pub fill_rate: f64,
    /// Upper confidence bound λ̂⁺ (req/s) for the stability constraint T_x ≤ b/λ̂⁺.
    pub rate_upper: f64,
    /// SLO safety margin m: plans target (1 − m)·L.
    pub margin: f64,
    pub entry: EntryClock,
    pub corrections: Corrections,
    #[serde(default)]
    /// How a request's wait for its batch to fill enters the latency bound.
    pub fill: FillBound,
}

/// How the wait for a batch to fill enters the latency bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FillBound {
    /// A tail quantile of the fill time: the batch fills before it runs (the plan's premise).
    #[default]
    Quantile,
    /// No fill term: the dispatch rule sends a partial batch when the oldest request's deadline
    /// comes, so the fill wait is capped by it. The planner falls back to this when no batch
    /// size fills in time at the observed rate (a load where dynamic batching still meets the
    /// SLO with partial batches); only when this fails too is the server saturated.
    DispatchDeadline,
}

impl PlanRequest {
    pub fn new(rate: f64, rate_upper: f64, margin: f64) -> Self {
        Self {
            rate,
            fill_rate: rate,
            rate_upper: rate_upper.max(rate),
            margin,
            entry: EntryClock::Preset,
            corrections: Corrections::default(),
            fill: FillBound::Quantile,
        }
    }

    /// The fill wait this request's bound counts for batch size `b` (s).
    pub(crate) fn fill_wait_s(&self, split: &FillQuantiles, b: u32) -> f64 {
        match self.fill {
            FillBound::Quantile => split.wait_s(b, self.fill_rate),
            FillBound::DispatchDeadline => 0.0,
        }
    }
}

/// Per-batch planner over one model's unit cost table.
#[derive(Debug, Clone)]
pub struct Planner {
    costs: UnitCostTable,
    switch: SwitchCost,
    config: PlannerConfig,
    fill: FillQuantiles,
    /// Fill quantiles at √percentile, for the latency bound of [`super::queue_wait`].
    fill_split: FillQuantiles,
    /// Indices into `costs.batches` of the candidate batch sizes (≤ max_batch).
    candidates: Vec<usize>,
    /// Idle-power credit rate P_c: the lowest idle power (W).
    credit_w: f64,
}

/// The solution for one batch size.
#[derive(Debug, Clone)]
struct Choice {
    bi: usize,
    clocks: Vec<usize>,
    /// Budget the plan was checked against (selects the instance to report from).
    budget: f64,
    energy: f64,
}

impl Planner {
    pub fn new(
        costs: UnitCostTable,
        switch: SwitchCost,
        config: PlannerConfig,
    ) -> Result<Self, EaliError> {
        costs.validate()?;
        let c = &config;
        if !(c.slo_s > 0.0 && c.percentile > 0.0 && c.percentile < 1.0 && c.max_batch >= 1) {
            return Err(EaliError::BadConfig(
                "need slo > 0, percentile in (0, 1), max_batch ≥ 1".into(),
            ));
        }
        if !(c.dp_steps >= 1
            && c.dp_steps <= 100_000
            && c.gap_tolerance >= 0.0
            && c.max_clocks >= 1)
        {
            return Err(EaliError::BadConfig(
                "dp_steps in 1..=100000, gap_tolerance ≥ 0, max_clocks ≥ 1".into(),
            ));
        }
        if !(switch.reserve_s >= 0.0 && switch.lead_s >= 0.0) {
            return Err(EaliError::BadConfig("switch costs must be ≥ 0".into()));
        }
        let costs = select_clocks(costs, c.max_clocks.min(254));
        let candidates: Vec<usize> = costs
            .batches
            .iter()
            .enumerate()
            .filter(|(_, b)| **b <= c.max_batch)
            .map(|(i, _)| i)
            .collect();
        if candidates.is_empty() {
            return Err(EaliError::BadConfig(format!(
                "no batch size in the table is ≤ {}",
                c.max_batch
            )));
        }
        let fill = FillQuantiles::new(
            c.percentile,
            costs.batches[*candidates.last().unwrap_or(&0)],
        );
        let credit_w = costs.idle_power_w.iter().copied().fold(INF, f64::min);
        let fill_split = FillQuantiles::new(
            c.percentile.sqrt(),
            costs.batches[*candidates.last().unwrap_or(&0)],
        );
        Ok(Self {
            costs,
            switch,
            config,
            fill,
            fill_split,
            candidates,
            credit_w,
        })
    }

    pub fn costs(&self) -> &UnitCostTable {
        &self.costs
    }
    pub fn config(&self) -> &PlannerConfig {
        &self.config
    }
    pub fn switch_cost(&self) -> SwitchCost {
        self.switch
    }
    /// Candidate batch sizes, ascending.
    pub fn batches(&self) -> Vec<u32> {
        self.candidates
            .iter()
            .map(|&bi| self.costs.batches[bi])
            .collect()
    }
    /// q-quantile of the fill time for a batch at a rate (s).
    pub fn fill_wait_s(&self, batch: u32, rate: f64) -> f64 {
        self.fill.wait_s(batch, rate)
    }

    /// Highest sustainable rate at max clocks: max over b of b / T_x(b, f_max) (req/s).
    pub fn max_clock_capacity(&self) -> f64 {
        let fm = self.costs.max_clock_index();
        self.candidates
            .iter()
            .map(|&bi| {
                let t = self.costs.total_time_s(bi, fm) + self.costs.batch_overhead_s[bi];
                f64::from(self.costs.batches[bi]) / t.max(1e-12)
            })
            .fold(0.0, f64::max)
    }

    /// Re-scores a given decision (batch size and clock per unit) under a request: the same
    /// prediction a fresh plan would carry, with `feasible` telling whether it still meets the
    /// constraints. `None` if the batch size or a clock is not in the planner's grid.
    pub fn evaluate(&self, batch: u32, clocks_mhz: &[u32], req: &PlanRequest) -> Option<Plan> {
        let bi = self
            .candidates
            .iter()
            .copied()
            .find(|&bi| self.costs.batches[bi] == batch)?;
        if clocks_mhz.len() != self.costs.num_units() {
            return None;
        }
        let clocks: Vec<usize> = clocks_mhz
            .iter()
            .map(|&c| self.costs.clock_index(c))
            .collect::<Option<_>>()?;
        let (latency, stable, overhead) = self.budgets(bi, req);
        let preset_gap = if req.entry == EntryClock::Preset && clocks.first() != clocks.last() {
            self.switch.lead_s
        } else {
            0.0
        };
        let budget = latency.min(stable - preset_gap);
        let inst = self.instance(bi, req, budget, overhead);
        let feasible = inst.eval(&clocks).time <= budget;
        let energy = inst.exact_energy(&clocks).1;
        Some(self.to_plan(
            &Choice {
                bi,
                clocks,
                budget,
                energy,
            },
            req,
            feasible,
        ))
    }

    pub(super) fn budgets(&self, bi: usize, req: &PlanRequest) -> (f64, f64, f64) {
        let b = self.costs.batches[bi];
        let overhead = self.overhead_s(bi, req);
        // A request waits for the rest of its batch to arrive and for the batches before it to
        // finish, then runs (the GPU is busy T_o + T_x per batch): the longest service whose
        // tail latency stays within the target.
        let latency = super::queue_wait::max_service_s(
            b,
            req.rate_upper.max(req.rate),
            self.config.percentile,
            req.fill_wait_s(&self.fill_split, b),
            (1.0 - req.margin) * self.config.slo_s,
        ) - overhead;
        (latency, self.stable_s(bi, req), overhead)
    }

    /// Whether batch index `bi` can meet the latency target at all: its fastest execution (each
    /// unit at its fastest clock, no switches) within the latency budget. The same answer as
    /// comparing with [`Planner::budgets`]' latency budget, for one queueing evaluation instead
    /// of a bisection.
    pub(super) fn latency_allows(&self, bi: usize, req: &PlanRequest) -> bool {
        let fastest: f64 = self
            .costs
            .time_s
            .iter()
            .map(|unit| unit[bi].iter().copied().fold(INF, f64::min))
            .sum::<f64>()
            * req.corrections.time;
        let b = self.costs.batches[bi];
        super::queue_wait::service_fits(
            b,
            req.rate_upper.max(req.rate),
            self.config.percentile,
            req.fill_wait_s(&self.fill_split, b),
            (1.0 - req.margin) * self.config.slo_s,
            fastest + self.overhead_s(bi, req),
        )
    }

    /// The fixed per-batch overhead T_o (s), corrected: the cheap part of [`Planner::budgets`].
    pub(super) fn overhead_s(&self, bi: usize, req: &PlanRequest) -> f64 {
        self.costs.batch_overhead_s[bi] * req.corrections.time
    }

    /// The stability budget of [`Planner::budgets`] alone (no latency search).
    pub(super) fn stable_s(&self, bi: usize, req: &PlanRequest) -> f64 {
        if req.rate_upper > 0.0 {
            f64::from(self.costs.batches[bi]) / req.rate_upper - self.overhead_s(bi, req)
        } else {
            INF
        }
    }

    pub(super) fn entry(&self, req: &PlanRequest) -> Entry {
        match req.entry {
            EntryClock::Preset => Entry::Preset,
            EntryClock::At(mhz) => self
                .costs
                .clock_index(mhz)
                .map_or(Entry::Unknown, Entry::Fixed),
        }
    }

    /// Prepared instance for batch index `bi` with a budget for Σt + Σs.
    pub(super) fn instance(
        &self,
        bi: usize,
        req: &PlanRequest,
        budget: f64,
        overhead: f64,
    ) -> Instance {
        let (n, nf) = (self.costs.num_units(), self.costs.clocks_mhz.len());
        let (at, ae) = (req.corrections.time, req.corrections.energy);
        let s = self.switch.reserve_s;
        let pc = self.credit_w;
        let cycle = if req.rate > 0.0 {
            f64::from(self.costs.batches[bi]) / req.rate
        } else {
            INF
        };
        let idle_est = if cycle.is_finite() {
            (cycle - budget.max(0.0)).max(0.0)
        } else {
            0.0
        };
        let mut inst = Instance {
            n,
            nf,
            t: vec![0.0; n * nf],
            ef: vec![0.0; n * nf],
            e: vec![0.0; n * nf],
            swf: vec![0.0; n * nf],
            sw: vec![0.0; n * nf],
            s,
            idle_adj: self
                .costs
                .idle_power_w
                .iter()
                .map(|p| (p - pc) * idle_est)
                .collect(),
            idle_w: self.costs.idle_power_w.clone(),
            entry: self.entry(req),
            budget,
            j_const: if cycle.is_finite() { pc * cycle } else { 0.0 },
            cycle_s: if cycle.is_finite() { cycle } else { 0.0 },
            overhead_s: overhead,
        };
        for i in 0..n {
            for k in 0..nf {
                let x = i * nf + k;
                let t = self.costs.time_s[i][bi][k] * at;
                let e = self.costs.energy_j[i][bi][k] * ae;
                let p = if t > 0.0 { e / t } else { 0.0 };
                inst.t[x] = t;
                inst.e[x] = e;
                inst.ef[x] = e - pc * t;
                inst.sw[x] = s * p;
                inst.swf[x] = (s * (p - pc)).max(0.0);
            }
        }
        inst
    }
}

/// Keeps at most `max` clocks, evenly spread over the table's, always including f_max.
fn select_clocks(mut costs: UnitCostTable, max: usize) -> UnitCostTable {
    let nf = costs.clocks_mhz.len();
    if nf <= max {
        return costs;
    }
    let keep: Vec<usize> = (0..max)
        .map(|j| ((nf - 1) * j + (max - 1) / 2) / (max - 1).max(1))
        .collect();
    let mut keep = if max == 1 { vec![nf - 1] } else { keep };
    if let Some(last) = keep.last_mut() {
        *last = nf - 1;
    }
    keep.dedup();
    let pick = |row: &Vec<f64>| keep.iter().map(|&k| row[k]).collect::<Vec<f64>>();
    costs.clocks_mhz = keep.iter().map(|&k| costs.clocks_mhz[k]).collect();
    costs.idle_power_w = pick(&costs.idle_power_w);
    for u in costs.time_s.iter_mut().chain(costs.energy_j.iter_mut()) {
        for row in u.iter_mut() {
            *row = pick(row);
        }
    }
    costs
}
