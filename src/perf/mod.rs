//! The performance model: per-layer profiling through the GPU backend traits, the layer power
//! prediction model (classic regressors, cross-validated), and the predicted per-layer cost tables
//! the scheduler plans over.
//!
//! Flow: [`profile()`] measures a model on a GPU into a [`Profile`] (one record per layer, batch
//! size and clock) → [`fit_power_model`] trains and validates regressors on profiles of several
//! models and returns the best [`PowerModel`] → [`build_cost_table`] turns a profile and the power
//! model into the [`crate::eali::costs::LayerCostTable`] for any batch and clock lists.

pub mod cost_table;
pub mod error;
pub mod features;
pub mod fit;
pub mod latency;
pub mod power_model;
pub mod profile;
pub mod profiler;
pub mod regress;
pub mod stats;

pub use cost_table::{build_cost_table, build_cost_table_with};
pub use error::PerfError;
pub use features::LayerFeatures;
pub use fit::{FitConfig, FitReport, fit_power_model};
pub use power_model::PowerModel;
pub use profile::Profile;
pub use profiler::{ClockSelection, ProfileConfig, profile};
