"""Convolution as im2col + one matrix product, with the loops compiled by Numba.

Images are NHWC inside the kernels (channels last, so each copied patch row is contiguous).
A patch row of `col` is ordered (kernel row, kernel column, channel), so the weight matrix is
W(out, in, kh, kw) transposed to (out, kh, kw, in) and flattened.

Each compiled kernel has a pure-NumPy reference beside it; tests prove they agree, and prove
`conv_backward` against the textbook's col2im (`col2im_reference`).
"""
import numpy as np
from numba import njit, prange
from numpy.lib.stride_tricks import sliding_window_view

from .pointwise import add_bias, sum_rows


def out_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


@njit(parallel=True, cache=True)
def im2col(x, kh, kw, stride, pad, col):
    """col[n, i, j, a, b, :] = x[n, i*stride - pad + a, j*stride - pad + b, :] (zero outside)."""
    n, h, w, c = x.shape
    oh, ow = col.shape[1], col.shape[2]
    for img in prange(n):
        for i in range(oh):
            for j in range(ow):
                for a in range(kh):
                    y = i * stride - pad + a
                    for b in range(kw):
                        z = j * stride - pad + b
                        inside = 0 <= y < h and 0 <= z < w
                        for ch in range(c):  # an explicit loop: Numba slices cost more than the copy
                            col[img, i, j, a, b, ch] = x[img, y, z, ch] if inside else 0


def im2col_reference(x, kh, kw, stride, pad):
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh, ow = out_size(x.shape[1], kh, stride, pad), out_size(x.shape[2], kw, stride, pad)
    win = sliding_window_view(xp, (kh, kw), axis=(1, 2))  # (n, y, z, c, kh, kw)
    win = win[:, ::stride, ::stride][:, :oh, :ow]
    return win.transpose(0, 1, 2, 4, 5, 3).copy()


def col2im_reference(col, stride, pad, x_shape):
    """The adjoint of im2col: every patch entry is added back where it was copied from."""
    n, h, w, c = x_shape
    oh, ow, kh, kw = col.shape[1:5]
    dxp = np.zeros((n, h + 2 * pad + stride, w + 2 * pad + stride, c), col.dtype)
    for a in range(kh):
        for b in range(kw):
            dxp[:, a:a + stride * oh:stride, b:b + stride * ow:stride] += col[:, :, :, a, b]
    return dxp[:, pad:pad + h, pad:pad + w].copy()


# Patches are built for a slice of the batch at a time, so they are still in cache when the
# matrix product reads them (a whole batch of patches is tens of MB: it would go through DRAM).
CHUNK_BYTES = 4 << 20


def _chunk(n, image_bytes):
    """How many images' patches fit in CHUNK_BYTES (at least one)."""
    return min(n, max(1, CHUNK_BYTES // image_bytes))


def conv_forward(x, w, b, stride, pad):
    """x (N, H, W, C) and w (O, C, KH, KW) → y (N, OH, OW, O)."""
    n, h, wd, c = x.shape
    o, _, kh, kw = w.shape
    oh, ow = out_size(h, kh, stride, pad), out_size(wd, kw, stride, pad)
    w_mat = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, o)  # rows ordered like a patch
    y = np.empty((n, oh, ow, o), x.dtype)
    step = _chunk(n, oh * ow * w_mat.size // o * x.itemsize)
    col = np.empty((step, oh, ow, kh, kw, c), x.dtype)  # one slice's patches, reused
    for s in range(0, n, step):
        e = min(s + step, n)
        rows = y[s:e].reshape(-1, o)
        im2col(x[s:e], kh, kw, stride, pad, col[:e - s])
        np.matmul(col[:e - s].reshape(-1, w_mat.shape[0]), w_mat, out=rows)
        if b is not None:  # while the slice is still in cache
            add_bias(rows, b)
    return y


def conv_backward(dy, x, w, stride, pad, input_grad=True):
    """dL/dx (NHWC; None unless input_grad), dL/dw (O, C, KH, KW) and dL/db from dy
    (N, OH, OW, O) and the input x.

    dL/dw correlates the input patches (rebuilt here, a slice at a time) with dy. dL/dx is itself
    a convolution: dy (with stride − 1 zeros between its pixels) correlated with the kernel
    flipped in space and transposed in channels, padded by k − 1 − pad (no scatter-add needed).
    """
    o, c, kh, kw = w.shape
    n, oh, ow, _ = dy.shape
    db = sum_rows(dy.reshape(-1, o)).astype(dy.dtype)
    dw = np.zeros((o, kh * kw * c), dy.dtype)
    dx = np.empty(x.shape, dy.dtype) if input_grad else None
    if stride > 1:
        dilated = np.zeros((n, (oh - 1) * stride + 1, (ow - 1) * stride + 1, o), dy.dtype)
        dilated[:, ::stride, ::stride] = dy
    else:
        dilated = dy
    w_flipped = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(kh * kw * o, c)
    h, wd = x.shape[1], x.shape[2]
    step = _chunk(n, (oh * ow * c + h * wd * o) * kh * kw * dy.itemsize)
    col = np.empty((step, oh, ow, kh, kw, c), dy.dtype)
    dcol = np.empty((step, h, wd, kh, kw, o), dy.dtype) if input_grad else None
    for s in range(0, n, step):
        e = min(s + step, n)
        im2col(x[s:e], kh, kw, stride, pad, col[:e - s])
        dw += dy[s:e].reshape(-1, o).T @ col[:e - s].reshape(-1, dw.shape[1])
        if input_grad:
            im2col(dilated[s:e], kh, kw, 1, kh - 1 - pad, dcol[:e - s])
            np.matmul(dcol[:e - s].reshape(-1, w_flipped.shape[0]), w_flipped,
                      out=dx[s:e].reshape(-1, c))
    return dx, dw.reshape(o, kh, kw, c).transpose(0, 3, 1, 2), db
