//! EALI: energy-aware layer-level scheduling for CNN inference on GPUs.
//!
//! The pure core (`model`, `perf`, `eali`, `sim`) takes plain data and returns decisions; hardware
//! sits behind the traits in [`gpu`].

pub mod agent;
pub mod cli;
pub mod control;
pub mod deviceplugin;
pub mod eali;
pub mod exec;
pub mod gpu;
pub mod k8s;
pub mod model;
pub mod perf;
pub mod serve;
pub mod sim;
pub mod telemetry;
