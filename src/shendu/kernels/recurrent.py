"""The element-wise half of an LSTM step, compiled by Numba (the matrix products around it are
BLAS's): one row of the batch per thread. `cell` and `cell_backward` are the arithmetic of one
unit, written once: compiled here for the CPU's loops, and by kernels.cuda as device functions.

Gates are (N, 4H) in PyTorch's order: input i, forget f, cell candidate g, output o.
"""
import math

from numba import njit, prange


def cell(i, f, g, o, c_prev):
    """One unit's step from its four pre-activations: the gates σ(i), σ(f), tanh(g), σ(o), then
    c = σ(f) c_prev + σ(i) tanh(g) and h = σ(o) tanh(c)."""
    i, f = 1 / (1 + math.exp(-i)), 1 / (1 + math.exp(-f))
    g, o = math.tanh(g), 1 / (1 + math.exp(-o))
    c = f * c_prev + i * g
    return i, f, g, o, c, o * math.tanh(c)


def cell_backward(i, f, g, o, c_prev, c, dh, dc_next):
    """Its gradients from dL/dh and the dL/dc coming back from the next step: dL/d each
    pre-activation (through its gate's activation) and dL/dc_prev = dL/dc · f."""
    tc = math.tanh(c)
    dc = dh * o * (1 - tc * tc) + dc_next
    return (dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
            dh * tc * o * (1 - o), dc * f)


_cell, _cell_backward = njit(cell), njit(cell_backward)


@njit(parallel=True, cache=True)
def lstm_cell(gates, c_prev, acts, c, h):
    """`cell` for every unit: acts = the gates (N, 4H), and the new c and h (N, H)."""
    n, size = c.shape
    for r in prange(n):
        for j in range(size):
            (acts[r, j], acts[r, size + j], acts[r, 2 * size + j], acts[r, 3 * size + j],
             c[r, j], h[r, j]) = _cell(gates[r, j], gates[r, size + j], gates[r, 2 * size + j],
                                       gates[r, 3 * size + j], c_prev[r, j])


@njit(parallel=True, cache=True)
def lstm_cell_backward(dh, dc_next, acts, c_prev, c, dgates, dc_prev):
    """`cell_backward` for every unit: dgates (N, 4H) and dc_prev (N, H)."""
    n, size = c.shape
    for r in prange(n):
        for j in range(size):
            (dgates[r, j], dgates[r, size + j], dgates[r, 2 * size + j],
             dgates[r, 3 * size + j], dc_prev[r, j]) = _cell_backward(
                acts[r, j], acts[r, size + j], acts[r, 2 * size + j], acts[r, 3 * size + j],
                c_prev[r, j], c[r, j], dh[r, j], dc_next[r, j])
