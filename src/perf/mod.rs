//! The performance model: per-layer profiling through the GPU backend traits, the layer power
//! prediction model (classic regressors, cross-validated), and the predicted per-layer cost tables
//! the scheduler plans over.

pub mod error;
pub mod regress;
pub mod stats;

pub use error::PerfError;
pub mod profile;
pub mod profiler;
pub mod features;
pub mod fit;
pub mod power_model;
pub mod latency;
pub mod cost_table;
