//! Tail quantile of the batch-filling time under Poisson arrivals.
//!
//! The request at position `i` (from 0) of a batch of `b` waits for `b − 1 − i` further arrivals:
//! with Poisson arrivals of rate λ a Gamma(b − 1 − i, λ) time. The latency SLO is a percentile
//! over *requests*, so the wait that counts is that of a request taken at random from its batch,
//! the mixture `P(W > t) = (1/b)·Σ_k Q(k, λt)` over `k = 0..b−1` further arrivals (`Q` the
//! regularised upper incomplete gamma). Its q-quantile is `M_q(b) / λ`; the first request's
//! alone, `G_q(b − 1) / λ` with `G_q(a)` the q-quantile of a unit-rate Gamma(a), is larger: only
//! one request in `b` waits that long. [`FillQuantiles`] caches `M_q` per batch size so the
//! planner pays a division per candidate batch, not a root search.

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; about 15 significant digits).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised lower incomplete gamma P(a, x) for a > 0, x ≥ 0.
pub fn reg_lower_gamma(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let ln_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // Series converges fast below the mode.
        let mut term = 1.0 / a;
        let mut sum = term;
        let mut n = a;
        for _ in 0..1000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        (sum.ln() + ln_prefix).exp().min(1.0)
    } else {
        // Continued fraction for Q(a, x) (modified Lentz).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (1.0 - (ln_prefix + h.ln()).exp()).max(0.0)
    }
}

/// Standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let p_low = 0.024_25;
    if p < p_low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - p_low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// q-quantile of a unit-rate Gamma(a) (shape `a`, scale 1). `a = 0` is the point mass at 0.
///
/// Wilson–Hilferty start, then Newton steps guarded by a bisection bracket, to a relative
/// accuracy of about 1e-12.
pub fn gamma_quantile(a: f64, q: f64) -> f64 {
    if a <= 0.0 || q <= 0.0 {
        return 0.0;
    }
    let q = q.min(1.0 - 1e-15);
    let z = normal_quantile(q);
    let wh = a * (1.0 - 1.0 / (9.0 * a) + z / (3.0 * a.sqrt())).powi(3);
    let mut x = if wh.is_finite() && wh > 0.0 {
        wh
    } else {
        a.max(1e-3)
    };
    // Bracket the root: P is increasing in x.
    let (mut lo, mut hi) = (0.0_f64, x.max(1.0));
    while reg_lower_gamma(a, hi) < q {
        lo = hi;
        hi *= 2.0;
    }
    let ln_ga = ln_gamma(a);
    for _ in 0..200 {
        let p = reg_lower_gamma(a, x);
        let err = p - q;
        if err < 0.0 {
            lo = lo.max(x);
        } else {
            hi = hi.min(x);
        }
        let pdf = ((a - 1.0) * x.ln() - x - ln_ga).exp();
        let mut next = if pdf > 0.0 && pdf.is_finite() {
            x - err / pdf
        } else {
            f64::NAN
        };
        if !(next > lo && next < hi) {
            next = 0.5 * (lo + hi);
        }
        if (next - x).abs() <= 1e-13 * x.max(1e-300) || hi - lo <= 1e-13 * hi {
            return next;
        }
        x = next;
    }
    x
}

/// Share of a batch's requests that wait longer than `x` (in units of 1/λ) for it to fill:
/// `(1/b)·Σ_{k=1}^{b−1} Q(k, x)`. For whole `k`, `Q(k, x) = e^(−x)·Σ_{j<k} x^j/j!`, so the sum
/// is `e^(−x)·Σ_{j=0}^{b−2} (b − 1 − j)·x^j/j!`.
fn batch_fill_tail(batch: u32, x: f64) -> f64 {
    if batch <= 1 {
        return 0.0;
    }
    let (mut term, mut sum) = (1.0, 0.0);
    for j in 0..batch - 1 {
        sum += f64::from(batch - 1 - j) * term;
        term *= x / f64::from(j + 1);
    }
    ((-x).exp() * sum / f64::from(batch)).min(1.0)
}

/// q-quantile of the fill wait of a request taken at random from a batch of `batch` at unit
/// rate (`M_q(b)` of the module docs). 0 when `q ≤ 1/b`: the last request of a batch, a share
/// `1/b` of them, never waits.
pub fn batch_fill_quantile(batch: u32, q: f64) -> f64 {
    let tail = 1.0 - q;
    if batch <= 1 || batch_fill_tail(batch, 0.0) <= tail {
        return 0.0;
    }
    // Every request waits for at most b − 1 arrivals, so the first one's quantile bounds it.
    let (mut lo, mut hi) = (0.0, gamma_quantile(f64::from(batch - 1), q));
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if batch_fill_tail(batch, mid) > tail {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    hi
}

/// Cached fill-time quantiles for one percentile: `W_q(b, λ) = M_q(b) / λ`.
#[derive(Debug, Clone, PartialEq)]
pub struct FillQuantiles {
    quantile: f64,
    /// `unit[b]` = [`batch_fill_quantile`]`(b, q)`; `unit[0]` and `unit[1]` are 0.
    unit: Vec<f64>,
}

impl FillQuantiles {
    /// Quantile `quantile` in (0, 1) (e.g. 0.99), batch sizes up to `max_batch`.
    pub fn new(quantile: f64, max_batch: u32) -> Self {
        let unit = (0..=max_batch)
            .map(|b| batch_fill_quantile(b, quantile))
            .collect();
        Self { quantile, unit }
    }

    pub fn quantile(&self) -> f64 {
        self.quantile
    }

    /// q-quantile of the time a request waits for its batch of `batch` to fill at arrival rate
    /// `rate` (req/s). Infinite for a zero rate and `batch > 1`.
    pub fn wait_s(&self, batch: u32, rate: f64) -> f64 {
        if batch <= 1 {
            return 0.0;
        }
        let g = match self.unit.get(batch as usize) {
            Some(g) => *g,
            None => batch_fill_quantile(batch, self.quantile),
        };
        if rate > 0.0 { g / rate } else { f64::INFINITY }
    }
}

/// Mean fill time `(b − 1)/λ`: the simple fallback when no percentile is wanted.
pub fn mean_wait_s(batch: u32, rate: f64) -> f64 {
    if batch <= 1 {
        0.0
    } else {
        f64::from(batch - 1) / rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-12)
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut fact = 1.0_f64;
        for n in 1..30 {
            // Γ(n + 1) = n!
            fact *= n as f64;
            assert!(close(ln_gamma(n as f64 + 1.0), fact.ln(), 1e-12), "n = {n}");
        }
        assert!(close(
            ln_gamma(0.5),
            std::f64::consts::PI.sqrt().ln(),
            1e-12
        ));
    }

    #[test]
    fn exponential_quantile_is_closed_form() {
        for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
            assert!(
                close(gamma_quantile(1.0, q), -(1.0 - q).ln(), 1e-10),
                "q = {q}"
            );
        }
    }

    #[test]
    fn chi_square_table_values() {
        // χ²_k quantile = 2 · Gamma(k/2, 1) quantile; values from standard χ² tables.
        let cases = [
            (1.0, 0.95, 3.841_458_820_694_124),
            (2.0, 0.99, 9.210_340_371_976_182),
            (10.0, 0.99, 23.209_251_158_954_35),
            (10.0, 0.5, 9.341_817_765_591_97),
            (30.0, 0.95, 43.772_971_825_742_19),
            (100.0, 0.99, 135.806_722_595_942_4),
        ];
        for (k, q, want) in cases {
            let got = 2.0 * gamma_quantile(k / 2.0, q);
            assert!(close(got, want, 1e-8), "k = {k}, q = {q}: {got} vs {want}");
        }
    }

    #[test]
    fn quantile_inverts_cdf() {
        for a in [0.3, 1.0, 2.5, 7.0, 31.0, 63.0, 200.0] {
            for q in [0.01, 0.5, 0.9, 0.99, 0.9999] {
                let x = gamma_quantile(a, q);
                assert!(close(reg_lower_gamma(a, x), q, 1e-9), "a = {a}, q = {q}");
            }
        }
    }

    #[test]
    fn fill_wait_scales_with_rate_and_grows_with_batch() {
        let f = FillQuantiles::new(0.99, 64);
        assert_eq!(f.wait_s(1, 100.0), 0.0);
        // In a batch of 2 the first request waits for one exponential arrival, the second not at
        // all: 1 % of requests wait longer than t when e^(−λt)/2 = 0.01.
        assert!(close(f.wait_s(2, 100.0), -(0.02_f64).ln() / 100.0, 1e-9));
        assert!(close(f.wait_s(17, 50.0) * 2.0, f.wait_s(17, 25.0), 1e-12));
        for b in 2..64 {
            assert!(f.wait_s(b + 1, 10.0) > f.wait_s(b, 10.0));
            // The tail quantile is above the mean wait of a request, (b − 1)/2 arrivals, and
            // below the first request's own quantile.
            assert!(f.wait_s(b, 10.0) > mean_wait_s(b, 10.0) / 2.0);
            assert!(f.wait_s(b, 10.0) < gamma_quantile(f64::from(b - 1), 0.99) / 10.0);
        }
        // Beyond the cache it still answers.
        assert!(close(
            f.wait_s(100, 1.0),
            batch_fill_quantile(100, 0.99),
            1e-12
        ));
        // When a share q of the requests never waits, the quantile is 0.
        assert_eq!(batch_fill_quantile(4, 0.25), 0.0);
        assert!(batch_fill_quantile(4, 0.26) > 0.0);
    }

    #[test]
    fn batch_fill_quantile_matches_simulated_batches() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Exp};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let gap = Exp::new(1.0).unwrap();
        for b in [2_u32, 3, 8, 32] {
            let mut waits = Vec::new();
            for _ in 0..200_000 / b {
                // Arrival times within one batch; everyone waits until the last arrival.
                let mut t = 0.0;
                let arrivals: Vec<f64> = (0..b)
                    .map(|_| {
                        let a = t;
                        t += gap.sample(&mut rng);
                        a
                    })
                    .collect();
                let last = arrivals[arrivals.len() - 1];
                waits.extend(arrivals.iter().map(|a| last - a));
            }
            waits.sort_by(f64::total_cmp);
            for q in [0.9, 0.99] {
                let sim = waits[(q * waits.len() as f64) as usize];
                let model = batch_fill_quantile(b, q);
                assert!(
                    close(model, sim, 0.03),
                    "b {b} q {q}: model {model}, simulated {sim}"
                );
            }
        }
    }
}
