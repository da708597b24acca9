//! [`GraphBuilder`]: builds a [`Graph`] layer by layer in topological order, inferring every
//! output shape as it goes so that an inconsistent network fails at the layer that breaks it.

use std::collections::HashSet;

use super::{Graph, Layer, LayerId, ModelError, Op, Shape, infer_output};

/// Handle to a value in a graph under construction: the graph input or a layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tensor {
    source: Option<LayerId>,
    shape: Shape,
}

impl Tensor {
    /// Per-sample shape of the value.
    pub fn shape(&self) -> Shape {
        self.shape
    }
    /// The producing layer, or `None` for the graph input.
    pub fn layer(&self) -> Option<LayerId> {
        self.source
    }
}

/// Convolution parameters with PyTorch's defaults (stride 1, no padding, dilation 1, one group,
/// no bias), set through chained calls: `Conv::new(64, 3).stride(2).padding(1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv {
    out_channels: u32,
    kernel: (u32, u32),
    stride: (u32, u32),
    padding: (u32, u32),
    dilation: (u32, u32),
    groups: u32,
    bias: bool,
}

impl Conv {
    /// Square `kernel × kernel` convolution to `out_channels`.
    pub fn new(out_channels: u32, kernel: u32) -> Self {
        Self::rect(out_channels, (kernel, kernel))
    }
    /// Rectangular `(kh, kw)` kernel, as in Inception's 1×7 / 7×1 factorised convolutions.
    pub fn rect(out_channels: u32, kernel: (u32, u32)) -> Self {
        Self {
            out_channels,
            kernel,
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            bias: false,
        }
    }
    pub fn stride(mut self, s: u32) -> Self {
        self.stride = (s, s);
        self
    }
    pub fn padding(mut self, p: u32) -> Self {
        self.padding = (p, p);
        self
    }
    pub fn padding_hw(mut self, p: (u32, u32)) -> Self {
        self.padding = p;
        self
    }
    pub fn dilation(mut self, d: u32) -> Self {
        self.dilation = (d, d);
        self
    }
    pub fn groups(mut self, g: u32) -> Self {
        self.groups = g;
        self
    }
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
}

impl From<Conv> for Op {
    fn from(c: Conv) -> Op {
        Op::Conv2d {
            out_channels: c.out_channels,
            kernel: c.kernel,
            stride: c.stride,
            padding: c.padding,
            dilation: c.dilation,
            groups: c.groups,
            bias: c.bias,
            padding_end: None,
        }
    }
}

/// Pooling window: `Pool::new(3, 2).padding(1).ceil_mode()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    kernel: u32,
    stride: u32,
    padding: u32,
    ceil_mode: bool,
}

impl Pool {
    pub fn new(kernel: u32, stride: u32) -> Self {
        Self {
            kernel,
            stride,
            padding: 0,
            ceil_mode: false,
        }
    }
    pub fn padding(mut self, p: u32) -> Self {
        self.padding = p;
        self
    }
    pub fn ceil_mode(mut self) -> Self {
        self.ceil_mode = true;
        self
    }
    fn op(self, max: bool) -> Op {
        let (kernel, stride, padding) = (
            (self.kernel, self.kernel),
            (self.stride, self.stride),
            (self.padding, self.padding),
        );
        let ceil_mode = self.ceil_mode;
        if max {
            Op::MaxPool {
                kernel,
                stride,
                padding,
                ceil_mode,
                padding_end: None,
                dilation: (1, 1),
            }
        } else {
            Op::AvgPool {
                kernel,
                stride,
                padding,
                ceil_mode,
                padding_end: None,
                dilation: (1, 1),
                count_include_pad: true,
            }
        }
    }
}

/// Builds a [`Graph`]; each method appends one layer and returns its output handle.
#[derive(Debug, Clone)]
pub struct GraphBuilder {
    name: String,
    input: Shape,
    layers: Vec<Layer>,
    names: HashSet<String>,
}

impl GraphBuilder {
    pub fn new(name: impl Into<String>, input: Shape) -> Self {
        Self {
            name: name.into(),
            input,
            layers: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// The graph input (one sample).
    pub fn input(&self) -> Tensor {
        Tensor {
            source: None,
            shape: self.input,
        }
    }

    /// Appends a layer computing `op` over `inputs`, after checking names, inputs and shapes.
    pub fn push(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: &[Tensor],
    ) -> Result<Tensor, ModelError> {
        let name = name.into();
        if self.names.contains(&name) {
            return Err(ModelError::DuplicateName { name });
        }
        let mut ids = Vec::with_capacity(inputs.len());
        let mut shapes = Vec::with_capacity(inputs.len());
        for t in inputs {
            match t.source {
                // Tensors are plain handles, so one from another builder must be caught here.
                Some(id) if self.layers.get(id).is_none_or(|l| l.output != t.shape) => {
                    return Err(ModelError::UnknownInput {
                        layer: name,
                        input: id,
                    });
                }
                Some(id) => ids.push(id),
                None if inputs.len() > 1 => {
                    return Err(ModelError::GraphInputInJoin { layer: name });
                }
                None => {}
            }
            shapes.push(t.shape);
        }
        let output = infer_output(&name, &op, &shapes)?;
        let id = self.layers.len();
        self.names.insert(name.clone());
        self.layers.push(Layer {
            id,
            name,
            op,
            inputs: ids,
            output,
        });
        Ok(Tensor {
            source: Some(id),
            shape: output,
        })
    }

    pub fn conv(
        &mut self,
        name: impl Into<String>,
        x: Tensor,
        conv: Conv,
    ) -> Result<Tensor, ModelError> {
        self.push(name, conv.into(), &[x])
    }

    pub fn batch_norm(&mut self, name: impl Into<String>, x: Tensor) -> Result<Tensor, ModelError> {
        self.push(name, Op::BatchNorm, &[x])
    }

    pub fn relu(&mut self, name: impl Into<String>, x: Tensor) -> Result<Tensor, ModelError> {
        self.push(name, Op::Relu, &[x])
    }

    pub fn relu6(&mut self, name: impl Into<String>, x: Tensor) -> Result<Tensor, ModelError> {
        self.push(name, Op::Relu6, &[x])
    }

    pub fn max_pool(
        &mut self,
        name: impl Into<String>,
        x: Tensor,
        p: Pool,
    ) -> Result<Tensor, ModelError> {
        self.push(name, p.op(true), &[x])
    }

    pub fn avg_pool(
        &mut self,
        name: impl Into<String>,
        x: Tensor,
        p: Pool,
    ) -> Result<Tensor, ModelError> {
        self.push(name, p.op(false), &[x])
    }

    pub fn global_avg_pool(
        &mut self,
        name: impl Into<String>,
        x: Tensor,
    ) -> Result<Tensor, ModelError> {
        self.push(name, Op::GlobalAvgPool, &[x])
    }

    /// `nn.AdaptiveAvgPool2d(out)`: a global pool for 1×1, otherwise the equivalent fixed window
    /// (which requires the input to be a multiple of `out`; at the zoo's input sizes it is).
    pub fn adaptive_avg_pool(
        &mut self,
        name: impl Into<String>,
        x: Tensor,
        out: (u32, u32),
    ) -> Result<Tensor, ModelError> {
        let name = name.into();
        let s = x.shape;
        if out == (1, 1) {
            return self.global_avg_pool(name, x);
        }
        if out.0 == 0 || out.1 == 0 || !s.h.is_multiple_of(out.0) || !s.w.is_multiple_of(out.1) {
            return Err(ModelError::InvalidParameter {
                layer: name,
                reason: format!(
                    "adaptive pooling of {s} to {out:?} has no fixed-window equivalent"
                ),
            });
        }
        let (kh, kw) = (s.h / out.0, s.w / out.1);
        let op = Op::AvgPool {
            kernel: (kh, kw),
            stride: (kh, kw),
            padding: (0, 0),
            ceil_mode: false,
            padding_end: None,
            dilation: (1, 1),
            count_include_pad: true,
        };
        self.push(name, op, &[x])
    }

    pub fn linear(
        &mut self,
        name: impl Into<String>,
        x: Tensor,
        out_features: u32,
        bias: bool,
    ) -> Result<Tensor, ModelError> {
        self.push(name, Op::Linear { out_features, bias }, &[x])
    }

    pub fn add(&mut self, name: impl Into<String>, xs: &[Tensor]) -> Result<Tensor, ModelError> {
        self.push(name, Op::Add, xs)
    }

    pub fn concat(&mut self, name: impl Into<String>, xs: &[Tensor]) -> Result<Tensor, ModelError> {
        self.push(name, Op::Concat, xs)
    }

    pub fn flatten(&mut self, name: impl Into<String>, x: Tensor) -> Result<Tensor, ModelError> {
        self.push(name, Op::Flatten, &[x])
    }

    pub fn softmax(&mut self, name: impl Into<String>, x: Tensor) -> Result<Tensor, ModelError> {
        self.push(name, Op::Softmax, &[x])
    }

    pub fn dropout(&mut self, name: impl Into<String>, x: Tensor) -> Result<Tensor, ModelError> {
        self.push(name, Op::Dropout, &[x])
    }

    pub fn lrn(
        &mut self,
        name: impl Into<String>,
        x: Tensor,
        size: u32,
    ) -> Result<Tensor, ModelError> {
        let op = Op::Lrn {
            size,
            alpha: super::LRN_ALPHA,
            beta: super::LRN_BETA,
            bias: super::LRN_BIAS,
        };
        self.push(name, op, &[x])
    }

    /// Convolution, batch norm and ReLU under `prefix.conv`, `prefix.bn`, `prefix.relu`: the
    /// `BasicConv2d` of torchvision's GoogLeNet and Inception-v3.
    pub fn conv_bn_relu(
        &mut self,
        prefix: &str,
        x: Tensor,
        conv: Conv,
    ) -> Result<Tensor, ModelError> {
        let x = self.conv(format!("{prefix}.conv"), x, conv)?;
        let x = self.batch_norm(format!("{prefix}.bn"), x)?;
        self.relu(format!("{prefix}.relu"), x)
    }

    pub fn finish(self) -> Result<Graph, ModelError> {
        if self.layers.is_empty() {
            return Err(ModelError::EmptyGraph(self.name));
        }
        Ok(Graph {
            name: self.name,
            input: self.input,
            layers: self.layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_residual_block_with_explicit_join() {
        let mut b = GraphBuilder::new("tiny", Shape::new(3, 8, 8));
        let x = b.input();
        let stem = b.conv("conv1", x, Conv::new(16, 3).padding(1)).unwrap();
        let y = b
            .conv("block.conv1", stem, Conv::new(16, 3).padding(1))
            .unwrap();
        let y = b.batch_norm("block.bn1", y).unwrap();
        let sum = b.add("block.add", &[y, stem]).unwrap();
        assert_eq!(sum.shape(), Shape::new(16, 8, 8));
        let g = b.finish().unwrap();
        assert_eq!(g.layers.len(), 4);
        assert!(
            g.layers[0].inputs.is_empty(),
            "first layer reads the graph input"
        );
        assert_eq!(g.layers[3].inputs, vec![2, 0]);
    }

    #[test]
    fn add_shape_mismatch_is_reported_with_the_layer_name() {
        let mut b = GraphBuilder::new("bad", Shape::new(3, 8, 8));
        let x = b.input();
        let a = b.conv("a", x, Conv::new(16, 3).padding(1)).unwrap();
        let c = b
            .conv("c", x, Conv::new(16, 3).stride(2).padding(1))
            .unwrap();
        let err = b.add("join", &[a, c]).unwrap_err();
        assert_eq!(
            err,
            ModelError::ShapeMismatch {
                layer: "join".into(),
                first: Shape::new(16, 8, 8),
                other: Shape::new(16, 4, 4)
            }
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut b = GraphBuilder::new("dup", Shape::new(3, 8, 8));
        let x = b.input();
        let y = b.relu("relu", x).unwrap();
        assert_eq!(
            b.relu("relu", y).unwrap_err(),
            ModelError::DuplicateName {
                name: "relu".into()
            }
        );
    }

    #[test]
    fn tensors_from_another_builder_are_refused() {
        let mut other = GraphBuilder::new("other", Shape::new(3, 8, 8));
        let x = other.input();
        let _ = other.relu("r0", x).unwrap();
        let foreign = other.relu("r1", x).unwrap();
        let mut b = GraphBuilder::new("g", Shape::new(3, 8, 8));
        let x = b.input();
        let _ = b.relu("r", x).unwrap();
        assert!(matches!(
            b.relu("s", foreign),
            Err(ModelError::UnknownInput { input: 1, .. })
        ));
    }

    #[test]
    fn graph_input_cannot_join() {
        let mut b = GraphBuilder::new("g", Shape::new(3, 8, 8));
        let x = b.input();
        let y = b.relu("r", x).unwrap();
        assert!(matches!(
            b.concat("cat", &[x, y]),
            Err(ModelError::GraphInputInJoin { .. })
        ));
    }

    #[test]
    fn adaptive_pool_maps_to_a_fixed_window() {
        let mut b = GraphBuilder::new("g", Shape::new(256, 12, 12));
        let x = b.input();
        let y = b.adaptive_avg_pool("avgpool", x, (6, 6)).unwrap();
        assert_eq!(y.shape(), Shape::new(256, 6, 6));
        let z = b.adaptive_avg_pool("gap", y, (1, 1)).unwrap();
        assert_eq!(z.shape(), Shape::new(256, 1, 1));
        assert!(b.adaptive_avg_pool("bad", y, (4, 4)).is_err());
        let g = b.finish().unwrap();
        assert_eq!(g.layers[1].op, Op::GlobalAvgPool);
    }

    #[test]
    fn empty_graph_is_an_error() {
        let b = GraphBuilder::new("empty", Shape::new(3, 8, 8));
        assert_eq!(
            b.finish().unwrap_err(),
            ModelError::EmptyGraph("empty".into())
        );
    }
}
