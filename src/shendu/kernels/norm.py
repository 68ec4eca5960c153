"""Batch normalisation over the rows of an (M, C) array (NHWC images flattened to rows), compiled
by Numba: per-channel sums, then one pass over the rows that normalises (forward) or forms dL/dx
(backward).

The sums are split into fixed blocks of rows, summed in parallel and added block by block in
order, so they do not depend on the number of threads (a resumed run stays bitwise); they
accumulate in float64. The blocks are kernels.pointwise's, whose `sum_rows` gives the mean. The
NumPy references beside the kernels are what the tests compare with.

batch_stats, column_sums, normalize and normalize_backward equal the kernels of the same names in
kernels/textbook.py, the formulas as plain loops; tests/test_textbook_kernels.py proves it.
"""
import numpy as np
from numba import njit, prange

from .pointwise import BLOCK, add_blocks, sum_rows


def column_sums(a, b, shift):
    """Σ_i a[i] and Σ_i (a[i] − shift) · b[i], per column, in float64.

    Equals `textbook.column_sums`; tested in tests/test_textbook_kernels.py."""
    # Added up here, not inside the kernel: Numba's disk cache would not notice a change to
    # add_blocks, which lives in another file.
    s1, s2 = _block_sums(a, b, shift)
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
                s2[k, j] += (a[i, j] - shift[j]) * b[i, j]
    return s1, s2


@njit(parallel=True, cache=True)
def normalize(x, mean, inv_std, gamma, beta, xhat, y):
    """x̂ = (x − μ) / σ and y = γ x̂ + β, row by row.

    Equals `textbook.normalize`; tested in tests/test_textbook_kernels.py."""
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            h = (x[i, j] - mean[j]) * inv_std[j]
            xhat[i, j] = h
            y[i, j] = h * gamma[j] + beta[j]


@njit(parallel=True, cache=True)
def normalize_backward(dy, xhat, mean_dy, mean_dy_xhat, scale, dx):
    """dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy x̂)), row by row (scale = γ/σ).

    Equals `textbook.normalize_backward`; tested in tests/test_textbook_kernels.py."""
    for i in prange(dy.shape[0]):
        for j in range(dy.shape[1]):
            dx[i, j] = scale[j] * (dy[i, j] - mean_dy[j] - xhat[i, j] * mean_dy_xhat[j])


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
