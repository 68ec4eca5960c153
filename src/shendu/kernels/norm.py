"""Batch normalisation over the rows of an (M, C) array (NHWC images flattened to rows), compiled
by Numba: per-channel sums, then one pass over the rows that normalises (forward) or forms dL/dx
(backward).

The sums are split into fixed blocks of rows, summed in parallel and added block by block in
order, so they do not depend on the number of threads (a resumed run stays bitwise); they
accumulate in float64. The blocks are kernels.pointwise's, whose `sum_rows` gives the mean. The
NumPy references beside the kernels are what the tests compare with.

The normalised input x̂ is never stored: BatchNorm keeps its input x, which the layer before it
wrote anyway, and the backward kernels recompute x̂ = (x − μ) / σ as normalize computed it, bit
for bit. That saves a write of the whole batch in every forward pass.

With relu, BatchNorm and the ReLU after it run as one layer (BatchNormReLU2d): normalize
rectifies what it writes, and the backward kernels pass the gradient only where γ x̂ + β > 0, the
forward's own test, recomputed instead of reading the output again.

batch_stats, column_sums, grad_sums, normalize and normalize_backward equal the kernels of the
same names in kernels/textbook.py, the formulas as plain loops; tests/test_textbook_kernels.py
proves it.
"""
import numpy as np
from numba import njit, prange

from .pointwise import BLOCK, add_blocks, sum_rows


def column_sums(a, b, shift):
    """Σ_i a[i] and Σ_i (a[i] − shift) · b[i], per column, in float64.

    Equals `textbook.column_sums`; tested in tests/test_textbook_kernels.py."""
    # Added up here, not inside the kernels: Numba's disk cache would not notice a change to
    # add_blocks, which lives in another file.
    s1, s2 = _block_sums(a, b, shift)
    return add_blocks(s1), add_blocks(s2)


def grad_sums(dy, x, mean, inv_std, gamma, beta, relu):
    """Σ_i g[i] and Σ_i g[i] · x̂[i], per column, in float64, x̂ = (x − μ) / σ recomputed from the
    input x as normalize computes it: g = dy, or with relu dy where γ x̂ + β > 0 (where the ReLU
    let the output through).

    Equals `textbook.grad_sums`; tested in tests/test_textbook_kernels.py."""
    s1, s2 = _grad_block_sums(dy, x, mean, inv_std, gamma, beta, relu)
    return add_blocks(s1), add_blocks(s2)


@njit(parallel=True, cache=True)
def _block_sums(a, b, shift):
    """column_sums of each block of rows."""
    m, c = a.shape
    blocks = (m + BLOCK - 1) // BLOCK
    s1 = np.zeros((blocks, c))
    s2 = np.zeros((blocks, c))
    for k in prange(blocks):
        for i in range(k * BLOCK, min(m, (k + 1) * BLOCK)):
            for j in range(c):
                s1[k, j] += a[i, j]
                s2[k, j] += (a[i, j] - shift[j]) * b[i, j]  # float64, as shift is
    return s1, s2


@njit(parallel=True, cache=True)
def _grad_block_sums(dy, x, mean, inv_std, gamma, beta, relu):
    """grad_sums of each block of rows."""
    m, c = dy.shape
    blocks = (m + BLOCK - 1) // BLOCK
    s1 = np.zeros((blocks, c))
    s2 = np.zeros((blocks, c))
    for k in prange(blocks):
        for i in range(k * BLOCK, min(m, (k + 1) * BLOCK)):
            for j in range(c):
                h = (x[i, j] - mean[j]) * inv_std[j]
                if not relu or h * gamma[j] + beta[j] > 0:
                    s1[k, j] += dy[i, j]
                    s2[k, j] += np.float64(dy[i, j]) * h
    return s1, s2


@njit(parallel=True, cache=True)
def normalize(x, mean, inv_std, gamma, beta, relu, y):
    """y = γ x̂ + β with x̂ = (x − μ) / σ, row by row; then max(y, 0) if relu (BatchNorm followed
    by ReLU in one pass). x̂ is not stored: the backward kernels recompute it from x.

    Equals `textbook.normalize`; tested in tests/test_textbook_kernels.py."""
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            v = (x[i, j] - mean[j]) * inv_std[j] * gamma[j] + beta[j]
            y[i, j] = 0 if relu and v < 0 else v


@njit(parallel=True, cache=True)
def normalize_backward(dy, x, mean, inv_std, mean_dy, mean_dy_xhat, gamma, beta, relu, dx):
    """dx = γ/σ · (g − mean(g) − x̂ · mean(g x̂)), row by row (the two means given), x̂ and g as
    in grad_sums.

    Equals `textbook.normalize_backward`; tested in tests/test_textbook_kernels.py."""
    for i in prange(dy.shape[0]):
        for j in range(dy.shape[1]):
            h = (x[i, j] - mean[j]) * inv_std[j]
            g = dy[i, j] if not relu or h * gamma[j] + beta[j] > 0 else 0
            dx[i, j] = gamma[j] * inv_std[j] * (g - mean_dy[j] - h * mean_dy_xhat[j])


def batch_stats(x):
    """Mean and biased variance of each column of x (M, C), float64, in two passes (no
    cancellation: Σ (x − μ) x = Σ (x − μ)²).

    Equals `textbook.batch_stats`; tested in tests/test_textbook_kernels.py."""
    mean = sum_rows(x) / len(x)
    return mean, column_sums(x, x, mean)[1] / len(x)


def batch_stats_reference(x):
    return x.mean(axis=0, dtype=np.float64), x.var(axis=0, dtype=np.float64)


def normalize_backward_reference(dy, xhat, inv_std, gamma):
    dxhat = dy * gamma
    return (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) * inv_std
