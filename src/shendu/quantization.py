"""Fewer bits after training, for inference: int8 weights and products (`quantize`), and one bit
per weight (`binarize`).

    q = shendu.quantize(model, calibration_images)   # a new model, int8
    b = shendu.binarize(model)                        # a new model, binary weights
    shendu.evaluate(q, x_test, t_test); shendu.quantization.model_bytes(q)

Both return a copy of the model in eval mode (the model itself is unchanged) whose convolutions
and fully connected layers are replaced; BatchNorm after a convolution is first folded into it,
as int8 runtimes do. The copies are for inference: their backward passes raise.

int8, post-training quantization: each layer's weights are stored as w_q = round(w / s_w) in
int8, symmetric, one scale per output channel (s_w = max |w| / 127 over the channel's weights);
its input x is rounded to x_q = round(x / s_x) in int8 when it arrives, s_x = max |x| / 127 over
what that layer saw on the calibration images (a few hundred training images). The products are
int8 × int8 summed in int32 (kernels.int8, as int8 hardware computes), and the layer's output is
s_x · s_w · Σ + b in float32: pooling and ReLU between layers run on floats, as in ONNX's QDQ
form of a quantized model.

Binary weights (BinaryConnect's signs, XNOR-Net's scale): each layer stores the sign bits of its
weights, 8 to a byte, and one float32 scale α per output channel, the mean |w| of that channel;
it computes with the weights ±α. Binarized after ordinary training, a network loses most of what
it knew; `train_binary` makes it train with those weights from the start (BinaryConnect).
"""
import copy
import time
from contextlib import contextmanager

import numpy as np

from . import kernels, nn
from .errors import ShenduError
from .kernels import int8
from .nn.layers import (BatchNorm2d, BatchNormReLU2d, Conv2d, ConvReLU2d, Identity, Linear,
                        ReLU, _check_input, _folded, _nchw, _nhwc, binary_scale)
from .nn.module import Module, Parameter, Sequential
from .train import _as_input, input_batches, predict_proba

__all__ = ["quantize", "binarize", "train_binary", "model_bytes", "QuantizedConv2d", "QuantizedLinear",
           "BinaryConv2d", "BinaryLinear"]


def quantize(model, images, batch_size=250):
    """An int8 copy of `model`, its activations' scales calibrated on `images` (uint8 or float
    images, as the model takes them: a few hundred training images)."""
    q = _prepared(model)
    ranges = _calibrate(q, images, batch_size)
    _replace(q, lambda layer: (QuantizedLinear if isinstance(layer, Linear)
                               else QuantizedConv2d)(layer, ranges[id(layer)]))
    return q


def binarize(model):
    """A copy of `model` with binary weights: sign bits and a scale per output channel."""
    b = _prepared(model)
    _replace(b, lambda layer: (BinaryLinear if isinstance(layer, Linear)
                               else BinaryConv2d)(layer))
    return b


# What BinaryConnect's authors report on MNIST: their code, which reproduces the paper's results,
# trains a fully connected network (an MLP) with stochastic binary weights to this test error.
BINARYCONNECT_MNIST = {"network": "MLP", "test_error": 1.18,
                       "cite": "courbariaux2015binaryconnectcode"}


def train_binary(model, binary=True):
    """Make every convolution and fully connected layer of `model` train (and compute) with binary
    weights, BinaryConnect's way (Courbariaux et al. 2015): see nn.layers._Weighted. Train it as
    usual, then `binarize` it to store one bit per weight. Returns the model."""
    for m in model.modules():
        if isinstance(m, (Conv2d, Linear)):
            m.binary = binary
    return model


def model_bytes(model):
    """The bytes a model's weights take as stored: its parameters and buffers, and the int8
    weights, sign bits and scales of quantized and binary layers."""
    return sum(m.stored_bytes() if isinstance(m, _Inference) else
               sum(p.data.nbytes for p in m._params.values())
               + sum(getattr(m, name).nbytes for name in m._buffers)
               for m in model.modules())


# -- preparing a copy ----------------------------------------------------------------------------
def _prepared(model):
    """A copy of the model on the CPU in float32 and eval mode, each BatchNorm after a
    convolution folded into it, and binary-trained layers holding the weights they used."""
    if kernels.of(model.parameters()[0].data) is not kernels.cpu:
        raise ShenduError("quantize a model on the CPU in float32 (.to('cpu', dtype='float32'))")
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, (Conv2d, Linear)) and m.binary:  # trained binary: keep what it used
            m.weight.data, m.binary = m.weights_used(), False
    for seq in [m for m in model.modules() if isinstance(m, Sequential)]:
        layers = list(seq._modules.items())
        for (name, conv), (after, bn) in zip(layers, layers[1:]):
            if type(conv) is Conv2d and type(bn) in (BatchNorm2d, BatchNormReLU2d):
                w, b = _folded(conv.weight.data, None if conv.bias is None else conv.bias.data,
                               bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var,
                               bn.eps)
                conv.weight.data, conv.bias = w, Parameter(b)
                setattr(seq, after, ReLU() if bn.relu else Identity())
    return model.eval()


def _calibrate(model, images, batch_size):
    """{id(layer): the largest |x| each convolution and fully connected layer met as input}."""
    ranges, layers = {}, [m for m in model.modules() if type(m) in (Conv2d, ConvReLU2d, Linear)]

    def record(layer, x, y):
        ranges[id(layer)] = max(ranges.get(id(layer), 0.0), float(np.abs(x).max()))

    with _watching(layers, record), nn.no_grad():
        for _, batch in input_batches(images, batch_size):
            model(batch)
    return ranges


@contextmanager
def _watching(layers, watch):
    """Within, each layer's forward pass also calls watch(layer, x, y) with its input and
    output (an attribute of the instance hides its class's forward, and is removed after)."""
    def watched(layer):
        def forward(x):
            y = type(layer).forward(layer, x)
            watch(layer, x, y)
            return y
        return forward

    for layer in layers:
        object.__setattr__(layer, "forward", watched(layer))
    try:
        yield
    finally:
        for layer in layers:
            object.__delattr__(layer, "forward")


def _replace(model, new):
    """Put new(layer) in place of every convolution and fully connected layer of the model."""
    for parent in list(model.modules()):
        for name, layer in list(parent._modules.items()):
            if type(layer) in (Conv2d, ConvReLU2d, Linear):
                setattr(parent, name, new(layer))


# -- the layers ----------------------------------------------------------------------------------
class _Inference(Module):
    """A layer of fixed low-bit weights (not Parameters): for inference only."""

    def backward(self, dy, input_grad=True):
        raise ShenduError(f"a {type(self).__name__} is for inference: train the float model, "
                          "then quantize or binarize it")

    def _settings(self, layer):
        self.relu = isinstance(layer, ConvReLU2d)
        self.bias = (np.zeros(layer.weight.shape[0], np.float32) if layer.bias is None
                     else layer.bias.data.astype(np.float32))
        if isinstance(layer, Conv2d):
            self.in_channels, self.stride, self.padding = (layer.in_channels, layer.stride,
                                                           layer.padding)
        else:
            self.in_features = layer.in_features


def _to_int8(a, scale):
    return np.clip(np.rint(a / scale), -127, 127).astype(np.int8)


class _Int8(_Inference):
    """Weights stored in int8, one scale per output (s_w = max |w| / 127 over its weights), and
    the scale s_x = max |x| / 127 its input is rounded with."""

    def __init__(self, layer, input_max):
        super().__init__()
        self._settings(layer)
        w = layer.weight.data.astype(np.float32)
        self.w_scale = np.maximum(np.abs(w).reshape(len(w), -1).max(axis=1), 1e-12) / 127
        self.w_q = _to_int8(w, self.w_scale.reshape(-1, *[1] * (w.ndim - 1)))
        self.x_scale = max(input_max, 1e-12) / 127

    def stored_bytes(self):
        return self.w_q.nbytes + self.w_scale.astype(np.float32).nbytes + self.bias.nbytes + 4


class QuantizedConv2d(_Int8):
    """y[n, o] = s_x · s_w[o] · Σ_{c,u,v} x_q · w_q + b[o], x_q and w_q int8, the sum int32
    (kernels.int8.conv); then max(y, 0) if the convolution had its ReLU fused."""

    def __init__(self, conv, input_max):
        super().__init__(conv, input_max)
        self.w_q = np.ascontiguousarray(self.w_q.transpose(2, 3, 1, 0))  # (KH, KW, C, O):
        # the output channels innermost, as the kernel reads them

    def forward(self, x):
        x = _nhwc(_check_input(self, x, 4, self.in_channels))
        acc = int8.conv(_to_int8(x, self.x_scale), self.w_q, self.stride, self.padding)
        y = (acc * (self.x_scale * self.w_scale) + self.bias).astype(np.float32)
        return _nchw(np.maximum(y, 0) if self.relu else y)


class QuantizedLinear(_Int8):
    """y = s_x · s_w · (x_q w_qᵀ) + b, x_q and w_q int8, the products summed in int32."""

    def forward(self, x):
        x = _check_input(self, x, 2, self.in_features)
        acc = _to_int8(x, self.x_scale).astype(np.int32) @ self.w_q.T.astype(np.int32)
        return (acc * (self.x_scale * self.w_scale) + self.bias).astype(np.float32)


class _Binary(_Inference):
    """Weights stored as sign bits, 8 to a byte, and a scale α per output channel."""

    def __init__(self, layer):
        super().__init__()
        self._settings(layer)
        w = layer.weight.data.astype(np.float32)
        self.shape = w.shape
        self.alpha = binary_scale(w).ravel()
        self.bits = np.packbits(w >= 0)

    def weights(self):
        """The weights computed with: ±α, from the stored bits."""
        sign = np.unpackbits(self.bits, count=int(np.prod(self.shape))).reshape(self.shape)
        alpha = self.alpha.reshape(-1, *[1] * (len(self.shape) - 1))
        return np.where(sign == 1, alpha, -alpha).astype(np.float32)

    def stored_bytes(self):
        return self.bits.nbytes + self.alpha.nbytes + self.bias.nbytes


class BinaryConv2d(_Binary):
    """A convolution with the weights ±α[o] (sign bits and a scale per output channel)."""

    def forward(self, x):
        x = _nhwc(_check_input(self, x, 4, self.in_channels))
        return _nchw(kernels.cpu.conv_forward(x, self.weights(), self.bias, self.stride,
                                              self.padding, relu=self.relu))


class BinaryLinear(_Binary):
    """y = x Wᵀ + b with W = ±α[o] (sign bits and a scale per output)."""

    def forward(self, x):
        x = _check_input(self, x, 2, self.in_features)
        return kernels.cpu.matmul(x, self.weights(), transpose_b=True) + self.bias


# -- measuring ------------------------------------------------------------------------------------
PRECISIONS = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "int8": 8,
              "binary": 1}


def at_precision(model, precision, calibration):
    """A copy of the float32 `model` at `precision` (a name of PRECISIONS), int8 calibrated on
    `calibration` images."""
    if precision == "int8":
        return quantize(model, calibration)
    if precision == "binary":
        return binarize(model)
    return copy.deepcopy(model).to(dtype=precision)


def book_float16(model):
    """The book's experiment (half_float_network.py): a copy of the model whose weights are
    rounded to float16 and kept in float64, so that everything is computed in float64; its input
    is to be rounded to float16 too (`book_images`)."""
    rounded = copy.deepcopy(model).double()
    rounded.load_state_dict({k: a.astype(np.float16).astype(np.float64)
                             for k, a in rounded.state_dict().items()})
    return rounded


def book_images(images):
    """Test images as the book's experiment gives them: floats in [0, 1] rounded to float16."""
    return (_as_input(np.asarray(images)).astype(np.float16)).astype(np.float64)


def compare(model, calibration, x_test, t_test, repeats=3):
    """{row: {"bits", "bytes", "accuracy", "disagreements", "seconds"}}: the float32 `model` at
    each precision of PRECISIONS, and the book's float16 experiment, on the test images
    (`disagreements`: predictions other than float32's; `seconds`: to classify them all, the
    median of `repeats` runs in this process)."""
    rows, reference = {}, None
    runs = {name: (at_precision(model, name, calibration), x_test) for name in PRECISIONS}
    runs["float16, the book's way"] = (book_float16(model), book_images(x_test))
    for name, (m, images) in runs.items():
        seconds = []
        for _ in range(repeats):
            began = time.perf_counter()
            predicted = predict_proba(m, images).argmax(axis=1)
            seconds.append(time.perf_counter() - began)
        reference = predicted if name == "float32" else reference
        rows[name] = {"bits": PRECISIONS.get(name, 16), "bytes": model_bytes(m),
                      "accuracy": float(np.mean(predicted == t_test)), "predicted": predicted,
                      "seconds": float(np.median(seconds))}
    for row in rows.values():
        row["disagreements"] = int(np.count_nonzero(row.pop("predicted") != reference))
    return rows


def traffic(model, images, dtypes=("float32", "float16"), repeats=5):
    """{dtype: {"bytes", "seconds"}} for one inference batch of `images` with the float32
    `model` stored in each dtype: the bytes every layer reads and writes (its input, weights and
    output, each once: a count, not a hardware measurement) and the median seconds."""
    rows = {}
    for dtype in dtypes:
        m = at_precision(model, dtype, None)
        x = _as_input(np.asarray(images)).astype(m.parameters()[0].data.dtype)
        moved = [0]

        def count(layer, a, y):
            if y is not a:  # an Identity (a fused ReLU's place) moves nothing
                moved[0] += a.nbytes + y.nbytes + sum(p.data.nbytes
                                                      for p in layer._params.values())

        with _watching([layer for layer in m.modules() if not layer._modules], count), \
                nn.no_grad():
            m(x)
        seconds = []
        for _ in range(repeats):
            began = time.perf_counter()
            with nn.no_grad():
                m(x)
            seconds.append(time.perf_counter() - began)
        rows[dtype] = {"bytes": moved[0], "seconds": float(np.median(seconds))}
    return rows
