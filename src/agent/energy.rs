//! Per-unit and per-layer energy of the serving pods, on the agent: the unit timings a pod streams
//! over its control socket become [`Segment`]s, the GPU's energy counter is sampled, and
//! [`Attributor`] splits every counter change over the segments inside its window (see
//! `telemetry::attribution` for the method). The pod supplies only the weights (its predicted
//! power per unit and energy per layer); every joule exported was measured by the counter.
//!
//! Timings arrive after the fact (a pod reports a batch once it ran), so counter readings are
//! held back by a lag before their window is attributed; a timing that arrives after its window
//! was attributed counts as late and its energy stays idle energy.
//!
//! Cardinality is bounded ([`SeriesTable`]): series exist only for pods that reported timings
//! and are deleted when the pod releases its GPU; per pod at most `max_units_per_pod` unit label
//! sets and `max_layers_per_pod` layer label sets, further ones fold into `_other`; label values
//! are cut to `max_label_len` bytes. No request ids, no batch sizes, no clocks as labels.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::metrics::AgentMetrics;
use crate::control::{AttributedTiming, PodName};
use crate::telemetry::{Attributor, Segment};

/// What the label sets fold into past a cap.
pub const OTHER: &str = "_other";

#[derive(Debug, Clone, PartialEq)]
pub struct EnergyConfig {
    pub max_units_per_pod: usize,
    pub max_layers_per_pod: usize,
    pub max_label_len: usize,
    /// Seconds a counter reading waits for the timings of its window.
    pub lag_s: f64,
    /// The energy counter's update period (10 ms on NVIDIA GPUs).
    pub counter_period_s: f64,
    /// Power readings the idle-power estimate looks back over.
    pub idle_window: usize,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        Self {
            max_units_per_pod: 256,
            max_layers_per_pod: 4096,
            max_label_len: 128,
            lag_s: 2.0,
            counter_period_s: 0.01,
            idle_window: 600,
        }
    }
}

type UnitLabels = [String; 5];

#[derive(Debug, Clone)]
struct Series {
    pod: PodName,
    unit: UnitLabels,
    layer: Option<String>,
}

#[derive(Debug, Default)]
struct PodSeries {
    units: HashSet<UnitLabels>,
    layers: usize,
    keys: Vec<usize>,
}

/// Label sets of the attributed-energy families, interned to the keys segments carry.
#[derive(Debug, Default)]
pub struct SeriesTable {
    cfg_units: usize,
    cfg_layers: usize,
    cfg_len: usize,
    next: usize,
    by_labels: HashMap<(UnitLabels, Option<String>), usize>,
    series: HashMap<usize, Series>,
    pods: HashMap<PodName, PodSeries>,
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl SeriesTable {
    pub fn new(cfg: &EnergyConfig) -> Self {
        Self {
            cfg_units: cfg.max_units_per_pod,
            cfg_layers: cfg.max_layers_per_pod,
            cfg_len: cfg.max_label_len,
            ..Self::default()
        }
    }

    /// The key of a unit's (or, with `layer`, a layer's) series, created within the caps.
    pub fn key(
        &mut self,
        pod: &PodName,
        service: &str,
        model: &str,
        unit: &str,
        layer: Option<&str>,
        metrics: &AgentMetrics,
    ) -> usize {
        let len = self.cfg_len;
        let entry = self.pods.entry(pod.clone()).or_default();
        let mut labels: UnitLabels = [
            cut(&pod.namespace, len),
            cut(&pod.name, len),
            cut(service, len),
            cut(model, len),
            cut(unit, len),
        ];
        if !entry.units.contains(&labels) {
            if entry.units.len() >= self.cfg_units {
                metrics.series_capped.with_label_values(&["unit"]).inc();
                for l in &mut labels[2..] {
                    *l = OTHER.to_string();
                }
            }
            entry.units.insert(labels.clone());
        }
        let mut layer = layer.map(|l| cut(l, len));
        if let Some(name) = &layer
            && !self
                .by_labels
                .contains_key(&(labels.clone(), Some(name.clone())))
        {
            if entry.layers >= self.cfg_layers {
                metrics.series_capped.with_label_values(&["layer"]).inc();
                layer = Some(OTHER.to_string());
            } else {
                entry.layers += 1;
            }
        }
        let id = (labels, layer);
        if let Some(&k) = self.by_labels.get(&id) {
            return k;
        }
        let k = self.next;
        self.next += 1;
        entry.keys.push(k);
        self.series.insert(
            k,
            Series {
                pod: pod.clone(),
                unit: id.0.clone(),
                layer: id.1.clone(),
            },
        );
        self.by_labels.insert(id, k);
        k
    }

    /// Deletes every series of `pod` from the table and the exported families (the pod
    /// released its GPU). Energy still in flight for its keys is dropped.
    pub fn remove_pod(&mut self, pod: &PodName, metrics: &AgentMetrics) {
        let Some(p) = self.pods.remove(pod) else {
            return;
        };
        for k in p.keys {
            if let Some(s) = self.series.remove(&k) {
                let unit: Vec<&str> = s.unit.iter().map(String::as_str).collect();
                let _ = metrics.unit_energy.remove_label_values(&unit);
                if let Some(layer) = &s.layer {
                    let mut all = unit.clone();
                    all.push(layer);
                    let _ = metrics.layer_energy.remove_label_values(&all);
                }
                self.by_labels.remove(&(s.unit, s.layer));
            }
        }
    }

    /// Number of live series (unit and layer label sets).
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// Joules attributed to one pod's model, for the per-node status.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEnergy {
    pub pod: PodName,
    pub inference_service: String,
    pub model: String,
    pub joules: f64,
    /// Requests the pod reported running (the batch sizes of its first units).
    pub requests: u64,
    /// The plan the pod ran last, as its timings show it: batch size and clock per unit.
    pub last_batch: u32,
    pub last_clocks_mhz: Vec<u32>,
}

/// What a pod's timings show of its plan.
#[derive(Debug, Clone, Default, PartialEq)]
struct Observed {
    requests: u64,
    batch: u32,
    clocks_mhz: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    t_s: f64,
    counter_mj: u64,
    power_w: f64,
}

/// The attribution state of one GPU.
#[derive(Debug)]
pub struct GpuEnergy {
    gpu: String,
    lag_s: f64,
    period_s: f64,
    idle_window: usize,
    attributor: Attributor,
    /// Segments not yet handed to the attributor; a NaN power means "weight by time".
    pending: Vec<Segment>,
    readings: VecDeque<Reading>,
    recent_power: VecDeque<f64>,
    processed_to_s: f64,
    last_counter_mj: Option<u64>,
    by_service: HashMap<(PodName, String, String), f64>,
    observed: HashMap<(PodName, String, String), Observed>,
}

impl GpuEnergy {
    pub fn new(gpu: &str, cfg: &EnergyConfig) -> Self {
        Self {
            gpu: gpu.to_string(),
            lag_s: cfg.lag_s.max(0.0),
            period_s: cfg.counter_period_s,
            idle_window: cfg.idle_window.max(1),
            attributor: Attributor::new(cfg.counter_period_s),
            pending: Vec::new(),
            readings: VecDeque::new(),
            recent_power: VecDeque::new(),
            processed_to_s: f64::NEG_INFINITY,
            last_counter_mj: None,
            by_service: HashMap::new(),
            observed: HashMap::new(),
        }
    }

    /// A unit timing reported by the pod holding this GPU (times in Unix seconds).
    pub fn timing(&mut self, t: &AttributedTiming, table: &mut SeriesTable, m: &AgentMetrics) {
        let u = &t.timing;
        if u.end_unix_s.partial_cmp(&u.start_unix_s) != Some(std::cmp::Ordering::Greater)
            || !u.start_unix_s.is_finite()
        {
            return;
        }
        if u.end_unix_s <= self.processed_to_s {
            m.timings.with_label_values(&["late"]).inc();
            return;
        }
        let unit = if u.unit_name.is_empty() {
            u.unit.to_string()
        } else {
            u.unit_name.clone()
        };
        let (svc, model) = (&u.inference_service, &u.model);
        let seen = self
            .observed
            .entry((t.pod.clone(), svc.clone(), model.clone()))
            .or_default();
        if u.unit == 0 {
            // A batch starts with its first unit.
            seen.requests += u64::from(u.batch);
            seen.batch = u.batch;
            seen.clocks_mhz.clear();
        }
        if seen.clocks_mhz.len() < 256 {
            seen.clocks_mhz.push(u.clock_mhz);
        }
        let mut shares: Vec<(usize, f64)> = u
            .layers
            .iter()
            .map(|l| {
                let k = table.key(&t.pod, svc, model, &unit, Some(&l.name), m);
                let w = if l.predicted_energy_j.is_finite() {
                    l.predicted_energy_j.max(0.0)
                } else {
                    0.0
                };
                (k, w)
            })
            .collect();
        let total: f64 = shares.iter().map(|s| s.1).sum();
        if shares.is_empty() {
            shares.push((table.key(&t.pod, svc, model, &unit, None, m), 1.0));
        } else if total > 0.0 {
            shares.iter_mut().for_each(|s| s.1 /= total);
        } else {
            let n = shares.len() as f64;
            shares.iter_mut().for_each(|s| s.1 = 1.0 / n);
        }
        let power_w = if u.predicted_power_w.is_finite() && u.predicted_power_w > 0.0 {
            u.predicted_power_w
        } else {
            f64::NAN
        };
        tracing::debug!(
            gpu = %self.gpu,
            start = u.start_unix_s,
            end = u.end_unix_s,
            processed_to = self.processed_to_s,
            "unit timing queued"
        );
        self.pending.push(Segment {
            start_s: u.start_unix_s,
            end_s: u.end_unix_s,
            power_w,
            shares: Arc::from(shares),
        });
        m.timings.with_label_values(&["attributed"]).inc();
    }

    /// A sample of the GPU at Unix time `t_s`: counter (mJ) and board power (W).
    pub fn reading(&mut self, t_s: f64, counter_mj: u64, power_w: f64, m: &AgentMetrics) {
        if let Some(prev) = self.last_counter_mj
            && counter_mj > prev
        {
            m.gpu_energy
                .with_label_values(&[&self.gpu])
                .inc_by((counter_mj - prev) as f64 / 1000.0);
        }
        if self.last_counter_mj.is_some_and(|prev| counter_mj < prev) {
            // The counter went back (driver reloaded): start the attribution afresh.
            tracing::warn!(gpu = %self.gpu, "energy counter went back; attribution restarted");
            self.readings.clear();
            self.attributor = Attributor::new(self.period_s);
        }
        self.last_counter_mj = Some(counter_mj);
        self.readings.push_back(Reading {
            t_s,
            counter_mj,
            power_w,
        });
    }

    /// Attributes every reading older than the lag at Unix time `now_s`.
    pub fn process(&mut self, now_s: f64, table: &SeriesTable, m: &AgentMetrics) {
        while self
            .readings
            .front()
            .is_some_and(|r| r.t_s <= now_s - self.lag_s)
        {
            let Some(r) = self.readings.pop_front() else {
                break;
            };
            self.feed_segments(r);
            let idle_w = self.idle_estimate(r.power_w);
            if let Some(a) = self.attributor.reading(r.t_s, r.counter_mj, idle_w) {
                tracing::trace!(gpu = %self.gpu, t = r.t_s, idle_j = a.idle_j, busy = a.busy.len(), "counter window attributed");
                m.gpu_idle_energy
                    .with_label_values(&[&self.gpu])
                    .inc_by(a.idle_j);
                for (k, j) in a.busy {
                    let Some(s) = table.series.get(&k) else {
                        continue;
                    };
                    let unit: Vec<&str> = s.unit.iter().map(String::as_str).collect();
                    m.unit_energy.with_label_values(&unit).inc_by(j);
                    if let Some(layer) = &s.layer {
                        let mut all = unit;
                        all.push(layer);
                        m.layer_energy.with_label_values(&all).inc_by(j);
                    }
                    *self
                        .by_service
                        .entry((s.pod.clone(), s.unit[2].clone(), s.unit[3].clone()))
                        .or_default() += j;
                }
            }
            self.processed_to_s = r.t_s;
        }
    }

    /// Hands the attributor, in start order, the segments that began before reading `r`.
    fn feed_segments(&mut self, r: Reading) {
        self.pending.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        let n = self.pending.partition_point(|s| s.start_s < r.t_s);
        for mut s in self.pending.drain(..n) {
            if s.power_w.is_nan() {
                // No prediction: weight by time at the measured power.
                s.power_w = r.power_w.max(1e-3);
            }
            self.attributor.busy(s);
        }
    }

    /// Idle power: the lowest recent reading (the GPU idles between batches at its floor).
    fn idle_estimate(&mut self, power_w: f64) -> f64 {
        if power_w.is_finite() && power_w >= 0.0 {
            self.recent_power.push_back(power_w);
            if self.recent_power.len() > self.idle_window {
                self.recent_power.pop_front();
            }
        }
        self.recent_power
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(1e6)
    }

    /// Forgets `pod`'s totals (it released the GPU).
    pub fn forget_pod(&mut self, pod: &PodName) {
        self.by_service.retain(|k, _| &k.0 != pod);
        self.observed.retain(|k, _| &k.0 != pod);
    }

    /// Joules attributed so far per pod and model.
    pub fn services(&self) -> Vec<ServiceEnergy> {
        let mut v: Vec<ServiceEnergy> = self
            .by_service
            .iter()
            .map(|(key, j)| {
                let seen = self.observed.get(key).cloned().unwrap_or_default();
                let (pod, svc, model) = key;
                ServiceEnergy {
                    pod: pod.clone(),
                    inference_service: svc.clone(),
                    model: model.clone(),
                    joules: *j,
                    requests: seen.requests,
                    last_batch: seen.batch,
                    last_clocks_mhz: seen.clocks_mhz,
                }
            })
            .collect();
        v.sort_by(|a, b| {
            (&a.pod.namespace, &a.pod.name, &a.model).cmp(&(
                &b.pod.namespace,
                &b.pod.name,
                &b.model,
            ))
        });
        v
    }
}

#[cfg(test)]
#[path = "energy_tests.rs"]
mod tests;
