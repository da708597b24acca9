//! The simulated-GPU executor: a batch runs on the calibrated [`SimGpu`] unit by unit, so its
//! timing, clock transitions and energy are the simulator's. No outputs are computed.
//!
//! [`SimDevice`] shares one simulated GPU between the executor, the clock actuator and the
//! telemetry sampler. Under [`DeviceClock::Wall`] the GPU's device time follows the wall clock
//! (seconds since the device was created): every access first lets the GPU idle up to "now", and
//! the executor sleeps until each unit's simulated end, so a client sees GPU-speed latencies.
//! Under [`DeviceClock::Virtual`] nothing sleeps: time is the simulator's own (for tests).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{BatchRequest, BatchRun, ExecError, Executor, UnitHook, UnitRecord, check_units};
use crate::gpu::sim::{SimGpu, SpanCost};
use crate::gpu::{
    ClockChange, ClockState, GpuBackend, GpuError, GpuInfo, HealthEvent, LayerWork, PowerLimit,
    PowerReading, ThrottleReasons,
};
use crate::model::Graph;

/// How a simulated GPU's device time relates to the wall clock.
#[derive(Debug, Clone, Copy)]
pub enum DeviceClock {
    /// Device time = wall seconds since `epoch`.
    Wall(Instant),
    /// Device time advances only as the simulator runs work.
    Virtual,
}

/// A simulated GPU shared across threads. It is a [`GpuBackend`] itself (each call locks the
/// GPU), so the profiler reads and sets the GPU that the executor runs layers on.
#[derive(Debug, Clone)]
pub struct SimDevice {
    gpu: Arc<Mutex<SimGpu>>,
    clock: DeviceClock,
    /// The GPU's inventory (fixed for its life), readable without the lock.
    info: Arc<GpuInfo>,
}

impl SimDevice {
    pub fn new(gpu: SimGpu, clock: DeviceClock) -> Self {
        let info = Arc::new(gpu.info().clone());
        Self {
            gpu: Arc::new(Mutex::new(gpu)),
            clock,
            info,
        }
    }

    /// A device whose time follows the wall clock from now on.
    pub fn wall(gpu: SimGpu) -> Self {
        Self::new(gpu, DeviceClock::Wall(Instant::now()))
    }

    fn wall_s(&self) -> Option<f64> {
        match self.clock {
            DeviceClock::Wall(epoch) => Some(epoch.elapsed().as_secs_f64()),
            DeviceClock::Virtual => None,
        }
    }

    /// The GPU, idled up to the wall clock first (under [`DeviceClock::Wall`]).
    pub fn lock(&self) -> MutexGuard<'_, SimGpu> {
        // A panic while holding the lock leaves a consistent simulator behind (every mutation is
        // completed before control returns), so a poisoned lock is still usable.
        let mut g = self.gpu.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.wall_s() {
            g.advance_to(t);
        }
        g
    }

    /// Device time now (s): the later of the wall clock and the end of the work run so far.
    pub fn now_s(&self) -> f64 {
        self.lock().now()
    }

    /// Converts a device time to the wall-clock instant it corresponds to (None when virtual).
    pub fn instant_at(&self, t_s: f64) -> Option<Instant> {
        match self.clock {
            DeviceClock::Wall(epoch) => Some(epoch + Duration::from_secs_f64(t_s.max(0.0))),
            DeviceClock::Virtual => None,
        }
    }

    /// Sleeps until the wall clock reaches device time `t_s` (returns at once when virtual).
    pub fn sleep_until(&self, t_s: f64) {
        if let Some(at) = self.instant_at(t_s) {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
        }
    }

    /// A copy of the GPU as it is now (its clocks, counter and time).
    pub fn snapshot(&self) -> SimGpu {
        self.lock().clone()
    }

    pub fn profile_name(&self) -> String {
        self.lock().profile().name().to_string()
    }
}

/// Every call locks the shared GPU (idled up to the wall clock first, under
/// [`DeviceClock::Wall`]).
impl GpuBackend for SimDevice {
    fn info(&self) -> &GpuInfo {
        &self.info
    }
    fn now_s(&self) -> f64 {
        SimDevice::now_s(self)
    }
    fn supported_memory_clocks(&self) -> Result<Vec<u32>, GpuError> {
        self.lock().supported_memory_clocks()
    }
    fn supported_graphics_clocks(&self, memory_mhz: u32) -> Result<Vec<u32>, GpuError> {
        self.lock().supported_graphics_clocks(memory_mhz)
    }
    fn default_graphics_clock(&self) -> Result<u32, GpuError> {
        self.lock().default_graphics_clock()
    }
    fn clocks(&self) -> Result<ClockState, GpuError> {
        self.lock().clocks()
    }
    fn set_locked_clocks(&mut self, min_mhz: u32, max_mhz: u32) -> Result<ClockChange, GpuError> {
        self.lock().set_locked_clocks(min_mhz, max_mhz)
    }
    fn reset_locked_clocks(&mut self) -> Result<ClockChange, GpuError> {
        self.lock().reset_locked_clocks()
    }
    fn set_application_clocks(
        &mut self,
        memory_mhz: u32,
        graphics_mhz: u32,
    ) -> Result<ClockChange, GpuError> {
        self.lock().set_application_clocks(memory_mhz, graphics_mhz)
    }
    fn reset_application_clocks(&mut self) -> Result<ClockChange, GpuError> {
        self.lock().reset_application_clocks()
    }
    fn power(&self) -> Result<PowerReading, GpuError> {
        self.lock().power()
    }
    fn energy_mj(&self) -> Result<u64, GpuError> {
        self.lock().energy_mj()
    }
    fn power_limit(&self) -> Result<PowerLimit, GpuError> {
        self.lock().power_limit()
    }
    fn set_power_limit(&mut self, watts: f64) -> Result<(), GpuError> {
        self.lock().set_power_limit(watts)
    }
    fn throttle_reasons(&self) -> Result<ThrottleReasons, GpuError> {
        self.lock().throttle_reasons()
    }
    fn temperature_c(&self) -> Result<u32, GpuError> {
        self.lock().temperature_c()
    }
    fn poll_health_events(&mut self) -> Result<Vec<HealthEvent>, GpuError> {
        self.lock().poll_health_events()
    }
    fn idle(&mut self, seconds: f64) -> Result<(), GpuError> {
        match self.clock {
            // Wall-clock device time passes by itself: idling is waiting.
            DeviceClock::Wall(_) => {
                if !seconds.is_finite() || seconds < 0.0 {
                    return Err(GpuError::InvalidArgument(format!("idle for {seconds} s")));
                }
                self.sleep_until(SimDevice::now_s(self) + seconds);
                Ok(())
            }
            DeviceClock::Virtual => self.lock().idle(seconds),
        }
    }
}

/// Runs batches of one model on a [`SimDevice`].
pub struct SimExecutor {
    device: SimDevice,
    graph: Arc<Graph>,
    /// Span costs per (first layer, end layer, batch), built on first use.
    spans: HashMap<(usize, usize, u32), SpanCost>,
}

impl SimExecutor {
    pub fn new(device: SimDevice, graph: Arc<Graph>) -> Self {
        Self {
            device,
            graph,
            spans: HashMap::new(),
        }
    }

    pub fn device(&self) -> &SimDevice {
        &self.device
    }

    /// The span of `layers` at `batch`, built once.
    fn span(&mut self, layers: &Range<usize>, batch: u32) -> SpanCost {
        let key = (layers.start, layers.end, batch);
        if let Some(s) = self.spans.get(&key) {
            return s.clone();
        }
        let works: Vec<LayerWork> = layers
            .clone()
            .map(|l| self.graph.layer_work(l, batch))
            .collect();
        let span = SpanCost::from_layers(self.device.lock().profile(), &works, &[]);
        self.spans.insert(key, span.clone());
        span
    }

    /// Noise-free predicted time of `units` at `batch` when each runs at `clocks[i]` MHz
    /// (`None`: the GPU's default clock under load), for deadline checks before dispatch.
    pub fn estimate_s(
        &mut self,
        units: &[Range<usize>],
        batch: u32,
        clocks: &[Option<u32>],
    ) -> f64 {
        let default = self.device.lock().profile().default_clock_under_load_mhz();
        units
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let f = clocks.get(i).copied().flatten().unwrap_or(default);
                self.span(r, batch).time_s(f)
            })
            .sum()
    }
}

impl Executor for SimExecutor {
    fn name(&self) -> String {
        format!("sim:{}", self.device.profile_name())
    }
    fn computes_outputs(&self) -> bool {
        false
    }
    fn run_batch(
        &mut self,
        req: &BatchRequest<'_>,
        hook: &mut dyn UnitHook,
    ) -> Result<BatchRun, ExecError> {
        if req.batch == 0 {
            return Err(ExecError::EmptyBatch);
        }
        check_units(req.units, self.graph.layers.len())?;
        let start_s = self.device.now_s();
        let mut records = Vec::with_capacity(req.units.len());
        for (unit, layers) in req.units.iter().enumerate() {
            let span = self.span(layers, req.batch);
            let t = self.device.now_s();
            hook.unit_start(unit, t);
            let (run, counter) = {
                let mut g = self.device.lock();
                let run = g.run_span(&span)?;
                (run, g.energy_mj().ok())
            };
            self.device.sleep_until(run.end_s);
            let r = UnitRecord {
                unit,
                start_s: run.start_s,
                end_s: run.end_s,
                clock_mhz: run.clock_end_mhz,
                clock_start_mhz: run.clock_start_mhz,
                energy_counter_mj: counter,
                truth_energy_j: Some(run.energy_j),
            };
            hook.unit_end(&r);
            records.push(r);
        }
        let end_s = records.last().map_or(start_s, |r| r.end_s);
        Ok(BatchRun {
            start_s,
            end_s,
            outputs: None,
            units: records,
        })
    }
    fn predict_s(
        &mut self,
        units: &[Range<usize>],
        batch: u32,
        clocks: &[Option<u32>],
    ) -> Option<f64> {
        Some(self.estimate_s(units, batch, clocks))
    }
    fn run_layer(&mut self, layer: usize, batch: u32, repeats: u32) -> Result<f64, ExecError> {
        let layers = self.graph.layers.len();
        if layer >= layers {
            return Err(ExecError::NoLayer { layer, layers });
        }
        if batch == 0 {
            return Err(ExecError::EmptyBatch);
        }
        let work = self.graph.layer_work(layer, batch);
        let elapsed = self.device.lock().run_layer(&work, repeats)?;
        Ok(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::NoHook;
    use crate::gpu::sim::GpuProfile;
    use crate::model::zoo;

    fn device(clock: DeviceClock) -> SimDevice {
        let p = GpuProfile::builtin("v100-sxm2").unwrap();
        SimDevice::new(SimGpu::new(p, 0, 7), clock)
    }

    #[test]
    fn units_follow_the_simulator_and_the_split_does_not_matter() {
        let g = Arc::new(zoo::build("resnet18").unwrap());
        let n = g.layers.len();
        let all = 0..n;
        let whole = std::slice::from_ref(&all);
        let split = [0..10, 10..40, 40..n];
        let run = |units: &[Range<usize>]| {
            let mut ex = SimExecutor::new(device(DeviceClock::Virtual), g.clone());
            let r = ex
                .run_batch(
                    &BatchRequest {
                        batch: 8,
                        input: None,
                        units,
                    },
                    &mut NoHook,
                )
                .unwrap();
            let truth: f64 = r.units.iter().filter_map(|u| u.truth_energy_j).sum();
            (r, truth)
        };
        let (a, ea) = run(whole);
        let (b, eb) = run(&split);
        assert!(a.outputs.is_none());
        assert_eq!(b.units.len(), 3);
        // Unit records tile the batch.
        for w in b.units.windows(2) {
            assert_eq!(w[0].end_s, w[1].start_s);
        }
        assert_eq!(b.units[0].start_s, b.start_s);
        // Same device seed and the same work: time and energy agree up to the per-span noise.
        let (ta, tb) = (a.end_s - a.start_s, b.end_s - b.start_s);
        assert!(ta > 0.0 && (ta / tb - 1.0).abs() < 0.1, "{ta} vs {tb}");
        assert!(ea > 0.0 && (ea / eb - 1.0).abs() < 0.1, "{ea} vs {eb}");
    }

    #[test]
    fn wall_clock_device_paces_batches_at_gpu_speed() {
        let g = Arc::new(zoo::build("resnet50").unwrap());
        let n = g.layers.len();
        let dev = device(DeviceClock::Wall(Instant::now()));
        let mut ex = SimExecutor::new(dev.clone(), g);
        let before = Instant::now();
        let r = ex
            .run_batch(
                &BatchRequest {
                    batch: 4,
                    input: None,
                    units: std::slice::from_ref(&(0..n)),
                },
                &mut NoHook,
            )
            .unwrap();
        // The call returns no earlier than the simulated batch's end.
        assert!(before.elapsed().as_secs_f64() >= r.end_s - r.start_s);
        assert!(dev.now_s() >= r.end_s);
    }
}
