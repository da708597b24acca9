//! What a node agent reports about an InferenceService: the entries of `status.nodes` (GPUs,
//! serving pods and their plans, node totals). Plain data of the CRD's status, kept apart from
//! the writer in [`super::node_status`] so the CRD types need nothing but this.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::eali::planner::Plan;

/// One node's report on an InferenceService, an entry of `status.nodes`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// Name of the node (the list's key).
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// When the agent took these figures (RFC 3339).
    pub time: String,
    /// GPUs of this node that hold a serving pod of this InferenceService.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["uuid"], "maxItems" = 64))]
    pub gpus: Vec<NodeGpu>,
    /// Serving pods of this InferenceService on this node, with their plans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pod"], "maxItems" = 64))]
    pub pods: Vec<NodePod>,
    /// Requests per second over this node's pods (sum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// GPU energy per request over this node's pods, joules (request-weighted mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joules_per_request: Option<f64>,
}

/// A GPU and the serving pod that holds it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeGpu {
    /// GPU UUID, the device ID the device plugin advertises (the list's key).
    #[schemars(length(min = 1, max = 63))]
    pub uuid: String,
    /// Serving pod the GPU is allocated to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// GPU product name, e.g. Tesla V100-SXM2-16GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// Graphics clock in force when the figures were taken, MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_mhz: Option<u32>,
    /// Energy the GPU used since the agent started, joules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_joules: Option<f64>,
}

/// A serving pod on this node and what it is doing.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodePod {
    /// Name of the serving pod (the list's key).
    #[schemars(length(min = 1, max = 253))]
    pub pod: String,
    /// UUID of the GPU the pod holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// The pod's current plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanSummary>,
    /// Requests per second over the last window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Measured GPU energy per request over the last window, joules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joules_per_request: Option<f64>,
}

/// Short form of a plan: batch size, clock per optimization unit and the predictions.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlanSummary {
    /// Batch size.
    #[schemars(range(min = 1, max = 1024))]
    pub batch_size: u32,
    /// GPU clock per optimization unit, MHz, in execution order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = 1024))]
    pub clocks_mhz: Vec<u32>,
    /// Clock changes per batch.
    #[serde(default)]
    pub switches: u32,
    /// Predicted tail latency (fill time + execution), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_latency_ms: Option<f64>,
    /// Predicted GPU energy per request, joules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_joules_per_request: Option<f64>,
    /// The plan could not meet the SLO: maximum clocks, largest stable batch.
    #[serde(default)]
    pub saturated: bool,
}

impl PlanSummary {
    /// The summary of a planner decision.
    pub fn from_plan(plan: &Plan) -> Self {
        PlanSummary {
            batch_size: plan.batch,
            clocks_mhz: plan.unit_clocks_mhz.clone(),
            switches: plan.switches,
            predicted_latency_ms: finite(plan.latency_s * 1e3),
            predicted_joules_per_request: finite(plan.energy_per_request_j),
            saturated: plan.saturated,
        }
    }
}

/// JSON has no NaN or infinity; the API server would refuse the whole apply.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl NodeReport {
    /// Fills the node totals from the pods: summed requests per second and the request-weighted
    /// mean of joules per request (plain mean while no pod has traffic). Pods without a figure do
    /// not count; the totals stay empty when no pod has one.
    pub fn with_totals(mut self) -> Self {
        let rps: f64 = self
            .pods
            .iter()
            .filter_map(|p| p.requests_per_second)
            .map(|r| r.max(0.0))
            .sum();
        let has_rps = self.pods.iter().any(|p| p.requests_per_second.is_some());
        let with_j: Vec<(f64, f64)> = self
            .pods
            .iter()
            .filter_map(|p| {
                let j = p.joules_per_request.filter(|j| j.is_finite())?;
                let w = if rps > 0.0 {
                    p.requests_per_second.unwrap_or(0.0).max(0.0)
                } else {
                    1.0
                };
                Some((w, j))
            })
            .collect();
        let w: f64 = with_j.iter().map(|(w, _)| w).sum();
        self.requests_per_second = has_rps.then_some(rps);
        self.joules_per_request =
            (w > 0.0).then(|| with_j.iter().map(|(w, j)| w * j).sum::<f64>() / w);
        self
    }
}
