"""Optimizers and learning-rate schedules, with PyTorch's update rules.

Each `step()` reads `p.grad` of every parameter and updates `p.data` in place, where the
parameter lives: SGD, Adam and AdamW run on the CPU and on CUDA (the formulas are
kernels.cpu.sgd_step and adam_step, and their CUDA kernels); per-parameter state follows its
parameter there at the next step.

`state_dict()` / `load_state_dict()` save and restore everything later steps depend on, so a
resumed run continues exactly: plain values (hyperparameters, counters; JSON-safe) and, for
optimizers, the per-parameter arrays under "buffers" ("m.0", "m.1", ... for Adam's first moments).
"""
import math
import numbers

import numpy as np

from . import kernels
from .errors import ShenduError


def _require(name, value, low=0.0, high=math.inf, low_ok=False):
    """A finite number in (low, high), or [low, high) with low_ok: NaN and infinity are refused."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or not (low <= value if low_ok else low < value) or not value < high):
        bounds = f"{'[' if low_ok else '('}{low:g}, {high:g})"
        raise ShenduError(f"{name} must be a finite number in {bounds}, got {value!r}")


def _whole(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ShenduError(f"{name} must be a whole number of at least {low}, got {value!r}")


class Optimizer:
    buffers = ()  # names of the per-parameter state lists (saved as arrays)
    lazy = False  # whether their entries start as None, created by the first step

    def __init__(self, params, lr, weight_decay=0.0):
        self.params = list(params)
        self.lr, self.weight_decay = lr, weight_decay
        self.steps = 0

    def _check(self):
        """Refuse settings no step can use: a clear ShenduError now rather than NaN weights or a
        ZeroDivisionError later (subclasses call it once their settings are set)."""
        _require("learning rate", self.lr)
        _require("weight_decay", self.weight_decay, low_ok=True)
        _whole("steps", self.steps, 0)

    def _grad(self, p):
        """The gradient with L2 weight decay folded in (the loss gains ½·wd·‖p‖²)."""
        return p.grad + self.weight_decay * p.data if self.weight_decay else p.grad

    def step(self):
        self.steps += 1
        for i, p in enumerate(self.params):
            self.update(i, p)

    def zero_grad(self):
        for p in self.params:
            kernels.of(p.grad).fill(p.grad, 0)

    def state_dict(self):
        """{"type": class name, hyperparameters and `steps`..., "buffers": {"m.0": array, ...}}
        (NumPy copies; entries not created yet are left out)."""
        arrays = {f"{name}.{i}": kernels.host_copy(a) for name in self.buffers
                  for i, a in enumerate(getattr(self, name)) if a is not None}
        return {**_plain_state(self, ("params", *self.buffers)), "buffers": arrays}

    def load_state_dict(self, state):
        """Restore a `state_dict` of the same kind of optimizer over parameters of the same shapes.
        Everything is checked before anything changes; a mismatch raises ShenduError."""
        state = dict(state)
        _check_type(self, state)
        arrays = state.pop("buffers", None)
        if not isinstance(arrays, dict):
            raise ShenduError("optimizer state has no \"buffers\" mapping")
        expected = {f"{name}.{i}": p.data
                    for name in self.buffers for i, p in enumerate(self.params)}
        problems = [f"unexpected: {k}" for k in sorted(set(arrays) - set(expected))]
        if not self.lazy:
            problems += [f"missing: {k}" for k in sorted(set(expected) - set(arrays))]
        problems += [f"{k}: shape {np.shape(arrays[k])}, parameter {p.shape}"
                     for k, p in expected.items() if k in arrays and np.shape(arrays[k]) != p.shape]
        if problems:
            raise ShenduError(f"{type(self).__name__} state does not fit its parameters: "
                              + "; ".join(problems))
        _load_plain_state(self, state, ("params", *self.buffers))
        for name in self.buffers:
            setattr(self, name, [np.array(arrays[f"{name}.{i}"], dtype=p.data.dtype)
                                 if f"{name}.{i}" in arrays else None
                                 for i, p in enumerate(self.params)])


class SGD(Optimizer):
    """v ← μ v + g;  p ← p − lr · (g + μ v if Nesterov else v)."""

    buffers, lazy = ("velocity",), True

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum, self.nesterov = momentum, nesterov
        self._check()
        self.velocity = [None] * len(self.params)

    def _check(self):
        super()._check()
        _require("momentum", self.momentum, low_ok=True)
        if self.nesterov and self.momentum <= 0:
            raise ShenduError("Nesterov momentum needs momentum > 0")

    def update(self, i, p):
        K, v = kernels.of(p.data), self.velocity[i]
        self.velocity[i] = K.sgd_step(p.data, p.grad, None if v is None else K.array(v), self.lr,
                                      self.momentum, self.nesterov, self.weight_decay)


class Adagrad(Optimizer):
    """h ← h + g²;  p ← p − lr · g / (√h + ε): steps shrink where gradients have been large."""

    buffers = ("h",)

    def __init__(self, params, lr=0.01, eps=1e-10, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.eps = eps
        self._check()
        self.h = [np.zeros(p.shape, p.data.dtype) for p in self.params]

    def _check(self):
        super()._check()
        _require("eps", self.eps, low_ok=True)

    def update(self, i, p):
        _cpu_only(self, p)
        g = self._grad(p)
        self.h[i] += g * g
        p.data -= self.lr * g / (np.sqrt(self.h[i]) + self.eps)


class RMSprop(Optimizer):
    """h ← α h + (1 − α) g²;  p ← p − lr · g / (√h + ε): Adagrad that forgets old gradients."""

    buffers = ("h",)

    def __init__(self, params, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.alpha, self.eps = alpha, eps
        self._check()
        self.h = [np.zeros(p.shape, p.data.dtype) for p in self.params]

    def _check(self):
        super()._check()
        _require("alpha", self.alpha, high=1, low_ok=True)
        _require("eps", self.eps, low_ok=True)

    def update(self, i, p):
        _cpu_only(self, p)
        g = self._grad(p)
        self.h[i] *= self.alpha
        self.h[i] += (1 - self.alpha) * g * g
        p.data -= self.lr * g / (np.sqrt(self.h[i]) + self.eps)


class Adam(Optimizer):
    """m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  p ← p − lr · m̂ / (√v̂ + ε), with the bias
    corrections m̂ = m / (1 − β₁ᵗ), v̂ = v / (1 − β₂ᵗ). Weight decay is L2 (added to g)."""

    buffers = ("m", "v")
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.betas, self.eps = betas, eps
        self._check()
        self.betas = tuple(betas)
        self.m = [np.zeros(p.shape, p.data.dtype) for p in self.params]
        self.v = [np.zeros(p.shape, p.data.dtype) for p in self.params]

    def _check(self):
        super()._check()
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ShenduError(f"betas must be a pair (β₁, β₂), got {self.betas!r}")
        for name, beta in zip(("β₁", "β₂"), self.betas):
            _require(name, beta, high=1, low_ok=True)
        _require("eps", self.eps, low_ok=True)

    def update(self, i, p):
        K = kernels.of(p.data)
        self.m[i], self.v[i] = K.array(self.m[i]), K.array(self.v[i])
        K.adam_step(p.data, p.grad, self.m[i], self.v[i], self.steps, self.lr, self.betas,
                    self.eps, self.weight_decay, self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay: p ← p (1 − lr·wd) before the Adam step."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


def _cpu_only(optimizer, p):
    if kernels.of(p.data) is not kernels.cpu:
        raise ShenduError(f"{type(optimizer).__name__} has no CUDA update yet: use SGD, Adam or "
                          "AdamW, or keep the model on the CPU")


# -- learning-rate schedules: call step() once per epoch (StepLR, CosineAnnealingLR) or once per
#    batch (OneCycleLR), after optimizer.step(), as in PyTorch.
class _Schedule:
    per_batch = False  # stepped once per epoch, unless the schedule says otherwise

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.count = 0
        self._check()
        optimizer.lr = self.lr_at(0)

    def _check(self):
        """Refuse settings lr_at cannot compute with (a ShenduError, not a ZeroDivisionError)."""
        _require("base learning rate", self.base_lr)
        _whole("count", self.count, 0)

    def step(self):
        self.count += 1
        self.optimizer.lr = self.lr_at(self.count)

    def get_last_lr(self):
        return self.optimizer.lr

    def state_dict(self):
        """Every attribute but the optimizer, as PyTorch's schedules do: plain values."""
        return _plain_state(self, ("optimizer",))

    def load_state_dict(self, state):
        _load_plain_state(self, state, ("optimizer",))


class StepLR(_Schedule):
    """lr = base · γ^⌊t / step_size⌋."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def _check(self):
        super()._check()
        _whole("step_size", self.step_size, 1)
        _require("gamma", self.gamma)

    def lr_at(self, t):
        return self.base_lr * self.gamma ** (t // self.step_size)


class CosineAnnealingLR(_Schedule):
    """lr = η_min + (base − η_min) · (1 + cos(π t / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def _check(self):
        super()._check()
        _require("T_max", self.T_max)
        _require("eta_min", self.eta_min, low_ok=True)

    def lr_at(self, t):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class OneCycleLR(_Schedule):
    """Warm up from max_lr/div_factor to max_lr over pct_start of the steps, then anneal (cosine)
    to max_lr/(div_factor·final_div_factor), as in Smith's one-cycle policy and PyTorch."""

    per_batch = True

    def __init__(self, optimizer, max_lr, total_steps, pct_start=0.3, div_factor=25.0,
                 final_div_factor=1e4):
        _require("max_lr", max_lr)
        _require("pct_start", pct_start, high=1, low_ok=True)
        _require("div_factor", div_factor)
        _require("final_div_factor", final_div_factor)
        self.max_lr, self.total_steps = max_lr, total_steps
        self.initial = max_lr / div_factor
        self.final = self.initial / final_div_factor
        self.warm = float(pct_start * total_steps) - 1
        super().__init__(optimizer)

    def _check(self):
        super()._check()
        _whole("total_steps", self.total_steps, 1)
        for name in ("max_lr", "initial", "final"):
            _require(name, getattr(self, name))
        if not math.isfinite(self.warm) or self.warm == 0 or self.warm == self.total_steps - 1:
            raise ShenduError("OneCycleLR: pct_start × total_steps must not be 1 or total_steps "
                              "(a phase of no steps)")

    def lr_at(self, t):
        def cos(start, end, frac):
            return end + (start - end) * (1 + math.cos(math.pi * frac)) / 2
        if t <= self.warm:
            return cos(self.initial, self.max_lr, t / self.warm)
        return cos(self.max_lr, self.final, (t - self.warm) / (self.total_steps - 1 - self.warm))


# -- state dicts -------------------------------------------------------------------------------
def _plain_state(obj, skip):
    return {"type": type(obj).__name__,
            **{k: v for k, v in vars(obj).items() if k not in skip}}


def _same_kind(value, current):
    """Whether `value` (read back from JSON) may replace `current`: finite numbers for numbers
    (whole ones for ints; never a bool), bools for bools, a list of such for a tuple or list of
    the same length."""
    if isinstance(current, (tuple, list)):
        return (isinstance(value, (tuple, list)) and len(value) == len(current)
                and all(map(_same_kind, value, current)))
    if isinstance(current, bool):
        return isinstance(value, bool)
    if isinstance(current, numbers.Real):  # |value| < 2⁶³: no overflow converting it anywhere
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and abs(value) < 2 ** 63
                and (not isinstance(current, numbers.Integral) or value == int(value)))
    return type(value) is type(current)


def _check_type(obj, state):
    if state.get("type") != type(obj).__name__:
        raise ShenduError(f"the saved state is of a {state.get('type')!r}, not of a "
                          f"{type(obj).__name__}")


def _load_plain_state(obj, state, skip):
    """Set the plain attributes of `obj` from `state`, after checking the type, the names and the
    kind of every value, then its `_check` (a state read from a file must not break a later step);
    on any problem nothing changes and ShenduError says what."""
    state = dict(state)
    _check_type(obj, state)
    kind = state.pop("type")
    current = {k: v for k, v in vars(obj).items() if k not in skip}
    problems = ([f"missing: {k}" for k in sorted(set(current) - set(state))]
                + [f"unexpected: {k}" for k in sorted(set(state) - set(current))]
                + [f"{k}: {state[k]!r} cannot replace {v!r}" for k, v in current.items()
                   if k in state and not _same_kind(state[k], v)])
    if problems:
        raise ShenduError(f"{kind} state does not fit: " + "; ".join(problems))
    for k, v in current.items():
        setattr(obj, k, tuple(state[k]) if isinstance(v, tuple) else state[k])
    try:
        obj._check()
    except ShenduError:
        vars(obj).update(current)
        raise
