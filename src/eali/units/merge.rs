//! Cost-driven merging of structural units (`docs/architecture.md`, "Optimization units and
//! merging").
//!
//! 1. A unit shorter than `k · ŝ` at f_max (ŝ = median switch latency) cannot pay for a clock
//!    switch of its own: it merges into its shorter neighbour.
//! 2. Neighbours that want the same clock in every (batch, time-pressure) case merge: keeping them
//!    apart only enlarges the planner's search.
//! 3. While more than `max_units` remain, the adjacent pair with the smallest combined time merges.

use serde::{Deserialize, Serialize};

use super::{UnitChain, UnitCostTable};
use crate::eali::error::EaliError;

/// Settings of the merging pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UnitConfig {
    /// A unit must run at least `k` switch latencies at f_max to keep its own clock.
    pub k: f64,
    /// Median total clock-switch latency ŝ (s).
    pub switch_median_s: f64,
    /// Cap on the number of units (N_max).
    pub max_units: usize,
    /// Batch size at which unit times are compared; `None` = the largest batch of the table.
    pub reference_batch: Option<u32>,
    /// Merge neighbours whose best clock always coincides.
    pub merge_same_clock: bool,
}

impl Default for UnitConfig {
    fn default() -> Self {
        Self {
            k: 10.0,
            switch_median_s: 0.025,
            max_units: 16,
            reference_batch: None,
            merge_same_clock: true,
        }
    }
}

impl UnitConfig {
    /// No merging beyond the cap (switches are free, no same-clock merge).
    pub fn structural_only(max_units: usize) -> Self {
        Self {
            k: 0.0,
            switch_median_s: 0.0,
            max_units,
            reference_batch: None,
            merge_same_clock: false,
        }
    }
}

/// Applies the three merging steps to a chain and its cost table (kept in lockstep).
pub fn merge_units(
    mut chain: UnitChain,
    mut costs: UnitCostTable,
    config: &UnitConfig,
) -> Result<(UnitChain, UnitCostTable), EaliError> {
    costs.validate()?;
    if chain.len() != costs.num_units() {
        return Err(EaliError::UnitMismatch {
            chain: chain.len(),
            table: costs.num_units(),
        });
    }
    if !(config.k >= 0.0 && config.switch_median_s >= 0.0 && config.max_units >= 1) {
        return Err(EaliError::BadConfig(
            "k and ŝ must be ≥ 0 and max_units ≥ 1".into(),
        ));
    }
    let bi = match config.reference_batch {
        None => costs.batches.len() - 1,
        Some(b) => costs.batches.iter().rposition(|&x| x <= b).unwrap_or(0),
    };
    let fmax = costs.max_clock_index();
    let time_at = |c: &UnitCostTable, u: usize| c.time_s[u][bi][fmax];
    let merge = |chain: &mut UnitChain, costs: &mut UnitCostTable, i: usize| {
        chain.merge_adjacent(i);
        costs.merge_adjacent(i, chain.units[i].name.clone());
    };

    // 1. Too short to be worth a switch.
    let threshold = config.k * config.switch_median_s;
    while chain.len() > 1 {
        let (i, t) = (0..chain.len()).map(|u| (u, time_at(&costs, u))).fold(
            (0, f64::INFINITY),
            |best, x| if x.1 < best.1 { x } else { best },
        );
        if t >= threshold {
            break;
        }
        let left = if i > 0 {
            Some(time_at(&costs, i - 1))
        } else {
            None
        };
        let right = if i + 1 < chain.len() {
            Some(time_at(&costs, i + 1))
        } else {
            None
        };
        let at = match (left, right) {
            (Some(l), Some(r)) if r < l => i,
            (Some(_), _) => i - 1,
            _ => i,
        };
        merge(&mut chain, &mut costs, at);
    }

    // 2. Same best clock everywhere.
    if config.merge_same_clock {
        let mut i = 0;
        while i + 1 < chain.len() {
            if clock_signature(&costs, i) == clock_signature(&costs, i + 1) {
                merge(&mut chain, &mut costs, i);
            } else {
                i += 1;
            }
        }
    }

    // 3. Cap.
    while chain.len() > config.max_units {
        let i = (0..chain.len() - 1)
            .min_by(|&a, &b| {
                let ta = time_at(&costs, a) + time_at(&costs, a + 1);
                let tb = time_at(&costs, b) + time_at(&costs, b + 1);
                ta.total_cmp(&tb)
            })
            .unwrap_or(0);
        merge(&mut chain, &mut costs, i);
    }
    Ok((chain, costs))
}

/// Best clock of unit `u` for every batch size and a grid of time prices μ, with idle power
/// folded in as a credit: argmin_f e − P_idle·t + μ·t. μ spans "no time pressure" to "time is
/// worth several times the board power", which is what the arrival-rate buckets translate to.
pub(crate) fn clock_signature(costs: &UnitCostTable, u: usize) -> Vec<usize> {
    let p_idle = costs
        .idle_power_w
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let p_idle = if p_idle.is_finite() { p_idle } else { 0.0 };
    let p_ref = costs
        .time_s
        .iter()
        .zip(&costs.energy_j)
        .flat_map(|(t, e)| t.iter().flatten().zip(e.iter().flatten()))
        .filter(|(t, _)| **t > 0.0)
        .map(|(t, e)| e / t)
        .fold(0.0, f64::max);
    let mus = [0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0].map(|x| x * p_ref);
    let mut sig = Vec::with_capacity(costs.batches.len() * mus.len());
    for bi in 0..costs.batches.len() {
        for mu in mus {
            let cost =
                |fi: usize| costs.energy_j[u][bi][fi] + (mu - p_idle) * costs.time_s[u][bi][fi];
            let best = (0..costs.clocks_mhz.len())
                .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
                .unwrap_or(0);
            sig.push(best);
        }
    }
    sig
}
