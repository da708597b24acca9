//! Discrete-event simulation of an inference server on the simulated GPU: workloads (arrival
//! processes), the event loop that runs the policies of [`crate::policy`], the offline oracle
//! and ground truth, and the bench harness with its reports and plots. Virtual time throughout; deterministic under a seed.

pub mod bench;
pub mod des;
pub mod device;
pub mod metrics;
pub mod oracle;
pub mod plot;
pub mod truth;
pub mod workload;

// The policies the simulator runs live in their own layer; these paths keep the bench's callers.
pub use crate::policy;
pub use crate::policy::baselines;
pub use crate::policy::controller as eali_policy;

#[cfg(test)]
mod attribution_tests;
#[cfg(test)]
mod des_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod testdev;

pub use des::{SimConfig, SimError, run};
pub use device::{Device, SpanTable};
pub use metrics::{RunResult, Timeline};
pub use policy::{Action, BatchDone, BatchPlan, ClockTarget, Policy, SetCall};
pub use workload::{Workload, WorkloadError, WorkloadKind};
