"""Model zoo: networks by name, each buildable for any input shape and number of classes.

Every model comes fused (`nn.fuse`: each convolution, BatchNorm or residual sum followed by a
ReLU computes both in one pass, as a ConvReLU2d, BatchNormReLU2d or ResidualReLU, the ReLU's
place holding an Identity): the same function, the same parameters and names, one pass over
memory fewer."""
import copy
import functools
import inspect

import numpy as np

from . import kernels
from .errors import ShenduError
from .kernels.conv import out_size
from .datasets import WORDS
from .nn import (LSTM, BatchNorm2d, Concat, Conv2d, ConvTranspose2d, Dropout, Embedding, Flatten,
                 GlobalAvgPool2d, Identity, LeakyReLU, Linear, MaxPool2d, Module, ReLU, Residual,
                 Sequential, Tanh, fuse, init, log_softmax, no_grad)

_REGISTRY = {}


def register(name, task="classify"):
    """Add a builder to the zoo under `name`: built through the zoo (or the decorated builder),
    a network comes fused."""
    def add(builder):
        @functools.wraps(builder)
        def build(*args, **kwargs):
            return fuse(builder(*args, **kwargs))
        build.task = task  # what the network does: "classify", "segment", "caption", "detect"
        _REGISTRY[name] = build
        return build
    return add


def names(task="classify"):
    """The networks that do `task` (the classifiers by default; None: all of them)."""
    return sorted(name for name, build in _REGISTRY.items()
                  if task in (None, getattr(build, "task", "classify")))


def task(name):
    """What the registered network `name` does: "classify", "segment", "caption", "detect",
    "generate" or "discriminate" (DCGAN's pair), "play" (a Q-network) or "features" (style
    transfer's random features)."""
    return getattr(_REGISTRY[name.lower()], "task", "classify")


def get(name, num_classes=None, input_shape=None, **kwargs):
    """Build a registered model, e.g. `get("deepconvnet")`. A classifier is built for 10
    classes of 1 × 28 × 28 images unless told otherwise; the other networks (segmentation,
    captioning, detection) have their own defaults, for the 1 × 64 × 64 scenes."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ShenduError(f"unknown model {name!r}; choose one of: {', '.join(names(None))}")
    builder = _REGISTRY[key]
    takes = inspect.signature(builder).parameters
    for option in kwargs:
        if option not in takes:
            raise ShenduError(f"model {key!r} has no option {option!r}; its options: "
                              f"{', '.join(takes)}")
    classifier = getattr(builder, "task", "classify") == "classify"
    for option, value, default in (("num_classes", num_classes, 10),
                                   ("input_shape", input_shape, (1, 28, 28))):
        if value is not None or classifier:
            kwargs[option] = default if value is None else value
    arguments = inspect.signature(builder).bind(**kwargs)
    arguments.apply_defaults()
    settings = {**arguments.arguments, "input_shape": tuple(arguments.arguments["input_shape"])}
    model = builder(**settings)
    settings.pop("classifier", None)  # a network to start from is not part of the description
    model.config = {"model": key, **settings, "input_shape": list(settings["input_shape"])}
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


# -- ImageNet: the competition these networks came from ------------------------------------------
# The ILSVRC classification task (1,000 classes, about 1.2 million training images): each year's
# winning top-5 error on the test set, in percent, and the runner-up of 2014 (VGG), with the
# book's key of the paper each figure is quoted from. Cited, not measured: nothing here was run.
ILSVRC_TOP5 = (
    {"year": 2010, "team": "NEC-UIUC", "place": 1, "top5_error": 28.2,
     "cite": "russakovsky2015imagenet"},
    {"year": 2011, "team": "XRCE", "place": 1, "top5_error": 25.8,
     "cite": "russakovsky2015imagenet"},
    {"year": 2012, "team": "SuperVision (AlexNet)", "place": 1, "top5_error": 15.3,
     "cite": "krizhevsky2012alexnet"},
    {"year": 2013, "team": "Clarifai", "place": 1, "top5_error": 11.7,
     "cite": "russakovsky2015imagenet"},
    {"year": 2014, "team": "GoogLeNet", "place": 1, "top5_error": 6.67,
     "cite": "szegedy2015googlenet"},
    {"year": 2014, "team": "VGG", "place": 2, "top5_error": 7.3, "cite": "simonyan2015vgg"},
    {"year": 2015, "team": "ResNet (MSRA)", "place": 1, "top5_error": 3.57,
     "cite": "he2016resnet"},
)
# One trained person's top-5 error on a sample of the test images, in the same study (cited,
# not measured).
ILSVRC_HUMAN_TOP5 = {"top5_error": 5.1, "cite": "russakovsky2015imagenet"}


# -- depth against width, at the same cost (the experiment depth_and_data) ---------------------
# Two plain networks (no BatchNorm, no dropout) with about the same weights and multiply-adds:
# the deep one spends them on five small convolutions, the shallow one on a single large one.
DEEP_NARROW = (8, 16, 32, 32, 32)  # channels of the five 3×3 convolutions
DEEP_POOLS = (1, 3, 4)  # the convolutions followed by 2×2 max pooling
SHALLOW_WIDE = (45, 11, 4)  # channels and kernel size of the one convolution, then its pooling


@register("deepnarrow")
def DeepNarrow(num_classes=10, input_shape=(1, 28, 28), width=1.0):
    """Deep and narrow: five 3×3 convolutions ("same" padding) of 8, 16, 32, 32 and 32 channels,
    each with ReLU, 2×2 max pooling after the second, fourth and fifth, then one fully connected
    layer: six weight layers. 27,274 parameters and 4.1 M multiply-adds per 1×28×28 image for
    10 classes, as many as `shallowwide`'s."""
    c, h, w = input_shape
    layers = []
    for i, channels in enumerate(_scale(n, width) for n in DEEP_NARROW):
        layers += [Conv2d(c, channels, 3, padding=1), ReLU()]
        c = channels
        if i in DEEP_POOLS:
            layers.append(MaxPool2d(2))
            h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ShenduError(f"deepnarrow needs inputs of at least 8×8 pixels, got {input_shape}")
    return Sequential(*layers, Flatten(), Linear(c * h * w, num_classes))


@register("shallowwide")
def ShallowWide(num_classes=10, input_shape=(1, 28, 28), width=1.0):
    """Shallow and wide: one 11×11 convolution ("same" padding) of 45 channels with ReLU, 4×4
    max pooling, then one fully connected layer: two weight layers. 27,550 parameters and
    4.3 M multiply-adds per 1×28×28 image for 10 classes, as many as `deepnarrow`'s."""
    channels, k, pool = SHALLOW_WIDE
    c, h, w = input_shape
    channels, h, w = _scale(channels, width), h // pool, w // pool
    if h < 1 or w < 1:
        raise ShenduError(f"shallowwide needs inputs of at least {pool}×{pool} pixels, got "
                          f"{input_shape}")
    return Sequential(Conv2d(c, channels, k, padding=k // 2), ReLU(), MaxPool2d(pool), Flatten(),
                      Linear(channels * h * w, num_classes))


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


def CifarResNet(depth=20, num_classes=10, input_shape=(3, 32, 32), shortcuts=True, width=1.0,
                zero_init_residual=False):
    """The ResNet paper's networks for small images (section 4.2): a 3×3 convolution, then three
    stages of n basic blocks at 16, 32 and 64 channels (depth = 6n + 2 weight layers), global
    average pooling, one fully connected layer. Shortcuts are option A
    (parameter-free), so the plain twin (shortcuts=False) has exactly the same weights.
    zero_init_residual (as torchvision's): each block's last BatchNorm starts with weight 0, so
    each block starts as its shortcut (Goyal et al. 2017); otherwise the sum of body and
    shortcut grows the signal's variance block after block."""
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
    model = Sequential(*layers)
    if zero_init_residual:
        for block in model.modules():
            if isinstance(block, Residual):
                block.body[-1].weight.data[:] = 0
    return model


for _depth in (20, 32, 44, 56, 110):
    register(f"resnet{_depth}")(functools.partial(CifarResNet, _depth))
    register(f"plain{_depth}")(functools.partial(CifarResNet, _depth, shortcuts=False))


# -- applications: segmentation ----------------------------------------------------------------
def fully_convolutional(classifier):
    """The classifier (convolutions, then Flatten and Linear layers, as DeepConvNet) with each
    Linear layer made a convolution with the same weights (Long et al. 2015): the first, which
    read the flattened C × h × w map, becomes an h × w convolution over it, the others 1 × 1
    convolutions; Flatten goes. On the input size the classifier was built for it gives the same
    logits, as a (N, classes, 1, 1) map; on a larger image, a map of logits, one per window of
    that size, 2^pools pixels apart (each window seeing, where the classifier saw its padding,
    the image around it). A new model: the classifier is left as it was."""
    layers = list(classifier)
    cut = _flatten_at(classifier)
    c, h, w = classifier.config["input_shape"]
    trunk = Sequential(*layers[:cut])
    with no_grad():
        _, channels, h, w = trunk(np.zeros((1, c, h, w), np.float32)).shape
    if h != w:
        raise ShenduError(f"fully_convolutional needs a square map before Flatten, got {h}×{w}")
    convs, kernel = [], h
    for layer in layers[cut + 1:]:
        if isinstance(layer, Linear):
            conv = Conv2d(channels, layer.out_features, kernel, bias=layer.bias is not None)
            conv.load_state_dict({k: a.reshape(conv.weight.shape) if k == "weight" else a
                                  for k, a in layer.state_dict().items()})
            convs.append(conv)
            channels, kernel = layer.out_features, 1
        else:
            convs.append(copy.deepcopy(layer))
    return Sequential(*convolutions(classifier), *convs).train(classifier.training)


def convolutions(classifier):
    """Copies of the classifier's layers before its Flatten: its convolutional features."""
    return [copy.deepcopy(layer) for layer in list(classifier)[:_flatten_at(classifier)]]


def _flatten_at(classifier):
    layers = list(classifier)
    cut = next((i for i, layer in enumerate(layers) if isinstance(layer, Flatten)), None)
    if cut is None or not all(isinstance(layer, (Linear, ReLU, Dropout, Identity))
                              for layer in layers[cut + 1:]):
        raise ShenduError("expected a classifier made of convolutions, then Flatten, then "
                          "Linear layers (with ReLU and Dropout between), as DeepConvNet")
    return cut


def with_background(classifier, num_classes=None):
    """A copy of the classifier with its last Linear layer widened by a background class (or
    to num_classes): the new class is 0 and starts at zero, the classifier's class k is k + 1
    with its trained weights (an R-CNN's region classifier, started from a digit classifier)."""
    layers = [copy.deepcopy(layer) for layer in classifier]
    last = max(i for i, layer in enumerate(layers) if isinstance(layer, Linear))
    layers[last] = _widened(layers[last], num_classes or layers[last].out_features + 1)
    model = Sequential(*layers).train(classifier.training)
    model.config = {**classifier.config, "num_classes": layers[last].out_features}
    return model


class FCN(Module):
    """FCN-8s (Long, Shelhamer and Darrell 2015) made from a classifier with three pooling
    stages, as DeepConvNet: `fully_convolutional(classifier)` scores each window at stride 8
    (its h × w convolution padded by h/2, so windows over the edge score too), and the scores
    are refined twice through skips before the last upsampling:

        s = head(stage3(a2))                        stride 8
        s = crop(up3(s)) + score2(a2)               stride 4, a2 = stage2(a1)
        s = crop(up2(s)) + score1(a1)               stride 2, a1 = stage1(x)
        y = up1(s)                                  one score per pixel

    up1-3 are ConvTranspose2d(k=4, s=2, p=1) that start as bilinear upsampling (`init.bilinear_`)
    and learn; score1-2 are 1 × 1 convolutions that start at zero, so the untrained skips add
    nothing. crop drops the first row and column (and what overhangs): with DeepConvNet's
    geometry (the pad-2 convolution of stage 2 moves its grid half a cell), upsampled cell i + 1
    sits over skip cell i, and the last upsampling lands on the pixels exactly. Inputs are
    H × W with H and W multiples of 8; the output is (N, num_classes, H, W), class 0 the
    background and class d + 1 the classifier's class d (its trained scores are kept)."""

    def __init__(self, classifier, num_classes=11):
        super().__init__()
        layers, stages = list(fully_convolutional(classifier)), [[]]
        for layer in layers:
            stages[-1].append(layer)
            if isinstance(layer, MaxPool2d):
                stages.append([])
        head = stages.pop()
        while head and isinstance(head[-1], Dropout):  # no dropout on the per-pixel scores
            head.pop()
        if len(stages) != 3 or not isinstance(head[-1], Conv2d):
            raise ShenduError("FCN is made from a classifier with three pooling stages and a "
                              "Linear layer last, as DeepConvNet")
        head[0].padding = head[0].kernel_size // 2
        head[-1] = _widened(head[-1], num_classes)
        self.stage1, self.stage2, self.stage3 = (Sequential(*stage) for stage in stages)
        self.head = Sequential(*head)
        widths = [next(m.out_channels for m in reversed(stage) if isinstance(m, Conv2d))
                  for stage in stages[:2]]
        self.score1, self.score2 = (Conv2d(c, num_classes, 1) for c in widths)
        for score in (self.score1, self.score2):
            score.weight.data = np.zeros_like(score.weight.data)
        self.up3, self.up2, self.up1 = (
            init.bilinear_(ConvTranspose2d(num_classes, num_classes, 4, 2, 1, bias=False))
            for _ in range(3))
        self.num_classes, self.shapes = num_classes, None
        self.config = {"model": "fcn", "num_classes": num_classes,
                       "input_shape": [classifier.config["input_shape"][0], 64, 64]}
        self.train(classifier.training)

    def forward(self, x):
        if x.ndim != 4 or x.shape[2] % 8 or x.shape[3] % 8:
            raise ShenduError(f"FCN takes images (N, C, H, W) with H and W multiples of 8, got "
                              f"{tuple(x.shape)}")
        a1 = self.stage1(x)
        a2 = self.stage2(a1)
        u3 = self.up3(self.head(self.stage3(a2)))
        K = kernels.of(u3)
        u2 = self.up2(K.add(_crop(u3, a2.shape), self.score2(a2)))
        self.shapes = (u3.shape, u2.shape)
        return self.up1(K.add(_crop(u2, a1.shape), self.score1(a1)))

    def backward(self, dy, input_grad=True):
        u3_shape, u2_shape = self._cached(self.shapes)
        K = kernels.of(dy)
        ds = self.up1.backward(dy)
        da1 = self.score1.backward(ds)
        ds = self.up2.backward(_uncrop(ds, u2_shape))
        da2 = self.score2.backward(ds)
        ds = self.up3.backward(_uncrop(ds, u3_shape))
        da2 = K.add(da2, self.stage3.backward(self.head.backward(ds)))
        da1 = K.add(da1, self.stage2.backward(da2))
        return self.stage1.backward(da1, input_grad)

    accepts_input_grad = True


def _widened(layer, num_classes):
    """A Linear or Conv2d layer with K outputs widened to num_classes: the first new ones (the
    background, and any other class the classifier did not know) start at zero, the layer's K
    come after them with its weights."""
    k = layer.out_features if isinstance(layer, Linear) else layer.out_channels
    if num_classes <= k:
        raise ShenduError(f"a background class needs more than the classifier's {k} classes, "
                          f"got num_classes={num_classes}")
    wide = (Linear(layer.in_features, num_classes) if isinstance(layer, Linear) else
            Conv2d(layer.in_channels, num_classes, layer.kernel_size, padding=layer.padding))
    state = {name: np.zeros(a.shape, np.float32) for name, a in wide.state_dict().items()}
    for name, a in layer.state_dict().items():
        state[name][num_classes - k:] = a
    wide.load_state_dict(state)
    return wide


def _crop(x, shape):
    """x without its first row and column, cut to shape's height and width (see FCN)."""
    return kernels.of(x).view(x, np.s_[:, :, 1:1 + shape[2], 1:1 + shape[3]])


def _uncrop(dy, shape):
    """The gradient of _crop: dy put back in its place in zeros of the uncropped shape."""
    K = kernels.of(dy)
    d = _channels_last_zeros(K, shape, dy.dtype)
    K.copy_into(K.view(d, np.s_[:, :, 1:1 + dy.shape[2], 1:1 + dy.shape[3]]), dy)
    return d


@register("fcn", task="segment")
def fcn(num_classes=11, input_shape=(1, 64, 64), dropout=0.5, classifier=None):
    """FCN-8s (see FCN) made from `classifier`, a DeepConvNet for 28 × 28 digits (default: an
    untrained one). For inputs whose height and width are multiples of 8."""
    if input_shape[1] % 8 or input_shape[2] % 8:
        raise ShenduError(f"fcn takes images whose height and width are multiples of 8, got "
                          f"{input_shape}")
    classifier = classifier or DeepConvNet(num_classes - 1, (input_shape[0], 28, 28), dropout)
    model = FCN(classifier, num_classes)
    model.config["input_shape"] = list(input_shape)
    return model


# -- applications: captioning ------------------------------------------------------------------
class Captioner(Module):
    """NIC (Vinyals et al. 2015): a CNN reads the image, and its features, as the first input
    of an LSTM, set the LSTM's state; then the LSTM writes the caption a word at a time, each
    word the input of the next step:

        x₋₁ = encoder(image)      x₀ = embed(START)      xᵢ = embed(wordᵢ)
        hᵢ = LSTM(xᵢ, hᵢ₋₁)       p(wordᵢ₊₁) = softmax(readout(hᵢ))

    The encoder is DeepConvNet's convolutions and a Linear layer from the flattened map (which
    keeps where each digit is: the caption reads them left to right). The LSTM's forget gate
    starts with a bias of 1 (Gers et al. 2000), so that its state keeps the image from the
    first steps on. Embedding and state are 512 wide, as NIC's. Words are tokens: START
    (0), END (1), then the digits' names (d + 2, `datasets.WORDS`). `targets(captions)` codes
    captions as the labels of training: each caption's tokens, END, then -100 (padding, which
    the loss ignores) up to max_words + 1.

    `model(images, targets)` (teacher forcing, as the Trainer calls it: `teacher_forced`) reads
    the true words before each one it predicts and returns the logits (N, words, max_words + 1);
    `model(images)` writes its own (greedy: the likeliest word each step) and returns the
    logits of its choices. `caption(images, beam=1)` returns the captions as text, with a beam
    search over `beam` partial captions when beam > 1."""

    teacher_forced = True
    START, END = 0, 1

    def __init__(self, input_shape=(1, 64, 64), max_words=4, embedding=512, hidden=512,
                 classifier=None):
        super().__init__()
        vocabulary = len(WORDS) + 2
        convs = convolutions(classifier or DeepConvNet(10, (input_shape[0], 28, 28)))
        c, h, w = input_shape
        with no_grad():
            features = Sequential(*convs)(np.zeros((1, c, h, w), np.float32)).size
        self.encoder = Sequential(*convs, Flatten(), Linear(features, embedding))
        self.embed = Embedding(vocabulary, embedding)
        self.lstm = LSTM(embedding, hidden, batch_first=True)
        self.lstm.bias_ih_l0.data[hidden:2 * hidden] = 1  # the forget gate's: keep the image
        self.readout = Linear(hidden, vocabulary)
        self.max_words, self.steps = max_words, None
        self.config = {"model": "captioner", "input_shape": list(input_shape),
                       "max_words": max_words, "embedding": embedding, "hidden": hidden}

    def targets(self, captions):
        """Captions (strings of digit names) as training labels (N, max_words + 1), int64."""
        t = np.full((len(captions), self.max_words + 1), -100, np.int64)
        for row, caption in zip(t, captions):
            words = caption.split()
            if len(words) > self.max_words or not set(words) <= set(WORDS):
                raise ShenduError(f"a caption of at most {self.max_words} digit names, got "
                                  f"{caption!r}")
            row[:len(words) + 1] = [WORDS.index(word) + 2 for word in words] + [self.END]
        return t

    def forward(self, images, targets=None):
        features = self.encoder(images)
        if targets is None:
            return self._greedy(features)
        targets = np.asarray(targets)
        n, steps = len(features), self.max_words + 1
        if targets.shape != (n, steps):
            raise ShenduError(f"teacher forcing takes targets ({n}, {steps}) (see targets()), "
                              f"got {targets.shape}")
        words = np.full((n, steps), self.START, np.int64)  # START, then the targets but the last
        words[:, 1:] = np.where(targets[:, :-1] < 0, self.END, targets[:, :-1])
        K = kernels.of(features)
        x = K.empty((n, steps + 1, features.shape[1]), features.dtype)
        K.copy_into(K.view(x, np.s_[:, 0]), features)
        K.copy_into(K.view(x, np.s_[:, 1:]), self.embed(words))
        h, _ = self.lstm(x)
        logits = self.readout(K.contiguous(K.view(h, np.s_[:, 1:])).reshape(n * steps, -1))
        self.steps = steps
        return K.contiguous(K.transpose(logits.reshape(n, steps, -1), (0, 2, 1)))

    accepts_input_grad = True

    def backward(self, dy, input_grad=True):
        steps, K = self._cached(self.steps), kernels.of(dy)
        n = dy.shape[0]
        dh = self.readout.backward(K.contiguous(K.transpose(dy, (0, 2, 1))).reshape(n * steps, -1))
        dh_all = K.zeros((n, steps + 1, dh.shape[1]), dh.dtype)  # step −1 predicts nothing
        K.copy_into(K.view(dh_all, np.s_[:, 1:]), dh.reshape(n, steps, -1))
        dx, _ = self.lstm.backward(dh_all)
        self.embed.backward(K.contiguous(K.view(dx, np.s_[:, 1:])))
        return self.encoder.backward(K.contiguous(K.view(dx, np.s_[:, 0])), input_grad)

    def _start(self, features):
        """The LSTM's state after the image and START, and its output then."""
        n = len(features)
        _, state = self.lstm(features.reshape(n, 1, -1))
        return self._step(np.full(n, self.START, np.int64), state)

    def _step(self, words, state):
        """(logits of the next word (N, words), state) after reading `words` (N,) in `state`."""
        h, state = self.lstm(self.embed(words[:, None]), state)
        return self.readout(h.reshape(len(words), -1)), state

    def _greedy(self, features):
        K = kernels.of(features)
        logits, state = self._start(features)
        out = K.empty((len(features), logits.shape[1], self.max_words + 1), logits.dtype)
        for i in range(self.max_words + 1):
            K.copy_into(K.view(out, np.s_[:, :, i]), logits)
            if i < self.max_words:
                logits, state = self._step(kernels.to_host(logits).argmax(axis=1), state)
        return out

    def caption(self, images, beam=1):
        """The captions of images (N, C, H, W), float in [0, 1], as text."""
        with no_grad():
            if beam == 1:
                return [self.words(row) for row in kernels.to_host(self(images)).argmax(axis=1)]
            return [self.words(self._beam(self.encoder(images[i:i + 1]), beam))
                    for i in range(len(images))]

    def _beam(self, features, width):
        """The likeliest caption found by keeping the `width` likeliest partial captions at each
        step (Vinyals et al. 2015 use 20; their log-probabilities add up word by word)."""
        K = kernels.of(features)
        logits, state = self._start(features)
        beams, done = [(0.0, [])], []  # (log-probability, tokens) of partial, ended captions
        for _ in range(self.max_words + 1):
            logp = log_softmax(kernels.to_host(logits).astype(np.float64))
            grown = sorted(((score + logp[b, w], tokens + [w], b)
                            for b, (score, tokens) in enumerate(beams)
                            for w in range(logp.shape[1])), reverse=True)[:width]
            done += [(score, tokens) for score, tokens, _ in grown if tokens[-1] == self.END]
            grown = [g for g in grown if g[1][-1] != self.END]
            if not grown or (done and max(done)[0] >= grown[0][0]):
                break  # a longer caption only loses probability: none can beat this one
            beams = [(score, tokens) for score, tokens, _ in grown]
            rows = np.array([b for *_, b in grown])
            state = tuple(K.array(kernels.to_host(s)[:, rows]) for s in state)
            logits, state = self._step(np.array([tokens[-1] for _, tokens in beams]), state)
        return max(done)[1] if done else beams[0][1]  # else: no caption ended in time

    def words(self, tokens):
        """Tokens as text: the digit names up to the first END (START and END left out)."""
        out = []
        for token in tokens:
            if token == self.END:
                break
            if token >= 2:
                out.append(WORDS[token - 2])
        return " ".join(out)


@register("captioner", task="caption")
def captioner(num_classes=None, input_shape=(1, 64, 64), max_words=4, embedding=512,
              hidden=512, classifier=None):
    """The NIC captioner (see Captioner), its convolutions those of `classifier` (default: an
    untrained DeepConvNet); num_classes is unused (its words are fixed)."""
    return Captioner(input_shape, max_words, embedding, hidden, classifier)


# -- applications: detection -------------------------------------------------------------------
@register("griddetector", task="detect")
def grid_detector(num_classes=10, input_shape=(1, 64, 64), classifier=None):
    """A one-stage detector in the manner of YOLO (see shendu.detection): DeepConvNet's
    convolutions, then a 3 × 3 convolution and a 1 × 1 one that give, for each 8 × 8 cell, an
    objectness logit, a box (tx, ty, tw, th) and the classes' logits. Its convolutions are
    those of `classifier` (default: an untrained DeepConvNet). Fully convolutional: for inputs
    whose height and width are multiples of 8."""
    if input_shape[1] % 8 or input_shape[2] % 8:
        raise ShenduError(f"griddetector takes images whose height and width are multiples of "
                          f"8, got {input_shape}")
    convs = convolutions(classifier or DeepConvNet(num_classes, (input_shape[0], 28, 28)))
    return Sequential(*convs, Conv2d(64, 64, 3, padding=1), ReLU(),
                      Conv2d(64, 5 + num_classes, 1))


# -- generating, restyling, playing (chapter 8) ------------------------------------------
@register("generator", task="generate")
def generator(num_classes=None, input_shape=(1, 28, 28), latent=64, width=32):
    """DCGAN's generator for 28 × 28 images: noise (N, latent, 1, 1) → 7 × 7 × 4·width →
    14 × 14 × 2·width → 28 × 28 × channels, by transposed convolutions (7 × 7, then 4 × 4 of
    stride 2), BatchNorm and ReLU between, tanh at the end. num_classes is unused."""
    c, h, w = input_shape
    if (h, w) != (28, 28):
        raise ShenduError(f"the generator makes 28 × 28 images, not {h} × {w}")
    return Sequential(
        ConvTranspose2d(latent, 4 * width, 7, bias=False), BatchNorm2d(4 * width), ReLU(),
        ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1, bias=False),
        BatchNorm2d(2 * width), ReLU(),
        ConvTranspose2d(2 * width, c, 4, stride=2, padding=1), Tanh())


@register("discriminator", task="discriminate")
def discriminator(num_classes=None, input_shape=(1, 28, 28), width=32):
    """DCGAN's discriminator for 28 × 28 images in [−1, 1]: 4 × 4 convolutions of stride 2 to
    14 × 14 × 2·width and 7 × 7 × 4·width (LeakyReLU 0.2, BatchNorm on the second), then a 7 × 7
    convolution to one logit per image, (N, 1). num_classes is unused."""
    c, h, w = input_shape
    if (h, w) != (28, 28):
        raise ShenduError(f"the discriminator reads 28 × 28 images, not {h} × {w}")
    return Sequential(
        Conv2d(c, 2 * width, 4, stride=2, padding=1), LeakyReLU(0.2),
        Conv2d(2 * width, 4 * width, 4, stride=2, padding=1, bias=False),
        BatchNorm2d(4 * width), LeakyReLU(0.2),
        Conv2d(4 * width, 1, 7), Flatten())


@register("qnet", task="play")
def q_network(num_classes=3, input_shape=(1, 10, 5), hidden=128):
    """A Q-network with an output per action (num_classes): for image states (C, H, W) two 3×3
    convolutions (16 and 32 channels, ReLU) then a hidden layer, as DQN's Atari network in
    small; for vector states (features,) two hidden layers (ReLU)."""
    if len(input_shape) == 3:
        c, h, w = input_shape
        return Sequential(Conv2d(c, 16, 3, padding=1), ReLU(),
                          Conv2d(16, 32, 3, padding=1), ReLU(), Flatten(),
                          Linear(32 * h * w, hidden), ReLU(),
                          Linear(hidden, num_classes))
    if len(input_shape) != 1:
        raise ShenduError(f"qnet takes images (C, H, W) or vectors (features,), got "
                          f"{input_shape}")
    return Sequential(Linear(input_shape[0], hidden), ReLU(),
                      Linear(hidden, hidden), ReLU(), Linear(hidden, num_classes))


@register("randomscales", task="features")
def random_scales(num_classes=None, input_shape=(3, 64, 64), sizes=(3, 5, 7, 11, 15),
                  width=32):
    """One layer of random (He-initialised, never trained) convolutions of several sizes, each
    `width` filters with ReLU, their maps concatenated: features at many scales at once.
    num_classes is unused."""
    c = input_shape[0]
    return Sequential(Concat(*(Sequential(Conv2d(c, width, k, padding=k // 2), ReLU())
                               for k in sizes)))
