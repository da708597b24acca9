//! Per-layer latency model from a profile: over clocks t(f) = a + b·f_max/f per (layer, batch) —
//! a is the clock-independent part (memory, launch), b the compute part that scales with the
//! clock period — and over batch sizes linear interpolation between the measured batch sizes.
//!
//! The clock curve is fitted piecewise: one (a, b) per pair of neighbouring measured clocks, and
//! the outermost pair extended beyond the measured range. A single least-squares fit over all
//! clocks misses by up to ~17 % on single layers (~6 % on a whole model at f_max, simulated V100)
//! because the curve has a kink: below the clock at which the SMs can no longer keep memory busy,
//! the memory part slows down too. Each piece is still the a + b·f_max/f form, exact at the
//! measured clocks.

use serde::{Deserialize, Serialize};

use super::error::{PerfError, Result};
use super::profile::Profile;

/// t(x) = a + b / x with x = f / f_max, both coefficients non-negative.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockFit {
    pub a: f64,
    pub b: f64,
}

impl ClockFit {
    /// Least-squares fit to `(x, t)` points (x = f/f_max > 0). A coefficient that comes out
    /// negative is clamped to zero and the other refitted alone, so time never falls as the clock
    /// falls. Needs two distinct clocks.
    pub fn fit(points: &[(f64, f64)]) -> Result<Self> {
        let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        if xs.len() < 2 {
            return Err(PerfError::NotEnoughData {
                what: "the clock fit t(f) = a + b·f_max/f (distinct clocks)",
                have: xs.len(),
                need: 2,
            });
        }
        if points
            .iter()
            .any(|&(x, t)| !(x > 0.0 && x.is_finite() && t.is_finite()))
        {
            return Err(PerfError::InvalidInput(
                "clock fit needs positive clocks and finite times".into(),
            ));
        }
        let n = points.len() as f64;
        let (su, st, suu, sut) = points.iter().fold((0.0, 0.0, 0.0, 0.0), |acc, &(x, t)| {
            let u = 1.0 / x;
            (acc.0 + u, acc.1 + t, acc.2 + u * u, acc.3 + u * t)
        });
        let det = n * suu - su * su;
        let b = (n * sut - su * st) / det;
        let a = (st - b * su) / n;
        Ok(if a < 0.0 {
            Self {
                a: 0.0,
                b: (sut / suu).max(0.0),
            }
        } else if b < 0.0 {
            Self {
                a: (st / n).max(0.0),
                b: 0.0,
            }
        } else {
            Self { a, b }
        })
    }

    pub fn eval(&self, x: f64) -> f64 {
        self.a + self.b / x
    }
}

/// t(x) through measured clocks: one [`ClockFit`] per interval between neighbouring clocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockCurve {
    /// Measured clocks as f/f_max, ascending.
    pub xs: Vec<f64>,
    /// `pieces[i]` covers `xs[i]..xs[i+1]`; the first and last extend outwards.
    pub pieces: Vec<ClockFit>,
}

impl ClockCurve {
    /// Needs two distinct clocks; several records at one clock are averaged.
    pub fn fit(points: &[(f64, f64)]) -> Result<Self> {
        let mut pts: Vec<(f64, f64)> = points.to_vec();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut merged: Vec<(f64, f64, f64)> = Vec::new();
        for (x, t) in pts {
            match merged.last_mut() {
                Some(m) if m.0 == x => {
                    m.1 += t;
                    m.2 += 1.0;
                }
                _ => merged.push((x, t, 1.0)),
            }
        }
        let pts: Vec<(f64, f64)> = merged.iter().map(|m| (m.0, m.1 / m.2)).collect();
        if pts.len() < 2 {
            // Let the single-fit error explain what is missing.
            ClockFit::fit(&pts)?;
        }
        let pieces = pts
            .windows(2)
            .map(ClockFit::fit)
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            xs: pts.iter().map(|p| p.0).collect(),
            pieces,
        })
    }

    pub fn eval(&self, x: f64) -> f64 {
        // Index of the first measured clock above x, made a piece index.
        let i = self.xs.partition_point(|&v| v <= x);
        let piece = i.saturating_sub(1).min(self.pieces.len() - 1);
        self.pieces[piece].eval(x)
    }
}

/// Time of every measured layer at any batch size and clock.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    max_clock_mhz: u32,
    batches: Vec<u32>,
    /// `fits[layer][bi]` for the measured batch `batches[bi]`; `None` for layers without records
    /// (views that launch no kernel).
    fits: Vec<Option<Vec<ClockCurve>>>,
}

impl LatencyModel {
    pub fn from_profile(p: &Profile) -> Result<Self> {
        let fmax = f64::from(p.gpu.max_clock_mhz);
        let mut fits = Vec::with_capacity(p.layers.len());
        for (id, info) in p.layers.iter().enumerate() {
            let per_batch: Vec<Vec<(f64, f64)>> = p
                .batches
                .iter()
                .map(|&b| {
                    p.records_of(id, b)
                        .iter()
                        .map(|r| (f64::from(r.clock_mhz) / fmax, r.time_s))
                        .collect()
                })
                .collect();
            if per_batch.iter().all(Vec::is_empty) {
                if !info.is_noop() {
                    return Err(PerfError::InvalidInput(format!(
                        "profile has no records for layer {}",
                        info.name
                    )));
                }
                fits.push(None);
                continue;
            }
            let layer_fits = per_batch
                .iter()
                .map(|pts| ClockCurve::fit(pts))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| PerfError::InvalidInput(format!("layer {}: {e}", info.name)))?;
            fits.push(Some(layer_fits));
        }
        Ok(Self {
            max_clock_mhz: p.gpu.max_clock_mhz,
            batches: p.batches.clone(),
            fits,
        })
    }

    /// Whether the layer runs a kernel at all (views do not).
    pub fn is_measured(&self, layer: usize) -> bool {
        matches!(self.fits.get(layer), Some(Some(_)))
    }

    /// Predicted time of one run of `layer` (s); 0 for layers that launch no kernel.
    ///
    /// Between measured batch sizes the time is interpolated linearly. Above the largest it is
    /// extrapolated along the last segment (time grows linearly once the GPU is full); below the
    /// smallest along the first segment, but never below the per-sample time of the smallest
    /// measured batch times the batch (small batches are less efficient, not more).
    pub fn time_s(&self, layer: usize, batch: u32, clock_mhz: u32) -> f64 {
        let Some(Some(fits)) = self.fits.get(layer) else {
            return 0.0;
        };
        let x = f64::from(clock_mhz) / f64::from(self.max_clock_mhz);
        let t = |bi: usize| fits[bi].eval(x);
        let b = f64::from(batch);
        let bs = &self.batches;
        if bs.len() == 1 {
            return t(0) * b / f64::from(bs[0]);
        }
        let seg = match bs.binary_search(&batch) {
            Ok(i) => return t(i),
            Err(0) => 0,
            Err(i) if i >= bs.len() => bs.len() - 2,
            Err(i) => i - 1,
        };
        let (b0, b1) = (f64::from(bs[seg]), f64::from(bs[seg + 1]));
        let (t0, t1) = (t(seg), t(seg + 1));
        let slope = ((t1 - t0) / (b1 - b0)).max(0.0);
        let v = t0 + slope * (b - b0);
        if batch < bs[0] { v.max(t0 * b / b0) } else { v }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_fit_recovers_exact_model() {
        let pts: Vec<(f64, f64)> = [0.3, 0.5, 0.8, 1.0]
            .iter()
            .map(|&x| (x, 2e-4 + 3e-4 / x))
            .collect();
        let f = ClockFit::fit(&pts).unwrap();
        assert!(
            (f.a - 2e-4).abs() < 1e-12 && (f.b - 3e-4).abs() < 1e-12,
            "{f:?}"
        );
        assert!((f.eval(0.4) - (2e-4 + 3e-4 / 0.4)).abs() < 1e-12);
    }

    #[test]
    fn clock_fit_clamps_negative_parts() {
        // Time that falls as the clock falls would give b < 0: clamp to a constant.
        let f = ClockFit::fit(&[(0.5, 1.0), (1.0, 2.0)]).unwrap();
        assert_eq!(f.b, 0.0);
        assert!((f.a - 1.5).abs() < 1e-12);
        // Steeper than 1/x gives a < 0: clamp to pure compute scaling.
        let f = ClockFit::fit(&[(0.5, 4.0), (1.0, 1.0)]).unwrap();
        assert_eq!(f.a, 0.0);
        assert!(f.b > 0.0);
        assert!(ClockFit::fit(&[(1.0, 1.0), (1.0, 1.1)]).is_err());
    }

    #[test]
    fn clock_curve_follows_a_kinked_curve_exactly_at_measured_clocks() {
        // Below x = 0.4 the memory part (0.5) slows down as well: a kink a single fit misses.
        let t = |x: f64| 0.5 * (0.4 / x).max(1.0) + 0.2 / x;
        let xs = [0.1, 0.25, 0.4, 0.6, 0.8, 1.0];
        let pts: Vec<(f64, f64)> = xs.iter().map(|&x| (x, t(x))).collect();
        let c = ClockCurve::fit(&pts).unwrap();
        for &x in &xs {
            assert!((c.eval(x) - t(x)).abs() < 1e-12, "x={x}");
        }
        // Between measured clocks on the same side of the kink, the form is exact too.
        for x in [0.5, 0.7, 0.9, 0.15] {
            assert!(
                (c.eval(x) - t(x)).abs() < 1e-9,
                "x={x}: {} vs {}",
                c.eval(x),
                t(x)
            );
        }
        // Extrapolation continues the outermost piece.
        assert!((c.eval(1.2) - t(1.2)).abs() < 1e-9);
        let single = ClockFit::fit(&pts).unwrap();
        assert!((single.eval(1.0) - t(1.0)).abs() > 0.01);
        assert!(ClockCurve::fit(&[(0.5, 1.0), (0.5, 1.2)]).is_err());
    }
}
