"""Mixed-precision training (Micikevicius et al. 2018): float16 activations and gradients, float32
master weights, dynamic loss scaling.

    trainer = shendu.Trainer(model, optimizer, precision="mixed")   # shendu train --precision mixed

Each step, inside `computing(model)`, every layer with weights computes with a float16 copy of
them on float16 activations (kernels.narrow: each product in float32, as tensor cores do, each
result rounded to 16 bits), while the float32 weights, BatchNorm's statistics and the optimizer
stay as they are: the master copy, which small updates would not move if it were float16. The
loss is computed in float32 from the float16 logits; its gradient times the loss scale S is
rounded to float16 and sent back, so every gradient of the backward pass is S times the true
one, lifted above float16's underflow (magnitudes below 2⁻²⁵ round to zero: `underflow` counts
how many would without S). The weight gradients, float16, are widened to float32 and divided by
S (`LossScaler.unscale`) before the optimizer's float32 step. All of it happens where the model
is, on the CPU or on CUDA (float16 device arrays, kernels.narrow over kernels.cuda).

The scale is dynamic, as PyTorch's GradScaler: a step whose scaled gradients overflowed (inf or
NaN) is not taken and S is halved; after `interval` steps in a row without overflow S doubles.
"""
from contextlib import contextmanager

import numpy as np

from . import kernels, nn
from .errors import ShenduError

HALF = np.dtype(np.float16)


@contextmanager
def computing(model, dtype=HALF):
    """Every module of `model` computes in `dtype` in this block (see Module.compute): layers
    with weights on 16-bit copies of them, BatchNorm on 16-bit inputs with its float32
    statistics. The model's own arrays are not changed."""
    modules = model.modules()
    for m in modules:
        object.__setattr__(m, "compute", dtype)
    try:
        yield
    finally:
        for m in modules:
            object.__setattr__(m, "compute", None)


class LossScaler:
    """Dynamic loss scaling: S starts at `scale`, halves at each overflow and doubles after
    `interval` steps in a row without one (PyTorch's GradScaler: 2¹⁶ and 2000)."""

    def __init__(self, scale=2.0 ** 16, interval=2000):
        self.scale, self.interval = float(scale), int(interval)
        self.clean = 0  # steps since the last overflow or growth

    def gradient(self, model, loss_fn, images, t):
        """Forward and backward in float16 (the loss and its gradient in float32, the gradient
        sent back times S) on the model's device; returns (loss, logits). Afterwards every
        parameter's grad holds S times its gradient, in float16 for layers with weights:
        `unscale` comes next."""
        K = nn.device_of(model)  # the float32 weights' device
        with computing(model):
            logits = model(kernels.narrow.narrow(HALF, K.DEVICE).array(images))
            loss = loss_fn(kernels.narrow.cast(logits, np.float32), t)
            if np.isfinite(loss):
                with np.errstate(over="ignore", invalid="ignore"):  # `unscale` finds inf, NaN
                    scaled = K.scaled(loss_fn.backward(), self.scale)  # exact: S is 2^k
                    nn.data_backward(model, kernels.narrow.cast(scaled, HALF))
        return loss, logits

    def unscale(self, params):
        """Every grad divided by S, in float32; returns whether all are finite (if not, the step
        must not be taken). The scale moves here: halved after an overflow, doubled after
        `interval` clean steps."""
        finite = True
        for p in params:
            K = kernels.of(p.data)
            with np.errstate(over="ignore", invalid="ignore"):
                p.grad = K.scaled(kernels.narrow.cast(p.grad, np.float32), 1 / self.scale)
            finite = finite and K.all_finite(p.grad)
        self.clean = self.clean + 1 if finite else 0
        if not finite:
            self.scale /= 2
        elif self.clean == self.interval:
            self.scale, self.clean = self.scale * 2, 0
        return finite

    def state_dict(self):
        return {"scale": self.scale, "interval": self.interval, "clean": self.clean}

    def load_state_dict(self, state):
        if not (state["scale"] > 0 and state["interval"] >= 1 and 0 <= state["clean"]):
            raise ShenduError(f"a loss scaler's state is out of range: {state}")
        self.scale, self.interval, self.clean = state["scale"], state["interval"], state["clean"]


def underflow(model, x, t, scale=1.0, loss_fn=None):
    """How much of each layer's gradient float16 would lose: for a Sequential model in float32,
    one forward and backward pass on images x (floats) with labels t in training mode, and for
    each layer with weights the share of the nonzero gradient values (dL/d its output, and
    dL/dW) that round to zero in float16 once multiplied by `scale`.

    Returns {"layers": [{"layer", "output", "weight"}, ...] (shares in [0, 1]), "log2": the log₂
    of every nonzero |dL/d output| · scale of those layers together (for a histogram against
    float16's range)}."""
    if not isinstance(model, nn.Sequential) or any(layer._modules for layer in model):
        raise ShenduError(f"underflow walks a Sequential of layers, one by one; this "
                          f"{type(model).__name__} has blocks of layers")
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    was_training = model.training
    model.train()
    try:
        loss_fn(model(x), t)
        dy, rows, logs = loss_fn.backward(), [], []
        for name, layer in reversed(list(model._modules.items())):
            output = dy
            dy = layer.backward(dy)
            weight = layer._params.get("weight")
            if weight is None:
                continue
            rows.append({"layer": f"{name} {type(layer).__name__}",
                         "output": _lost(output, scale), "weight": _lost(weight.grad, scale)})
            logs.append(np.log2(np.abs(output[output != 0]).astype(np.float64) * scale))
    finally:
        model.train(was_training)
    return {"layers": rows[::-1], "log2": np.concatenate(logs)}


def _lost(g, scale):
    """The share of g's nonzero values that float16 rounds to zero once multiplied by scale."""
    nonzero = g[g != 0].astype(np.float64) * scale
    return float(np.mean(nonzero.astype(HALF) == 0)) if nonzero.size else 0.0
