//! Kubernetes side of EALI: the `InferenceService` CRD types, the controller that turns them into
//! serving Deployments and Services, leader election through a Lease, and startup checks.
//!
//! Pure pieces (object building, status aggregation, scaling decisions, lease arithmetic) are plain
//! functions tested without a cluster; the async parts talk to a real API server in
//! `tests/k8s_*.rs`.

pub mod checks;
pub mod controller;
pub mod crd;
pub mod lease;
pub mod node_status;
pub mod objects;
pub mod report;
pub mod status;

/// Errors of the Kubernetes layer.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// YAML could not be written or read.
    #[error("YAML: {0}")]
    Yaml(String),
    /// A call to the API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object lacks something the controller needs (name, namespace, uid).
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// The controller task ended abnormally (panicked or was cancelled).
    #[error("controller task: {0}")]
    Task(String),
}
