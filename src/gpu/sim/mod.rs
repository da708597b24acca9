//! The calibrated simulated GPU: profiles (data files), physics (pure functions of a profile and
//! a clock), [`SimGpu`] on virtual time behind the [`crate::gpu::GpuBackend`] trait (its layer
//! runs are the simulated executor's, `exec::sim`), a fast path for the discrete-event simulator
//! ([`SpanCost`] + [`SimGpu::run_span`]) and the calibration checks that pin it to published
//! measurements (`docs/architecture.md`, "Simulated GPU").

mod backend;
pub mod calibration;
mod device;
mod meter;
pub mod physics;
pub mod profile;
pub mod span;

pub use device::{Fault, SimGpu};
pub use physics::{KindParams, Physics, PowerCurve, WorkParts};
pub use profile::{DefaultClock, GpuProfile, ProfileError, ProfileSpec};
pub use span::{SpanCost, SpanRun};

#[cfg(test)]
mod tests;
