//! Feedback from observed batches: the AIMD safety margin on the SLO (driven by violations) and
//! the multiplicative model corrections α for time and energy (EWMA of observed/predicted).

use serde::{Deserialize, Serialize};

use crate::eali::planner::Corrections;

/// AIMD margin settings (`docs/architecture.md`, "Online controller", step 4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MarginConfig {
    pub initial: f64,
    /// Lowest margin. Below 0 the planner targets more than the SLO *in its latency model*:
    /// the model is a bound (fill and GPU-busy quantiles taken apart, batches assumed to fill
    /// before they run) and at high load it can sit far above the latencies the server sees;
    /// a tail that stays comfortably below the SLO lets the margin go negative to take up that
    /// slack, and the first violation sets it positive again.
    pub min: f64,
    pub max: f64,
    /// Tolerated fraction of requests over the SLO per control period (1 − percentile).
    pub violation_target: f64,
    /// Guard band below the target (1 − m)·L, as a fraction of L, before the margin shrinks.
    pub guard_frac: f64,
    /// Least margin while the arrival rate is not known to be steady, and the requests a
    /// period needs before its tail may take the margin below it: slack is taken from the
    /// model only on enough evidence, never on a handful of requests or across a burst.
    pub unsteady_min: f64,
    pub slack_min_requests: usize,
}

impl Default for MarginConfig {
    fn default() -> Self {
        Self {
            initial: 0.1,
            min: -0.5,
            max: 0.5,
            violation_target: 0.01,
            guard_frac: 0.05,
            unsteady_min: 0.05,
            slack_min_requests: 50,
        }
    }
}

/// What one control period's latencies did to the margin.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MarginUpdate {
    pub requests: usize,
    pub violation_rate: f64,
    /// Observed latency at the SLO percentile (s).
    pub tail_latency_s: f64,
    pub margin_before: f64,
    pub margin_after: f64,
}

/// The SLO margin m: multiplicative increase on violations, additive decrease when the tail sits
/// comfortably below the target.
#[derive(Debug, Clone)]
pub struct MarginController {
    cfg: MarginConfig,
    slo_s: f64,
    percentile: f64,
    margin: f64,
    latencies: Vec<f64>,
}

impl MarginController {
    pub fn new(cfg: MarginConfig, slo_s: f64, percentile: f64) -> Self {
        let margin = cfg.initial.clamp(cfg.min, cfg.max);
        Self {
            cfg,
            slo_s,
            percentile,
            margin,
            latencies: Vec::new(),
        }
    }

    pub fn margin(&self) -> f64 {
        self.margin
    }

    pub fn record(&mut self, latency_s: f64) {
        if latency_s.is_finite() {
            self.latencies.push(latency_s);
        }
    }

    /// The arrival rate changed: whatever slack the margin took from the model is given back
    /// (the slack was measured under the old arrivals).
    pub fn on_rate_change(&mut self) {
        self.margin = self.margin.max(self.cfg.unsteady_min.min(self.cfg.max));
    }

    /// Closes a control period: applies the AIMD rule to the latencies seen since the last one.
    /// `steady` says whether the arrival rate has held long enough for the margin to go below
    /// [`MarginConfig::unsteady_min`]. Returns `None` (margin unchanged) when no request
    /// finished in the period.
    pub fn end_period(&mut self, steady: bool) -> Option<MarginUpdate> {
        let n = self.latencies.len();
        if n == 0 {
            return None;
        }
        let violations = self.latencies.iter().filter(|&&l| l > self.slo_s).count();
        let rate = violations as f64 / n as f64;
        let tail = crate::stats::percentile(&mut self.latencies, self.percentile);
        let before = self.margin;
        // A negative margin is slack taken from the model, not a target past the SLO: a
        // violation gives it all back at once, and it only grows while the observed tail stays
        // a guard band below the SLO itself.
        if rate > self.cfg.violation_target {
            self.margin = (2.0 * self.margin.max(0.0) + 0.02).min(self.cfg.max);
        } else if tail
            < (1.0 - self.margin.max(0.0)) * self.slo_s - self.cfg.guard_frac * self.slo_s
        {
            let floor = if steady && n >= self.cfg.slack_min_requests {
                self.cfg.min
            } else {
                self.cfg.unsteady_min.max(self.cfg.min)
            };
            if self.margin > floor {
                self.margin = (self.margin - 0.01).max(floor);
            }
        }
        self.latencies.clear();
        Some(MarginUpdate {
            requests: n,
            violation_rate: rate,
            tail_latency_s: tail,
            margin_before: before,
            margin_after: self.margin,
        })
    }
}

/// α: EWMA of observed/predicted execution time and batch energy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Corrector {
    weight: f64,
    value: Corrections,
}

/// Corrections are kept within this factor of the model: beyond it the model, not α, is wrong.
const CLAMP: (f64, f64) = (0.25, 4.0);

impl Corrector {
    pub fn new(weight: f64) -> Self {
        Self {
            weight: weight.clamp(0.0, 1.0),
            value: Corrections::default(),
        }
    }

    pub fn value(&self) -> Corrections {
        self.value
    }

    /// Folds in one batch: `used` are the corrections its prediction was made with, so the raw
    /// model ratio is `used · observed / predicted`.
    pub fn observe(&mut self, used: Corrections, predicted: (f64, f64), observed: (f64, f64)) {
        let w = self.weight;
        let upd = |cur: f64, used: f64, pred: f64, obs: f64| {
            if pred > 0.0 && obs > 0.0 && pred.is_finite() && obs.is_finite() {
                ((1.0 - w) * cur + w * used * obs / pred).clamp(CLAMP.0, CLAMP.1)
            } else {
                cur
            }
        };
        self.value.time = upd(self.value.time, used.time, predicted.0, observed.0);
        self.value.energy = upd(self.value.energy, used.energy, predicted.1, observed.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_double_the_margin_plus_two_points() {
        let cfg = MarginConfig::default();
        let mut m = MarginController::new(cfg, 0.1, 0.99);
        assert_eq!(m.margin(), 0.1);
        // 5 of 100 over the SLO: 5 % > 1 % target.
        for i in 0..100 {
            m.record(if i < 5 { 0.12 } else { 0.05 });
        }
        let u = m.end_period(false).unwrap();
        assert_eq!(u.requests, 100);
        assert!((u.violation_rate - 0.05).abs() < 1e-12);
        assert!((m.margin() - 0.22).abs() < 1e-12);
        // Again: 0.46, then capped at 0.5.
        for _ in 0..10 {
            m.record(0.2);
        }
        m.end_period(false);
        assert!((m.margin() - 0.46).abs() < 1e-12);
        m.record(0.2);
        m.end_period(false);
        assert_eq!(m.margin(), 0.5);
    }

    #[test]
    fn comfortable_tail_shrinks_the_margin_by_one_point() {
        let mut m = MarginController::new(
            MarginConfig {
                initial: 0.2,
                ..MarginConfig::default()
            },
            0.1,
            0.99,
        );
        // Tail 0.05 s < (1 − 0.2)·0.1 − 0.005 = 0.075 s.
        for _ in 0..200 {
            m.record(0.05);
        }
        m.end_period(false);
        assert!((m.margin() - 0.19).abs() < 1e-12);
        // Tail right at the target (within the guard): unchanged.
        for _ in 0..200 {
            m.record(0.078);
        }
        let u = m.end_period(false).unwrap();
        assert_eq!(u.margin_after, u.margin_before);
        // Never below the floor.
        let mut low = MarginController::new(
            MarginConfig {
                initial: 0.05,
                ..MarginConfig::default()
            },
            0.1,
            0.99,
        );
        low.record(0.001);
        low.end_period(false);
        assert_eq!(low.margin(), 0.05);
        // An empty period changes nothing.
        assert!(low.end_period(false).is_none());
    }

    #[test]
    fn slack_is_taken_only_when_steady_on_enough_requests_and_given_back_at_once() {
        let cfg = MarginConfig {
            initial: 0.06,
            ..MarginConfig::default()
        };
        let mut m = MarginController::new(cfg, 0.1, 0.99);
        let period = |m: &mut MarginController, n: usize, latency: f64, steady: bool| {
            for _ in 0..n {
                m.record(latency);
            }
            m.end_period(steady);
        };
        // A comfortable tail, but the arrivals not steady yet: down to the unsteady floor only.
        for _ in 0..5 {
            period(&mut m, 500, 0.03, false);
        }
        assert!((m.margin() - 0.05).abs() < 1e-12);
        // Steady, but too few requests for a p99: still held.
        period(&mut m, 20, 0.03, true);
        assert!((m.margin() - 0.05).abs() < 1e-12);
        // Steady with evidence: it goes negative, one point per period, down to the minimum.
        for _ in 0..10 {
            period(&mut m, 500, 0.03, true);
        }
        assert!((m.margin() - (-0.05)).abs() < 1e-9, "{}", m.margin());
        for _ in 0..100 {
            period(&mut m, 500, 0.03, true);
        }
        assert!((m.margin() - cfg.min).abs() < 1e-9);
        // A tail close to the SLO itself (within the guard) takes no more slack.
        let before = m.margin();
        period(&mut m, 500, 0.097, true);
        assert_eq!(m.margin(), before);
        // A violation gives the slack back at once.
        period(&mut m, 500, 0.2, true);
        assert!((m.margin() - 0.02).abs() < 1e-12);
        // So does a change of the arrival rate.
        for _ in 0..10 {
            period(&mut m, 500, 0.03, true);
        }
        assert!(m.margin() < 0.0);
        m.on_rate_change();
        assert!((m.margin() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn corrections_converge_to_the_observed_ratio() {
        let mut c = Corrector::new(0.3);
        for _ in 0..60 {
            let used = c.value();
            // The real GPU is 20 % slower and 10 % hungrier than the model; predictions made
            // with `used` scale accordingly.
            let (raw_t, raw_e) = (0.010, 2.0);
            c.observe(
                used,
                (raw_t * used.time, raw_e * used.energy),
                (raw_t * 1.2, raw_e * 1.1),
            );
        }
        assert!((c.value().time - 1.2).abs() < 1e-6);
        assert!((c.value().energy - 1.1).abs() < 1e-6);
        // Garbage observations are ignored.
        let before = c.value();
        c.observe(before, (0.0, 1.0), (f64::NAN, -1.0));
        assert_eq!(c.value(), before);
    }
}
