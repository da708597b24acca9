//! The outer search over batch sizes, in two phases.
//!
//! Phase 1 runs the cheap solvers on every candidate batch size, largest first so that the best
//! energy per request found so far prunes the rest: the best single-clock plan (per-batch DVFS's
//! whole search space, with the full budget) and the Lagrangian fast path over multi-clock plans.
//! Phase 2 hands the exact DP only the batch sizes whose duality gap is wide and whose lower bound
//! could still beat the best plan, in order of that bound.

use super::instance::{INF, Instance};
use super::plan::{Plan, PlanSet};
use super::{Choice, EntryClock, FillBound, PlanRequest, Planner, Solver, dp, lagrange};

/// Keeps `clocks` if its exact energy beats the best so far.
fn consider(best: &mut Option<Choice>, bi: usize, clocks: Vec<usize>, inst: &Instance) {
    let (_, energy) = inst.exact_energy(&clocks);
    if best.as_ref().is_none_or(|c| energy < c.energy) {
        *best = Some(Choice {
            bi,
            clocks,
            budget: inst.budget,
            energy,
        });
    }
}

/// Phase-1 outcome for one batch size.
struct BatchResult {
    bi: usize,
    batch: f64,
    best: Option<Choice>,
    /// Lower bound on the objective of multi-clock plans (J ≤ exact energy).
    lower_bound: f64,
    /// The DP should look at this batch size (wide gap, or the exact solver).
    repair: bool,
    /// Budget of the multi-clock search.
    budget_any: f64,
}

impl BatchResult {
    fn per_request(&self) -> f64 {
        self.best.as_ref().map_or(INF, |c| c.energy / self.batch)
    }
}

impl Planner {
    /// The best plan for a request (over all candidate batch sizes).
    pub fn plan(&self, asked: &PlanRequest) -> Plan {
        let (req, results) = self.search_with_fallback(asked, true);
        let req = &req;
        match pick(&results) {
            Some(c) => self.to_plan(c, req, true),
            None => self.saturated_plan(asked),
        }
    }

    /// The best plan plus the best plan for every candidate batch size (the fastest plan, marked
    /// infeasible, where none fits): what the dispatch rule needs for partial batches. Batch sizes
    /// that cannot be the best keep their fast-path plan (no DP repair).
    pub fn plan_set(&self, asked: &PlanRequest) -> PlanSet {
        let (req, results) = self.search_with_fallback(asked, false);
        let req = &req;
        let best = match pick(&results) {
            Some(c) => self.to_plan(c, req, true),
            None => self.saturated_plan(asked),
        };
        let by_batch = self
            .candidates
            .iter()
            .map(|&bi| {
                match results
                    .iter()
                    .find(|r| r.bi == bi)
                    .and_then(|r| r.best.as_ref())
                {
                    Some(c) => self.to_plan(c, req, true),
                    None => self.fastest_plan(bi, req),
                }
            })
            .collect();
        PlanSet { best, by_batch }
    }

    /// [`Planner::search`] under the request's fill bound and, when no batch size fits at the
    /// fill quantile, again with the fill wait capped by the dispatch deadline; the request the
    /// results belong to.
    fn search_with_fallback(
        &self,
        asked: &PlanRequest,
        prune_across: bool,
    ) -> (PlanRequest, Vec<BatchResult>) {
        let mut req = *asked;
        let mut results = self.search(&req, prune_across);
        if pick(&results).is_none() && req.fill == FillBound::Quantile {
            req.fill = FillBound::DispatchDeadline;
            results = self.search(&req, prune_across);
        }
        (req, results)
    }

    /// Both phases. `prune_across`: let earlier batch sizes cut the fast path of later ones
    /// (only the overall best is wanted).
    fn search(&self, req: &PlanRequest, prune_across: bool) -> Vec<BatchResult> {
        let mut sc = lagrange::Scratch::default();
        let mut results: Vec<BatchResult> = Vec::with_capacity(self.candidates.len());
        let mut best_per = INF;
        for &bi in self.candidates.iter().rev() {
            let cutoff = if prune_across { best_per } else { INF };
            if let Some(r) = self.solve_fast(bi, req, &mut sc, cutoff) {
                best_per = best_per.min(r.per_request());
                results.push(r);
            }
        }
        let mut order: Vec<usize> = (0..results.len()).filter(|&i| results[i].repair).collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (&results[a], &results[b]);
            (ra.lower_bound / ra.batch).total_cmp(&(rb.lower_bound / rb.batch))
        });
        for i in order {
            if results[i].lower_bound / results[i].batch < best_per {
                self.repair(&mut results[i], req);
                best_per = best_per.min(results[i].per_request());
            }
        }
        results
    }

    /// Phase 1 for one batch size; `None` if not even a single-clock plan fits. `cutoff_per_req`:
    /// best energy per request known from other batch sizes.
    fn solve_fast(
        &self,
        bi: usize,
        req: &PlanRequest,
        sc: &mut lagrange::Scratch,
        cutoff_per_req: f64,
    ) -> Option<BatchResult> {
        if !self.latency_allows(bi, req) {
            return None;
        }
        let (latency, stable, overhead) = self.budgets(bi, req);
        let budget_uniform = latency.min(stable);
        if budget_uniform.is_nan() || budget_uniform < 0.0 {
            return None;
        }
        let preset_gap = if req.entry == EntryClock::Preset {
            self.switch.lead_s
        } else {
            0.0
        };
        let budget_any = latency.min(stable - preset_gap);
        let batch = f64::from(self.costs.batches[bi]);
        let mut r = BatchResult {
            bi,
            batch,
            best: None,
            lower_bound: INF,
            repair: false,
            budget_any,
        };

        // Single-clock plans with the full budget (per-batch DVFS is exactly this set).
        let uniform = self.instance(bi, req, budget_uniform, overhead);
        if let Some(clocks) = best_uniform(&uniform) {
            consider(&mut r.best, bi, clocks, &uniform);
        }
        // Every plan takes at least each unit's fastest time (switches only add to it), so when
        // even that misses the budget no multi-clock plan fits: this is what makes a search that
        // finds nothing (the first half of the dispatch-deadline fallback) cheap.
        if budget_any >= 0.0 && uniform.n > 1 && uniform.fastest_time_s() <= budget_any {
            let mut inst = self.instance(bi, req, budget_any, overhead);
            inst.prune();
            // J ≤ exact energy, so multi-clock plans whose bound cannot beat the best so far (per
            // request) or this batch's single-clock plan are not worth searching.
            let cutoff = (cutoff_per_req * batch).min(r.best.as_ref().map_or(INF, |c| c.energy));
            let fast = lagrange::solve(&inst, sc, cutoff);
            r.lower_bound = fast.lower_bound;
            if let Some((clocks, j)) = fast.plan {
                let gap_wide = j - fast.lower_bound > self.config.gap_tolerance * j.abs();
                r.repair = self.config.solver == Solver::Exact || gap_wide;
                consider(&mut r.best, bi, clocks, &inst);
            }
        }
        Some(r)
    }

    /// Phase 2: the exact DP on one batch size's multi-clock search.
    fn repair(&self, r: &mut BatchResult, req: &PlanRequest) {
        let overhead = self.overhead_s(r.bi, req);
        let mut inst = self.instance(r.bi, req, r.budget_any, overhead);
        inst.prune_for_dp(self.config.dp_steps);
        if let Some((clocks, _)) = dp::solve(&inst, self.config.dp_steps) {
            consider(&mut r.best, r.bi, clocks, &inst);
        }
        r.repair = false;
    }

    /// Max clocks everywhere for batch index `bi`, marked infeasible.
    pub(super) fn fastest_plan(&self, bi: usize, req: &PlanRequest) -> Plan {
        let (latency, stable, overhead) = self.budgets(bi, req);
        let budget = latency.min(stable);
        let inst = self.instance(bi, req, budget, overhead);
        let clocks = vec![self.costs.max_clock_index(); inst.n];
        let energy = inst.exact_energy(&clocks).1;
        let mut p = self.to_plan(
            &Choice {
                bi,
                clocks,
                budget,
                energy,
            },
            req,
            false,
        );
        p.feasible = false;
        p
    }

    /// Overload: max clocks on every unit, the largest batch that is stable at max clocks (or the
    /// largest batch when none is).
    pub(super) fn saturated_plan(&self, req: &PlanRequest) -> Plan {
        let fm = self.costs.max_clock_index();
        let stable_bi = self.candidates.iter().rev().copied().find(|&bi| {
            let stable = self.stable_s(bi, req);
            self.costs.total_time_s(bi, fm) * req.corrections.time <= stable
        });
        let bi = stable_bi.or(self.candidates.last().copied()).unwrap_or(0);
        let mut p = self.fastest_plan(bi, req);
        p.saturated = true;
        p
    }
}

/// Least energy per request; ties (within rounding) go to the smaller batch.
fn pick(results: &[BatchResult]) -> Option<&Choice> {
    let mut sorted: Vec<&BatchResult> = results.iter().filter(|r| r.best.is_some()).collect();
    sorted.sort_by_key(|r| r.bi);
    let mut best: Option<&BatchResult> = None;
    for r in sorted {
        if best.is_none_or(|b| r.per_request() < b.per_request() / (1.0 + 1e-9)) {
            best = Some(r);
        }
    }
    best.and_then(|r| r.best.as_ref())
}

/// Best single-clock plan of an instance within its budget (by exact energy).
fn best_uniform(inst: &Instance) -> Option<Vec<usize>> {
    let mut best: Option<(Vec<usize>, f64)> = None;
    for k in 0..inst.nf {
        let clocks = vec![k; inst.n];
        let ev = inst.eval(&clocks);
        if ev.time.is_nan() || ev.time > inst.budget {
            continue;
        }
        let (_, e) = inst.exact_energy(&clocks);
        if best.as_ref().is_none_or(|(_, be)| e < *be) {
            best = Some((clocks, e));
        }
    }
    best.map(|(c, _)| c)
}
