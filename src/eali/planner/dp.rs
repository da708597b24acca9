//! Exact chain DP over (unit, clock, time step) with back-pointers.
//!
//! Time is discretised into `steps` steps of Δ = budget/steps and every unit time and switch
//! reserve is rounded *up* to whole steps, so a plan the DP calls feasible is feasible in real
//! time; among plans whose rounded time fits, the DP's plan is optimal. `cost[k][τ]` is the least
//! objective of units 0..=i ending at clock k using at most τ steps, so it is non-increasing in τ
//! and the answer is read at τ = steps.

use super::instance::{INF, Instance};

/// Steps a duration takes, rounded up (with a hair of tolerance so exact multiples stay exact).
pub(super) fn steps_of(x: f64, delta: f64) -> usize {
    if !x.is_finite() {
        return usize::MAX;
    }
    let s = x / delta;
    let r = s.round();
    if (s - r).abs() <= 1e-9 * s.max(1.0) {
        r as usize
    } else {
        s.ceil() as usize
    }
}

/// Optimal plan (clock per unit) and its objective, or `None` when no rounded plan fits.
pub(crate) fn solve(inst: &Instance, steps: usize) -> Option<(Vec<usize>, f64)> {
    let (n, nf) = (inst.n, inst.nf);
    let budget = inst.budget;
    if budget.is_nan() || budget <= 0.0 || steps == 0 {
        return None;
    }
    let delta = budget / steps as f64;
    let ts = steps + 1;
    let ds = steps_of(inst.s, delta);
    let dur: Vec<usize> = inst.t.iter().map(|&t| steps_of(t, delta)).collect();

    let mut cur = vec![INF; nf * ts];
    let mut next = vec![INF; nf * ts];
    // Back-pointers per (unit, clock, τ): u8::MAX = same clock, else the previous clock.
    let mut bp = vec![u8::MAX; n * nf * ts];
    let mut best = vec![INF; ts];
    let mut arg = vec![u8::MAX; ts];

    for k in 0..nf {
        let x = inst.at(0, k);
        let mut d = dur[x];
        if d == usize::MAX {
            continue;
        }
        let mut c = inst.ef[x] + inst.first_adj(k);
        if inst.entry_switch(k) {
            d = d.saturating_add(ds);
            c += inst.swf[x];
        }
        for tau in d.min(ts)..ts {
            cur[k * ts + tau] = c;
        }
    }
    for i in 1..n {
        // best[τ] = min over clocks of cur[·][τ], with its argument.
        for tau in 0..ts {
            let (mut b, mut a) = (INF, u8::MAX);
            for k in 0..nf {
                let v = cur[k * ts + tau];
                if v < b {
                    b = v;
                    a = k as u8;
                }
            }
            best[tau] = b;
            arg[tau] = a;
        }
        for k in 0..nf {
            let x = inst.at(i, k);
            let row = &mut next[k * ts..(k + 1) * ts];
            row.fill(INF);
            let d = dur[x];
            if d == usize::MAX || d >= ts {
                continue;
            }
            let c = inst.ef[x];
            let sw = inst.swf[x];
            let dsw = d.saturating_add(ds);
            let bprow = &mut bp[x * ts..(x + 1) * ts];
            for tau in d..ts {
                let stay = cur[k * ts + tau - d];
                let (switch, from) = if tau >= dsw {
                    (best[tau - dsw] + sw, arg[tau - dsw])
                } else {
                    (INF, u8::MAX)
                };
                if stay <= switch {
                    row[tau] = stay + c;
                    bprow[tau] = u8::MAX;
                } else {
                    row[tau] = switch + c;
                    bprow[tau] = from;
                }
            }
        }
        std::mem::swap(&mut cur, &mut next);
    }
    let (mut b, mut a) = (INF, usize::MAX);
    for k in 0..nf {
        let v = cur[k * ts + steps] + inst.last_adj(k);
        if v < b {
            b = v;
            a = k;
        }
    }
    if !b.is_finite() {
        return None;
    }
    let mut clocks = vec![0; n];
    let (mut k, mut tau) = (a, steps);
    for i in (1..n).rev() {
        clocks[i] = k;
        let x = inst.at(i, k);
        let p = bp[x * ts + tau];
        tau -= dur[x];
        if p != u8::MAX {
            tau -= ds;
            k = usize::from(p);
        }
    }
    clocks[0] = k;
    let j = inst.eval(&clocks).j;
    Some((clocks, j))
}

/// The rounded time of a plan in steps, as the DP counts it (for tests and brute force).
#[cfg(test)]
pub(crate) fn rounded_steps(inst: &Instance, clocks: &[usize], steps: usize) -> usize {
    let delta = inst.budget / steps as f64;
    let ds = steps_of(inst.s, delta);
    let mut total = 0usize;
    for (i, &k) in clocks.iter().enumerate() {
        total = total.saturating_add(steps_of(inst.t[inst.at(i, k)], delta));
        let switch = if i == 0 {
            inst.entry_switch(k)
        } else {
            clocks[i - 1] != k
        };
        if switch {
            total = total.saturating_add(ds);
        }
    }
    total
}
