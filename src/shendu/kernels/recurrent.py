"""The element-wise half of an LSTM step, compiled by Numba (the matrix products around it are
BLAS's): one row of the batch per thread.

Gates are (N, 4H) in PyTorch's order: input i, forget f, cell candidate g, output o.
"""
import math

from numba import njit, prange


@njit(cache=True)
def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


@njit(parallel=True, cache=True)
def lstm_cell(gates, c_prev, acts, c, h):
    """From the pre-activations `gates`: acts = [σ(i), σ(f), tanh(g), σ(o)],
    c = σ(f) c_prev + σ(i) tanh(g) and h = σ(o) tanh(c)."""
    n, size = c.shape
    for r in prange(n):
        for j in range(size):
            i, f = _sigmoid(gates[r, j]), _sigmoid(gates[r, size + j])
            g, o = math.tanh(gates[r, 2 * size + j]), _sigmoid(gates[r, 3 * size + j])
            acts[r, j], acts[r, size + j], acts[r, 2 * size + j], acts[r, 3 * size + j] = i, f, g, o
            c[r, j] = f * c_prev[r, j] + i * g
            h[r, j] = o * math.tanh(c[r, j])


@njit(parallel=True, cache=True)
def lstm_cell_backward(dh, dc_next, acts, c_prev, c, dgates, dc_prev):
    """The step's gradients from dL/dh and the dL/dc coming back from the next step: dL/dgates
    (through each gate's activation) and dL/dc_prev = dL/dc · f."""
    n, size = c.shape
    for r in prange(n):
        for j in range(size):
            i, f = acts[r, j], acts[r, size + j]
            g, o = acts[r, 2 * size + j], acts[r, 3 * size + j]
            tc = math.tanh(c[r, j])
            dc = dh[r, j] * o * (1 - tc * tc) + dc_next[r, j]
            dgates[r, j] = dc * g * i * (1 - i)
            dgates[r, size + j] = dc * c_prev[r, j] * f * (1 - f)
            dgates[r, 2 * size + j] = dc * i * (1 - g * g)
            dgates[r, 3 * size + j] = dh[r, j] * tc * o * (1 - o)
            dc_prev[r, j] = dc * f
