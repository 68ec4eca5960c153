"""Optimizers and schedules: closed forms by hand; test_torch_optim.py takes PyTorch's update
rules as the oracle."""
import math

import numpy as np
import pytest

from shendu import nn, optim


def _param(values):
    p = nn.Parameter(np.array(values, np.float64))
    return p


def test_sgd_step_by_hand():
    p = _param([1.0, -2.0])
    p.grad = np.array([0.5, 0.25])
    optim.SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [0.95, -2.025])


def test_momentum_by_hand():
    p = _param([0.0])
    opt = optim.SGD([p], lr=1.0, momentum=0.5)
    for _ in range(3):
        p.grad = np.array([1.0])
        opt.step()
    # v: 1, 1.5, 1.75  →  p = −(1 + 1.5 + 1.75)
    np.testing.assert_allclose(p.data, [-4.25])


def test_adam_first_step_moves_by_lr():
    # with bias correction, Adam's first step is lr · g/|g| whatever the gradient's scale
    p = _param([1.0, 1.0])
    p.grad = np.array([1e-3, -50.0])
    optim.Adam([p], lr=0.01).step()
    np.testing.assert_allclose(p.data, [0.99, 1.01], rtol=1e-6)


def test_adagrad_by_hand():
    p = _param([0.0])
    opt = optim.Adagrad([p], lr=1.0, eps=0.0)
    for g in (3.0, 4.0):
        p.grad = np.array([g])
        opt.step()
    np.testing.assert_allclose(p.data, [-1.0 - 4.0 / 5.0])


def test_schedules_by_hand():
    opt = optim.SGD([_param([0.0])], lr=1.0)
    step = optim.StepLR(opt, step_size=2, gamma=0.5)
    lrs = [opt.lr]
    for _ in range(5):
        step.step()
        lrs.append(opt.lr)
    assert lrs == [1, 1, 0.5, 0.5, 0.25, 0.25]
    opt = optim.SGD([_param([0.0])], lr=2.0)
    cos = optim.CosineAnnealingLR(opt, T_max=4, eta_min=0.0)
    seen = [opt.lr]
    for _ in range(4):
        cos.step()
        seen.append(opt.lr)
    np.testing.assert_allclose(seen, [2, 1 + math.sqrt(0.5), 1, 1 - math.sqrt(0.5), 0], atol=1e-12)


def test_bad_settings_are_refused():
    from shendu import ShenduError
    with pytest.raises(ShenduError, match="learning rate"):
        optim.Adam([_param([0.0])], lr=-1)
    with pytest.raises(ShenduError, match="Nesterov"):
        optim.SGD([_param([0.0])], lr=0.1, nesterov=True)
