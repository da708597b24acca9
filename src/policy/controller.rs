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
    /// Per unit: EWMA of where the unit really started over where the cost table predicts it
    /// for the batch as dispatched (time since dispatch). A unit's predicted start sums its predecessors'
    /// per-layer costs, which a run of consecutive layers does not take exactly; set-calls are
    /// made at the corrected boundary, less two standard deviations of its run-to-run spread,
    /// so the clock is in force when the unit starts.
    boundary: Vec<f64>,
    /// Per unit: EWMA of the squared deviation of that ratio.
    boundary_var: Vec<f64>,
}

/// Predicted start of unit `k` (time since dispatch: the batch overhead and the units before it)
/// for a batch of `batch` at `clocks_mhz` per unit, interpolated between the table's batch sizes.
fn predicted_start(
    costs: &crate::eali::units::UnitCostTable,
    batch: u32,
    clocks_mhz: &[u32],
    k: usize,
) -> Option<f64> {
    let at = |bi: usize| -> Option<f64> {
        let mut t = *costs.batch_overhead_s.get(bi)?;
        for (u, &f) in clocks_mhz.iter().enumerate().take(k) {
            t += costs.time_s.get(u)?.get(bi)?.get(costs.clock_index(f)?)?;
        }
        Some(t)
    };
    let hi = costs.batches.iter().position(|&b| b >= batch)?;
    let b_hi = f64::from(costs.batches[hi]);
    if hi == 0 || costs.batches[hi] == batch {
        return at(hi);
    }
    let b_lo = f64::from(costs.batches[hi - 1]);
    let w = (f64::from(batch) - b_lo) / (b_hi - b_lo);
    Some((1.0 - w) * at(hi - 1)? + w * at(hi)?)
}

/// EWMA weight of the boundary corrections.
const BOUNDARY_WEIGHT: f64 = 0.2;
/// Boundary corrections stay within this factor of the plan.
const BOUNDARY_CLAMP: (f64, f64) = (0.5, 2.0);

impl ControllerPolicy {
    /// `units` are the layer ranges of the controller's chain, in order.
    pub fn new(name: &str, ctl: Controller, units: Vec<Range<usize>>) -> Self {
        let max_batch = ctl.planner().batches().last().copied().unwrap_or(1);
        Self {
            boundary: vec![1.0; units.len()],
            boundary_var: vec![0.0; units.len()],
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
    fn convert(&mut self, p: &Plan, batch: u32) {
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
        let (boundary, var) = (&self.boundary, &self.boundary_var);
        let costs = self.ctl.planner().costs();
        // Calls stay in time order whatever the corrections.
        let mut earliest = 0.0f64;
        self.plan
            .set_calls
            .extend(p.timeline.iter().filter(|c| c.unit > 0).map(|c| {
                // The plan leads its predicted boundary by the switch latency; the lead stays,
                // the boundary moves to where units have been starting.
                let lead = (c.unit_start_s - c.issue_at_s).max(0.0);
                let ratio = boundary.get(c.unit).copied().unwrap_or(1.0)
                    - 2.0 * var.get(c.unit).copied().unwrap_or(0.0).sqrt();
                // Predicted for the batch as dispatched: a partial batch runs the plan of a
                // fuller one, and its units end sooner.
                let predicted = predicted_start(costs, batch, &p.unit_clocks_mhz, c.unit)
                    .unwrap_or(c.unit_start_s);
                let at = ratio.max(BOUNDARY_CLAMP.0) * predicted;
                earliest = earliest.max(at - lead);
                SetCall {
                    offset_s: earliest,
                    target: ClockTarget::Locked(c.clock_mhz),
                }
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
                self.convert(&plan, batch);
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
            let costs = self.ctl.planner().costs();
            for c in plan.timeline.iter().filter(|c| c.unit > 0) {
                let (Some(&started), Some(predicted), Some(b), Some(v)) = (
                    done.unit_starts_s.get(c.unit),
                    predicted_start(costs, done.batch, &plan.unit_clocks_mhz, c.unit),
                    self.boundary.get_mut(c.unit),
                    self.boundary_var.get_mut(c.unit),
                ) else {
                    continue;
                };
                let ratio = (started - done.start_s) / predicted;
                if ratio.is_finite() && ratio > 0.0 {
                    let w = BOUNDARY_WEIGHT;
                    *v = (1.0 - w) * *v + w * (ratio - *b).powi(2);
                    *b = ((1.0 - w) * *b + w * ratio).clamp(BOUNDARY_CLAMP.0, BOUNDARY_CLAMP.1);
                }
            }
        }
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
