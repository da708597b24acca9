//! The EALI scheduler (pure): optimization units, the switch-aware planner, the rate-bucket plan
//! table, the online controller and the baseline policies. Plain data in, decisions out: nothing
//! here touches tokio, Kubernetes, the network or NVML.

pub mod costs;
