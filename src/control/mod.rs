//! The agent <-> serving-pod control socket: a gRPC server per GPU on a Unix socket
//! (`<root>/<uuid>/control.sock` on the node; the device plugin's Allocate mounts the
//! directory into the pod that gets the GPU). The pod sends clock set-calls and its unit
//! timings; the agent sets clocks through the GPU backend, with the clock guard's write-ahead
//! record, and returns the effective clocks and the energy counter.
//!
//! Only the container that holds the GPU may control it. The socket is reachable by anyone who
//! can see the file, so authorization is by peer credentials: SO_PEERCRED gives the caller's
//! pid, `/proc/<pid>/cgroup` its pod UID, a [`PodDirectory`] the pod's namespace and name, and
//! the kubelet's pod-resources API `List` which pod holds the GPU. Anyone else gets
//! PERMISSION_DENIED.
//!
//! - [`identity`]: cgroup parsing (pod UID and container ID from every cgroup layout in use).
//! - [`authz`]: the authorizer (pid → pod → holder check), with a short decision cache.
//! - [`service`]: the `GpuControl` service and the per-GPU server.
//! - [`client`]: the serving pod's side.
//! - [`node`]: the per-node runtime (device plugin + health + control servers) the agent runs.
//! - [`remote`]: `eali serve`'s clock actuator over the socket (`EALI_CONTROL_SOCKET`).

pub mod authz;
pub mod client;
pub mod identity;
pub mod node;
pub mod remote;
pub mod service;

/// Generated types of the control protocol (package `eali.control.v1`).
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("eali.control.v1");

    impl ServingWindow {
        /// Requests answered per second over the window (0 for an empty window).
        pub fn requests_per_second(&self) -> f64 {
            if self.window_s > 0.0 {
                self.requests as f64 / self.window_s
            } else {
                0.0
            }
        }

        /// The pod's estimate of the energy saved against maximum clocks.
        pub fn energy_saved_ratio(&self) -> Option<f64> {
            crate::telemetry::window::saved_ratio(
                self.predicted_energy_j?,
                self.max_clock_energy_j?,
            )
        }
    }
}

pub use authz::{
    Authorizer, Decision, FilePodDirectory, PodDirectory, PodName, StaticPodDirectory,
};
pub use client::ControlClient;
pub use identity::{PodRef, pod_of_cgroup};
pub use node::{NodeConfig, NodeHooks, run_node, run_node_with};
pub use service::{
    AttributedTiming, AttributedWindow, ClockObserver, ControlServer, ControlService,
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Socket(#[from] crate::deviceplugin::DevicePluginError),
    #[error("cannot read {path}: {source}")]
    Proc {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("kubelet pod-resources API: {0}")]
    PodResources(String),
    #[error("pod lookup: {0}")]
    Directory(String),
    #[error("{0} task failed")]
    Task(String),
    #[error("control call failed: {0}")]
    Rpc(#[from] tonic::Status),
}
