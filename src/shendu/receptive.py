"""Receptive fields: which input pixels a unit of a feature map can see, and what it costs.

The arithmetic follows Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural
Networks", Distill 2019. For layers l = 1..L with kernel k_l (dilated: α(k−1)+1), stride s_l and
padding p_l, a unit of the last map sees

    r = Σ_l (k_l − 1) ∏_{i<l} s_i + 1        pixels per axis (the field size),
    j = ∏_l s_l                              pixels between neighbouring units (effective stride),
    P = Σ_l p_l ∏_{i<l} s_i                  (effective padding),

so unit u spans input rows u·j − P … u·j − P + r − 1. Computed layer by layer: each layer widens
the field by (k − 1) steps of the current effective stride.

    >>> rows = fields([Layer("conv", 3), Layer("conv", 3)])
    >>> rows[-1].size, sum(r.kernel_weights for r in rows)  # 5×5 seen with 18 weights, not 25
    (5, 18)

`effective_field` measures instead of computing: the gradient of one unit with respect to the
input image, which is zero outside the field and usually concentrated near its centre.
"""
from dataclasses import dataclass
from functools import lru_cache, reduce
from typing import NamedTuple

import numpy as np

from . import models
from .errors import ShenduError
from .nn import (AvgPool2d, BatchNorm1d, BatchNorm2d, Concat, Conv2d, Dropout, Flatten,
                 GlobalAvgPool2d, Identity, Linear, MaxPool2d, ReLU, Residual, Sequential, Sigmoid,
                 Tanh, enable_grad)

__all__ = ["Layer", "LayerField", "fields", "grow", "layer_of", "stack_of", "presets", "preset",
           "Preset", "param_comparison", "feature_layers", "effective_field", "EffectiveField"]

KINDS = ("conv", "maxpool", "avgpool")
# Layers that act on each value (or each channel) alone: they leave the field as it is.
_ELEMENTWISE = (ReLU, Sigmoid, Tanh, Dropout, BatchNorm1d, BatchNorm2d, Identity)
# Layers after which a unit sees the whole image: where a stack of feature maps ends.
_ENDS = (Flatten, GlobalAvgPool2d, Linear)


def _count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ShenduError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Layer:
    """One convolution or pooling layer, as far as its field and cost are concerned.
    `out_channels=None` keeps the input's channels (pooling always does); `in_channels` is only
    needed where the layer's input is not the previous layer's output (after a Concat)."""

    kind: str
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    out_channels: int | None = None
    in_channels: int | None = None
    bias: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ShenduError(f"layer kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        for name, minimum in (("kernel_size", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
            object.__setattr__(self, name, _count(name, getattr(self, name), minimum))
        for name in ("out_channels", "in_channels"):
            if getattr(self, name) is not None:
                if self.kind != "conv":
                    raise ShenduError(f"a {self.kind} layer keeps its channels: it takes no {name}")
                object.__setattr__(self, name, _count(name, getattr(self, name), 1))
        if self.padding >= self.span:
            raise ShenduError(f"{self}: padding {self.padding} is not smaller than the "
                              f"{self.span}×{self.span} window, so the border units would see "
                              "nothing but padding; use less padding or a larger kernel")

    @property
    def span(self):
        """The window's extent in input pixels: a dilated kernel spreads k taps over α(k−1)+1."""
        return self.dilation * (self.kernel_size - 1) + 1

    def __str__(self):
        text = f"{self.kind} {self.kernel_size}×{self.kernel_size}"
        text += f"/{self.stride}" if self.stride > 1 else ""
        text += f" pad {self.padding}" if self.padding else ""
        text += f" dil {self.dilation}" if self.dilation > 1 else ""
        return text + (f" → {self.out_channels}" if self.out_channels else "")


@dataclass(frozen=True)
class LayerField:
    """What a unit of one layer's output map sees (sizes in input pixels, per axis), and what the
    layer costs for one image: weights with and without biases, multiply-adds."""

    index: int
    layer: Layer
    input_size: int          # of the image
    in_size: int             # of this layer's input map
    out_size: int
    in_channels: int
    out_channels: int
    size: int                # r: the field size
    stride: int              # j: input pixels between neighbouring units
    padding: int             # P: effective padding
    weights: int
    kernel_weights: int
    macs: int
    note: str = ""           # a warning that does not stop the arithmetic (misaligned stride)

    @property
    def start(self):
        """Centre of the field of unit 0, in input coordinates (negative: in the padding)."""
        return (self.size - 1) / 2 - self.padding

    def window(self, u, v):
        """((top, bottom), (left, right)) input pixels unit (u, v) sees, inclusive, unclipped: the
        part outside 0 … input_size − 1 is padding."""
        n = self.out_size
        for name, value in (("u", u), ("v", v)):
            integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            if not integer or not 0 <= value < n:
                raise ShenduError(f"unit {name}={value!r} is outside layer {self.index}'s "
                                  f"{n}×{n} output (0 … {n - 1})")
        firsts = (int(a) * self.stride - self.padding for a in (u, v))
        return tuple((first, first + self.size - 1) for first in firsts)

    def clipped(self, u, v):
        """The window of unit (u, v) cut to the image: the real pixels it sees."""
        last = self.input_size - 1
        return tuple((max(a, 0), min(b, last)) for a, b in self.window(u, v))


def grow(field, layer):
    """One layer's step of the recursion: (r, j, P) of its input → (r, j, P) of its output."""
    size, stride, padding = field
    return (size + (layer.span - 1) * stride, stride * layer.stride,
            padding + layer.padding * stride)


def fields(layers, input_size=28, in_channels=1):
    """A LayerField per layer of the stack, for square inputs of `input_size` pixels. Raises
    ShenduError explaining the first layer whose output would be empty."""
    input_size = _count("input_size", input_size, 1)
    channels = _count("in_channels", in_channels, 1)
    rows, field, size = [], (1, 1, 0), input_size
    for index, layer in enumerate(layers, 1):
        if not isinstance(layer, Layer):
            raise ShenduError(f"layer {index} must be a receptive.Layer, "
                              f"got {type(layer).__name__}")
        covered = size + 2 * layer.padding - layer.span  # input the window slides over
        if covered < 0:
            raise ShenduError(
                f"layer {index} ({layer}) gets a {size}×{size} input, smaller than its "
                f"{layer.span}×{layer.span} window even with padding {layer.padding}: its output "
                "would be empty; use a smaller kernel or stride, more padding, fewer layers or a "
                "larger input")
        note = ""
        if covered % layer.stride:
            note = (f"stride {layer.stride} does not fit: the last {covered % layer.stride} "
                    f"row(s) and column(s) of the padded {size + 2 * layer.padding}×"
                    f"{size + 2 * layer.padding} input are never seen")
        c_in = layer.in_channels or channels
        c_out = layer.out_channels or c_in
        out = covered // layer.stride + 1
        field = grow(field, layer)
        kernel_weights = layer.kernel_size ** 2 * c_in * c_out if layer.kind == "conv" else 0
        bias = c_out if layer.kind == "conv" and layer.bias else 0
        rows.append(LayerField(index, layer, input_size, size, out, c_in, c_out, *field,
                               weights=kernel_weights + bias, kernel_weights=kernel_weights,
                               macs=out * out * kernel_weights, note=note))
        size, channels = out, c_out
    return rows


# -- stacks from models -----------------------------------------------------------------------
def layer_of(module):
    """The Layer of a convolution or pooling module; None for a module that keeps the field."""
    if isinstance(module, Conv2d):
        return Layer("conv", module.kernel_size, module.stride, module.padding,
                     out_channels=module.out_channels, in_channels=module.in_channels,
                     bias=module.bias is not None)
    if isinstance(module, (MaxPool2d, AvgPool2d)):
        kind = "maxpool" if isinstance(module, MaxPool2d) else "avgpool"
        return Layer(kind, module.kernel_size, module.stride, module.padding)
    if isinstance(module, models.PadShortcut):  # keeps every stride-th pixel: a 1×1 window
        return Layer("maxpool", 1, module.stride)
    if isinstance(module, _ELEMENTWISE):
        return None
    raise ShenduError(f"{type(module).__name__}: its receptive field is unknown (known: "
                      "convolution, pooling, element-wise layers, Sequential, Residual, Concat)")


def stack_of(model):
    """The Layers a unit's widest view passes through, in order, until a Flatten, GlobalAvgPool2d
    or Linear ends the feature maps: through a Residual or Concat, the branch with the largest
    field (the body, unless a shortcut sees more)."""
    return _path(model)[0]


def _path(module):
    """(layers, ended): the widest chain through `module`, and whether the feature maps ended."""
    if isinstance(module, Sequential):
        layers = []
        for child in module:
            more, ended = _path(child)
            layers += more
            if ended:
                return layers, True
        return layers, False
    if isinstance(module, (Residual, Concat)):
        branches = [module.body, module.shortcut] if isinstance(module, Residual) else module
        paths = [([], False) if b is None else _path(b) for b in branches]  # None: identity
        return max(paths, key=lambda path: _size(path[0]))  # the first of equals: the body
    if isinstance(module, _ENDS):
        return [], True
    layer = layer_of(module)
    return ([] if layer is None else [layer]), False


def _size(layers):
    return reduce(grow, layers, (1, 1, 0))[0]


class Preset(NamedTuple):
    layers: tuple
    input_size: int
    in_channels: int


def _chain(n, k):
    return (Layer("conv", k, out_channels=1),) * n  # one channel: weights per channel pair


_STACKS = {"one 5×5": _chain(1, 5), "two 3×3": _chain(2, 3),
           "one 7×7": _chain(1, 7), "three 3×3": _chain(3, 3)}
_MODELS = {"DeepConvNet": ("deepconvnet", 10, (1, 28, 28)),
           "VGG16": ("vgg16", 1000, (3, 224, 224)),
           "ResNet-50": ("resnet50", 1000, (3, 224, 224))}


def presets():
    return [*_STACKS, *_MODELS]


@lru_cache(maxsize=None)  # building VGG16 draws 138 million weights: once is enough
def preset(name):
    """A named stack for the explorer: Preset(layers, input_size, in_channels)."""
    if name in _STACKS:
        return Preset(_STACKS[name], 28, 1)
    if name not in _MODELS:
        raise ShenduError(f"unknown preset {name!r}; choose one of: {', '.join(presets())}")
    key, classes, shape = _MODELS[name]
    return Preset(tuple(stack_of(models.get(key, num_classes=classes, input_shape=shape))),
                  shape[1], shape[0])


def param_comparison(channels, kernel_size, size=28):
    """One k×k convolution against the stack of (k−1)/2 3×3 convolutions that sees as much, both
    C→C channels on size×size maps padded to keep their size. Returns two dicts (stack, layers,
    field, weights, kernel_weights, macs): rows for a table, points for a plot."""
    channels = _count("channels", channels, 1)
    k = _count("kernel_size", kernel_size, 3)
    if k % 2 == 0:
        raise ShenduError(f"kernel_size must be odd (3×3 stacks see 3, 5, 7, ... pixels), got {k}")
    names = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
    rows = []
    for n, kernel in ((1, k), ((k - 1) // 2, 3)):
        stack = fields([Layer("conv", kernel, padding=kernel // 2, out_channels=channels)] * n,
                       size, channels)
        rows.append({"stack": f"{names.get(n, n)} {kernel}×{kernel}", "layers": n,
                     "field": stack[-1].size, "weights": sum(r.weights for r in stack),
                     "kernel_weights": sum(r.kernel_weights for r in stack),
                     "macs": sum(r.macs for r in stack)})
    return rows


# -- the effective receptive field ------------------------------------------------------------
@dataclass(frozen=True)
class EffectiveField:
    """|dy/dx| of one unit y over the input image (H×W, summed over input channels), the unit's
    activation, and the theoretical field to compare with."""

    gradient: np.ndarray
    unit: tuple
    activation: float
    field: LayerField

    @property
    def window(self):
        return self.field.window(*self.unit[1:])

    @property
    def clipped(self):
        return self.field.clipped(*self.unit[1:])


def feature_layers(model):
    """How many leading layers of a Sequential model produce feature maps (up to the first
    Flatten, GlobalAvgPool2d or Linear)."""
    if not isinstance(model, Sequential):
        raise ShenduError(f"effective_field needs a Sequential model, got {type(model).__name__}")
    layers = list(model)
    return next((i for i, layer in enumerate(layers) if isinstance(layer, _ENDS)), len(layers))


def effective_field(model, image, unit=None, depth=None):
    """The effective receptive field of unit (c, u, v) of the feature map after the first `depth`
    layers of a Sequential model (default: all layers before Flatten / GlobalAvgPool2d / Linear;
    default unit: the centre unit of the channel most active there, so that it has a gradient). `image` is H×W (uint8 pixels or floats in [0, 1]),
    C×H×W or 1×C×H×W. One forward pass in eval mode, then shendu's own backward with a one-hot
    dL/dy at the unit: the result's gradient is |dL/dx|. Like any backward pass, it overwrites
    the feature layers' parameter gradients (p.grad)."""
    depth = feature_layers(model) if depth is None else _count("depth", depth, 1)
    features = Sequential(*list(model)[:depth])  # the same layer objects: their caches, weights
    x = _as_image(image)
    was_training = model.training
    model.eval()
    try:
        with enable_grad():
            y = features(x)
            if y.ndim != 4:
                raise ShenduError(f"the first {depth} layers give {y.shape[1:]}, not feature maps")
            if unit is None:
                u, v = y.shape[2] // 2, y.shape[3] // 2
                c = int(y[0, :, u, v].argmax())  # a unit at 0 after ReLU passes no gradient
            else:
                c, u, v = _unit(unit)
            if not 0 <= c < y.shape[1]:
                raise ShenduError(f"channel c={c} is outside the {y.shape[1]} feature maps")
            field = fields(stack_of(features), x.shape[2], x.shape[1])[-1]
            field.window(u, v)  # checks u, v against the map's size
            dy = np.zeros_like(y)
            dy[0, c, u, v] = 1
            dx = features.backward(dy, input_grad=True)
    finally:
        model.train(was_training)
    return EffectiveField(np.abs(dx[0]).sum(axis=0), (c, u, v), float(y[0, c, u, v]), field)


def _unit(unit):
    if not isinstance(unit, (tuple, list)) or len(unit) != 3:
        raise ShenduError(f"unit must be (channel, row, column), got {unit!r}")
    return _count("channel c", unit[0], 0), unit[1], unit[2]


def _as_image(image):
    x = np.asarray(image)
    if x.dtype.kind in "iu":  # pixels
        x = x / np.float32(255)
    elif x.dtype.kind != "f":
        raise ShenduError(f"image must hold numbers, got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[2] != x.shape[3]:
        raise ShenduError(f"image must be one square image: H×W, C×H×W or 1×C×H×W, got {x.shape}")
    return x.astype(np.float32)
