"""The losses: softmax and cross-entropy fused (stable, with the simple gradient
(softmax − target) / N); sigmoid and binary cross-entropy fused, the same way; Huber's."""
import numpy as np

from .. import kernels
from ..errors import ShenduError
from ..kernels.cpu import log_softmax


def softmax(z):
    return np.exp(log_softmax(z))


class CrossEntropyLoss:
    """L = −(1/M) Σ_m Σ_k q[m, k] log softmax(z)[m, k], with q the one-hot label smoothed towards
    uniform: q = (1 − ε) onehot + ε / K, as PyTorch's. The logits are (N, K) with labels (N,), or
    (N, K, d1, ...) with labels (N, d1, ...): one prediction per pixel or per word, the class
    axis second. Labels equal to `ignore_index` (padding) count for nothing, and M is the number
    of the others. The labels are checked on the host; 2-D logits with every label counted are
    computed where they are (kernels.cpu.cross_entropy, or on CUDA), others on the host."""

    def __init__(self, label_smoothing=0.0, ignore_index=-100):
        if not 0 <= label_smoothing < 1:
            raise ShenduError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing, self.ignore_index = label_smoothing, ignore_index
        self.dlogits = None

    def __call__(self, logits, t):
        return self.forward(logits, t)

    def forward(self, logits, t):
        t = np.asarray(t)
        if logits.ndim < 2 or t.shape != (logits.shape[0], *logits.shape[2:]):
            raise ShenduError(f"CrossEntropyLoss expects logits (N, classes, ...) and labels "
                              f"(N, ...), got {tuple(logits.shape)} and {t.shape}")
        k, counted = logits.shape[1], t != self.ignore_index
        labels = t[counted]
        if t.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() >= k)):
            raise ShenduError(f"CrossEntropyLoss expects integer labels in [0, {k}) or "
                              f"{self.ignore_index} (ignored), got {t.dtype} values")
        K = kernels.of(logits)
        if logits.ndim == 2 and counted.all():
            loss, self.dlogits = K.cross_entropy(logits, t, self.label_smoothing)
            return loss
        rows = np.moveaxis(kernels.to_host(logits), 1, -1)  # (N, d1, ..., K)
        d = np.zeros_like(rows)
        loss, d[counted] = (kernels.cpu.cross_entropy(rows[counted], labels,
                                                      self.label_smoothing)
                            if labels.size else (float("nan"), 0))
        self.dlogits = K.array(np.ascontiguousarray(np.moveaxis(d, -1, 1)))
        return loss

    def correct(self, logits, t):
        """How many of the counted labels the logits' largest entries match."""
        t = np.asarray(t)
        counted = t != self.ignore_index
        return int(np.count_nonzero((kernels.to_host(logits).argmax(axis=1) == t) & counted))

    def counted(self, t):
        """How many labels count: those not equal to ignore_index."""
        return int(np.count_nonzero(np.asarray(t) != self.ignore_index))

    def backward(self):
        if self.dlogits is None:
            raise ShenduError("CrossEntropyLoss.backward needs a forward pass first")
        return self.dlogits


class _Elementwise:
    """A loss that is the mean over the elements of a function of prediction and target (same
    shape), computed on the host in float64; its gradient goes back where the prediction is."""

    def __init__(self):
        self.grad = None

    def __call__(self, prediction, target):
        return self.forward(prediction, target)

    def forward(self, prediction, target):
        z, y = kernels.to_host(prediction), np.asarray(kernels.to_host(target))
        if z.shape != y.shape:
            raise ShenduError(f"{type(self).__name__} takes a prediction and a target of one "
                              f"shape, got {tuple(z.shape)} and {y.shape}")
        loss, grad = self._loss(z.astype(np.float64), y.astype(np.float64))
        self.grad = kernels.of(prediction).array((grad / z.size).astype(prediction.dtype))
        return float(loss.mean())

    def backward(self):
        if self.grad is None:
            raise ShenduError(f"{type(self).__name__}.backward needs a forward pass first")
        return self.grad


class BCEWithLogitsLoss(_Elementwise):
    """L = mean(−y log σ(z) − (1 − y) log(1 − σ(z))) for logits z and targets y in [0, 1],
    computed stably as log(1 + e^z) − y z; dL/dz = (σ(z) − y) / N, as PyTorch's."""

    def _loss(self, z, y):
        return np.logaddexp(0, z) - y * z, (1 + np.tanh(z / 2)) / 2 - y  # σ(z), stably


class HuberLoss(_Elementwise):
    """L = mean(½ d² where |d| ≤ δ, else δ (|d| − ½ δ)) for d = prediction − target: squared
    error near the target, absolute error far from it, so a large error's gradient is at most δ
    (DQN's choice, Mnih et al. 2015). As PyTorch's HuberLoss(delta)."""

    def __init__(self, delta=1.0):
        if not delta > 0:
            raise ShenduError(f"HuberLoss needs delta > 0, got {delta}")
        super().__init__()
        self.delta = delta

    def _loss(self, z, y):
        d = z - y
        near = np.abs(d) <= self.delta
        loss = np.where(near, d * d / 2, self.delta * (np.abs(d) - self.delta / 2))
        return loss, np.clip(d, -self.delta, self.delta)
