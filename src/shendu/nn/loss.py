"""Softmax and cross-entropy fused: stable, and with the simple gradient (softmax − target) / N."""
import numpy as np

from ..errors import ShenduError


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)  # exp never overflows
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


class CrossEntropyLoss:
    """L = −(1/N) Σ_n Σ_k q[n, k] log softmax(z)[n, k], with q the one-hot label smoothed towards
    uniform: q = (1 − ε) onehot + ε / K."""

    def __init__(self, label_smoothing=0.0):
        if not 0 <= label_smoothing < 1:
            raise ShenduError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.cache = None

    def __call__(self, logits, t):
        return self.forward(logits, t)

    def _target(self, t, n, k, dtype):
        t = np.asarray(t)
        if t.shape != (n,) or t.dtype.kind not in "iu" or (n and (t.min() < 0 or t.max() >= k)):
            raise ShenduError(f"CrossEntropyLoss expects {n} integer labels in [0, {k}), "
                              f"got shape {t.shape} dtype {t.dtype}")
        q = np.full((n, k), self.label_smoothing / k, dtype)
        q[np.arange(n), t] += 1 - self.label_smoothing
        return q

    def forward(self, logits, t):
        if logits.ndim != 2:
            raise ShenduError(f"CrossEntropyLoss expects logits (N, classes), got {logits.shape}")
        n, k = logits.shape
        q = self._target(t, n, k, logits.dtype)
        logp = log_softmax(logits)
        self.cache = (np.exp(logp), q)
        return float(-(q * logp).sum() / n)

    def backward(self):
        if self.cache is None:
            raise ShenduError("CrossEntropyLoss.backward needs a forward pass first")
        p, q = self.cache
        return (p - q) / p.shape[0]
