//! The agent's Prometheus families (`docs/architecture.md`, "Contracts"): per GPU energy, power,
//! target and actual clock, clock switches and resets, health; per unit and per layer attributed
//! energy of the serving pods; and the serving pods' windows (tail latency, rate, load, and the
//! power model's energy estimate as run and at maximum clocks, from which dashboards show the
//! energy saved).
//! The agent has its own registry, separate from `eali serve`'s
//! ([`crate::telemetry::Metrics`]): the two run in different processes, and the agent's layer
//! series carry the pod that ran them.

use prometheus::{
    CounterVec, Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::control::{ClockObserver, PodName};
use crate::telemetry::TelemetryError;

/// Labels of the per-unit energy family, in order.
pub const UNIT_LABELS: [&str; 5] = ["namespace", "pod", "service", "model", "unit"];
/// Labels of the serving-window families (the pods' windows), in order.
pub const SERVING_LABELS: [&str; 3] = ["namespace", "pod", "service"];
/// Labels of the per-layer energy family, in order.
pub const LAYER_LABELS: [&str; 6] = ["namespace", "pod", "service", "model", "unit", "layer"];

/// Why a clock reset was made (label of `eali_gpu_clock_resets_total`).
pub mod reset_reason {
    /// The pod that held the GPU released it.
    pub const RELEASE: &str = "release";
    /// At start, a lock a previous agent left behind.
    pub const RECOVERY: &str = "recovery";
}

#[derive(Clone)]
pub struct AgentMetrics {
    registry: Registry,
    pub gpu_energy: CounterVec,
    pub gpu_idle_energy: CounterVec,
    pub gpu_power: GaugeVec,
    pub clock_target: GaugeVec,
    pub clock_actual: GaugeVec,
    pub clock_switches: IntCounterVec,
    pub clock_resets: IntCounterVec,
    pub gpu_healthy: IntGaugeVec,
    pub gpu_holders: IntGaugeVec,
    pub unit_energy: CounterVec,
    pub layer_energy: CounterVec,
    pub timings: IntCounterVec,
    pub series_capped: IntCounterVec,
    pub serving_latency: GaugeVec,
    pub serving_rate: GaugeVec,
    pub serving_load: GaugeVec,
    pub serving_requests: IntCounterVec,
    pub serving_estimated_energy: CounterVec,
}

/// Label values of `eali_serving_estimated_energy_joules_total{clocks}`.
pub mod clocks {
    /// The window as it ran (each unit at its clock).
    pub const AS_RUN: &str = "as_run";
    /// The same batches at maximum clocks.
    pub const MAX: &str = "max";
}

impl AgentMetrics {
    pub fn new() -> Result<Self, TelemetryError> {
        let gpu = &["gpu"];
        let m = Self {
            registry: Registry::new(),
            gpu_energy: CounterVec::new(
                Opts::new(
                    "eali_gpu_energy_joules_total",
                    "GPU energy counter (NVML total energy) since the agent started.",
                ),
                gpu,
            )?,
            gpu_idle_energy: CounterVec::new(
                Opts::new(
                    "eali_gpu_idle_energy_joules_total",
                    "Counted GPU energy of the time no reported unit ran.",
                ),
                gpu,
            )?,
            gpu_power: GaugeVec::new(Opts::new("eali_gpu_power_watts", "GPU board power."), gpu)?,
            clock_target: GaugeVec::new(
                Opts::new(
                    "eali_gpu_clock_target_hertz",
                    "Upper end of the locked graphics clock range in force (0 = GPU default).",
                ),
                gpu,
            )?,
            clock_actual: GaugeVec::new(
                Opts::new("eali_gpu_clock_hertz", "Graphics clock in force."),
                gpu,
            )?,
            clock_switches: IntCounterVec::new(
                Opts::new(
                    "eali_gpu_clock_switches_total",
                    "Clock set-calls carried out for the pod holding the GPU.",
                ),
                gpu,
            )?,
            clock_resets: IntCounterVec::new(
                Opts::new(
                    "eali_gpu_clock_resets_total",
                    "Clock resets the agent made on its own (release: the holding pod let the GPU go; recovery: a lock left by a previous agent).",
                ),
                &["gpu", "reason"],
            )?,
            gpu_healthy: IntGaugeVec::new(
                Opts::new(
                    "eali_gpu_healthy",
                    "1 while the device plugin advertises the GPU as Healthy.",
                ),
                gpu,
            )?,
            gpu_holders: IntGaugeVec::new(
                Opts::new(
                    "eali_gpu_holder_pods",
                    "Pods the kubelet has allocated the GPU to.",
                ),
                gpu,
            )?,
            unit_energy: CounterVec::new(
                Opts::new(
                    "eali_unit_energy_joules_total",
                    "GPU energy attributed to each optimization unit of the serving pods: the energy counter over the reported unit windows.",
                ),
                &UNIT_LABELS,
            )?,
            layer_energy: CounterVec::new(
                Opts::new(
                    "eali_layer_energy_joules_total",
                    "GPU energy attributed to each layer: a unit's attributed energy split by the layers' predicted energies.",
                ),
                &LAYER_LABELS,
            )?,
            timings: IntCounterVec::new(
                Opts::new(
                    "eali_unit_timings_total",
                    "Unit timings received from serving pods, by outcome (attributed, late: arrived after their energy was counted as idle).",
                ),
                &["outcome"],
            )?,
            series_capped: IntCounterVec::new(
                Opts::new(
                    "eali_energy_series_capped_total",
                    "Unit or layer label sets folded into `_other` because a pod reached the series cap.",
                ),
                &["family"],
            )?,
            serving_latency: GaugeVec::new(
                Opts::new(
                    "eali_serving_latency_seconds",
                    "Latency at the SLO's percentile over the serving pod's last window.",
                ),
                &SERVING_LABELS,
            )?,
            serving_rate: GaugeVec::new(
                Opts::new(
                    "eali_serving_requests_per_second",
                    "Requests the serving pod answered per second over its last window.",
                ),
                &SERVING_LABELS,
            )?,
            serving_load: GaugeVec::new(
                Opts::new(
                    "eali_serving_load_ratio",
                    "Served rate over the pod's max-clock capacity at its SLO, last window.",
                ),
                &SERVING_LABELS,
            )?,
            serving_requests: IntCounterVec::new(
                Opts::new(
                    "eali_serving_requests_total",
                    "Requests the serving pod answered, summed over its reported windows.",
                ),
                &SERVING_LABELS,
            )?,
            serving_estimated_energy: CounterVec::new(
                Opts::new(
                    "eali_serving_estimated_energy_joules_total",
                    "GPU energy of the pod's windows by the power model: clocks=\"as_run\" as they ran, clocks=\"max\" had every batch run at maximum clocks.",
                ),
                &["namespace", "pod", "service", "clocks"],
            )?,
        };
        for c in [
            Box::new(m.gpu_energy.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.gpu_idle_energy.clone()),
            Box::new(m.gpu_power.clone()),
            Box::new(m.clock_target.clone()),
            Box::new(m.clock_actual.clone()),
            Box::new(m.clock_switches.clone()),
            Box::new(m.clock_resets.clone()),
            Box::new(m.gpu_healthy.clone()),
            Box::new(m.gpu_holders.clone()),
            Box::new(m.unit_energy.clone()),
            Box::new(m.layer_energy.clone()),
            Box::new(m.timings.clone()),
            Box::new(m.series_capped.clone()),
            Box::new(m.serving_latency.clone()),
            Box::new(m.serving_rate.clone()),
            Box::new(m.serving_load.clone()),
            Box::new(m.serving_requests.clone()),
            Box::new(m.serving_estimated_energy.clone()),
        ] {
            m.registry.register(c)?;
        }
        Ok(m)
    }

    /// Records a serving pod's window.
    pub fn window(&self, pod: &PodName, w: &crate::control::proto::ServingWindow) {
        let l = [
            pod.namespace.as_str(),
            pod.name.as_str(),
            w.inference_service.as_str(),
        ];
        match w.latency_ms {
            Some(ms) => self.serving_latency.with_label_values(&l).set(ms / 1e3),
            None => {
                let _ = self.serving_latency.remove_label_values(&l);
            }
        }
        self.serving_rate
            .with_label_values(&l)
            .set(w.requests_per_second());
        if let Some(load) = w.load_ratio {
            self.serving_load.with_label_values(&l).set(load);
        }
        self.serving_requests
            .with_label_values(&l)
            .inc_by(w.requests);
        if let (Some(run), Some(max)) = (w.predicted_energy_j, w.max_clock_energy_j) {
            for (clocks, j) in [(clocks::AS_RUN, run), (clocks::MAX, max)] {
                self.serving_estimated_energy
                    .with_label_values(&[l[0], l[1], l[2], clocks])
                    .inc_by(j);
            }
        }
    }

    /// Drops a pod's serving-window series for `service` (the pod is gone).
    pub fn forget_window(&self, pod: &PodName, service: &str) {
        let l = [pod.namespace.as_str(), pod.name.as_str(), service];
        let _ = self.serving_latency.remove_label_values(&l);
        let _ = self.serving_rate.remove_label_values(&l);
        let _ = self.serving_load.remove_label_values(&l);
        let _ = self.serving_requests.remove_label_values(&l);
        for c in [clocks::AS_RUN, clocks::MAX] {
            let _ = self
                .serving_estimated_energy
                .remove_label_values(&[l[0], l[1], l[2], c]);
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl ClockObserver for AgentMetrics {
    fn clocks_set(&self, gpu: &str, _pod: &PodName, _min_mhz: u32, _max_mhz: u32) {
        // The target gauge follows the clocks in force (sampled), not the request: a request
        // the driver rounds or that has not settled yet would otherwise show as in force.
        self.clock_switches.with_label_values(&[gpu]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_their_labels() {
        let m = AgentMetrics::new().unwrap();
        let pod = PodName {
            namespace: "serving".into(),
            name: "resnet-0".into(),
        };
        m.clocks_set("GPU-1", &pod, 900, 900);
        m.clocks_set("GPU-1", &pod, 0, 0);
        m.layer_energy
            .with_label_values(&["serving", "resnet-0", "resnet", "resnet50", "0", "conv1"])
            .inc_by(2.5);
        let text = m.render();
        assert!(
            text.contains("eali_gpu_clock_switches_total{gpu=\"GPU-1\"} 2"),
            "{text}"
        );
        assert!(text.contains(
            "eali_layer_energy_joules_total{layer=\"conv1\",model=\"resnet50\",namespace=\"serving\",pod=\"resnet-0\",service=\"resnet\",unit=\"0\"} 2.5"
        ), "{text}");
    }
}
