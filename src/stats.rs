//! The one percentile definition every figure uses: nearest rank, as in Prometheus-free load
//! tools and the SLO's own statement ("p99 ≤ 50 ms": at least 99 % of requests within 50 ms).

/// 1-based nearest rank of percentile `q ∈ (0, 1]` among `n > 0` values: `⌈q·n⌉` within `1..=n`.
pub fn nearest_rank(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n.max(1))
}

/// Nearest-rank percentile `q ∈ (0, 1]` of `values`, reordering them; NaN when empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = nearest_rank(values.len(), q);
    let (_, v, _) = values.select_nth_unstable_by(rank - 1, f64::total_cmp);
    *v
}

/// [`percentile`] of the finite values of `values` (a copy); `None` when there are none.
pub fn percentile_finite(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    (!v.is_empty()).then(|| percentile(&mut v, q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 1.0), 100.0);
        assert_eq!(percentile(&mut [3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(percentile(&mut [7.0], 0.01), 7.0);
        assert!(percentile(&mut [], 0.5).is_nan());
        assert_eq!(
            percentile_finite(&[f64::NAN, 4.0, f64::INFINITY], 0.9),
            Some(4.0)
        );
        assert_eq!(percentile_finite(&[f64::NAN], 0.9), None);
    }
}
