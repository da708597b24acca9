//! CNN graph IR: layers in topological order with shape inference, and per-layer cost figures
//! (MACs, parameters, bytes moved) for any batch size. The model zoo builds the usual ImageNet
//! networks in this IR.

use std::fmt;

use serde::{Deserialize, Serialize};

mod builder;
mod cost;
mod error;
mod graph;
mod shape;
pub mod zoo;

pub use builder::{Conv, GraphBuilder, Pool, Tensor};
pub use error::ModelError;
pub use shape::{infer_output, window_output};

/// Index of a layer in [`Graph::layers`].
pub type LayerId = usize;

/// Activation shape of one sample: channels × height × width (a flattened vector is `c × 1 × 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub c: u32,
    pub h: u32,
    pub w: u32,
}

impl Shape {
    pub fn new(c: u32, h: u32, w: u32) -> Self {
        Self { c, h, w }
    }
    pub fn elements(&self) -> u64 {
        u64::from(self.c) * u64::from(self.h) * u64::from(self.w)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.c, self.h, self.w)
    }
}

/// Operators of the IR (inference semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Conv2d {
        out_channels: u32,
        kernel: (u32, u32),
        stride: (u32, u32),
        padding: (u32, u32),
        dilation: (u32, u32),
        groups: u32,
        bias: bool,
    },
    BatchNorm,
    Relu,
    Relu6,
    MaxPool {
        kernel: (u32, u32),
        stride: (u32, u32),
        padding: (u32, u32),
        ceil_mode: bool,
    },
    AvgPool {
        kernel: (u32, u32),
        stride: (u32, u32),
        padding: (u32, u32),
        ceil_mode: bool,
    },
    GlobalAvgPool,
    Linear {
        out_features: u32,
        bias: bool,
    },
    /// Element-wise sum of all inputs (residual join).
    Add,
    /// Concatenation of all inputs along channels (inception/dense join).
    Concat,
    Flatten,
    Softmax,
    /// Identity at inference.
    Dropout,
    /// Local response normalisation across `size` channels.
    Lrn {
        size: u32,
    },
}

impl Op {
    /// Short stable operator name (snake_case, as in the serde tag), for tables and metric labels.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm => "batch_norm",
            Op::Relu => "relu",
            Op::Relu6 => "relu6",
            Op::MaxPool { .. } => "max_pool",
            Op::AvgPool { .. } => "avg_pool",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Linear { .. } => "linear",
            Op::Add => "add",
            Op::Concat => "concat",
            Op::Flatten => "flatten",
            Op::Softmax => "softmax",
            Op::Dropout => "dropout",
            Op::Lrn { .. } => "lrn",
        }
    }

    /// Whether the operator joins several branches (the end of a residual/inception/dense block).
    pub fn is_join(&self) -> bool {
        matches!(self, Op::Add | Op::Concat)
    }
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub id: LayerId,
    pub name: String,
    pub op: Op,
    /// Producers of this layer's inputs; empty means the graph input.
    pub inputs: Vec<LayerId>,
    /// Output shape per sample, from shape inference.
    pub output: Shape,
}

/// Cost of one layer for a whole batch. Activations and weights are FP32 (4 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerCost {
    pub macs: u64,
    pub params: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// A CNN in topological order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub name: String,
    pub input: Shape,
    pub layers: Vec<Layer>,
}
