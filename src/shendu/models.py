"""Model zoo: networks by name, each buildable for any input shape and number of classes."""
from .errors import ShenduError
from .kernels.conv import out_size
from .nn import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential

_REGISTRY = {}


def register(name):
    def add(builder):
        _REGISTRY[name] = builder
        return builder
    return add


def names():
    return sorted(_REGISTRY)


def get(name, num_classes=10, input_shape=(1, 28, 28), **kwargs):
    """Build a registered model, e.g. `get("deepconvnet")`."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ShenduError(f"unknown model {name!r}; choose one of: {', '.join(names())}")
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
