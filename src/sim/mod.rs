//! Discrete-event simulation of an inference server on the simulated GPU: workloads (arrival
//! processes), the event loop, the baseline policies EALI is compared against, and the bench
//! harness with its reports and plots. Virtual time throughout; deterministic under a seed.

pub mod baselines;
pub mod bench;
pub mod des;
pub mod device;
pub mod eali_policy;
pub mod metrics;
pub mod oracle;
pub mod plot;
pub mod policy;
pub mod truth;
pub mod workload;

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
