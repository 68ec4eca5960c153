"""Convolution as direct loops over a register tile, compiled by Numba.

Read kernels/textbook.py first: its `conv_forward` and `conv_backward` are the formulas of a
convolution and its gradients as plain loops, one loop per index. The kernels here compute the
same numbers, in an order that keeps the CPU's vector units busy; tests/test_textbook_kernels.py
proves that they agree (float64 to 1e-12, float32 within rounding).

Images are NHWC inside the kernels (channels last). A convolution is a sum over the kernel's taps
(a, b) of a matrix product: the output pixels of a row, each a row of input channels shifted by the
tap, times the tap's (in, out) slice of the weights. No patch matrix (im2col) is built: the inner
loop reads the input in place, from a zero-padded copy of a few images at a time, made in cache;
on maps of a few pixels the patch matrix pays after all (see `matmul`).

The inner loop is `_fma_tile`, the micro-kernel of a BLAS written as a Numba intrinsic: ROWS
pixels by 16 output channels of accumulators held in vector registers for a whole sum, each step
one load of 16 weights, a broadcast of ROWS inputs and ROWS × 16 fused multiply-adds (ROWS is 8
with AVX-512, 4 with AVX2: `_tile_shape`); a layer whose channels are an odd multiple of 8 ends
with a tile 8 wide. Numba's loops alone leave such a tile scalar; this is the one place the
engine writes LLVM IR.

Each kernel has a pure-NumPy reference beside it or in the tests; tests prove they agree, and
prove `conv_backward` against the book's col2im (`col2im_reference`).
"""
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, errors
from numba.extending import intrinsic
from numpy.lib.stride_tricks import sliding_window_view

from . import pointwise
from .pointwise import sum_rows


def _tile_shape():
    """(ROWS, LANES) for this CPU. AVX-512 has 32 vector registers: a tile of 8 rows of one
    16-lane vector each (16 accumulators). AVX2 has 16: 4 rows of two 8-lane vectors (8
    accumulators, the rest for the weights and the broadcast input). Measured on the 2-core AMD
    EPYC (AVX-512): the course's convolutions take 15-20% less time with the larger tile. The
    shape changes which sums run side by side, not the order of any one sum: the same bits."""
    return (8, 16) if llvm.get_host_cpu_features().get("avx512f", False) else (4, 8)


(ROWS, LANES), WIDTH = _tile_shape(), 16  # a tile: ROWS × WIDTH accumulators
HALF = WIDTH // 2  # matrices are widened to a multiple of HALF columns; the last tile may be half
PARTS = 16  # weight gradients: partial sums over slices of the batch, run in parallel
CHUNK = 256  # weight gradients: pixels of dy a tile sums over, in cache


def out_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


@intrinsic
def _fma_tile(typingctx, rows, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c,
              c_at, c_row, start, s_at, s_row):
    """For r < rows, v < width (WIDTH, or HALF for the last columns of a matrix whose width is an
    odd multiple of HALF):  c[c_at + r·c_row + v] = start[s_at + r·s_row + v] +
    Σ_t Σ_{k < k_len} a[a_at + taps[t] + r·a_row + k·a_k] · b[b_at + t·b_tap + k·b_k + v]."""
    if not isinstance(rows, types.IntegerLiteral):
        raise errors.RequireLiteralValue(rows)
    n = types.intp
    sig = types.void(rows, n, a, n, n, n, taps, n, b, n, n, n, c, n, n, start, n, n)

    def codegen(context, builder, signature, args):
        (_, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c, c_at, c_row, _, s_at,
         s_row) = args
        arrays = [context.make_array(signature.args[i])(context, builder, args[i])
                  for i in (2, 6, 8, 12, 15)]
        ap, tp, bp, cp, sp = (array.data for array in arrays)
        dtype = signature.args[2].dtype
        i64 = ir.IntType(64)

        def at(base, *terms):  # element pointer: base + Σ terms
            index = terms[0]
            for term in terms[1:]:
                index = builder.add(index, term)
            return builder.gep(base, [index])

        def const(value):
            return ir.Constant(i64, value)

        def tile(columns):  # the code of a tile `columns` wide, in vectors of up to LANES
            lanes = min(LANES, columns)
            vec = ir.VectorType(context.get_value_type(dtype), lanes)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                 f"llvm.fma.v{lanes}f{dtype.bitwidth}")
            undefined, vectors = ir.Constant(vec, ir.Undefined), range(columns // lanes)

            def vector(ptr):  # `lanes` consecutive elements from ptr
                return builder.bitcast(ptr, vec.as_pointer())

            rows_c = [at(cp, c_at, builder.mul(c_row, const(r)))
                      for r in range(rows.literal_value)]
            rows_s = [at(sp, s_at, builder.mul(s_row, const(r)))
                      for r in range(rows.literal_value)]
            acc = [[cgutils.alloca_once_value(
                builder, builder.load(vector(at(row, const(v * lanes))), align=4))
                for v in vectors] for row in rows_s]
            with cgutils.for_range(builder, arrays[1].nitems) as tap:
                a_tap = builder.add(a_at, builder.load(builder.gep(tp, [tap.index])))
                b_tap_at = builder.add(b_at, builder.mul(tap.index, b_tap))
                with cgutils.for_range(builder, k_len) as step:
                    b_step = at(bp, b_tap_at, builder.mul(step.index, b_k))
                    bv = [builder.load(vector(at(b_step, const(v * lanes))), align=4)
                          for v in vectors]
                    a_step = builder.add(a_tap, builder.mul(step.index, a_k))
                    for r, row_acc in enumerate(acc):
                        x = builder.load(at(ap, a_step, builder.mul(a_row, const(r))))
                        xv = builder.shuffle_vector(  # x in every lane
                            builder.insert_element(undefined, x, ir.IntType(32)(0)), undefined,
                            ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
                        for v in vectors:
                            builder.store(builder.call(fma, [xv, bv[v], builder.load(row_acc[v])]),
                                          row_acc[v])
            for row, row_acc in zip(rows_c, acc):
                for v in vectors:
                    builder.store(builder.load(row_acc[v]), vector(at(row, const(v * lanes))),
                                  align=4)

        with builder.if_else(builder.icmp_signed("==", width, const(WIDTH))) as (full, half):
            with full:
                tile(WIDTH)
            with half:
                tile(HALF)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def _tile(rows, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c, c_at, c_row,
          start, s_at, s_row):
    """_fma_tile for 1 to 8 rows (its row count is a compile-time constant)."""
    if rows == 8:
        _fma_tile(8, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c, c_at,
                  c_row, start, s_at, s_row)
    elif rows == 7:
        _fma_tile(7, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c, c_at,
                  c_row, start, s_at, s_row)
    elif rows == 6:
        _fma_tile(6, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c, c_at,
                  c_row, start, s_at, s_row)
    elif rows == 5:
        _fma_tile(5, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c, c_at,
                  c_row, start, s_at, s_row)
    elif rows == 4:
        _fma_tile(4, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c, c_at,
                  c_row, start, s_at, s_row)
    elif rows == 3:
        _fma_tile(3, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c, c_at,
                  c_row, start, s_at, s_row)
    elif rows == 2:
        _fma_tile(2, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c, c_at,
                  c_row, start, s_at, s_row)
    else:
        _fma_tile(1, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c, c_at,
                  c_row, start, s_at, s_row)


@njit(cache=True)
def spread(x, stride, offset, out):
    """out = 0 except out[offset + i·stride, offset + j·stride, :C] = x[i, j] (where it fits),
    for one image x (H, W, C): zero padding for stride 1, zeros between the pixels too for
    stride > 1; out may have more rows, columns and channels than that needs (zeros)."""
    out[:] = 0
    h, w, c = x.shape
    for i in range(h):
        y = offset + i * stride
        if 0 <= y < out.shape[0]:
            for j in range(w):
                z = offset + j * stride
                if 0 <= z < out.shape[1]:
                    for ch in range(c):
                        out[y, z, ch] = x[i, j, ch]


@njit(parallel=True, cache=True)
def correlate(x, x_stride, pad, hp, wp, w, start, stride, relu, y):
    """y[n, i, j, :] = start + Σ_{a, b, c} xp[n, i·stride + a, j·stride + b, c] · w[a, b, c, :]
    for weights w (KH, KW, C, O), a vector start (O) and y (N, OH, OW, O), O a multiple of
    HALF; then max(y, 0) if relu, a row at a time while it is in cache. xp (N, HP, WP, C) is x
    spread by x_stride and padded by pad, built a few images at a time while they are in cache.

    Called by conv_forward (x_stride 1), y equals `textbook.conv_forward` with the weights
    w.transpose(3, 2, 0, 1) and the bias start; called by conv_backward (dy spread by the stride,
    the kernel flipped), it equals `textbook.conv_input_grad`."""
    n, h, c = x.shape[0], x.shape[1], x.shape[3]
    kh, kw, _, o = w.shape
    oh, ow = y.shape[1], y.shape[2]
    # A tile's rows are ROWS pixels of an output row; on maps narrower than that, the same pixel
    # of ROWS images, so that no tile runs short.
    group = 1 if ow >= ROWS else ROWS
    a_row, y_row, j_step = ((stride * c, o, ROWS) if group == 1
                            else (hp * wp * c, oh * ow * o, 1))
    # The taps (a, 0..KW-1) of one kernel row, with their channels, lie side by side in xp and
    # in w: one run of KW·C steps per kernel row, not KW runs of C. Only the kernel rows that
    # meet a row of x are summed, not those on the padding or on the zero rows between spread
    # rows: those that do are every x_stride-th, from the first.
    wf, yf = w.ravel(), y.ravel()
    for g0 in prange((n + group - 1) // group):
        first_img, images = g0 * group, min(group, n - g0 * group)
        xp = np.empty((group, hp, wp, c), x.dtype)
        for g in range(images):
            spread(x[first_img + g], x_stride, pad, xp[g])
        xf = xp.ravel()
        rows = np.empty(kh, np.intp)
        for i in range(oh):
            count = 0
            for a in range(kh):
                r = i * stride + a - pad  # the row of spread x
                if r >= 0 and r % x_stride == 0 and r // x_stride < h:
                    rows[count] = a
                    count += 1
            taps = rows[:count] * wp * c
            first = rows[0] if count else 0
            y_at = (first_img * oh + i) * ow * o
            for o0 in range(0, o, WIDTH):
                for j in range(0, ow, j_step):
                    _tile(min(ROWS, ow - j) if group == 1 else images, min(WIDTH, o - o0), xf,
                          (i * wp + j) * stride * c, a_row, 1, taps, kw * c, wf,
                          first * kw * c * o + o0, o, x_stride * kw * c * o, yf,
                          y_at + j * o + o0, y_row, start, o0, 0)
            if relu:
                for g in range(images):
                    out = yf[y_at + g * oh * ow * o:y_at + g * oh * ow * o + ow * o]
                    for q in range(out.size):
                        out[q] = 0 if out[q] < 0 else out[q]  # as pointwise.relu


@njit(parallel=True, cache=True)
def weight_grad(x, pad, dy, stride, kh, kw, parts):
    """parts[p, a, b, c, :] = Σ xp[n, i·stride + a, j·stride + b, c] · dy[n, i, j, :] over the
    images n of part p (their sum is dL/dw as (KH, KW, C, O)), xp the input x padded by pad. O of
    dy and of parts is a multiple of HALF.

    A tile sums over a chunk of dy's rows, about CHUNK pixels, of one or more images: small
    enough that the chunk and the rows of xp it meets stay in cache while every tap and block
    of channels reads them. The rows of dy lie one after the other in memory; those of xp that
    each meets under tap (0, 0) are the tile's `taps` (xp holds a group of images, padded).

    Σ_p parts[p] equals `textbook.conv_weight_grad` transposed to (KH, KW, C, O).
    """
    n, h, w, c = x.shape
    oh, ow, o = dy.shape[1], dy.shape[2], dy.shape[3]
    hp, wp = h + 2 * pad, w + 2 * pad
    group = max(1, CHUNK // (oh * ow))  # images side by side in xp
    chunk = max(1, CHUNK // ow)  # rows of dy a tile sums over
    # A tile's rows are ROWS channels of one tap; with fewer channels than the kernel has
    # columns (the first layer's one), the kernel's columns of one channel instead.
    by_column = c < min(kw, ROWS)
    inner, outer = (kw, c) if by_column else (c, kw)
    x_row, part_row = (c, c * o) if by_column else (1, o)
    dyf = dy.ravel()
    p_count = parts.shape[0]
    for p in prange(p_count):
        part = parts[p].ravel()
        part[:] = 0
        xp = np.empty((group, hp, wp, c), x.dtype)
        xf = xp.ravel()
        rows = np.empty(group * oh, np.intp)
        first, last = p * n // p_count, (p + 1) * n // p_count
        for img in range(first, last, group):
            count = min(group, last - img)
            for g in range(count):
                spread(x[img + g], 1, pad, xp[g])
                for i in range(oh):
                    rows[g * oh + i] = (g * hp + i * stride) * wp * c
            for t in range(0, count * oh, chunk):
                taps = rows[t:min(count * oh, t + chunk)]
                dy_at = (img * oh + t) * ow * o
                for a in range(kh):
                    for q in range(outer):
                        for o0 in range(0, o, WIDTH):
                            for r in range(0, inner, ROWS):
                                b, ch = (r, q) if by_column else (q, r)
                                at = ((a * kw + b) * c + ch) * o + o0
                                _tile(min(ROWS, inner - r), min(WIDTH, o - o0), xf,
                                      (a * wp + b) * c + ch, x_row, stride * c, taps, ow, dyf,
                                      dy_at + o0, o, ow * o, part, at, part_row, part, at,
                                      part_row)


# -- small maps: the patch matrix and one matrix product ----------------------------------------
# On a map of a few pixels the sums that the direct loops run over one image are short (a tile of
# one or two pixels does one or two multiply-adds per load), and weight_grad reads and writes the
# whole weight gradient for a handful of terms an image. There the book's way is the fast one: the
# patches of the whole batch as the rows of one matrix (im2col, small on a small map) and one
# matrix product over the batch. The patch matrix holds only the live taps, those that meet the
# image at some output pixel: a 3×3 kernel padded by 1 on a 1×1 map has one, its centre.
KCHUNK, MCHUNK = 256, 64  # a product's panels: KCHUNK sums deep, MCHUNK rows a task


def live_taps(size, k, stride, pad):
    """The kernel offsets a < k that meet an input of `size` at some output position i, that is
    0 <= i·stride + a − pad < size."""
    return np.array([a for a in range(k) if any(0 <= i * stride + a - pad < size
                                                for i in range(out_size(size, k, stride, pad)))],
                    np.intp)


@njit(parallel=True, cache=True)
def im2col(x, rows, cols, stride, pad, col):
    """col[n, i, j, (u·len(cols) + v)·C + c] = x[n, i·stride + rows[u] − pad,
    j·stride + cols[v] − pad, c] (zero outside the image), for x (N, H, W, C) and col
    (N, OH, OW, len(rows)·len(cols)·C): the patches under the taps (rows[u], cols[v])."""
    n, h, w, c = x.shape
    oh, ow = col.shape[1], col.shape[2]
    for img in prange(n):
        for i in range(oh):
            for j in range(ow):
                for u in range(len(rows)):
                    r = i * stride + rows[u] - pad
                    for v in range(len(cols)):
                        s = j * stride + cols[v] - pad
                        at = (u * len(cols) + v) * c
                        if 0 <= r < h and 0 <= s < w:
                            col[img, i, j, at:at + c] = x[img, r, s]
                        else:
                            col[img, i, j, at:at + c] = 0


@njit(parallel=True, cache=True)
def col2im(col, rows, cols, stride, pad, dx):
    """The adjoint of im2col: dx (N, H, W, C) = the sum of every patch entry of col where im2col
    took it from (col may have more columns, as matmul leaves them: those are not read)."""
    n, h, w, c = dx.shape
    oh, ow = col.shape[1], col.shape[2]
    for img in prange(n):
        dx[img] = 0
        for i in range(oh):
            for j in range(ow):
                for u in range(len(rows)):
                    r = i * stride + rows[u] - pad
                    for v in range(len(cols)):
                        s = j * stride + cols[v] - pad
                        if 0 <= r < h and 0 <= s < w:
                            at = (u * len(cols) + v) * c
                            dx[img, r, s] += col[img, i, j, at:at + c]


@njit(parallel=True, cache=True)
def matmul(a, a_row, a_k, m, k, b, start, c):
    """c[i, :] = start + Σ_{q < k} a[i·a_row + q·a_k] · b[q, :] for i < m; a flat (its strides
    a_row, a_k), b (K, NW), start (NW) and c (M, NW) with NW a multiple of HALF. Blocked as a
    BLAS blocks: each task takes MCHUNK rows of a and sums KCHUNK deep at a time over ROWS × WIDTH
    tiles (the last may be HALF wide), so that both panels stay in cache. Each sum runs in the
    same order whatever the number of threads."""
    nw = b.shape[1]
    one = np.zeros(1, np.intp)
    bf, cf = b.ravel(), c.ravel()
    for task in prange((m + MCHUNK - 1) // MCHUNK):
        r0, r1 = task * MCHUNK, min(m, (task + 1) * MCHUNK)
        for q0 in range(0, k, KCHUNK):
            for o0 in range(0, nw, WIDTH):
                for r in range(r0, r1, ROWS):
                    at = r * nw + o0
                    rows, width = min(ROWS, r1 - r), min(WIDTH, nw - o0)
                    if q0 == 0:  # the first panel starts from start, the others from c
                        _tile(rows, width, a, r * a_row, a_row, a_k, one, min(KCHUNK, k), bf, o0,
                              nw, 0, cf, at, nw, start, o0, 0)
                    else:
                        _tile(rows, width, a, r * a_row + q0 * a_k, a_row, a_k, one,
                              min(KCHUNK, k - q0), bf, q0 * nw + o0, nw, 0, cf, at, nw, cf, at,
                              nw)


def _product(a, a_row, a_k, m, k, b, start=None):
    """matmul into a new (m, NW) array, b (K, N) and start (N, or zeros) widened to NW, a
    multiple of HALF, columns."""
    b = _wide(b)
    c = np.empty((m, b.shape[1]), b.dtype)
    matmul(np.ascontiguousarray(a).ravel(), a_row, a_k, m, k, b, _start(start, b), c)
    return c


def _patches(x, kh, kw, stride, pad):
    """im2col of x over its live taps: (col (N, OH, OW, K), rows, cols), K = len(rows) ·
    len(cols) · C."""
    n, h, w, c = x.shape
    rows, cols = live_taps(h, kh, stride, pad), live_taps(w, kw, stride, pad)
    col = np.empty((n, out_size(h, kh, stride, pad), out_size(w, kw, stride, pad),
                    len(rows) * len(cols) * c), x.dtype)
    im2col(np.ascontiguousarray(x), rows, cols, stride, pad, col)
    return col, rows, cols


# The patch matrix pays on maps of at most PATCH_FWD output pixels for the forward pass, PATCH_DW
# for dL/dw, PATCH_DX for dL/dx. Measured on 2 cores at batch 128, 3×3 kernels, 48 to 128
# channels: on a 1×1 map the products take at most 60% of the direct loops' time (a tenth for
# dL/dw); for dL/dw they still win or tie on 2×2 and 3×3 maps; elsewhere the direct loops win.
PATCH_FWD, PATCH_DW, PATCH_DX = 1, 9, 1


def im2col_reference(x, kh, kw, stride, pad):
    """The patch matrix (N, OH, OW, KH, KW, C) of x (N, H, W, C)."""
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


def _wide(a):
    """a, C-contiguous, with zero columns on its last axis up to a multiple of HALF: a itself
    when it is already so, else a copy."""
    o = a.shape[-1]
    if o % HALF == 0 and a.flags.c_contiguous:
        return a
    wide = np.zeros(a.shape[:-1] + (-(-o // HALF) * HALF,), a.dtype)
    wide[..., :o] = a
    return wide


def _start(start, wide):
    """The vector a product or a correlation starts each row from: start (or zeros) widened to
    the columns of `wide`, in its dtype."""
    return (np.zeros(wide.shape[-1], wide.dtype) if start is None
            else _wide(start.astype(wide.dtype)))


def _narrow(y, o):
    """y's first o columns (last axis): y itself when it has no more, else a copy."""
    return y if y.shape[-1] == o else np.ascontiguousarray(y[..., :o])


def _convolve(x, x_stride, pad, hp, wp, w, stride, out_shape, start=None, relu=False):
    """correlate into a new array of out_shape, each pixel starting at `start` (or 0)."""
    w = _wide(w)
    y = np.empty(out_shape[:3] + (w.shape[3],), w.dtype)
    correlate(np.ascontiguousarray(x), x_stride, pad, hp, wp, w, _start(start, w), stride, relu,
              y)
    return _narrow(y, out_shape[3])


def _tap_matrix(w, rows, cols):
    """The weights w (O, C, KH, KW) of the taps (rows[u], cols[v]) as a (K, O) matrix, its rows
    in the order of im2col's columns."""
    return w[:, :, rows][:, :, :, cols].transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def conv_forward(x, w, b, stride, pad, relu=False):
    """x (N, H, W, C) and w (O, C, KH, KW) → y (N, OH, OW, O); max(y, 0) if relu.

    Equals `textbook.conv_forward`; tested in tests/test_textbook_kernels.py."""
    n, h, wd, c = x.shape
    o, _, kh, kw = w.shape
    oh, ow = out_size(h, kh, stride, pad), out_size(wd, kw, stride, pad)
    if oh * ow <= PATCH_FWD:  # y = col W + b
        col, rows, cols = _patches(x, kh, kw, stride, pad)
        k = col.shape[3]
        y = _product(col, k, 1, n * oh * ow, k, _tap_matrix(w, rows, cols), b)
        if relu:
            pointwise.relu(y.ravel(), y.ravel())  # in place
        return _narrow(y, o).reshape(n, oh, ow, o)
    return _convolve(x, 1, pad, h + 2 * pad, wd + 2 * pad, w.transpose(2, 3, 1, 0), stride,
                     (n, oh, ow, o), b, relu)


def conv_backward(dy, x, w, stride, pad, input_grad=True):
    """dL/dx (NHWC; None unless input_grad), dL/dw (O, C, KH, KW) and dL/db from dy
    (N, OH, OW, O) and the input x.

    dL/dw correlates the padded input with dy. dL/dx is itself a convolution: dy (with stride − 1
    zeros between its pixels) correlated with the kernel flipped in space and transposed in
    channels, padded by k − 1 − pad (no scatter-add needed). On small maps (see PATCH_DW,
    PATCH_DX) both are matrix products of the patch matrix instead.

    Equals `textbook.conv_backward` (its conv_input_grad, conv_weight_grad and conv_bias_grad);
    tested in tests/test_textbook_kernels.py.
    """
    o, c, kh, kw = w.shape
    n, h, wd, _ = x.shape
    oh, ow = dy.shape[1], dy.shape[2]
    p = n * oh * ow
    db = sum_rows(dy.reshape(-1, o)).astype(dy.dtype)
    if oh * ow <= PATCH_DW:  # dL/dw = colᵀ dy, on the live taps; zero on the others
        col, rows, cols = _patches(x, kh, kw, stride, pad)
        k = col.shape[3]
        dw = np.zeros((kh, kw, c, o), dy.dtype)
        dw[np.ix_(rows, cols)] = _product(col, 1, k, k, p, dy.reshape(-1, o))[:, :o].reshape(
            len(rows), len(cols), c, o)
    else:
        # A fixed number of parts, not one a thread: the same sums, the same bits, anywhere.
        parts = np.empty((min(PARTS, n), kh, kw, c, -(-o // HALF) * HALF), dy.dtype)
        weight_grad(np.ascontiguousarray(x), pad, _wide(dy), stride, kh, kw, parts)
        dw = parts.sum(axis=0)[..., :o]
    dw = dw.transpose(3, 2, 0, 1)
    dx = None
    if input_grad and oh * ow <= PATCH_DX:  # dL/dcol = dy Wᵀ, added back where col came from
        rows, cols = live_taps(h, kh, stride, pad), live_taps(wd, kw, stride, pad)
        dcol = _product(dy.reshape(-1, o), o, 1, p, o, _tap_matrix(w, rows, cols).T)
        dx = np.empty(x.shape, dy.dtype)
        col2im(dcol.reshape(n, oh, ow, -1), rows, cols, stride, pad, dx)
    elif input_grad:
        dx = _convolve(dy, stride, kh - 1 - pad, h + kh - 1, wd + kw - 1,
                       w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1), 1, x.shape)
    return dx, np.ascontiguousarray(dw), db
