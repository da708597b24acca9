//! What one simulated run produces: request counts, energy, latency percentiles, SLO attainment
//! per window, clock switches, saturated time, and a timeline of batches for plots.

use serde::{Deserialize, Serialize};

/// One batch on the timeline. `unit_clocks` of the [`Timeline`] holds, for each unit of this
/// batch, the graphics clock in force when the unit started (MHz).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimelineBatch {
    pub start_s: f64,
    pub end_s: f64,
    pub batch: u32,
    /// Index into [`Timeline::unit_clocks`] of this batch's first unit.
    pub first_unit: usize,
}

/// A set-call as the clock thread issued it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SetCallRecord {
    pub issued_s: f64,
    pub effective_s: f64,
    /// Target clock (MHz); 0 for a reset to the GPU's default behaviour.
    pub target_mhz: u32,
}

/// Everything that happened on the GPU in one run, for plots and consistency checks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Timeline {
    /// Units per batch (the policy's chain length).
    pub units: usize,
    pub batches: Vec<TimelineBatch>,
    pub unit_clocks: Vec<u32>,
    /// Start time of each unit, parallel to `unit_clocks`.
    pub unit_starts: Vec<f64>,
    pub set_calls: Vec<SetCallRecord>,
}

impl Timeline {
    /// Clocks in force at the start of each unit of batch `i`.
    pub fn clocks_of(&self, i: usize) -> &[u32] {
        let first = self.batches[i].first_unit;
        &self.unit_clocks[first..first + self.units]
    }
}

/// Results of one run of one policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub policy: String,
    pub arrivals: usize,
    pub completed: usize,
    pub dropped: usize,
    /// Simulated time covered by the energy reading: until the later of the workload's end and
    /// the last batch's end (s).
    pub horizon_s: f64,
    /// Energy counter difference over the run (J).
    pub energy_j: f64,
    pub energy_per_request_j: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Fraction of windows (by arrival time) whose p99 latency is within the SLO; dropped
    /// requests count as infinitely late.
    pub slo_attainment: f64,
    pub windows: usize,
    /// Fraction of completed requests within the SLO.
    pub within_slo: f64,
    /// Set-calls the clock thread issued (calls skipped because the target was in force are not
    /// counted).
    pub switches: usize,
    pub skipped_set_calls: usize,
    /// Time during which the policy reported itself saturated (s).
    pub saturated_s: f64,
    pub batches: usize,
    pub mean_batch: f64,
    /// Time the GPU spent running batches (s).
    pub busy_s: f64,
    #[serde(skip)]
    pub timeline: Option<Timeline>,
}

pub use crate::stats::percentile;

/// Fraction of windows of `window_s` seconds (by arrival time) whose p99 latency is at most
/// `slo_s`, and the number of non-empty windows. `latency[i]` belongs to `arrivals[i]`
/// (ascending); `scratch` is reused to avoid allocating per window.
pub fn slo_attainment(
    arrivals: &[f64],
    latency: &[f64],
    window_s: f64,
    slo_s: f64,
    scratch: &mut Vec<f64>,
) -> (f64, usize) {
    let (mut good, mut windows) = (0usize, 0usize);
    let mut i = 0;
    while i < arrivals.len() {
        let w_end = ((arrivals[i] / window_s).floor() + 1.0) * window_s;
        let j = i + arrivals[i..].partition_point(|&a| a < w_end);
        scratch.clear();
        scratch.extend_from_slice(&latency[i..j]);
        windows += 1;
        if percentile(scratch, 0.99) <= slo_s {
            good += 1;
        }
        i = j;
    }
    if windows == 0 {
        (1.0, 0)
    } else {
        (good as f64 / windows as f64, windows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentile() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        v.reverse();
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 1.0), 100.0);
        assert_eq!(percentile(&mut [7.0], 0.99), 7.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn windows_by_arrival_time() {
        // Window 0: 100 requests, 1 late → p99 = the 99th smallest = on time.
        // Window 1: 100 requests, 2 late → p99 is late. Window 3: one dropped request (∞).
        let mut arrivals = Vec::new();
        let mut lat = Vec::new();
        for k in 0..100 {
            arrivals.push(k as f64 * 0.1);
            lat.push(if k == 5 { 0.5 } else { 0.01 });
        }
        for k in 0..100 {
            arrivals.push(10.0 + k as f64 * 0.1);
            lat.push(if k < 2 { 0.5 } else { 0.01 });
        }
        arrivals.push(35.0);
        lat.push(f64::INFINITY);
        let (att, n) = slo_attainment(&arrivals, &lat, 10.0, 0.05, &mut Vec::new());
        assert_eq!(n, 3);
        assert!((att - 1.0 / 3.0).abs() < 1e-12, "{att}");
    }
}
