"""Model zoo: networks by name, each buildable for any input shape and number of classes.

Every model comes fused (`nn.fuse`: each convolution, BatchNorm or residual sum followed by a
ReLU computes both in one pass, as a ConvReLU2d, BatchNormReLU2d or ResidualReLU, the ReLU's
place holding an Identity): the same function, the same parameters and names, one pass over
memory fewer."""
import functools
import inspect

import numpy as np

from . import kernels
from .errors import ShenduError
from .kernels.conv import out_size
from .nn import (BatchNorm2d, Concat, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Linear,
                 MaxPool2d, Module, ReLU, Residual, Sequential, fuse)

_REGISTRY = {}


def register(name):
    """Add a builder to the zoo under `name`: built through the zoo (or the decorated builder),
    a network comes fused."""
    def add(builder):
        @functools.wraps(builder)
        def build(*args, **kwargs):
            return fuse(builder(*args, **kwargs))
        _REGISTRY[name] = build
        return build
    return add


def names():
    return sorted(_REGISTRY)


def get(name, num_classes=10, input_shape=(1, 28, 28), **kwargs):
    """Build a registered model, e.g. `get("deepconvnet")`."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ShenduError(f"unknown model {name!r}; choose one of: {', '.join(names())}")
    takes = inspect.signature(_REGISTRY[key]).parameters
    for option in kwargs:
        if option not in takes:
            raise ShenduError(f"model {key!r} has no option {option!r}; its options: "
                              f"{', '.join(takes)}")
    model = _REGISTRY[key](num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
    model.config = {"model": key, "num_classes": num_classes,
                    "input_shape": list(input_shape), **kwargs}
    return model


@register("deepconvnet")
def DeepConvNet(num_classes=10, input_shape=(1, 28, 28), dropout=0.5):
    """The chapter's network: six 3×3 convolutions with ReLU in pairs, each pair followed by 2×2
    max pooling (the fourth convolution pads by 2), then two fully connected layers with dropout.
    He initialisation, zero biases. 123,552 parameters for 1×28×28 inputs and 10 classes."""
    c, h, w = input_shape
    layers, channels = [], c
    for width, pads in ((16, (1, 1)), (32, (1, 2)), (64, (1, 1))):
        for pad in pads:
            layers += [Conv2d(channels, width, 3, padding=pad), ReLU()]
            channels = width
            h, w = out_size(h, 3, 1, pad), out_size(w, 3, 1, pad)
        layers.append(MaxPool2d(2, stride=2))
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ShenduError(f"DeepConvNet needs inputs of at least 1×8×8 pixels, got {input_shape}")
    layers += [Flatten(), Linear(channels * h * w, 50), ReLU(), Dropout(dropout),
               Linear(50, num_classes), Dropout(dropout)]
    model = Sequential(*layers)
    model.config = {"model": "deepconvnet", "num_classes": num_classes,
                    "input_shape": list(input_shape), "dropout": dropout}
    return model


@register("bncnn")
def BNConvNet(num_classes=10, input_shape=(1, 28, 28), width=1.0, dropout=0.4):
    """Seven convolutions with BatchNorm, the design behind many of the best single MNIST models
    on Kaggle (Deotte 2018): two stages of two unpadded 3×3 convolutions and a 5×5 convolution of
    stride 2 that halves the map instead of pooling, each stage ending in dropout; then a 4×4
    convolution (28×28 inputs are 1×1 by then; a larger map is averaged), dropout and the
    classifier. 325,994 parameters for 1×28×28 inputs and 10 classes."""
    size = min(input_shape[1:])
    for _ in range(2):
        size = out_size(size - 4, 5, 2, 2)  # two unpadded 3×3 convolutions, then the 5×5
    if size < 4:
        raise ShenduError(f"bncnn needs inputs of at least 25×25 pixels, got {input_shape}")
    c, layers = input_shape[0], []
    for channels in (_scale(32, width), _scale(64, width)):
        layers += [*_conv_bn_relu(c, channels, 3, padding=0),
                   *_conv_bn_relu(channels, channels, 3, padding=0),
                   *_conv_bn_relu(channels, channels, 5, stride=2), Dropout(dropout)]
        c = channels
    channels = _scale(128, width)
    return Sequential(*layers, *_conv_bn_relu(c, channels, 4, padding=0), GlobalAvgPool2d(),
                      Dropout(dropout), Linear(channels, num_classes))


@register("fastnet")
def FastNet(num_classes=10, input_shape=(1, 28, 28), width=1.0):
    """A small network for the least time to 99.4% on two cores (the `fast` recipe): a 5×5
    convolution of stride 2 looks at the full-size image but leaves a 14×14 map, so the costly
    full-size stage is a sixteenth of a 3×3 one's; then one 3×3 convolution at 14×14, two at
    7×7, each pooled stage halving the map; BatchNorm after every convolution. 66,426
    parameters for 1×28×28 inputs and 10 classes."""
    c, h, w = input_shape
    h, w = out_size(h, 5, 2, 2) // 4, out_size(w, 5, 2, 2) // 4
    if h < 1 or w < 1:
        raise ShenduError(f"fastnet needs inputs of at least 8×8 pixels, got {input_shape}")
    c1, c2, c3 = (_scale(channels, width) for channels in (16, 32, 64))
    return Sequential(*_conv_bn_relu(c, c1, 5, stride=2),
                      *_conv_bn_relu(c1, c2, 3), MaxPool2d(2),
                      *_conv_bn_relu(c2, c3, 3), *_conv_bn_relu(c3, c3, 3), MaxPool2d(2),
                      Flatten(), Linear(c3 * h * w, num_classes))


# -- the chapter's representative networks ------------------------------------------------------
# Each builds at ImageNet size (3×224×224, with the published layers and parameter counts) and
# for small images (below 64 pixels: MNIST's 28×28, CIFAR's 32×32), where a stride-2 stem would
# leave nothing to look at: the stem becomes one 3×3 convolution, and pooling stops at 1×1.
# `width` scales every channel count, so that a laptop can train the small versions.

def _small(input_shape):
    return min(input_shape[1:]) < 64


def _scale(channels, width):
    return max(1, round(channels * width))


def _conv_bn_relu(c_in, c_out, k, stride=1, batch_norm=True, bias=None, padding=None):
    """A convolution ("same" padding unless given) followed by ReLU, with BatchNorm between them;
    the bias is dropped before BatchNorm, which would subtract it again (unless asked for, as VGG
    keeps it)."""
    conv = Conv2d(c_in, c_out, k, stride, k // 2 if padding is None else padding,
                  bias=not batch_norm if bias is None else bias)
    return [conv, BatchNorm2d(c_out), ReLU()] if batch_norm else [conv, ReLU()]


_VGG = {11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M"],
        19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M"]}


def VGG(depth=16, num_classes=1000, input_shape=(3, 224, 224), batch_norm=False, width=1.0,
        dropout=0.5):
    """Simonyan & Zisserman 2015: stacks of 3×3 convolutions (padding 1) between 2×2 max pools,
    then three fully connected layers (4096, 4096, classes) with dropout. Small images: pooling
    stops at 1×1 and one fully connected layer classifies."""
    if depth not in _VGG:
        raise ShenduError(f"VGG has 11, 13, 16 or 19 layers, got {depth}")
    c, h, w = input_shape
    layers = []
    for v in _VGG[depth]:
        if v == "M":
            if min(h, w) >= 2:
                layers.append(MaxPool2d(2))
                h, w = h // 2, w // 2
        else:
            layers += _conv_bn_relu(c, _scale(v, width), 3, batch_norm=batch_norm, bias=True)
            c = _scale(v, width)
    layers.append(Flatten())
    if _small(input_shape):
        layers.append(Linear(c * h * w, num_classes))
    else:
        hidden = _scale(4096, width)
        layers += [Linear(c * h * w, hidden), ReLU(), Dropout(dropout),
                   Linear(hidden, hidden), ReLU(), Dropout(dropout), Linear(hidden, num_classes)]
    return Sequential(*layers)


for _depth in _VGG:
    register(f"vgg{_depth}")(functools.partial(VGG, _depth))
    register(f"vgg{_depth}_bn")(functools.partial(VGG, _depth, batch_norm=True))


# GoogLeNet's Inception blocks: (1×1, 3×3 reduce, 3×3, 5×5 reduce, 5×5, pool projection); "M"
# is a 3×3 max pool of stride 2 (Szegedy et al. 2015, table 1).
_INCEPTION = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
              (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),
              (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
              (256, 160, 320, 32, 128, 128), "M",
              (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]


def inception(c_in, c1, c3r, c3, c5r, c5, cp, batch_norm=False):
    """Four branches on one input, concatenated: 1×1; 1×1 then 3×3; 1×1 then 5×5; 3×3 max pool
    then 1×1. The 1×1 convolutions shrink the channels before the costly filters."""
    def branch(*convs):
        layers, c = [], c_in
        for c_out, k in convs:
            layers += _conv_bn_relu(c, c_out, k, batch_norm=batch_norm)
            c = c_out
        return layers
    return Concat(Sequential(*branch((c1, 1))),
                  Sequential(*branch((c3r, 1), (c3, 3))),
                  Sequential(*branch((c5r, 1), (c5, 5))),
                  Sequential(MaxPool2d(3, stride=1, padding=1), *branch((cp, 1))))


@register("googlenet")
def GoogLeNet(num_classes=1000, input_shape=(3, 224, 224), batch_norm=False, width=1.0,
              dropout=0.4):
    """Inception v1 (Szegedy et al. 2015) as in the paper: 5×5 branches, biases, no BatchNorm
    (unless asked) and no auxiliary classifiers; global average pooling, dropout, one fully
    connected layer. 6,998,552 parameters at ImageNet size."""
    c, h, w = input_shape
    s = lambda v: _scale(v, width)  # noqa: E731
    if _small(input_shape):  # one 3×3 convolution and one pool: the blocks see 14×14, 7×7, 4×4
        layers = [*_conv_bn_relu(c, s(192), 3, batch_norm=batch_norm),
                  MaxPool2d(3, stride=2, padding=1)]
    else:
        layers = [*_conv_bn_relu(c, s(64), 7, stride=2, batch_norm=batch_norm),
                  MaxPool2d(3, stride=2, padding=1),
                  *_conv_bn_relu(s(64), s(64), 1, batch_norm=batch_norm),
                  *_conv_bn_relu(s(64), s(192), 3, batch_norm=batch_norm),
                  MaxPool2d(3, stride=2, padding=1)]
    c = s(192)
    for block in _INCEPTION:
        if block == "M":
            layers.append(MaxPool2d(3, stride=2, padding=1))
        else:
            block = [s(v) for v in block]
            layers.append(inception(c, *block, batch_norm=batch_norm))
            c = block[0] + block[2] + block[4] + block[5]
    layers += [GlobalAvgPool2d(), Dropout(dropout), Linear(c, num_classes)]
    return Sequential(*layers)


def basic_block(c_in, c_out, stride=1, shortcut="projection"):
    """Two 3×3 convolutions with BatchNorm; ReLU after the sum. `shortcut`: "projection" (a 1×1
    convolution and BatchNorm where the shape changes), "pad" (subsample and zero-pad the extra
    channels: no parameters, the paper's CIFAR option A) or None (a plain block, no shortcut)."""
    body = Sequential(*_conv_bn_relu(c_in, c_out, 3, stride),
                      Conv2d(c_out, c_out, 3, padding=1, bias=False), BatchNorm2d(c_out))
    return _with_shortcut(body, c_in, c_out, stride, shortcut)


def bottleneck_block(c_in, c_mid, stride=1, expansion=4):
    """1×1 (shrink), 3×3 (carries the stride), 1×1 (expand ×4), each with BatchNorm: the deep
    ResNets' block, cheaper than two 3×3 convolutions at the same width."""
    c_out = c_mid * expansion
    body = Sequential(*_conv_bn_relu(c_in, c_mid, 1), *_conv_bn_relu(c_mid, c_mid, 3, stride),
                      Conv2d(c_mid, c_out, 1, bias=False), BatchNorm2d(c_out))
    return _with_shortcut(body, c_in, c_out, stride, "projection")


def _with_shortcut(body, c_in, c_out, stride, shortcut):
    if shortcut is None:
        return Sequential(*body, ReLU())
    if stride == 1 and c_in == c_out:
        projection = None
    elif shortcut == "pad":
        projection = PadShortcut(stride, c_out - c_in)
    else:
        projection = Sequential(Conv2d(c_in, c_out, 1, stride, bias=False), BatchNorm2d(c_out))
    return Sequential(Residual(body, projection), ReLU())


class PadShortcut(Module):
    """The parameter-free shortcut of the paper's CIFAR networks (option A): keep every
    `stride`-th pixel, append `extra` channels of zeros. Backward: the inverse selection."""

    def __init__(self, stride, extra):
        super().__init__()
        self.stride, self.extra = stride, extra
        self.shape = None

    def forward(self, x):
        K, s = kernels.of(x), self.stride
        self.shape = x.shape
        kept = K.view(x, np.s_[:, :, ::s, ::s])
        n, c, h, w = kept.shape
        y = _channels_last_zeros(K, (n, c + self.extra, h, w), x.dtype)  # as the body's output
        K.copy_into(K.view(y, np.s_[:, :c]), kept)
        return y

    def backward(self, dy):
        K, s = kernels.of(dy), self.stride
        dx = _channels_last_zeros(K, self._cached(self.shape), dy.dtype)
        K.copy_into(K.view(dx, np.s_[:, :, ::s, ::s]), K.view(dy, np.s_[:, :self.shape[1]]))
        return dx

    def extra_repr(self):
        return f"stride={self.stride}, extra={self.extra}"


def _channels_last_zeros(K, shape, dtype):
    """Zeros of logical shape (N, C, H, W) in channels-last memory, the layers' layout."""
    n, c, h, w = shape
    return K.transpose(K.zeros((n, h, w, c), dtype), (0, 3, 1, 2))


_RESNET = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
           50: ("bottleneck", [3, 4, 6, 3]), 101: ("bottleneck", [3, 4, 23, 3]),
           152: ("bottleneck", [3, 8, 36, 3])}


def ResNet(depth=50, num_classes=1000, input_shape=(3, 224, 224), width=1.0):
    """He et al. 2016 (as torchvision builds it: projection shortcuts where the shape changes,
    the stride on the 3×3 convolution): a 7×7 stem and max pool, four stages of blocks at 64,
    128, 256, 512 channels (×4 at the bottleneck's output), global average pooling, one fully
    connected layer."""
    if depth not in _RESNET:
        raise ShenduError(f"ResNet has 18, 34, 50, 101 or 152 layers, got {depth}")
    kind, counts = _RESNET[depth]
    expansion = 4 if kind == "bottleneck" else 1
    c = _scale(64, width)
    if _small(input_shape):
        layers = _conv_bn_relu(input_shape[0], c, 3)
    else:
        layers = [*_conv_bn_relu(input_shape[0], c, 7, stride=2), MaxPool2d(3, stride=2, padding=1)]
    for stage, count in enumerate(counts):
        mid = _scale(64 * 2 ** stage, width)
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            if kind == "basic":
                layers.append(basic_block(c, mid, stride))
            else:
                layers.append(bottleneck_block(c, mid, stride))
            c = mid * expansion
    layers += [GlobalAvgPool2d(), Linear(c, num_classes)]
    return Sequential(*layers)


for _depth in _RESNET:
    register(f"resnet{_depth}")(functools.partial(ResNet, _depth))


def CifarResNet(depth=20, num_classes=10, input_shape=(3, 32, 32), shortcuts=True, width=1.0):
    """The ResNet paper's networks for small images (section 4.2): a 3×3 convolution, then three
    stages of n basic blocks at 16, 32 and 64 channels (depth = 6n + 2 weight layers), global
    average pooling, one fully connected layer. Shortcuts are option A
    (parameter-free), so the plain twin (shortcuts=False) has exactly the same weights."""
    if depth < 8 or (depth - 2) % 6:
        raise ShenduError(f"a CIFAR-style ResNet has 6n + 2 layers (20, 32, 44, 56, 110, ...), "
                          f"got depth {depth}")
    n, c = (depth - 2) // 6, _scale(16, width)
    layers = _conv_bn_relu(input_shape[0], c, 3)
    for stage in range(3):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            c_out = _scale(16 * 2 ** stage, width)
            layers.append(basic_block(c, c_out, stride, shortcut="pad" if shortcuts else None))
            c = c_out
    layers += [GlobalAvgPool2d(), Linear(c, num_classes)]
    return Sequential(*layers)


for _depth in (20, 32, 44, 56, 110):
    register(f"resnet{_depth}")(functools.partial(CifarResNet, _depth))
    register(f"plain{_depth}")(functools.partial(CifarResNet, _depth, shortcuts=False))
