//! The operator lowering: one ONNX node at a time into IR layers, constants or aliases (see the
//! module docs of [`super`]).

use std::collections::{HashMap, HashSet};

use super::proto::{self, AttributeProto, NodeProto, tensor_proto, type_proto};
use super::tensor::{Const, ConstData, Int, TensorDecoder};
use super::{OnnxError, TensorIo, Value, ir_shape, layer_names, live_nodes, node_label, readers};
use crate::model::{Graph, GraphBuilder, LayerWeights, Op, Shape, Tensor};

/// The importer's state over one graph.
pub(super) struct Importer<'g, 'd, 'r> {
    g: &'g proto::GraphProto,
    opset: i64,
    dec: &'d mut TensorDecoder<'r>,
    values: HashMap<String, Value>,
    builder: GraphBuilder,
    weights: Vec<LayerWeights>,
    live: Vec<bool>,
    readers: HashMap<String, Vec<usize>>,
    names: Vec<String>,
    /// Nodes already lowered as part of an earlier one (the `Add` after a `MatMul`).
    fused: HashSet<usize>,
    input: String,
    input_dims: Vec<u32>,
    batch_fixed: bool,
    output: String,
    /// The node being lowered: its index.
    at: usize,
}

/// A refusal reason, turned into [`OnnxError::Node`] with the node's name and operator.
type Refusal = String;

/// Attribute lookups on a node.
fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name() == name)
}
fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).and_then(|a| a.i).unwrap_or(default)
}
fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).and_then(|a| a.f).unwrap_or(default)
}
fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}
fn attr_s(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

fn to_u32(v: i64, what: &str) -> Result<u32, Refusal> {
    u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"))
}

/// A pair of per-axis values of a 2-D window attribute (`strides`, `dilations`, …).
fn pair(n: &NodeProto, name: &str, default: u32) -> Result<(u32, u32), Refusal> {
    match attr_ints(n, name).as_deref() {
        None | Some([]) => Ok((default, default)),
        Some([a, b]) => Ok((to_u32(*a, name)?, to_u32(*b, name)?)),
        Some(v) => Err(format!(
            "{name} {v:?} has {} entries; only 2-D windows are supported",
            v.len()
        )),
    }
}

/// Window geometry shared by Conv, MaxPool and AveragePool.
struct Window {
    stride: (u32, u32),
    dilation: (u32, u32),
    /// (top, left)
    begin: (u32, u32),
    /// (bottom, right)
    end: (u32, u32),
}

impl Window {
    fn read(n: &NodeProto, kernel: (u32, u32), input: Shape) -> Result<Self, Refusal> {
        if kernel.0 == 0 || kernel.1 == 0 {
            return Err(format!("kernel {kernel:?} has a zero size"));
        }
        let stride = pair(n, "strides", 1)?;
        let dilation = pair(n, "dilations", 1)?;
        if stride.0 == 0 || stride.1 == 0 || dilation.0 == 0 || dilation.1 == 0 {
            return Err("strides and dilations must be positive".into());
        }
        let auto = attr_s(n, "auto_pad").unwrap_or_else(|| "NOTSET".into());
        let (begin, end) = match auto.as_str() {
            "NOTSET" => match attr_ints(n, "pads").as_deref() {
                None | Some([]) => ((0, 0), (0, 0)),
                Some([t, l, b, r]) => (
                    (to_u32(*t, "pad")?, to_u32(*l, "pad")?),
                    (to_u32(*b, "pad")?, to_u32(*r, "pad")?),
                ),
                Some(v) => return Err(format!("pads {v:?} are not those of a 2-D window")),
            },
            "VALID" => ((0, 0), (0, 0)),
            "SAME_UPPER" | "SAME_LOWER" => {
                // Output = ceil(input / stride); the padding that takes, split with the odd cell
                // at the end (UPPER) or the beginning (LOWER).
                let same = |i: u32, k: u32, s: u32, d: u32| -> Result<(u32, u32), Refusal> {
                    let (i, k, s, d) = (u64::from(i), u64::from(k), u64::from(s), u64::from(d));
                    let out = i.div_ceil(s);
                    let need = (out.saturating_sub(1) * s + d * (k - 1) + 1).saturating_sub(i);
                    let small = need / 2;
                    let (a, b) = if auto == "SAME_UPPER" {
                        (small, need - small)
                    } else {
                        (need - small, small)
                    };
                    Ok((to_u32(a as i64, "pad")?, to_u32(b as i64, "pad")?))
                };
                let h = same(input.h, kernel.0, stride.0, dilation.0)?;
                let w = same(input.w, kernel.1, stride.1, dilation.1)?;
                ((h.0, w.0), (h.1, w.1))
            }
            other => return Err(format!("auto_pad {other} is not an ONNX padding mode")),
        };
        Ok(Self {
            stride,
            dilation,
            begin,
            end,
        })
    }
    fn end(&self) -> Option<(u32, u32)> {
        (self.end != self.begin).then_some(self.end)
    }
}

/// A constant broadcast against an activation of per-sample `dims`, as one value per channel
/// (`dims[0]`), when that is what it is.
fn per_channel(c: &Const, dims: &[u32]) -> Result<Vec<f32>, Refusal> {
    let v = c
        .as_f32()
        .ok_or_else(|| "the constant is not numeric".to_string())?;
    let mut cd = c.dims.clone();
    let rank = dims.len();
    if cd.len() > rank + 1 || (cd.len() == rank + 1 && cd[0] != 1) {
        return Err(format!(
            "a constant of shape {:?} does not broadcast per sample over [N, {}]",
            c.dims,
            join(dims)
        ));
    }
    if cd.len() == rank + 1 {
        cd.remove(0);
    }
    while cd.len() < rank {
        cd.insert(0, 1);
    }
    let channels = dims.first().copied().unwrap_or(1) as usize;
    let per_channel = cd.iter().skip(1).all(|&d| d == 1) && (cd[0] == 1 || cd[0] == channels);
    if !per_channel {
        return Err(format!(
            "a constant of shape {:?} over [N, {}] is not one value per channel (the IR holds \
             per-channel and scalar constants)",
            c.dims,
            join(dims)
        ));
    }
    Ok(if v.len() == 1 {
        vec![v[0]; channels]
    } else {
        v
    })
}

fn join(dims: &[u32]) -> String {
    dims.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The per-channel affine layer `y = x · scale + shift`, as a batch norm in inference form
/// (mean 0, variance 1, ε 0: exactly `scale` and `shift`).
fn affine(scale: Vec<f32>, shift: Vec<f32>) -> LayerWeights {
    let c = scale.len();
    LayerWeights::BatchNorm {
        gamma: scale,
        beta: shift,
        mean: vec![0.0; c],
        var: vec![1.0; c],
        eps: 0.0,
    }
}

impl<'g, 'd, 'r> Importer<'g, 'd, 'r> {
    pub(super) fn new(
        name: &str,
        g: &'g proto::GraphProto,
        opset: i64,
        dec: &'d mut TensorDecoder<'r>,
    ) -> Result<Self, OnnxError> {
        let model = |s: String| OnnxError::Model(s);
        let mut values = HashMap::new();
        for t in &g.initializer {
            let c = dec.decode(t, &format!("initializer {}", t.name()))?;
            values.insert(t.name().to_string(), Value::Const(c));
        }
        if !g.sparse_initializer.is_empty() {
            return Err(model("sparse initializers are not supported".into()));
        }
        // Old exporters (IR version < 4) list the initializers among the inputs as well.
        let inputs: Vec<&proto::ValueInfoProto> = g
            .input
            .iter()
            .filter(|i| !values.contains_key(i.name()))
            .collect();
        let input = match inputs.as_slice() {
            [one] => *one,
            [] => return Err(model("the graph has no input".into())),
            more => {
                return Err(model(format!(
                    "the graph has {} inputs ({}); EALI serves models with one image input",
                    more.len(),
                    more.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
                )));
            }
        };
        let (input_dims, batch_fixed) = input_shape(input)?;
        let output = match g.output.as_slice() {
            [one] => one.name().to_string(),
            [] => return Err(model("the graph has no output".into())),
            more => {
                return Err(model(format!(
                    "the graph has {} outputs; EALI serves models with one output",
                    more.len()
                )));
            }
        };
        let shape = ir_shape(&input_dims).ok_or_else(|| {
            model(format!(
                "input {} has shape [N, {}]; the IR holds [N, C, H, W] and [N, K] inputs",
                input.name(),
                join(&input_dims)
            ))
        })?;
        let builder = GraphBuilder::new(name, shape);
        values.insert(
            input.name().to_string(),
            Value::Act {
                src: builder.input(),
                dims: input_dims.clone(),
            },
        );
        let live = live_nodes(&g.node, std::slice::from_ref(&output));
        let readers = readers(&g.node, &live);
        Ok(Self {
            g,
            opset,
            dec,
            values,
            builder,
            weights: Vec::new(),
            readers,
            names: layer_names(&g.node),
            live,
            fused: HashSet::new(),
            input: input.name().to_string(),
            input_dims,
            batch_fixed,
            output,
            at: 0,
        })
    }

    /// Lowers every live node in order.
    pub(super) fn run(&mut self) -> Result<(), OnnxError> {
        for i in 0..self.g.node.len() {
            if !self.live[i] || self.fused.contains(&i) {
                continue;
            }
            self.at = i;
            let g = self.g;
            let n = &g.node[i];
            if !matches!(n.domain(), "" | "ai.onnx") {
                return Err(self.refuse(format!(
                    "operators of domain {} are not supported (only the default ai.onnx domain)",
                    n.domain()
                )));
            }
            let outs = self.lower(n).map_err(|r| self.refuse(r))?;
            for (name, v) in n.output.iter().zip(outs) {
                if !name.is_empty() {
                    self.values.insert(name.clone(), v);
                }
            }
        }
        Ok(())
    }

    /// The graph, its parameters and its named input and output.
    pub(super) fn finish(self) -> Result<(Graph, Vec<LayerWeights>, TensorIo), OnnxError> {
        let (src, dims) = match self.values.get(&self.output) {
            Some(Value::Act { src, dims }) => (*src, dims.clone()),
            Some(Value::Const(_)) => {
                return Err(OnnxError::Model(format!(
                    "output {} is a constant; there is nothing to serve",
                    self.output
                )));
            }
            None => {
                return Err(OnnxError::Model(format!(
                    "no node computes the graph output {}",
                    self.output
                )));
            }
        };
        if src.layer().is_none() {
            return Err(OnnxError::Model(format!(
                "output {} is the input {} itself; there is nothing to serve",
                self.output, self.input
            )));
        }
        let graph = self.builder.finish()?;
        let i64s = |d: &[u32]| d.iter().map(|&x| i64::from(x)).collect();
        let io = TensorIo {
            input: self.input,
            output: self.output,
            input_dims: i64s(&self.input_dims),
            output_dims: i64s(&dims),
            batch_fixed: self.batch_fixed,
        };
        Ok((graph, self.weights, io))
    }

    fn node(&self) -> &'g NodeProto {
        &self.g.node[self.at]
    }

    fn refuse(&self, reason: Refusal) -> OnnxError {
        let n = self.node();
        OnnxError::Node {
            node: node_label(self.at, n),
            op: n.op_type().to_string(),
            reason,
        }
    }

    /// Input `i` of the current node (`None` when absent or named "").
    fn input_opt(&self, i: usize) -> Result<Option<&Value>, Refusal> {
        match self.node().input.get(i).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(name) => self
                .values
                .get(name)
                .map(Some)
                .ok_or_else(|| format!("input {name} is not computed by any earlier node")),
        }
    }
    fn value(&self, i: usize) -> Result<&Value, Refusal> {
        self.input_opt(i)?
            .ok_or_else(|| format!("input {i} is missing"))
    }
    fn act(&self, i: usize) -> Result<(Tensor, Vec<u32>), Refusal> {
        match self.value(i)? {
            Value::Act { src, dims } => Ok((*src, dims.clone())),
            Value::Const(_) => Err(format!(
                "input {} is a constant where a computed tensor is expected",
                self.node().input[i]
            )),
        }
    }
    fn spatial(&self, i: usize) -> Result<(Tensor, Vec<u32>), Refusal> {
        let (t, dims) = self.act(i)?;
        if dims.len() != 3 {
            return Err(format!(
                "its input has shape [N, {}]; this operator needs [N, C, H, W]",
                join(&dims)
            ));
        }
        Ok((t, dims))
    }
    fn konst(&self, i: usize) -> Result<Const, Refusal> {
        self.const_opt(i)?
            .ok_or_else(|| format!("input {i} is missing"))
    }
    fn const_opt(&self, i: usize) -> Result<Option<Const>, Refusal> {
        match self.input_opt(i)? {
            None => Ok(None),
            Some(Value::Const(c)) => Ok(Some(c.clone())),
            Some(Value::Act { .. }) => Err(format!(
                "input {} is computed; EALI needs it to be a constant (an initializer or a \
                 Constant node)",
                self.node().input[i]
            )),
        }
    }
    fn floats(&self, i: usize) -> Result<Vec<f32>, Refusal> {
        self.konst(i)?
            .as_f32()
            .ok_or_else(|| format!("input {} is not a numeric constant", self.node().input[i]))
    }

    /// Output `k` of the current node is read by a later live node.
    fn output_used(&self, k: usize) -> bool {
        self.node()
            .output
            .get(k)
            .is_some_and(|o| !o.is_empty() && (self.readers.contains_key(o) || *o == self.output))
    }
    fn only_first_output(&self) -> Result<(), Refusal> {
        match (1..self.node().output.len()).find(|&k| self.output_used(k)) {
            Some(k) => Err(format!(
                "its output {} ({}) is used; EALI computes only the first output",
                k,
                self.node().output[k]
            )),
            None => Ok(()),
        }
    }

    /// Appends a layer named after the current node.
    fn push(&mut self, op: Op, inputs: &[Tensor], w: LayerWeights) -> Result<Tensor, Refusal> {
        let name = self.names[self.at].clone();
        let t = self
            .builder
            .push(name, op, inputs)
            .map_err(|e| e.to_string())?;
        self.weights.push(w);
        Ok(t)
    }
    fn push_act(&mut self, op: Op, x: Tensor, w: LayerWeights) -> Result<Vec<Value>, Refusal> {
        let t = self.push(op, &[x], w)?;
        Ok(vec![act_of(t)])
    }

    fn lower(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        let op = n.op_type();
        match op {
            "Conv" => self.conv(n),
            "BatchNormalization" => self.batch_norm(n),
            "Relu" => self.unary(Op::Relu),
            "Sigmoid" => self.unary(Op::Sigmoid),
            "HardSwish" => self.unary(Op::HardSwish),
            "LeakyRelu" => self.unary(Op::LeakyRelu {
                alpha: attr_f(n, "alpha", 0.01),
            }),
            "HardSigmoid" => self.unary(Op::HardSigmoid {
                alpha: attr_f(n, "alpha", 0.2),
                beta: attr_f(n, "beta", 0.5),
            }),
            "Clip" => self.clip(n),
            "MaxPool" | "AveragePool" => self.pool(n, op == "MaxPool"),
            "GlobalAveragePool" => {
                let (x, dims) = self.spatial(0)?;
                let out = self.push(Op::GlobalAvgPool, &[x], LayerWeights::None)?;
                Ok(vec![Value::Act {
                    src: out,
                    dims: vec![dims[0], 1, 1],
                }])
            }
            "Gemm" => self.gemm(n),
            "MatMul" => self.matmul(n),
            "Add" | "Mul" | "Sub" | "Div" => self.arith(op),
            "Concat" => self.concat(n),
            "Flatten" => self.flatten(n),
            "Reshape" => self.reshape(n),
            "Squeeze" | "Unsqueeze" => self.squeeze(n, op == "Unsqueeze"),
            "Shape" => self.shape(n),
            "Gather" => self.gather(n),
            "Constant" => self.constant(n),
            "Cast" => self.cast(n),
            "Softmax" => self.softmax(n),
            "LRN" => {
                let (x, _) = self.act(0)?;
                let size = attr(n, "size")
                    .and_then(|a| a.i)
                    .ok_or("LRN needs its size attribute")?;
                let op = Op::Lrn {
                    size: to_u32(size, "size")?,
                    alpha: attr_f(n, "alpha", 1e-4),
                    beta: attr_f(n, "beta", 0.75),
                    bias: attr_f(n, "bias", 1.0),
                };
                self.push_act(op, x, LayerWeights::None)
            }
            "Dropout" => {
                self.only_first_output()?;
                // Opset 12 moved the mode to an input; inference is training_mode = false.
                if let Some(t) = self.const_opt(2)?
                    && t.as_f32().is_some_and(|v| v.iter().any(|&x| x != 0.0))
                {
                    return Err("training_mode is true; EALI runs inference".into());
                }
                Ok(vec![self.value(0)?.clone()])
            }
            "Identity" => Ok(vec![self.value(0)?.clone()]),
            _ => Err(format!(
                "operator {op} is not supported by EALI's ONNX importer (see `eali models --help` \
                 for the operators it reads)"
            )),
        }
    }

    fn unary(&mut self, op: Op) -> Result<Vec<Value>, Refusal> {
        let (x, dims) = self.act(0)?;
        let t = self.push(op, &[x], LayerWeights::None)?;
        Ok(vec![Value::Act { src: t, dims }])
    }

    fn conv(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        let (x, _) = self.spatial(0)?;
        let w = self.konst(1)?;
        let [m, cg, kh, kw] = *w.dims.as_slice() else {
            return Err(format!(
                "weight of shape {:?}: only 2-D convolutions are supported",
                w.dims
            ));
        };
        let group = to_u32(attr_i(n, "group", 1), "group")?;
        let xs = x.shape();
        if group == 0 || cg as u64 * u64::from(group) != u64::from(xs.c) {
            return Err(format!(
                "weight of shape {:?} with group {group} does not fit {} input channels",
                w.dims, xs.c
            ));
        }
        let kernel = (to_u32(kh as i64, "kernel")?, to_u32(kw as i64, "kernel")?);
        if let Some(ks) = attr_ints(n, "kernel_shape")
            && !ks.is_empty()
            && ks != [kh as i64, kw as i64]
        {
            return Err(format!(
                "kernel_shape {ks:?} disagrees with the weight's {:?}",
                w.dims
            ));
        }
        let win = Window::read(n, kernel, xs)?;
        let bias = match self.const_opt(2)? {
            Some(b) => {
                let v = b.as_f32().ok_or("the bias is not numeric")?;
                if v.len() != m {
                    return Err(format!("bias has {} values for {m} filters", v.len()));
                }
                Some(v)
            }
            None => None,
        };
        let op = Op::Conv2d {
            out_channels: to_u32(m as i64, "filters")?,
            kernel,
            stride: win.stride,
            padding: win.begin,
            dilation: win.dilation,
            groups: group,
            bias: bias.is_some(),
            padding_end: win.end(),
        };
        let weight = w.as_f32().ok_or("the weight is not numeric")?;
        self.push_act(op, x, LayerWeights::Conv { weight, bias })
    }

    fn batch_norm(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        self.only_first_output()?;
        if attr_i(n, "training_mode", 0) != 0 {
            return Err("training_mode is set; EALI runs inference".into());
        }
        if self.opset < 9 && attr_i(n, "spatial", 1) != 1 {
            return Err("spatial = 0 (statistics per activation) is not supported".into());
        }
        let (x, dims) = self.act(0)?;
        let c = dims[0] as usize;
        let mut p = Vec::new();
        for (i, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "var")] {
            let v = self.floats(i)?;
            if v.len() != c {
                return Err(format!("{what} has {} values for {c} channels", v.len()));
            }
            p.push(v);
        }
        let [gamma, beta, mean, var] = <[Vec<f32>; 4]>::try_from(p).map_err(|_| "parameters")?;
        let w = LayerWeights::BatchNorm {
            gamma,
            beta,
            mean,
            var,
            eps: attr_f(n, "epsilon", 1e-5),
        };
        let t = self.push(Op::BatchNorm, &[x], w)?;
        Ok(vec![Value::Act { src: t, dims }])
    }

    fn clip(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        let (lo, hi) = if self.opset < 11 {
            (
                attr_f(n, "min", f32::NEG_INFINITY),
                attr_f(n, "max", f32::INFINITY),
            )
        } else {
            let bound = |i: usize, d: f32| -> Result<f32, Refusal> {
                match self.const_opt(i)? {
                    None => Ok(d),
                    Some(c) => c
                        .scalar_f32()
                        .ok_or_else(|| "min and max must be scalars".to_string()),
                }
            };
            (bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?)
        };
        let op = match (lo, hi) {
            (0.0, 6.0) => Op::Relu6,
            (0.0, h) if h >= f32::MAX => Op::Relu,
            (min, max) => Op::Clip { min, max },
        };
        self.unary(op)
    }

    fn pool(&mut self, n: &NodeProto, max: bool) -> Result<Vec<Value>, Refusal> {
        self.only_first_output()?;
        if attr_i(n, "storage_order", 0) != 0 {
            return Err("storage_order 1 (column-major indices) is not supported".into());
        }
        let (x, dims) = self.spatial(0)?;
        let kernel = match attr_ints(n, "kernel_shape").as_deref() {
            Some([a, b]) => (to_u32(*a, "kernel")?, to_u32(*b, "kernel")?),
            other => {
                return Err(format!(
                    "kernel_shape {other:?}: only 2-D windows are supported"
                ));
            }
        };
        let win = Window::read(n, kernel, x.shape())?;
        let ceil_mode = attr_i(n, "ceil_mode", 0) != 0;
        let op = if max {
            Op::MaxPool {
                kernel,
                stride: win.stride,
                padding: win.begin,
                ceil_mode,
                padding_end: win.end(),
                dilation: win.dilation,
            }
        } else {
            Op::AvgPool {
                kernel,
                stride: win.stride,
                padding: win.begin,
                ceil_mode,
                padding_end: win.end(),
                dilation: win.dilation,
                count_include_pad: attr_i(n, "count_include_pad", 0) != 0,
            }
        };
        let t = self.push(op, &[x], LayerWeights::None)?;
        let s = t.shape();
        let _ = dims;
        Ok(vec![Value::Act {
            src: t,
            dims: vec![s.c, s.h, s.w],
        }])
    }

    /// A linear layer on a per-sample vector `x` of `k` features.
    fn linear(
        &mut self,
        x: Tensor,
        weight: Vec<f32>,
        out: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Vec<Value>, Refusal> {
        let op = Op::Linear {
            out_features: to_u32(out as i64, "output features")?,
            bias: bias.is_some(),
        };
        let t = self.push(op, &[x], LayerWeights::Linear { weight, bias })?;
        Ok(vec![act_of(t)])
    }

    /// The input of Gemm and MatMul: a vector per sample.
    fn vector(&self) -> Result<(Tensor, usize), Refusal> {
        let (x, dims) = self.act(0)?;
        match *dims {
            [k] => Ok((x, k as usize)),
            _ => Err(format!(
                "its input has shape [N, {}]; matrix products take [N, K]",
                join(&dims)
            )),
        }
    }

    fn gemm(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        if attr_i(n, "transA", 0) != 0 {
            return Err("transA = 1 (the batch along the columns) is not supported".into());
        }
        let (x, k) = self.vector()?;
        let b = self.konst(1)?;
        let (alpha, beta) = (attr_f(n, "alpha", 1.0), attr_f(n, "beta", 1.0));
        let trans_b = attr_i(n, "transB", 0) != 0;
        let bv = b.as_f32().ok_or("B is not numeric")?;
        let [r, c] = *b.dims.as_slice() else {
            return Err(format!("B has shape {:?}; Gemm needs a matrix", b.dims));
        };
        let (out, inner) = if trans_b { (r, c) } else { (c, r) };
        if inner != k {
            return Err(format!(
                "B of shape {:?} (transB = {}) does not take {k} input features",
                b.dims,
                i32::from(trans_b)
            ));
        }
        let weight: Vec<f32> = if trans_b {
            bv.iter().map(|v| alpha * v).collect()
        } else {
            (0..out)
                .flat_map(|o| (0..k).map(move |i| (o, i)))
                .map(|(o, i)| alpha * bv[i * out + o])
                .collect()
        };
        let bias = match self.const_opt(2)? {
            None => None,
            Some(cst) => Some(vector_bias(&cst, out)?.iter().map(|v| beta * v).collect()),
        };
        self.linear(x, weight, out, bias)
    }

    fn matmul(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        let (x, k) = self.vector()?;
        let b = self.konst(1)?;
        let [inner, out] = *b.dims.as_slice() else {
            return Err(format!(
                "B has shape {:?}; EALI takes a matrix of weights",
                b.dims
            ));
        };
        if inner != k {
            return Err(format!(
                "B of shape {:?} does not take {k} input features",
                b.dims
            ));
        }
        let bv = b.as_f32().ok_or("B is not numeric")?;
        let weight: Vec<f32> = (0..out)
            .flat_map(|o| (0..k).map(move |i| (o, i)))
            .map(|(o, i)| bv[i * out + o])
            .collect();
        // MatMul then Add of a vector is one linear layer with a bias.
        let mut bias = None;
        let y = &n.output[0];
        if let Some([j]) = self.readers.get(y).map(Vec::as_slice)
            && *y != self.output
            && self.g.node[*j].op_type() == "Add"
        {
            let add = &self.g.node[*j];
            let other = add.input.iter().find(|s| *s != y);
            if let Some(Value::Const(c)) = other.and_then(|o| self.values.get(o))
                && add.input.len() == 2
                && let Ok(v) = vector_bias(c, out)
            {
                bias = Some(v);
                self.fused.insert(*j);
            }
        }
        let fused = bias.is_some();
        let v = self.linear(x, weight, out, bias)?;
        if fused && let Some(j) = self.readers.get(y).and_then(|r| r.first()) {
            let name = self.g.node[*j].output[0].clone();
            self.values.insert(name, v[0].clone());
        }
        Ok(v)
    }

    fn arith(&mut self, op: &str) -> Result<Vec<Value>, Refusal> {
        let (a, b) = (self.value(0)?.clone(), self.value(1)?.clone());
        match (a, b) {
            (Value::Act { src: ta, dims: da }, Value::Act { src: tb, dims: db }) => {
                if op != "Add" {
                    return Err(format!(
                        "{op} of two computed tensors is not supported (only Add, as a residual \
                         join)"
                    ));
                }
                if da != db {
                    return Err(format!(
                        "adds [N, {}] and [N, {}]; the IR adds tensors of one shape",
                        join(&da),
                        join(&db)
                    ));
                }
                let t = self.push(Op::Add, &[ta, tb], LayerWeights::None)?;
                Ok(vec![Value::Act { src: t, dims: da }])
            }
            (Value::Act { src, dims }, Value::Const(c)) => {
                let v = per_channel(&c, &dims)?;
                let ones = vec![1.0; v.len()];
                let zeros = vec![0.0; v.len()];
                let w = match op {
                    "Mul" => affine(v, zeros),
                    "Add" => affine(ones, v),
                    "Sub" => affine(ones, v.iter().map(|x| -x).collect()),
                    _ => affine(v.iter().map(|x| 1.0 / x).collect(), zeros),
                };
                let t = self.push(Op::BatchNorm, &[src], w)?;
                Ok(vec![Value::Act { src: t, dims }])
            }
            (Value::Const(c), Value::Act { src, dims }) => {
                let v = per_channel(&c, &dims)?;
                let w = match op {
                    "Mul" => affine(v.clone(), vec![0.0; v.len()]),
                    "Add" => affine(vec![1.0; v.len()], v),
                    "Sub" => affine(vec![-1.0; v.len()], v),
                    _ => {
                        return Err(
                            "dividing a constant by a computed tensor is not supported".into()
                        );
                    }
                };
                let t = self.push(Op::BatchNorm, &[src], w)?;
                Ok(vec![Value::Act { src: t, dims }])
            }
            (Value::Const(a), Value::Const(b)) => Ok(vec![Value::Const(fold_arith(op, &a, &b)?)]),
        }
    }

    fn concat(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        let count = n.input.len();
        let values: Vec<Value> = (0..count)
            .map(|i| self.value(i).cloned())
            .collect::<Result<_, _>>()?;
        let axis = attr_i(n, "axis", 0);
        if values.iter().all(|v| matches!(v, Value::Const(_))) {
            let mut out = Vec::new();
            for v in &values {
                if let Value::Const(c) = v {
                    if c.dims.len() > 1 {
                        return Err("only 1-D constants are concatenated".into());
                    }
                    out.extend(
                        c.as_ints()
                            .ok_or("only integer constants are concatenated")?,
                    );
                }
            }
            return Ok(vec![Value::Const(Const::ints(vec![out.len()], out))]);
        }
        let mut acts = Vec::new();
        let mut dims0: Option<Vec<u32>> = None;
        for v in &values {
            let Value::Act { src, dims } = v else {
                return Err("concatenates constants with computed tensors".into());
            };
            let rank = dims.len() as i64 + 1;
            let a = if axis < 0 { axis + rank } else { axis };
            if a != 1 {
                return Err(format!(
                    "axis {axis} of [N, {}]: the IR concatenates along channels (axis 1)",
                    join(dims)
                ));
            }
            if let Some(d0) = &dims0
                && (d0.len() != dims.len() || d0[1..] != dims[1..])
            {
                return Err(format!(
                    "concatenates [N, {}] and [N, {}], which differ beyond the channels",
                    join(d0),
                    join(dims)
                ));
            }
            dims0.get_or_insert_with(|| dims.clone());
            acts.push(*src);
        }
        let t = self.push(Op::Concat, &acts, LayerWeights::None)?;
        let s = t.shape();
        let dims = if dims0.is_some_and(|d| d.len() == 1) {
            vec![s.c]
        } else {
            vec![s.c, s.h, s.w]
        };
        Ok(vec![Value::Act { src: t, dims }])
    }

    fn flatten(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        let (x, dims) = self.act(0)?;
        let rank = dims.len() as i64 + 1;
        let axis = attr_i(n, "axis", 1);
        let a = if axis < 0 { axis + rank } else { axis };
        if a != 1 {
            return Err(format!(
                "axis {axis} of [N, {}] would mix the batch into the features; EALI flattens \
                 from axis 1",
                join(&dims)
            ));
        }
        let k = dims.iter().map(|&d| u64::from(d)).product::<u64>();
        self.view(x, &dims, vec![to_u32(k as i64, "size")?])
    }

    /// `x` (per-sample ONNX dims `from`) seen with per-sample dims `to`: an alias when the IR
    /// shape stays, a flatten layer into a vector, refused otherwise.
    fn view(&mut self, x: Tensor, from: &[u32], to: Vec<u32>) -> Result<Vec<Value>, Refusal> {
        let cannot = || {
            format!(
                "reshapes [N, {}] into [N, {}]; the IR holds [N, C, H, W] and [N, K] tensors and \
                 turns images into vectors but not back",
                join(from),
                join(&to)
            )
        };
        let want = ir_shape(&to).ok_or_else(cannot)?;
        if want == x.shape() {
            return Ok(vec![Value::Act { src: x, dims: to }]);
        }
        if want.h == 1 && want.w == 1 && want.elements() == x.shape().elements() {
            let t = self.push(Op::Flatten, &[x], LayerWeights::None)?;
            return Ok(vec![Value::Act { src: t, dims: to }]);
        }
        Err(cannot())
    }

    fn reshape(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        let target = if self.opset < 5 {
            attr_ints(n, "shape")
                .unwrap_or_default()
                .into_iter()
                .map(Int::Known)
                .collect()
        } else {
            self.konst(1)?
                .as_ints()
                .ok_or("the target shape is not integer")?
        };
        let allow_zero = attr_i(n, "allowzero", 0) != 0;
        match self.value(0)?.clone() {
            Value::Const(c) => {
                let known: Vec<i64> = target
                    .iter()
                    .map(|t| match t {
                        Int::Known(k) => Ok(*k),
                        Int::Batch => Err("reshapes a constant by the batch size".to_string()),
                    })
                    .collect::<Result<_, _>>()?;
                let dims = resolve_shape(&known, &c.dims, c.len(), allow_zero)?;
                Ok(vec![Value::Const(Const { dims, data: c.data })])
            }
            Value::Act { src, dims } => {
                let to = self.sample_dims(&target, &dims, allow_zero)?;
                self.view(src, &dims, to)
            }
        }
    }

    /// The per-sample dims of a Reshape of an activation with per-sample `dims` to `target`
    /// (entries may be the batch symbol, 0 = keep, -1 = infer).
    fn sample_dims(
        &self,
        target: &[Int],
        dims: &[u32],
        allow_zero: bool,
    ) -> Result<Vec<u32>, Refusal> {
        let elems: i64 = dims.iter().map(|&d| i64::from(d)).product();
        let show = || {
            target
                .iter()
                .map(|t| match t {
                    Int::Known(k) => k.to_string(),
                    Int::Batch => "N".into(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((first, rest)) = target.split_first() else {
            return Err("reshapes to a scalar".into());
        };
        let rest_known: Vec<i64> = rest
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                Int::Known(0) if !allow_zero => Ok(dims.get(i).map_or(0, |&d| i64::from(d))),
                Int::Known(k) => Ok(*k),
                Int::Batch => Err(format!(
                    "the target [{}] moves the batch away from the first axis",
                    show()
                )),
            })
            .collect::<Result<_, _>>()?;
        let rest_fixed = !rest_known.contains(&-1);
        let batch_first = match first {
            Int::Batch => true,
            Int::Known(0) if !allow_zero => true,
            // -1 is the batch when the rest already holds one sample's elements.
            Int::Known(-1) => {
                rest_fixed
                    && rest_known.iter().try_fold(1i64, |a, &d| a.checked_mul(d)) == Some(elems)
            }
            Int::Known(1) => self.batch_fixed,
            Int::Known(_) => false,
        };
        if !batch_first {
            return Err(format!(
                "the target [{}] does not keep the batch as its first axis",
                show()
            ));
        }
        let shape = resolve_shape(
            &rest_known,
            &[],
            usize::try_from(elems).map_err(|_| "size")?,
            true,
        )
        .map_err(|e| format!("target [{}]: {e}", show()))?;
        shape
            .into_iter()
            .map(|d| to_u32(d as i64, "dimension"))
            .collect()
    }

    fn axes(&self, n: &NodeProto) -> Result<Option<Vec<i64>>, Refusal> {
        if self.opset < 13 {
            return Ok(attr_ints(n, "axes").filter(|a| !a.is_empty()));
        }
        match self.const_opt(1)? {
            None => Ok(None),
            Some(c) => Ok(Some(c.as_known().ok_or("axes are not integers")?)),
        }
    }

    fn squeeze(&mut self, n: &NodeProto, unsqueeze: bool) -> Result<Vec<Value>, Refusal> {
        let axes = self.axes(n)?;
        let v = self.value(0)?.clone();
        let full: Vec<Int> = match &v {
            Value::Const(c) => c.dims.iter().map(|&d| Int::Known(d as i64)).collect(),
            Value::Act { dims, .. } => std::iter::once(Int::Batch)
                .chain(dims.iter().map(|&d| Int::Known(i64::from(d))))
                .collect(),
        };
        let out: Vec<Int> = if unsqueeze {
            let axes = axes.ok_or("Unsqueeze needs axes")?;
            let rank = (full.len() + axes.len()) as i64;
            let mut at: Vec<i64> = axes
                .iter()
                .map(|&a| if a < 0 { a + rank } else { a })
                .collect();
            at.sort_unstable();
            let mut src = full.into_iter();
            (0..rank)
                .map(|i| {
                    if at.contains(&i) {
                        Some(Int::Known(1))
                    } else {
                        src.next()
                    }
                })
                .collect::<Option<_>>()
                .ok_or("axes out of range")?
        } else {
            let rank = full.len() as i64;
            let at: Option<Vec<i64>> = axes.map(|a| {
                a.iter()
                    .map(|&x| if x < 0 { x + rank } else { x })
                    .collect()
            });
            full.iter()
                .enumerate()
                .filter(|(i, d)| match &at {
                    Some(at) => !at.contains(&(*i as i64)),
                    None => **d != Int::Known(1),
                })
                .map(|(_, d)| *d)
                .collect()
        };
        match v {
            Value::Const(c) => {
                let dims = out
                    .iter()
                    .map(|d| match d {
                        Int::Known(k) => *k as usize,
                        Int::Batch => 0,
                    })
                    .collect();
                Ok(vec![Value::Const(Const { dims, data: c.data })])
            }
            Value::Act { src, dims } => {
                let Some((Int::Batch, rest)) = out.split_first() else {
                    return Err("it would move or remove the batch dimension".into());
                };
                let to = rest
                    .iter()
                    .map(|d| match d {
                        Int::Known(k) => to_u32(*k, "dimension"),
                        Int::Batch => Err("the batch dimension moves".to_string()),
                    })
                    .collect::<Result<Vec<u32>, _>>()?;
                self.view(src, &dims, to)
            }
        }
    }

    fn shape(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        let full: Vec<Int> = match self.value(0)? {
            Value::Const(c) => c.dims.iter().map(|&d| Int::Known(d as i64)).collect(),
            Value::Act { dims, .. } => std::iter::once(Int::Batch)
                .chain(dims.iter().map(|&d| Int::Known(i64::from(d))))
                .collect(),
        };
        let rank = full.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
        let start = clamp(attr_i(n, "start", 0));
        let end = clamp(attr_i(n, "end", rank));
        let part: Vec<Int> = full.get(start..end.max(start)).unwrap_or(&[]).to_vec();
        Ok(vec![Value::Const(Const::ints(vec![part.len()], part))])
    }

    fn gather(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        let data = match self.value(0)? {
            Value::Const(c) => c.clone(),
            Value::Act { .. } => {
                return Err("Gather on a computed tensor is not supported (only on shapes)".into());
            }
        };
        if data.dims.len() != 1 || attr_i(n, "axis", 0) != 0 {
            return Err("Gather is supported on 1-D constants (shape vectors) only".into());
        }
        let idx = self.konst(1)?;
        let ix = idx.as_known().ok_or("indices are not integers")?;
        let len = data.len() as i64;
        let pick = |i: i64| -> Result<usize, Refusal> {
            let j = if i < 0 { i + len } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| j < data.len())
                .ok_or_else(|| format!("index {i} is out of range for {len} values"))
        };
        let picked: Vec<usize> = ix.iter().map(|&i| pick(i)).collect::<Result<_, _>>()?;
        let data = match &data.data {
            ConstData::F32(v) => ConstData::F32(picked.iter().map(|&j| v[j]).collect()),
            ConstData::Int(v) => ConstData::Int(picked.iter().map(|&j| v[j]).collect()),
        };
        Ok(vec![Value::Const(Const {
            dims: idx.dims,
            data,
        })])
    }

    fn constant(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        let what = format!("Constant {}", n.output.first().map_or("", String::as_str));
        let c = if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()) {
            self.dec.decode(t, &what).map_err(|e| e.to_string())?
        } else if let Some(f) = attr(n, "value_float").and_then(|a| a.f) {
            Const::f32(vec![], vec![f])
        } else if let Some(a) = attr(n, "value_floats") {
            Const::f32(vec![a.floats.len()], a.floats.clone())
        } else if let Some(i) = attr(n, "value_int").and_then(|a| a.i) {
            Const::ints(vec![], vec![Int::Known(i)])
        } else if let Some(a) = attr(n, "value_ints") {
            Const::ints(
                vec![a.ints.len()],
                a.ints.iter().map(|&i| Int::Known(i)).collect(),
            )
        } else {
            return Err(
                "a Constant with no tensor, float(s) or int(s) value is not supported".into(),
            );
        };
        Ok(vec![Value::Const(c)])
    }

    fn cast(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        use tensor_proto::DataType as D;
        let to = attr_i(n, "to", 0) as i32;
        let float = matches!(
            D::try_from(to),
            Ok(D::Float | D::Double | D::Float16 | D::Bfloat16)
        );
        match self.value(0)?.clone() {
            Value::Act { src, dims } if to == D::Float as i32 => Ok(vec![Value::Act { src, dims }]),
            Value::Act { .. } => Err(format!(
                "casts a computed tensor to {}; EALI computes in FP32",
                super::tensor::data_type_name(to)
            )),
            Value::Const(c) if float => Ok(vec![Value::Const(Const {
                data: ConstData::F32(c.as_f32().ok_or("casts the batch size to a float")?),
                dims: c.dims,
            })]),
            Value::Const(c) => {
                let ints = match &c.data {
                    ConstData::Int(v) => v.clone(),
                    ConstData::F32(v) => v.iter().map(|&x| Int::Known(x.trunc() as i64)).collect(),
                };
                Ok(vec![Value::Const(Const::ints(c.dims, ints))])
            }
        }
    }

    fn softmax(&mut self, n: &NodeProto) -> Result<Vec<Value>, Refusal> {
        let (x, dims) = self.act(0)?;
        let rank = dims.len() as i64 + 1;
        let legacy = self.opset < 13;
        let axis = attr_i(n, "axis", if legacy { 1 } else { -1 });
        let a = if axis < 0 { axis + rank } else { axis };
        // Before opset 13 the input is seen as 2-D [prod(dims < axis), prod(dims >= axis)];
        // from 13 on the softmax runs along one axis. The IR's softmax runs over the channels at
        // every spatial position, so it matches axis 1 of a vector either way, axis 1 of an image
        // from opset 13, and axis 1 of an image whose spatial size is 1x1 before it.
        let spatial = dims.iter().skip(1).map(|&d| u64::from(d)).product::<u64>();
        let fits = a == 1 && (!legacy || spatial == 1);
        if !fits {
            return Err(format!(
                "softmax over axis {axis} of [N, {}] (opset {}): the IR's softmax runs over \
                 the channels",
                join(&dims),
                self.opset
            ));
        }
        let t = self.push(Op::Softmax, &[x], LayerWeights::None)?;
        Ok(vec![Value::Act { src: t, dims }])
    }
}

fn act_of(t: Tensor) -> Value {
    let s = t.shape();
    let dims = if s.h == 1 && s.w == 1 {
        vec![s.c]
    } else {
        vec![s.c, s.h, s.w]
    };
    Value::Act { src: t, dims }
}

/// A bias vector of `out` values from a constant of shape `[]`, `[1]`, `[out]` or `[1, out]`.
fn vector_bias(c: &Const, out: usize) -> Result<Vec<f32>, Refusal> {
    let v = c.as_f32().ok_or("the bias is not numeric")?;
    let ok = match c.dims.as_slice() {
        [] | [1] | [1, 1] => true,
        [n] | [1, n] => *n == out,
        _ => false,
    };
    if !ok {
        return Err(format!(
            "a bias of shape {:?} is not one value per output ({out})",
            c.dims
        ));
    }
    Ok(if v.len() == 1 { vec![v[0]; out] } else { v })
}

/// The dims of a reshape of `count` elements to `target` (0 = keep `from`'s, -1 = infer).
fn resolve_shape(
    target: &[i64],
    from: &[usize],
    count: usize,
    allow_zero: bool,
) -> Result<Vec<usize>, Refusal> {
    let mut dims: Vec<Option<usize>> = Vec::with_capacity(target.len());
    for (i, &t) in target.iter().enumerate() {
        dims.push(match t {
            0 if !allow_zero => Some(*from.get(i).ok_or("0 refers past the input's dimensions")?),
            -1 => None,
            t if t >= 0 => Some(t as usize),
            t => return Err(format!("dimension {t} is negative")),
        });
    }
    let known = dims
        .iter()
        .flatten()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("the target's dimensions overflow")?;
    match dims.iter().filter(|d| d.is_none()).count() {
        0 if known == count => Ok(dims.into_iter().flatten().collect()),
        1 if known > 0 && count.is_multiple_of(known) => Ok(dims
            .into_iter()
            .map(|d| d.unwrap_or(count / known))
            .collect()),
        0 | 1 => Err(format!("{count} elements do not fit")),
        _ => Err("more than one dimension is -1".into()),
    }
}

/// Element-wise arithmetic of two constants (shape arithmetic), one of them possibly a scalar.
fn fold_arith(op: &str, a: &Const, b: &Const) -> Result<Const, Refusal> {
    let (n, dims) = match (a.len(), b.len()) {
        (x, y) if x == y => (x, a.dims.clone()),
        (1, y) => (y, b.dims.clone()),
        (x, 1) => (x, a.dims.clone()),
        _ => return Err("constants of different sizes".into()),
    };
    let at = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
    if let (Some(x), Some(y)) = (a.as_known(), b.as_known())
        && matches!((&a.data, &b.data), (ConstData::Int(_), ConstData::Int(_)))
    {
        let at = |v: &[i64], i: usize| if v.len() == 1 { v[0] } else { v[i] };
        let out = (0..n)
            .map(|i| {
                let (p, q) = (at(&x, i), at(&y, i));
                match op {
                    "Add" => Some(p + q),
                    "Sub" => Some(p - q),
                    "Mul" => Some(p * q),
                    _ => p.checked_div(q),
                }
                .map(Int::Known)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or("integer division by zero")?;
        return Ok(Const::ints(dims, out));
    }
    let (x, y) = (
        a.as_f32().ok_or("arithmetic on the batch size")?,
        b.as_f32().ok_or("arithmetic on the batch size")?,
    );
    let out = (0..n)
        .map(|i| {
            let (p, q) = (at(&x, i), at(&y, i));
            match op {
                "Add" => p + q,
                "Sub" => p - q,
                "Mul" => p * q,
                _ => p / q,
            }
        })
        .collect();
    Ok(Const::f32(dims, out))
}

/// Per-sample dims of the graph input and whether its batch is fixed to 1.
fn input_shape(i: &proto::ValueInfoProto) -> Result<(Vec<u32>, bool), OnnxError> {
    use super::proto::tensor_shape_proto::dimension::Value as Dim;
    let name = i.name();
    let model = |s: String| OnnxError::Model(format!("input {name}: {s}"));
    let Some(type_proto::Value::TensorType(t)) = i.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(model("is not a tensor".into()));
    };
    let elem = t.elem_type();
    if elem != tensor_proto::DataType::Float as i32 {
        return Err(model(format!(
            "has element type {}; EALI serves FP32 inputs",
            super::tensor::data_type_name(elem)
        )));
    }
    let shape = t
        .shape
        .as_ref()
        .ok_or_else(|| model("has no shape".into()))?;
    let dims: Vec<Option<&Dim>> = shape.dim.iter().map(|d| d.value.as_ref()).collect();
    let Some((batch, rest)) = dims.split_first() else {
        return Err(model("is a scalar".into()));
    };
    let batch_fixed = match batch {
        Some(Dim::DimValue(1)) => true,
        Some(Dim::DimParam(_)) | None => false,
        Some(Dim::DimValue(b)) => {
            return Err(model(format!(
                "fixes the batch to {b}; export it with a symbolic batch dimension (or 1)"
            )));
        }
    };
    let rest = rest
        .iter()
        .map(|d| match d {
            Some(Dim::DimValue(v)) if *v > 0 => u32::try_from(*v).ok(),
            _ => None,
        })
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| model("has a symbolic or zero size beyond the batch".into()))?;
    // Keeps every per-sample size below in range of the IR's arithmetic.
    let elems = rest
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(u64::from(d)));
    if elems.is_none_or(|e| e > MAX_SAMPLE_ELEMENTS) {
        return Err(model(format!(
            "holds more than {MAX_SAMPLE_ELEMENTS} values per sample"
        )));
    }
    Ok((rest, batch_fixed))
}

/// Largest input sample the importer takes (a 3 × 8192 × 8192 image is about 2e8).
const MAX_SAMPLE_ELEMENTS: u64 = 1 << 30;

#[cfg(test)]
mod window_tests {
    #[test]
    fn same_padding_puts_the_odd_cell_at_the_end_for_upper() {
        // 8 wide, kernel 3, stride 2: out 4, needs (4-1)*2 + 3 - 8 = 1 cell of padding.
        let n = super::NodeProto {
            attribute: vec![
                super::AttributeProto {
                    name: Some("auto_pad".into()),
                    s: Some(b"SAME_UPPER".to_vec()),
                    ..Default::default()
                },
                super::AttributeProto {
                    name: Some("strides".into()),
                    ints: vec![2, 2],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let w = super::Window::read(&n, (3, 3), crate::model::Shape::new(1, 8, 8)).unwrap();
        assert_eq!((w.begin, w.end), ((0, 0), (1, 1)));
        let mut lower = n.clone();
        lower.attribute[0].s = Some(b"SAME_LOWER".to_vec());
        let w = super::Window::read(&lower, (3, 3), crate::model::Shape::new(1, 8, 8)).unwrap();
        assert_eq!((w.begin, w.end), ((1, 1), (0, 0)));
        assert!(super::Window::read(&n, (0, 3), crate::model::Shape::new(1, 8, 8)).is_err());
    }
}
