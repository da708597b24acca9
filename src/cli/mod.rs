//! Command-line subcommands. Each lives in its own file with its argument struct and handler.

use clap::{Parser, Subcommand};

pub mod agent;
pub mod bench;
pub mod calibrate;
pub mod crd;
pub mod demo;
pub mod files;
pub mod fit;
pub mod gpu;
pub mod load;
pub mod models;
pub mod plan;
pub mod profile;
pub mod serve;

#[derive(Debug, Parser)]
#[command(
    name = "eali",
    version,
    about = "Energy-aware layer-level scheduling for CNN inference on GPUs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the model zoo with parameters and MACs.
    Models(models::Args),
    /// Measure per-layer time and energy over batch sizes and clocks; write a profile file.
    Profile(profile::Args),
    /// Train and cross-validate the layer power prediction model from profile files.
    Fit(fit::Args),
    /// Explain the plan for a model, GPU, SLO and arrival rate.
    Plan(plan::Args),
    /// Run EALI against the baselines in the discrete-event simulator.
    Bench(bench::Args),
    /// Run the node agent: InferenceService controller (leader-elected) after startup checks.
    Agent(agent::Args),
    /// Print the InferenceService CRD generated from the Rust types.
    Crd(crd::Args),
    /// Check the simulated GPU against published measurements (published vs simulated table).
    Calibrate(calibrate::Args),
    /// The GPUs through NVML: list, read-only check, switch-latency calibration.
    Gpu(gpu::Args),
    /// Serve models over the Open Inference Protocol v2 (REST + gRPC) with the EALI loop.
    Serve(serve::Args),
    /// Open-loop load generator for any Open Inference Protocol v2 endpoint (REST or gRPC).
    Load(load::Args),
    /// One-minute tour: ResNet-50 on a simulated V100 under rising and falling load, EALI vs
    /// max clocks side by side, with per-layer energy.
    Demo(demo::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Models(a) => models::run(a),
        Command::Profile(a) => profile::run(a),
        Command::Fit(a) => fit::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Crd(a) => crd::run(a),
        Command::Calibrate(a) => calibrate::run(a),
        Command::Gpu(a) => gpu::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Load(a) => load::run(a),
        Command::Demo(a) => demo::run(a),
    }
}
