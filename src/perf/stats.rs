//! Scoring and resampling for the power model: R², RMSE, k-fold and leave-one-group-out splits.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{PerfError, Result};

/// Goodness of fit of predictions against observations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Coefficient of determination, 1 − SS_res / SS_tot.
    pub r2: f64,
    /// Root mean squared error, in the target's unit (W for the power model).
    pub rmse: f64,
    /// Number of observations scored.
    pub n: usize,
}

impl Score {
    /// Scores `predicted` against `observed`; both must be non-empty and of equal length.
    pub fn of(observed: &[f64], predicted: &[f64]) -> Result<Self> {
        if observed.len() != predicted.len() {
            return Err(PerfError::InvalidInput(format!(
                "{} observations but {} predictions",
                observed.len(),
                predicted.len()
            )));
        }
        if observed.is_empty() {
            return Err(PerfError::NotEnoughData {
                what: "scoring",
                have: 0,
                need: 1,
            });
        }
        Ok(Self {
            r2: r2(observed, predicted),
            rmse: rmse(observed, predicted),
            n: observed.len(),
        })
    }
}

/// Coefficient of determination. A constant observation vector has SS_tot = 0: R² is then 1 for
/// a perfect prediction and −∞ otherwise, as in scikit-learn's convention of "no variance to
/// explain".
pub fn r2(observed: &[f64], predicted: &[f64]) -> f64 {
    let n = observed.len() as f64;
    let mean = observed.iter().sum::<f64>() / n;
    let ss_tot: f64 = observed.iter().map(|y| (y - mean).powi(2)).sum();
    let ss_res: f64 = observed
        .iter()
        .zip(predicted)
        .map(|(y, p)| (y - p).powi(2))
        .sum();
    if ss_tot == 0.0 {
        return if ss_res == 0.0 {
            1.0
        } else {
            f64::NEG_INFINITY
        };
    }
    1.0 - ss_res / ss_tot
}

/// Root mean squared error.
pub fn rmse(observed: &[f64], predicted: &[f64]) -> f64 {
    let n = observed.len() as f64;
    let ss: f64 = observed
        .iter()
        .zip(predicted)
        .map(|(y, p)| (y - p).powi(2))
        .sum();
    (ss / n).sqrt()
}

/// One train/test split: disjoint row indices that together cover all rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

/// Shuffled k-fold split of `n` rows under `seed`: every row is in exactly one test fold, and the
/// test folds differ in size by at most one.
pub fn kfold(n: usize, k: usize, seed: u64) -> Result<Vec<Fold>> {
    if k < 2 {
        return Err(PerfError::InvalidInput(format!(
            "k-fold needs k ≥ 2, got {k}"
        )));
    }
    if n < k {
        return Err(PerfError::NotEnoughData {
            what: "k-fold cross-validation",
            have: n,
            need: k,
        });
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let base = n / k;
    let extra = n % k;
    let mut folds = Vec::with_capacity(k);
    let mut start = 0;
    for i in 0..k {
        let len = base + usize::from(i < extra);
        let mut test = order[start..start + len].to_vec();
        let mut train: Vec<usize> = order[..start]
            .iter()
            .chain(&order[start + len..])
            .copied()
            .collect();
        // Sorted indices keep the fitting order independent of the shuffle, which only decides
        // membership.
        test.sort_unstable();
        train.sort_unstable();
        folds.push(Fold { train, test });
        start += len;
    }
    Ok(folds)
}

/// Leave-one-group-out splits: for each distinct group (in order of first appearance), test on
/// that group and train on all others. Needs at least two groups.
pub fn leave_one_group_out<G: PartialEq + Clone>(groups: &[G]) -> Result<Vec<(G, Fold)>> {
    let mut distinct: Vec<G> = Vec::new();
    for g in groups {
        if !distinct.contains(g) {
            distinct.push(g.clone());
        }
    }
    if distinct.len() < 2 {
        return Err(PerfError::NotEnoughData {
            what: "leave-one-group-out validation (groups)",
            have: distinct.len(),
            need: 2,
        });
    }
    Ok(distinct
        .into_iter()
        .map(|g| {
            let (test, train): (Vec<usize>, Vec<usize>) =
                (0..groups.len()).partition(|&i| groups[i] == g);
            (g, Fold { train, test })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfold_partitions_every_row_once() {
        for (n, k) in [(10, 10), (23, 10), (100, 7), (5, 2)] {
            let folds = kfold(n, k, 42).unwrap();
            assert_eq!(folds.len(), k);
            let mut seen = vec![0u32; n];
            for f in &folds {
                for &i in &f.test {
                    seen[i] += 1;
                }
                assert_eq!(f.train.len() + f.test.len(), n);
                assert!(f.test.iter().all(|i| !f.train.contains(i)));
            }
            assert!(seen.iter().all(|&c| c == 1), "n={n} k={k}: {seen:?}");
            let sizes: Vec<usize> = folds.iter().map(|f| f.test.len()).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "fold sizes {sizes:?}");
        }
    }

    #[test]
    fn kfold_is_deterministic_under_seed_and_shuffles() {
        let a = kfold(50, 10, 7).unwrap();
        let b = kfold(50, 10, 7).unwrap();
        let c = kfold(50, 10, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // A shuffled split does not put rows 0..5 together in the first fold.
        assert_ne!(a[0].test, (0..5).collect::<Vec<_>>());
    }

    #[test]
    fn kfold_rejects_bad_arguments() {
        assert!(kfold(5, 1, 0).is_err());
        assert!(kfold(3, 10, 0).is_err());
    }

    #[test]
    fn leave_one_group_out_tests_each_group_alone() {
        let groups = ["a", "b", "a", "c", "b"];
        let folds = leave_one_group_out(&groups).unwrap();
        let names: Vec<&str> = folds.iter().map(|(g, _)| *g).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(folds[0].1.test, [0, 2]);
        assert_eq!(folds[0].1.train, [1, 3, 4]);
        assert_eq!(folds[2].1.test, [3]);
        assert!(leave_one_group_out(&["x", "x"]).is_err());
    }

    #[test]
    fn r2_and_rmse_on_known_data() {
        let y = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(r2(&y, &y), 1.0);
        assert_eq!(rmse(&y, &y), 0.0);
        // Predicting the mean explains nothing.
        assert!((r2(&y, &[2.5; 4])).abs() < 1e-12);
        // Residuals (0.5, -0.5, 0.5, -0.5): SS_res = 1, SS_tot = 5.
        let p = [0.5, 2.5, 2.5, 4.5];
        assert!((r2(&y, &p) - 0.8).abs() < 1e-12);
        assert!((rmse(&y, &p) - 0.5).abs() < 1e-12);
        // Worse than the mean gives negative R².
        assert!(r2(&y, &[4.0, 3.0, 2.0, 1.0]) < 0.0);
        let s = Score::of(&y, &p).unwrap();
        assert_eq!(s.n, 4);
        assert!(Score::of(&y, &p[..3]).is_err());
        assert!(Score::of(&[], &[]).is_err());
    }
}
