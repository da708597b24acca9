//! A layer's parameters as plain data (FP32, PyTorch's layouts): what the executors run and what
//! model files (safetensors, ONNX) are read into.

/// Parameters of one layer.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerWeights {
    /// Parameter-free layers.
    None,
    /// `weight`: `out × in/groups × kh × kw`.
    Conv {
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    BatchNorm {
        gamma: Vec<f32>,
        beta: Vec<f32>,
        mean: Vec<f32>,
        var: Vec<f32>,
        eps: f32,
    },
    /// `weight`: `out × in`.
    Linear {
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
}
