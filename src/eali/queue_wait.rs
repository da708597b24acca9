//! Waiting behind the batch in flight: how long a filled batch waits for the GPU, as a tail
//! quantile, and the longest execution time that keeps fill + wait + execution within a budget.
//!
//! A batch of `b` requests fills in a Gamma(b, λ) time F and then needs the GPU for `T` seconds.
//! Batches form a G/D/1 queue: when the previous batch runs longer than the next one takes to
//! fill, the next one waits. With batch-level utilisation ρ = λ·T/b < 1 the waiting time W has an
//! exponential tail, P(W > t) ≈ ρ·e^(−θt), where θ > 0 solves the Lundberg equation
//! E[e^{θ(T − F)}] = 1, i.e. θ·T = b·ln(1 + θ/λ). Ignoring W is what let the planner pick
//! batch-1 plans at 70 % utilisation with a p99 twice its prediction (VGG16 on T4, 25 req/s).

/// Tail decay rate θ (1/s) of the wait for batches of `batch` at `rate` (req/s) needing `exec_s`
/// each; `None` when the queue is unstable (λ·T ≥ b) or the inputs are not positive.
pub fn decay_rate(batch: u32, rate: f64, exec_s: f64) -> Option<f64> {
    let b = f64::from(batch);
    if !(batch >= 1 && rate > 0.0 && exec_s > 0.0) || rate * exec_s >= b {
        return None;
    }
    // g(θ) = b·ln(1 + θ/λ) − θ·T is concave, zero at 0 with slope b/λ − T > 0: Newton's method
    // started right of its positive root (where g < 0) walks down to it monotonically.
    let g = |x: f64| b * (x / rate).ln_1p() - x * exec_s;
    let mut x = b / exec_s;
    while g(x) > 0.0 {
        x *= 2.0;
        if !x.is_finite() {
            return None;
        }
    }
    for _ in 0..100 {
        let slope = b / (rate + x) - exec_s;
        if slope >= 0.0 {
            break;
        }
        let step = g(x) / slope;
        x -= step;
        if step.abs() <= 1e-12 * x {
            break;
        }
    }
    (x > 0.0).then_some(x)
}

/// The `q`-quantile of how long the GPU stays busy with earlier batches after the first request
/// of a batch arrives, *minus* one service time: the quantile of `W − E` where W is the previous
/// batch's wait and E ~ Exp(λ) the gap before the request (negative when it usually finds the GPU
/// idle). Closed form under the exponential tail: for z ≥ 0, P(W − E > z) = ρ·λ/(λ+θ)·e^(−θz);
/// for z < 0, P(W − E ≤ z) = e^(λz)·(1 − ρ·λ/(λ+θ)).
fn busy_excess_quantile_s(batch: u32, rate: f64, service_s: f64, q: f64) -> f64 {
    if rate <= 0.0 || service_s <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let Some(theta) = decay_rate(batch, rate, service_s) else {
        return f64::INFINITY;
    };
    let rho = rate * service_s / f64::from(batch);
    let c = rho * rate / (rate + theta);
    let tail = (1.0 - q).clamp(1e-12, 1.0);
    if tail < c {
        (c / tail).ln() / theta
    } else {
        (q / (1.0 - c)).ln() / rate
    }
}

/// The `q`-quantile of the time from a request's arrival until its batch starts (s): the later
/// of its batch filling (the per-request fill quantile given, taken at √q) and the GPU finishing
/// the batches before it (as the batch's first request sees it: later ones see less of it). The two are independent under Poisson arrivals, so splitting the quantile
/// as √q·√q bounds the quantile of their maximum from above without the sum's double counting
/// (a batch that fills slowly is the one that waits least).
pub fn pre_service_quantile_s(
    batch: u32,
    rate: f64,
    service_s: f64,
    q: f64,
    fill_at_sqrt_q_s: f64,
) -> f64 {
    let busy = service_s + busy_excess_quantile_s(batch, rate, service_s, q.sqrt());
    fill_at_sqrt_q_s.max(busy).max(0.0)
}

/// The longest service time `S` (the GPU's busy time per batch) whose latency quantile
/// `pre_service(S) + S` stays within `room_s`, 0 if none. Increasing in `S`, so
/// bisection finds the boundary.
pub fn max_service_s(batch: u32, rate: f64, q: f64, fill_at_sqrt_q_s: f64, room_s: f64) -> f64 {
    if room_s.is_nan() || room_s <= 0.0 || fill_at_sqrt_q_s >= room_s {
        return 0.0;
    }
    let fits = |t: f64| pre_service_quantile_s(batch, rate, t, q, fill_at_sqrt_q_s) + t <= room_s;
    let cap = service_cap_s(batch, rate, room_s);
    let (mut lo, mut hi) = (0.0, cap);
    if fits(hi) {
        return hi;
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-6 * room_s {
            break;
        }
    }
    lo
}

/// The most [`max_service_s`] can return: the room, and a batch's arrival time at `rate`.
fn service_cap_s(batch: u32, rate: f64, room_s: f64) -> f64 {
    if rate > 0.0 {
        room_s.min(f64::from(batch) / rate)
    } else {
        room_s
    }
}

/// Whether a service time of `service_s` keeps the latency quantile within `room_s`, i.e.
/// whether [`max_service_s`] would be at least `service_s`, without its bisection: one
/// evaluation, so a planner can rule a batch size out before searching its budget.
pub fn service_fits(
    batch: u32,
    rate: f64,
    q: f64,
    fill_at_sqrt_q_s: f64,
    room_s: f64,
    service_s: f64,
) -> bool {
    if room_s.is_nan() || room_s <= 0.0 || fill_at_sqrt_q_s >= room_s {
        return service_s <= 0.0;
    }
    service_s <= service_cap_s(batch, rate, room_s)
        && pre_service_quantile_s(batch, rate, service_s, q, fill_at_sqrt_q_s) + service_s <= room_s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Exp};

    /// The exponential-tail model of a filled batch's wait, P(W > t) ≈ ρ·e^(−θt), as a quantile:
    /// the approximation `busy_excess_quantile_s` is built on.
    fn wait_quantile_s(batch: u32, rate: f64, exec_s: f64, q: f64) -> f64 {
        if exec_s <= 0.0 || rate <= 0.0 {
            return 0.0;
        }
        let Some(theta) = decay_rate(batch, rate, exec_s) else {
            return f64::INFINITY;
        };
        let rho = rate * exec_s / f64::from(batch);
        let tail = (1.0 - q).clamp(1e-12, 1.0);
        (rho / tail).ln().max(0.0) / theta
    }

    /// Waits of filled batches by Lindley's recursion over simulated Poisson arrivals.
    fn simulated_wait_quantile(batch: u32, rate: f64, exec_s: f64, q: f64) -> f64 {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let gap = Exp::new(rate).unwrap();
        let mut waits = Vec::new();
        let mut w: f64 = 0.0;
        for _ in 0..400_000 {
            let fill: f64 = (0..batch).map(|_| gap.sample(&mut rng)).sum();
            w = (w + exec_s - fill).max(0.0);
            waits.push(w);
        }
        waits.sort_by(f64::total_cmp);
        waits[((q * waits.len() as f64) as usize).min(waits.len() - 1)]
    }

    #[test]
    fn matches_a_simulated_queue_within_the_approximation() {
        for (b, rate, exec_s) in [(1, 25.0, 0.027), (4, 100.0, 0.03), (16, 400.0, 0.03)] {
            let model = wait_quantile_s(b, rate, exec_s, 0.99);
            let sim = simulated_wait_quantile(b, rate, exec_s, 0.99);
            assert!(
                (model - sim).abs() <= 0.25 * sim + 0.002,
                "b={b} λ={rate} T={exec_s}: model {model} vs simulated {sim}"
            );
        }
    }

    #[test]
    fn lundberg_root_solves_its_equation() {
        let (b, rate, t) = (8, 200.0, 0.03);
        let theta = decay_rate(b, rate, t).unwrap();
        let lhs = theta * t;
        let rhs = f64::from(b) * (theta / rate).ln_1p();
        assert!((lhs - rhs).abs() < 1e-6 * rhs, "{lhs} vs {rhs}");
        assert!(decay_rate(b, rate, f64::from(b) / rate).is_none());
    }

    /// Pre-service times of every request (from its arrival until its batch starts: the rest of
    /// the batch filling, then the wait for the GPU) of simulated Poisson arrivals with a
    /// deterministic service.
    fn simulated_pre_service_quantile(batch: u32, rate: f64, service_s: f64, q: f64) -> f64 {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let gap = Exp::new(rate).unwrap();
        let (mut t, mut free_at) = (0.0, 0.0_f64);
        let mut pre = Vec::new();
        let mut arrivals = Vec::with_capacity(batch as usize);
        for _ in 0..200_000 / batch {
            arrivals.clear();
            for _ in 0..batch {
                t += gap.sample(&mut rng);
                arrivals.push(t);
            }
            let start = t.max(free_at);
            free_at = start + service_s;
            pre.extend(arrivals.iter().map(|a| start - a));
        }
        pre.sort_by(f64::total_cmp);
        pre[((q * pre.len() as f64) as usize).min(pre.len() - 1)]
    }

    #[test]
    fn pre_service_bounds_a_simulated_queue_from_above_and_not_by_much() {
        use crate::eali::fill_time::FillQuantiles;
        for (b, rate, service_s) in [
            (1, 25.0, 0.012),
            (1, 25.0, 0.027),
            (4, 100.0, 0.03),
            (16, 400.0, 0.03),
            (8, 100.0, 0.02),
        ] {
            let fill = FillQuantiles::new(0.99_f64.sqrt(), 64).wait_s(b, rate);
            let model = pre_service_quantile_s(b, rate, service_s, 0.99, fill);
            let sim = simulated_pre_service_quantile(b, rate, service_s, 0.99);
            assert!(
                model >= 0.97 * sim && model <= 1.3 * sim + 0.002,
                "b={b} λ={rate} S={service_s}: model {model} vs simulated {sim}"
            );
        }
    }

    /// The planner rules batch sizes out with `service_fits` instead of the bisection: both must
    /// give the same answer away from the bisection's tolerance, over rates, batches, fill waits
    /// and rooms, including the edges (no room, a fill wait that takes it all, no arrivals).
    #[test]
    fn service_fits_agrees_with_the_bisection() {
        let mut checked = 0;
        for batch in [1u32, 2, 4, 16, 64] {
            for rate in [0.0, 5.0, 50.0, 400.0, 3000.0] {
                for fill in [0.0, 0.004, 0.02, 0.05] {
                    for room in [0.0, 0.01, 0.045, 0.09] {
                        let max = max_service_s(batch, rate, 0.99, fill, room);
                        for k in 1..40 {
                            let s = 0.0025 * f64::from(k);
                            if (s - max).abs() <= 1e-5 * room.max(1e-3) {
                                continue;
                            }
                            let fits = service_fits(batch, rate, 0.99, fill, room, s);
                            assert_eq!(
                                fits,
                                s <= max,
                                "batch {batch} rate {rate} fill {fill} room {room} service {s} \
                                 (max {max})"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn max_service_is_the_boundary_and_shrinks_with_load() {
        let room = 0.045;
        let s = max_service_s(1, 25.0, 0.99, 0.0, room);
        let lat = |s: f64, rate: f64| pre_service_quantile_s(1, rate, s, 0.99, 0.0) + s;
        assert!(s > 0.0 && s < room);
        assert!(lat(s, 25.0) <= room + 1e-9);
        assert!(lat(s * 1.01, 25.0) > room);
        assert!(max_service_s(1, 30.0, 0.99, 0.0, room) < s);
        // No arrivals, no wait: the whole room.
        assert_eq!(max_service_s(1, 0.0, 0.99, 0.0, room), room);
        assert_eq!(max_service_s(4, 10.0, 0.99, 0.0, -1.0), 0.0);
        assert_eq!(max_service_s(4, 10.0, 0.99, 0.05, 0.045), 0.0);
    }
}
