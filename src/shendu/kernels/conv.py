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
                        if 0 <= y < h and 0 <= z < w:
                            col[img, i, j, a, b, :] = x[img, y, z, :]
                        else:
                            col[img, i, j, a, b, :] = 0


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


def _workspace(buffer, shape, dtype):
    """Reuse last step's buffer when it fits: fresh large arrays cost page faults every step."""
    return buffer if buffer is not None and buffer.shape == shape and buffer.dtype == dtype \
        else np.empty(shape, dtype)


def conv_forward(x, w, b, stride, pad, col=None):
    """x (N, H, W, C) and w (O, C, KH, KW) → y (N, OH, OW, O), and the patches `col` that
    backward needs (`col` may be last step's patches, to be overwritten)."""
    n, h, wd, c = x.shape
    o, _, kh, kw = w.shape
    oh, ow = out_size(h, kh, stride, pad), out_size(wd, kw, stride, pad)
    col = _workspace(col, (n, oh, ow, kh, kw, c), x.dtype)
    im2col(x, kh, kw, stride, pad, col)
    y = col.reshape(n * oh * ow, -1) @ w.transpose(0, 2, 3, 1).reshape(o, -1).T
    if b is not None:
        y += b
    return y.reshape(n, oh, ow, o), col


def conv_backward(dy, col, w, stride, pad, x_shape, dcol=None):
    """dL/dx (NHWC), dL/dw (O, C, KH, KW), dL/db from dy (N, OH, OW, O), and the scratch patches.

    dL/dw correlates the saved input patches with dy. dL/dx is itself a convolution: dy (with
    stride − 1 zeros between its pixels) correlated with the kernel flipped in space and
    transposed in channels, padded by k − 1 − pad (no scatter-add, so no col2im).
    """
    o, c, kh, kw = w.shape
    n, oh, ow, _ = dy.shape
    dy2 = dy.reshape(-1, o)
    dw = (dy2.T @ col.reshape(dy2.shape[0], -1)).reshape(o, kh, kw, c).transpose(0, 3, 1, 2)
    db = dy2.sum(axis=0)
    if stride > 1:
        dilated = np.zeros((n, (oh - 1) * stride + 1, (ow - 1) * stride + 1, o), dy.dtype)
        dilated[:, ::stride, ::stride] = dy
        dy = dilated
    dcol = _workspace(dcol, (n, x_shape[1], x_shape[2], kh, kw, o), dy.dtype)
    im2col(dy, kh, kw, 1, kh - 1 - pad, dcol)
    w_flipped = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(kh * kw * o, c)
    dx = (dcol.reshape(-1, kh * kw * o) @ w_flipped).reshape(x_shape)
    return dx, dw, db, dcol
