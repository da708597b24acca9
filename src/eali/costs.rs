//! Predicted per-layer cost tables: the plain-data contract between the performance model
//! (`perf`, which fills them from profiles and the power model) and the scheduler (which sums them
//! into optimization units and plans over them).

use serde::{Deserialize, Serialize};

/// Time and energy of every layer of one model on one GPU, over a grid of batch sizes and
/// graphics clocks.
///
/// Indexing: `time_s[layer][bi][fi]` is the predicted time of layer `layer` for batch size
/// `batches[bi]` at graphics clock `clocks_mhz[fi]`; `energy_j` likewise (total board energy
/// while the layer runs, static power included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCostTable {
    pub model: String,
    pub gpu: String,
    /// Layer names, in the graph's topological order.
    pub layers: Vec<String>,
    /// Batch sizes, ascending.
    pub batches: Vec<u32>,
    /// Graphics clocks (MHz), ascending.
    pub clocks_mhz: Vec<u32>,
    pub time_s: Vec<Vec<Vec<f64>>>,
    pub energy_j: Vec<Vec<Vec<f64>>>,
    /// Board power while the GPU idles between batches at each clock of `clocks_mhz` (W).
    pub idle_power_w: Vec<f64>,
    /// Fixed per-batch overhead outside the layers (input copy, launch), per batch size (s).
    pub batch_overhead_s: Vec<f64>,
}
