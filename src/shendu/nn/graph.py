"""Blocks that are not a chain: a shortcut around a body (ResNet) and parallel branches
(GoogLeNet). Their backward passes are the chain rule at a fork: where one input feeds two paths,
its gradient is the sum of the two paths' gradients."""
from functools import reduce

import numpy as np

from .. import kernels
from ..errors import ShenduError
from .module import Module


class Residual(Module):
    """y = body(x) + shortcut(x), the shortcut being the identity or a module (a strided 1×1
    convolution when the body changes the shape). He et al. 2016: the body learns only what to add
    to x, and the gradient reaches x undiminished through the identity path."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        return self.join([self.body(x), x if self.shortcut is None else self.shortcut(x)])

    def join(self, outputs):
        """The block's output from its paths' outputs [body, shortcut]: their sum."""
        y, s = outputs
        if tuple(y.shape) != tuple(s.shape):
            raise ShenduError(f"Residual: the body gives {tuple(y.shape)} but the shortcut "
                              f"{'(identity) ' if self.shortcut is None else ''}gives "
                              f"{tuple(s.shape)}; a body that changes the shape needs a "
                              "projection shortcut")
        return self._sum(y, s)

    def _sum(self, y, s):
        return kernels.of(y).add(y, s)

    def backward(self, dy):
        dx = self.body.backward(dy)
        return kernels.of(dx).add(dx, dy if self.shortcut is None else self.shortcut.backward(dy))


class ResidualReLU(Residual):
    """y = max(body(x) + shortcut(x), 0), the sum and the ReLU after it in one pass; backward
    passes dy where y > 0, then as Residual. `nn.fuse` puts one in place of a Residual followed
    by a ReLU (the ResNets' blocks); it holds that Residual's body and shortcut, under the same
    names."""

    def __init__(self, residual):
        Module.__init__(self)  # the Residual's own body and shortcut, not new ones
        self.body, self.shortcut = residual.body, residual.shortcut
        self.y = None

    def _sum(self, y, s):
        out = kernels.of(y).add_relu(y, s)
        self.y = out if self.keeps_cache else None
        return out

    def backward(self, dy):
        return super().backward(kernels.of(dy).relu_backward(dy, self._cached(self.y)))


class Concat(Module):
    """Parallel branches on one input, their outputs concatenated on channels (axis 1): the
    Inception block of Szegedy et al. 2015. Backward hands each branch its slice of dL/dy and
    sums the branches' dL/dx."""

    def __init__(self, *branches):
        super().__init__()
        if not branches:
            raise ShenduError("Concat needs at least one branch")
        for i, branch in enumerate(branches):
            setattr(self, str(i), branch)
        self.offsets = None

    def forward(self, x):
        return self.join([branch(x) for branch in self._modules.values()])

    def join(self, ys):
        """The block's output from its branches' outputs: their concatenation on channels."""
        if len({(y.shape[0], *y.shape[2:]) for y in ys}) > 1:
            raise ShenduError("Concat: the branches' outputs differ in more than their channels: "
                              + ", ".join(str(tuple(y.shape)) for y in ys))
        self.offsets = np.cumsum([0] + [y.shape[1] for y in ys])  # where each branch starts
        K = kernels.of(ys[0])
        # Channels last: images as the convolutions produce and consume them, so the next layer
        # needs no copy (an NCHW view of NHWC memory, like every conv output here).
        last = (0, 2, 3, 1) if ys[0].ndim == 4 else (0, 1)
        out = K.empty((*K.transpose(ys[0], last).shape[:-1], self.offsets[-1]), ys[0].dtype)
        for y, c0, c1 in zip(ys, self.offsets[:-1], self.offsets[1:]):
            K.copy_into(K.view(out, np.s_[..., c0:c1]), K.transpose(y, last))
        return K.transpose(out, np.argsort(last))

    def backward(self, dy):
        c = self._cached(self.offsets)
        K = kernels.of(dy)
        branches = list(self._modules.values())
        return reduce(K.add, [branch.backward(K.view(dy, np.s_[:, c0:c1]))
                              for branch, c0, c1 in zip(branches, c[:-1], c[1:])])

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
