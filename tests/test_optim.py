"""Optimizers and schedules: closed forms by hand, and PyTorch's update rules as the oracle."""
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
    opt = optim.AdaGrad([p], lr=1.0, eps=0.0)
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


torch = pytest.importorskip("torch")

CASES = [
    (optim.SGD, torch.optim.SGD, dict(lr=0.1)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    (optim.AdaGrad, torch.optim.Adagrad, dict(lr=0.1, weight_decay=0.01)),
    (optim.RMSprop, torch.optim.RMSprop, dict(lr=0.01, alpha=0.9)),
    (optim.Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01)),
    (optim.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("ours,theirs,kwargs", CASES, ids=[f"{c[0].__name__}-{c[2]}" for c in CASES])
def test_updates_match_pytorch(ours, theirs, kwargs):
    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 4))
    p = _param(start.copy())
    tp = torch.tensor(start.copy(), requires_grad=True)
    opt, topt = ours([p], **kwargs), theirs([tp], **kwargs)
    for _ in range(6):
        g = rng.standard_normal((3, 4))
        p.grad = g.copy()
        tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_one_cycle_matches_pytorch():
    p = _param([0.0])
    tp = torch.zeros(1, requires_grad=True)
    opt, topt = optim.SGD([p], lr=0.1), torch.optim.SGD([tp], lr=0.1)
    ours = optim.OneCycleLR(opt, max_lr=0.5, total_steps=20)
    theirs = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=0.5, total_steps=20, cycle_momentum=False)
    for _ in range(19):
        assert math.isclose(opt.lr, topt.param_groups[0]["lr"], rel_tol=1e-9)
        topt.step()
        ours.step()
        theirs.step()
