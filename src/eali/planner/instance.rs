//! One batch size's planning problem, prepared for the solvers: per-unit, per-clock time and
//! folded energy, switch-in costs, idle-clock adjustment and the time budget.
//!
//! Planning objective (`docs/architecture.md`, "Planning objective": idle power folded in as a
//! credit):
//!
//! ```text
//! J = Σ_i (e_i − P_c·t_i) + Σ_switches (ε_i − P_c·s) + P_c·b/λ + (P_idle(f_idle) − P_c)·I_est
//! ```
//!
//! with P_c the lowest idle power (the credit rate), ε_i = s·P_i(f) the energy of a switch into
//! unit i (its board power over the reserve s), f_idle the clock the GPU idles at between batches
//! and I_est = max(0, b/λ − B) a plan-independent lower bound on the idle time. J is separable
//! along the chain (that is what the DP and the Viterbi need) and never exceeds the exact energy
//! of the cycle, `E = Σe + Σε + P_idle(f_idle)·(b/λ − Σt − Σs)`, which is what plans report.

pub(crate) const INF: f64 = f64::INFINITY;

/// Where the first unit's clock comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Set while the GPU idled before the batch: no switch at batch start, the GPU idles at the
    /// first unit's clock.
    Preset,
    /// The GPU is at this clock index when the batch starts and idles at the last unit's clock.
    Fixed(usize),
    /// Like `Fixed` but at a clock outside the table: every first clock needs a switch.
    Unknown,
}

/// A batch-size instance. Arrays are flat, `[unit * nf + clock]`; pruned clocks hold `INF`.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub n: usize,
    pub nf: usize,
    /// Time of the unit at the clock (s), α-corrected.
    pub t: Vec<f64>,
    /// Folded energy e − P_c·t (J), α-corrected.
    pub ef: Vec<f64>,
    /// Raw energy e (J), α-corrected, for exact reporting.
    pub e: Vec<f64>,
    /// Folded energy of a switch into the unit at the clock, ε − P_c·s ≥ 0 (J).
    pub swf: Vec<f64>,
    /// Raw switch energy ε (J).
    pub sw: Vec<f64>,
    /// Time reserved per switch (s).
    pub s: f64,
    /// (P_idle(f) − P_c)·I_est per clock: added on the idle clock.
    pub idle_adj: Vec<f64>,
    /// P_idle(f) per clock (W).
    pub idle_w: Vec<f64>,
    pub entry: Entry,
    /// Budget for Σ t + Σ s (s).
    pub budget: f64,
    /// Constant part of J: P_c·b/λ.
    pub j_const: f64,
    /// Cycle length b/λ and the fixed overhead T_o (s).
    pub cycle_s: f64,
    pub overhead_s: f64,
}

/// Score of one clock assignment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Eval {
    /// Σ t + Σ s (s), without the overhead.
    pub time: f64,
    pub j: f64,
    pub switches: u32,
}

impl Instance {
    #[inline]
    pub fn at(&self, unit: usize, clock: usize) -> usize {
        unit * self.nf + clock
    }

    /// Whether the first unit's clock needs a switch at batch start.
    #[inline]
    pub fn entry_switch(&self, clock: usize) -> bool {
        match self.entry {
            Entry::Preset => false,
            Entry::Fixed(f0) => f0 != clock,
            Entry::Unknown => true,
        }
    }

    /// Idle-clock adjustment attached to the first unit (preset) or the last one.
    #[inline]
    pub fn first_adj(&self, clock: usize) -> f64 {
        if self.entry == Entry::Preset {
            self.idle_adj[clock]
        } else {
            0.0
        }
    }
    #[inline]
    pub fn last_adj(&self, clock: usize) -> f64 {
        if self.entry == Entry::Preset {
            0.0
        } else {
            self.idle_adj[clock]
        }
    }

    /// Idle clock of a plan.
    pub fn idle_clock(&self, clocks: &[usize]) -> usize {
        if self.entry == Entry::Preset {
            clocks[0]
        } else {
            clocks[self.n - 1]
        }
    }

    /// Time and objective of a clock assignment (INF objective if it uses a pruned clock).
    pub fn eval(&self, clocks: &[usize]) -> Eval {
        let (mut time, mut j, mut switches) = (0.0, self.j_const, 0u32);
        for (i, &k) in clocks.iter().enumerate() {
            let x = self.at(i, k);
            time += self.t[x];
            j += self.ef[x];
            let switch = if i == 0 {
                self.entry_switch(k)
            } else {
                clocks[i - 1] != k
            };
            if switch {
                time += self.s;
                j += self.swf[x];
                switches += 1;
            }
        }
        j += self.first_adj(clocks[0]) + self.last_adj(clocks[self.n - 1]);
        Eval { time, j, switches }
    }

    /// Exact energy of the cycle b/λ for a clock assignment (J): busy energy plus idle energy at
    /// the idle clock (the overhead T_o runs at idle power).
    pub fn exact_energy(&self, clocks: &[usize]) -> (f64, f64) {
        let ev = self.eval(clocks);
        let mut busy = 0.0;
        for (i, &k) in clocks.iter().enumerate() {
            let x = self.at(i, k);
            busy += self.e[x];
            let switch = if i == 0 {
                self.entry_switch(k)
            } else {
                clocks[i - 1] != k
            };
            if switch {
                busy += self.sw[x];
            }
        }
        let idle_s = (self.cycle_s - self.overhead_s - ev.time).max(0.0) + self.overhead_s;
        (busy, busy + self.idle_w[self.idle_clock(clocks)] * idle_s)
    }

    /// Removes clocks that can never be in an optimal plan: (1) a clock dominated by another
    /// clock on every unit at once (so swapping it everywhere keeps every switch where it was),
    /// (2) a clock dominated on one unit by a margin that pays for two extra switches.
    pub fn prune(&mut self) {
        self.prune_with(None);
    }

    /// [`Instance::prune`] for the DP on a grid of `steps` steps: the DP rounds every duration up
    /// to whole steps, so a clock that wins by 2·s in real time can still lose by up to three
    /// steps on the grid; here the per-unit margin is checked in rounded steps instead.
    pub fn prune_for_dp(&mut self, steps: usize) {
        self.prune_with(Some(steps));
    }

    fn prune_with(&mut self, grid: Option<usize>) {
        let (n, nf) = (self.n, self.nf);
        let fixed = match self.entry {
            Entry::Fixed(f) => Some(f),
            _ => None,
        };
        let dominates = |inst: &Instance, i: usize, g: usize, f: usize, pad_t: f64, pad_e: f64| {
            let (xg, xf) = (inst.at(i, g), inst.at(i, f));
            inst.t[xg] + pad_t <= inst.t[xf] && inst.ef[xg] + pad_e <= inst.ef[xf]
        };
        // (1) Global dominance, switch costs and idle adjustment included.
        let mut dead = vec![false; nf];
        for f in 0..nf {
            if Some(f) == fixed {
                continue;
            }
            dead[f] = (0..nf).any(|g| {
                g != f
                    && !dead[g]
                    && self.idle_adj[g] <= self.idle_adj[f]
                    && (0..n).all(|i| {
                        dominates(self, i, g, f, 0.0, 0.0)
                            && self.swf[self.at(i, g)] <= self.swf[self.at(i, f)]
                    })
                    && (0..n).any(|i| {
                        let (xg, xf) = (self.at(i, g), self.at(i, f));
                        self.t[xg] < self.t[xf] || self.ef[xg] < self.ef[xf]
                    })
            });
        }
        for f in (0..nf).filter(|&f| dead[f]) {
            for i in 0..n {
                let x = self.at(i, f);
                self.t[x] = INF;
                self.ef[x] = INF;
            }
        }
        // (2) Per-unit dominance with room for a switch in and a switch out.
        if self.s.is_finite() {
            let max_swf: Vec<f64> = (0..n)
                .map(|i| {
                    (0..nf)
                        .map(|k| self.swf[self.at(i, k)])
                        .filter(|x| x.is_finite())
                        .fold(0.0, f64::max)
                })
                .collect();
            for i in 0..n {
                for f in 0..nf {
                    if self.t[self.at(i, f)] == INF || (i == 0 && Some(f) == fixed) {
                        continue;
                    }
                    let adj_f = if i == 0 { self.first_adj(f) } else { 0.0 }
                        + if i + 1 == n { self.last_adj(f) } else { 0.0 };
                    let out_pad = if i + 1 < n { max_swf[i + 1] } else { 0.0 };
                    let gone = (0..nf).any(|g| {
                        if g == f || self.t[self.at(i, g)] == INF {
                            return false;
                        }
                        let adj_g = if i == 0 { self.first_adj(g) } else { 0.0 }
                            + if i + 1 == n { self.last_adj(g) } else { 0.0 };
                        let pad_e = self.swf[self.at(i, g)] + out_pad + adj_g - adj_f;
                        match grid {
                            None => dominates(self, i, g, f, 2.0 * self.s, pad_e),
                            Some(steps) => {
                                let delta = self.budget / steps as f64;
                                let (xg, xf) = (self.at(i, g), self.at(i, f));
                                let on_grid = |x: f64| super::dp::steps_of(x, delta);
                                on_grid(self.t[xg])
                                    .saturating_add(on_grid(self.s).saturating_mul(2))
                                    <= on_grid(self.t[xf])
                                    && self.ef[xg] + pad_e <= self.ef[xf]
                            }
                        }
                    });
                    if gone {
                        let x = self.at(i, f);
                        self.t[x] = INF;
                        self.ef[x] = INF;
                    }
                }
            }
        }
    }

    /// Σ over units of the unit's least time at any clock (s): a lower bound on the time of every
    /// plan, switches left out.
    pub fn fastest_time_s(&self) -> f64 {
        self.t
            .chunks(self.nf.max(1))
            .map(|unit| unit.iter().copied().fold(INF, f64::min))
            .sum()
    }

    /// Live (unpruned) clocks of unit `i`.
    pub fn live(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.nf).filter(move |&k| self.t[self.at(i, k)].is_finite())
    }
}
