//! The fitted layer power prediction model: predicts a layer's mean board power (W) from its
//! [`LayerFeatures`], and its file format.
//!
//! Persistence: a ridge model is saved as its coefficients. Tree ensembles are saved as their
//! training set (the sampled [`LayerFeatures`] and measured powers), the regressor's
//! hyper-parameters and the seed, and are refitted deterministically on load: smartcore's fitted
//! trees only serialise with its `serde` feature (which pulls in `typetag`), and a forest saved
//! node by node is tens of MB of JSON where the training set is well under one.

use serde::{Deserialize, Serialize};

use super::error::{PerfError, Result};
use super::features::{FeatureSet, LayerFeatures};
use super::profile::to_pretty_json;
use super::regress::{Fitted, LinearFit, RegressorKind, RegressorSpec};
use super::stats::Score;

/// Version of the power-model file layout.
pub const POWER_MODEL_FORMAT: u32 = 1;

/// Cross-validation scores kept with a model, for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelScores {
    pub folds: usize,
    pub cv: Score,
    /// Mean over held-out models of the leave-one-model-out scores (absent with one model).
    pub leave_one_model_out: Option<Score>,
}

/// What a power-model file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPowerModel {
    pub format: u32,
    /// GPU name the model was trained for (profiles of other GPUs do not apply).
    pub gpu: String,
    pub max_clock_mhz: u32,
    /// Models whose profiles trained it.
    pub trained_on: Vec<String>,
    pub spec: RegressorSpec,
    pub features: FeatureSet,
    pub seed: u64,
    pub scores: Option<ModelScores>,
    /// Ridge: the fitted coefficients.
    pub linear: Option<LinearFit>,
    /// Tree ensembles: the training set, refitted on load.
    pub training: Option<TrainingSet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSet {
    pub features: Vec<LayerFeatures>,
    pub power_w: Vec<f64>,
}

/// A fitted power model.
#[derive(Debug)]
pub struct PowerModel {
    saved: SavedPowerModel,
    fitted: Fitted,
}

/// The feature set each regressor family uses.
pub fn feature_set_for(kind: RegressorKind) -> FeatureSet {
    match kind {
        RegressorKind::Ridge => FeatureSet::Linear,
        RegressorKind::RandomForest | RegressorKind::GradientBoosting => FeatureSet::Tree,
    }
}

pub(crate) fn rows(features: &[LayerFeatures], set: FeatureSet) -> Vec<Vec<f64>> {
    features.iter().map(|f| f.vector(set)).collect()
}

impl PowerModel {
    /// Fits `spec` on the whole training set.
    pub fn train(
        gpu: &str,
        max_clock_mhz: u32,
        trained_on: Vec<String>,
        spec: RegressorSpec,
        seed: u64,
        training: TrainingSet,
    ) -> Result<Self> {
        let features = feature_set_for(spec.kind());
        let fitted = spec.fit(&rows(&training.features, features), &training.power_w, seed)?;
        let (linear, training) = match &fitted {
            Fitted::Ridge(l) => (Some(l.clone()), None),
            _ => (None, Some(training)),
        };
        Ok(Self {
            saved: SavedPowerModel {
                format: POWER_MODEL_FORMAT,
                gpu: gpu.to_string(),
                max_clock_mhz,
                trained_on,
                spec,
                features,
                seed,
                scores: None,
                linear,
                training,
            },
            fitted,
        })
    }

    /// Rebuilds a model from its saved form (refitting tree ensembles).
    pub fn from_saved(saved: SavedPowerModel) -> Result<Self> {
        if saved.format != POWER_MODEL_FORMAT {
            return Err(PerfError::InvalidInput(format!(
                "power-model format {} (this build reads {POWER_MODEL_FORMAT})",
                saved.format
            )));
        }
        if saved.features != feature_set_for(saved.spec.kind()) {
            return Err(PerfError::InvalidInput(
                "feature set does not match the regressor".into(),
            ));
        }
        let fitted = match (&saved.spec, &saved.linear, &saved.training) {
            (RegressorSpec::Ridge(_), Some(l), _) => {
                let width = LayerFeatures::probe().vector(saved.features).len();
                let ok = [l.mean.len(), l.scale.len(), l.coef.len()]
                    .iter()
                    .all(|&n| n == width)
                    && l.scale.iter().all(|s| s.is_finite() && *s != 0.0);
                if !ok {
                    return Err(PerfError::InvalidInput(
                        "ridge coefficients do not match the feature set".into(),
                    ));
                }
                Fitted::Ridge(l.clone())
            }
            (spec, _, Some(t)) => {
                if t.features.iter().any(|f| !f.is_valid()) {
                    return Err(PerfError::InvalidInput(
                        "training set holds invalid features".into(),
                    ));
                }
                spec.fit(&rows(&t.features, saved.features), &t.power_w, saved.seed)?
            }
            _ => {
                return Err(PerfError::InvalidInput(
                    "power model holds neither coefficients nor a training set".into(),
                ));
            }
        };
        Ok(Self { saved, fitted })
    }

    /// Parses a saved power model (the contents of its file; the caller reads it).
    pub fn from_json(text: &str) -> Result<Self> {
        let saved: SavedPowerModel = serde_json::from_str(text).map_err(PerfError::Json)?;
        Self::from_saved(saved)
    }

    /// The model as pretty JSON with a final newline (what its file holds).
    pub fn to_json(&self) -> Result<String> {
        to_pretty_json(&self.saved)
    }

    pub fn saved(&self) -> &SavedPowerModel {
        &self.saved
    }

    pub fn kind(&self) -> RegressorKind {
        self.saved.spec.kind()
    }

    pub fn gpu(&self) -> &str {
        &self.saved.gpu
    }

    pub fn set_scores(&mut self, scores: ModelScores) {
        self.saved.scores = Some(scores);
    }

    /// Predicted mean board power (W) of one layer run. Invalid features (zero time) give NaN.
    pub fn predict(&self, f: &LayerFeatures) -> f64 {
        self.predict_many(std::slice::from_ref(f))
            .ok()
            .and_then(|v| v.first().copied())
            .unwrap_or(f64::NAN)
    }

    /// Predicted power for many layer runs at once (much faster than one by one for trees).
    pub fn predict_many(&self, fs: &[LayerFeatures]) -> Result<Vec<f64>> {
        if let Some(bad) = fs.iter().find(|f| !f.is_valid()) {
            return Err(PerfError::InvalidInput(format!(
                "cannot predict power for {bad:?}"
            )));
        }
        // Power cannot be negative; a linear model far outside its data could say so.
        Ok(self
            .fitted
            .predict(&rows(fs, self.saved.features))?
            .into_iter()
            .map(|p| p.max(0.0))
            .collect())
    }
}

impl LayerFeatures {
    /// A valid placeholder, used to learn the width of a feature set.
    pub(crate) fn probe() -> Self {
        Self {
            kind: crate::gpu::WorkKind::Conv,
            macs: 1.0,
            flops: 2.0,
            bytes: 1.0,
            batch: 1,
            clock_mhz: 1,
            max_clock_mhz: 1,
            time_s: 1.0,
        }
    }
}
