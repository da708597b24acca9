//! Lagrangian fast path: relax the time budget with a price μ per second, solve the relaxed chain
//! problem exactly with a Viterbi pass over clocks (switch costs depend only on the clock switched
//! to, so each step is O(clocks)), and bisect μ until the plan just fits. Each relaxed optimum
//! also gives a lower bound on the constrained optimum, so the caller knows the duality gap and
//! can hand the instance to the DP when the gap is too wide.

use super::instance::{INF, Instance};

/// Result of the fast path on one instance.
#[derive(Debug, Clone)]
pub(crate) struct FastResult {
    /// Best feasible plan found (clock index per unit) and its objective; `None` if no plan fits.
    pub plan: Option<(Vec<usize>, f64)>,
    /// Lower bound on the optimal objective among plans within the budget.
    pub lower_bound: f64,
}

/// Reusable buffers for the Viterbi pass.
#[derive(Debug, Default, Clone)]
pub(crate) struct Scratch {
    v: Vec<f64>,
    next: Vec<f64>,
    /// Back-pointer per (unit, clock): usize::MAX = same clock as before, else previous clock.
    bp: Vec<usize>,
    clocks: Vec<usize>,
}

/// Minimises Σ (ef + μ·t) + switch terms (+ μ·s per switch); `tie` prices time again at a tiny
/// weight so that μ = ∞ can be emulated. Returns the relaxed optimum value; the plan is left in
/// `scratch.clocks`.
fn viterbi(inst: &Instance, mu: f64, time_only: bool, sc: &mut Scratch) -> f64 {
    let (n, nf) = (inst.n, inst.nf);
    sc.v.clear();
    sc.v.resize(nf, INF);
    sc.next.clear();
    sc.next.resize(nf, INF);
    sc.bp.clear();
    sc.bp.resize(n * nf, usize::MAX);
    // Cost of running unit i at clock k, and of switching into it.
    let unit_cost = |x: usize| {
        if time_only {
            inst.t[x] + 1e-9 * inst.ef[x]
        } else {
            inst.ef[x] + mu * inst.t[x]
        }
    };
    let switch_cost = |x: usize| {
        if time_only {
            inst.s + 1e-9 * inst.swf[x]
        } else {
            inst.swf[x] + mu * inst.s
        }
    };
    for k in 0..nf {
        let x = inst.at(0, k);
        if inst.t[x].is_finite() {
            let entry = if inst.entry_switch(k) {
                switch_cost(x)
            } else {
                0.0
            };
            let adj = if time_only { 0.0 } else { inst.first_adj(k) };
            sc.v[k] = unit_cost(x) + entry + adj;
        }
    }
    for i in 1..n {
        let (mut best, mut arg) = (INF, usize::MAX);
        for (k, &val) in sc.v.iter().enumerate() {
            if val < best {
                best = val;
                arg = k;
            }
        }
        for k in 0..nf {
            let x = inst.at(i, k);
            if !inst.t[x].is_finite() {
                sc.next[k] = INF;
                continue;
            }
            let stay = sc.v[k];
            let switch = best + switch_cost(x);
            let base = if stay <= switch {
                sc.bp[x] = usize::MAX;
                stay
            } else {
                sc.bp[x] = arg;
                switch
            };
            sc.next[k] = base + unit_cost(x);
        }
        std::mem::swap(&mut sc.v, &mut sc.next);
    }
    let (mut best, mut arg) = (INF, usize::MAX);
    for k in 0..nf {
        let val = sc.v[k] + if time_only { 0.0 } else { inst.last_adj(k) };
        if val < best {
            best = val;
            arg = k;
        }
    }
    sc.clocks.clear();
    sc.clocks.resize(n, 0);
    if arg == usize::MAX {
        return INF;
    }
    let mut k = arg;
    for i in (0..n).rev() {
        sc.clocks[i] = k;
        let p = sc.bp[inst.at(i, k)];
        if i > 0 && p != usize::MAX {
            k = p;
        }
    }
    best
}

/// Bisection on μ, then a greedy single-unit improvement pass on the best feasible plan.
///
/// `cutoff`: an objective the caller already has from elsewhere; when even the unconstrained
/// optimum cannot beat it, the search stops at once (no plan, the bound says why).
pub(crate) fn solve(inst: &Instance, sc: &mut Scratch, cutoff: f64) -> FastResult {
    let budget = inst.budget;
    let none = FastResult {
        plan: None,
        lower_bound: INF,
    };
    if budget.is_nan() || budget < 0.0 {
        return none;
    }
    // Unconstrained optimum: optimal if it fits.
    let v0 = viterbi(inst, 0.0, false, sc);
    if !v0.is_finite() {
        return none;
    }
    let ev0 = inst.eval(&sc.clocks);
    let mut lower = v0 + inst.j_const;
    if lower >= cutoff {
        return FastResult {
            plan: None,
            lower_bound: lower,
        };
    }
    if ev0.time <= budget {
        return FastResult {
            plan: Some((sc.clocks.clone(), ev0.j)),
            lower_bound: lower,
        };
    }
    // Fastest plan: if even that misses, nothing fits.
    viterbi(inst, 0.0, true, sc);
    let fastest = inst.eval(&sc.clocks);
    if fastest.time > budget {
        return FastResult {
            plan: None,
            lower_bound: lower,
        };
    }
    let mut best: (Vec<usize>, f64) = (sc.clocks.clone(), fastest.j);
    // Bracket: μ_lo infeasible, μ_hi feasible.
    let scale = (ev0.j - inst.j_const).abs().max(1e-12) / ev0.time.max(1e-12);
    let (mut lo, mut hi) = (0.0, scale);
    let mut found_hi = false;
    for _ in 0..60 {
        let v = viterbi(inst, hi, false, sc);
        let ev = inst.eval(&sc.clocks);
        lower = lower.max(v + inst.j_const - hi * budget);
        if ev.time <= budget {
            if ev.j < best.1 {
                best = (sc.clocks.clone(), ev.j);
            }
            found_hi = true;
            break;
        }
        lo = hi;
        hi *= 4.0;
    }
    if found_hi {
        for _ in 0..30 {
            if hi - lo <= 1e-9 * hi {
                break;
            }
            let mid = 0.5 * (lo + hi);
            let v = viterbi(inst, mid, false, sc);
            let ev = inst.eval(&sc.clocks);
            lower = lower.max(v + inst.j_const - mid * budget);
            if ev.time <= budget {
                hi = mid;
                if ev.j < best.1 {
                    best = (sc.clocks.clone(), ev.j);
                }
            } else {
                lo = mid;
            }
        }
    }
    improve(inst, &mut best);
    let lower_bound = lower.min(best.1);
    FastResult {
        plan: Some(best),
        lower_bound,
    }
}

/// Change of (time, J) when unit `i` moves from its clock in `clocks` to `k`; O(1).
fn delta(inst: &Instance, clocks: &[usize], i: usize, k: usize) -> (f64, f64) {
    let old = clocks[i];
    let (xo, xn) = (inst.at(i, old), inst.at(i, k));
    let mut dt = inst.t[xn] - inst.t[xo];
    let mut dj = inst.ef[xn] - inst.ef[xo];
    // Switch into unit i.
    let (sw_old, sw_new) = if i == 0 {
        (inst.entry_switch(old), inst.entry_switch(k))
    } else {
        (clocks[i - 1] != old, clocks[i - 1] != k)
    };
    if sw_old {
        dt -= inst.s;
        dj -= inst.swf[xo];
    }
    if sw_new {
        dt += inst.s;
        dj += inst.swf[xn];
    }
    // Switch into unit i + 1.
    if i + 1 < inst.n {
        let next = clocks[i + 1];
        let xnext = inst.at(i + 1, next);
        let (was, is) = (old != next, k != next);
        if was && !is {
            dt -= inst.s;
            dj -= inst.swf[xnext];
        } else if is && !was {
            dt += inst.s;
            dj += inst.swf[xnext];
        }
    }
    if i == 0 {
        dj += inst.first_adj(k) - inst.first_adj(old);
    }
    if i + 1 == inst.n {
        dj += inst.last_adj(k) - inst.last_adj(old);
    }
    (dt, dj)
}

/// Greedy: move one unit to another clock while that lowers J and stays within budget.
pub(crate) fn improve(inst: &Instance, plan: &mut (Vec<usize>, f64)) {
    let mut cur = inst.eval(&plan.0);
    for _ in 0..(2 * inst.n + 4) {
        let mut best_move: Option<(usize, usize, f64)> = None;
        for i in 0..inst.n {
            for k in inst.live(i) {
                if k == plan.0[i] {
                    continue;
                }
                let (dt, dj) = delta(inst, &plan.0, i, k);
                let fits = cur.time + dt <= inst.budget;
                if fits && dj < -1e-12 * cur.j.abs() && best_move.is_none_or(|b| dj < b.2) {
                    best_move = Some((i, k, dj));
                }
            }
        }
        match best_move {
            Some((i, k, _)) => {
                let old = plan.0[i];
                plan.0[i] = k;
                // Re-evaluate from scratch so rounding never accumulates; a move that only fit
                // by float noise is undone rather than returned late.
                let ev = inst.eval(&plan.0);
                if ev.time > inst.budget {
                    plan.0[i] = old;
                    break;
                }
                cur = ev;
            }
            None => break,
        }
    }
    plan.1 = cur.j;
}
