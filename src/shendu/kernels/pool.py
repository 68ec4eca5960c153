"""Max and average pooling over NHWC images, compiled by Numba, each beside a NumPy reference.

Padding follows PyTorch: max pooling never picks a padded cell, average pooling counts padded
cells as zeros (count_include_pad=True).

Each kernel equals the kernel of the same name in kernels/textbook.py, the pooling formulas as
plain loops; tests/test_textbook_kernels.py proves it.
"""
import numpy as np
from numba import njit, prange
from numpy.lib.stride_tricks import sliding_window_view


@njit(parallel=True, cache=True)
def maxpool_forward(x, k, stride, pad, y, arg):
    """y = the window maximum; arg = where it came from (row * W + column), for backward, unless
    arg is None (inference).

    Equals `textbook.maxpool_forward` (y and arg); tested in tests/test_textbook_kernels.py."""
    n, h, w, c = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for img in prange(n):
        for i in range(oh):
            for j in range(ow):
                out = y[img, i, j]
                out[:] = -np.inf
                if arg is not None:
                    where = arg[img, i, j]
                    where[:] = max(i * stride - pad, 0) * w + max(j * stride - pad, 0)
                for a in range(k):
                    r = i * stride - pad + a
                    for b in range(k):
                        s = j * stride - pad + b
                        if 0 <= r < h and 0 <= s < w:
                            cell = x[img, r, s]
                            # channels innermost, contiguous; selects, not branches: vectorised
                            if arg is None:
                                for ch in range(c):
                                    out[ch] = max(out[ch], cell[ch])
                            else:
                                for ch in range(c):
                                    better = cell[ch] > out[ch]
                                    out[ch] = cell[ch] if better else out[ch]
                                    where[ch] = r * w + s if better else where[ch]


@njit(parallel=True, cache=True)
def maxpool_backward(dy, arg, dx):
    """Each output's gradient goes back to the one input that won its window.

    Equals `textbook.maxpool_backward`; tested in tests/test_textbook_kernels.py."""
    n, h, w, c = dx.shape
    oh, ow = dy.shape[1], dy.shape[2]
    for img in prange(n):
        cells = dx[img].reshape(h * w, c)  # cell r·W + s is row `where`: no division
        cells[:] = 0
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    cells[arg[img, i, j, ch], ch] += dy[img, i, j, ch]


@njit(parallel=True, cache=True)
def avgpool_forward(x, k, stride, pad, y):
    """y = the window mean, padded cells counting as zeros.

    Equals `textbook.avgpool_forward`; tested in tests/test_textbook_kernels.py."""
    n, h, w, c = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for img in prange(n):
        y[img] = 0
        for i in range(oh):
            for j in range(ow):
                for a in range(k):
                    r = i * stride - pad + a
                    for b in range(k):
                        s = j * stride - pad + b
                        if 0 <= r < h and 0 <= s < w:
                            y[img, i, j, :] += x[img, r, s, :]
                y[img, i, j, :] /= k * k


@njit(parallel=True, cache=True)
def avgpool_backward(dy, k, stride, pad, dx):
    """Each output's gradient is shared equally, dy / k², by the k × k cells of its window.

    Equals `textbook.avgpool_backward`; tested in tests/test_textbook_kernels.py."""
    n, h, w, c = dx.shape
    oh, ow = dy.shape[1], dy.shape[2]
    for img in prange(n):
        dx[img] = 0
        for i in range(oh):
            for j in range(ow):
                for a in range(k):
                    r = i * stride - pad + a
                    for b in range(k):
                        s = j * stride - pad + b
                        if 0 <= r < h and 0 <= s < w:
                            dx[img, r, s, :] += dy[img, i, j, :] / (k * k)


def _windows(x, k, stride, pad, fill):
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    return sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # (n,oh,ow,c,k,k)


def maxpool_reference(x, k, stride, pad):
    return _windows(x, k, stride, pad, -np.inf).max(axis=(4, 5))


def avgpool_reference(x, k, stride, pad):
    return _windows(x, k, stride, pad, 0).mean(axis=(4, 5))


def maxpool_backward_reference(x, dy, k, stride, pad):
    from .conv import col2im_reference
    n, oh, ow, c = dy.shape
    win = _windows(x, k, stride, pad, -np.inf)[:, :oh, :ow].reshape(n, oh, ow, c, k * k)
    winner = np.arange(k * k) == win.argmax(axis=4)[..., None]  # first maximum, like the kernel
    routed = (winner * dy[..., None]).reshape(n, oh, ow, c, k, k).transpose(0, 1, 2, 4, 5, 3)
    return col2im_reference(routed, stride, pad, x.shape)


def avgpool_backward_reference(x_shape, dy, k, stride, pad):
    from .conv import col2im_reference
    spread = np.broadcast_to(dy[:, :, :, None, None, :] / (k * k), dy.shape[:3] + (k, k, dy.shape[3]))
    return col2im_reference(np.ascontiguousarray(spread), stride, pad, x_shape)
