//! EALI: energy-aware layer-level scheduling for CNN inference on GPUs.
//!
//! The pure core (`model`, `perf`, `eali`, `policy`, `stats`) takes plain data and returns
//! decisions; hardware sits behind the traits in [`gpu`]; `sim` is the simulator and bench that
//! evaluate the policies. `docs/architecture.md` describes the layers.

pub mod agent;
pub mod cli;
pub mod control;
pub mod deviceplugin;
pub mod eali;
pub mod exec;
pub mod gpu;
pub mod k8s;
pub mod load;
pub mod model;
pub mod perf;
pub mod policy;
pub mod serve;
pub mod sim;
pub mod stats;
pub mod telemetry;
