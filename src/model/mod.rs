//! CNN graph IR: layers in topological order with shape inference, and per-layer cost figures
//! (MACs, parameters, bytes moved) for any batch size. The model zoo builds the usual ImageNet
//! networks in this IR.

use std::fmt;

use serde::{Deserialize, Serialize};

mod builder;
mod cost;
mod error;
mod graph;
pub mod onnx;
mod params;
mod shape;
mod work;
pub mod zoo;

pub use builder::{Conv, GraphBuilder, Pool, Tensor};
pub use error::ModelError;
pub use params::LayerWeights;
pub use shape::{infer_output, window_output, window_output_asym};
pub use work::{LayerWork, WorkKind};

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
        /// Padding after the input (bottom, right) where it differs from `padding`, which is then
        /// the padding before (top, left): ONNX's asymmetric `pads`. `None`: symmetric.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding_end: Option<(u32, u32)>,
    },
    BatchNorm,
    Relu,
    Relu6,
    /// `max(x, 0) + alpha · min(x, 0)`.
    LeakyRelu {
        alpha: f32,
    },
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `clamp(alpha · x + beta, 0, 1)`.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x · clamp(x / 6 + 1/2, 0, 1)`.
    HardSwish,
    /// `clamp(x, min, max)`; ReLU and ReLU6 have their own operators.
    Clip {
        min: f32,
        max: f32,
    },
    MaxPool {
        kernel: (u32, u32),
        stride: (u32, u32),
        padding: (u32, u32),
        ceil_mode: bool,
        /// Padding after the input where it differs from `padding` (see [`Op::Conv2d`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding_end: Option<(u32, u32)>,
        #[serde(default = "unit_pair", skip_serializing_if = "is_unit_pair")]
        dilation: (u32, u32),
    },
    AvgPool {
        kernel: (u32, u32),
        stride: (u32, u32),
        padding: (u32, u32),
        ceil_mode: bool,
        /// Padding after the input where it differs from `padding` (see [`Op::Conv2d`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding_end: Option<(u32, u32)>,
        #[serde(default = "unit_pair", skip_serializing_if = "is_unit_pair")]
        dilation: (u32, u32),
        /// Whether the divisor counts padded cells (PyTorch's default, ONNX's
        /// `count_include_pad=1`) or only the input's.
        #[serde(default = "yes", skip_serializing_if = "is_yes")]
        count_include_pad: bool,
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
    /// Local response normalisation across `size` channels: `x / (bias + alpha/size · Σx²)^beta`
    /// (defaults: PyTorch's `LocalResponseNorm`).
    Lrn {
        size: u32,
        #[serde(default = "lrn_alpha")]
        alpha: f32,
        #[serde(default = "lrn_beta")]
        beta: f32,
        #[serde(default = "lrn_bias")]
        bias: f32,
    },
}

fn unit_pair() -> (u32, u32) {
    (1, 1)
}
fn is_unit_pair(p: &(u32, u32)) -> bool {
    *p == (1, 1)
}
fn yes() -> bool {
    true
}
fn is_yes(b: &bool) -> bool {
    *b
}
/// PyTorch's `LocalResponseNorm` defaults (also ONNX's LRN defaults but for `bias`, both 1).
pub const LRN_ALPHA: f32 = 1e-4;
pub const LRN_BETA: f32 = 0.75;
pub const LRN_BIAS: f32 = 1.0;
fn lrn_alpha() -> f32 {
    LRN_ALPHA
}
fn lrn_beta() -> f32 {
    LRN_BETA
}
fn lrn_bias() -> f32 {
    LRN_BIAS
}

impl Op {
    /// Short stable operator name (snake_case, as in the serde tag), for tables and metric labels.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm => "batch_norm",
            Op::Relu => "relu",
            Op::Relu6 => "relu6",
            Op::LeakyRelu { .. } => "leaky_relu",
            Op::Sigmoid => "sigmoid",
            Op::HardSigmoid { .. } => "hard_sigmoid",
            Op::HardSwish => "hard_swish",
            Op::Clip { .. } => "clip",
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

    /// Whether the operator is a parameter-free element-wise activation.
    pub fn is_activation(&self) -> bool {
        matches!(
            self,
            Op::Relu
                | Op::Relu6
                | Op::LeakyRelu { .. }
                | Op::Sigmoid
                | Op::HardSigmoid { .. }
                | Op::HardSwish
                | Op::Clip { .. }
        )
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
