//! EALI's online controller as a policy, over either its layer-level unit chain (EALI)
//! or the whole model as one unit ((d), per-batch DVFS as in EAIS: one clock per batch chosen
//! jointly with the batch size by the same planner).

use std::ops::Range;

use crate::eali::controller::{Action as CtlAction, BatchReport, Controller};
use crate::eali::planner::Plan;

use super::{Action, BatchDone, BatchPlan, ClockTarget, Policy, SetCall};

/// The controller behind the [`Policy`] seam.
#[derive(Debug, Clone)]
pub struct ControllerPolicy {
    name: String,
    ctl: Controller,
    units: Vec<Range<usize>>,
    max_batch: u32,
    plan: BatchPlan,
    /// The controller's plan of the batch in flight (for its report).
    last: Option<Plan>,
    /// Hold clock of the last `WaitUntil`, consumed by the next `idle_clock`.
    hold: Option<u32>,
}

impl ControllerPolicy {
    /// `units` are the layer ranges of the controller's chain, in order.
    pub fn new(name: &str, ctl: Controller, units: Vec<Range<usize>>) -> Self {
        let max_batch = ctl.planner().batches().last().copied().unwrap_or(1);
        Self {
            name: name.to_string(),
            ctl,
            units,
            max_batch,
            plan: BatchPlan::default(),
            last: None,
            hold: None,
        }
    }

    pub fn controller(&self) -> &Controller {
        &self.ctl
    }

    /// The simulator's plan for a controller plan: the entry clock is asked for at dispatch (the
    /// clock thread skips it when the preset already did), then the in-batch changes.
    fn convert(&mut self, p: &Plan) {
        self.plan.unit_clocks.clear();
        self.plan
            .unit_clocks
            .extend(p.unit_clocks_mhz.iter().map(|&f| Some(f)));
        self.plan.set_calls.clear();
        if let Some(&entry) = p.unit_clocks_mhz.first() {
            self.plan.set_calls.push(SetCall {
                offset_s: 0.0,
                target: ClockTarget::Locked(entry),
            });
        }
        self.plan
            .set_calls
            .extend(p.timeline.iter().filter(|c| c.unit > 0).map(|c| SetCall {
                offset_s: c.issue_at_s,
                target: ClockTarget::Locked(c.clock_mhz),
            }));
    }
}

impl Policy for ControllerPolicy {
    fn name(&self) -> &str {
        &self.name
    }
    fn units(&self) -> &[Range<usize>] {
        &self.units
    }
    fn max_batch(&self) -> u32 {
        self.max_batch
    }
    fn on_arrival(&mut self, t: f64) {
        self.ctl.on_arrival(t);
    }
    fn next_action(&mut self, now: f64, queue_len: usize, oldest_arrival: f64) -> Action {
        let queued = u32::try_from(queue_len).unwrap_or(u32::MAX);
        match self.ctl.next_action(now, queued, Some(oldest_arrival)) {
            CtlAction::Dispatch { batch, plan } => {
                self.convert(&plan);
                self.last = Some(plan);
                Action::Dispatch { batch }
            }
            CtlAction::WaitUntil {
                until,
                hold_clock_mhz,
            } => {
                self.hold = Some(hold_clock_mhz);
                Action::WaitUntil(until)
            }
        }
    }
    fn idle_clock(&mut self, now: f64) -> Option<ClockTarget> {
        let hold = match self.hold.take() {
            Some(h) => h,
            None => match self.ctl.next_action(now, 0, None) {
                CtlAction::WaitUntil { hold_clock_mhz, .. } => hold_clock_mhz,
                CtlAction::Dispatch { plan, .. } => plan.entry_clock_mhz(),
            },
        };
        Some(ClockTarget::Locked(hold))
    }
    fn plan(&self) -> &BatchPlan {
        &self.plan
    }
    fn on_batch_done(&mut self, done: &BatchDone<'_>) {
        if let Some(plan) = &self.last {
            let report = BatchReport::new(
                plan,
                done.batch,
                done.end_s,
                done.end_s - done.start_s,
                done.energy_j,
                done.latencies_s.to_vec(),
            );
            self.ctl.on_batch_done(&report);
        }
    }
    fn saturated(&self) -> bool {
        self.ctl.saturated()
    }
}
