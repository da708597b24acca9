//! What a layer asks of a GPU (its kernel family, FLOPs and bytes for a batch): plain data the
//! model computes ([`super::Graph::layer_work`]) and the GPU layer runs.

use serde::{Deserialize, Serialize};

/// What a layer asks of the GPU, independent of which network it came from.
///
/// Quantities are for a whole batch (the caller multiplies per-sample figures by the batch size);
/// `batch` is carried separately because kernel efficiency depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerWork {
    pub kind: WorkKind,
    /// Floating-point operations for the whole batch (2 × MACs for conv/linear).
    pub flops: f64,
    /// Bytes read plus bytes written (weights + activations) for the whole batch.
    pub bytes: f64,
    pub batch: u32,
}

/// Kernel families, which differ in how well they use the GPU's compute units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkKind {
    /// Dense or grouped convolution (cuDNN implicit GEMM / Winograd).
    Conv,
    /// Depthwise convolution (groups == channels): low arithmetic intensity.
    DepthwiseConv,
    /// Fully connected layer (GEMM / GEMV at batch 1).
    Linear,
    /// Pooling (max, average, global average).
    Pool,
    /// Batch normalisation, activations, LRN, softmax: one pass over memory.
    Elementwise,
    /// Residual add, concatenation: memory copies of activations.
    DataMovement,
}
