//! A serving pod's figures over fixed windows: the latency at the SLO's percentile, the served
//! rate and its share of the pod's capacity, whether the policy was saturated, and the GPU energy
//! the power model predicts for the window as it ran and for the same batches at maximum clocks.
//! The node agent publishes them as the pod's entry of the InferenceService's `status.reports`,
//! the figures the controller scales on and `kubectl get` shows.
//!
//! The energy comparison is an estimate from one model on both sides: the counterfactual (every
//! batch at the highest clock, the GPU idling at that clock in between, as a max-clock server
//! does) cannot be measured while the pod runs its own plan, and setting a measured "as run"
//! against a predicted counterfactual would fold the model's error into the saving. The
//! measured joules per request are the agent's, from the GPU's energy counter.

use std::ops::Range;

use super::LayerPowerModel;
use crate::policy::baselines::TritonConfig;
use crate::stats::percentile;

/// Power-model prediction for one executed batch.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BatchEstimate {
    /// Energy of the batch's layers at the clocks its units ran at (J).
    pub energy_j: f64,
    /// Energy of the same batch with every unit at the highest clock (J).
    pub max_clock_energy_j: f64,
    /// Execution time of the same batch at the highest clock (s).
    pub max_clock_time_s: f64,
}

impl LayerPowerModel {
    /// Highest clock of the model's table (MHz), 0 for an empty table.
    pub fn max_clock_mhz(&self) -> u32 {
        self.table().clocks_mhz.last().copied().unwrap_or(0)
    }

    /// The prediction for a batch of `batch` over `units` where unit `i` ran at
    /// `unit_clocks_mhz[i]` (a unit without a clock counts at the highest one).
    pub fn batch_estimate(
        &self,
        units: &[Range<usize>],
        batch: u32,
        unit_clocks_mhz: &[u32],
    ) -> BatchEstimate {
        // The nearest table clock once per unit: the layers of a unit share it.
        let top = self.table().clocks_mhz.len().saturating_sub(1);
        let mut est = BatchEstimate::default();
        for (i, unit) in units.iter().enumerate() {
            let fi = unit_clocks_mhz
                .get(i)
                .map_or(top, |&mhz| self.clock_index(mhz));
            for layer in unit.clone() {
                est.energy_j += self.layer_at(layer, batch, fi).1;
                let (t, e) = self.layer_at(layer, batch, top);
                est.max_clock_energy_j += e;
                est.max_clock_time_s += t;
            }
        }
        est
    }

    /// Max-clock throughput at latency SLO `slo_s` (req/s): full batches of the largest size a
    /// max-clock Triton configuration would use for that SLO ([`TritonConfig::for_slo`]), the
    /// reference the scheduler bench and `eali demo` measure load against. `None` without layers.
    pub fn capacity_at_slo(&self, layers: usize, max_batch: u32, slo_s: f64) -> Option<f64> {
        if layers == 0 || max_batch == 0 {
            return None;
        }
        let fmax = self.max_clock_mhz();
        let exec_s: Vec<f64> = (1..=max_batch)
            .map(|b| self.table().batch_time_s(b, fmax))
            .collect();
        let b = TritonConfig::for_slo(&exec_s, slo_s).max_batch;
        let t = exec_s.get(b as usize - 1).copied()?;
        (t > 0.0).then(|| f64::from(b) / t)
    }
}

/// One closed window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowFigures {
    /// Start and end of the window on the worker's clock (s).
    pub start_s: f64,
    pub end_s: f64,
    /// Requests answered by batches that ended in the window.
    pub requests: u64,
    /// Latency at the SLO's percentile over those requests and the ones refused in the window
    /// for their deadline (counted at the time they waited), s; `None` without any.
    pub latency_s: Option<f64>,
    pub requests_per_second: f64,
    /// Served rate over the max-clock capacity at the SLO; `None` when the capacity is unknown.
    pub load_ratio: Option<f64>,
    /// The policy reported saturation at some point in the window.
    pub saturated: bool,
    /// Predicted GPU energy of the window as it ran, and at maximum clocks (J); `None` without a
    /// power model.
    pub predicted_energy_j: Option<f64>,
    pub max_clock_energy_j: Option<f64>,
}

impl WindowFigures {
    pub fn window_s(&self) -> f64 {
        self.end_s - self.start_s
    }

    /// Estimated fraction of energy saved against maximum clocks (negative when the window as
    /// run is predicted to have cost more); `None` without both predictions.
    pub fn energy_saved_ratio(&self) -> Option<f64> {
        saved_ratio(self.predicted_energy_j?, self.max_clock_energy_j?)
    }
}

/// Fraction of `max_clock_j` that `as_run_j` saves; `None` when there is nothing to compare.
pub fn saved_ratio(as_run_j: f64, max_clock_j: f64) -> Option<f64> {
    (max_clock_j > 0.0).then(|| 1.0 - as_run_j / max_clock_j)
}

/// Accumulates a window's batches; [`close`](Self::close) ends it and starts the next.
#[derive(Debug, Clone)]
pub struct WindowMeter {
    period_s: f64,
    percentile: f64,
    start_s: f64,
    /// End of the last batch (or the window's start): where the current idle gap began.
    idle_since_s: f64,
    latencies_s: Vec<f64>,
    answered: u64,
    saturated: bool,
    /// Predicted energy as run: busy (layers at their clocks) plus idle gaps at the clock held.
    run_j: f64,
    max_busy_j: f64,
    max_busy_s: f64,
    estimated: bool,
}

impl WindowMeter {
    /// A meter whose first window starts at `start_s`, closing every `period_s`, reporting the
    /// latency at `percentile` (0-1).
    pub fn new(start_s: f64, period_s: f64, percentile: f64) -> Self {
        Self {
            period_s: period_s.max(1e-3),
            percentile: percentile.clamp(1e-6, 1.0),
            start_s,
            idle_since_s: start_s,
            latencies_s: Vec::new(),
            answered: 0,
            saturated: false,
            run_j: 0.0,
            max_busy_j: 0.0,
            max_busy_s: 0.0,
            estimated: false,
        }
    }

    /// A batch that ran from `start_s` to `end_s` and answered requests with `latencies_s`;
    /// `estimate` is the power model's prediction for it and `idle_w` the predicted idle power
    /// at the clock the GPU held while it waited for this batch.
    pub fn batch(
        &mut self,
        start_s: f64,
        end_s: f64,
        latencies_s: &[f64],
        estimate: Option<&BatchEstimate>,
        idle_w: f64,
    ) {
        self.latencies_s.extend_from_slice(latencies_s);
        self.answered += latencies_s.len() as u64;
        if let Some(e) = estimate {
            self.estimated = true;
            self.run_j += e.energy_j + idle_w * (start_s - self.idle_since_s).max(0.0);
            self.max_busy_j += e.max_clock_energy_j;
            self.max_busy_s += e.max_clock_time_s;
        }
        self.idle_since_s = self.idle_since_s.max(end_s);
    }

    /// Requests refused for their deadline without running, after waiting `waited_s`: they
    /// count in the latency percentile, not in the answered rate.
    pub fn unanswered(&mut self, waited_s: &[f64]) {
        self.latencies_s.extend_from_slice(waited_s);
    }

    /// Whether the policy is saturated now (the window reports it if it was at any point).
    pub fn saturated(&mut self, saturated: bool) {
        self.saturated |= saturated;
    }

    /// Whether the window has run its period at `now_s`.
    pub fn due(&self, now_s: f64) -> bool {
        now_s - self.start_s >= self.period_s
    }

    /// Ends the window at `now_s` and starts the next. `idle_w_now`: predicted idle power at the
    /// clock held since the last batch; `idle_w_max`: at the highest clock; `capacity_rps`: the
    /// pod's max-clock capacity at the SLO.
    pub fn close(
        &mut self,
        now_s: f64,
        idle_w_now: f64,
        idle_w_max: f64,
        capacity_rps: Option<f64>,
    ) -> WindowFigures {
        let end_s = now_s.max(self.start_s);
        let len = (end_s - self.start_s).max(1e-9);
        let requests = self.answered;
        let rps = requests as f64 / len;
        let latency_s = (!self.latencies_s.is_empty())
            .then(|| percentile(&mut self.latencies_s, self.percentile));
        let (predicted, max_clock) = if self.estimated {
            let run = self.run_j + idle_w_now * (end_s - self.idle_since_s).max(0.0);
            let max = self.max_busy_j + idle_w_max * (len - self.max_busy_s).max(0.0);
            (Some(run), Some(max))
        } else {
            (None, None)
        };
        let figures = WindowFigures {
            start_s: self.start_s,
            end_s,
            requests,
            latency_s,
            requests_per_second: rps,
            load_ratio: capacity_rps.filter(|c| *c > 0.0).map(|c| rps / c),
            saturated: self.saturated,
            predicted_energy_j: predicted,
            max_clock_energy_j: max_clock,
        };
        *self = Self::new(end_s, self.period_s, self.percentile);
        figures
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
