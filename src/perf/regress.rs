//! Classic regressors for the power model, all on top of smartcore: ridge regression on
//! standardised features, a random forest, and gradient-boosted regression trees (the boosting loop
//! is here because smartcore has none; every tree is smartcore's `DecisionTreeRegressor`).
//!
//! Rows are plain `Vec<f64>` feature vectors; this module turns them into smartcore matrices.

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_regressor::{
    RandomForestRegressor, RandomForestRegressorParameters,
};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::ridge_regression::{
    RidgeRegression, RidgeRegressionParameters, RidgeRegressionSolverName,
};
use smartcore::tree::decision_tree_regressor::{
    DecisionTreeRegressor, DecisionTreeRegressorParameters,
};

use super::error::{PerfError, Result};

type Matrix = DenseMatrix<f64>;
type Tree = DecisionTreeRegressor<f64, f64, Matrix, Vec<f64>>;
type Forest = RandomForestRegressor<f64, f64, Matrix, Vec<f64>>;

/// The regressor families the power model chooses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegressorKind {
    Ridge,
    RandomForest,
    GradientBoosting,
}

impl RegressorKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ridge => "ridge",
            Self::RandomForest => "random forest",
            Self::GradientBoosting => "gradient boosting",
        }
    }
}

/// Ridge regression: L2-penalised least squares on standardised features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RidgeParams {
    /// Penalty on the standardised coefficients.
    pub alpha: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ForestParams {
    pub n_trees: usize,
    pub max_depth: u16,
    pub min_samples_leaf: usize,
    /// Features tried per split; `None` means all (a bagged-trees forest).
    pub mtry: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoostParams {
    pub n_trees: usize,
    pub learning_rate: f64,
    pub max_depth: u16,
    pub min_samples_leaf: usize,
    /// Fraction of rows each tree sees (stochastic gradient boosting), in (0, 1].
    pub subsample: f64,
}

/// A regressor family with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RegressorSpec {
    Ridge(RidgeParams),
    RandomForest(ForestParams),
    GradientBoosting(BoostParams),
}

impl RegressorSpec {
    pub fn kind(&self) -> RegressorKind {
        match self {
            Self::Ridge(_) => RegressorKind::Ridge,
            Self::RandomForest(_) => RegressorKind::RandomForest,
            Self::GradientBoosting(_) => RegressorKind::GradientBoosting,
        }
    }

    /// Fits on rows `x` (all of one width) and targets `y`; deterministic under `seed`.
    pub fn fit(&self, x: &[Vec<f64>], y: &[f64], seed: u64) -> Result<Fitted> {
        check_shape(x, y)?;
        match self {
            Self::Ridge(p) => fit_ridge(x, y, *p).map(Fitted::Ridge),
            Self::RandomForest(p) => fit_forest(x, y, *p, seed).map(Fitted::Forest),
            Self::GradientBoosting(p) => fit_boost(x, y, *p, seed).map(Fitted::Boost),
        }
    }
}

/// A fitted regressor.
#[derive(Debug)]
pub enum Fitted {
    Ridge(LinearFit),
    Forest(Box<Forest>),
    Boost(Boosted),
}

impl Fitted {
    /// Predicts one value per row.
    pub fn predict(&self, x: &[Vec<f64>]) -> Result<Vec<f64>> {
        if x.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Self::Ridge(l) => x.iter().map(|r| l.predict_row(r)).collect(),
            Self::Forest(f) => f.predict(&matrix(x)?).map_err(fit_err("random forest")),
            Self::Boost(b) => b.predict(x),
        }
    }
}

/// A linear model in the original feature space: ŷ = intercept + Σ coef_j · (x_j − mean_j) / scale_j.
/// Plain numbers, so it is saved as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearFit {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    pub coef: Vec<f64>,
    pub intercept: f64,
}

impl LinearFit {
    fn predict_row(&self, row: &[f64]) -> Result<f64> {
        if row.len() != self.coef.len() {
            return Err(PerfError::InvalidInput(format!(
                "row has {} features, model expects {}",
                row.len(),
                self.coef.len()
            )));
        }
        let dot: f64 = row
            .iter()
            .zip(&self.mean)
            .zip(&self.scale)
            .zip(&self.coef)
            .map(|(((x, m), s), c)| c * (x - m) / s)
            .sum();
        Ok(self.intercept + dot)
    }
}

/// Gradient-boosted regression trees (squared loss): a constant plus shrunken residual trees.
#[derive(Debug)]
pub struct Boosted {
    base: f64,
    learning_rate: f64,
    trees: Vec<Tree>,
}

impl Boosted {
    fn predict(&self, x: &[Vec<f64>]) -> Result<Vec<f64>> {
        let m = matrix(x)?;
        let mut out = vec![self.base; x.len()];
        for t in &self.trees {
            let p = t.predict(&m).map_err(fit_err("boosted tree"))?;
            for (o, v) in out.iter_mut().zip(p) {
                *o += self.learning_rate * v;
            }
        }
        Ok(out)
    }
}

fn fit_err(what: &'static str) -> impl Fn(smartcore::error::Failed) -> PerfError {
    move |e| PerfError::Fit {
        what,
        reason: e.to_string(),
    }
}

fn check_shape(x: &[Vec<f64>], y: &[f64]) -> Result<()> {
    if x.len() != y.len() {
        return Err(PerfError::InvalidInput(format!(
            "{} rows but {} targets",
            x.len(),
            y.len()
        )));
    }
    if x.len() < 2 {
        return Err(PerfError::NotEnoughData {
            what: "regression",
            have: x.len(),
            need: 2,
        });
    }
    let width = x[0].len();
    if width == 0 || x.iter().any(|r| r.len() != width) {
        return Err(PerfError::InvalidInput(
            "feature rows must be non-empty and of equal width".into(),
        ));
    }
    if x.iter().flatten().chain(y).any(|v| !v.is_finite()) {
        return Err(PerfError::InvalidInput(
            "features and targets must be finite".into(),
        ));
    }
    Ok(())
}

fn matrix(x: &[Vec<f64>]) -> Result<Matrix> {
    let ncols = x.first().map_or(0, Vec::len);
    let values: Vec<f64> = x.iter().flatten().copied().collect();
    DenseMatrix::new(x.len(), ncols, values, false).map_err(fit_err("feature matrix"))
}

fn fit_ridge(x: &[Vec<f64>], y: &[f64], p: RidgeParams) -> Result<LinearFit> {
    let (n, width) = (x.len(), x[0].len());
    if n <= width {
        return Err(PerfError::NotEnoughData {
            what: "ridge regression (rows must exceed features)",
            have: n,
            need: width + 1,
        });
    }
    // Standardise here rather than with smartcore's `normalize`, which refuses constant columns
    // (a layer kind absent from a training fold is one); a constant column gets scale 1 and,
    // being centred to zero, coefficient 0.
    let nf = n as f64;
    let mean: Vec<f64> = (0..width)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / nf)
        .collect();
    let scale: Vec<f64> = (0..width)
        .map(|j| {
            let var = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / nf;
            if var > 1e-24 { var.sqrt() } else { 1.0 }
        })
        .collect();
    let y_mean = y.iter().sum::<f64>() / nf;
    let z: Vec<Vec<f64>> = x
        .iter()
        .map(|r| (0..width).map(|j| (r[j] - mean[j]) / scale[j]).collect())
        .collect();
    let yc: Vec<f64> = y.iter().map(|v| v - y_mean).collect();
    let params = RidgeRegressionParameters::default()
        .with_alpha(p.alpha)
        .with_normalize(false)
        .with_solver(RidgeRegressionSolverName::Cholesky);
    let fitted = RidgeRegression::fit(&matrix(&z)?, &yc, params).map_err(fit_err("ridge"))?;
    let coef: Vec<f64> = (0..width)
        .map(|j| *fitted.coefficients().get((j, 0)))
        .collect();
    Ok(LinearFit {
        mean,
        scale,
        coef,
        intercept: y_mean,
    })
}

fn fit_forest(x: &[Vec<f64>], y: &[f64], p: ForestParams, seed: u64) -> Result<Box<Forest>> {
    let width = x[0].len();
    let params = RandomForestRegressorParameters::default()
        .with_n_trees(p.n_trees.max(1))
        .with_max_depth(p.max_depth)
        .with_min_samples_leaf(p.min_samples_leaf.max(1))
        .with_min_samples_split(2 * p.min_samples_leaf.max(1))
        .with_m(p.mtry.unwrap_or(width).clamp(1, width))
        .with_seed(seed);
    RandomForestRegressor::fit(&matrix(x)?, &y.to_vec(), params)
        .map(Box::new)
        .map_err(fit_err("random forest"))
}

fn fit_boost(x: &[Vec<f64>], y: &[f64], p: BoostParams, seed: u64) -> Result<Boosted> {
    let valid = p.subsample > 0.0 && p.subsample <= 1.0 && p.learning_rate > 0.0;
    if !valid {
        return Err(PerfError::InvalidInput(format!(
            "boosting needs 0 < subsample ≤ 1 and learning_rate > 0, got {} and {}",
            p.subsample, p.learning_rate
        )));
    }
    let n = x.len();
    let full = matrix(x)?;
    let base = y.iter().sum::<f64>() / n as f64;
    let mut fit = vec![base; n];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let take = ((n as f64 * p.subsample).round() as usize).clamp(2, n);
    let mut trees = Vec::with_capacity(p.n_trees);
    for m in 0..p.n_trees {
        let mut rows: Vec<usize> = if take < n {
            sample(&mut rng, n, take).into_vec()
        } else {
            (0..n).collect()
        };
        rows.sort_unstable();
        let sub_x: Vec<Vec<f64>> = rows.iter().map(|&i| x[i].clone()).collect();
        let residual: Vec<f64> = rows.iter().map(|&i| y[i] - fit[i]).collect();
        let params = DecisionTreeRegressorParameters {
            max_depth: Some(p.max_depth),
            min_samples_leaf: p.min_samples_leaf.max(1),
            min_samples_split: 2 * p.min_samples_leaf.max(1),
            seed: Some(seed.wrapping_add(m as u64)),
        };
        let tree = DecisionTreeRegressor::fit(&matrix(&sub_x)?, &residual, params)
            .map_err(fit_err("boosted tree"))?;
        let step = tree.predict(&full).map_err(fit_err("boosted tree"))?;
        for (f, s) in fit.iter_mut().zip(step) {
            *f += p.learning_rate * s;
        }
        trees.push(tree);
    }
    Ok(Boosted {
        base,
        learning_rate: p.learning_rate,
        trees,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::stats::r2;

    /// y = 3 + 2·x0 − 0.5·x1 + 0·x2 (x2 is an irrelevant constant column).
    fn linear_data() -> (Vec<Vec<f64>>, Vec<f64>) {
        let x: Vec<Vec<f64>> = (0..60)
            .map(|i| {
                let a = f64::from(i) * 0.37 % 5.0;
                let b = f64::from(i * i % 17);
                vec![a, b, 1.0]
            })
            .collect();
        let y = x.iter().map(|r| 3.0 + 2.0 * r[0] - 0.5 * r[1]).collect();
        (x, y)
    }

    #[test]
    fn ridge_recovers_a_known_linear_relation() {
        let (x, y) = linear_data();
        let spec = RegressorSpec::Ridge(RidgeParams { alpha: 1e-8 });
        let Fitted::Ridge(l) = spec.fit(&x, &y, 0).unwrap() else {
            panic!("ridge spec must give a linear fit")
        };
        // Back in the original space: slope_j = coef_j / scale_j.
        let slopes: Vec<f64> = l.coef.iter().zip(&l.scale).map(|(c, s)| c / s).collect();
        assert!((slopes[0] - 2.0).abs() < 1e-6, "{slopes:?}");
        assert!((slopes[1] + 0.5).abs() < 1e-6, "{slopes:?}");
        assert_eq!(slopes[2], 0.0);
        let p = Fitted::Ridge(l.clone())
            .predict(&[vec![1.0, 4.0, 1.0]])
            .unwrap();
        assert!((p[0] - 3.0).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn ridge_penalty_shrinks_coefficients() {
        let (x, y) = linear_data();
        let fit = |alpha| match RegressorSpec::Ridge(RidgeParams { alpha }).fit(&x, &y, 0) {
            Ok(Fitted::Ridge(l)) => l.coef[0].abs(),
            other => panic!("{other:?}"),
        };
        assert!(fit(1000.0) < 0.5 * fit(1e-6));
    }

    #[test]
    fn trees_fit_a_nonlinear_function_and_are_deterministic() {
        let x: Vec<Vec<f64>> = (0..200)
            .map(|i| vec![f64::from(i) / 20.0, f64::from(i % 7)])
            .collect();
        let y: Vec<f64> = x.iter().map(|r| (r[0]).sin() * 10.0 + r[1]).collect();
        let specs = [
            RegressorSpec::RandomForest(ForestParams {
                n_trees: 20,
                max_depth: 10,
                min_samples_leaf: 1,
                mtry: None,
            }),
            RegressorSpec::GradientBoosting(BoostParams {
                n_trees: 60,
                learning_rate: 0.2,
                max_depth: 4,
                min_samples_leaf: 2,
                subsample: 0.8,
            }),
        ];
        for spec in specs {
            let a = spec.fit(&x, &y, 11).unwrap().predict(&x).unwrap();
            let b = spec.fit(&x, &y, 11).unwrap().predict(&x).unwrap();
            assert_eq!(a, b, "{:?} not deterministic", spec.kind());
            assert!(r2(&y, &a) > 0.95, "{:?}: R² {}", spec.kind(), r2(&y, &a));
        }
        // Ridge cannot follow a sine: the trees must beat it on this data.
        let lin = RegressorSpec::Ridge(RidgeParams { alpha: 1.0 })
            .fit(&x, &y, 0)
            .unwrap()
            .predict(&x)
            .unwrap();
        assert!(r2(&y, &lin) < 0.9);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let spec = RegressorSpec::Ridge(RidgeParams { alpha: 1.0 });
        assert!(spec.fit(&[vec![1.0], vec![2.0]], &[1.0], 0).is_err());
        assert!(
            spec.fit(&[vec![1.0], vec![f64::NAN]], &[1.0, 2.0], 0)
                .is_err()
        );
        assert!(
            spec.fit(&[vec![1.0, 2.0], vec![2.0]], &[1.0, 2.0], 0)
                .is_err()
        );
    }
}
