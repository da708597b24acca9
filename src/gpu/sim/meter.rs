//! Energy bookkeeping of the simulated GPU: the ground-truth integral of power, the energy
//! counter as NVML publishes it (whole mJ, updated every counter period), the 1 s average power
//! reading of newer parts, and a first-order thermal model.

/// Integrates piecewise-constant power segments.
#[derive(Debug, Clone)]
pub(crate) struct EnergyMeter {
    truth_j: f64,
    period_s: f64,
    /// Index of the next counter tick (ticks fall at k·period).
    next_tick: u64,
    /// Ground-truth energy at the last tick: what the counter publishes.
    published_j: f64,
    /// Energies at the most recent ticks, for the 1 s average (None: not needed).
    ring: Option<Ring>,
    last_power_w: f64,
    /// Exponential average of power with the thermal time constant.
    thermal_w: f64,
    tau_s: f64,
}

#[derive(Debug, Clone)]
struct Ring {
    buf: Vec<(f64, f64)>,
    head: usize,
    len: usize,
}

impl Ring {
    fn new(cap: usize) -> Self {
        Self {
            buf: vec![(0.0, 0.0); cap],
            head: 0,
            len: 0,
        }
    }
    fn push(&mut self, t: f64, e: f64) {
        self.buf[self.head] = (t, e);
        self.head = (self.head + 1) % self.buf.len();
        self.len = (self.len + 1).min(self.buf.len());
    }
    fn oldest_newest(&self) -> Option<((f64, f64), (f64, f64))> {
        if self.len < 2 {
            return None;
        }
        let cap = self.buf.len();
        let newest = self.buf[(self.head + cap - 1) % cap];
        let oldest = self.buf[(self.head + cap - self.len) % cap];
        Some((oldest, newest))
    }
}

impl EnergyMeter {
    /// `average_window_s`: Some(1.0) for parts whose power reading is a 1 s average.
    pub(crate) fn new(
        period_s: f64,
        average_window_s: Option<f64>,
        initial_w: f64,
        tau_s: f64,
    ) -> Self {
        let ring = average_window_s.map(|w| Ring::new((w / period_s).round() as usize + 1));
        Self {
            truth_j: 0.0,
            period_s,
            next_tick: 1,
            published_j: 0.0,
            ring,
            last_power_w: initial_w,
            thermal_w: initial_w,
            tau_s,
        }
    }

    pub(crate) fn truth_j(&self) -> f64 {
        self.truth_j
    }

    /// Counter value: ground truth at the last tick, in whole mJ.
    pub(crate) fn published_mj(&self) -> u64 {
        (self.published_j * 1e3).floor() as u64
    }

    pub(crate) fn last_power_w(&self) -> f64 {
        self.last_power_w
    }

    pub(crate) fn thermal_w(&self) -> f64 {
        self.thermal_w
    }

    /// Power averaged over the averaging window, from counter ticks.
    pub(crate) fn average_power_w(&self) -> f64 {
        match self.ring.as_ref().and_then(Ring::oldest_newest) {
            Some(((t0, e0), (t1, e1))) if t1 > t0 => (e1 - e0) / (t1 - t0),
            _ => self.last_power_w,
        }
    }

    /// Adds a segment starting at `t0_s` lasting `dur_s` with total energy `energy_j`.
    #[inline]
    pub(crate) fn accrue(&mut self, t0_s: f64, dur_s: f64, energy_j: f64) {
        if dur_s <= 0.0 {
            self.truth_j += energy_j;
            return;
        }
        let p = energy_j / dur_s;
        let t1 = t0_s + dur_s;
        let next_tick_s = self.next_tick as f64 * self.period_s;
        if t1 >= next_tick_s {
            let crossed = ((t1 - next_tick_s) / self.period_s).floor() as u64 + 1;
            let last_tick = self.next_tick + crossed - 1;
            let e_at = |tick: u64| self.truth_j + p * (tick as f64 * self.period_s - t0_s).max(0.0);
            self.published_j = e_at(last_tick);
            if let Some(cap) = self.ring.as_ref().map(|r| r.buf.len() as u64) {
                let first = self.next_tick.max((last_tick + 1).saturating_sub(cap));
                for tick in first..=last_tick {
                    let e = e_at(tick);
                    if let Some(r) = self.ring.as_mut() {
                        r.push(tick as f64 * self.period_s, e);
                    }
                }
            }
            self.next_tick = last_tick + 1;
        }
        self.truth_j += energy_j;
        self.last_power_w = p;
        // First-order lag without an exp(): exact for dt ≪ τ, stable for any dt.
        self.thermal_w += (p - self.thermal_w) * dur_s / (self.tau_s + dur_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_publishes_at_ticks_only() {
        let mut m = EnergyMeter::new(0.01, None, 50.0, 30.0);
        m.accrue(0.0, 0.004, 0.4); // 100 W for 4 ms: no tick crossed yet
        assert_eq!(m.published_mj(), 0);
        m.accrue(0.004, 0.010, 1.0); // crosses the 10 ms tick
        // energy at t = 10 ms: 0.4 J + 100 W × 6 ms = 1.0 J
        assert_eq!(m.published_mj(), 1000);
        assert!((m.truth_j() - 1.4).abs() < 1e-12);
    }

    #[test]
    fn long_segment_sets_last_tick_and_ring() {
        let mut m = EnergyMeter::new(0.01, Some(1.0), 0.0, 30.0);
        m.accrue(0.0, 5.0, 500.0); // 100 W for 5 s
        assert_eq!(m.published_mj(), 500_000);
        assert!((m.average_power_w() - 100.0).abs() < 1e-9);
        m.accrue(5.0, 0.5, 100.0); // 200 W for 0.5 s: 1 s average = 150 W
        assert!((m.average_power_w() - 150.0).abs() < 1e-6);
    }
}
