//! The planner's output: batch size, clock per unit, when to issue each clock change, and the
//! predicted latency and energy.

use serde::{Deserialize, Serialize};

use super::instance::Instance;
use super::{Choice, Corrections, PlanRequest, Planner};

/// One clock change inside a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockSet {
    /// The unit that should run at the new clock (the change lands on its start boundary).
    pub unit: usize,
    pub clock_mhz: u32,
    /// When to issue the set-call, relative to batch start (s): the unit's predicted start minus
    /// the switch lead (call + settle), not before 0.
    pub issue_at_s: f64,
    /// Predicted unit start, relative to batch start (s).
    pub unit_start_s: f64,
}

/// A decision for one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub batch: u32,
    /// Clock per unit (MHz), in chain order.
    pub unit_clocks_mhz: Vec<u32>,
    /// Whether the first unit's clock is assumed preset while the GPU idled before the batch.
    pub preset_entry: bool,
    /// Clock changes during the batch, in time order (an entry switch at 0 if not preset).
    pub timeline: Vec<ClockSet>,
    /// Predicted execution time T_x: overhead + units + switch reserves (s).
    pub exec_time_s: f64,
    /// q-quantile of the fill time of the first request W_q(b, λ) (s).
    pub fill_time_s: f64,
    /// Predicted tail latency: fill quantile + execution (s).
    pub latency_s: f64,
    /// Predicted energy of running the batch, switches included (J).
    pub batch_energy_j: f64,
    /// Predicted energy of a whole cycle b/λ: batch + idle until the next batch (J).
    pub cycle_energy_j: f64,
    /// `cycle_energy_j / batch`.
    pub energy_per_request_j: f64,
    /// Clock changes per batch (entry switch included when not preset).
    pub switches: u32,
    /// Corrections the prediction used (to relate observations back to the raw model).
    pub corrections: Corrections,
    /// Meets the latency and stability constraints.
    pub feasible: bool,
    /// No plan met them: max clocks, largest stable batch (scale-out signal).
    pub saturated: bool,
    /// How the fill wait entered `latency_s` (the dispatch deadline when no batch size fills in
    /// time at this rate).
    #[serde(default)]
    pub fill_bound: super::FillBound,
}

impl Plan {
    /// Clock the GPU should hold while idle before this plan's batch (its first unit's clock).
    pub fn entry_clock_mhz(&self) -> u32 {
        self.unit_clocks_mhz.first().copied().unwrap_or(0)
    }
    /// Clock the GPU is left at after the batch.
    pub fn exit_clock_mhz(&self) -> u32 {
        self.unit_clocks_mhz.last().copied().unwrap_or(0)
    }
}

/// The best plan and the best plan per candidate batch size (ascending batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSet {
    pub best: Plan,
    pub by_batch: Vec<Plan>,
}

impl PlanSet {
    /// Plan for dispatching `queued` requests now: the smallest planned batch size that holds
    /// them (its time is an upper bound for fewer requests), else the largest.
    pub fn for_queue(&self, queued: u32) -> &Plan {
        self.by_batch
            .iter()
            .find(|p| p.batch >= queued)
            .or(self.by_batch.last())
            .unwrap_or(&self.best)
    }
}

impl Planner {
    pub(super) fn to_plan(&self, c: &Choice, req: &PlanRequest, feasible: bool) -> Plan {
        let overhead = self.overhead_s(c.bi, req);
        let inst: &Instance = &self.instance(c.bi, req, c.budget, overhead);
        let ev = inst.eval(&c.clocks);
        let (busy, cycle) = inst.exact_energy(&c.clocks);
        let b = self.costs.batches[c.bi];
        let lead = self.switch.lead_s;
        let mut timeline = Vec::new();
        let mut start = inst.overhead_s;
        for (i, &k) in c.clocks.iter().enumerate() {
            let switch = if i == 0 {
                inst.entry_switch(k)
            } else {
                c.clocks[i - 1] != k
            };
            if switch {
                let issue = if i == 0 { 0.0 } else { (start - lead).max(0.0) };
                timeline.push(ClockSet {
                    unit: i,
                    clock_mhz: self.costs.clocks_mhz[k],
                    issue_at_s: issue,
                    unit_start_s: start,
                });
            }
            start += inst.t[inst.at(i, k)];
        }
        let fill = self.fill.wait_s(b, req.fill_rate);
        let exec = inst.overhead_s + ev.time;
        // A request's tail latency: the later of its batch filling and the GPU freeing up, then
        // the execution.
        let pre = super::super::queue_wait::pre_service_quantile_s(
            b,
            req.rate_upper.max(req.rate),
            exec,
            self.config.percentile,
            req.fill_wait_s(&self.fill_split, b),
        );
        Plan {
            batch: b,
            unit_clocks_mhz: c.clocks.iter().map(|&k| self.costs.clocks_mhz[k]).collect(),
            preset_entry: req.entry == super::EntryClock::Preset,
            timeline,
            exec_time_s: exec,
            fill_time_s: fill,
            latency_s: pre + exec,
            batch_energy_j: busy,
            cycle_energy_j: cycle,
            energy_per_request_j: cycle / f64::from(b),
            switches: ev.switches,
            corrections: req.corrections,
            fill_bound: req.fill,
            feasible,
            saturated: false,
        }
    }
}
