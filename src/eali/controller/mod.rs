//! The online EALI controller, in virtual time (`docs/architecture.md`, "Online controller").
//!
//! The caller (the discrete-event simulator or the serving loop) reports arrivals and finished
//! batches, and asks what to do whenever the GPU is free and requests wait:
//!
//! ```text
//! ctl.on_arrival(t);                          // every request, in time order
//! match ctl.next_action(now, queued, oldest) {
//!     Action::Dispatch { batch, plan } => run `batch` requests with `plan` (its timeline says
//!         when to issue each in-batch clock change; `plan.batch` may exceed `batch` for a
//!         partial batch: the plan of the smallest planned size that holds them),
//!     Action::WaitUntil { until, hold_clock_mhz } => hold the GPU at `hold_clock_mhz` (set it
//!         now if it differs: the next batch's first clock is preset while idle), ask again at
//!         `until` or at the next arrival, whichever is first,
//! }
//! ctl.on_batch_done(&BatchReport::new(&plan, batch, done_at, observed_s, observed_j, latencies));
//! ```
//!
//! Inside: a rate estimator (sliding window + EWMA, upper bound, change detection), a lazily
//! filled [`PlanTable`], re-planning every control period or at once on a detected change,
//! hysteresis against clock churn, α model corrections and the AIMD SLO margin.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::EaliError;
use super::plan_table::{PlanTable, TableConfig};
use super::planner::{Corrections, EntryClock, Plan, PlanRequest, PlanSet, Planner, PlannerConfig};
use super::switch::{SwitchCost, SwitchLatency};
use super::units::{UnitChain, UnitCostTable};

pub mod feedback;
pub mod rate;
#[cfg(test)]
mod tests;

pub use feedback::{Corrector, MarginConfig, MarginController, MarginUpdate};
pub use rate::{RateConfig, RateEstimator};

/// Margin the dispatch deadline keeps at least (the lowest before margins could go negative).
const DISPATCH_MARGIN_MIN: f64 = 0.05;

/// Controller settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControllerConfig {
    pub planner: PlannerConfig,
    /// Plan-table shape; its `z` and `window_s` are taken from `rate`.
    pub table: TableConfig,
    pub rate: RateConfig,
    pub margin: MarginConfig,
    /// Re-plan period (s).
    pub control_period_s: f64,
    /// Adopt a new plan only if it predicts this much less energy per request (0.03 = 3 %).
    pub hysteresis: f64,
    /// EWMA weight of α updates.
    pub correction_weight: f64,
    /// Re-solve the table when α has moved this much (relative) since it was solved.
    pub resolve_tolerance: f64,
    /// Time without a detected rate change after which the arrivals count as steady, so the
    /// margin may take slack from the latency model (s).
    #[serde(default = "default_steady_s")]
    pub steady_s: f64,
}

fn default_steady_s() -> f64 {
    10.0
}

impl ControllerConfig {
    /// Defaults around an SLO of `slo_s` at the 99th percentile.
    pub fn new(slo_s: f64) -> Self {
        let planner = PlannerConfig::new(slo_s);
        Self {
            planner,
            table: TableConfig::default(),
            rate: RateConfig::default(),
            margin: MarginConfig {
                violation_target: 1.0 - planner.percentile,
                ..MarginConfig::default()
            },
            control_period_s: 1.0,
            hysteresis: 0.03,
            correction_weight: 0.2,
            resolve_tolerance: 0.05,
            steady_s: default_steady_s(),
        }
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run the `batch` oldest requests with `plan`.
    Dispatch { batch: u32, plan: Plan },
    /// Nothing to run yet: hold this clock while idle and ask again at `until`.
    WaitUntil { until: f64, hold_clock_mhz: u32 },
}

/// What a finished batch looked like.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchReport {
    pub done_at: f64,
    /// Requests in the batch.
    pub batch: u32,
    /// The batch size the plan was made for (≥ `batch` for partial batches).
    pub planned_batch: u32,
    pub predicted_time_s: f64,
    pub observed_time_s: f64,
    /// Predicted and observed energy of running the batch (J), not counting idle time after it.
    pub predicted_energy_j: f64,
    pub observed_energy_j: f64,
    pub corrections: Corrections,
    pub exit_clock_mhz: u32,
    /// Latency of each request (arrival to completion, s).
    pub latencies_s: Vec<f64>,
}

impl BatchReport {
    pub fn new(
        plan: &Plan,
        batch: u32,
        done_at: f64,
        observed_time_s: f64,
        observed_energy_j: f64,
        latencies_s: Vec<f64>,
    ) -> Self {
        Self {
            done_at,
            batch,
            planned_batch: plan.batch,
            predicted_time_s: plan.exec_time_s,
            observed_time_s,
            predicted_energy_j: plan.batch_energy_j,
            observed_energy_j,
            corrections: plan.corrections,
            exit_clock_mhz: plan.exit_clock_mhz(),
            latencies_s,
        }
    }
}

/// Counters for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerStats {
    pub control_periods: u64,
    pub replans: u64,
    pub plan_changes: u64,
    pub rate_changes: u64,
    pub table_resolves: u64,
    pub dispatches: u64,
}

/// What the controller believes about the GPU clock between batches.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ClockBelief {
    /// Clock in force (MHz); `None` before the first batch.
    at: Option<u32>,
    /// A hold request in flight: target and when it takes effect.
    pending: Option<(u32, f64)>,
}

/// The online controller.
#[derive(Debug, Clone)]
pub struct Controller {
    config: ControllerConfig,
    table: PlanTable,
    current: Arc<PlanSet>,
    rate: RateEstimator,
    margin: MarginController,
    corrector: Corrector,
    next_tick: f64,
    clock: ClockBelief,
    switch: SwitchCost,
    stats: ControllerStats,
    last_margin_update: Option<MarginUpdate>,
    /// Rate bucket of the estimate at the last re-plan.
    planned_bucket: usize,
    /// When the rate estimator last detected a change (or the controller started).
    last_rate_change: f64,
}

impl Controller {
    /// A controller for `chain` (names only; the costs are in `unit_costs`), starting at virtual
    /// time `start_s`.
    pub fn new(
        config: ControllerConfig,
        chain: &UnitChain,
        unit_costs: UnitCostTable,
        switch_latency: SwitchLatency,
        start_s: f64,
    ) -> Result<Self, EaliError> {
        if chain.len() != unit_costs.num_units() {
            return Err(EaliError::UnitMismatch {
                chain: chain.len(),
                table: unit_costs.num_units(),
            });
        }
        if !(config.control_period_s > 0.0
            && config.hysteresis >= 0.0
            && config.resolve_tolerance >= 0.0)
        {
            return Err(EaliError::BadConfig(
                "control period > 0, hysteresis and tolerance ≥ 0".into(),
            ));
        }
        let switch = SwitchCost::from_latency(&switch_latency);
        let planner = Planner::new(unit_costs, switch, config.planner)?;
        // Slow models on small GPUs can top out below the default 1 req/s floor.
        let rate_min = config
            .table
            .rate_min
            .min(planner.max_clock_capacity() / 100.0);
        let table_cfg = TableConfig {
            z: config.rate.z,
            window_s: config.rate.window_s,
            rate_min,
            ..config.table.clone()
        };
        let mut table = PlanTable::new(planner, table_cfg, Corrections::default())?;
        let rate = RateEstimator::new(config.rate, start_s);
        let margin = MarginController::new(
            config.margin,
            config.planner.slo_s,
            config.planner.percentile,
        );
        let current = table.lookup(rate.estimate(), margin.margin());
        let planned_bucket = table.bucket(rate.estimate());
        Ok(Self {
            planned_bucket,
            last_rate_change: start_s,
            corrector: Corrector::new(config.correction_weight),
            next_tick: start_s + config.control_period_s,
            clock: ClockBelief {
                at: None,
                pending: None,
            },
            switch,
            stats: ControllerStats::default(),
            last_margin_update: None,
            config,
            table,
            current,
            rate,
            margin,
        })
    }

    /// A request arrived at `t` (calls must come in time order).
    pub fn on_arrival(&mut self, t: f64) {
        self.advance(t);
        self.rate.on_arrival(t);
        if self.rate.detect_change(t).is_some() {
            self.stats.rate_changes += 1;
            self.last_rate_change = t;
            self.margin.on_rate_change();
            self.replan();
        } else if self.table.bucket(self.rate.estimate()) != self.planned_bucket {
            // After a change the estimate moves with every arrival: follow it across buckets.
            self.replan();
        }
    }

    /// Decision when the GPU is free: `queued` requests wait, the oldest since `oldest_arrival`.
    pub fn next_action(&mut self, now: f64, queued: u32, oldest_arrival: Option<f64>) -> Action {
        self.advance(now);
        let best = &self.current.best;
        let hold = best.entry_clock_mhz();
        let oldest = match oldest_arrival {
            Some(t) if queued > 0 => t,
            _ => {
                self.note_hold(now, hold);
                return Action::WaitUntil {
                    until: self.next_tick,
                    hold_clock_mhz: hold,
                };
            }
        };
        if queued >= best.batch || best.saturated {
            // More than one planned batch queued and the oldest request already past the time
            // the plan would have sent it (a burst the rate estimate has not caught up with, or
            // overload): take as many as the largest planned batch holds, as dynamic batching
            // does, so the backlog drains instead of being served at the plan's pace.
            let largest = self.current.by_batch.last().map_or(best.batch, |p| p.batch);
            let target = self.dispatch_target_s();
            let late = now >= oldest + target - best.exec_time_s;
            let (batch, plan) = if queued > best.batch && late {
                let batch = queued.min(largest.max(best.batch));
                (batch, self.current.for_queue(batch).clone())
            } else {
                let batch = queued.min(best.batch);
                let plan = if batch == best.batch {
                    best.clone()
                } else {
                    self.current.for_queue(batch).clone()
                };
                (batch, plan)
            };
            return self.dispatch(batch, plan);
        }
        let plan = self.current.for_queue(queued);
        let target = self.dispatch_target_s();
        let deadline = oldest + target - plan.exec_time_s - self.entry_penalty(now, plan);
        if now >= deadline {
            let plan = plan.clone();
            return self.dispatch(queued, plan);
        }
        self.note_hold(now, hold);
        Action::WaitUntil {
            until: deadline.min(self.next_tick),
            hold_clock_mhz: hold,
        }
    }

    /// How long after its arrival the oldest request must be done: the SLO less the margin, and
    /// never less than the smallest positive tabulated margin (a negative margin is slack in
    /// the planner's latency model; the dispatch deadline works on the real clock).
    fn dispatch_target_s(&self) -> f64 {
        (1.0 - self.margin.margin().max(DISPATCH_MARGIN_MIN)) * self.config.planner.slo_s
    }

    /// A batch finished: feeds α, the margin controller and the clock belief.
    pub fn on_batch_done(&mut self, report: &BatchReport) {
        // Partial batches ran a plan made for more requests: their ratio says nothing about α.
        if report.batch == report.planned_batch {
            self.corrector.observe(
                report.corrections,
                (report.predicted_time_s, report.predicted_energy_j),
                (report.observed_time_s, report.observed_energy_j),
            );
        }
        for &l in &report.latencies_s {
            self.margin.record(l);
        }
        self.clock = ClockBelief {
            at: Some(report.exit_clock_mhz),
            pending: None,
        };
        self.advance(report.done_at);
    }

    /// Whether the current plan is the overload fallback (scale-out signal).
    pub fn saturated(&self) -> bool {
        self.current.best.saturated
    }
    pub fn current_plan(&self) -> &Plan {
        &self.current.best
    }
    pub fn current_plans(&self) -> &Arc<PlanSet> {
        &self.current
    }
    pub fn margin(&self) -> f64 {
        self.margin.margin()
    }
    pub fn rate_estimate(&self) -> f64 {
        self.rate.estimate()
    }
    pub fn rate_upper(&self) -> f64 {
        self.rate.upper()
    }
    pub fn corrections(&self) -> Corrections {
        self.corrector.value()
    }
    pub fn stats(&self) -> ControllerStats {
        self.stats
    }
    pub fn last_margin_update(&self) -> Option<MarginUpdate> {
        self.last_margin_update
    }
    pub fn planner(&self) -> &Planner {
        self.table.planner()
    }
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    fn dispatch(&mut self, batch: u32, plan: Plan) -> Action {
        self.stats.dispatches += 1;
        Action::Dispatch { batch, plan }
    }

    /// Runs the control periods that ended by `now`.
    fn advance(&mut self, now: f64) {
        if now < self.next_tick {
            return;
        }
        let period = self.config.control_period_s;
        // After a long silence, close one period for the latencies and skip the empty ones.
        let missed = ((now - self.next_tick) / period).floor();
        if missed > 1.0 {
            self.next_tick += (missed - 1.0) * period;
        }
        while now >= self.next_tick {
            let tick = self.next_tick;
            self.stats.control_periods += 1;
            let steady = tick - self.last_rate_change >= self.config.steady_s;
            if let Some(u) = self.margin.end_period(steady) {
                self.last_margin_update = Some(u);
            }
            self.rate.tick(tick);
            self.sync_corrections();
            self.replan();
            self.next_tick += period;
        }
    }

    /// Re-solves the table when α has drifted from what its cells were solved with.
    fn sync_corrections(&mut self) {
        let (now, used) = (self.corrector.value(), self.table.corrections());
        let drift = |a: f64, b: f64| (a / b - 1.0).abs();
        if drift(now.time, used.time) > self.config.resolve_tolerance
            || drift(now.energy, used.energy) > self.config.resolve_tolerance
        {
            self.table.set_corrections(now);
            self.stats.table_resolves += 1;
        }
    }

    /// Picks the plan for the current estimate and margin, with hysteresis.
    fn replan(&mut self) {
        self.stats.replans += 1;
        let (rate, upper, margin) = (
            self.rate.estimate(),
            self.rate.upper(),
            self.margin.margin(),
        );
        self.planned_bucket = self.table.bucket(rate);
        let req = PlanRequest {
            rate,
            fill_rate: rate,
            rate_upper: upper,
            margin,
            entry: EntryClock::Preset,
            corrections: self.table.corrections(),
            fill: Default::default(),
        };
        let candidate = if self.table.above_range(rate) {
            Arc::new(self.table.planner().plan_set(&req))
        } else {
            self.table.lookup(rate, margin)
        };
        if Arc::ptr_eq(&candidate, &self.current) {
            return;
        }
        let planner = self.table.planner();
        let score = |p: &Plan| planner.evaluate(p.batch, &p.unit_clocks_mhz, &req);
        let cur = score(&self.current.best);
        let cand = score(&candidate.best);
        let adopt = match (&cur, &cand) {
            // The current plan no longer fits (or never did): take the candidate.
            (None, _) => true,
            (Some(c), _) if !c.feasible || self.current.best.saturated => true,
            (Some(_), None) => false,
            (Some(c), Some(n)) => {
                n.feasible
                    && n.energy_per_request_j
                        < c.energy_per_request_j * (1.0 - self.config.hysteresis)
            }
        };
        if adopt {
            self.current = candidate;
            self.stats.plan_changes += 1;
        }
    }

    /// Extra time to allow when the plan's first clock will not be in force at batch start.
    fn entry_penalty(&self, now: f64, plan: &Plan) -> f64 {
        let at_now = match self.clock.pending {
            Some((target, effective)) if now >= effective => Some(target),
            _ => self.clock.at,
        };
        if plan.preset_entry && at_now != Some(plan.entry_clock_mhz()) {
            self.switch.reserve_s
        } else {
            0.0
        }
    }

    fn note_hold(&mut self, now: f64, hold: u32) {
        let already = match self.clock.pending {
            Some((target, _)) => target == hold,
            None => self.clock.at == Some(hold),
        };
        if !already {
            if let Some((target, effective)) = self.clock.pending
                && now >= effective
            {
                self.clock.at = Some(target);
            }
            self.clock.pending = Some((hold, now + self.switch.lead_s));
        }
    }
}
