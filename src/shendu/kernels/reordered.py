"""Convolution as direct loops, reordered for the vector units (rung 3 of the ladder).

The loops of kernels/textbook.py, in another order: the innermost loop runs over output channels
(or, for dL/dx, input channels), whose weights and outputs lie side by side in memory, and adds
one product to each without a sum inside it, so that the compiler turns it into vector
instructions (8 or 16 float32 lanes at once). No patch matrix: the input is read where it lies,
and the kernel's taps that fall on the padding are skipped.

Written for reading, not speed: `shendu.kernels.use("reordered")` runs a network on it, and
tests/test_textbook_kernels.py proves it equals kernels/textbook.py. kernels/conv.py goes on from
here: a register tile of ROWS pixels × 16 channels held for a whole sum.
"""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _forward(x, wt, b, stride, pad, relu, y):
    """y[n, i, j, :] = b + Σ_{u, v, c} x[n, i·stride + u − pad, j·stride + v − pad, c] ·
    wt[u, v, c, :], for wt (KH, KW, C, O): the inner loop is over the O outputs."""
    n, h, wd, c = x.shape
    kh, kw, _, o = wt.shape
    for img in prange(n):
        for i in range(y.shape[1]):
            for j in range(y.shape[2]):
                out = y[img, i, j]
                out[:] = b
                for u in range(kh):
                    r = i * stride + u - pad
                    if 0 <= r < h:
                        for v in range(kw):
                            s = j * stride + v - pad
                            if 0 <= s < wd:
                                for ch in range(c):
                                    value = x[img, r, s, ch]
                                    for k in range(o):  # vectorised
                                        out[k] += value * wt[u, v, ch, k]
                if relu:
                    for k in range(o):
                        out[k] = max(out[k], 0)


@njit(parallel=True, cache=True)
def _input_grad(dy, wo, stride, pad, dx):
    """dx[n, r, s, :] = Σ dy[n, i, j, o] · wo[u, v, o, :] over the (i, j, u, v) that read (r, s),
    for wo (KH, KW, O, C): the inner loop is over the C inputs."""
    n, oh, ow, o = dy.shape
    h, wd = dx.shape[1], dx.shape[2]
    kh, kw, _, c = wo.shape
    for img in prange(n):
        dx[img] = 0
        for i in range(oh):
            for j in range(ow):
                for u in range(kh):
                    r = i * stride + u - pad
                    if 0 <= r < h:
                        for v in range(kw):
                            s = j * stride + v - pad
                            if 0 <= s < wd:
                                for k in range(o):
                                    g = dy[img, i, j, k]
                                    for ch in range(c):  # vectorised
                                        dx[img, r, s, ch] += g * wo[u, v, k, ch]


@njit(parallel=True, cache=True)
def _weight_grad(dy, x, stride, pad, dw):
    """dw[u, v, c, :] = Σ_{n, i, j} x[n, i·stride + u − pad, j·stride + v − pad, c] ·
    dy[n, i, j, :], for dw (KH, KW, C, O): each tap its own task, the inner loop over O."""
    n, oh, ow, o = dy.shape
    h, wd, c = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = dw.shape[0], dw.shape[1]
    for tap in prange(kh * kw):
        u, v = tap // kw, tap % kw
        dw[u, v] = 0
        for img in range(n):
            for i in range(oh):
                r = i * stride + u - pad
                if 0 <= r < h:
                    for j in range(ow):
                        s = j * stride + v - pad
                        if 0 <= s < wd:
                            for ch in range(c):
                                value = x[img, r, s, ch]
                                for k in range(o):  # vectorised
                                    dw[u, v, ch, k] += value * dy[img, i, j, k]


def conv_forward(x, w, b, stride, pad, relu=False):
    """x (N, H, W, C) and w (O, C, KH, KW) → y (N, OH, OW, O); max(y, 0) if relu."""
    n, h, wd, c = x.shape
    o, _, kh, kw = w.shape
    y = np.empty((n, (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1, o),
                 x.dtype)
    bias = np.zeros(o, x.dtype) if b is None else b.astype(x.dtype)
    _forward(np.ascontiguousarray(x), np.ascontiguousarray(w.transpose(2, 3, 1, 0)), bias, stride,
             pad, relu, y)
    return y


def conv_backward(dy, x, w, stride, pad, input_grad=True):
    """dL/dx (None unless input_grad), dL/dw (O, C, KH, KW) and dL/db from dy (N, OH, OW, O)."""
    o, c, kh, kw = w.shape
    dy = np.ascontiguousarray(dy)
    dx = None
    if input_grad:
        dx = np.empty(x.shape, dy.dtype)
        _input_grad(dy, np.ascontiguousarray(w.transpose(2, 3, 0, 1)), stride, pad, dx)
    dw = np.empty((kh, kw, c, o), dy.dtype)
    _weight_grad(dy, np.ascontiguousarray(x), stride, pad, dw)
    return dx, np.ascontiguousarray(dw.transpose(3, 2, 0, 1)), dy.reshape(-1, o).sum(axis=0)
