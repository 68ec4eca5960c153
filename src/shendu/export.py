"""Export to ONNX, for other runtimes (`pip install onnx`; onnxruntime runs the result).

    shendu.export.onnx(model, "model.onnx")        # or: shendu export RUN_DIR model.onnx

The graph is built node by node with the onnx package's helpers, at opset OPSET, in float32: one
input "images" (batch, C, H, W), the batch dynamic, and one output "logits". It computes what the
model computes in eval mode: Dropout is the identity, BatchNorm uses its running statistics. Each
kind of layer maps to ONNX operators (`_EMIT`); a fused layer of `nn.fuse` becomes its two
operators again (Conv then Relu), which ONNX runtimes fuse themselves. An int8 model
(shendu.quantize) is written in ONNX's QDQ form, a binary one with its weights ±α. A model
holding any other kind of layer is refused, naming it.
"""
from pathlib import Path

import numpy as np

from . import kernels, nn
from .errors import ShenduError
from .io import write_atomic
from .models import PadShortcut
from .quantization import BinaryConv2d, BinaryLinear, QuantizedConv2d, QuantizedLinear
from .nn.graph import Concat, Residual, ResidualReLU
from .nn.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, BatchNormReLU2d, Conv2d,
                        ConvReLU2d, Dropout, Flatten, GlobalAvgPool2d, Identity, Linear,
                        MaxPool2d, ReLU, Sigmoid, Tanh)

__all__ = ["onnx", "OPSET"]

OPSET = 17


def onnx(model, path, input_shape=None):
    """Write `model` (on the CPU) as an ONNX file at `path`, atomically; `input_shape` (C, H, W)
    defaults to the model's config. Returns the onnx ModelProto, checked by onnx's checker."""
    try:
        import onnx as onnx_package
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ShenduError("exporting to ONNX needs the onnx package: pip install onnx") from None
    config = getattr(model, "config", None) or {}
    shape = input_shape or config.get("input_shape")
    if shape is None:
        raise ShenduError("give input_shape=(C, H, W): this model has no config that says it")
    if any(kernels.of(a).DEVICE != "cpu" for a in model.state_dict().values()):
        raise ShenduError("export needs the model on the CPU (.to('cpu'))")
    graph = _Graph(helper, numpy_helper)
    graph.nodes.append(helper.make_node("Identity", [graph.emit(model, "images")], ["logits"]))
    proto = helper.make_model(
        helper.make_graph(graph.nodes, config.get("model", type(model).__name__),
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                         ["batch", *shape])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                         ["batch", "classes"])],
                          graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="shendu")
    onnx_package.checker.check_model(proto)
    path = Path(path)
    try:
        write_atomic({path: proto.SerializeToString()})
    except OSError as e:
        raise ShenduError(f"could not write {path}: {e}") from None
    return proto


class _Graph:
    """The nodes and initializers of the graph being built, with unique names."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers, self.count = [], [], 0

    def name(self, what):
        self.count += 1
        return f"{what}_{self.count}"

    def constant(self, array, what, dtype=np.float32):
        name = self.name(what)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def integers(self, values, what):
        return self.constant(values, what, np.int64)

    def op(self, op_type, inputs, **attributes):
        out = self.name(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attributes))
        return out

    def emit(self, module, x):
        """The name of `module`'s output in the graph, its input being `x`."""
        emit = _EMIT.get(type(module))
        if emit is None:
            raise ShenduError(f"cannot export a {type(module).__name__} to ONNX: the layers it "
                              f"knows are {', '.join(sorted(t.__name__ for t in _EMIT))}")
        return emit(self, module, x)


def _conv(g, m, x):
    return _weighted(g, m, x, g.constant(m.weight.data, "weight"), m.weight.shape,
                     None if m.bias is None else m.bias.data, isinstance(m, ConvReLU2d))


def _pool(g, m, x):
    k, p = m.kernel_size, m.padding
    window = {"kernel_shape": [k, k], "strides": [m.stride] * 2, "pads": [p] * 4}
    if isinstance(m, AvgPool2d):  # padded cells count in the mean, as zeros (kernels' docs)
        return g.op("AveragePool", [x], count_include_pad=1, **window)
    return g.op("MaxPool", [x], **window)


def _batch_norm(g, m, x):
    y = g.op("BatchNormalization",
             [x, *(g.constant(a, what) for a, what in
                   ((m.weight.data, "gamma"), (m.bias.data, "beta"),
                    (m.running_mean, "mean"), (m.running_var, "var")))], epsilon=m.eps)
    return g.op("Relu", [y]) if m.relu else y


def _linear(g, m, x):
    return _weighted(g, m, x, g.constant(m.weight.data, "weight"), m.weight.shape,
                     None if m.bias is None else m.bias.data, False)


def _sequential(g, m, x):
    for layer in m:
        x = g.emit(layer, x)
    return x


def _residual(g, m, x):
    body = g.emit(m.body, x)
    y = g.op("Add", [body, x if m.shortcut is None else g.emit(m.shortcut, x)])
    return g.op("Relu", [y]) if isinstance(m, ResidualReLU) else y


def _concat(g, m, x):
    return g.op("Concat", [g.emit(branch, x) for branch in m._modules.values()], axis=1)


def _pad_shortcut(g, m, x):
    """Every stride-th pixel (Slice), then `extra` channels of zeros after the others (Pad)."""
    big = np.iinfo(np.int64).max  # "to the end", as ONNX's Slice reads it
    kept = g.op("Slice", [x, g.integers([0, 0], "starts"), g.integers([big, big], "ends"),
                          g.integers([2, 3], "axes"), g.integers([m.stride] * 2, "steps")])
    return g.op("Pad", [kept, g.integers([0, 0, 0, 0, 0, m.extra, 0, 0], "pads")])


def _quantized(g, m, x):
    """A quantized layer in ONNX's QDQ form: its input rounded to int8 and back
    (QuantizeLinear, DequantizeLinear), its int8 weights dequantized per output channel, then
    the float operator; runtimes fuse the pattern into an integer one (QLinearConv)."""
    scale, zero = g.constant(m.x_scale, "x_scale"), g.constant(0, "x_zero", np.int8)
    x = g.op("DequantizeLinear", [g.op("QuantizeLinear", [x, scale, zero]), scale, zero])
    w_q = m.w_q.transpose(3, 2, 0, 1) if m.w_q.ndim == 4 else m.w_q  # conv: (O, C, KH, KW)
    w = g.op("DequantizeLinear", [g.constant(w_q, "weight", np.int8),
                                  g.constant(m.w_scale, "w_scale"),
                                  g.constant(np.zeros(len(m.w_scale)), "w_zero", np.int8)],
             axis=0)
    return _weighted(g, m, x, w, w_q.shape, m.bias, m.relu)


def _binary(g, m, x):
    """A layer of binary weights: the float operator on its weights ±α."""
    return _weighted(g, m, x, g.constant(m.weights(), "weight"), m.shape, m.bias, m.relu)


def _weighted(g, m, x, w, shape, bias, relu):
    """The operator of layer m, its weights w (a name in the graph) of `shape`: Gemm for a
    matrix (y = x Wᵀ + b), else Conv with m's stride and padding; then Relu if `relu`."""
    inputs = [x, w] + ([] if bias is None else [g.constant(bias, "bias")])
    if len(shape) == 2:
        y = g.op("Gemm", inputs, transB=1)
    else:
        y = g.op("Conv", inputs, kernel_shape=list(shape[2:]), strides=[m.stride] * 2,
                 pads=[m.padding] * 4)
    return g.op("Relu", [y]) if relu else y


def _same(g, m, x):
    return x


_EMIT = {
    nn.Sequential: _sequential, Conv2d: _conv, ConvReLU2d: _conv, Linear: _linear,
    MaxPool2d: _pool, AvgPool2d: _pool, GlobalAvgPool2d: lambda g, m, x: g.op(
        "Flatten", [g.op("GlobalAveragePool", [x])], axis=1),
    BatchNorm2d: _batch_norm, BatchNormReLU2d: _batch_norm, BatchNorm1d: _batch_norm,
    ReLU: lambda g, m, x: g.op("Relu", [x]), Sigmoid: lambda g, m, x: g.op("Sigmoid", [x]),
    Tanh: lambda g, m, x: g.op("Tanh", [x]), Flatten: lambda g, m, x: g.op("Flatten", [x], axis=1),
    Dropout: _same, Identity: _same, Residual: _residual, ResidualReLU: _residual,
    Concat: _concat, PadShortcut: _pad_shortcut,
    QuantizedConv2d: _quantized, QuantizedLinear: _quantized,
    BinaryConv2d: _binary, BinaryLinear: _binary,
}
