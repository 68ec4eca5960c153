"""A ResNet block and an Inception block against the same blocks built in PyTorch."""
import numpy as np
import pytest

import shendu
from gradcheck import assert_matches_torch, rand
from shendu import models

torch = pytest.importorskip("torch")
T = torch.nn


class TorchResidual(T.Module):
    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class TorchConcat(T.Module):
    def __init__(self, *branches):
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(str(i), branch)

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.children()], dim=1)


def torch_conv_bn_relu(c_in, c_out, k, stride=1, bn=True):
    convolution = T.Conv2d(c_in, c_out, k, stride, k // 2, bias=not bn)
    return [convolution, T.BatchNorm2d(c_out), T.ReLU()] if bn else [convolution, T.ReLU()]


def torch_basic_block(c_in, c_out, stride):
    """torchvision's BasicBlock, written out with the module names shendu uses."""
    body = T.Sequential(*torch_conv_bn_relu(c_in, c_out, 3, stride),
                        T.Conv2d(c_out, c_out, 3, padding=1, bias=False), T.BatchNorm2d(c_out))
    shortcut = T.Sequential(T.Conv2d(c_in, c_out, 1, stride, bias=False), T.BatchNorm2d(c_out))
    return T.Sequential(TorchResidual(body, shortcut), T.ReLU())


def torch_inception(c_in, c1, c3r, c3, c5r, c5, cp):
    def branch(*convs):
        layers, c = [], c_in
        for c_out, k in convs:
            layers += torch_conv_bn_relu(c, c_out, k, bn=False)
            c = c_out
        return layers
    return TorchConcat(T.Sequential(*branch((c1, 1))), T.Sequential(*branch((c3r, 1), (c3, 3))),
                       T.Sequential(*branch((c5r, 1), (c5, 5))),
                       T.Sequential(T.MaxPool2d(3, 1, 1), *branch((cp, 1))))


ORACLE = {
    "basic_block": (lambda: models.basic_block(4, 6, stride=2), lambda: torch_basic_block(4, 6, 2)),
    "inception": (lambda: models.inception(4, 3, 2, 4, 2, 3, 2),
                  lambda: torch_inception(4, 3, 2, 4, 2, 3, 2)),
}


@pytest.mark.parametrize("name", ORACLE)
def test_blocks_match_pytorch(name):
    make, make_torch = ORACLE[name]
    shendu.manual_seed(0)
    block, reference = make(), make_torch()
    state = block.state_dict()  # the same dotted names in both
    assert set(state) == {k for k in reference.state_dict() if "num_batches" not in k}
    reference.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=False)
    assert_matches_torch(block, reference, rand(3, 4, 9, 7, seed=1).astype(np.float32), seed=2)


