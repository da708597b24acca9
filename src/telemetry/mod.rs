//! Telemetry of the serving runtime: the Prometheus registry with the metric families of
//! `docs/architecture.md`, "Contracts" (serving, GPU, per-layer energy), energy attribution from
//! the GPU's energy counter ([`attribution`]), and the tracing (structured log) setup.
//!
//! Names follow Prometheus conventions: prefix `eali_`, base units, `_total` for counters.
//! Label cardinality is bounded: models, GPUs, units and layers of loaded models, outcomes; never
//! request ids.

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub mod attribution;
pub mod window;

pub use attribution::{Attribution, Attributor, LayerPowerModel, Segment};
pub use window::{BatchEstimate, WindowFigures, WindowMeter};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("metrics registry: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// Outcome label values of `eali_requests_total`.
pub mod outcome {
    pub const OK: &str = "ok";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const NOT_FOUND: &str = "not_found";
    pub const TOO_LARGE: &str = "too_large";
    pub const QUEUE_FULL: &str = "queue_full";
    /// Missed its deadline waiting in the queue (refused at dispatch).
    pub const DEADLINE: &str = "deadline";
    /// Refused on arrival: predicted to be answered after its deadline.
    pub const OVERLOADED: &str = "overloaded";
    pub const DRAINING: &str = "draining";
    pub const ERROR: &str = "error";
}

/// Every metric family of `eali serve`.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub batch_size: HistogramVec,
    pub decision_seconds: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub slo_seconds: GaugeVec,
    pub slo_percentile: GaugeVec,
    pub slo_violations: IntCounterVec,
    pub saturated: IntGaugeVec,
    pub gpu_energy: CounterVec,
    pub gpu_idle_energy: CounterVec,
    pub gpu_power: GaugeVec,
    pub clock_target: GaugeVec,
    pub clock_actual: GaugeVec,
    pub clock_switches: IntCounterVec,
    pub layer_energy: CounterVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    pub fn new() -> Result<Self, TelemetryError> {
        let registry = Registry::new();
        let model = &["model"];
        let gpu = &["gpu"];
        let latency_buckets = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
            1.0, 2.0, 5.0, 10.0,
        ];
        let batch_buckets = (0..=10).map(|i| f64::from(1u32 << i)).collect();
        let m = Self {
            requests: IntCounterVec::new(
                opts(
                    "eali_requests_total",
                    "Infer requests by outcome (ok, bad_request, not_found, too_large, queue_full, deadline, draining, error).",
                ),
                &["model", "outcome"],
            )?,
            request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "eali_request_duration_seconds",
                    "Infer request latency from receipt to response, successful requests.",
                )
                .buckets(latency_buckets),
                model,
            )?,
            batch_size: HistogramVec::new(
                HistogramOpts::new("eali_batch_size", "Requests per executed batch.")
                    .buckets(batch_buckets),
                model,
            )?,
            decision_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "eali_policy_decision_seconds",
                    "Time the policy took per decision (next action, batch done; re-plans included).",
                )
                .buckets(prometheus::exponential_buckets(1e-6, 4.0, 10)?),
                model,
            )?,
            queue_depth: IntGaugeVec::new(
                opts("eali_queue_depth", "Requests waiting in the model's queue."),
                model,
            )?,
            slo_seconds: GaugeVec::new(
                opts("eali_slo_latency_seconds", "Latency SLO target."),
                model,
            )?,
            slo_percentile: GaugeVec::new(
                opts(
                    "eali_slo_percentile",
                    "Percentile the SLO applies to (0-1).",
                ),
                model,
            )?,
            slo_violations: IntCounterVec::new(
                opts(
                    "eali_slo_violations_total",
                    "Successful requests slower than the SLO latency.",
                ),
                model,
            )?,
            saturated: IntGaugeVec::new(
                opts(
                    "eali_saturated",
                    "1 while the scheduler cannot meet the SLO at the observed load.",
                ),
                model,
            )?,
            gpu_energy: CounterVec::new(
                opts(
                    "eali_gpu_energy_joules_total",
                    "GPU energy counter since the server started.",
                ),
                gpu,
            )?,
            gpu_idle_energy: CounterVec::new(
                opts(
                    "eali_gpu_idle_energy_joules_total",
                    "Counted GPU energy attributed to idle time between units.",
                ),
                gpu,
            )?,
            gpu_power: GaugeVec::new(opts("eali_gpu_power_watts", "GPU board power."), gpu)?,
            clock_target: GaugeVec::new(
                opts(
                    "eali_gpu_clock_target_hertz",
                    "Graphics clock last requested (0 = GPU default).",
                ),
                gpu,
            )?,
            clock_actual: GaugeVec::new(
                opts("eali_gpu_clock_hertz", "Graphics clock in force."),
                gpu,
            )?,
            clock_switches: IntCounterVec::new(
                opts("eali_gpu_clock_switches_total", "Clock set-calls issued."),
                gpu,
            )?,
            layer_energy: CounterVec::new(
                opts(
                    "eali_layer_energy_joules_total",
                    "GPU energy attributed to each layer: the energy counter over unit windows, split by the power model.",
                ),
                &["namespace", "service", "model", "unit", "layer"],
            )?,
            registry,
        };
        m.register_all()?;
        Ok(m)
    }

    fn register_all(&self) -> Result<(), TelemetryError> {
        let r = &self.registry;
        r.register(Box::new(self.requests.clone()))?;
        r.register(Box::new(self.request_seconds.clone()))?;
        r.register(Box::new(self.batch_size.clone()))?;
        r.register(Box::new(self.decision_seconds.clone()))?;
        r.register(Box::new(self.queue_depth.clone()))?;
        r.register(Box::new(self.slo_seconds.clone()))?;
        r.register(Box::new(self.slo_percentile.clone()))?;
        r.register(Box::new(self.slo_violations.clone()))?;
        r.register(Box::new(self.saturated.clone()))?;
        r.register(Box::new(self.gpu_energy.clone()))?;
        r.register(Box::new(self.gpu_idle_energy.clone()))?;
        r.register(Box::new(self.gpu_power.clone()))?;
        r.register(Box::new(self.clock_target.clone()))?;
        r.register(Box::new(self.clock_actual.clone()))?;
        r.register(Box::new(self.clock_switches.clone()))?;
        r.register(Box::new(self.layer_energy.clone()))?;
        Ok(())
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// `(labels, value)` of every series of a counter family, labels in name order.
    fn series(c: &CounterVec) -> Vec<(Vec<(String, String)>, f64)> {
        use prometheus::core::Collector;
        c.collect()
            .iter()
            .flat_map(|mf| mf.get_metric().iter())
            .map(|m| {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                (labels, m.get_counter().get_value())
            })
            .collect()
    }

    /// Total of `eali_gpu_energy_joules_total` over all GPUs.
    pub fn gpu_energy_j(&self) -> f64 {
        Self::series(&self.gpu_energy).iter().map(|s| s.1).sum()
    }

    /// `eali_layer_energy_joules_total` as `(unit, layer, joules)`.
    pub fn layer_energy_j(&self) -> Vec<(String, String, f64)> {
        Self::series(&self.layer_energy)
            .into_iter()
            .map(|(labels, v)| {
                let get = |k: &str| {
                    labels
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                (get("unit"), get("layer"), v)
            })
            .collect()
    }

    /// Counts a finished request.
    pub fn request(&self, model: &str, outcome: &str) {
        self.requests.with_label_values(&[model, outcome]).inc();
    }
}

/// Content type of [`Metrics::render`].
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Installs the global tracing subscriber: human-readable lines, or JSON with `json`, filtered by
/// `RUST_LOG` (default `info`). Calling it twice keeps the first.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_text_format() {
        let m = Metrics::new().unwrap();
        m.request("resnet", outcome::OK);
        m.layer_energy
            .with_label_values(&["default", "svc", "resnet50", "stem", "conv1"])
            .inc_by(1.5);
        m.gpu_power.with_label_values(&["GPU-1"]).set(250.0);
        let text = m.render();
        assert!(text.contains("eali_requests_total{model=\"resnet\",outcome=\"ok\"} 1"));
        assert!(text.contains(
            "eali_layer_energy_joules_total{layer=\"conv1\",model=\"resnet50\",namespace=\"default\",service=\"svc\",unit=\"stem\"} 1.5"
        ));
        assert!(text.contains("# TYPE eali_gpu_power_watts gauge"));
    }
}
