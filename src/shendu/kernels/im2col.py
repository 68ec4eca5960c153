"""Convolution the book's way: im2col, then one matrix product (rung 2 of the ladder).

The patches of every output pixel become the rows of one matrix, each row the KH·KW·C inputs
under the kernel; the weights become a (KH·KW·C, O) matrix; the convolution is their product,
which NumPy hands to its BLAS. The backward pass is two more products, the input gradient
scattered back with col2im. Simple and fast where the BLAS is fast, at the price of a patch
matrix KH·KW times the size of the image (nine times for 3×3 kernels), written and read again.

Written for reading, not speed: `shendu.kernels.use("im2col")` runs a network on it, and
tests/test_textbook_kernels.py proves it equals kernels/textbook.py.
"""
import numpy as np

from .conv import col2im_reference, im2col_reference


def conv_forward(x, w, b, stride, pad, relu=False):
    """x (N, H, W, C) and w (O, C, KH, KW) → y (N, OH, OW, O) = col · W + b; max(y, 0) if relu."""
    o, c, kh, kw = w.shape
    col = im2col_reference(x, kh, kw, stride, pad)  # (N, OH, OW, KH, KW, C)
    y = col.reshape(-1, kh * kw * c) @ w.transpose(2, 3, 1, 0).reshape(-1, o)
    if b is not None:
        y += b
    if relu:
        np.maximum(y, 0, out=y)
    return y.reshape(col.shape[:3] + (o,))


def conv_backward(dy, x, w, stride, pad, input_grad=True):
    """dL/dx = col2im(dy · Wᵀ) (None unless input_grad), dL/dw = colᵀ · dy, dL/db = Σ dy."""
    o, c, kh, kw = w.shape
    col = im2col_reference(x, kh, kw, stride, pad)
    dy2 = dy.reshape(-1, o)
    wm = w.transpose(2, 3, 1, 0).reshape(-1, o)  # (KH·KW·C, O)
    dw = (col.reshape(-1, kh * kw * c).T @ dy2).reshape(kh, kw, c, o).transpose(3, 2, 0, 1)
    dx = col2im_reference((dy2 @ wm.T).reshape(col.shape), stride, pad, x.shape) if input_grad \
        else None
    return dx, np.ascontiguousarray(dw), dy2.sum(axis=0)
