"""Residual and Concat: gradients through a fork are sums (numerical checks); test_torch_graph.py
checks a ResNet block and an Inception block against the same blocks built in PyTorch."""
import numpy as np
import pytest

import shendu
from gradcheck import check_module_gradients, rand
from shendu import models, nn


def conv(c_in, c_out, k=3, stride=1):
    return nn.Conv2d(c_in, c_out, k, stride, k // 2)


BLOCKS = {
    "identity": lambda: nn.Residual(nn.Sequential(conv(3, 3), nn.Tanh(), conv(3, 3))),
    "projection": lambda: nn.Residual(  # no biases before BatchNorm: their gradient is zero
        nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4)),
        nn.Sequential(nn.Conv2d(3, 4, 1, 2, bias=False), nn.BatchNorm2d(4))),
    "pad": lambda: nn.Residual(conv(3, 5, stride=2), models.PadShortcut(2, 2)),
    "relu": lambda: nn.ResidualReLU(nn.Residual(conv(3, 5, stride=2), models.PadShortcut(2, 2))),
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
