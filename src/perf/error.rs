//! Errors of the performance model: profiling, fitting, loading and table building.

use crate::gpu::GpuError;

/// Everything that can go wrong in `perf`.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    #[error("GPU backend: {0}")]
    Gpu(#[from] GpuError),
    #[error("executor: {0}")]
    Exec(#[from] crate::exec::ExecError),
    #[error(
        "clock {requested_mhz} MHz not in force after {waited_s:.3} s (GPU reports {actual_mhz} MHz)"
    )]
    ClockNotReached {
        requested_mhz: u32,
        actual_mhz: u32,
        waited_s: f64,
    },
    #[error("energy counter did not advance in {waited_s} s")]
    CounterStuck { waited_s: f64 },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("not enough data for {what}: have {have}, need at least {need}")]
    NotEnoughData {
        what: &'static str,
        have: usize,
        need: usize,
    },
    #[error("fitting {what} failed: {reason}")]
    Fit { what: &'static str, reason: String },
    #[error("bad JSON: {0}")]
    Json(#[source] serde_json::Error),
}

pub type Result<T, E = PerfError> = std::result::Result<T, E>;
