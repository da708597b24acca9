//! The worker's telemetry: GPU power, clocks and energy counter read at most every tick, and
//! the energy counter attributed to units and layers over unit windows (the unit-boundary hook).

use std::ops::Range;

use super::{TICK_S, Worker};
use crate::control::proto::ServingWindow;
use crate::exec::{UnitHook, UnitRecord};
use crate::serve::device::ServingDevice;
use crate::telemetry::Attribution;

impl Worker {
    /// GPU telemetry and an energy-counter read for attribution, at most every [`TICK_S`].
    pub(super) fn tick(&mut self, force: bool) {
        let now = self.now_s();
        if !force && now - self.last_tick_s < TICK_S {
            return;
        }
        self.last_tick_s = now;
        self.close_window(now);
        let Some(dev) = &self.device else { return };
        let r = dev.read();
        let (clock, counter) = (r.clock_mhz, r.energy_mj);
        let gpu = [self.gpu_label.as_str()];
        if let Some(p) = r.power_w {
            self.metrics.gpu_power.with_label_values(&gpu).set(p);
        }
        if let Some(f) = clock {
            self.metrics
                .clock_actual
                .with_label_values(&gpu)
                .set(f64::from(f) * 1e6);
        }
        if let Some(mj) = counter {
            self.counter_read(now, mj, clock.unwrap_or(0));
        }
    }

    /// Closes the serving window when it is due; in a pod, its figures go to the node agent,
    /// which publishes them as this pod's entry of the InferenceService's `status.reports`.
    fn close_window(&mut self, now: f64) {
        if !self.window.due(now) {
            return;
        }
        let (idle_now, idle_max) = match &self.power {
            Some(p) => {
                let fmax = p.max_clock_mhz();
                let held = self.device.as_ref().and_then(|d| d.clock_mhz());
                (p.idle_w(held.unwrap_or(fmax)), p.idle_w(fmax))
            }
            None => (0.0, 0.0),
        };
        let f = self
            .window
            .close(now, idle_now, idle_max, self.capacity_rps);
        tracing::debug!(
            model = %self.info.name,
            requests = f.requests,
            latency_ms = f.latency_s.map(|s| s * 1e3),
            load = f.load_ratio,
            saturated = f.saturated,
            saved = f.energy_saved_ratio(),
            "serving window"
        );
        let Some(dev) = self.device.as_ref() else {
            return;
        };
        if dev.agent_attributes() {
            dev.report_window(ServingWindow {
                gpu_uuid: String::new(),
                inference_service: self.info.name.clone(),
                model: self.info.graph.name.clone(),
                window_s: f.window_s(),
                end_unix_s: dev.unix_s(f.end_s),
                requests: f.requests,
                latency_ms: f.latency_s.map(|s| s * 1e3),
                slo_percentile: self.info.percentile,
                slo_latency_ms: self.info.slo_s * 1e3,
                load_ratio: f.load_ratio,
                saturated: f.saturated,
                predicted_energy_j: f.predicted_energy_j,
                max_clock_energy_j: f.max_clock_energy_j,
            });
        }
    }

    /// Feeds one counter reading to the GPU energy total and the attribution.
    pub(super) fn counter_read(&mut self, t_s: f64, mj: u64, clock_mhz: u32) {
        if let Some(prev) = self.last_counter_mj {
            let d = mj.saturating_sub(prev) as f64 / 1000.0;
            self.metrics
                .gpu_energy
                .with_label_values(&[&self.gpu_label])
                .inc_by(d);
        }
        self.last_counter_mj = Some(mj);
        let idle_w = self.power.as_ref().map_or(0.0, |p| p.idle_w(clock_mhz));
        if let Some(a) = self.attributor.reading(t_s, mj, idle_w) {
            self.apply(a);
        }
    }

    fn apply(&self, a: Attribution) {
        for (layer, j) in a.busy {
            if let Some(c) = self.layer_counters.get(layer) {
                c.inc_by(j);
            }
        }
        self.metrics
            .gpu_idle_energy
            .with_label_values(&[&self.gpu_label])
            .inc_by(a.idle_j);
    }
}

/// Unit-boundary hook of the serving loop: energy attribution per unit and layer.
pub(super) struct Hook<'a> {
    pub(super) worker: &'a mut Worker,
    /// The worker's device, held outside the worker while it runs the batch.
    pub(super) device: Option<&'a dyn ServingDevice>,
    pub(super) units: &'a [Range<usize>],
    /// The plan's clock per unit (`None`: the GPU's own).
    pub(super) planned: &'a [Option<u32>],
    pub(super) batch: u32,
}

impl UnitHook for Hook<'_> {
    fn unit_end(&mut self, r: &UnitRecord) {
        let w = &mut *self.worker;
        w.unit_clocks.push(r.clock_mhz);
        #[cfg(test)]
        w.ran
            .push((*r, self.planned.get(r.unit).copied().flatten(), self.batch));
        let Some(dev) = self.device else {
            return;
        };
        let range = self.units.get(r.unit);
        let planned = self.planned.get(r.unit).copied().flatten().unwrap_or(0);
        tracing::debug!(
            model = %w.info.name,
            unit = r.unit,
            batch = self.batch,
            planned_mhz = planned,
            start_unix_s = dev.unix_s(r.start_s),
            end_unix_s = dev.unix_s(r.end_s),
            "unit ran"
        );
        if !dev.agent_attributes() {
            // The record's counter is the device's, read at the unit's end.
            if let (Some(power), Some(range)) = (&w.power, range) {
                let seg = power.segment(range.clone(), self.batch, r.clock_mhz, r.start_s, r.end_s);
                w.attributor.busy(seg);
            }
            if let Some(mj) = r.energy_counter_mj {
                w.counter_read(r.end_s, mj, r.clock_mhz);
            }
            return;
        }
        // In a pod that holds a GPU, the node agent attributes its energy counter to this
        // pod's units and layers from these timings (`eali_layer_energy_joules_total` there).
        if let Some(range) = range {
            let unit_name = format!("u{}", r.unit);
            let run = crate::control::remote::UnitRun {
                model: &w.info.graph.name,
                service: &w.info.name,
                unit: u32::try_from(r.unit).unwrap_or(u32::MAX),
                unit_name: &unit_name,
                layers: range.clone(),
                batch: self.batch,
                clock_mhz: r.clock_mhz,
                start_unix_s: dev.unix_s(r.start_s),
                end_unix_s: dev.unix_s(r.end_s),
            };
            dev.report_units(vec![run.timing(w.power.as_ref())]);
        }
    }
}
