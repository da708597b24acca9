//! Everything a bench case needs about one (model, GPU) pair, prepared once: the graph, the GPU
//! profile, the measured switch latency, the cost tables (predicted for the online policies,
//! ground truth for the oracle), the unit chains, and the Triton configuration and max-clock
//! capacity per SLO.

use std::ops::Range;

use crate::eali::costs::LayerCostTable;
use crate::eali::switch::SwitchLatency;
use crate::eali::units::{self, UnitChain, UnitConfig, UnitCostTable};
use crate::gpu::sim::{GpuProfile, SimGpu};
use crate::model::{Graph, zoo};
use crate::perf::profiler::spread_clocks;

use super::super::baselines::TritonConfig;
use super::super::device::Device;
use super::super::policy::ClockTarget;
use super::super::truth;
use super::floor::Floor;
use super::{BenchError, CostSource};

/// Clocks in the cost tables (the planner keeps at most 24).
pub const TABLE_CLOCKS: usize = 16;
/// Batch sizes the online policies plan over (what the profiler measures by default).
pub const PLAN_BATCHES: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Batch sizes the oracle chooses from: every size up to 6, then about 25 % apart (the DP's cost
/// grows with their number).
pub const ORACLE_BATCHES: [u32; 16] = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64];
/// Set-calls sampled to measure the switch latency, as the agent does at start-up.
const SWITCH_SAMPLES: usize = 400;

/// One (model, GPU) pair, ready to run cases on.
#[derive(Debug, Clone)]
pub struct Testbed {
    pub model: String,
    pub gpu: String,
    pub graph: Graph,
    pub profile: GpuProfile,
    pub max_batch: u32,
    pub switch: SwitchLatency,
    /// Costs the online policies plan over.
    pub predicted: LayerCostTable,
    /// Ground truth for the oracle (at [`ORACLE_BATCHES`]).
    pub truth: LayerCostTable,
    /// EALI's merged unit chain (from predicted costs) and its unit cost table.
    pub eali_chain: (UnitChain, UnitCostTable),
    /// The whole model as one unit (per-batch DVFS).
    pub single_chain: (UnitChain, UnitCostTable),
    /// The chain the oracle plans over, costed with the ground truth.
    pub oracle_chain: (UnitChain, UnitCostTable),
    /// Noise-free whole-model time per batch size at f_max and at the default clock.
    pub exec_fmax_s: Vec<f64>,
    pub exec_default_s: Vec<f64>,
    /// The physics floor of energy per request (see [`super::floor`]).
    pub floor: Floor,
}

impl Testbed {
    /// Prepares a pair. `predicted` builds the online policies' cost table for the graph and
    /// profile at the given batches and clocks.
    pub fn new(
        model: &str,
        gpu: &str,
        max_batch: u32,
        seed: u64,
        predicted: &CostSource,
    ) -> Result<Self, BenchError> {
        let graph =
            zoo::build(model).map_err(|e| BenchError::Setup(format!("model {model}: {e}")))?;
        Self::for_graph(graph, gpu, max_batch, seed, predicted)
    }

    /// [`Testbed::new`] for any network (e.g. an imported ONNX model), named by its graph.
    pub fn for_graph(
        graph: Graph,
        gpu: &str,
        max_batch: u32,
        seed: u64,
        predicted: &CostSource,
    ) -> Result<Self, BenchError> {
        let model = graph.name.clone();
        let model = model.as_str();
        let profile = GpuProfile::builtin(gpu).map_err(|e| BenchError::Setup(e.to_string()))?;
        if !profile.has_locked_clocks() || !profile.has_energy_counter() {
            return Err(BenchError::Setup(format!(
                "{gpu} has no locked clocks or no energy counter (pre-Volta); the bench needs both"
            )));
        }
        let clocks = spread_clocks(profile.supported_clocks_mhz(), TABLE_CLOCKS);
        let batches: Vec<u32> = PLAN_BATCHES
            .iter()
            .copied()
            .filter(|&b| b <= max_batch)
            .collect();
        let oracle_batches: Vec<u32> = ORACLE_BATCHES
            .iter()
            .copied()
            .filter(|&b| b <= max_batch)
            .collect();
        let switch = measure_switch(&profile, seed);
        let predicted = predicted(&graph, &profile, &batches, &clocks)?;
        let truth = truth::layer_table(&graph, &profile, &oracle_batches, &clocks);
        let unit_cfg = UnitConfig {
            switch_median_s: switch.total_median_s,
            ..UnitConfig::default()
        };
        let setup = |e: crate::eali::EaliError| BenchError::Setup(format!("{model} on {gpu}: {e}"));
        let eali_chain = units::build(&graph, &predicted, &unit_cfg).map_err(setup)?;
        let single_chain = units::single_unit(&predicted).map_err(setup)?;
        let oracle_chain = units::build(&graph, &truth, &unit_cfg).map_err(setup)?;
        let f_max = profile.max_clock_mhz();
        let exec_fmax_s = truth::batch_times_s(&graph, &profile, max_batch, f_max);
        let f_def = profile.default_clock_under_load_mhz();
        let exec_default_s = truth::batch_times_s(&graph, &profile, max_batch, f_def);
        let floor = Floor::new(&graph, &profile, max_batch);
        Ok(Self {
            model: model.to_string(),
            gpu: profile.name().to_string(),
            graph,
            profile,
            max_batch,
            switch,
            predicted,
            truth,
            eali_chain,
            single_chain,
            oracle_chain,
            exec_fmax_s,
            exec_default_s,
            floor,
        })
    }

    /// Triton's configuration for an SLO at max clocks.
    pub fn triton(&self, slo_s: f64) -> TritonConfig {
        TritonConfig::for_slo(&self.exec_fmax_s, slo_s)
    }

    /// Max-clock capacity for an SLO: the throughput of max-clock Triton's full batches (req/s).
    pub fn capacity(&self, slo_s: f64) -> f64 {
        let b = self.triton(slo_s).max_batch;
        f64::from(b) / self.exec_fmax_s[b as usize - 1]
    }
}

/// Layer ranges of a unit chain (units are contiguous runs of the topological order).
pub fn unit_ranges(chain: &UnitChain) -> Result<Vec<Range<usize>>, BenchError> {
    let mut out = Vec::with_capacity(chain.len());
    let mut next = 0;
    for u in &chain.units {
        let first = u.layers.first().copied().unwrap_or(next);
        let contiguous = u.layers.iter().enumerate().all(|(i, &l)| l == first + i);
        if first != next || !contiguous {
            return Err(BenchError::Setup(format!(
                "unit {} of {} is not a contiguous run of layers",
                u.name, chain.model
            )));
        }
        next = first + u.layers.len();
        out.push(first..next);
    }
    Ok(out)
}

/// Measures the set-call latency on a spare simulated GPU of the same profile, as the agent does
/// at start-up: median call time, median and 95th percentile of call + settle.
pub fn measure_switch(profile: &GpuProfile, seed: u64) -> SwitchLatency {
    let mut gpu = SimGpu::new(profile.clone(), 7, seed ^ 0x5717c4);
    let clocks = profile.supported_clocks_mhz();
    let (hi, lo) = (clocks[0], clocks[clocks.len() / 2]);
    let mut calls = Vec::with_capacity(SWITCH_SAMPLES);
    let mut totals = Vec::with_capacity(SWITCH_SAMPLES);
    let mut t = 0.0;
    for k in 0..SWITCH_SAMPLES {
        let target = ClockTarget::Locked(if k % 2 == 0 { lo } else { hi });
        if let Ok(c) = gpu.schedule_clock(t, target) {
            calls.push(c.call_latency_s);
            totals.push(c.effective_at_s - t);
            t = c.effective_at_s + 0.01;
            gpu.advance_to(t);
        }
    }
    let q = |v: &mut Vec<f64>, p: f64| super::super::metrics::percentile(v, p).max(0.0);
    SwitchLatency {
        call_median_s: q(&mut calls, 0.5),
        total_median_s: q(&mut totals, 0.5),
        total_p95_s: q(&mut totals, 0.95),
    }
}
