//! The agent's Prometheus families (DESIGN.md §3): per GPU energy, power, target and actual
//! clock, clock switches and resets, health; per unit and per layer attributed energy of the
//! serving pods. The agent has its own registry, separate from `eali serve`'s
//! ([`crate::telemetry::Metrics`]): the two run in different processes, and the agent's layer
//! series carry the pod that ran them.

use prometheus::{
    CounterVec, Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::control::{ClockObserver, PodName};
use crate::telemetry::TelemetryError;

/// Labels of the per-unit energy family, in order.
pub const UNIT_LABELS: [&str; 5] = ["namespace", "pod", "service", "model", "unit"];
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
        ] {
            m.registry.register(c)?;
        }
        Ok(m)
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
