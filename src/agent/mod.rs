//! The node agent's own parts beyond the device plugin and control sockets
//! ([`crate::control`], [`crate::deviceplugin`]): its metric families, the energy attribution of
//! the serving pods' unit timings, the clock reset when a pod releases its GPU, the
//! `/metrics` `/healthz` `/readyz` endpoint, and the loop that runs them beside the device plugin.
//!
//! - [`metrics`]: the Prometheus families (per GPU, per unit, per layer).
//! - [`energy`]: per-unit/per-layer attribution with bounded label sets.
//! - [`release`]: the pod-resources watcher that resets released GPUs.
//! - [`http`]: the HTTP endpoint.
//! - [`node`]: everything together, and the per-GPU summaries for the per-node status.

pub mod energy;
pub mod http;
pub mod kube_status;
pub mod metrics;
pub mod node;
pub mod release;

pub use energy::{EnergyConfig, GpuEnergy, SeriesTable, ServiceEnergy};
pub use http::{HttpServer, Readiness};
pub use metrics::AgentMetrics;
pub use node::{AgentNodeConfig, GpuSummary, NodeStatusSink, run_agent_node};
pub use release::{ReleasePoll, ReleaseWatcher};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot serve HTTP on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error(transparent)]
    Node(#[from] crate::control::ControlError),
}
