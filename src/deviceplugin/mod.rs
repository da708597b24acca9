//! The kubelet device plugin (API v1beta1) for the extended resource `eali.dev/gpu`: tonic
//! servers and clients over Unix sockets, registration with retry and re-registration when the
//! kubelet restarts, device health from the GPU backend's XID/ECC events (with a way back to
//! Healthy), and the Allocate answer that hands a serving pod its GPU and control socket.
//!
//! - [`devices`]: the device table (what ListAndWatch streams) and preferred allocation.
//! - [`health`]: XID/ECC policy and the polling monitor that feeds the table.
//! - [`service`]: the `DevicePlugin` gRPC service.
//! - [`runner`]: socket lifecycle, registration with backoff, kubelet restart detection.
//! - [`harness`]: a kubelet stand-in that speaks the API as the kubelet does (tests, smoke runs).
//! - [`uds`]: gRPC over Unix sockets, shared with the control socket.

pub mod authority;
pub mod devices;
pub mod harness;
pub mod health;
pub mod runner;
pub mod service;
pub mod uds;

/// Generated types of the kubelet device plugin API (package `v1beta1`).
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("v1beta1");
}

/// Generated types of the kubelet pod-resources API (package `v1`).
#[allow(clippy::all, clippy::pedantic)]
pub mod podresources {
    tonic::include_proto!("v1");
}

pub use devices::{DeviceTable, Health, PluginDevice};
pub use health::{HealthMonitor, HealthPolicy, SharedGpu};
pub use runner::{DevicePluginRunner, PluginConfig, RunnerStats};
pub use service::AllocateConfig;

/// The only device plugin API version the kubelet supports.
pub const API_VERSION: &str = "v1beta1";
/// Resource EALI advertises.
pub const RESOURCE_NAME: &str = "eali.dev/gpu";
/// Where the kubelet looks for device plugin sockets.
pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins";
/// The kubelet's registration socket name inside [`DEVICE_PLUGIN_PATH`].
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The kubelet pod-resources socket.
pub const POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

#[derive(Debug, thiserror::Error)]
pub enum DevicePluginError {
    #[error("socket {path}: {source}")]
    Socket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC transport to {what}: {source}")]
    Transport {
        what: String,
        source: tonic::transport::Error,
    },
    #[error("kubelet refused registration of {resource}: {status}")]
    Registration {
        resource: String,
        status: tonic::Status,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}
