"""Small ONNX models for the ONNX importer's tests (test_onnx.py); no tests in here.

Every model is built with onnx.helper from seeded numpy weights and kept narrow (3-4 input
channels, 4-16 channels inside, 16x16 to 24x24 images) so the CPU reference executor and
onnxruntime both run it in milliseconds.

GOOD: name -> Good(build, fixed_batch, external_data). Each must pass
      onnx.checker.check_model(full_check=True), run in onnxruntime, and be served by eali with
      outputs matching onnxruntime's.
BAD:  name -> Bad(build, expect, ...). `expect` lists substrings that eali's error message (stdout
      + stderr of `eali models --onnx` and `eali serve --uri`) must all contain. Apart from the
      truncated and corrupt files, each is a well-formed ONNX file.

`write_all(directory)` (or write_good / write_bad) writes directory/NAME.onnx for every model,
with its NAME.onnx.data beside it for the external-data ones, and returns name -> path.

`python tests/python/onnx_models.py [DIR]` writes everything and checks it with the onnx
checker and onnxruntime (no eali needed).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Old exporters (opset 7 and 9) wrote IR version 3, which requires every initializer to be
# listed in graph.input too; from opset 11 on, the lowest IR version that knows the opset.
LEGACY_IR = 3


def ir_version_for(opset: int) -> int:
    if opset <= 9:
        return LEGACY_IR
    return helper.find_min_ir_version_for([helper.make_opsetid("", opset)])


# Node-name prefixes for automatically named nodes (every node gets a name: the importer's
# errors name the node).
PREFIX = {
    "Conv": "conv",
    "BatchNormalization": "bn",
    "Relu": "relu",
    "Clip": "clip",
    "LeakyRelu": "lrelu",
    "Sigmoid": "sigmoid",
    "HardSigmoid": "hsigmoid",
    "HardSwish": "hswish",
    "MaxPool": "maxpool",
    "AveragePool": "avgpool",
    "GlobalAveragePool": "gap",
    "Gemm": "fc",
    "MatMul": "matmul",
    "Add": "add",
    "Mul": "mul",
    "Concat": "cat",
    "Flatten": "flatten",
    "Reshape": "reshape",
    "Squeeze": "squeeze",
    "Unsqueeze": "unsqueeze",
    "Softmax": "softmax",
    "LRN": "lrn",
    "Dropout": "dropout",
    "Identity": "identity",
    "Constant": "const",
    "Shape": "shape",
    "Gather": "gather",
    "Resize": "resize",
}


class G:
    """A graph under construction: nodes, initializers and one NCHW FP32 input."""

    def __init__(self, opset, input_name, chw, seed, *, fixed_batch=False, typed=False):
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        # typed: initializers in float_data / int64_data instead of raw_data.
        self.typed = typed
        self.input_name = input_name
        self.input_shape = [1 if fixed_batch else "N", *chw]
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.counts: dict[str, int] = {}

    # --- tensors --------------------------------------------------------------------------

    def tensor(self, name, a):
        a = np.asarray(a)
        if not self.typed:
            return numpy_helper.from_array(a, name)
        dtype = {np.float32: TensorProto.FLOAT, np.int64: TensorProto.INT64}[a.dtype.type]
        return helper.make_tensor(name, dtype, a.shape, a.ravel().tolist())

    def init(self, stem, a):
        """An initializer named after `stem`; returns its name."""
        name = self.fresh(stem)
        self.inits.append(self.tensor(name, a))
        return name

    def constant(self, a, name=None):
        """The same tensor from a Constant node instead of an initializer."""
        name = name or self.fresh("const")
        return self.node("Constant", [], name=name, value=self.tensor(name + "_value", a))

    def fresh(self, stem):
        n = self.counts.get(stem, 0)
        self.counts[stem] = n + 1
        return f"{stem}{n}" if n else stem

    def weights(self, *shape, fan_in):
        # He-normal, so activations neither vanish nor saturate the ReLU6/HardSigmoid clamps.
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def small(self, *shape, scale=0.1):
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    # --- nodes ----------------------------------------------------------------------------

    def node(self, op, inputs, name=None, **attrs):
        """Appends one node (named `name`, or after its op); returns its (first) output."""
        name = name or self.fresh(PREFIX.get(op, op.lower()))
        out = f"{name}_output_0"
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def conv(self, x, cin, cout, k, *, stride=1, pads=None, auto_pad=None, group=1,
             dilation=1, bias=True, name=None):
        name = name or self.fresh("conv")
        w = self.init(name + ".weight", self.weights(cout, cin // group, k, k,
                                                     fan_in=cin // group * k * k))
        inputs = [x, w]
        if bias:
            inputs.append(self.init(name + ".bias", self.small(cout)))
        if pads is not None and len(pads) == 1:
            pads = pads * 4
        return self.node(
            "Conv", inputs, name=name,
            kernel_shape=[k, k],
            strides=[stride, stride] if stride != 1 else None,
            pads=pads,
            auto_pad=auto_pad,
            group=group if group != 1 else None,
            dilations=[dilation, dilation] if dilation != 1 else None,
        )

    def bn(self, x, c, *, name=None, epsilon=None):
        name = name or self.fresh("bn")
        scale = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        bias = self.small(c)
        mean = self.small(c)
        var = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        ins = [self.init(f"{name}.{p}", a) for p, a in
               (("weight", scale), ("bias", bias), ("running_mean", mean), ("running_var", var))]
        return self.node("BatchNormalization", [x, *ins], name=name, epsilon=epsilon)

    def relu(self, x, name=None):
        return self.node("Relu", [x], name=name)

    def clip(self, x, lo, hi, *, from_constant_nodes=False, name=None):
        """Clip to [lo, hi]: attributes before opset 11, scalar inputs from it."""
        if self.opset < 11:
            return self.node("Clip", [x], name=name, min=float(lo), max=float(hi))
        make = self.constant if from_constant_nodes else (lambda a: self.init("clip_bound", a))
        bounds = [make(np.array(v, np.float32)) for v in (lo, hi)]
        return self.node("Clip", [x, *bounds], name=name)

    def relu6(self, x, **kw):
        return self.clip(x, 0.0, 6.0, **kw)

    def gemm(self, x, k, n, *, trans_b=True, alpha=None, beta=None, c_shape="vector", name=None):
        """Gemm with weight [n, k] (transB=1) or [k, n]; C of shape [n], [1, n] or none."""
        name = name or self.fresh("fc")
        w = self.weights(n, k, fan_in=k) if trans_b else self.weights(k, n, fan_in=k)
        inputs = [x, self.init(name + ".weight", w)]
        if c_shape == "vector":
            inputs.append(self.init(name + ".bias", self.small(n)))
        elif c_shape == "row":
            inputs.append(self.init(name + ".bias", self.small(1, n)))
        return self.node("Gemm", inputs, name=name, transB=1 if trans_b else None,
                         alpha=alpha, beta=beta)

    def squeeze_hw(self, x, op="Squeeze", name=None):
        """[N,C,1,1] <-> [N,C]: axes attribute before opset 13, input from 13."""
        if self.opset < 13:
            return self.node(op, [x], name=name, axes=[2, 3])
        return self.node(op, [x, self.init("hw_axes", np.array([2, 3], np.int64))], name=name)

    def torch_view_flatten(self, x, prefix):
        """x.view(x.size(0), -1) as torch exports it: Shape -> Gather(0) -> Unsqueeze ->
        Concat(with [-1]) -> Reshape, the constants from Constant nodes."""
        shape = self.node("Shape", [x], name=f"{prefix}/Shape")
        zero = self.constant(np.array(0, np.int64), name=f"{prefix}/Constant")
        n = self.node("Gather", [shape, zero], name=f"{prefix}/Gather", axis=0)
        if self.opset < 13:
            n1 = self.node("Unsqueeze", [n], name=f"{prefix}/Unsqueeze", axes=[0])
        else:
            axes = self.constant(np.array([0], np.int64), name=f"{prefix}/Constant_1")
            n1 = self.node("Unsqueeze", [n, axes], name=f"{prefix}/Unsqueeze")
        minus1 = self.constant(np.array([-1], np.int64), name=f"{prefix}/Constant_2")
        target = self.node("Concat", [n1, minus1], name=f"{prefix}/Concat", axis=0)
        return self.node("Reshape", [x, target], name=f"{prefix}/Reshape")

    # --- the model ------------------------------------------------------------------------

    def model(self, last, output_name, *, ir_version=None):
        """The ModelProto whose single output is `last`, renamed `output_name`."""
        for n in self.nodes:
            n.output[:] = [output_name if o == last else o for o in n.output]
            n.input[:] = [output_name if i == last else i for i in n.input]
        inputs = [helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT,
                                                self.input_shape)]
        ir = ir_version or ir_version_for(self.opset)
        if ir < 4:
            # IR 3: initializers are graph inputs too (after the data input, as exporters did).
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in self.inits]
        out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, "main", inputs, [out], initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                              ir_version=ir, producer_name="eali-tests")
        declare_output_shape(m, self.input_shape[0])
        return m


def declare_output_shape(m, batch):
    """Gives graph.output its full shape ([N, ...] or [1, ...]), as exporters do: from onnx shape
    inference, or where that loses track (the Shape -> Reshape chain in opset 11), from an
    onnxruntime run at batch 1. The intermediate value_info is dropped: the importer infers its
    own shapes."""
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    known = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(known) < 1 or None in known[1:]:
        in_name, in_dims, out_name = io_of(m)
        s = session(m.SerializeToString())
        known = list(s.run([out_name], {in_name: sample([1, *in_dims[1:]], 0)})[0].shape)
    shape = [batch, *known[1:]]
    m.graph.output[0].CopyFrom(
        helper.make_tensor_value_info(m.graph.output[0].name, TensorProto.FLOAT, shape))


# ======================================================================================
# GOOD models
# ======================================================================================


def conv_pads():
    """Explicit pads: symmetric, asymmetric [0,0,1,1] with stride 2, dilation 2, pads on H only
    (a non-square output); with and without bias."""
    g = G(11, "images", [3, 16, 16], seed=101)
    x = g.relu(g.conv(g.input_name, 3, 8, 3, pads=[1]))
    x = g.relu(g.conv(x, 8, 8, 3, stride=2, pads=[0, 0, 1, 1], bias=False))  # 16 -> 8
    x = g.relu(g.conv(x, 8, 8, 3, dilation=2, pads=[2]))
    x = g.conv(x, 8, 8, 3, pads=[1, 0, 1, 0])  # [N, 8, 8, 6]
    return g.model(x, "features")


def conv_autopad():
    """auto_pad SAME_UPPER / SAME_LOWER with stride 2 (pads 0+1 / 1+0), SAME_UPPER with an even
    kernel, VALID; LeakyRelu. The batch is fixed to 1."""
    g = G(13, "x", [3, 24, 24], seed=102, fixed_batch=True)
    x = g.conv(g.input_name, 3, 8, 3, stride=2, auto_pad="SAME_UPPER")  # 24 -> 12
    x = g.node("LeakyRelu", [x], alpha=0.1)
    x = g.conv(x, 8, 8, 3, stride=2, auto_pad="SAME_LOWER", bias=False)  # 12 -> 6
    x = g.node("LeakyRelu", [x])  # default alpha 0.01
    x = g.conv(x, 8, 8, 2, auto_pad="SAME_UPPER")  # 6 -> 6, pad 0 before, 1 after
    x = g.node("LeakyRelu", [x], alpha=0.2)
    x = g.conv(x, 8, 4, 3, auto_pad="VALID")  # 6 -> 4
    return g.model(x, "y")


def conv_groups():
    """Grouped (group 2 and 4) and depthwise convolutions, dilation 2; HardSwish (opset 14+),
    Sigmoid, HardSigmoid with torch's alpha 1/6."""
    g = G(17, "pixel_values", [4, 16, 16], seed=103)
    x = g.conv(g.input_name, 4, 8, 3, pads=[1], group=2)
    x = g.node("HardSwish", [g.bn(x, 8)])
    x = g.conv(x, 8, 8, 3, pads=[2], group=8, dilation=2, bias=False, name="depthwise")
    x = g.node("Sigmoid", [g.bn(x, 8, epsilon=1e-3)])
    x = g.conv(x, 8, 16, 1)
    x = g.node("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)
    x = g.conv(x, 16, 8, 3, stride=2, pads=[1], group=4)  # 16 -> 8
    return g.model(x, "out")


def activations_v7():
    """Opset 7, IR 3, initializers in graph.input and as float_data: Clip with min/max
    attributes (ReLU6 and -0.5..0.5), LeakyRelu, Sigmoid, HardSigmoid (defaults), Mul by a
    [C,1,1] constant, Add of a [1] scalar, Dropout(ratio), Identity."""
    g = G(7, "data", [3, 16, 16], seed=104, typed=True)
    x = g.relu6(g.bn(g.conv(g.input_name, 3, 8, 3, pads=[1]), 8))
    x = g.clip(g.conv(x, 8, 8, 3, pads=[1]), -0.5, 0.5)
    x = g.node("Mul", [x, g.init("channel_scale", g.rng.uniform(0.5, 2.0, (8, 1, 1))
                                 .astype(np.float32))])
    x = g.node("Add", [x, g.init("shift", np.array([0.25], np.float32))])
    x = g.node("LeakyRelu", [x], alpha=0.1)
    x = g.node("Sigmoid", [g.conv(x, 8, 8, 1)])
    x = g.node("HardSigmoid", [g.conv(x, 8, 8, 3, pads=[1])])
    x = g.node("Dropout", [x], ratio=0.3)
    x = g.node("Identity", [x])
    return g.model(x, "prob_map")


def pools():
    """MaxPool / AveragePool: strides, symmetric and asymmetric pads, dilations (MaxPool),
    count_include_pad 0 and 1, ceil_mode on both (never with a window that reaches past the
    padding while counting pads, where implementations disagree)."""
    g = G(11, "input.1", [3, 24, 24], seed=105)
    x = g.conv(g.input_name, 3, 8, 3, pads=[1])
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 12
    x = g.node("AveragePool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
               count_include_pad=0)  # 12
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], pads=[2, 2, 2, 2], dilations=[2, 2])  # 12
    x = g.node("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)  # 6
    x = g.node("AveragePool", [x], kernel_shape=[3, 3], pads=[0, 0, 1, 1],
               count_include_pad=1)  # 5
    x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)  # 3
    return g.model(x, "pooled")


def gemm_head():
    """Opset 9, IR 3: GlobalAveragePool -> Flatten -> Gemm(transB=1, C [n]) -> Relu ->
    Gemm(transB=0, alpha 0.5, beta 2, C [1, n]) -> Softmax (opset < 13: default axis 1, 2-D)."""
    g = G(9, "input", [3, 16, 16], seed=106)
    x = g.relu(g.conv(g.input_name, 3, 16, 3, stride=2, pads=[1]))
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)
    x = g.relu(g.gemm(x, 16, 12))
    x = g.gemm(x, 12, 10, trans_b=False, alpha=0.5, beta=2.0, c_shape="row")
    return g.model(g.node("Softmax", [x]), "probs")


def gemm_variants():
    """Opset 13: Gemm without C (alpha 1.5), Gemm transB=0 with C [1, n] and beta 0.5;
    Softmax axis=-1 on a 2-D tensor."""
    g = G(13, "input.1", [3, 16, 16], seed=107)
    x = g.relu(g.conv(g.input_name, 3, 8, 3, stride=2, pads=[1]))
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    x = g.relu(g.gemm(x, 8, 12, alpha=1.5, c_shape=None))
    x = g.gemm(x, 12, 10, trans_b=False, beta=0.5, c_shape="row")
    return g.model(g.node("Softmax", [x], axis=-1), "output")


def matmul():
    """Opset 17: Squeeze (axes input) [N,C,1,1] -> [N,C], MatMul + Add (a linear layer),
    MatMul alone, Softmax axis=1 on 2-D, Unsqueeze (axes input) back to [N,K,1,1]."""
    g = G(17, "images", [3, 16, 16], seed=108)
    x = g.relu(g.conv(g.input_name, 3, 8, 3, pads=[1]))
    x = g.squeeze_hw(g.node("GlobalAveragePool", [x]))
    x = g.node("MatMul", [x, g.init("fc1.weight", g.weights(8, 16, fan_in=8))])
    x = g.relu(g.node("Add", [x, g.init("fc1.bias", g.small(16))]))
    x = g.node("MatMul", [x, g.init("fc2.weight", g.weights(16, 10, fan_in=16))])
    x = g.node("Softmax", [x], axis=1)
    return g.model(g.squeeze_hw(x, "Unsqueeze"), "logits")


def squeeze_v11():
    """Opset 11: Squeeze / Unsqueeze with the axes attribute, Mul by a [1,C,1,1] constant,
    Softmax (opset < 13, default axis 1) on [N,C,1,1]."""
    g = G(11, "image", [3, 16, 16], seed=109)
    x = g.relu(g.conv(g.input_name, 3, 8, 3, pads=[1]))
    x = g.squeeze_hw(g.node("GlobalAveragePool", [x]))
    x = g.squeeze_hw(g.gemm(x, 8, 8), "Unsqueeze")
    x = g.node("Mul", [x, g.init("temperature", g.rng.uniform(1.0, 3.0, (1, 8, 1, 1))
                                 .astype(np.float32))])
    return g.model(g.node("Softmax", [x]), "scores")


def torch_view_v11():
    """Opset 11: x.view(x.size(0), -1) as torch exports it (Unsqueeze with axes attribute),
    then Gemm."""
    g = G(11, "input.1", [3, 16, 16], seed=110)
    x = g.relu(g.conv(g.input_name, 3, 8, 3, stride=2, pads=[1]))  # 8x8
    x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])  # 4x4
    x = g.torch_view_flatten(x, "/view")
    return g.model(g.gemm(x, 8 * 4 * 4, 10), "logits")


def torch_view_v13():
    """Opset 13: the same view chain with Unsqueeze's axes as an input; Softmax axis=-1."""
    g = G(13, "input", [4, 16, 16], seed=111)
    x = g.relu(g.bn(g.conv(g.input_name, 4, 8, 3, stride=2, pads=[1]), 8))  # 8x8
    x = g.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])  # 4x4
    x = g.torch_view_flatten(x, "/classifier/view")
    x = g.gemm(x, 8 * 4 * 4, 10, name="/classifier/fc/Gemm")
    return g.model(g.node("Softmax", [x], axis=-1), "output")


def reshape_const():
    """Opset 21: Reshape to [-1, C*H*W] with the shape from a Constant node, MatMul + Add,
    Reshape [0, -1] from an initializer, Softmax axis=-1."""
    g = G(21, "x", [4, 12, 12], seed=112)
    x = g.relu(g.conv(g.input_name, 4, 8, 3, stride=2, pads=[1]))  # [N, 8, 6, 6]
    x = g.node("Reshape", [x, g.constant(np.array([-1, 8 * 6 * 6], np.int64))])
    x = g.node("MatMul", [x, g.init("fc.weight", g.weights(288, 16, fan_in=288))])
    x = g.relu(g.node("Add", [g.init("fc.bias", g.small(16)), x]))  # bias first: commutes
    x = g.node("Reshape", [x, g.init("flat", np.array([0, -1], np.int64))])
    return g.model(g.node("Softmax", [x], axis=-1), "probabilities")


def per_channel():
    """Opset 13: Mul by a [C,1,1] initializer, Add of a [1,C,1,1] Constant node, Mul by a
    rank-0 scalar, Add of a [1] Constant, Clip -0.5..0.5 with min/max from Constant nodes."""
    g = G(13, "images", [3, 16, 16], seed=113)
    x = g.conv(g.input_name, 3, 8, 3, pads=[1])
    x = g.node("Mul", [x, g.init("scale", g.rng.uniform(0.5, 2.0, (8, 1, 1)).astype(np.float32))])
    x = g.relu(g.node("Add", [x, g.constant(g.small(1, 8, 1, 1, scale=0.3))]))
    x = g.conv(x, 8, 8, 3, pads=[1])
    x = g.node("Mul", [x, g.init("half", np.array(0.5, np.float32))])
    x = g.node("Add", [x, g.constant(np.array([0.1], np.float32))])
    x = g.clip(x, -0.5, 0.5, from_constant_nodes=True)
    return g.model(g.conv(x, 8, 4, 1), "y")


def alexnet_mini():
    """Opset 9, IR 3, batch fixed to 1: AlexNet's shape with LRN (size 5 and 3, alpha, beta and
    bias not default and large enough to matter), MaxPool, Flatten, Dropout, Gemm."""
    g = G(9, "input.1", [3, 24, 24], seed=114, fixed_batch=True)
    x = g.relu(g.conv(g.input_name, 3, 8, 5, stride=2, pads=[2]))  # 12
    x = g.node("LRN", [x], size=5, alpha=0.3, beta=0.75, bias=2.0)
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])  # 5
    x = g.relu(g.conv(x, 8, 16, 3, pads=[1]))
    x = g.node("LRN", [x], size=3, alpha=0.2, beta=0.5, bias=1.5)
    x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])  # 2
    x = g.node("Dropout", [g.node("Flatten", [x])], ratio=0.5)
    x = g.node("Dropout", [g.relu(g.gemm(x, 16 * 2 * 2, 16))])
    return g.model(g.gemm(x, 16, 10), "logits")


def residual_identity():
    """Opset 21: ResNet basic block with an identity shortcut."""
    g = G(21, "input", [3, 16, 16], seed=115)
    stem = g.relu(g.bn(g.conv(g.input_name, 3, 8, 3, pads=[1], bias=False, name="conv1"), 8,
                       name="bn1"), name="relu")
    x = g.conv(stem, 8, 8, 3, pads=[1], bias=False, name="layer1.0.conv1")
    x = g.relu(g.bn(x, 8, name="layer1.0.bn1"), name="layer1.0.relu")
    x = g.conv(x, 8, 8, 3, pads=[1], bias=False, name="layer1.0.conv2")
    x = g.bn(x, 8, name="layer1.0.bn2")
    x = g.node("Add", [x, stem], name="layer1.0.add")
    return g.model(g.relu(x, name="layer1.0.relu_1"), "features")


def residual_projection():
    """Opset 17, saved with external data: ResNet basic block with stride 2 and a 1x1
    convolution + BatchNormalization projection shortcut."""
    g = G(17, "images", [3, 16, 16], seed=116)
    stem = g.relu(g.bn(g.conv(g.input_name, 3, 8, 3, pads=[1], bias=False), 8))
    x = g.relu(g.bn(g.conv(stem, 8, 16, 3, stride=2, pads=[1], bias=False), 16))
    x = g.bn(g.conv(x, 16, 16, 3, pads=[1], bias=False), 16)
    short = g.bn(g.conv(stem, 8, 16, 1, stride=2, bias=False, name="downsample.0"), 16,
                 name="downsample.1")
    return g.model(g.relu(g.node("Add", [short, x])), "out")


def inverted_residual():
    """Opset 11: MobileNetV2 inverted residual: 1x1 expand, ReLU6 as Clip(0, 6) with
    min/max inputs, 3x3 depthwise, 1x1 project, Add of the block input."""
    g = G(11, "input", [3, 16, 16], seed=117)
    stem = g.relu6(g.bn(g.conv(g.input_name, 3, 8, 3, pads=[1], bias=False), 8))
    x = g.relu6(g.bn(g.conv(stem, 8, 16, 1, bias=False), 16))
    x = g.relu6(g.bn(g.conv(x, 16, 16, 3, pads=[1], group=16, bias=False), 16))
    x = g.bn(g.conv(x, 16, 8, 1, bias=False), 8)
    return g.model(g.node("Add", [stem, x]), "output")


def inception():
    """Opset 21, torch-2-style node names: four branches (1x1; 1x1 -> 3x3; 3x3 AveragePool
    stride 1 pad 1 count_include_pad=1 -> 1x1; 3x3 MaxPool -> 1x1), Concat axis=1, Identity."""
    g = G(21, "data", [3, 16, 16], seed=118)
    stem = g.relu(g.conv(g.input_name, 3, 8, 3, pads=[1], name="/stem/Conv"), name="/stem/Relu")

    def basic(x, cin, cout, k, scope):
        x = g.conv(x, cin, cout, k, pads=[k // 2] if k > 1 else None, name=f"{scope}/Conv")
        return g.relu(x, name=f"{scope}/Relu")

    b1 = basic(stem, 8, 4, 1, "/mixed/branch1x1")
    b2 = basic(basic(stem, 8, 4, 1, "/mixed/branch3x3_1"), 4, 6, 3, "/mixed/branch3x3_2")
    p3 = g.node("AveragePool", [stem], name="/mixed/AveragePool", kernel_shape=[3, 3],
                strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1)
    b3 = basic(p3, 8, 4, 1, "/mixed/branch_pool")
    p4 = g.node("MaxPool", [stem], name="/mixed/MaxPool", kernel_shape=[3, 3], strides=[1, 1],
                pads=[1, 1, 1, 1])
    b4 = basic(p4, 8, 2, 1, "/mixed/branch_max")
    x = g.node("Concat", [b1, b2, b3, b4], name="/mixed/Concat", axis=1)  # 16 channels
    return g.model(g.node("Identity", [x], name="/mixed/Identity"), "mixed")


def dense_block():
    """Opset 13: DenseNet block, three layers (BN -> Relu -> 3x3 conv, growth 4) each
    concatenated to its input (8 -> 20 channels), transition (BN, Relu, 1x1, AveragePool 2),
    GlobalAveragePool, Reshape [0, -1], Gemm."""
    g = G(13, "x", [3, 16, 16], seed=119)
    x = g.conv(g.input_name, 3, 8, 3, pads=[1], bias=False, name="features.conv0")
    c = 8
    for i in range(1, 4):
        y = g.relu(g.bn(x, c, name=f"denselayer{i}.norm"), name=f"denselayer{i}.relu")
        y = g.conv(y, c, 4, 3, pads=[1], bias=False, name=f"denselayer{i}.conv")
        x = g.node("Concat", [x, y], name=f"denselayer{i}.cat", axis=1)
        c += 4
    x = g.relu(g.bn(x, c, name="transition.norm"), name="transition.relu")
    x = g.conv(x, c, 8, 1, bias=False, name="transition.conv")
    x = g.node("AveragePool", [x], name="transition.pool", kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Reshape", [x, g.init("flat", np.array([0, -1], np.int64))])
    return g.model(g.gemm(x, 8, 10, name="classifier"), "logits")


def classifier_head():
    """Opset 21: a small classifier: conv stem, GlobalAveragePool -> Flatten -> Dropout ->
    Gemm -> Softmax axis=1 (2-D)."""
    g = G(21, "input", [3, 24, 24], seed=120)
    x = g.relu(g.bn(g.conv(g.input_name, 3, 16, 3, stride=2, pads=[1], bias=False), 16))
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)
    x = g.gemm(g.node("Dropout", [x]), 16, 10)
    return g.model(g.node("Softmax", [x], axis=1), "probs")


@dataclass(frozen=True)
class Good:
    build: Callable[[], onnx.ModelProto]
    fixed_batch: bool = False  # input's N is 1, not the symbolic "N"
    external_data: bool = False  # saved with its tensors in NAME.onnx.data


GOOD: dict[str, Good] = {
    "conv-pads": Good(conv_pads),
    "conv-autopad": Good(conv_autopad, fixed_batch=True),
    "conv-groups": Good(conv_groups),
    "activations-v7": Good(activations_v7),
    "pools": Good(pools),
    "gemm-head": Good(gemm_head),
    "gemm-variants": Good(gemm_variants),
    "matmul": Good(matmul),
    "squeeze-v11": Good(squeeze_v11),
    "torch-view-v11": Good(torch_view_v11),
    "torch-view-v13": Good(torch_view_v13),
    "reshape-const": Good(reshape_const),
    "per-channel": Good(per_channel),
    "alexnet-mini": Good(alexnet_mini, fixed_batch=True),
    "residual-identity": Good(residual_identity),
    "residual-projection": Good(residual_projection, external_data=True),
    "inverted-residual": Good(inverted_residual),
    "inception": Good(inception),
    "dense-block": Good(dense_block),
    "classifier-head": Good(classifier_head),
}

# ======================================================================================
# BAD models
# ======================================================================================


def unsupported_resize():
    """A Resize (2x nearest upsampling) named "up1": an operator the importer does not know."""
    g = G(13, "images", [3, 16, 16], seed=201)
    x = g.relu(g.conv(g.input_name, 3, 8, 3, pads=[1]))
    scales = g.init("scales", np.array([1, 1, 2, 2], np.float32))
    x = g.node("Resize", [x, "", scales], name="up1", mode="nearest")
    return g.model(g.conv(x, 8, 4, 3, pads=[1]), "y")


def reshape_rank3():
    """A Reshape named "to3d" of [N,C,H,W] to [N, C, H*W]: rank 3, which the IR cannot hold."""
    g = G(13, "images", [3, 16, 16], seed=202)
    x = g.relu(g.conv(g.input_name, 3, 8, 3, stride=2, pads=[1]))  # [N, 8, 8, 8]
    x = g.node("Reshape", [x, g.init("shape3", np.array([0, 8, 64], np.int64))], name="to3d")
    return g.model(g.node("Softmax", [x], axis=-1), "attention")


def with_opset(opset):
    """A Conv -> Relu model whose opset_import says `opset` (IR version clamped to what 7-21
    would use)."""

    def build():
        g = G(opset, "images", [3, 16, 16], seed=203)
        x = g.relu(g.conv(g.input_name, 3, 8, 3, pads=[1]))
        return g.model(x, "y", ir_version=ir_version_for(min(max(opset, 7), 21)))

    return build


def truncated():
    """The first half of a valid model's bytes (cut inside the graph field)."""
    data = residual_identity().SerializeToString()
    return data[: len(data) // 2]


def corrupt():
    """4 KiB of seeded random bytes."""
    return np.random.default_rng(204).integers(0, 256, 4096, dtype=np.uint8).tobytes()


@dataclass(frozen=True)
class Bad:
    build: Callable[[], onnx.ModelProto | bytes]
    expect: list[str]  # substrings eali's error output must all contain
    external_data: bool = False  # saved with external data ...
    drop_data: bool = False  # ... whose file is then deleted
    # What onnx / onnxruntime make of it: "ok" (passes the checker and runs), "load" (neither
    # onnx.load nor onnxruntime takes it), "ort" (loads, but onnxruntime refuses it).
    onnx_tools: str = "ok"


BAD: dict[str, Bad] = {
    "unsupported-resize": Bad(unsupported_resize, ["up1", "Resize"]),
    "reshape-rank3": Bad(reshape_rank3, ["to3d", "Reshape"]),
    "missing-external-data": Bad(residual_identity, ["missing-external-data.onnx.data"],
                                 external_data=True, drop_data=True, onnx_tools="load"),
    "truncated": Bad(truncated, ["ONNX"], onnx_tools="load"),
    "corrupt": Bad(corrupt, ["ONNX"], onnx_tools="load"),
    # Both are valid ONNX (onnxruntime runs them); eali reads opsets 7-21 only.
    "opset-6": Bad(with_opset(6), ["opset"]),
    "opset-22": Bad(with_opset(22), ["opset"]),
}

# ======================================================================================
# Writing and checking
# ======================================================================================


def save(m_or_bytes, path, *, external_data=False):
    if isinstance(m_or_bytes, bytes):
        with open(path, "wb") as f:
            f.write(m_or_bytes)
        return
    if external_data:
        location = os.path.basename(path) + ".data"
        data = os.path.join(os.path.dirname(path), location)
        if os.path.exists(data):
            os.remove(data)  # onnx appends to an existing data file
        onnx.save_model(m_or_bytes, path, save_as_external_data=True,
                        all_tensors_to_one_file=True, location=location, size_threshold=0)
    else:
        onnx.save_model(m_or_bytes, path)


def write_good(directory) -> dict[str, str]:
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for name, spec in GOOD.items():
        paths[name] = os.path.join(directory, f"{name}.onnx")
        save(spec.build(), paths[name], external_data=spec.external_data)
    return paths


def write_bad(directory) -> dict[str, str]:
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for name, spec in BAD.items():
        paths[name] = os.path.join(directory, f"{name}.onnx")
        save(spec.build(), paths[name], external_data=spec.external_data)
        if spec.drop_data:
            os.remove(paths[name] + ".data")
    return paths


def write_all(directory) -> dict[str, str]:
    """Writes every GOOD and BAD model as directory/NAME.onnx; returns name -> path."""
    assert not set(GOOD) & set(BAD)
    return {**write_good(directory), **write_bad(directory)}


def io_of(m: onnx.ModelProto):
    """(input name, input shape with -1 for a symbolic N, output name) of a model."""
    inits = {t.name for t in m.graph.initializer}
    (inp,) = [i for i in m.graph.input if i.name not in inits]
    dims = [d.dim_value if d.HasField("dim_value") else -1
            for d in inp.type.tensor_type.shape.dim]
    (out,) = m.graph.output
    return inp.name, dims, out.name


def sample(shape, seed):
    """The seeded input both eali and onnxruntime get."""
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # IR 3 models warn that their initializers are also inputs
    # Node by node, no fusions: the reference should be the plain ONNX semantics.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def check_good(path, fixed_batch):
    """The checks every GOOD model passes without eali; returns the output shape at batch 1."""
    onnx.checker.check_model(path, full_check=True)
    m = onnx.load(path)
    in_name, dims, out_name = io_of(m)
    assert len(dims) == 4 and all(d > 0 for d in dims[1:]), dims
    assert dims[0] == (1 if fixed_batch else -1), dims
    (inp,) = [i for i in m.graph.input if i.name == in_name]
    assert inp.type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(n.name for n in m.graph.node), "every node needs a name"
    s = session(path)
    outs = []
    for batch in (1,) if fixed_batch else (1, 3):
        x = sample([batch, *dims[1:]], seed=batch)
        (y,) = s.run([out_name], {in_name: x})
        assert y.shape[0] == batch and np.isfinite(y).all()
        outs.append(y)
    y = outs[-1]
    # Not trivially constant: the output varies within a sample and between inputs.
    assert y.std() > 1e-3 * max(np.abs(y).max(), 1e-12), "output nearly constant"
    other = s.run([out_name], {in_name: sample([1, *dims[1:]], seed=99)})[0]
    assert np.abs(other - outs[0]).max() > 1e-3 * np.abs(outs[0]).max(), "input-independent"
    return outs[0].shape


def check_bad(path, spec: Bad):
    """Each BAD model fails (or not) in the onnx tools exactly as `spec.onnx_tools` says."""

    def fails(f):
        try:
            f()
        except Exception:
            return True
        return False

    load_fails = fails(lambda: onnx.load(path))
    ort_fails = fails(lambda: session(path))
    if spec.onnx_tools == "load":
        assert load_fails and ort_fails, f"{path}: onnx.load or onnxruntime accepted it"
    elif spec.onnx_tools == "ort":
        assert not load_fails and ort_fails, (path, load_fails, ort_fails)
    else:
        assert not load_fails and not ort_fails, (path, load_fails, ort_fails)
        onnx.checker.check_model(path, full_check=True)


def main(directory):
    paths = write_all(directory)
    for name, spec in GOOD.items():
        m = onnx.load(paths[name])
        shape = check_good(paths[name], spec.fixed_batch)
        ops = sorted({n.op_type for n in m.graph.node})
        print(f"good {name:22} opset {m.opset_import[0].version:2} ir {m.ir_version:2} "
              f"{io_of(m)} -> {list(shape)}  {' '.join(ops)}")
    for name, spec in BAD.items():
        check_bad(paths[name], spec)
        print(f"bad  {name:22} expect {spec.expect}  (onnx tools: {spec.onnx_tools})")
    print(f"wrote {len(paths)} models to {directory}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="eali-onnx-"))
