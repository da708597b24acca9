//! `eali serve`: the serving runtime. Open Inference Protocol v2 over REST ([`rest`]) and gRPC
//! ([`grpc`]), a bounded queue per model ([`queue`]), the EALI loop on a worker thread per model
//! ([`worker`]) driving an executor ([`crate::exec`]), telemetry ([`crate::telemetry`]), and the
//! standalone configuration ([`config`]): InferenceService objects in YAML, the CRD's schema.
//! [`crate::load`] is the matching open-loop load generator (`eali load`).

pub mod admission;
pub mod config;
pub mod device;
pub mod fetch;
pub mod grpc;
pub mod model;
pub mod oip;
pub mod queue;
pub mod rest;
pub mod runtime;
pub mod server;
pub mod source;
pub mod state;
pub mod worker;

pub use config::ServeConfig;
pub use runtime::{Compute, DeviceChoice, MeasuredProfile, RuntimeOptions};
pub use server::{ServeOptions, Server, shutdown_signal};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("model {name}: {reason}")]
    Model { name: String, reason: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("worker: {0}")]
    Worker(String),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
}
