//! The EALI scheduler (pure): optimization units, the switch-aware planner, the rate-bucket plan
//! table and the online controller (the policies built on it are in `crate::policy`). Plain data in,
//! decisions out: nothing
//! here touches tokio, Kubernetes, the network or NVML.

pub mod controller;
pub mod costs;
pub mod error;
pub mod fill_time;
pub mod plan_table;
pub mod planner;
pub mod queue_wait;
pub mod switch;
pub mod synthetic;
pub mod units;

pub use controller::{Action, BatchReport, Controller, ControllerConfig};
pub use error::EaliError;
pub use plan_table::{PlanTable, TableConfig};
pub use planner::{
    Corrections, EntryClock, FillBound, Plan, PlanRequest, PlanSet, Planner, PlannerConfig, Solver,
};
pub use switch::{SwitchCost, SwitchLatency};
