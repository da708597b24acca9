//! Per-layer cost figures: multiply-accumulates, parameters and bytes moved for a batch, counted
//! the way torchvision's published figures (fvcore) count them, and the mapping of a layer onto
//! the GPU's kernel families ([`LayerWork`]).
//!
//! Conventions, all FP32:
//! - MACs come from convolutions and fully connected layers only (bias adds are not counted).
//! - Parameters include biases and BatchNorm's affine weight and bias (2 per channel); BatchNorm's
//!   running mean and variance are buffers, not parameters.
//! - Bytes read are the input activations of the whole batch plus the parameter bytes, read once
//!   per batch; BatchNorm reads all four per-channel vectors. Bytes written are the output
//!   activations of the batch.
//! - Flatten and Dropout are views at inference: they move no bytes and do no arithmetic.

use super::{Graph, LayerCost, LayerId, Op};
use super::{LayerWork, WorkKind};

const BYTES_PER_VALUE: u64 = 4;

impl Graph {
    /// Multiply-accumulates of one sample through layer `id`.
    pub fn layer_macs(&self, id: LayerId) -> u64 {
        let l = &self.layers[id];
        let x = self.input_shape_of(id);
        match l.op {
            Op::Conv2d { kernel, groups, .. } => {
                let per_output =
                    u64::from(x.c / groups.max(1)) * u64::from(kernel.0) * u64::from(kernel.1);
                l.output.elements() * per_output
            }
            Op::Linear { out_features, .. } => x.elements() * u64::from(out_features),
            _ => 0,
        }
    }

    /// Trainable parameters of layer `id`.
    pub fn layer_params(&self, id: LayerId) -> u64 {
        let l = &self.layers[id];
        let x = self.input_shape_of(id);
        match l.op {
            Op::Conv2d {
                out_channels,
                kernel,
                groups,
                bias,
                ..
            } => {
                let weights = u64::from(out_channels)
                    * u64::from(x.c / groups.max(1))
                    * u64::from(kernel.0)
                    * u64::from(kernel.1);
                weights + if bias { u64::from(out_channels) } else { 0 }
            }
            Op::Linear { out_features, bias } => {
                let out = u64::from(out_features);
                x.elements() * out + if bias { out } else { 0 }
            }
            Op::BatchNorm => 2 * u64::from(x.c),
            _ => 0,
        }
    }

    /// Cost of layer `id` for a batch of `batch` samples.
    ///
    /// Panics if `id` is not a layer of this graph.
    pub fn layer_cost(&self, id: LayerId, batch: u32) -> LayerCost {
        let l = &self.layers[id];
        let n = u64::from(batch);
        let params = self.layer_params(id);
        if matches!(l.op, Op::Flatten | Op::Dropout) {
            return LayerCost {
                macs: 0,
                params,
                bytes_read: 0,
                bytes_written: 0,
            };
        }
        let input_elems: u64 = self.input_shapes_of(id).iter().map(|s| s.elements()).sum();
        // BatchNorm reads mean, variance, weight and bias although only the last two are trained.
        let param_values = match l.op {
            Op::BatchNorm => 4 * u64::from(l.output.c),
            _ => params,
        };
        LayerCost {
            macs: self.layer_macs(id) * n,
            params,
            bytes_read: (input_elems * n + param_values) * BYTES_PER_VALUE,
            bytes_written: l.output.elements() * n * BYTES_PER_VALUE,
        }
    }

    /// Parameters of the whole network.
    pub fn total_params(&self) -> u64 {
        (0..self.layers.len()).map(|i| self.layer_params(i)).sum()
    }

    /// Multiply-accumulates of the whole network for a batch.
    pub fn total_macs(&self, batch: u32) -> u64 {
        let per_sample: u64 = (0..self.layers.len()).map(|i| self.layer_macs(i)).sum();
        per_sample * u64::from(batch)
    }

    /// Sum of [`Graph::layer_cost`] over all layers.
    pub fn total_cost(&self, batch: u32) -> LayerCost {
        (0..self.layers.len())
            .map(|i| self.layer_cost(i, batch))
            .fold(LayerCost::default(), |a, c| LayerCost {
                macs: a.macs + c.macs,
                params: a.params + c.params,
                bytes_read: a.bytes_read + c.bytes_read,
                bytes_written: a.bytes_written + c.bytes_written,
            })
    }

    /// Kernel family of layer `id`.
    pub fn work_kind(&self, id: LayerId) -> WorkKind {
        match self.layers[id].op {
            Op::Conv2d { groups, .. } => {
                // One input channel per group means no reduction over channels: the kernel is
                // a depthwise one (also with a channel multiplier), bandwidth-bound like
                // MobileNet's. Grouped convolutions with several channels per group (ResNeXt)
                // still run as small GEMMs and stay `Conv`.
                let in_c = self.input_shape_of(id).c;
                if groups > 1 && in_c == groups {
                    WorkKind::DepthwiseConv
                } else {
                    WorkKind::Conv
                }
            }
            Op::Linear { .. } => WorkKind::Linear,
            Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool => WorkKind::Pool,
            Op::BatchNorm | Op::Lrn { .. } | Op::Softmax => WorkKind::Elementwise,
            Op::Add | Op::Concat | Op::Flatten | Op::Dropout => WorkKind::DataMovement,
            Op::Relu
            | Op::Relu6
            | Op::LeakyRelu { .. }
            | Op::Sigmoid
            | Op::HardSigmoid { .. }
            | Op::HardSwish
            | Op::Clip { .. } => WorkKind::Elementwise,
        }
    }

    /// Floating-point operations of one sample through layer `id`: 2 × MACs for convolution and
    /// linear layers, otherwise a per-output-element operation count of the usual kernel.
    pub fn layer_flops(&self, id: LayerId) -> u64 {
        let l = &self.layers[id];
        let out = l.output.elements();
        let per_element: u64 = match l.op {
            Op::Conv2d { .. } | Op::Linear { .. } => return 2 * self.layer_macs(id),
            // Folded to one multiply-add at inference.
            Op::BatchNorm => 2,
            Op::Relu => 1,
            // Two comparisons: max(0, x) then min(x, 6).
            Op::Relu6 | Op::Clip { .. } => 2,
            // A comparison and a multiplication.
            Op::LeakyRelu { .. } => 2,
            // Negate, exp, add, divide.
            Op::Sigmoid => 4,
            // Multiply-add and two comparisons; HardSwish multiplies by x once more.
            Op::HardSigmoid { .. } => 3,
            Op::HardSwish => 4,
            // One comparison or addition per window element.
            Op::MaxPool { kernel, .. } | Op::AvgPool { kernel, .. } => {
                u64::from(kernel.0) * u64::from(kernel.1)
            }
            Op::GlobalAvgPool => {
                let x = self.input_shape_of(id);
                u64::from(x.h) * u64::from(x.w)
            }
            // Square, multiply-add into the window sum, then the scale and power per element.
            Op::Lrn { size, .. } => 3 * u64::from(size),
            // Max, subtract, exp, sum, divide.
            Op::Softmax => 5,
            Op::Add => l.inputs.len().saturating_sub(1) as u64,
            Op::Concat | Op::Flatten | Op::Dropout => 0,
        };
        out * per_element
    }

    /// What layer `id` asks of the GPU for a batch of `batch` samples.
    ///
    /// Panics if `id` is not a layer of this graph.
    pub fn layer_work(&self, id: LayerId, batch: u32) -> LayerWork {
        let cost = self.layer_cost(id, batch);
        LayerWork {
            kind: self.work_kind(id),
            flops: (self.layer_flops(id) * u64::from(batch)) as f64,
            bytes: (cost.bytes_read + cost.bytes_written) as f64,
            batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Conv, GraphBuilder, Pool, Shape};
    use super::*;

    /// conv(3->8, 3x3, bias) -> bn -> relu -> maxpool 2 -> {dw conv, pw conv} -> add -> gap ->
    /// flatten -> dropout -> fc(8->10)
    fn small() -> Graph {
        let mut b = GraphBuilder::new("small", Shape::new(3, 8, 8));
        let x = b.input();
        let x = b
            .conv("conv", x, Conv::new(8, 3).padding(1).bias(true))
            .unwrap();
        let x = b.batch_norm("bn", x).unwrap();
        let x = b.relu("relu", x).unwrap();
        let x = b.max_pool("pool", x, Pool::new(2, 2)).unwrap();
        let d = b
            .conv("dw", x, Conv::new(8, 3).padding(1).groups(8))
            .unwrap();
        let p = b.conv("pw", x, Conv::new(8, 1)).unwrap();
        let s = b.add("add", &[d, p]).unwrap();
        let s = b.global_avg_pool("gap", s).unwrap();
        let s = b.flatten("flatten", s).unwrap();
        let s = b.dropout("drop", s).unwrap();
        let _ = b.linear("fc", s, 10, true).unwrap();
        b.finish().unwrap()
    }

    #[test]
    fn hand_counted_macs_and_params() {
        let g = small();
        let id = |n: &str| g.layer_by_name(n).unwrap();
        // conv: 8x8x8 outputs, each 3*3*3 MACs = 512 * 27
        assert_eq!(g.layer_macs(id("conv")), 512 * 27);
        assert_eq!(g.layer_params(id("conv")), 8 * 3 * 9 + 8);
        // bn: affine weight + bias only
        assert_eq!(g.layer_params(id("bn")), 16);
        // depthwise: 8x4x4 outputs, 1*3*3 MACs each
        assert_eq!(g.layer_macs(id("dw")), 128 * 9);
        assert_eq!(g.layer_params(id("dw")), 8 * 9);
        assert_eq!(g.layer_macs(id("pw")), 128 * 8);
        assert_eq!(g.layer_macs(id("fc")), 80);
        assert_eq!(g.layer_params(id("fc")), 90);
        assert_eq!(g.total_params(), 224 + 16 + 72 + 64 + 90);
        assert_eq!(g.total_macs(1), 512 * 27 + 128 * 9 + 128 * 8 + 80);
    }

    #[test]
    fn bytes_follow_the_conventions() {
        let g = small();
        let id = |n: &str| g.layer_by_name(n).unwrap();
        let c = g.layer_cost(id("conv"), 1);
        assert_eq!(c.bytes_read, (3 * 64 + 224) * 4);
        assert_eq!(c.bytes_written, 512 * 4);
        // BN reads four per-channel vectors, though it has two parameters per channel.
        let bn = g.layer_cost(id("bn"), 1);
        assert_eq!(bn.params, 16);
        assert_eq!(bn.bytes_read, (512 + 32) * 4);
        // Add reads both inputs.
        let add = g.layer_cost(id("add"), 1);
        assert_eq!(add.bytes_read, 2 * 128 * 4);
        assert_eq!(add.bytes_written, 128 * 4);
        // Views move nothing.
        assert_eq!(g.layer_cost(id("flatten"), 4), LayerCost::default());
        assert_eq!(g.layer_cost(id("drop"), 4).bytes_read, 0);
    }

    #[test]
    fn cost_scales_with_batch_except_weights() {
        let g = small();
        for id in 0..g.len() {
            let one = g.layer_cost(id, 1);
            let eight = g.layer_cost(id, 8);
            assert_eq!(eight.macs, 8 * one.macs, "{}", g.layers[id].name);
            assert_eq!(eight.params, one.params);
            assert_eq!(eight.bytes_written, 8 * one.bytes_written);
            // Activations scale, the parameter bytes are read once per batch.
            let param_bytes = if g.layers[id].op == Op::BatchNorm {
                4 * 4 * u64::from(g.layers[id].output.c)
            } else {
                4 * one.params
            };
            assert_eq!(
                eight.bytes_read - param_bytes,
                8 * (one.bytes_read - param_bytes),
                "{}",
                g.layers[id].name
            );
        }
        assert_eq!(g.total_macs(8), 8 * g.total_macs(1));
        assert_eq!(g.layer_cost(0, 0).bytes_read, 224 * 4);
    }

    #[test]
    fn work_kinds_and_flops() {
        let g = small();
        let id = |n: &str| g.layer_by_name(n).unwrap();
        assert_eq!(g.work_kind(id("conv")), WorkKind::Conv);
        assert_eq!(g.work_kind(id("dw")), WorkKind::DepthwiseConv);
        assert_eq!(g.work_kind(id("pw")), WorkKind::Conv);
        assert_eq!(g.work_kind(id("bn")), WorkKind::Elementwise);
        assert_eq!(g.work_kind(id("pool")), WorkKind::Pool);
        assert_eq!(g.work_kind(id("gap")), WorkKind::Pool);
        assert_eq!(g.work_kind(id("add")), WorkKind::DataMovement);
        assert_eq!(g.work_kind(id("fc")), WorkKind::Linear);

        let w = g.layer_work(id("conv"), 4);
        assert_eq!(w.flops, (2 * 4 * 512 * 27) as f64);
        let c = g.layer_cost(id("conv"), 4);
        assert_eq!(w.bytes, (c.bytes_read + c.bytes_written) as f64);
        assert_eq!(w.batch, 4);
        // pool: 8x4x4 outputs over 2x2 windows; gap: 8 outputs over 4x4; add: 1 per output
        assert_eq!(g.layer_work(id("pool"), 1).flops, (128 * 4) as f64);
        assert_eq!(g.layer_work(id("gap"), 1).flops, (8 * 16) as f64);
        assert_eq!(g.layer_work(id("add"), 2).flops, (2 * 128) as f64);
        assert_eq!(g.layer_work(id("bn"), 1).flops, (2 * 512) as f64);
        assert_eq!(g.layer_work(id("flatten"), 16).bytes, 0.0);
    }

    #[test]
    fn grouped_conv_with_several_channels_per_group_stays_conv() {
        let mut b = GraphBuilder::new("g", Shape::new(32, 8, 8));
        let x = b.input();
        let _ = b
            .conv("grouped", x, Conv::new(32, 3).padding(1).groups(8))
            .unwrap();
        let _ = b
            .conv("multiplier", x, Conv::new(64, 3).padding(1).groups(32))
            .unwrap();
        let g = b.finish().unwrap();
        assert_eq!(g.work_kind(0), WorkKind::Conv);
        assert_eq!(g.layer_params(0), 32 * 4 * 9);
        assert_eq!(g.work_kind(1), WorkKind::DepthwiseConv);
        assert_eq!(g.layer_macs(1), 64 * 64 * 9);
    }
}
