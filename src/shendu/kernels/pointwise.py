"""Element-wise kernels on the CPU, compiled by Numba: ReLU forward and backward, a sum (with the
ReLU after it or not), the bias added along the last axis, and the column sums that give the bias
its gradient. NumPy runs each of these on one core, through temporaries; here both cores work in
one pass.

ReLU's kernels and the sum take arrays flattened in memory order (kernels.cpu passes the NCHW
views of NHWC images that way); the others take (M, C) arrays, one row per position. Column sums
are split into fixed blocks of rows added in order, so they do not depend on the number of threads
(a resumed run stays bitwise); kernels.norm and kernels.cuda sum over the same blocks.
"""
import numpy as np
from numba import njit, prange

BLOCK = 1024  # rows per partial sum


@njit(parallel=True, cache=True)
def relu(x, y):
    """y = max(x, 0); NaN stays NaN, as with np.maximum.

    y equals `textbook.relu_forward(x)`; tested in tests/test_textbook_kernels.py."""
    for i in prange(x.size):
        y[i] = 0 if x[i] < 0 else x[i]


@njit(parallel=True, cache=True)
def relu_backward(dy, y, dx):
    """dx = dy where y > 0, else 0.

    dx equals `textbook.relu_backward(dy, y)`; tested in tests/test_textbook_kernels.py."""
    for i in prange(y.size):
        dx[i] = dy[i] if y[i] > 0 else 0


@njit(parallel=True, cache=True)
def leaky_relu(x, slope, y):
    """y = x where x > 0, else slope · x (slope of x's type)."""
    for i in prange(x.size):
        y[i] = x[i] if x[i] > 0 else slope * x[i]


@njit(parallel=True, cache=True)
def leaky_relu_backward(dy, x, slope, dx):
    """dx = dy where x > 0, else slope · dy."""
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else slope * dy[i]


@njit(parallel=True, cache=True)
def gather_rows(table, index, out):
    """out[t] = table[index[t]]: an embedding's lookup."""
    for t in prange(index.size):
        out[t] = table[index[t]]


@njit(parallel=True, cache=True)
def add_rows_at(dy, index, grad):
    """grad[v] += Σ dy[t] over the t with index[t] = v, in the order of t: each row of grad is
    one thread's, so the sums do not depend on the number of threads."""
    for v in prange(grad.shape[0]):
        for t in range(index.size):
            if index[t] == v:
                grad[v] += dy[t]


@njit(parallel=True, cache=True)
def add(a, b, relu, y):
    """y = a + b; with relu max(a + b, 0): a residual block's sum and the ReLU after it, in one
    pass."""
    for i in prange(y.size):
        s = a[i] + b[i]
        y[i] = 0 if relu and s < 0 else s


@njit(parallel=True, cache=True)
def add_bias(y, b):
    """y[i] += b for every row i, in place."""
    for i in prange(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] += b[j]


@njit(parallel=True, cache=True)
def sum_rows(a):
    """Σ_i a[i], per column, accumulated in float64."""
    m, c = a.shape
    blocks = (m + BLOCK - 1) // BLOCK
    partial = np.zeros((blocks, c))
    for k in prange(blocks):
        for i in range(k * BLOCK, min(m, (k + 1) * BLOCK)):
            for j in range(c):
                partial[k, j] += a[i, j]
    return add_blocks(partial)


@njit(cache=True)
def add_blocks(partial):
    """Σ_k partial[k], block by block, in order (the same bits as partial.sum(axis=0), which
    inside a parallel kernel takes seconds longer to compile)."""
    total = np.zeros(partial.shape[1], partial.dtype)
    for k in range(partial.shape[0]):
        total += partial[k]
    return total
