//! The CPU reference executor: runs every layer of a [`Graph`] for real over an NCHW FP32 batch,
//! keeping each activation only until its last reader has run.

use std::sync::Arc;
use std::time::Instant;

use super::kernels::{self, BatchNormParams, ConvGeom, PoolGeom};
use super::weights::{LayerWeights, Weights};
use super::{BatchRequest, BatchRun, ExecError, Executor, UnitHook, UnitRecord, check_units};
use crate::model::{Graph, LayerId, Op, Shape};

/// Computes a model on the CPU.
#[derive(Debug, Clone)]
pub struct CpuExecutor {
    graph: Arc<Graph>,
    weights: Arc<Weights>,
    /// For each layer, the last layer that reads its output (itself for graph outputs).
    last_use: Vec<LayerId>,
    epoch: Instant,
}

fn u(v: u32) -> usize {
    v as usize
}

impl CpuExecutor {
    pub fn new(graph: Arc<Graph>, weights: Arc<Weights>) -> Result<Self, ExecError> {
        weights.check(&graph)?;
        let consumers = graph.consumers();
        let last_use = consumers
            .iter()
            .enumerate()
            .map(|(id, c)| c.last().copied().unwrap_or(id))
            .collect();
        Ok(Self {
            graph,
            weights,
            last_use,
            epoch: Instant::now(),
        })
    }

    /// A model with seeded weights.
    pub fn seeded(graph: Arc<Graph>, seed: u64) -> Result<Self, ExecError> {
        let weights = Arc::new(Weights::seeded(&graph, seed));
        Self::new(graph, weights)
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Values per sample of the graph output.
    pub fn output_len(&self) -> usize {
        self.graph.output_shape().elements() as usize
    }

    /// Runs the whole network on `batch` samples; returns `batch × output` values.
    pub fn forward(&self, input: &[f32], batch: u32) -> Result<Vec<f32>, ExecError> {
        let all = 0..self.graph.layers.len();
        self.forward_units(input, batch, std::slice::from_ref(&all), &mut |_, _| {})
    }

    /// Runs the network unit by unit, calling `boundary(unit, started)` before (true) and after
    /// (false) each unit.
    fn forward_units(
        &self,
        input: &[f32],
        batch: u32,
        units: &[std::ops::Range<usize>],
        boundary: &mut dyn FnMut(usize, bool),
    ) -> Result<Vec<f32>, ExecError> {
        if batch == 0 {
            return Err(ExecError::EmptyBatch);
        }
        let n = u(batch);
        let want = n * self.graph.input.elements() as usize;
        if input.len() != want {
            return Err(ExecError::InputSize {
                got: input.len(),
                want,
                batch,
            });
        }
        check_units(units, self.graph.layers.len())?;
        let mut values: Vec<Option<Vec<f32>>> = vec![None; self.graph.layers.len()];
        let mut scratch = Vec::new();
        for (ui, range) in units.iter().enumerate() {
            boundary(ui, true);
            for id in range.clone() {
                let out = self.layer(id, n, input, &values, &mut scratch);
                values[id] = Some(out);
                // Free inputs whose last reader this was.
                for &i in &self.graph.layers[id].inputs {
                    if self.last_use[i] == id {
                        values[i] = None;
                    }
                }
            }
            boundary(ui, false);
        }
        let last = self.graph.layers.len() - 1;
        Ok(values[last].take().unwrap_or_default())
    }

    /// Output of layer `id` for `n` samples.
    fn layer(
        &self,
        id: LayerId,
        n: usize,
        graph_input: &[f32],
        values: &[Option<Vec<f32>>],
        scratch: &mut Vec<f32>,
    ) -> Vec<f32> {
        let l = &self.graph.layers[id];
        let ins: Vec<&[f32]> = if l.inputs.is_empty() {
            vec![graph_input]
        } else {
            // Topological order and last-use freeing guarantee the inputs are present.
            l.inputs
                .iter()
                .map(|&i| values[i].as_deref().unwrap_or(&[]))
                .collect()
        };
        let x = ins[0];
        let xs: Shape = self.graph.input_shape_of(id);
        let o = l.output;
        let plane = u(xs.h) * u(xs.w);
        let mut out = vec![0.0f32; n * o.elements() as usize];
        match (&l.op, &self.weights.layers[id]) {
            (
                Op::Conv2d {
                    out_channels,
                    kernel,
                    stride,
                    padding,
                    dilation,
                    groups,
                    ..
                },
                LayerWeights::Conv { weight, bias },
            ) => {
                let g = ConvGeom {
                    cin: u(xs.c),
                    h: u(xs.h),
                    w: u(xs.w),
                    cout: u(*out_channels),
                    kernel: (u(kernel.0), u(kernel.1)),
                    stride: (u(stride.0), u(stride.1)),
                    padding: (u(padding.0), u(padding.1)),
                    dilation: (u(dilation.0), u(dilation.1)),
                    groups: u(*groups),
                    oh: u(o.h),
                    ow: u(o.w),
                };
                kernels::conv2d(x, n, &g, weight, bias.as_deref(), &mut out, scratch);
            }
            (Op::Linear { out_features, .. }, LayerWeights::Linear { weight, bias }) => {
                let fin = xs.elements() as usize;
                kernels::linear(
                    x,
                    n,
                    fin,
                    u(*out_features),
                    weight,
                    bias.as_deref(),
                    &mut out,
                );
            }
            (
                Op::BatchNorm,
                LayerWeights::BatchNorm {
                    gamma,
                    beta,
                    mean,
                    var,
                    eps,
                },
            ) => {
                out.copy_from_slice(x);
                let p = BatchNormParams {
                    gamma,
                    beta,
                    mean,
                    var,
                    eps: *eps,
                };
                kernels::batch_norm(&mut out, u(xs.c), plane, &p);
            }
            (Op::Relu, _) => {
                out.copy_from_slice(x);
                kernels::relu(&mut out);
            }
            (Op::Relu6, _) => {
                out.copy_from_slice(x);
                kernels::relu6(&mut out);
            }
            (Op::LeakyRelu { alpha }, _) => {
                out.copy_from_slice(x);
                kernels::leaky_relu(&mut out, *alpha);
            }
            (Op::Sigmoid, _) => {
                out.copy_from_slice(x);
                kernels::sigmoid(&mut out);
            }
            (Op::HardSigmoid { alpha, beta }, _) => {
                out.copy_from_slice(x);
                kernels::hard_sigmoid(&mut out, *alpha, *beta);
            }
            (Op::HardSwish, _) => {
                out.copy_from_slice(x);
                kernels::hard_swish(&mut out);
            }
            (Op::Clip { min, max }, _) => {
                out.copy_from_slice(x);
                kernels::clip(&mut out, *min, *max);
            }
            (
                Op::MaxPool {
                    kernel,
                    stride,
                    padding,
                    padding_end,
                    dilation,
                    ..
                }
                | Op::AvgPool {
                    kernel,
                    stride,
                    padding,
                    padding_end,
                    dilation,
                    ..
                },
                _,
            ) => {
                let end = padding_end.unwrap_or(*padding);
                let g = PoolGeom {
                    h: u(xs.h),
                    w: u(xs.w),
                    kernel: (u(kernel.0), u(kernel.1)),
                    stride: (u(stride.0), u(stride.1)),
                    padding: (u(padding.0), u(padding.1)),
                    padding_end: (u(end.0), u(end.1)),
                    dilation: (u(dilation.0), u(dilation.1)),
                    oh: u(o.h),
                    ow: u(o.w),
                };
                let planes = n * u(xs.c);
                match l.op {
                    Op::AvgPool {
                        count_include_pad, ..
                    } => kernels::avg_pool(x, planes, &g, &mut out, count_include_pad),
                    _ => kernels::max_pool(x, planes, &g, &mut out),
                }
            }
            (Op::GlobalAvgPool, _) => kernels::global_avg_pool(x, plane, &mut out),
            (Op::Add, _) => {
                out.copy_from_slice(x);
                for other in &ins[1..] {
                    out.iter_mut().zip(*other).for_each(|(a, b)| *a += b);
                }
            }
            (Op::Concat, _) => {
                // Per sample, the inputs' channel blocks one after another.
                let mut at = 0;
                for s in 0..n {
                    for (k, v) in ins.iter().enumerate() {
                        let len = self.input_elems(id, k);
                        out[at..at + len].copy_from_slice(&v[s * len..(s + 1) * len]);
                        at += len;
                    }
                }
            }
            (Op::Flatten | Op::Dropout, _) => out.copy_from_slice(x),
            (Op::Softmax, _) => {
                out.copy_from_slice(x);
                kernels::softmax_channels(&mut out, u(xs.c), plane);
            }
            (
                Op::Lrn {
                    size,
                    alpha,
                    beta,
                    bias,
                },
                _,
            ) => {
                let p = kernels::LrnParams {
                    size: u(*size),
                    alpha: *alpha,
                    beta: *beta,
                    k: *bias,
                };
                kernels::lrn(x, u(xs.c), plane, &p, &mut out);
            }
            // `Weights::check` in `new` rules out a parameterised layer without its weights.
            (Op::Conv2d { .. } | Op::Linear { .. } | Op::BatchNorm, _) => {
                unreachable!("weights checked at construction")
            }
        }
        out
    }

    /// Values per sample of input `k` of layer `id`.
    fn input_elems(&self, id: LayerId, k: usize) -> usize {
        self.graph.input_shapes_of(id)[k].elements() as usize
    }
}

impl Executor for CpuExecutor {
    fn name(&self) -> String {
        "cpu".into()
    }
    fn computes_outputs(&self) -> bool {
        true
    }
    fn run_batch(
        &mut self,
        req: &BatchRequest<'_>,
        hook: &mut dyn UnitHook,
    ) -> Result<BatchRun, ExecError> {
        let input = req.input.ok_or(ExecError::InputSize {
            got: 0,
            want: u(req.batch) * self.graph.input.elements() as usize,
            batch: req.batch,
        })?;
        let epoch = self.epoch;
        let now = || epoch.elapsed().as_secs_f64();
        let start_s = now();
        let mut records = Vec::with_capacity(req.units.len());
        let mut unit_start = start_s;
        let outputs = self.forward_units(input, req.batch, req.units, &mut |unit, starting| {
            let t = now();
            if starting {
                unit_start = t;
                hook.unit_start(unit, t);
            } else {
                let r = UnitRecord {
                    unit,
                    start_s: unit_start,
                    end_s: t,
                    clock_mhz: 0,
                    clock_start_mhz: 0,
                    energy_counter_mj: None,
                    truth_energy_j: None,
                };
                hook.unit_end(&r);
                records.push(r);
            }
        })?;
        Ok(BatchRun {
            start_s,
            end_s: now(),
            outputs: Some(outputs),
            units: records,
        })
    }
}

#[cfg(test)]
#[path = "cpu_tests.rs"]
mod tests;
