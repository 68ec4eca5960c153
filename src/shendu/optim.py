"""Optimizers and learning-rate schedules, with PyTorch's update rules.

Each `step()` reads `p.grad` of every parameter and updates `p.data` in place.
"""
import math

import numpy as np

from .errors import ShenduError


class Optimizer:
    def __init__(self, params, lr, weight_decay=0.0):
        self.params = list(params)
        if lr <= 0:
            raise ShenduError(f"learning rate must be positive, got {lr}")
        if weight_decay < 0:
            raise ShenduError(f"weight_decay must be non-negative, got {weight_decay}")
        self.lr, self.weight_decay = lr, weight_decay
        self.steps = 0

    def _grad(self, p):
        """The gradient with L2 weight decay folded in (the loss gains ½·wd·‖p‖²)."""
        return p.grad + self.weight_decay * p.data if self.weight_decay else p.grad

    def step(self):
        self.steps += 1
        for i, p in enumerate(self.params):
            self.update(i, p)

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0


class SGD(Optimizer):
    """v ← μ v + g;  p ← p − lr · (g + μ v if Nesterov else v)."""

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        if nesterov and momentum <= 0:
            raise ShenduError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = momentum, nesterov
        self.velocity = [None] * len(self.params)

    def update(self, i, p):
        g = self._grad(p)
        if self.momentum:
            v = self.velocity[i]
            self.velocity[i] = v = g.copy() if v is None else self.momentum * v + g
            g = g + self.momentum * v if self.nesterov else v
        p.data -= self.lr * g


class AdaGrad(Optimizer):
    """h ← h + g²;  p ← p − lr · g / (√h + ε): steps shrink where gradients have been large."""

    def __init__(self, params, lr=0.01, eps=1e-10, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.eps = eps
        self.h = [np.zeros_like(p.data) for p in self.params]

    def update(self, i, p):
        g = self._grad(p)
        self.h[i] += g * g
        p.data -= self.lr * g / (np.sqrt(self.h[i]) + self.eps)


class RMSprop(Optimizer):
    """h ← α h + (1 − α) g²;  p ← p − lr · g / (√h + ε): AdaGrad that forgets old gradients."""

    def __init__(self, params, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.alpha, self.eps = alpha, eps
        self.h = [np.zeros_like(p.data) for p in self.params]

    def update(self, i, p):
        g = self._grad(p)
        self.h[i] *= self.alpha
        self.h[i] += (1 - self.alpha) * g * g
        p.data -= self.lr * g / (np.sqrt(self.h[i]) + self.eps)


class Adam(Optimizer):
    """m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  p ← p − lr · m̂ / (√v̂ + ε), with the bias
    corrections m̂ = m / (1 − β₁ᵗ), v̂ = v / (1 − β₂ᵗ). Weight decay is L2 (added to g)."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.betas, self.eps = betas, eps
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    def update(self, i, p):
        b1, b2 = self.betas
        if self.decoupled:
            p.data *= 1 - self.lr * self.weight_decay
            g = p.grad
        else:
            g = self._grad(p)
        m, v = self.m[i], self.v[i]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        t = self.steps
        step = self.lr / (1 - b1 ** t)
        p.data -= step * m / (np.sqrt(v / (1 - b2 ** t)) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay: p ← p (1 − lr·wd) before the Adam step."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


# -- learning-rate schedules: call step() once per epoch (StepLR, CosineAnnealingLR) or once per
#    batch (OneCycleLR), after optimizer.step(), as in PyTorch.
class _Schedule:
    per_batch = False  # stepped once per epoch, unless the schedule says otherwise

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.count = 0
        optimizer.lr = self.lr_at(0)

    def step(self):
        self.count += 1
        self.optimizer.lr = self.lr_at(self.count)

    def get_last_lr(self):
        return self.optimizer.lr


class StepLR(_Schedule):
    """lr = base · γ^⌊t / step_size⌋."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def lr_at(self, t):
        return self.base_lr * self.gamma ** (t // self.step_size)


class CosineAnnealingLR(_Schedule):
    """lr = η_min + (base − η_min) · (1 + cos(π t / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def lr_at(self, t):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class OneCycleLR(_Schedule):
    """Warm up from max_lr/div_factor to max_lr over pct_start of the steps, then anneal (cosine)
    to max_lr/(div_factor·final_div_factor), as in Smith's one-cycle policy and PyTorch."""

    per_batch = True

    def __init__(self, optimizer, max_lr, total_steps, pct_start=0.3, div_factor=25.0,
                 final_div_factor=1e4):
        self.max_lr, self.total_steps = max_lr, total_steps
        self.initial = max_lr / div_factor
        self.final = self.initial / final_div_factor
        self.warm = float(pct_start * total_steps) - 1
        super().__init__(optimizer)

    def lr_at(self, t):
        def cos(start, end, frac):
            return end + (start - end) * (1 + math.cos(math.pi * frac)) / 2
        if t <= self.warm:
            return cos(self.initial, self.max_lr, t / self.warm)
        return cos(self.max_lr, self.final, (t - self.warm) / (self.total_steps - 1 - self.warm))
