//! The per-layer profiler: runs every layer of a model over a grid of batch sizes and graphics
//! clocks, each layer through the model's [`Executor`] and the clocks, power and energy counter
//! through the GPU's [`GpuBackend`], exactly as on a real GPU.
//!
//! Per clock: lock the clock, wait until the GPU reports it in force, measure idle power, then
//! for each (layer, batch) run the layer back to back long enough (default ≥ 200 ms of device
//! time) that the energy counter's coarse steps (≈10 ms, whole mJ) do not matter, and read the
//! counter at its ticks: before the run we wait for a tick, after the run we wait for the next one
//! and subtract the idle energy of that short wait. GPUs without an energy counter (before Volta)
//! fall back to sampling board power during the run; the profile says so. Clocks are reset at the
//! end, also when a measurement fails: a GPU is never left locked.

use super::error::{PerfError, Result};
use super::profile::{
    EnergySource, GpuMeta, IdlePoint, LayerInfo, PROFILE_FORMAT, Profile, ProfileRecord,
};
use crate::exec::Executor;
use crate::gpu::{GpuBackend, LayerWork, PowerSemantics};
use crate::model::Graph;

/// Default batch sizes.
pub const DEFAULT_BATCHES: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Default number of graphics clocks.
pub const DEFAULT_CLOCK_COUNT: usize = 8;

/// Which graphics clocks to profile.
#[derive(Debug, Clone, PartialEq)]
pub enum ClockSelection {
    /// This many supported clocks spread evenly over the supported range (max always included).
    Spread(usize),
    /// These clocks, each snapped to the nearest supported one.
    List(Vec<u32>),
}

/// What to measure and how long.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileConfig {
    pub batches: Vec<u32>,
    pub clocks: ClockSelection,
    /// Minimum device time of one measurement (s).
    pub min_measure_s: f64,
    /// Device time spent measuring idle power at each clock (s).
    pub idle_measure_s: f64,
    /// How long to wait for a requested clock to be in force (s of device time).
    pub clock_timeout_s: f64,
    /// Backend selector recorded in the profile (e.g. "sim:v100").
    pub backend: String,
    /// Seed of a simulated backend, recorded in the profile.
    pub seed: Option<u64>,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            batches: DEFAULT_BATCHES.to_vec(),
            clocks: ClockSelection::Spread(DEFAULT_CLOCK_COUNT),
            min_measure_s: 0.2,
            idle_measure_s: 0.5,
            clock_timeout_s: 2.0,
            backend: String::new(),
            seed: None,
        }
    }
}

/// Progress of a running profile, reported after every measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress<'a> {
    pub done: usize,
    pub total: usize,
    pub clock_mhz: u32,
    pub layer: &'a str,
    pub batch: u32,
    /// Device time spent so far (s).
    pub device_time_s: f64,
}

/// Poll step while waiting for a clock or an energy-counter tick (s).
const POLL_S: f64 = 0.0005;
/// Give up waiting for a counter tick after this long (s): the counter is stuck.
const TICK_TIMEOUT_S: f64 = 0.5;
/// Power-sampling interval on GPUs without an energy counter (s); NVML warns that faster polling
/// returns stale values.
const SAMPLE_S: f64 = 0.02;

/// `count` supported clocks spread evenly over the supported range, ascending; always contains the
/// highest and lowest supported clock (when `count` ≥ 2).
pub fn spread_clocks(supported: &[u32], count: usize) -> Vec<u32> {
    let mut s: Vec<u32> = supported.to_vec();
    s.sort_unstable();
    s.dedup();
    let (Some(&lo), Some(&hi)) = (s.first(), s.last()) else {
        return Vec::new();
    };
    if count == 0 {
        return Vec::new();
    }
    if count == 1 {
        return vec![hi];
    }
    let mut out: Vec<u32> = (0..count)
        .map(|i| {
            let target = f64::from(lo) + f64::from(hi - lo) * i as f64 / (count - 1) as f64;
            nearest(&s, target)
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn nearest(sorted: &[u32], target: f64) -> u32 {
    sorted
        .iter()
        .copied()
        .min_by(|a, b| {
            (f64::from(*a) - target)
                .abs()
                .total_cmp(&(f64::from(*b) - target).abs())
        })
        .unwrap_or(0)
}

/// Static facts of every layer of `graph`.
pub fn layer_infos(graph: &Graph) -> Vec<LayerInfo> {
    (0..graph.layers.len())
        .map(|id| {
            let (w1, w2) = (graph.layer_work(id, 1), graph.layer_work(id, 2));
            let per_sample = w2.bytes - w1.bytes;
            LayerInfo {
                name: graph.layers[id].name.clone(),
                op: graph.layers[id].op.kind_name().to_string(),
                kind: w1.kind,
                macs_per_sample: graph.layer_macs(id),
                flops_per_sample: w1.flops,
                params: graph.layer_params(id),
                bytes_fixed: w1.bytes - per_sample,
                bytes_per_sample: per_sample,
            }
        })
        .collect()
}

/// Profiles every layer of `graph` on `gpu` over the configured batch sizes and clocks, each
/// layer run by `exec` (an executor of `graph` on that GPU). Clocks are reset before returning,
/// whether or not profiling succeeded.
pub fn profile<G>(
    gpu: &mut G,
    exec: &mut dyn Executor,
    graph: &Graph,
    cfg: &ProfileConfig,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Result<Profile>
where
    G: GpuBackend + ?Sized,
{
    let mut batches = cfg.batches.clone();
    batches.sort_unstable();
    batches.dedup();
    if batches.is_empty() || batches[0] == 0 {
        return Err(PerfError::InvalidInput(
            "batch sizes must be a non-empty list of positive numbers".into(),
        ));
    }
    if !(cfg.min_measure_s > 0.0 && cfg.idle_measure_s > 0.0) {
        return Err(PerfError::InvalidInput(
            "measurement times must be positive".into(),
        ));
    }
    let info = gpu.info().clone();
    let memory_clock_mhz = gpu
        .supported_memory_clocks()?
        .into_iter()
        .max()
        .ok_or_else(|| PerfError::InvalidInput("GPU reports no memory clocks".into()))?;
    let supported = gpu.supported_graphics_clocks(memory_clock_mhz)?;
    let max_clock_mhz = supported.iter().copied().max().ok_or_else(|| {
        PerfError::InvalidInput("GPU reports no supported graphics clocks".into())
    })?;
    let clocks = match &cfg.clocks {
        ClockSelection::Spread(n) => spread_clocks(&supported, *n),
        ClockSelection::List(list) => {
            let mut s = supported.clone();
            s.sort_unstable();
            let mut v: Vec<u32> = list.iter().map(|&c| nearest(&s, f64::from(c))).collect();
            v.sort_unstable();
            v.dedup();
            v
        }
    };
    if clocks.is_empty() {
        return Err(PerfError::InvalidInput("no clocks to profile".into()));
    }

    let mut notes = Vec::new();
    let energy_source = if info.architecture.has_energy_counter() && gpu.energy_mj().is_ok() {
        EnergySource::Counter
    } else {
        notes.push(format!(
            "{} has no energy counter: energy = mean of power samples every {} ms × run time",
            info.name,
            SAMPLE_S * 1e3
        ));
        EnergySource::PowerSampling
    };

    let layers = layer_infos(graph);
    let start_s = gpu.now_s();
    let mut run = Run {
        gpu,
        exec,
        memory_clock_mhz,
        locked: info.architecture.has_locked_clocks(),
        source: energy_source,
        cfg,
        notes: Vec::new(),
        averaged: false,
    };
    let measured = run.grid(graph, &layers, &batches, &clocks, start_s, progress);
    let reset = run.reset_clocks();
    let (records, idle) = measured?;
    reset?;
    notes.append(&mut run.notes);
    if run.averaged {
        notes.push(
            "power readings are 1 s averages: each sampled run was extended by 1 s of warm-up \
             before sampling"
                .into(),
        );
    }
    let device_time_s = run.gpu.now_s() - start_s;

    Ok(Profile {
        format: PROFILE_FORMAT,
        model: graph.name.clone(),
        gpu: GpuMeta {
            name: info.name.clone(),
            backend: cfg.backend.clone(),
            architecture: info.architecture,
            max_clock_mhz,
            memory_clock_mhz,
        },
        seed: cfg.seed,
        batches,
        clocks_mhz: clocks,
        energy_source,
        min_measure_s: cfg.min_measure_s,
        input_bytes_per_sample: graph.input.elements() * 4,
        layers,
        idle,
        records,
        device_time_s,
        notes,
    })
}

type Measured = (Vec<ProfileRecord>, Vec<IdlePoint>);

struct Run<'a, G: ?Sized> {
    gpu: &'a mut G,
    exec: &'a mut dyn Executor,
    memory_clock_mhz: u32,
    locked: bool,
    source: EnergySource,
    cfg: &'a ProfileConfig,
    /// Caveats found while measuring.
    notes: Vec<String>,
    /// Whether power readings turned out to be 1 s averages.
    averaged: bool,
}

impl<G: GpuBackend + ?Sized> Run<'_, G> {
    fn grid(
        &mut self,
        graph: &Graph,
        layers: &[LayerInfo],
        batches: &[u32],
        clocks: &[u32],
        start_s: f64,
        progress: &mut dyn FnMut(&Progress<'_>),
    ) -> Result<Measured> {
        let active: Vec<usize> = (0..layers.len())
            .filter(|&i| !layers[i].is_noop())
            .collect();
        let total = clocks.len() * batches.len() * active.len();
        let mut done = 0;
        let mut records = Vec::with_capacity(total);
        let mut idle = Vec::with_capacity(clocks.len());
        let mut capped = 0;
        // Clock outermost: one clock change per clock, not per measurement.
        for &clock in clocks {
            self.set_clock(clock)?;
            let idle_w = self.idle_power()?;
            idle.push(IdlePoint {
                clock_mhz: clock,
                power_w: idle_w,
            });
            for &id in &active {
                for &batch in batches {
                    let work = graph.layer_work(id, batch);
                    let info = &layers[id];
                    let (time_s, energy_j, repeats, power_capped) =
                        self.measure(id, &work, idle_w)?;
                    capped += usize::from(power_capped);
                    records.push(ProfileRecord {
                        layer: id,
                        name: info.name.clone(),
                        kind: work.kind,
                        macs: info.macs(batch),
                        flops: work.flops,
                        params: info.params,
                        bytes: work.bytes,
                        batch,
                        clock_mhz: clock,
                        time_s,
                        energy_j,
                        power_w: energy_j / time_s,
                        repeats,
                        power_capped,
                    });
                    done += 1;
                    progress(&Progress {
                        done,
                        total,
                        clock_mhz: clock,
                        layer: &info.name,
                        batch,
                        device_time_s: self.gpu.now_s() - start_s,
                    });
                }
            }
        }
        if capped > 0 {
            self.notes.push(format!(
                "{capped} of {total} measurements hit the power cap and ran below the requested \
                 clock (marked power_capped)"
            ));
        }
        Ok((records, idle))
    }

    /// Locks the graphics clock and waits until the GPU reports it in force.
    fn set_clock(&mut self, mhz: u32) -> Result<()> {
        let change = if self.locked {
            self.gpu.set_locked_clocks(mhz, mhz)?
        } else {
            self.gpu
                .set_application_clocks(self.memory_clock_mhz, mhz)?
        };
        let start = self.gpu.now_s();
        let wait = change.effective_at_s - start;
        if wait > 0.0 {
            self.gpu.idle(wait)?;
        }
        loop {
            let now = self.gpu.clocks()?.graphics_mhz;
            if now == change.applied_mhz {
                return Ok(());
            }
            let waited_s = self.gpu.now_s() - start;
            if waited_s > self.cfg.clock_timeout_s {
                return Err(PerfError::ClockNotReached {
                    requested_mhz: change.applied_mhz,
                    actual_mhz: now,
                    waited_s,
                });
            }
            self.gpu.idle(POLL_S)?;
        }
    }

    /// Resets the clocks and waits until the reset is in force, so the caller gets the GPU back
    /// unlocked.
    fn reset_clocks(&mut self) -> Result<()> {
        let change = if self.locked {
            self.gpu.reset_locked_clocks()?
        } else {
            self.gpu.reset_application_clocks()?
        };
        let wait = change.effective_at_s - self.gpu.now_s();
        if wait > 0.0 {
            self.gpu.idle(wait)?;
        }
        Ok(())
    }

    /// Idles until the energy counter publishes a new value; returns it and the time it was seen.
    fn next_tick(&mut self) -> Result<(u64, f64)> {
        let first = self.gpu.energy_mj()?;
        let start = self.gpu.now_s();
        loop {
            self.gpu.idle(POLL_S)?;
            let e = self.gpu.energy_mj()?;
            let now = self.gpu.now_s();
            if e != first {
                return Ok((e, now));
            }
            if now - start > TICK_TIMEOUT_S {
                return Err(PerfError::CounterStuck {
                    waited_s: TICK_TIMEOUT_S,
                });
            }
        }
    }

    fn idle_power(&mut self) -> Result<f64> {
        match self.source {
            EnergySource::Counter => {
                let (e0, t0) = self.next_tick()?;
                self.gpu.idle(self.cfg.idle_measure_s)?;
                let (e1, t1) = self.next_tick()?;
                // Both readings were taken within one poll step after a tick, so the tick-to-tick
                // interval is t1 − t0 to within a poll step.
                Ok(counter_delta_j(e0, e1)? / (t1 - t0))
            }
            EnergySource::PowerSampling => {
                let n = (self.cfg.idle_measure_s / SAMPLE_S).ceil().max(1.0) as usize;
                let mut sum = 0.0;
                for _ in 0..n {
                    self.gpu.idle(SAMPLE_S)?;
                    sum += self.gpu.power()?.watts;
                }
                Ok(sum / n as f64)
            }
        }
    }

    /// Time per run, energy per run, repeats, and whether the power cap bound, of one
    /// (layer, batch) at the current clock.
    fn measure(
        &mut self,
        layer: usize,
        work: &LayerWork,
        idle_w: f64,
    ) -> Result<(f64, f64, u32, bool)> {
        // A short warm-up run gives the per-run time from which the repeat count follows.
        const WARMUP: u32 = 3;
        let warm = self.exec.run_layer(layer, work.batch, WARMUP)? / f64::from(WARMUP);
        if !(warm > 0.0 && warm.is_finite()) {
            return Err(PerfError::InvalidInput(format!(
                "backend reported a non-positive run time for a {:?} layer",
                work.kind
            )));
        }
        let repeats = (self.cfg.min_measure_s / warm).ceil().clamp(1.0, 1e8) as u32;
        match self.source {
            EnergySource::Counter => {
                let (e0, _) = self.next_tick()?;
                let elapsed = self.exec.run_layer(layer, work.batch, repeats)?;
                let capped = self.gpu.throttle_reasons()?.sw_power_cap;
                let run_end = self.gpu.now_s();
                let (e1, t1) = self.next_tick()?;
                // The closing reading also holds the idle energy from the end of the run to the
                // tick; the tick came at most one poll step before we saw it.
                let tail_s = (t1 - run_end - 0.5 * POLL_S).max(0.0);
                let energy = counter_delta_j(e0, e1)? - idle_w * tail_s;
                let r = f64::from(repeats);
                Ok((elapsed / r, energy.max(0.0) / r, repeats, capped))
            }
            EnergySource::PowerSampling => self.measure_sampled(layer, work.batch, warm, repeats),
        }
    }

    /// Runs the layer in chunks of about one sampling interval and reads power after each.
    fn measure_sampled(
        &mut self,
        layer: usize,
        batch: u32,
        warm: f64,
        repeats: u32,
    ) -> Result<(f64, f64, u32, bool)> {
        let chunk = ((SAMPLE_S / warm).ceil() as u32).clamp(1, repeats);
        let semantics = self.gpu.power()?.semantics;
        if semantics == PowerSemantics::Averaged1s {
            // A 1 s moving average only describes this layer after a second of running it.
            self.averaged = true;
            let warm_chunks = (1.0 / (warm * f64::from(chunk))).ceil() as u32;
            for _ in 0..warm_chunks {
                self.exec.run_layer(layer, batch, chunk)?;
            }
        }
        let (mut elapsed, mut runs, mut sum_w, mut samples) = (0.0, 0u32, 0.0, 0u32);
        let mut capped = false;
        while runs < repeats {
            let n = chunk.min(repeats - runs);
            elapsed += self.exec.run_layer(layer, batch, n)?;
            runs += n;
            sum_w += self.gpu.power()?.watts;
            samples += 1;
            capped |= self.gpu.throttle_reasons()?.sw_power_cap;
        }
        let t = elapsed / f64::from(runs);
        Ok((t, sum_w / f64::from(samples) * t, runs, capped))
    }
}

/// Energy between two counter readings (J); a counter that went backwards (driver reload) is an
/// error rather than a huge unsigned difference.
fn counter_delta_j(before_mj: u64, after_mj: u64) -> Result<f64> {
    after_mj
        .checked_sub(before_mj)
        .map(|d| d as f64 * 1e-3)
        .ok_or_else(|| {
            PerfError::InvalidInput(format!(
                "energy counter went backwards ({before_mj} → {after_mj} mJ)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_includes_extremes_and_is_ascending() {
        let supported: Vec<u32> = (0..=187).rev().map(|i| 135 + i * 15 / 2).collect();
        let c = spread_clocks(&supported, 8);
        assert_eq!(c.len(), 8);
        assert_eq!(*c.last().unwrap(), *supported.iter().max().unwrap());
        assert_eq!(c[0], 135);
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert!(c.iter().all(|x| supported.contains(x)));
        assert_eq!(spread_clocks(&supported, 1), vec![1537]);
        assert_eq!(spread_clocks(&[300, 200], 5), vec![200, 300]);
        assert!(spread_clocks(&[], 3).is_empty());
    }
}
