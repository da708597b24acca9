//! The policies of the suite, built for one case from its testbed, and the run of one case.

use serde::{Deserialize, Serialize};

use crate::eali::planner::{Planner, PlannerConfig};
use crate::eali::switch::SwitchCost;
use crate::gpu::sim::SimGpu;
use crate::policy::Policy;
use crate::policy::build::PolicyKind;

use super::super::des::{SimConfig, run};
use super::super::device::SpanTable;
use super::super::oracle::Oracle;
use super::super::workload::Workload;
use super::testbed::{Testbed, unit_ranges};
use super::{BenchError, Case, CaseResult};

/// The policies compared, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyId {
    /// (a) clocks locked at f_max, Triton dynamic batching.
    MaxClock,
    /// (b) Clipper AIMD batch size at f_max.
    Clipper,
    /// (c) no lock (default/boost clock under load, P-state idle), Triton dynamic batching.
    DefaultClock,
    /// (d) one clock per batch chosen with the batch size (EAIS-like).
    PerBatchDvfs,
    /// EALI: a clock per optimization unit.
    Eali,
    /// (e) offline oracle with the arrival trace and the true costs.
    Oracle,
}

impl PolicyId {
    pub fn all() -> [PolicyId; 6] {
        use PolicyId::*;
        [MaxClock, Clipper, DefaultClock, PerBatchDvfs, Eali, Oracle]
    }
    pub fn name(self) -> &'static str {
        match self {
            PolicyId::MaxClock => "max-clock",
            PolicyId::Clipper => "clipper",
            PolicyId::DefaultClock => "default-clock",
            PolicyId::PerBatchDvfs => "per-batch-dvfs",
            PolicyId::Eali => "eali",
            PolicyId::Oracle => "oracle",
        }
    }
    /// Short column heading.
    pub fn short(self) -> &'static str {
        match self {
            PolicyId::MaxClock => "(a)max",
            PolicyId::Clipper => "(b)clip",
            PolicyId::DefaultClock => "(c)dflt",
            PolicyId::PerBatchDvfs => "(d)batch",
            PolicyId::Eali => "eali",
            PolicyId::Oracle => "(e)orcl",
        }
    }
    pub fn parse(s: &str) -> Option<PolicyId> {
        PolicyId::all()
            .into_iter()
            .find(|p| p.name() == s || p.short() == s)
    }
    /// The online policy this is, `None` for the oracle.
    pub fn kind(self) -> Option<PolicyKind> {
        Some(match self {
            PolicyId::MaxClock => PolicyKind::MaxClock,
            PolicyId::Clipper => PolicyKind::Clipper,
            PolicyId::DefaultClock => PolicyKind::DefaultClock,
            PolicyId::PerBatchDvfs => PolicyKind::PerBatchDvfs,
            PolicyId::Eali => PolicyKind::Eali,
            PolicyId::Oracle => return None,
        })
    }
}

/// Fraction of the SLO the oracle keeps back for run-to-run noise it cannot foresee (3σ of the
/// profiles' ≈2 % time noise).
pub const ORACLE_GUARD: f64 = 0.06;

/// Builds policy `id` for a case. `arrivals` is only read by the oracle.
pub fn build(
    id: PolicyId,
    bed: &Testbed,
    slo_s: f64,
    arrivals: &[f64],
) -> Result<Box<dyn Policy + Send>, BenchError> {
    let setup = |e: crate::eali::EaliError| BenchError::Setup(format!("{}: {e}", id.name()));
    if let Some(kind) = id.kind() {
        return bed
            .costs
            .policy(kind, id.name(), slo_s)
            .map_err(|e| BenchError::Setup(format!("{}: {e}", id.name())));
    }
    // The oracle: offline, with the arrival trace and the true costs.

    let (chain, costs) = &bed.oracle_chain;
    let mut cfg = PlannerConfig::new(slo_s);
    cfg.max_batch = bed.max_batch;
    let planner =
        Planner::new(costs.clone(), SwitchCost::from_latency(&bed.switch), cfg).map_err(setup)?;
    let profile = &bed.profile;
    Ok(Box::new(Oracle::plan(
        &planner,
        unit_ranges(chain)?,
        arrivals,
        slo_s,
        ORACLE_GUARD,
        bed.switch.total_median_s,
        |f| profile.idle_power_w(f),
    )))
}

/// Runs every policy of a case on the same arrivals and the same GPU seed. `keep_timeline`
/// names the policy whose timeline is kept.
pub fn run_case(
    bed: &Testbed,
    case: &Case,
    policies: &[PolicyId],
    duration_s: f64,
    seed: u64,
    keep_timeline: Option<PolicyId>,
) -> Result<CaseResult, BenchError> {
    let slo_s = case.slo_ms / 1000.0;
    let capacity = bed.capacity(slo_s);
    let rate = case.load * capacity;
    let arrivals = Workload::new(case.workload.clone(), rate, duration_s).generate(seed)?;
    let mut runs = Vec::with_capacity(policies.len());
    for &id in policies {
        let mut policy = build(id, bed, slo_s, &arrivals)?;
        let mut gpu = SimGpu::new(bed.profile.clone(), 0, seed);
        let spans = SpanTable::build(&gpu, policy.units(), policy.max_batch(), |l, b| {
            bed.graph.layer_work(l, b)
        });
        let mut cfg = SimConfig::new(slo_s);
        cfg.duration_s = Some(duration_s);
        cfg.record_timeline = keep_timeline == Some(id);
        let r = run(&mut gpu, &spans, policy.as_mut(), &arrivals, &cfg).map_err(|source| {
            BenchError::Run {
                case: case.label(),
                policy: id.name().to_string(),
                source,
            }
        })?;
        runs.push((id, r));
    }
    Ok(CaseResult {
        case: case.clone(),
        capacity,
        rate,
        floor_j: bed.floor.per_request_j(duration_s, arrivals.len()),
        floor_batch_clock_j: bed
            .floor
            .per_request_batch_clock_j(duration_s, arrivals.len()),
        runs,
    })
}
