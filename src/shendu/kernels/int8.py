"""The integer convolution of int8 inference (shendu.quantize): int8 inputs and weights, int32
sums, as int8 hardware computes them (x86's VNNI instructions multiply bytes and add the products
into 32-bit integers; so do GPUs' integer tensor cores). Its loops are the reordered rung's
(kernels/reordered.py, the output channel innermost, so the compiler vectorises it), compiled
for integers: the same loops, no second copy of them.
"""
import numpy as np

from . import reordered
from .conv import out_size


def conv(x, w, stride, pad):
    """acc[n, i, j, o] = Σ_{u, v, c} x[n, i·stride + u − pad, j·stride + v − pad, c] · w[u, v, c, o]
    for x (N, H, W, C) and w (KH, KW, C, O) in int8, x zero outside the image; the sums in
    int32 → acc (N, OH, OW, O). |x|, |w| ≤ 127, so a sum of up to 2^17 products cannot overflow.
    The weights are widened to int32 once, so the inner loop multiplies int32 lanes."""
    n, h, wd, _ = x.shape
    kh, kw, _, outs = w.shape
    acc = np.empty((n, out_size(h, kh, stride, pad), out_size(wd, kw, stride, pad), outs),
                   np.int32)
    reordered._forward(np.ascontiguousarray(x), w.astype(np.int32), np.zeros(outs, np.int32),
                       stride, pad, False, acc)
    return acc
