"""The layers' kernels written as the loops of a textbook, compiled by Numba: read these first.

Each kernel is the formula in its docstring, one loop per index of the formula, and takes the
arguments of the fast kernel of the same name in kernels.cpu, in the same layouts: images NHWC
(N, H, W, C), convolution weights (O, C, KH, KW), BatchNorm's inputs (M, C), one row per position.
Pooling and BatchNorm write into the arrays they are given, as the fast kernels do; convolution
and ReLU return new arrays. A sum that gives one output element accumulates in float64
(`total = 0.0`) and is stored in the inputs' dtype; the input gradients of convolution and
pooling add each term into dx where it belongs.

The fast kernels (kernels/conv.py, pool.py, norm.py, pointwise.py and cuda.py) compute the same
numbers in other orders; each says in its docstring which kernel here it equals, and
tests/test_textbook_kernels.py proves it: float64 to 1e-12, float32 within rounding. These loops
are written for reading, not for speed.

Index names: n image (`img` in the loops), (i, j) output pixel, (r, s) input pixel, c input
channel (`ch` in the loops, c being their number), o output channel, (u, v) convolution tap and
(a, b) pooling tap (row, column in the kernel or window); BatchNorm's rows i and columns j.
"""
import numpy as np
from numba import njit, prange


# -- convolution ------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def conv_forward(x, w, b, stride, pad, relu=False):
    """y[n, i, j, o] = b[o] + Σ_{u, v, c} x[n, i·stride + u − pad, j·stride + v − pad, c] ·
    w[o, c, u, v], x zero outside the image; then max(y, 0) if relu. x (N, H, W, C) and
    w (O, C, KH, KW) → y (N, OH, OW, O); b (O,) or None (no bias)."""
    n, h, wd, c = x.shape
    outs, _, kh, kw = w.shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    y = np.empty((n, oh, ow, outs), x.dtype)
    for img in prange(n):
        for i in range(oh):
            for j in range(ow):
                for o in range(outs):
                    total = 0.0
                    if b is not None:
                        total = b[o]
                    for u in range(kh):
                        for v in range(kw):
                            r, s = i * stride + u - pad, j * stride + v - pad
                            if 0 <= r < h and 0 <= s < wd:
                                for ch in range(c):
                                    total += x[img, r, s, ch] * w[o, ch, u, v]
                    if relu and total < 0:
                        total = 0.0
                    y[img, i, j, o] = total
    return y


def conv_backward(dy, x, w, stride, pad, input_grad=True):
    """The gradients of L through y = conv_forward(x, w, b, stride, pad), from dy = dL/dy:
    (dL/dx or None unless input_grad, dL/dw, dL/db), each its own loops below."""
    dx = conv_input_grad(dy, w, stride, pad, x.shape) if input_grad else None
    return dx, conv_weight_grad(dy, x, stride, pad, w.shape[2], w.shape[3]), conv_bias_grad(dy)


@njit(parallel=True, cache=True)
def conv_input_grad(dy, w, stride, pad, x_shape):
    """dL/dx[n, r, s, c] = Σ dy[n, i, j, o] · w[o, c, u, v] over every (i, j, o, u, v) with
    i·stride + u − pad = r and j·stride + v − pad = s: each input that y[n, i, j, o] read gets
    dy[n, i, j, o] times the weight it was multiplied by."""
    n, oh, ow, outs = dy.shape
    _, h, wd, c = x_shape
    kh, kw = w.shape[2], w.shape[3]
    dx = np.zeros(x_shape, dy.dtype)
    for img in prange(n):
        for i in range(oh):
            for j in range(ow):
                for o in range(outs):
                    for u in range(kh):
                        for v in range(kw):
                            r, s = i * stride + u - pad, j * stride + v - pad
                            if 0 <= r < h and 0 <= s < wd:
                                for ch in range(c):
                                    dx[img, r, s, ch] += dy[img, i, j, o] * w[o, ch, u, v]
    return dx


@njit(parallel=True, cache=True)
def conv_weight_grad(dy, x, stride, pad, kh, kw):
    """dL/dw[o, c, u, v] = Σ_{n, i, j} dy[n, i, j, o] · x[n, i·stride + u − pad, j·stride + v − pad,
    c], x zero outside the image: each weight meets, at every output pixel, the input under it."""
    n, oh, ow, outs = dy.shape
    _, h, wd, c = x.shape
    dw = np.empty((outs, c, kh, kw), dy.dtype)
    for o in prange(outs):
        for ch in range(c):
            for u in range(kh):
                for v in range(kw):
                    total = 0.0
                    for img in range(n):
                        for i in range(oh):
                            for j in range(ow):
                                r, s = i * stride + u - pad, j * stride + v - pad
                                if 0 <= r < h and 0 <= s < wd:
                                    total += dy[img, i, j, o] * x[img, r, s, ch]
                    dw[o, ch, u, v] = total
    return dw


@njit(cache=True)
def conv_bias_grad(dy):
    """dL/db[o] = Σ_{n, i, j} dy[n, i, j, o]: the bias is added at every output pixel."""
    n, oh, ow, outs = dy.shape
    db = np.empty(outs, dy.dtype)
    for o in range(outs):
        total = 0.0
        for img in range(n):
            for i in range(oh):
                for j in range(ow):
                    total += dy[img, i, j, o]
        db[o] = total
    return db


# -- pooling ----------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def maxpool_forward(x, k, stride, pad, y, arg):
    """y[n, i, j, c] = max_{a, b} x[n, i·stride + a − pad, j·stride + b − pad, c] over the cells
    of the k × k window inside the image (padding never wins); unless arg is None, arg[n, i, j, c]
    = r·W + s of the first cell (a, then b) that holds the maximum, for maxpool_backward."""
    n, h, w, c = x.shape
    for img in prange(n):
        for i in range(y.shape[1]):
            for j in range(y.shape[2]):
                for ch in range(c):
                    best = -np.inf
                    # the window's first cell in the image: the winner if no cell beats -inf
                    where = max(i * stride - pad, 0) * w + max(j * stride - pad, 0)
                    for a in range(k):
                        for b in range(k):
                            r, s = i * stride + a - pad, j * stride + b - pad
                            if 0 <= r < h and 0 <= s < w and x[img, r, s, ch] > best:
                                best, where = x[img, r, s, ch], r * w + s
                    y[img, i, j, ch] = best
                    if arg is not None:
                        arg[img, i, j, ch] = where


@njit(parallel=True, cache=True)
def maxpool_backward(dy, arg, dx):
    """dL/dx[n, r, s, c] = Σ dy[n, i, j, c] over the windows (i, j) whose maximum was x[n, r, s, c]
    (arg[n, i, j, c] = r·W + s, from maxpool_forward); 0 at the inputs that won no window."""
    n, oh, ow, c = dy.shape
    w = dx.shape[2]
    for img in prange(n):
        dx[img] = 0
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    r, s = arg[img, i, j, ch] // w, arg[img, i, j, ch] % w
                    dx[img, r, s, ch] += dy[img, i, j, ch]


@njit(parallel=True, cache=True)
def avgpool_forward(x, k, stride, pad, y):
    """y[n, i, j, c] = Σ_{a, b} x[n, i·stride + a − pad, j·stride + b − pad, c] / k², x zero
    outside the image (padded cells count in the mean, as zeros)."""
    n, h, w, c = x.shape
    for img in prange(n):
        for i in range(y.shape[1]):
            for j in range(y.shape[2]):
                for ch in range(c):
                    total = 0.0
                    for a in range(k):
                        for b in range(k):
                            r, s = i * stride + a - pad, j * stride + b - pad
                            if 0 <= r < h and 0 <= s < w:
                                total += x[img, r, s, ch]
                    y[img, i, j, ch] = total / (k * k)


@njit(parallel=True, cache=True)
def avgpool_backward(dy, k, stride, pad, dx):
    """dL/dx[n, r, s, c] = Σ dy[n, i, j, c] / k² over the windows (i, j) that cover (r, s): each
    cell of a window gets an equal share of the window's gradient."""
    n, oh, ow, c = dy.shape
    h, w = dx.shape[1], dx.shape[2]
    for img in prange(n):
        dx[img] = 0
        for i in range(oh):
            for j in range(ow):
                for a in range(k):
                    for b in range(k):
                        r, s = i * stride + a - pad, j * stride + b - pad
                        if 0 <= r < h and 0 <= s < w:
                            for ch in range(c):
                                dx[img, r, s, ch] += dy[img, i, j, ch] / (k * k)


# -- ReLU -------------------------------------------------------------------------------------
@njit(cache=True)
def relu_forward(x):
    """y = max(x, 0), element by element (NaN stays NaN: it is not < 0), a new C-ordered array
    (kernels.cpu's keeps x's memory layout; the values are the same)."""
    y = np.empty_like(x)
    for index in np.ndindex(x.shape):
        y[index] = 0 if x[index] < 0 else x[index]
    return y


@njit(cache=True)
def relu_backward(dy, y):
    """dL/dx = dy where y > 0, else 0, a new C-ordered array (y the forward output, or its
    input: both are > 0 at the same places)."""
    dx = np.empty(y.shape, dy.dtype)
    for index in np.ndindex(y.shape):
        dx[index] = dy[index] if y[index] > 0 else 0
    return dx


# -- batch normalisation ----------------------------------------------------------------------
@njit(cache=True)
def batch_stats(x):
    """μ[j] = Σ_i x[i, j] / M and σ²[j] = Σ_i (x[i, j] − μ[j])² / M for x (M, C), in float64."""
    m, c = x.shape
    mean, var = np.zeros(c), np.zeros(c)
    for i in range(m):
        for j in range(c):
            mean[j] += x[i, j]
    mean /= m
    for i in range(m):
        for j in range(c):
            var[j] += (x[i, j] - mean[j]) ** 2
    var /= m
    return mean, var


@njit(cache=True)
def column_sums(a, b, shift):
    """Σ_i a[i, j] and Σ_i (a[i, j] − shift[j]) · b[i, j], per column j, in float64."""
    m, c = a.shape
    s1, s2 = np.zeros(c), np.zeros(c)
    for i in range(m):
        for j in range(c):
            s1[j] += a[i, j]
            s2[j] += (a[i, j] - shift[j]) * b[i, j]
    return s1, s2


@njit(cache=True)
def normalize(x, mean, inv_std, gamma, beta, relu, y):
    """y[i, j] = γ[j] · x̂[i, j] + β[j], x̂[i, j] = (x[i, j] − μ[j]) / σ[j] (inv_std = 1/σ), then
    y[i, j] = max(y[i, j], 0) if relu."""
    m, c = x.shape
    for i in range(m):
        for j in range(c):
            xhat = (x[i, j] - mean[j]) * inv_std[j]
            y[i, j] = gamma[j] * xhat + beta[j]
            if relu and y[i, j] < 0:
                y[i, j] = 0


@njit(cache=True)
def grad_sums(dy, x, mean, inv_std, gamma, beta, relu):
    """Σ_i g[i, j] and Σ_i g[i, j] · x̂[i, j], per column j, in float64, x̂ as in normalize and g
    the gradient before the ReLU: g[i, j] = dy[i, j] where γ[j] · x̂[i, j] + β[j] > 0, else 0
    (g = dy without relu)."""
    m, c = dy.shape
    s1, s2 = np.zeros(c), np.zeros(c)
    for i in range(m):
        for j in range(c):
            xhat = (x[i, j] - mean[j]) * inv_std[j]
            g = np.float64(dy[i, j])
            if relu and not gamma[j] * xhat + beta[j] > 0:
                g = 0.0
            s1[j] += g
            s2[j] += g * xhat
    return s1, s2


@njit(cache=True)
def normalize_backward(dy, x, mean, inv_std, mean_dy, mean_dy_xhat, gamma, beta, relu, dx):
    """dL/dx[i, j] = γ[j]/σ[j] · (g[i, j] − mean_i g[i, j] − x̂[i, j] · mean_i g[i, j] x̂[i, j]),
    x̂ and g as in grad_sums, the two means given."""
    m, c = dy.shape
    for i in range(m):
        for j in range(c):
            xhat = (x[i, j] - mean[j]) * inv_std[j]
            g = dy[i, j]
            if relu and not gamma[j] * xhat + beta[j] > 0:
                g = 0
            dx[i, j] = gamma[j] * inv_std[j] * (g - mean_dy[j] - xhat * mean_dy_xhat[j])
