"""The engine's kernels on the CPU: NumPy arrays, the Numba kernels of conv, pool and norm, and
NumPy for the rest.

kernels.cuda has the same names with the same semantics on device arrays, so that a layer picks
its module by where its input lives (`K = kernels.of(x)`) and is written once. What has no Numba
kernel of its own is a NumPy expression here.
"""
import functools
import threading

import numpy as np
import threadpoolctl

from ..rng import generator, shard_of_batch
from . import conv
from .norm import (batch_stats, column_sums, grad_sums, normalize,  # noqa: F401
                   normalize_backward)
from . import pointwise
from .recurrent import lstm_cell, lstm_cell_backward  # noqa: F401
from .pool import (avgpool_backward, avgpool_forward, maxpool_backward,  # noqa: F401
                   maxpool_forward)

DEVICE = "cpu"


# -- arrays -----------------------------------------------------------------------------------
def array(a):
    """a as a NumPy array: itself when it is one, a copy of a device array, np.asarray else."""
    return a.copy_to_host() if getattr(a, "__cuda_ndarray__", False) else np.asarray(a)


empty, empty_like, zeros = np.empty, np.empty_like, np.zeros
transpose, contiguous = np.transpose, np.ascontiguousarray


def view(x, index):
    """x[index] (basic slicing: a view)."""
    return x[index]


def copy(a):
    return np.array(a)


def copy_into(dst, src):
    """dst[...] = src (same shapes)."""
    np.copyto(dst, src)
    return dst


def fill(a, value):
    a[...] = value


def synchronize():
    """Nothing to wait for: the CPU's kernels have run when they return (kernels.cuda queues)."""


def on_host(f, *args):
    """f(*args): NumPy arithmetic on small arrays (kernels.cuda runs it on host copies)."""
    return f(*args)


# -- layers' arithmetic -----------------------------------------------------------------------
convolution = conv  # the module whose kernels convolve: kernels.use picks another rung


def conv_forward(x, w, b, stride, pad, relu=False):
    """x (N, H, W, C) and w (O, C, KH, KW) → y (N, OH, OW, O); max(y, 0) if relu: by the
    convolution kernels that kernels.use chose (kernels/conv.py's unless told)."""
    return convolution.conv_forward(x, w, b, stride, pad, relu)


def conv_backward(dy, x, w, stride, pad, input_grad=True):
    """(dL/dx or None, dL/dw, dL/db) from dy (N, OH, OW, O), by the same kernels."""
    return convolution.conv_backward(dy, x, w, stride, pad, input_grad)


def matmul(a, b, transpose_a=False, transpose_b=False):
    """op(a) · op(b), op = transpose where asked, by NumPy's BLAS in one thread: a threaded
    product would leave BLAS's threads spinning on the cores Numba's kernels need next (see
    shendu/tuning.py). The course's fully connected layers are small beside its convolutions.
    The limit is the process's, so one thread at a time sets and restores it."""
    with _BLAS_LIMIT, _blas().limit(limits=1):
        return (a.T if transpose_a else a) @ (b.T if transpose_b else b)


_BLAS_LIMIT = threading.Lock()


@functools.cache
def _blas():
    """The BLAS libraries loaded in this process (NumPy's), to limit their threads."""
    return threadpoolctl.ThreadpoolController().select(user_api="blas")


def add_bias(y, b):
    """y += b over y's last axis, in place; y C-contiguous."""
    pointwise.add_bias(y.reshape(-1, y.shape[-1]), b)


def sum_rows(a):
    """Σ_i a[i] for a (M, C): a vector of C, in a's dtype."""
    return pointwise.sum_rows(np.ascontiguousarray(a)).astype(a.dtype)


def add(a, b):
    """a + b (b of a's shape), a new array laid out like a: a residual connection, or the sum of
    the gradients of a layer's input from two paths."""
    return _add(a, b, False)


def add_relu(a, b):
    """max(a + b, 0) (b of a's shape), a new array laid out like a."""
    return _add(a, b, True)


def _add(a, b, relu):
    a = _dense(a)
    b = _laid_out_like(b, a)
    y = np.empty_like(a)
    pointwise.add(_memory_order(a), _memory_order(b), relu, _memory_order(y))
    return y


def multiply(a, b):
    """a · b, b of a's shape or a vector over a's last axis."""
    return a * b


def scaled(a, factor):
    """a · factor, a new array of a's type (mixed precision's loss scale)."""
    return a * a.dtype.type(factor)


def all_finite(a):
    """Whether every value of a is finite (no inf, no NaN)."""
    return bool(np.isfinite(a).all())


def _memory_order(a):
    """a's elements as a 1-D view in the order they lie in memory, when a is C-contiguous or a
    transpose of such (as the NCHW views of NHWC images are); None otherwise."""
    order = np.argsort([-s for s in a.strides], kind="stable")
    t = a.transpose(order)
    return t.reshape(-1) if t.flags.c_contiguous else None


def _dense(a):
    """a itself when its memory is dense (see _memory_order), else a C-contiguous copy."""
    return a if _memory_order(a) is not None else np.ascontiguousarray(a)


def _laid_out_like(a, b):
    """a (of b's shape) in b's memory layout, b dense: itself when it already is, else a copy."""
    if a.strides == b.strides:
        return a
    out = np.empty_like(b, dtype=a.dtype)
    out[...] = a
    return out


def relu_forward(x):
    """max(x, 0), a new array laid out like x."""
    x = _dense(x)
    y = np.empty_like(x)  # order "K": x's layout
    pointwise.relu(_memory_order(x), _memory_order(y))
    return y


def relu_backward(dy, y):
    """dL/dx = dy where the output y (or the input) is > 0, laid out like y."""
    y = _dense(y)
    dy = _laid_out_like(dy, y)
    dx = np.empty_like(y, dtype=dy.dtype)
    pointwise.relu_backward(_memory_order(dy), _memory_order(y), _memory_order(dx))
    return dx


def leaky_relu_forward(x, slope):
    """x where x > 0, else slope · x: a new array laid out like x."""
    x = _dense(x)
    y = np.empty_like(x)
    pointwise.leaky_relu(_memory_order(x), x.dtype.type(slope), _memory_order(y))
    return y


def leaky_relu_backward(dy, x, slope):
    """dL/dx = dy where the input x > 0, else slope · dy, laid out like x."""
    x = _dense(x)
    dy = _laid_out_like(dy, x)
    dx = np.empty_like(x, dtype=dy.dtype)
    pointwise.leaky_relu_backward(_memory_order(dy), _memory_order(x), dy.dtype.type(slope),
                                  _memory_order(dx))
    return dx


def embedding_forward(table, index):
    """table[index] for a flat index of T rows: (T, D)."""
    out = np.empty((index.size, table.shape[1]), table.dtype)
    pointwise.gather_rows(table, index, out)
    return out


def embedding_backward(dy, index, rows):
    """dL/dtable (rows, D): each token's dy (T, D) added into its row, in token order."""
    grad = np.zeros((rows, dy.shape[1]), dy.dtype)
    pointwise.add_rows_at(np.ascontiguousarray(dy), index, grad)
    return grad


def global_avgpool_forward(x):
    """(N, C, H, W) → (N, C): each channel's mean."""
    return x.mean(axis=(2, 3))


def global_avgpool_backward(dy, shape):
    """dL/dx (N, C, H, W) = dy / (H·W) at every position."""
    n, c, h, w = shape
    return np.broadcast_to((dy / (h * w))[:, :, None, None], shape).copy()


def dropout_mask(x, p):
    """Inverted dropout's mask for x, drawn from shendu's generator: 0 with probability p, else
    1 / (1 − p). A shard of a batch (`rng.batch_shard`) gets its rows of the whole batch's mask."""
    keep = shard_of_batch(lambda shape: generator().random(shape, dtype=np.float32), x.shape) >= p
    return keep.astype(x.dtype) / (1 - p)


# -- loss -------------------------------------------------------------------------------------
def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)  # exp never overflows
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits, t, label_smoothing=0.0):
    """The mean loss −(1/N) Σ q · log softmax(z) (a Python float) and dL/dlogits = (softmax − q)
    / N, for logits (N, K) and valid integer labels t, the target q = (1 − ε) onehot + ε / K."""
    n, k = logits.shape
    q = np.full((n, k), label_smoothing / k, logits.dtype)
    q[np.arange(n), t] += 1 - label_smoothing
    logp = log_softmax(logits)
    return float(-(q * logp).sum() / n), (np.exp(logp) - q) / n


# -- optimizer updates (in place) ---------------------------------------------------------------
def sgd_step(p, grad, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """g = grad + wd·p; v ← μ v + g (v = g at the first step, velocity None); p ← p − lr ·
    (g + μ v if Nesterov else v), or p − lr·g without momentum. Returns the velocity (None
    without momentum)."""
    g = grad + weight_decay * p if weight_decay else grad
    if momentum:
        velocity = g.copy() if velocity is None else momentum * velocity + g
        g = g + momentum * velocity if nesterov else velocity
    p -= lr * g
    return velocity if momentum else None


def adam_step(p, grad, m, v, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              decoupled=False):
    """Step t (1, 2, ...) of Adam on p with the moments m and v; decoupled: AdamW's decay."""
    b1, b2 = betas
    if decoupled:
        p *= 1 - lr * weight_decay
        g = grad
    else:
        g = grad + weight_decay * p if weight_decay else grad
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    step = lr / (1 - b1 ** t)
    p -= step * m / (np.sqrt(v / (1 - b2 ** t)) + eps)
