//! The agent's per-GPU summaries written into each InferenceService's `status.nodes[]` by
//! server-side apply ([`crate::k8s::node_status::NodeStatusWriter`], one field manager per node).

use futures_util::future::BoxFuture;

use crate::k8s::node_status::{NodeGpu, NodePod, NodeStatusBatch, NodeStatusWriter, PlanSummary};

use super::node::{GpuSummary, NodeStatusSink};

/// [`NodeStatusSink`] over the Kubernetes API.
pub struct KubeNodeStatus {
    writer: NodeStatusWriter,
}

impl KubeNodeStatus {
    pub fn new(client: kube::Client, node: impl Into<String>) -> Self {
        Self {
            writer: NodeStatusWriter::new(client, node),
        }
    }
}

/// One reporting round: every GPU whose holder serves an InferenceService, grouped by service.
pub fn batch_of(gpus: &[GpuSummary]) -> NodeStatusBatch {
    let mut batch = NodeStatusBatch::default();
    for g in gpus {
        for s in g
            .services
            .iter()
            .filter(|s| !s.inference_service.is_empty())
        {
            let (ns, svc) = (s.pod.namespace.as_str(), s.inference_service.as_str());
            batch.gpu(
                ns,
                svc,
                NodeGpu {
                    uuid: g.uuid.clone(),
                    pod: Some(s.pod.name.clone()),
                    product: Some(g.name.clone()),
                    clock_mhz: Some(g.graphics_mhz),
                    energy_joules: Some(g.energy_j),
                },
            );
            // The plan as the pod's unit timings show it (batch size, clock per unit) and the
            // measured joules per request: the counter's energy attributed to the pod's units
            // over the requests those units ran.
            let plan = (s.last_batch > 0).then(|| PlanSummary {
                batch_size: s.last_batch,
                switches: s
                    .last_clocks_mhz
                    .windows(2)
                    .filter(|w| w[0] != w[1])
                    .count()
                    .try_into()
                    .unwrap_or(u32::MAX),
                clocks_mhz: s.last_clocks_mhz.clone(),
                ..PlanSummary::default()
            });
            let joules_per_request =
                (s.requests > 0 && s.joules.is_finite()).then(|| s.joules / s.requests as f64);
            batch.pod(
                ns,
                svc,
                NodePod {
                    pod: s.pod.name.clone(),
                    gpu: Some(g.uuid.clone()),
                    plan,
                    joules_per_request,
                    ..NodePod::default()
                },
            );
        }
    }
    batch
}

impl NodeStatusSink for KubeNodeStatus {
    fn publish<'a>(&'a self, gpus: &'a [GpuSummary]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let time = jiff::Timestamp::now().to_string();
            for ((ns, svc), e) in self.writer.publish(batch_of(gpus), &time).await {
                tracing::warn!(%ns, %svc, error = %e, "per-node status not written");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::energy::ServiceEnergy;
    use crate::control::authz::PodName;

    fn gpu(uuid: &str, services: &[(&str, &str, &str)]) -> GpuSummary {
        GpuSummary {
            uuid: uuid.into(),
            index: 0,
            name: "Tesla V100-SXM2-32GB".into(),
            healthy: true,
            holders: Vec::new(),
            graphics_mhz: 900,
            locked: Some((900, 900)),
            power_w: 120.0,
            energy_j: 42.0,
            services: services
                .iter()
                .map(|(ns, pod, svc)| ServiceEnergy {
                    pod: PodName {
                        namespace: (*ns).into(),
                        name: (*pod).into(),
                    },
                    inference_service: (*svc).into(),
                    model: "resnet50".into(),
                    joules: 1.0,
                    requests: 4,
                    last_batch: 2,
                    last_clocks_mhz: vec![900, 600],
                })
                .collect(),
        }
    }

    #[test]
    fn groups_gpus_by_inference_service_and_skips_unnamed_holders() {
        let batch = batch_of(&[
            gpu("GPU-a", &[("serving", "resnet-0", "resnet")]),
            gpu("GPU-b", &[("serving", "resnet-1", "resnet")]),
            gpu(
                "GPU-c",
                &[("other", "vgg-0", "vgg"), ("other", "debug-0", "")],
            ),
            gpu("GPU-d", &[]),
        ]);
        let services: Vec<_> = batch.services().cloned().collect();
        assert_eq!(
            services,
            vec![
                ("other".to_string(), "vgg".to_string()),
                ("serving".to_string(), "resnet".to_string()),
            ]
        );
        let resnet = batch
            .node_report("serving", "resnet")
            .expect("resnet entry");
        assert_eq!(resnet.gpus.len(), 2);
        let pod = resnet
            .pods
            .iter()
            .find(|p| p.pod == "resnet-1")
            .expect("resnet-1");
        assert_eq!(pod.gpu.as_deref(), Some("GPU-b"));
        let plan = pod.plan.as_ref().expect("plan from the timings");
        assert_eq!(
            (plan.batch_size, plan.clocks_mhz.clone(), plan.switches),
            (2, vec![900, 600], 1)
        );
        assert_eq!(pod.joules_per_request, Some(0.25));
    }
}
