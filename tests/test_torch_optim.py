"""Optimizers and schedules against PyTorch's update rules."""
import math

import numpy as np
import pytest

from shendu import optim
from test_optim import _param

torch = pytest.importorskip("torch")

CASES = [
    (optim.SGD, torch.optim.SGD, dict(lr=0.1)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    (optim.Adagrad, torch.optim.Adagrad, dict(lr=0.1, weight_decay=0.01)),
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
