//! Training the layer power prediction model from profiles, as in the EALI pipeline: data
//! sampling and preprocessing, training several classic regressors, 10-fold cross-validation
//! (R², RMSE), a leave-one-model-out check (train without model X, predict X), and choosing the
//! best by cross-validated RMSE.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{PerfError, Result};
use super::features::LayerFeatures;
use super::power_model::{ModelScores, PowerModel, TrainingSet, feature_set_for, rows};
use super::profile::Profile;
use super::regress::{BoostParams, ForestParams, RegressorKind, RegressorSpec, RidgeParams};
use super::stats::{Fold, Score, kfold, leave_one_group_out};

/// How to train and validate.
#[derive(Debug, Clone, PartialEq)]
pub struct FitConfig {
    pub seed: u64,
    pub folds: usize,
    /// Cap on training rows after de-duplication (uniform seeded sample): tree fitting cost grows
    /// with rows × nodes, and neighbouring grid points carry little new information.
    pub max_rows: usize,
    pub candidates: Vec<RegressorSpec>,
    /// Also score each candidate on each model with that model left out of training.
    pub leave_one_model_out: bool,
    /// Worker threads for the validation fits (results do not depend on it).
    pub threads: usize,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            folds: 10,
            max_rows: 3000,
            candidates: default_candidates(),
            leave_one_model_out: true,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Ridge, random forest and gradient-boosted trees with settings that suit a few thousand rows.
pub fn default_candidates() -> Vec<RegressorSpec> {
    vec![
        RegressorSpec::Ridge(RidgeParams { alpha: 1.0 }),
        RegressorSpec::RandomForest(ForestParams {
            n_trees: 40,
            max_depth: 12,
            min_samples_leaf: 3,
            mtry: Some(6),
        }),
        RegressorSpec::GradientBoosting(BoostParams {
            n_trees: 150,
            learning_rate: 0.1,
            max_depth: 4,
            min_samples_leaf: 3,
            subsample: 0.7,
        }),
    ]
}

/// Training rows drawn from profiles of one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub gpu: String,
    pub max_clock_mhz: u32,
    /// Models in the order their profiles came.
    pub models: Vec<String>,
    /// Profile records before de-duplication.
    pub records: usize,
    /// Rows after de-duplication, before sampling.
    pub distinct: usize,
    pub features: Vec<LayerFeatures>,
    pub power_w: Vec<f64>,
    /// Model each row came from.
    pub groups: Vec<String>,
}

/// Builds the training set: records of identical layers (same kind, work, batch and clock, as
/// repeated blocks give) within a model are averaged into one row, then at most `max_rows` rows
/// are kept by a seeded uniform sample.
pub fn dataset(profiles: &[Profile], max_rows: usize, seed: u64) -> Result<Dataset> {
    let first = profiles.first().ok_or(PerfError::NotEnoughData {
        what: "fitting (profiles)",
        have: 0,
        need: 1,
    })?;
    let gpus: Vec<&str> = profiles.iter().map(|p| p.gpu.name.as_str()).collect();
    if gpus.iter().any(|g| *g != first.gpu.name) {
        return Err(PerfError::InvalidInput(format!(
            "profiles are from different GPUs ({}); a power model is per GPU",
            dedup(&gpus).join(", ")
        )));
    }
    if profiles
        .iter()
        .any(|p| p.gpu.max_clock_mhz != first.gpu.max_clock_mhz)
    {
        return Err(PerfError::InvalidInput(
            "profiles disagree on the GPU's maximum clock".into(),
        ));
    }
    let mut ds = Dataset {
        gpu: first.gpu.name.clone(),
        max_clock_mhz: first.gpu.max_clock_mhz,
        models: Vec::new(),
        records: 0,
        distinct: 0,
        features: Vec::new(),
        power_w: Vec::new(),
        groups: Vec::new(),
    };
    for p in profiles {
        if !ds.models.contains(&p.model) {
            ds.models.push(p.model.clone());
        }
        // BTreeMap keeps the row order independent of hashing.
        type Key = (usize, u64, u64, u32, u32);
        let mut acc: BTreeMap<Key, (f64, f64, u32, LayerFeatures)> = BTreeMap::new();
        for r in &p.records {
            ds.records += 1;
            let f = LayerFeatures::from_record(r, p.gpu.max_clock_mhz);
            if !f.is_valid() || !r.power_w.is_finite() {
                continue;
            }
            let kind = super::features::KINDS
                .iter()
                .position(|k| *k == r.kind)
                .unwrap_or(0);
            let key = (
                kind,
                r.flops.to_bits(),
                r.bytes.to_bits(),
                r.batch,
                r.clock_mhz,
            );
            let e = acc.entry(key).or_insert((0.0, 0.0, 0, f));
            e.0 += r.time_s;
            e.1 += r.power_w;
            e.2 += 1;
        }
        for (t, w, n, f) in acc.into_values() {
            let n = f64::from(n);
            ds.features.push(LayerFeatures { time_s: t / n, ..f });
            ds.power_w.push(w / n);
            ds.groups.push(p.model.clone());
        }
    }
    ds.distinct = ds.features.len();
    if ds.distinct > max_rows {
        let mut keep =
            sample(&mut ChaCha8Rng::seed_from_u64(seed), ds.distinct, max_rows).into_vec();
        keep.sort_unstable();
        ds.features = keep.iter().map(|&i| ds.features[i]).collect();
        ds.power_w = keep.iter().map(|&i| ds.power_w[i]).collect();
        ds.groups = keep.iter().map(|&i| ds.groups[i].clone()).collect();
    }
    Ok(ds)
}

fn dedup<'a>(v: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for s in v {
        if !out.contains(s) {
            out.push(s);
        }
    }
    out
}

/// Validation of one candidate regressor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateReport {
    pub spec: RegressorSpec,
    /// Pooled out-of-fold predictions of the k-fold cross-validation.
    pub cv: Score,
    /// Per held-out model: trained on all other models.
    pub leave_one_model_out: Vec<(String, Score)>,
    /// Mean R² and mean RMSE over the held-out models (n = rows scored in all).
    pub leave_one_model_out_mean: Option<Score>,
}

impl CandidateReport {
    pub fn kind(&self) -> RegressorKind {
        self.spec.kind()
    }
}

/// Everything `eali fit` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    pub gpu: String,
    pub models: Vec<String>,
    pub records: usize,
    pub distinct: usize,
    pub rows: usize,
    pub folds: usize,
    pub seed: u64,
    pub candidates: Vec<CandidateReport>,
    pub chosen: RegressorKind,
}

/// Validates every candidate, picks the one with the lowest cross-validated RMSE and fits it on
/// all rows.
pub fn fit_power_model(profiles: &[Profile], cfg: &FitConfig) -> Result<(PowerModel, FitReport)> {
    if cfg.candidates.is_empty() {
        return Err(PerfError::InvalidInput("no candidate regressors".into()));
    }
    let ds = dataset(profiles, cfg.max_rows, cfg.seed)?;
    let cv_folds = kfold(ds.features.len(), cfg.folds, cfg.seed)?;
    let lomo_folds = if cfg.leave_one_model_out && ds.models.len() > 1 {
        leave_one_group_out(&ds.groups)?
    } else {
        Vec::new()
    };

    // Every (candidate, split) fit is independent: run them on a few threads, results by index.
    let splits: Vec<&Fold> = cv_folds
        .iter()
        .chain(lomo_folds.iter().map(|(_, f)| f))
        .collect();
    let jobs: Vec<(usize, usize)> = (0..cfg.candidates.len())
        .flat_map(|c| (0..splits.len()).map(move |s| (c, s)))
        .collect();
    let cand_rows: Vec<Vec<Vec<f64>>> = cfg
        .candidates
        .iter()
        .map(|s| rows(&ds.features, feature_set_for(s.kind())))
        .collect();
    let preds = par_map(&jobs, cfg.threads, |&(c, s)| {
        let fold = splits[s];
        let x = &cand_rows[c];
        let train_x: Vec<Vec<f64>> = fold.train.iter().map(|&i| x[i].clone()).collect();
        let train_y: Vec<f64> = fold.train.iter().map(|&i| ds.power_w[i]).collect();
        let test_x: Vec<Vec<f64>> = fold.test.iter().map(|&i| x[i].clone()).collect();
        cfg.candidates[c]
            .fit(&train_x, &train_y, cfg.seed)?
            .predict(&test_x)
    });

    let mut candidates = Vec::with_capacity(cfg.candidates.len());
    let mut preds = preds.into_iter();
    for spec in &cfg.candidates {
        let mut oof = vec![f64::NAN; ds.features.len()];
        for fold in &cv_folds {
            let p = preds
                .next()
                .ok_or_else(|| internal("missing CV result"))??;
            for (&i, v) in fold.test.iter().zip(p) {
                oof[i] = v;
            }
        }
        let cv = Score::of(&ds.power_w, &oof)?;
        let mut lomo = Vec::with_capacity(lomo_folds.len());
        for (model, fold) in &lomo_folds {
            let p = preds
                .next()
                .ok_or_else(|| internal("missing held-out result"))??;
            let y: Vec<f64> = fold.test.iter().map(|&i| ds.power_w[i]).collect();
            lomo.push((model.clone(), Score::of(&y, &p)?));
        }
        let lomo_mean = (!lomo.is_empty()).then(|| {
            let k = lomo.len() as f64;
            Score {
                r2: lomo.iter().map(|(_, s)| s.r2).sum::<f64>() / k,
                rmse: lomo.iter().map(|(_, s)| s.rmse).sum::<f64>() / k,
                n: lomo.iter().map(|(_, s)| s.n).sum(),
            }
        });
        candidates.push(CandidateReport {
            spec: *spec,
            cv,
            leave_one_model_out: lomo,
            leave_one_model_out_mean: lomo_mean,
        });
    }

    let best = candidates
        .iter()
        .min_by(|a, b| a.cv.rmse.total_cmp(&b.cv.rmse))
        .ok_or_else(|| internal("no candidates"))?
        .clone();
    let mut model = PowerModel::train(
        &ds.gpu,
        ds.max_clock_mhz,
        ds.models.clone(),
        best.spec,
        cfg.seed,
        TrainingSet {
            features: ds.features.clone(),
            power_w: ds.power_w.clone(),
        },
    )?;
    model.set_scores(ModelScores {
        folds: cfg.folds,
        cv: best.cv,
        leave_one_model_out: best.leave_one_model_out_mean,
    });
    let report = FitReport {
        gpu: ds.gpu,
        models: ds.models,
        records: ds.records,
        distinct: ds.distinct,
        rows: ds.features.len(),
        folds: cfg.folds,
        seed: cfg.seed,
        candidates,
        chosen: best.spec.kind(),
    };
    Ok((model, report))
}

fn internal(what: &str) -> PerfError {
    PerfError::InvalidInput(format!("internal: {what}"))
}

/// Maps `f` over `items` on up to `threads` scoped threads; output order follows input order.
fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let f = &f;
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    items
                        .iter()
                        .enumerate()
                        .skip(t)
                        .step_by(threads)
                        .map(|(i, item)| (i, f(item)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A panicking worker is a bug in a regressor: surface it rather than hide it.
            for (i, r) in h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)) {
                slots[i] = Some(r);
            }
        }
    });
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_map_keeps_order_for_any_thread_count() {
        let items: Vec<u32> = (0..37).collect();
        let want: Vec<u32> = items.iter().map(|x| x * x).collect();
        for t in [1, 2, 3, 8, 100] {
            assert_eq!(par_map(&items, t, |x| x * x), want);
        }
        assert!(par_map(&[] as &[u32], 4, |x| *x).is_empty());
    }
}
