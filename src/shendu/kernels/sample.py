"""Bilinear resampling of a batch, compiled by Numba, beside its NumPy reference.

Every geometric augmentation (rotation, scaling, shear, translation, elastic distortion) is one
call: each output pixel (i, j) of image n reads its input at the real-valued position
(rows[n, i, j], cols[n, i, j]), mixing the four pixels around it; outside the image is zero.
"""
import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def bilinear(x, rows, cols, out):
    """out[n, :, i, j] = x[n, :] at (rows[n, i, j], cols[n, i, j]); x and out are NCHW."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for img in prange(n):
        for i in range(oh):
            for j in range(ow):
                r, s = rows[img, i, j], cols[img, i, j]
                r0, s0 = math.floor(r), math.floor(s)
                fr, fs = r - r0, s - s0
                for ch in range(c):
                    out[img, ch, i, j] = 0
                for a in range(2):
                    y = r0 + a
                    for b in range(2):
                        z = s0 + b
                        weight = (fr if a else 1 - fr) * (fs if b else 1 - fs)
                        if weight != 0 and 0 <= y < h and 0 <= z < w:
                            for ch in range(c):
                                out[img, ch, i, j] += weight * x[img, ch, y, z]


def bilinear_reference(x, rows, cols):
    n, c, h, w = x.shape
    r0, s0 = np.floor(rows), np.floor(cols)
    fr, fs = (rows - r0)[:, None], (cols - s0)[:, None]
    out = np.zeros((n, c) + rows.shape[1:])
    for a, wr in ((0, 1 - fr), (1, fr)):
        for b, ws in ((0, 1 - fs), (1, fs)):
            y, z = (r0 + a).astype(int), (s0 + b).astype(int)
            inside = ((0 <= y) & (y < h) & (0 <= z) & (z < w))[:, None]
            pixels = x[np.arange(n)[:, None, None], :, np.clip(y, 0, h - 1), np.clip(z, 0, w - 1)]
            out += np.where(inside, wr * ws * np.moveaxis(pixels, -1, 1), 0)
    return out.astype(x.dtype)
