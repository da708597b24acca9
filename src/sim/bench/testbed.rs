//! Everything a bench case needs about one (model, GPU) pair, prepared once: the graph, the GPU
//! profile, the measured switch latency, the cost tables (predicted for the online policies,
//! ground truth for the oracle), the unit chains, and the Triton configuration and max-clock
//! capacity per SLO.

use std::ops::Range;

use crate::eali::costs::LayerCostTable;
use crate::eali::switch::SwitchLatency;
use crate::eali::units::{self, UnitChain, UnitConfig, UnitCostTable};
use crate::gpu::sim::GpuProfile;
use crate::model::{Graph, zoo};
use crate::perf::profiler::spread_clocks;

use super::super::truth;
use super::floor::Floor;
use super::{BenchError, CostSource};
use crate::policy::baselines::TritonConfig;
use crate::policy::build::ModelCosts;

pub use crate::policy::build::{PLAN_BATCHES, TABLE_CLOCKS};
/// Batch sizes the oracle chooses from: every size up to 6, then about 25 % apart (the DP's cost
/// grows with their number).
pub const ORACLE_BATCHES: [u32; 16] = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64];

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
    /// What the online policies are built from ([`crate::policy::build`]): the unit chains over
    /// the predicted costs and the measured switch latency, with Triton's batcher configured
    /// from the noise-free whole-model times (what a user measures with Triton's Model
    /// Analyzer before deploying).
    pub costs: ModelCosts,
    /// The chain the oracle plans over, costed with the ground truth.
    pub oracle_chain: (UnitChain, UnitCostTable),
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
        let switch = crate::gpu::calibrate_switch::measure_simulated(&profile, seed);
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
        let costs = ModelCosts {
            layers: graph.layers.len(),
            max_batch,
            f_max_mhz: f_max,
            exec_fmax_s,
            exec_default_s,
            switch,
            eali_chain,
            single_chain,
        };
        Ok(Self {
            model: model.to_string(),
            gpu: profile.name().to_string(),
            graph,
            profile,
            max_batch,
            switch,
            predicted,
            truth,
            costs,
            oracle_chain,
            floor,
        })
    }

    /// Triton's configuration for an SLO at max clocks.
    pub fn triton(&self, slo_s: f64) -> TritonConfig {
        self.costs.triton(slo_s)
    }

    /// Max-clock capacity for an SLO: the throughput of max-clock Triton's full batches (req/s).
    pub fn capacity(&self, slo_s: f64) -> f64 {
        self.costs.capacity(slo_s)
    }
}

/// Layer ranges of a unit chain (units are contiguous runs of the topological order).
pub fn unit_ranges(chain: &UnitChain) -> Result<Vec<Range<usize>>, BenchError> {
    chain.ranges().map_err(|e| BenchError::Setup(e.to_string()))
}
