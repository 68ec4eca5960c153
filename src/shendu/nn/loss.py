"""Softmax and cross-entropy fused: stable, and with the simple gradient (softmax − target) / N."""
import numpy as np

from .. import kernels
from ..errors import ShenduError
from ..kernels.cpu import log_softmax


def softmax(z):
    return np.exp(log_softmax(z))


class CrossEntropyLoss:
    """L = −(1/N) Σ_n Σ_k q[n, k] log softmax(z)[n, k], with q the one-hot label smoothed towards
    uniform: q = (1 − ε) onehot + ε / K. The labels are checked on the host; the loss is computed
    where the logits are (kernels.cpu.cross_entropy, or on CUDA)."""

    def __init__(self, label_smoothing=0.0):
        if not 0 <= label_smoothing < 1:
            raise ShenduError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.dlogits = None

    def __call__(self, logits, t):
        return self.forward(logits, t)

    def forward(self, logits, t):
        if logits.ndim != 2:
            raise ShenduError(f"CrossEntropyLoss expects logits (N, classes), got "
                              f"{tuple(logits.shape)}")
        n, k = logits.shape
        t = np.asarray(t)
        if t.shape != (n,) or t.dtype.kind not in "iu" or (n and (t.min() < 0 or t.max() >= k)):
            raise ShenduError(f"CrossEntropyLoss expects {n} integer labels in [0, {k}), "
                              f"got shape {t.shape} dtype {t.dtype}")
        loss, self.dlogits = kernels.of(logits).cross_entropy(logits, t, self.label_smoothing)
        return loss

    def backward(self):
        if self.dlogits is None:
            raise ShenduError("CrossEntropyLoss.backward needs a forward pass first")
        return self.dlogits
