"""The integer convolution of int8 inference (shendu.quantize): int8 inputs and weights, int32
sums, as int8 hardware computes them (x86's VNNI instructions multiply bytes and add the products
into 32-bit integers; so do GPUs' integer tensor cores). The loops are the reordered rung's
(kernels/reordered.py): the output channel innermost, so the compiler vectorises it.
"""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def conv(x, w, stride, pad):
    """acc[n, i, j, o] = Σ_{u, v, c} x[n, i·stride + u − pad, j·stride + v − pad, c] · w[u, v, c, o]
    for x (N, H, W, C) and w (KH, KW, C, O) in int8, x zero outside the image; the sums in
    int32 → acc (N, OH, OW, O). |x|, |w| ≤ 127, so a sum of up to 2^17 products cannot overflow."""
    n, h, wd, c = x.shape
    kh, kw, _, outs = w.shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    wide = w.astype(np.int32)  # widened once: the inner loop multiplies int32 lanes
    acc = np.empty((n, oh, ow, outs), np.int32)
    for img in prange(n):
        total = np.empty(outs, np.int32)  # one pixel's sums, kept in cache
        for i in range(oh):
            for j in range(ow):
                total[:] = 0
                for u in range(kh):
                    r = i * stride + u - pad
                    if 0 <= r < h:
                        for v in range(kw):
                            s = j * stride + v - pad
                            if 0 <= s < wd:
                                for ch in range(c):
                                    xv = np.int32(x[img, r, s, ch])
                                    for o in range(outs):
                                        total[o] += xv * wide[u, v, ch, o]
                acc[img, i, j, :] = total
    return acc
