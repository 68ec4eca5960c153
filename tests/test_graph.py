"""Residual and Concat: gradients through a fork are sums (numerical checks), and a ResNet block
and an Inception block agree with the same blocks built in PyTorch."""
import numpy as np
import pytest

import shendu
from gradcheck import assert_matches_torch, check_module_gradients
from shendu import models, nn


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def conv(c_in, c_out, k=3, stride=1):
    return nn.Conv2d(c_in, c_out, k, stride, k // 2)


BLOCKS = {
    "identity": lambda: nn.Residual(nn.Sequential(conv(3, 3), nn.Tanh(), conv(3, 3))),
    "projection": lambda: nn.Residual(  # no biases before BatchNorm: their gradient is zero
        nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4)),
        nn.Sequential(nn.Conv2d(3, 4, 1, 2, bias=False), nn.BatchNorm2d(4))),
    "pad": lambda: nn.Residual(conv(3, 5, stride=2), models.PadShortcut(2, 2)),
    "concat": lambda: nn.Concat(conv(3, 2, 1), nn.Sequential(conv(3, 2, 1), nn.Tanh(), conv(2, 3)),
                                nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(3, 1, 1))),
    "nested": lambda: nn.Sequential(nn.Concat(conv(3, 2), nn.Residual(conv(3, 3))), conv(5, 2)),
}


@pytest.mark.parametrize("name", BLOCKS)
def test_gradients_match_numerical_differentiation(name):
    shendu.manual_seed(0)
    check_module_gradients(BLOCKS[name](), rand(2, 3, 5, 6, seed=1))


def test_concat_of_features():
    shendu.manual_seed(0)
    check_module_gradients(nn.Concat(nn.Linear(4, 3), nn.Sequential(nn.Linear(4, 2), nn.Tanh())),
                           rand(5, 4, seed=2))


def test_residual_adds_and_concat_stacks():
    """The forward passes themselves, against their definitions."""
    shendu.manual_seed(0)
    body, x = conv(3, 3), rand(2, 3, 4, 4).astype(np.float32)
    np.testing.assert_allclose(nn.Residual(body)(x), body(x) + x, rtol=1e-6)
    a, b = conv(3, 2), conv(3, 4)
    y = nn.Concat(a, b)(x)
    np.testing.assert_array_equal(y[:, :2], a(x))
    np.testing.assert_array_equal(y[:, 2:], b(x))
    assert y.shape == (2, 6, 4, 4)
    shortcut = models.PadShortcut(2, 3)(x)
    assert shortcut.shape == (2, 6, 2, 2) and not shortcut[:, 3:].any()
    np.testing.assert_array_equal(shortcut[:, :3], x[:, :, ::2, ::2])


def test_mismatched_shapes_are_explained():
    x = rand(1, 3, 8, 8).astype(np.float32)
    with pytest.raises(shendu.ShenduError, match="needs a projection shortcut"):
        nn.Residual(conv(3, 4))(x)
    with pytest.raises(shendu.ShenduError, match="differ in more than their channels"):
        nn.Concat(conv(3, 2), conv(3, 2, stride=2))(x)


# ------------------------------------------------------------------ PyTorch as the oracle
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


def test_a_block_first_in_a_network_still_gets_its_gradients():
    """Training skips dL/dx of the input; the first block must still compute its own gradients."""
    shendu.manual_seed(0)
    model = nn.Sequential(nn.Residual(conv(3, 3)), nn.Concat(conv(3, 2), conv(3, 1)), nn.Flatten())
    x = rand(2, 3, 4, 4).astype(np.float32)
    dy = rand(2, 48, seed=1).astype(np.float32)
    model(x)
    model.backward(dy)
    expected = {name: p.grad.copy() for name, p in model.named_parameters()}
    model.zero_grad()
    model(x)
    assert model.backward(dy, input_grad=False) is None
    for name, p in model.named_parameters():
        assert p.grad.any(), name
        np.testing.assert_array_equal(p.grad, expected[name])
