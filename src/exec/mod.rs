//! Model executors: what runs a batch, unit by unit, with a hook at each unit boundary (for
//! clock changes, timing and energy attribution), and single layers for the profiler. The one
//! trait for running work on a GPU ([`Executor`]); the GPU's clocks and sensors are
//! `gpu::GpuBackend`'s.
//!
//! - [`cpu::CpuExecutor`]: the reference executor; computes the network for real on the CPU
//!   (im2col + GEMM), from seeded or safetensors weights.
//! - [`sim::SimExecutor`]: runs the batch on the calibrated simulated GPU; its timing and energy
//!   follow the simulator, it computes no outputs.
//! - [`Paired`]: a simulated GPU for timing and energy with the CPU executor computing the outputs
//!   alongside (`eali serve --compute cpu`).
//! - [`ZeroCost`]: a zero-cost executor (no time, no outputs) for measuring the serving path's own
//!   overhead.
//!
//! Clock changes, time and the energy counter are the serving device's
//! (`serve::device::ServingDevice`), not the executor's.

use std::ops::Range;

use crate::gpu::GpuError;

pub mod cpu;
mod kernels;
pub mod sim;
pub mod weights;

pub use cpu::CpuExecutor;
pub use sim::{DeviceClock, SimDevice, SimExecutor};
pub use weights::{LayerWeights, Weights};

/// Why an executor could not run a batch or load a model.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ExecError {
    #[error("GPU: {0}")]
    Gpu(#[from] GpuError),
    #[error("weights: {0}")]
    Weights(String),
    #[error("input has {got} values, a batch of {batch} needs {want}")]
    InputSize { got: usize, want: usize, batch: u32 },
    #[error("units must cover layers 0..{layers} in order without gaps (got {units:?})")]
    BadUnits {
        layers: usize,
        units: Vec<Range<usize>>,
    },
    #[error("batch size must be at least 1")]
    EmptyBatch,
    #[error("CPU executor thread panicked")]
    ComputePanicked,
    #[error("the model has {layers} layers; there is no layer {layer}")]
    NoLayer { layer: usize, layers: usize },
    #[error("the {executor} executor cannot {what}")]
    Unsupported {
        executor: String,
        what: &'static str,
    },
}

/// One batch to run.
#[derive(Debug, Clone, Copy)]
pub struct BatchRequest<'a> {
    pub batch: u32,
    /// `batch × C × H × W` FP32 values, row-major (NCHW); `None` when nothing computes outputs.
    pub input: Option<&'a [f32]>,
    /// The chain of optimization units as contiguous layer ranges covering the whole graph.
    pub units: &'a [Range<usize>],
}

/// What happened in one unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitRecord {
    pub unit: usize,
    /// Device time (s) the unit started and ended.
    pub start_s: f64,
    pub end_s: f64,
    /// Graphics clock the unit ended at (MHz; 0 where there is no GPU).
    pub clock_mhz: u32,
    /// Graphics clock in force when the unit started (MHz; 0 where there is no GPU).
    pub clock_start_mhz: u32,
    /// Energy counter reading at the unit's end (whole mJ), where the device has one.
    pub energy_counter_mj: Option<u64>,
    /// Ground-truth energy of the unit (J), known only to a simulated GPU. For checking the
    /// attribution in tests; the serving path attributes from the counter.
    pub truth_energy_j: Option<f64>,
}

/// Result of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRun {
    pub start_s: f64,
    pub end_s: f64,
    /// `batch × output elements` values when the executor computes outputs.
    pub outputs: Option<Vec<f32>>,
    pub units: Vec<UnitRecord>,
}

/// Called at every unit boundary of a batch.
pub trait UnitHook {
    /// Before unit `unit` starts, at device time `t_s`.
    fn unit_start(&mut self, _unit: usize, _t_s: f64) {}
    /// After the unit ended.
    fn unit_end(&mut self, _record: &UnitRecord) {}
}

/// A hook that does nothing.
pub struct NoHook;
impl UnitHook for NoHook {}

/// Runs batches of one model.
pub trait Executor: Send {
    /// Short name for logs and response parameters ("cpu", "sim:v100-sxm2", ...).
    fn name(&self) -> String;
    /// Whether [`BatchRun::outputs`] holds real results.
    fn computes_outputs(&self) -> bool;
    /// Whether a batch takes real time on the calling thread (sleeping to the simulated GPU's
    /// speed, computing): such batches must not run on an async runtime's threads.
    fn takes_time(&self) -> bool {
        true
    }
    fn run_batch(
        &mut self,
        req: &BatchRequest<'_>,
        hook: &mut dyn UnitHook,
    ) -> Result<BatchRun, ExecError>;
    /// Predicted execution time (s) of a batch over `units` with `clocks[i]` on unit i (`None`:
    /// the GPU's own clock), where the executor can tell before running it.
    fn predict_s(
        &mut self,
        _units: &[Range<usize>],
        _batch: u32,
        _clocks: &[Option<u32>],
    ) -> Option<f64> {
        None
    }
    /// Runs layer `layer` alone at `batch`, `repeats` times back to back, and returns the
    /// elapsed device time (s): what the profiler measures each layer with, on the GPU the
    /// executor runs on. Executors that only run whole batches refuse.
    fn run_layer(&mut self, _layer: usize, _batch: u32, _repeats: u32) -> Result<f64, ExecError> {
        Err(ExecError::Unsupported {
            executor: self.name(),
            what: "time single layers for a profile",
        })
    }
}

/// Checks that `units` are contiguous ranges covering `0..layers` in order.
pub fn check_units(units: &[Range<usize>], layers: usize) -> Result<(), ExecError> {
    let mut next = 0;
    for u in units {
        if u.start != next || u.end <= u.start {
            break;
        }
        next = u.end;
    }
    if next == layers && units.iter().all(|u| u.end > u.start) {
        Ok(())
    } else {
        Err(ExecError::BadUnits {
            layers,
            units: units.to_vec(),
        })
    }
}

/// The simulated GPU for time and energy, with the CPU computing the outputs on another thread
/// at the same time: the batch is done when both are.
pub struct Paired {
    pub device: SimExecutor,
    pub compute: CpuExecutor,
}

impl Executor for Paired {
    fn name(&self) -> String {
        format!("{}+cpu", self.device.name())
    }
    fn computes_outputs(&self) -> bool {
        true
    }
    fn run_batch(
        &mut self,
        req: &BatchRequest<'_>,
        hook: &mut dyn UnitHook,
    ) -> Result<BatchRun, ExecError> {
        let compute = &self.compute;
        let device = &mut self.device;
        let (timed, outputs) = std::thread::scope(|s| {
            let cpu = s.spawn(|| match req.input {
                Some(x) => compute.forward(x, req.batch).map(Some),
                None => Ok(None),
            });
            let timed = device.run_batch(req, hook);
            (timed, cpu.join())
        });
        let mut run = timed?;
        run.outputs = outputs.map_err(|_| ExecError::ComputePanicked)??;
        // The response cannot leave before its outputs exist.
        run.end_s = run.end_s.max(self.device.device().now_s());
        Ok(run)
    }
    fn predict_s(
        &mut self,
        units: &[Range<usize>],
        batch: u32,
        clocks: &[Option<u32>],
    ) -> Option<f64> {
        self.device.predict_s(units, batch, clocks)
    }
}

/// The zero-cost executor: every batch takes no time and produces no outputs.
pub struct ZeroCost {
    /// Time zero of the batch times it reports (the server's epoch, so they compare with
    /// arrival times and deadlines).
    epoch: std::time::Instant,
}

impl ZeroCost {
    pub fn new() -> Self {
        Self::with_epoch(std::time::Instant::now())
    }

    /// Times counted from `epoch`.
    pub fn with_epoch(epoch: std::time::Instant) -> Self {
        Self { epoch }
    }
}

impl Default for ZeroCost {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor for ZeroCost {
    fn name(&self) -> String {
        "zero-cost".into()
    }
    fn computes_outputs(&self) -> bool {
        false
    }
    fn takes_time(&self) -> bool {
        false
    }
    fn run_batch(
        &mut self,
        req: &BatchRequest<'_>,
        hook: &mut dyn UnitHook,
    ) -> Result<BatchRun, ExecError> {
        let t = self.epoch.elapsed().as_secs_f64();
        let units = (0..req.units.len())
            .map(|unit| {
                hook.unit_start(unit, t);
                let r = UnitRecord {
                    unit,
                    start_s: t,
                    end_s: t,
                    clock_mhz: 0,
                    clock_start_mhz: 0,
                    energy_counter_mj: None,
                    truth_energy_j: None,
                };
                hook.unit_end(&r);
                r
            })
            .collect();
        Ok(BatchRun {
            start_s: t,
            end_s: t,
            outputs: None,
            units,
        })
    }
    fn predict_s(&mut self, _: &[Range<usize>], _: u32, _: &[Option<u32>]) -> Option<f64> {
        Some(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_ranges_must_tile_the_graph() {
        assert!(check_units(&[0..2, 2..5], 5).is_ok());
        assert!(check_units(std::slice::from_ref(&(0..5)), 5).is_ok());
        assert!(check_units(&[0..2, 3..5], 5).is_err());
        assert!(check_units(&[0..2, 2..4], 5).is_err());
        assert!(check_units(&[0..2, 2..2, 2..5], 5).is_err());
        assert!(check_units(&[], 5).is_err());
    }
}
