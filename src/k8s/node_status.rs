//! Per-node status of an InferenceService: what the agent on one node reports about the serving
//! pods it hosts (which pod holds which GPU, the pod's current plan, joules per request), written
//! into `status.nodes[]` by server-side apply.
//!
//! Each node's agent applies with its own field manager, `eali-agent/<node>`. `status.nodes` is a
//! list map keyed on `node` (and `status.reports` one keyed on `pod`), so the API server merges the
//! entries of different managers: node A's apply never touches node B's entry, and neither touches
//! the fields the controller (`eali-controller`) applies. Because server-side apply removes what a
//! manager applied before and omits now, a node's apply must always carry everything that node
//! reports for that InferenceService; [`NodeStatusWriter::clear`] withdraws it entirely.
//!
//! The agent loop builds a [`NodeStatusBatch`] per round (GPUs, pods, reports, grouped by
//! InferenceService) and hands it to [`NodeStatusWriter::publish`], which applies every service in
//! it and withdraws from the services of the previous round that are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::json;

use super::K8sError;
use super::crd::{InferenceService, ServingReport};
pub use super::report::{NodeGpu, NodePod, NodeReport, PlanSummary};

/// Field-manager prefix of node agents; the node name follows the slash.
pub const MANAGER_PREFIX: &str = "eali-agent/";

/// The API server refuses field-manager names of 128 characters or more.
const MAX_MANAGER_LEN: usize = 127;

/// The field manager of the agent on `node`. Node names may be up to 253 characters, manager
/// names at most 127, so a long name is cut and a hash of the whole name keeps it unique.
pub fn field_manager(node: &str) -> String {
    let full = format!("{MANAGER_PREFIX}{node}");
    if full.len() <= MAX_MANAGER_LEN {
        return full;
    }
    // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher.
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let suffix = format!("-{hash:016x}");
    let mut cut = MAX_MANAGER_LEN - suffix.len();
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &full[..cut])
}

/// InferenceService namespace and name.
pub type ServiceKey = (String, String);

/// Everything one node reports in one round, grouped by InferenceService; fed to
/// [`NodeStatusWriter::publish`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeStatusBatch {
    entries: BTreeMap<ServiceKey, (NodeReport, Vec<ServingReport>)>,
}

impl NodeStatusBatch {
    fn entry(&mut self, ns: &str, service: &str) -> &mut (NodeReport, Vec<ServingReport>) {
        self.entries
            .entry((ns.to_string(), service.to_string()))
            .or_default()
    }

    /// A GPU held by a serving pod of `ns/service` (a GPU listed twice keeps the last).
    pub fn gpu(&mut self, ns: &str, service: &str, gpu: NodeGpu) -> &mut Self {
        let gpus = &mut self.entry(ns, service).0.gpus;
        gpus.retain(|g| g.uuid != gpu.uuid);
        gpus.push(gpu);
        self
    }

    /// A serving pod of `ns/service` with its plan and figures (a pod listed twice keeps the last).
    pub fn pod(&mut self, ns: &str, service: &str, pod: NodePod) -> &mut Self {
        let pods = &mut self.entry(ns, service).0.pods;
        pods.retain(|p| p.pod != pod.pod);
        pods.push(pod);
        self
    }

    /// The figures the controller scales on, for one serving pod of `ns/service`.
    pub fn report(&mut self, ns: &str, service: &str, report: ServingReport) -> &mut Self {
        let reports = &mut self.entry(ns, service).1;
        reports.retain(|r| r.pod != report.pod);
        reports.push(report);
        self
    }

    /// The InferenceServices this batch reports on.
    pub fn services(&self) -> impl Iterator<Item = &ServiceKey> {
        self.entries.keys()
    }

    /// This node's entry and its pods' reports for `ns/service`, if the batch has them.
    pub fn entry_of(&self, ns: &str, service: &str) -> Option<(&NodeReport, &[ServingReport])> {
        self.entries
            .get(&(ns.to_string(), service.to_string()))
            .map(|(n, r)| (n, r.as_slice()))
    }

    /// This node's entry for `ns/service`, if the batch has one.
    pub fn node_report(&self, ns: &str, service: &str) -> Option<&NodeReport> {
        self.entries
            .get(&(ns.to_string(), service.to_string()))
            .map(|(r, _)| r)
    }
}

/// Writes one node's entries into InferenceService status with that node's field manager.
#[derive(Clone)]
pub struct NodeStatusWriter {
    client: Client,
    node: String,
    manager: String,
    /// Services the last [`publish`](Self::publish) wrote to, to withdraw from when they drop out.
    published: Arc<Mutex<BTreeSet<ServiceKey>>>,
}

impl NodeStatusWriter {
    /// A writer for the agent on `node`.
    pub fn new(client: Client, node: impl Into<String>) -> Self {
        let node = node.into();
        let manager = field_manager(&node);
        NodeStatusWriter {
            client,
            node,
            manager,
            published: Arc::default(),
        }
    }

    /// The node this writer reports for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The field manager its applies carry.
    pub fn manager(&self) -> &str {
        &self.manager
    }

    /// Applies this node's `status.nodes` entry (its `node` field is set to this writer's node).
    /// Any `status.reports` this node applied before are withdrawn; use
    /// [`apply_with_reports`](Self::apply_with_reports) to keep reporting them.
    pub async fn apply(&self, ns: &str, name: &str, entry: &NodeReport) -> Result<(), K8sError> {
        self.apply_with_reports(ns, name, entry, &[]).await
    }

    /// Applies this node's `status.nodes` entry and the `status.reports` of its serving pods (the
    /// figures the controller scales on) in one request, so both change together.
    pub async fn apply_with_reports(
        &self,
        ns: &str,
        name: &str,
        entry: &NodeReport,
        reports: &[ServingReport],
    ) -> Result<(), K8sError> {
        let mut entry = entry.clone();
        entry.node.clone_from(&self.node);
        let reports: Vec<ServingReport> = reports
            .iter()
            .map(|r| ServingReport {
                node: Some(self.node.clone()),
                ..r.clone()
            })
            .collect();
        let mut status = json!({ "nodes": [entry] });
        if !reports.is_empty() {
            status["reports"] = serde_json::to_value(reports)
                .map_err(|e| K8sError::InvalidObject(format!("reports: {e}")))?;
        }
        self.patch(ns, name, status).await
    }

    /// Withdraws everything this node applied to the InferenceService (its `nodes` entry and its
    /// pods' reports), e.g. when its last serving pod of that service is gone.
    pub async fn clear(&self, ns: &str, name: &str) -> Result<(), K8sError> {
        self.patch(ns, name, json!({})).await
    }

    /// One reporting round: applies this node's entry (stamped `time`, totals filled in) and
    /// reports to every InferenceService in `batch`, and withdraws from the ones the previous
    /// round wrote to that are not in it (their last pod left this node). An InferenceService
    /// that no longer exists is skipped. Returns the failures, each with its service; a failed
    /// service is retried by the next round.
    pub async fn publish(&self, batch: NodeStatusBatch, time: &str) -> Vec<(ServiceKey, K8sError)> {
        let previous = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut now = BTreeSet::new();
        let mut failed = Vec::new();
        for (key, (mut entry, reports)) in batch.entries {
            entry.time = time.to_string();
            let entry = entry.with_totals();
            match self
                .apply_with_reports(&key.0, &key.1, &entry, &reports)
                .await
            {
                Ok(()) => {
                    now.insert(key);
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    // Still ours: a later round must withdraw it if the service drops out.
                    now.insert(key.clone());
                    failed.push((key, e));
                }
            }
        }
        let gone: Vec<ServiceKey> = previous.difference(&now).cloned().collect();
        for key in gone {
            match self.clear(&key.0, &key.1).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    now.insert(key.clone());
                    failed.push((key, e));
                }
            }
        }
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = now;
        failed
    }

    async fn patch(&self, ns: &str, name: &str, status: serde_json::Value) -> Result<(), K8sError> {
        let body = json!({
            "apiVersion": InferenceService::api_version(&()),
            "kind": InferenceService::kind(&()),
            "status": status,
        });
        // Forced: this node's agent is the only authority on its entry, also when an earlier
        // writer (an older agent version, a person with kubectl) left its name on those fields.
        let pp = PatchParams::apply(&self.manager).force();
        let api: Api<InferenceService> = Api::namespaced(self.client.clone(), ns);
        api.patch_status(name, &pp, &Patch::Apply(&body)).await?;
        Ok(())
    }
}

fn is_not_found(e: &K8sError) -> bool {
    matches!(e, K8sError::Kube(kube::Error::Api(s)) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eali::planner::Plan;

    fn pod(name: &str, rps: Option<f64>, j: Option<f64>) -> NodePod {
        NodePod {
            pod: name.into(),
            requests_per_second: rps,
            joules_per_request: j,
            ..Default::default()
        }
    }

    #[test]
    fn totals_weight_energy_by_requests() {
        let r = NodeReport {
            pods: vec![
                pod("a", Some(300.0), Some(0.2)),
                pod("b", Some(100.0), Some(0.6)),
            ],
            ..Default::default()
        }
        .with_totals();
        assert_eq!(r.requests_per_second, Some(400.0));
        let j = r.joules_per_request.expect("jpr");
        assert!((j - 0.3).abs() < 1e-12, "{j}");
    }

    #[test]
    fn totals_without_traffic_are_a_plain_mean_and_missing_figures_do_not_count() {
        let r = NodeReport {
            pods: vec![
                pod("a", Some(0.0), Some(0.2)),
                pod("b", None, Some(0.4)),
                pod("c", None, None),
            ],
            ..Default::default()
        }
        .with_totals();
        assert_eq!(r.requests_per_second, Some(0.0));
        let j = r.joules_per_request.expect("jpr");
        assert!((j - 0.3).abs() < 1e-12, "{j}");
        let empty = NodeReport::default().with_totals();
        assert_eq!(empty.requests_per_second, None);
        assert_eq!(empty.joules_per_request, None);
    }

    #[test]
    fn batch_groups_by_service_and_keeps_the_last_of_a_key() {
        let mut b = NodeStatusBatch::default();
        let gpu = |uuid: &str, pod: &str| NodeGpu {
            uuid: uuid.into(),
            pod: Some(pod.into()),
            ..Default::default()
        };
        b.gpu("ns", "a", gpu("GPU-1", "a-0"))
            .gpu("ns", "a", gpu("GPU-2", "a-1"))
            .gpu("ns", "a", gpu("GPU-1", "a-2"))
            .gpu("other", "a", gpu("GPU-3", "x"))
            .pod("ns", "a", pod("a-0", Some(1.0), None))
            .pod("ns", "a", pod("a-0", Some(2.0), None))
            .report("ns", "b", ServingReport::default());
        let keys: Vec<&ServiceKey> = b.services().collect();
        assert_eq!(keys.len(), 3);
        let a = b.node_report("ns", "a").expect("ns/a");
        let holders: Vec<(&str, Option<&str>)> = a
            .gpus
            .iter()
            .map(|g| (g.uuid.as_str(), g.pod.as_deref()))
            .collect();
        assert_eq!(holders, [("GPU-2", Some("a-1")), ("GPU-1", Some("a-2"))]);
        assert_eq!(a.pods.len(), 1);
        assert_eq!(a.pods[0].requests_per_second, Some(2.0));
        assert!(b.node_report("ns", "b").is_some_and(|r| r.gpus.is_empty()));
        assert!(b.node_report("ns", "c").is_none());
    }

    #[test]
    fn field_manager_names_the_node_and_stays_within_the_limit() {
        assert_eq!(field_manager("gpu-node-1"), "eali-agent/gpu-node-1");
        let long_a = format!("{}a", "n".repeat(252));
        let long_b = format!("{}b", "n".repeat(252));
        let (a, b) = (field_manager(&long_a), field_manager(&long_b));
        assert!(a.len() <= MAX_MANAGER_LEN && b.len() <= MAX_MANAGER_LEN);
        assert!(a.starts_with(MANAGER_PREFIX));
        assert_ne!(a, b, "names differing only past the cut stay distinct");
    }

    #[test]
    fn plan_summary_drops_non_finite_predictions() {
        let mut plan = Plan {
            batch: 8,
            unit_clocks_mhz: vec![1380, 945, 1380],
            preset_entry: true,
            timeline: Vec::new(),
            exec_time_s: 0.01,
            fill_time_s: 0.02,
            latency_s: 0.03,
            batch_energy_j: 1.0,
            cycle_energy_j: 2.0,
            energy_per_request_j: 0.25,
            switches: 2,
            corrections: Default::default(),
            feasible: true,
            saturated: false,
            fill_bound: Default::default(),
        };
        let s = PlanSummary::from_plan(&plan);
        assert_eq!(s.batch_size, 8);
        assert_eq!(s.clocks_mhz, [1380, 945, 1380]);
        assert_eq!(s.switches, 2);
        assert!((s.predicted_latency_ms.expect("latency") - 30.0).abs() < 1e-9);
        plan.energy_per_request_j = f64::INFINITY;
        assert_eq!(
            PlanSummary::from_plan(&plan).predicted_joules_per_request,
            None
        );
    }
}
