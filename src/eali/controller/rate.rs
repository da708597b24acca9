//! Arrival-rate estimation: a sliding-window count smoothed by an EWMA at each control tick,
//! an upper confidence bound λ̂⁺ = λ̂ + z·√(λ̂/W), and change detection by comparing a short
//! recent window against the estimate (ratio beyond a factor *and* beyond a Poisson noise band).
//! On a change the most likely change point inside the short window is located, older arrivals
//! are forgotten, and until a full window has passed the estimate is the growing-window rate
//! since the change point, updated on every arrival.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Rate-estimator settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateConfig {
    /// Sliding window W (s).
    pub window_s: f64,
    /// Short window for change detection (s).
    pub short_window_s: f64,
    /// EWMA weight of each new window rate at a control tick.
    pub ewma_weight: f64,
    /// z of the upper confidence bound.
    pub z: f64,
    /// A short-window rate this many times above (or below 1/this) the estimate is a change...
    pub change_ratio: f64,
    /// ...if it is also this many Poisson standard deviations away.
    pub change_sigmas: f64,
    /// Estimate before any arrival has been seen (req/s).
    pub initial_rate: f64,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            window_s: 1.0,
            short_window_s: 0.25,
            ewma_weight: 0.5,
            z: 2.0,
            change_ratio: 1.3,
            change_sigmas: 4.0,
            initial_rate: 1.0,
        }
    }
}

/// Online arrival-rate estimator in virtual time.
#[derive(Debug, Clone)]
pub struct RateEstimator {
    cfg: RateConfig,
    arrivals: VecDeque<f64>,
    /// Start of the observation (creation or last reset): the window is shorter before W passed.
    since: f64,
    estimate: f64,
    seeded: bool,
    /// Within one window after a detected change: the estimate follows the growing window.
    fresh: bool,
}

/// Lowest rate the estimator reports (req/s), so that b/λ stays finite.
const MIN_RATE: f64 = 1e-3;
/// Arrivals the growing window needs before it replaces the estimate.
const FRESH_MIN: usize = 8;

impl RateEstimator {
    pub fn new(cfg: RateConfig, now: f64) -> Self {
        Self {
            cfg,
            arrivals: VecDeque::new(),
            since: now,
            estimate: cfg.initial_rate.max(MIN_RATE),
            seeded: false,
            fresh: false,
        }
    }

    pub fn config(&self) -> &RateConfig {
        &self.cfg
    }

    pub fn on_arrival(&mut self, t: f64) {
        self.arrivals.push_back(t);
        self.evict(t);
        if self.fresh {
            if t - self.since >= self.cfg.window_s {
                self.fresh = false;
            } else if self.arrivals.len() >= FRESH_MIN {
                self.estimate = (self.arrivals.len() as f64 / (t - self.since)).max(MIN_RATE);
            }
        }
    }

    fn evict(&mut self, now: f64) {
        let from = now - self.cfg.window_s;
        while self.arrivals.front().is_some_and(|&a| a <= from) {
            self.arrivals.pop_front();
        }
    }

    /// Arrivals per second over the sliding window ending at `now`.
    pub fn window_rate(&mut self, now: f64) -> f64 {
        self.evict(now);
        let span = (now - self.since).min(self.cfg.window_s);
        if span <= 0.0 {
            self.estimate
        } else {
            self.arrivals.len() as f64 / span
        }
    }

    /// Control tick: fold the window rate into the EWMA.
    pub fn tick(&mut self, now: f64) {
        let r = self.window_rate(now);
        if self.fresh && now - self.since < self.cfg.window_s {
            // The growing window since the change point is already the estimate.
            if self.arrivals.len() >= FRESH_MIN {
                self.estimate = r.max(MIN_RATE);
            }
            return;
        }
        self.fresh = false;
        self.estimate = if self.seeded {
            (1.0 - self.cfg.ewma_weight) * self.estimate + self.cfg.ewma_weight * r
        } else {
            r
        }
        .max(MIN_RATE);
        self.seeded = true;
    }

    /// λ̂ (req/s).
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// λ̂⁺ = λ̂ + z·√(λ̂/W).
    pub fn upper(&self) -> f64 {
        self.estimate + self.cfg.z * (self.estimate / self.cfg.window_s).sqrt()
    }

    /// Checks the short window against the estimate; on a change, resets the estimate to the
    /// short-window rate, forgets older arrivals, and returns the new rate.
    pub fn detect_change(&mut self, now: f64) -> Option<f64> {
        let w = self.cfg.short_window_s;
        if now - self.since < w {
            return None;
        }
        self.evict(now);
        let from = now - w;
        let recent = self.arrivals.len() - self.arrivals.partition_point(|&a| a <= from);
        let expected = self.estimate * w;
        let observed = recent as f64;
        let ratio_hit = observed > expected * self.cfg.change_ratio
            || observed * self.cfg.change_ratio < expected;
        let noise_hit =
            (observed - expected).abs() > self.cfg.change_sigmas * expected.max(1.0).sqrt();
        if !(ratio_hit && noise_hit) {
            return None;
        }
        // Most likely change point: the arrival after which a fresh Poisson rate explains the
        // rest of the short window best, with the old estimate before it.
        let first = self.arrivals.partition_point(|&a| a <= from);
        let (mut best, mut cut) = (f64::NEG_INFINITY, first);
        for j in first..self.arrivals.len().saturating_sub(1) {
            let span = now - self.arrivals[j];
            let after = (self.arrivals.len() - j) as f64;
            if span <= 0.0 {
                break;
            }
            let before = (j - first) as f64;
            let ll = after * (after / span).ln() - after + before * self.estimate.ln()
                - self.estimate * (self.arrivals[j] - from);
            if ll > best {
                best = ll;
                cut = j;
            }
        }
        let after = (self.arrivals.len() - cut) as f64;
        let span = (now - self.arrivals[cut]).max(1e-9);
        let rate = (after / span).max(MIN_RATE);
        self.arrivals.drain(..cut);
        // One mean gap before the first arrival of the new regime, so count/span is unbiased.
        self.since = self.arrivals.front().map_or(now, |&a| a - 1.0 / rate);
        self.estimate = if after >= FRESH_MIN as f64 {
            rate
        } else {
            (observed / w).max(MIN_RATE)
        };
        self.seeded = true;
        self.fresh = true;
        Some(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic Poisson-like arrivals: exponential gaps from a fixed seed.
    fn arrivals(rate: f64, from: f64, to: f64, seed: u64) -> Vec<f64> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Exp};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let exp = Exp::new(rate).unwrap();
        let mut t = from;
        let mut out = Vec::new();
        loop {
            t += exp.sample(&mut rng);
            if t >= to {
                return out;
            }
            out.push(t);
        }
    }

    #[test]
    fn estimates_a_steady_rate_without_false_changes() {
        let mut r = RateEstimator::new(RateConfig::default(), 0.0);
        let mut changes = 0;
        let mut next_tick = 1.0;
        for t in arrivals(200.0, 0.0, 20.0, 1) {
            while t >= next_tick {
                r.tick(next_tick);
                next_tick += 1.0;
            }
            r.on_arrival(t);
            if r.detect_change(t).is_some() {
                changes += 1;
            }
        }
        assert!((r.estimate() - 200.0).abs() < 20.0, "{}", r.estimate());
        assert!(r.upper() > r.estimate());
        assert!((r.upper() - r.estimate() - 2.0 * (r.estimate()).sqrt()).abs() < 1e-9);
        // 3σ and 30 % together: at most a stray detection in 20 s.
        assert!(changes <= 1, "{changes} false changes");
    }

    #[test]
    fn a_rate_step_is_detected_within_the_short_window() {
        let mut r = RateEstimator::new(RateConfig::default(), 0.0);
        let mut next_tick = 1.0;
        let mut detected_at = None;
        let mut all = arrivals(100.0, 0.0, 5.0, 2);
        all.extend(arrivals(400.0, 5.0, 8.0, 3));
        for t in all {
            while t >= next_tick {
                r.tick(next_tick);
                next_tick += 1.0;
            }
            r.on_arrival(t);
            // The controller checks on every arrival; a change may fire again while the short
            // window still mixes the old and new rates.
            if t > 5.0 && r.detect_change(t).is_some() && detected_at.is_none() {
                detected_at = Some(t);
            }
        }
        let at = detected_at.expect("step detected");
        assert!(at < 5.0 + 0.25, "detected at {at}");
        assert!((r.estimate() - 400.0).abs() < 80.0, "{}", r.estimate());
    }
}
