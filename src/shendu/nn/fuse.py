"""Fusion, an explicit pass over a model, as PyTorch's `fuse_modules`: layers that run one after
the other become one layer that does their work in a single pass over memory.

    model = nn.fuse(model)    # in place; the same function, parameters and names

Three fusions, each of a layer and the ReLU after it: a Conv2d becomes a ConvReLU2d (the
convolution rectifies its output while it is in cache), a BatchNorm2d a BatchNormReLU2d (the
normalisation rectifies what it writes), a Residual a ResidualReLU (the sum is rectified as it
is formed). The ReLU's place holds an Identity, so the layers keep their numbers and the
parameters their names (state_dict and checkpoints are unchanged). The models of
`shendu.models` come fused; a network built by hand is fused by calling this.
"""
from .graph import Residual, ResidualReLU
from .layers import BatchNorm2d, BatchNormReLU2d, Conv2d, ConvReLU2d, Identity, ReLU
from .module import Sequential

__all__ = ["fuse"]


def fuse(model):
    """Fuse every Conv2d, BatchNorm2d and Residual directly followed by a ReLU in a Sequential of
    `model` (in place); returns the model."""
    fused = {Conv2d: ConvReLU2d, BatchNorm2d: BatchNormReLU2d, Residual: ResidualReLU}
    for module in model.modules():
        if isinstance(module, Sequential):
            layers = list(module._modules.items())
            for (name, layer), (after, following) in zip(layers, layers[1:]):
                if type(layer) in fused and type(following) is ReLU:
                    setattr(module, name, fused[type(layer)](layer).train(layer.training))
                    setattr(module, after, Identity().train(following.training))
    return model
