//! The agent's per-GPU summaries written into each InferenceService's `status.nodes[]`, and its
//! serving pods' windows into `status.reports[]` (the figures the controller scales on and
//! `kubectl get` shows), by server-side apply ([`crate::k8s::node_status::NodeStatusWriter`],
//! one field manager per node).

use futures_util::future::BoxFuture;

use crate::control::PodName;
use crate::k8s::crd::ServingReport;
use crate::k8s::node_status::{NodeGpu, NodePod, NodeStatusBatch, NodeStatusWriter, PlanSummary};

use super::node::{GpuSummary, NodeStatusSink, PodWindow};

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

/// One reporting round: every GPU whose holder serves an InferenceService, grouped by service,
/// and each serving pod's last window as its `status.reports` entry.
pub fn batch_of(gpus: &[GpuSummary]) -> NodeStatusBatch {
    let mut batch = NodeStatusBatch::default();
    for g in gpus {
        let window_of = |pod: &PodName| g.windows.iter().find(|w| &w.pod == pod);
        let node_gpu = |pod: &PodName| NodeGpu {
            uuid: g.uuid.clone(),
            pod: Some(pod.name.clone()),
            product: Some(g.name.clone()),
            clock_mhz: Some(g.graphics_mhz),
            energy_joules: Some(g.energy_j),
        };
        for s in g
            .services
            .iter()
            .filter(|s| !s.inference_service.is_empty())
        {
            let (ns, svc) = (s.pod.namespace.as_str(), s.inference_service.as_str());
            batch.gpu(ns, svc, node_gpu(&s.pod));
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
            let window = window_of(&s.pod).filter(|w| w.window.inference_service == svc);
            batch.pod(
                ns,
                svc,
                NodePod {
                    pod: s.pod.name.clone(),
                    gpu: Some(g.uuid.clone()),
                    plan,
                    joules_per_request,
                    requests_per_second: window.map(|w| w.window.requests_per_second()),
                },
            );
            if let Some(w) = window {
                batch.report(ns, svc, serving_report(w, joules_per_request));
            }
        }
        // Pods that report windows but have run no unit yet (an idle pod still tells its load,
        // which scale-in needs from every pod).
        for w in &g.windows {
            let svc = w.window.inference_service.as_str();
            let seen = g
                .services
                .iter()
                .any(|s| s.pod == w.pod && s.inference_service == svc);
            if seen || svc.is_empty() {
                continue;
            }
            let ns = w.pod.namespace.as_str();
            batch.gpu(ns, svc, node_gpu(&w.pod));
            batch.pod(
                ns,
                svc,
                NodePod {
                    pod: w.pod.name.clone(),
                    gpu: Some(g.uuid.clone()),
                    requests_per_second: Some(w.window.requests_per_second()),
                    ..NodePod::default()
                },
            );
            batch.report(ns, svc, serving_report(w, None));
        }
    }
    batch
}

/// The pod's `status.reports` entry from its last window. Joules per request are measured: the
/// GPU's energy counter over the window (the pod holds the whole GPU, idle time included) over
/// the window's requests; for a pod's first window, which has no earlier reading to bound it,
/// and for a window without requests, the counter energy attributed to the pod's units so far
/// per request (`attributed`), else 0. The saving against maximum clocks is the pod's estimate
/// (one power model on both sides; see [`crate::telemetry::window`]).
fn serving_report(w: &PodWindow, attributed: Option<f64>) -> ServingReport {
    let win = &w.window;
    let measured = w
        .measured_energy_j
        .filter(|_| win.requests > 0)
        .map(|e| e / win.requests as f64);
    let time = jiff::SignedDuration::try_from_secs_f64(win.end_unix_s)
        .ok()
        .and_then(|d| jiff::Timestamp::from_duration(d).ok())
        .unwrap_or_else(jiff::Timestamp::now);
    ServingReport {
        pod: w.pod.name.clone(),
        node: None,
        time: time.to_string(),
        p99_ms: win.latency_ms.unwrap_or(0.0),
        requests_per_second: win.requests_per_second(),
        joules_per_request: measured.or(attributed).unwrap_or(0.0),
        energy_saved_ratio: win.energy_saved_ratio(),
        load_ratio: win.load_ratio,
        saturated: win.saturated,
    }
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
    use crate::control::proto::ServingWindow;

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
            windows: Vec::new(),
        }
    }

    fn window(ns: &str, pod: &str, svc: &str, measured: Option<f64>) -> PodWindow {
        PodWindow {
            pod: PodName {
                namespace: ns.into(),
                name: pod.into(),
            },
            window: ServingWindow {
                gpu_uuid: String::new(),
                inference_service: svc.into(),
                model: "resnet50".into(),
                window_s: 10.0,
                end_unix_s: 1_795_000_000.5,
                requests: 400,
                latency_ms: Some(38.5),
                slo_percentile: 0.99,
                slo_latency_ms: 50.0,
                load_ratio: Some(0.3),
                saturated: false,
                predicted_energy_j: Some(150.0),
                max_clock_energy_j: Some(200.0),
            },
            measured_energy_j: measured,
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

    #[test]
    fn windows_become_the_pods_reports_with_measured_joules() {
        let mut g = gpu("GPU-a", &[("serving", "resnet-0", "resnet")]);
        g.windows = vec![
            window("serving", "resnet-0", "resnet", Some(180.0)),
            // A pod with no unit run yet still reports its (zero) load.
            window("serving", "resnet-9", "resnet", None),
        ];
        g.windows[1].window.requests = 0;
        g.windows[1].window.latency_ms = None;
        g.windows[1].window.load_ratio = Some(0.0);
        let batch = batch_of(&[g]);
        let (node, reports) = batch.entry_of("serving", "resnet").expect("resnet entry");
        let r0 = reports.iter().find(|r| r.pod == "resnet-0").expect("r0");
        assert_eq!(r0.p99_ms, 38.5);
        assert_eq!(r0.requests_per_second, 40.0);
        // The counter's 180 J over the window's 400 requests, not the attributed 0.25 J.
        assert_eq!(r0.joules_per_request, 0.45);
        assert_eq!(r0.energy_saved_ratio, Some(0.25));
        assert_eq!((r0.load_ratio, r0.saturated), (Some(0.3), false));
        assert_eq!(r0.time, "2026-11-18T11:06:40.5Z");
        let r9 = reports.iter().find(|r| r.pod == "resnet-9").expect("r9");
        assert_eq!(
            (r9.p99_ms, r9.requests_per_second, r9.joules_per_request),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(r9.load_ratio, Some(0.0));
        let pods: Vec<(&str, Option<f64>)> = node
            .pods
            .iter()
            .map(|p| (p.pod.as_str(), p.requests_per_second))
            .collect();
        assert_eq!(
            pods,
            vec![("resnet-0", Some(40.0)), ("resnet-9", Some(0.0))]
        );
        assert_eq!(node.gpus.len(), 1, "one GPU, listed once");
    }

    #[test]
    fn a_first_window_falls_back_to_the_attributed_joules() {
        let mut g = gpu("GPU-a", &[("serving", "resnet-0", "resnet")]);
        g.windows = vec![window("serving", "resnet-0", "resnet", None)];
        let batch = batch_of(&[g]);
        let (_, reports) = batch.entry_of("serving", "resnet").expect("entry");
        assert_eq!(reports[0].joules_per_request, 0.25);
    }
}
