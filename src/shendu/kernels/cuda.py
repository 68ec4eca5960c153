"""The engine's kernels for CUDA GPUs, written with numba.cuda (the numba-cuda package).

The same names, argument orders and semantics as kernels.cpu, on numba.cuda device arrays of
float32 with images in NHWC, so that a layer picks its kernel module by device (`kernels.of(x)`;
float16 arrays get kernels.narrow's widened kernels, as on the CPU): convolution, pooling,
BatchNorm, the matrix product, element-wise operations, dropout's mask, the loss and the
optimizer updates, and the array helpers the layers use.

Layers pass images as NCHW views of NHWC memory (strides permuted, no copy), as on the CPU. An
array whose elements fill its memory in some order of its axes is "dense"; element-wise kernels
run over that memory flat, operands of different layouts being brought to one first.

Three patterns, each written once:
- one thread per element (THREADS threads a block), for element-wise work and pooling;
- tiles: a block of TILE × TILE threads computes a TILE × TILE tile of a matrix product, staging
  a tile of each factor in shared memory at a time, so that each value is read from global
  memory once per block rather than once per thread. The GEMM is one; convolution is another
  whose left factor, the patch matrix of im2col, is never stored: each entry is read from the
  image when its tile is staged (an "implicit GEMM");
- sums over rows: blocks of `norm.BLOCK` rows are summed in parallel into float64 partial sums,
  which are then added block by block in order, as `norm.column_sums` does on the CPU: the same
  sums on every run, whatever the GPU.

The kernels of the layers (convolution, pooling, ReLU, BatchNorm) equal, within float32
rounding, the kernels of the same names in kernels/textbook.py, the formulas as plain loops;
tests/test_textbook_kernels.py proves it.

Launches are asynchronous; `copy_to_host` waits for them. Under NUMBA_ENABLE_CUDASIM=1 the same
code runs in numba's CUDA simulator, every GPU thread a Python thread (the tests).
"""
import math

import numpy as np
from numba import cuda, float32, float64
from numba.cuda.cudadrv import devicearray
from numba.cuda.random import create_xoroshiro128p_states, xoroshiro128p_uniform_float32
from numpy.lib.stride_tricks import as_strided

from ..rng import generator
from . import recurrent
from .conv import out_size
from .norm import BLOCK

DEVICE = "cuda"
# numba.cuda's simulator (NUMBA_ENABLE_CUDASIM=1) has FakeCUDAArrays over NumPy arrays instead
SIMULATED = not hasattr(devicearray, "DeviceNDArray")
THREADS = 256  # threads per block, one thread per element
TILE = 16      # edge of a tile; tiled kernels run blocks of TILE × TILE threads
RANDOM_STATES = 64 * THREADS  # generators for dropout's mask, one per thread


def available():
    """Whether numba.cuda can run kernels here: a CUDA GPU with its driver, or the simulator.
    Never raises."""
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver or toolkit is "not available", not a crash
        return False


# -- arrays -----------------------------------------------------------------------------------
def _view(x, shape, strides, offset=0):
    """A view of x's memory from byte `offset` on, with this shape and these strides (bytes)."""
    if SIMULATED:  # the same view of the NumPy array under the FakeCUDAArray
        item = x.dtype.itemsize
        start = as_strided(x._ary, (offset // item + 1,), (item,))[-1:]
        return devicearray.FakeCUDAArray(as_strided(start, shape, strides))
    return devicearray.DeviceNDArray(shape, strides, x.dtype,
                                     gpu_data=x.gpu_data.view(offset) if offset else x.gpu_data)


def _is_dense(x):
    """Whether x's elements fill its memory (C-contiguous, or a permutation of its axes)."""
    size = x.dtype.itemsize
    for extent, stride in sorted(zip(x.shape, x.strides), key=lambda axis: axis[1]):
        if extent > 1 and stride != size:
            return False
        size *= extent
    return True


def _flat(x):
    """A dense x's memory as a 1-D array."""
    return _view(x, (x.size,), (x.dtype.itemsize,))


def _dense(x):
    return x if _is_dense(x) else contiguous(x)


def array(a):
    """a on the device: itself when it is there, else a copy of the (NumPy) array."""
    return a if getattr(a, "__cuda_ndarray__", False) else cuda.to_device(np.ascontiguousarray(a))


def empty(shape, dtype):
    return cuda.device_array(shape, dtype)


def empty_like(x, dtype=None):
    """A new array shaped like x, of x's dtype or `dtype`, with x's memory layout when x is dense
    (an NCHW view of NHWC memory stays one), else C-contiguous."""
    dtype = x.dtype if dtype is None else np.dtype(dtype)
    if not _is_dense(x):
        return empty(x.shape, dtype)
    strides = tuple(s // x.dtype.itemsize * dtype.itemsize for s in x.strides)
    return _view(empty(x.size, dtype), x.shape, strides)


def zeros(shape, dtype=np.float64):
    out = empty(shape, dtype)
    fill(out, 0)
    return out


def fill(a, value):
    """a = value, a dense."""
    _fill[_elementwise(a.size)](_flat(a), a.dtype.type(value))


def transpose(x, axes):
    """x with its axes reordered, as np.transpose: a view (no copy)."""
    return _view(x, tuple(x.shape[a] for a in axes), tuple(x.strides[a] for a in axes))


def view(x, index):
    """x[index] for basic slices (slice objects and at most one Ellipsis), as a view computed
    from x's strides: numba's own indexing visits every element of a strided result in Python."""
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (x.ndim - len(index) + 1) + index[at + 1:]
    index += (slice(None),) * (x.ndim - len(index))
    shape, strides, offset = [], [], 0
    for extent, stride, part in zip(x.shape, x.strides, index):
        start, stop, step = part.indices(extent)
        shape.append(len(range(start, stop, step)))
        strides.append(stride * step)
        offset += start * stride
    return _view(x, tuple(shape), tuple(strides), offset)


def _4d(x):
    """x (at most 4-D) as a 4-D view, leading axes of length 1 added."""
    extra = 4 - x.ndim
    return _view(x, (1,) * extra + tuple(x.shape), (x.dtype.itemsize,) * extra + tuple(x.strides))


def copy_into(dst, src):
    """dst[...] = src: arrays of the same shape (at most 4-D), any strides. Returns dst."""
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"copy_into: {tuple(src.shape)} into {tuple(dst.shape)}")
    _copy[_elementwise(dst.size)](_4d(src), _4d(dst))
    return dst


def copy(a):
    return copy_into(empty_like(a), a)


def cast(a, dtype, out=None):
    """a's values as `dtype`, into `out` or into a new array laid out like a: float32 and float16
    (kernels.narrow's storage on CUDA), each value rounded to the nearest, ties to even, as NumPy
    casts (an assignment between the two types in a kernel is the GPU's cvt.rn)."""
    return copy_into(empty_like(a, dtype) if out is None else out, a)


def contiguous(x):
    """x as a C-contiguous array: itself when it is one, else a copy."""
    return x if x.is_c_contiguous() else copy_into(empty(x.shape, x.dtype), x)


def _in_layout(b, a):
    """b's values in the memory layout of the dense a (b itself when it has it already)."""
    return b if tuple(b.strides) == tuple(a.strides) else copy_into(empty_like(a), b)


def synchronize():
    """Wait until every kernel queued on the GPU has run (timing a step needs its end)."""
    cuda.synchronize()


def on_host(f, *args):
    """f(*args) with NumPy on host copies of the device arrays among args (and in tuples among
    them), its array results copied to the device: BatchNorm's arithmetic on vectors of one value
    per channel, a few hundred bytes, whose formulas are so written once."""
    def host(a):
        if isinstance(a, tuple):
            return tuple(map(host, a))
        return a.copy_to_host() if getattr(a, "__cuda_ndarray__", False) else a
    return tuple(array(r) if isinstance(r, np.ndarray) else r for r in f(*map(host, args)))


# -- launch configurations --------------------------------------------------------------------
def _cdiv(a, b):
    return -(-a // b)


def _elementwise(size):
    """One thread per element: (blocks, threads per block), fewer threads than THREADS for an
    array smaller than that (a bias, a BatchNorm's channels): no idle threads to start, which the
    simulator pays for, each being a Python thread."""
    threads = min(THREADS, max(1, size))
    return _cdiv(max(1, size), threads), threads


def _tiles(rows, cols, depth=1):
    """A block of TILE × TILE threads per output tile (x along columns, y along rows), `depth`
    layers of them (z)."""
    return (_cdiv(cols, TILE), _cdiv(rows, TILE), depth), (TILE, TILE)


@cuda.jit(device=True)
def _unravel(k, shape):
    """The index (i, j, l, m) of element k of a C-contiguous 4-D array of this shape."""
    return (k // (shape[1] * shape[2] * shape[3]), k // (shape[2] * shape[3]) % shape[1],
            k // shape[3] % shape[2], k % shape[3])


# -- element-wise -----------------------------------------------------------------------------
@cuda.jit
def _fill(a, value):
    """a = value."""
    i = cuda.grid(1)
    if i < a.size:
        a[i] = value


@cuda.jit
def _relu(x, y):
    """y = max(x, 0) (NaN stays NaN, as with np.maximum)."""
    i = cuda.grid(1)
    if i < x.size:
        y[i] = float32(0) if x[i] < 0 else x[i]


@cuda.jit
def _relu_backward(dy, x, dx):
    """dx = dy where x > 0, else 0."""
    i = cuda.grid(1)
    if i < dy.size:
        dx[i] = dy[i] if x[i] > 0 else float32(0)


@cuda.jit
def _leaky_relu(x, slope, y):
    """y = x where x > 0, else slope · x."""
    i = cuda.grid(1)
    if i < x.size:
        y[i] = x[i] if x[i] > 0 else slope * x[i]


@cuda.jit
def _leaky_relu_backward(dy, x, slope, dx):
    """dx = dy where x > 0, else slope · dy."""
    i = cuda.grid(1)
    if i < dy.size:
        dx[i] = dy[i] if x[i] > 0 else slope * dy[i]


@cuda.jit
def _gather_rows(table, index, out):
    """out[t, d] = table[index[t], d]."""
    t, d = cuda.grid(2)
    if t < out.shape[0] and d < out.shape[1]:
        out[t, d] = table[index[t], d]


@cuda.jit
def _add_rows_at(dy, index, grad):
    """grad[v, d] = Σ dy[t, d] over the t with index[t] = v, in the order of t."""
    v, d = cuda.grid(2)
    if v < grad.shape[0] and d < grad.shape[1]:
        total = float32(0)
        for t in range(index.size):
            if index[t] == v:
                total += dy[t, d]
        grad[v, d] = total


@cuda.jit
def _add(a, b, out):
    """out = a + b."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] + b[i]


@cuda.jit
def _multiply(a, b, out):
    """out = a · b, b as long as a or repeated along it."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] * b[i % b.size]


@cuda.jit
def _scale(a, factor, out):
    """out = a · factor."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] * factor


@cuda.jit
def _flag_nonfinite(a, found):
    """found[0] = 1 if some a[i] is inf or NaN (every thread that finds one writes the same 1)."""
    i = cuda.grid(1)
    if i < a.size and not math.isfinite(a[i]):
        found[0] = 1


@cuda.jit
def _add_bias(y, b):
    """y[..., o] += b[o], y flattened (its last axis is the channel)."""
    i = cuda.grid(1)
    if i < y.size:
        y[i] += b[i % b.size]


@cuda.jit
def _copy(x, y):
    """y = x, for 4-D arrays of the same shape and any strides."""
    k = cuda.grid(1)
    if k < y.size:
        i = _unravel(k, y.shape)
        y[i] = x[i]


def relu_forward(x):
    """max(x, 0), a new device array.

    Equals `textbook.relu_forward`; tested in tests/test_textbook_kernels.py."""
    x = _dense(x)
    y = empty_like(x)
    _relu[_elementwise(x.size)](_flat(x), _flat(y))
    return y


def relu_backward(dy, y):
    """dL/dx = dy where y > 0 (y the forward output, or its input: both are > 0 at the same
    places).

    Equals `textbook.relu_backward`; tested in tests/test_textbook_kernels.py."""
    y = _dense(y)
    dx = empty_like(y)
    _relu_backward[_elementwise(y.size)](_flat(_in_layout(dy, y)), _flat(y), _flat(dx))
    return dx


def leaky_relu_forward(x, slope):
    """x where x > 0, else slope · x: a new device array, as cpu.leaky_relu_forward."""
    x = _dense(x)
    y = empty_like(x)
    _leaky_relu[_elementwise(x.size)](_flat(x), float32(slope), _flat(y))
    return y


def leaky_relu_backward(dy, x, slope):
    """dL/dx = dy where the input x > 0, else slope · dy."""
    x = _dense(x)
    dx = empty_like(x)
    _leaky_relu_backward[_elementwise(x.size)](_flat(_in_layout(dy, x)), _flat(x), float32(slope),
                                               _flat(dx))
    return dx


def embedding_forward(table, index):
    """table[index] for a flat device index of T rows: (T, D), as cpu.embedding_forward."""
    out = empty((index.size, table.shape[1]), np.float32)
    _gather_rows[_grid2(out.shape)](table, index, out)
    return out


def embedding_backward(dy, index, rows):
    """dL/dtable (rows, D), each token's dy added into its row in token order."""
    grad = empty((rows, dy.shape[1]), np.float32)
    _add_rows_at[_grid2(grad.shape)](_dense(dy), index, grad)
    return grad


_cell = cuda.jit(device=True)(recurrent.cell)
_cell_backward = cuda.jit(device=True)(recurrent.cell_backward)


@cuda.jit
def _lstm_cell(gates, c_prev, acts, c, h):
    """recurrent.lstm_cell, one thread per (row, unit)."""
    r, j = cuda.grid(2)
    size = c.shape[1]
    if r < c.shape[0] and j < size:
        (acts[r, j], acts[r, size + j], acts[r, 2 * size + j], acts[r, 3 * size + j],
         c[r, j], h[r, j]) = _cell(gates[r, j], gates[r, size + j], gates[r, 2 * size + j],
                                   gates[r, 3 * size + j], c_prev[r, j])


@cuda.jit
def _lstm_cell_backward(dh, dc_next, acts, c_prev, c, dgates, dc_prev):
    """recurrent.lstm_cell_backward, one thread per (row, unit)."""
    r, j = cuda.grid(2)
    size = c.shape[1]
    if r < c.shape[0] and j < size:
        (dgates[r, j], dgates[r, size + j], dgates[r, 2 * size + j], dgates[r, 3 * size + j],
         dc_prev[r, j]) = _cell_backward(
            acts[r, j], acts[r, size + j], acts[r, 2 * size + j], acts[r, 3 * size + j],
            c_prev[r, j], c[r, j], dh[r, j], dc_next[r, j])


def lstm_cell(gates, c_prev, acts, c, h):
    """An LSTM step's element-wise half into acts, c and h, as recurrent.lstm_cell."""
    _lstm_cell[_grid2(c.shape)](gates, c_prev, acts, c, h)


def lstm_cell_backward(dh, dc_next, acts, c_prev, c, dgates, dc_prev):
    """Its gradients into dgates and dc_prev, as recurrent.lstm_cell_backward."""
    _lstm_cell_backward[_grid2(c.shape)](dh, dc_next, acts, c_prev, c, dgates, dc_prev)


def _grid2(shape):
    """One thread per element of a 2-D array: (blocks, threads per block)."""
    return (_cdiv(shape[0], TILE), _cdiv(shape[1], TILE)), (TILE, TILE)


def add(a, b):
    """a + b (same shapes), a new device array: a residual connection."""
    a = _dense(a)
    out = empty_like(a)
    _add[_elementwise(a.size)](_flat(a), _flat(_in_layout(b, a)), _flat(out))
    return out


def add_relu(a, b):
    """max(a + b, 0), a new device array: a residual block's output after its ReLU."""
    return relu_forward(add(a, b))


def multiply(a, b):
    """a · b, a new device array: b of a's shape (dropout's mask), or a vector over a's last
    axis (BatchNorm's γ/σ)."""
    if b.ndim == 1 and a.ndim > 1:
        a, b = contiguous(a), contiguous(b)  # the last axis innermost
    else:
        a = _dense(a)
        b = _in_layout(b, a)
    out = empty_like(a)
    _multiply[_elementwise(a.size)](_flat(a), _flat(b), _flat(out))
    return out


def scaled(a, factor):
    """a · factor, a new array laid out like a (mixed precision's loss scale)."""
    a = _dense(a)
    out = empty_like(a)
    _scale[_elementwise(a.size)](_flat(a), a.dtype.type(factor), _flat(out))
    return out


def all_finite(a):
    """Whether every value of a is finite (no inf, no NaN): one flag comes back to the host."""
    a = _dense(a)
    found = zeros(1, np.int32)
    _flag_nonfinite[_elementwise(a.size)](_flat(a), found)
    return not found.copy_to_host()[0]


def add_bias(y, b):
    """y += b over y's last axis, in place (Linear's and Conv2d's bias); y C-contiguous."""
    _add_bias[_elementwise(y.size)](y.ravel(), b)


# -- matrix product ---------------------------------------------------------------------------
@cuda.jit
def _matmul(a, b, transpose_a, transpose_b, c):
    """c = op(a) · op(b), with op(a) = aᵀ when transpose_a (likewise b).

    A block computes the tile of c at (row0, col0); each of its threads one entry. The reduction
    runs over chunks of TILE: the block stages op(a)[rows, chunk] and op(b)[chunk, columns] in
    shared memory, each thread one entry of each, and then every thread reads its row and column
    of the two tiles from there.
    """
    a_tile = cuda.shared.array((TILE, TILE), float32)  # a_tile[r, k] = op(a)[row0 + r, k0 + k]
    b_tile = cuda.shared.array((TILE, TILE), float32)  # b_tile[k, s] = op(b)[k0 + k, col0 + s]
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    row0, col0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE
    m, n = c.shape
    depth = a.shape[0] if transpose_a else a.shape[1]
    acc = float32(0)
    for k0 in range(0, depth, TILE):
        # Neighbouring threads (tx) read neighbouring addresses (coalesced loads): along a row of
        # the matrix as stored, so a transposed operand swaps the roles of tx and ty.
        r, k = (tx, ty) if transpose_a else (ty, tx)
        value = float32(0)  # outside the matrix: zeros, which add nothing
        if row0 + r < m and k0 + k < depth:
            value = a[k0 + k, row0 + r] if transpose_a else a[row0 + r, k0 + k]
        a_tile[r, k] = value
        k, s = (tx, ty) if transpose_b else (ty, tx)
        value = float32(0)
        if k0 + k < depth and col0 + s < n:
            value = b[col0 + s, k0 + k] if transpose_b else b[k0 + k, col0 + s]
        b_tile[k, s] = value
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for t in range(TILE):
            acc += a_tile[ty, t] * b_tile[t, tx]
        cuda.syncthreads()  # everyone done with the tiles before they are overwritten
    if row0 + ty < m and col0 + tx < n:
        c[row0 + ty, col0 + tx] = acc


def matmul(a, b, transpose_a=False, transpose_b=False):
    """op(a) · op(b) as a new device array, op = transpose where asked: Linear's y = x Wᵀ
    (transpose_b), dW = dyᵀ x (transpose_a) and dx = dy W."""
    m, depth = a.shape[::-1] if transpose_a else a.shape
    depth_b, n = b.shape[::-1] if transpose_b else b.shape
    if depth != depth_b:
        raise ValueError(f"matmul: op(a) is {m}×{depth} but op(b) is {depth_b}×{n}")
    c = cuda.device_array((m, n), np.float32)
    _matmul[_tiles(m, n)](a, b, transpose_a, transpose_b, c)
    return c


# -- convolution ------------------------------------------------------------------------------
@cuda.jit(device=True)
def _patch(x, p, q, oh, ow, kw, stride, pad):
    """Entry (p, q) of the patch matrix of x (NHWC): row p an output pixel (n, i, j) of an oh × ow
    output, column q a tap (kernel row a, kernel column b, channel c), ordered as
    conv.im2col_reference orders a patch row; zero where the tap falls in the padding."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    img, i, j = p // (oh * ow), p // ow % oh, p % ow
    a, b, ch = q // (kw * c), q // c % kw, q % c
    r, s = i * stride - pad + a, j * stride - pad + b
    if 0 <= r < h and 0 <= s < w:
        return x[img, r, s, ch]
    return float32(0)


@cuda.jit
def _conv(x, w_mat, kh, kw, stride, pad, y):
    """y[n, i, j, o] = Σ_{a, b, c} x[n, i·stride − pad + a, j·stride − pad + b, c] ·
    w_mat[(a·kw + b)·C + c, o]: the patch matrix (rows (n, i, j), columns (a, b, c)) times w_mat,
    tile by tile, the patches read from x as they are staged. With w_mat from
    _weights_as_matrix(w, flip=False), y equals `textbook.conv_forward(x, w, None, stride, pad)`.

    A block computes TILE output pixels × TILE output channels; each thread one of them.
    """
    patches = cuda.shared.array((TILE, TILE), float32)  # patches[pixel, tap]
    weights = cuda.shared.array((TILE, TILE), float32)  # weights[tap, output channel]
    oh, ow, o = y.shape[1], y.shape[2], y.shape[3]
    rows, depth = y.shape[0] * oh * ow, kh * kw * x.shape[3]
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    p = cuda.blockIdx.y * TILE + ty  # this thread's output pixel (n, i, j), flattened
    col = cuda.blockIdx.x * TILE + tx  # and output channel
    acc = float32(0)
    for q0 in range(0, depth, TILE):
        # each thread stages one patch value of its pixel and one weight of its channel; taps
        # run along tx in the patches (channels innermost: neighbouring addresses of x)
        value = float32(0)
        if p < rows and q0 + tx < depth:
            value = _patch(x, p, q0 + tx, oh, ow, kw, stride, pad)
        patches[ty, tx] = value
        value = float32(0)
        if q0 + ty < depth and col < o:
            value = w_mat[q0 + ty, col]
        weights[ty, tx] = value
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for t in range(TILE):
            acc += patches[ty, t] * weights[t, tx]
        cuda.syncthreads()  # everyone done with the tiles before they are overwritten
    if p < rows and col < o:
        y[p // (oh * ow), p // ow % oh, p % ow, col] = acc


@cuda.jit
def _weight_matrix(w, flip, out):
    """The kernel w (O, C, KH, KW) as a matrix whose rows are ordered like a patch row:
    out[(a·KW + b)·C + c, o] = w[o, c, a, b]; with flip, the kernel flipped in space and
    transposed in channels, for dL/dx: out[(a·KW + b)·O + o, c] = w[o, c, KH−1−a, KW−1−b]. (The
    CPU kernels read w in place and build no such matrix.)"""
    k = cuda.grid(1)
    if k < w.size:
        o, c, a, b = _unravel(k, w.shape)
        channels_out, channels_in, kh, kw = w.shape
        if flip:
            out[((kh - 1 - a) * kw + kw - 1 - b) * channels_out + o, c] = w[o, c, a, b]
        else:
            out[(a * kw + b) * channels_in + c, o] = w[o, c, a, b]


@cuda.jit
def _dilate(dy, stride, out):
    """out = dy with stride − 1 zeros between neighbouring pixels: out[n, i·stride, j·stride] =
    dy[n, i, j], zero elsewhere."""
    k = cuda.grid(1)
    if k < out.size:
        img, r, s, ch = _unravel(k, out.shape)
        value = float32(0)
        if r % stride == 0 and s % stride == 0:
            value = dy[img, r // stride, s // stride, ch]
        out[img, r, s, ch] = value


@cuda.jit
def _weight_grad(dy, x, oh, ow, kh, kw, stride, pad, partial):
    """partial[z, o, c, a, b] = Σ_p dy[p, o] · patch[p, (a, b, c)] over the output pixels p of
    slice z (BLOCK pixels): dL/dw = dyᵀ · patches, the long reduction over (n, i, j) cut into
    slices so that many blocks share it. Σ_z partial[z] equals `textbook.conv_weight_grad`.

    A block computes TILE output channels × TILE taps of one slice; each thread one of them.
    """
    grads = cuda.shared.array((TILE, TILE), float32)  # grads[pixel, output channel]
    patches = cuda.shared.array((TILE, TILE), float32)  # patches[pixel, tap]
    o, c = dy.shape[1], x.shape[3]
    depth = kh * kw * c
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    q = cuda.blockIdx.x * TILE + tx  # this thread's tap
    o0 = cuda.blockIdx.y * TILE
    out = o0 + ty  # and output channel
    start = cuda.blockIdx.z * BLOCK
    end = min(dy.shape[0], start + BLOCK)
    acc = float32(0)
    for p0 in range(start, end, TILE):
        # each thread stages, for pixel p0 + ty, one gradient (channels along tx: neighbouring
        # addresses of dy) and its own tap of the patch
        p = p0 + ty
        value = float32(0)
        if p < end and o0 + tx < o:
            value = dy[p, o0 + tx]
        grads[ty, tx] = value
        value = float32(0)
        if p < end and q < depth:
            value = _patch(x, p, q, oh, ow, kw, stride, pad)
        patches[ty, tx] = value
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for t in range(TILE):
            acc += grads[t, ty] * patches[t, tx]
        cuda.syncthreads()  # everyone done with the tiles before they are overwritten
    if out < o and q < depth:
        partial[cuda.blockIdx.z, out, q % c, q // (kw * c), q // c % kw] = acc


def _convolve(x, w_mat, kh, kw, stride, pad, y):
    """y = x convolved with the weight matrix w_mat (see _conv); y gives the output's shape."""
    _conv[_tiles(y.size // y.shape[3], y.shape[3])](x, w_mat, kh, kw, stride, pad, y)


def _weights_as_matrix(w, flip):
    o, c, kh, kw = w.shape
    out = cuda.device_array((kh * kw * (o if flip else c), c if flip else o), np.float32)
    _weight_matrix[_elementwise(w.size)](w, flip, out)
    return out


def conv_forward(x, w, b, stride, pad, relu=False):
    """x (N, H, W, C) and w (O, C, KH, KW) → y (N, OH, OW, O), plus the bias b (O,) unless None;
    max(y, 0) if relu.

    Equals `textbook.conv_forward`; tested in tests/test_textbook_kernels.py."""
    n, h, wd, _ = x.shape
    o, c, kh, kw = w.shape
    y = cuda.device_array((n, out_size(h, kh, stride, pad), out_size(wd, kw, stride, pad), o),
                          np.float32)
    _convolve(x, _weights_as_matrix(w, flip=False), kh, kw, stride, pad, y)
    if b is not None:
        add_bias(y, b)
    if relu:
        _relu[_elementwise(y.size)](_flat(y), _flat(y))  # in place: each thread its own element
    return y


def conv_backward(dy, x, w, stride, pad, input_grad=True):
    """dL/dx (NHWC; None unless input_grad), dL/dw (O, C, KH, KW) and dL/db from dy
    (N, OH, OW, O) and the input x, as conv.conv_backward.

    dL/dw sums dy[p, o] · patch[p, tap] over the output pixels p, in slices summed in order;
    dL/db sums dy over them. dL/dx is itself a convolution: dy (with stride − 1 zeros between its
    pixels) correlated with the kernel flipped in space and transposed in channels, padded by
    k − 1 − pad (the forward kernel, no scatter-add).

    Equals `textbook.conv_backward`; tested in tests/test_textbook_kernels.py.
    """
    o, c, kh, kw = w.shape
    n, oh, ow, _ = dy.shape
    rows = n * oh * ow
    dy_rows = dy.reshape(rows, o)
    slices = _cdiv(rows, BLOCK)
    partial = cuda.device_array((slices, o, c, kh, kw), np.float32)
    _weight_grad[_tiles(o, kh * kw * c, slices)](dy_rows, x, oh, ow, kh, kw, stride, pad, partial)
    dw = sum_rows(partial.reshape(slices, partial.size // slices)).reshape(o, c, kh, kw)
    db = sum_rows(dy_rows)
    if not input_grad:
        return None, dw, db
    dilated = dy
    if stride > 1:
        dilated = cuda.device_array((n, (oh - 1) * stride + 1, (ow - 1) * stride + 1, o),
                                    np.float32)
        _dilate[_elementwise(dilated.size)](dy, stride, dilated)
    dx = cuda.device_array(x.shape, np.float32)
    _convolve(dilated, _weights_as_matrix(w, flip=True), kh, kw, 1, kh - 1 - pad, dx)
    return dx, dw, db


# -- pooling ----------------------------------------------------------------------------------
@cuda.jit
def _maxpool_forward(x, k, stride, pad, y, arg):
    """One thread per output: y = the window maximum (padding never wins), arg = where it came
    from (row · W + column), the first maximum on ties."""
    t = cuda.grid(1)
    if t < y.size:
        img, i, j, ch = _unravel(t, y.shape)
        h, w = x.shape[1], x.shape[2]
        best = float32(-math.inf)
        where = max(i * stride - pad, 0) * w + max(j * stride - pad, 0)
        for a in range(k):
            r = i * stride - pad + a
            for b in range(k):
                s = j * stride - pad + b
                if 0 <= r < h and 0 <= s < w and x[img, r, s, ch] > best:
                    best = x[img, r, s, ch]
                    where = r * w + s
        y[img, i, j, ch] = best
        arg[img, i, j, ch] = where


@cuda.jit
def _maxpool_backward(dy, arg, dx):
    """One thread per output: its gradient goes to the input that won its window. Windows that
    overlap (stride < k) may send two gradients to one input, hence the atomic addition."""
    t = cuda.grid(1)
    if t < dy.size:
        img, i, j, ch = _unravel(t, dy.shape)
        where = arg[img, i, j, ch]
        cuda.atomic.add(dx, (img, where // dx.shape[2], where % dx.shape[2], ch), dy[img, i, j, ch])


@cuda.jit
def _avgpool_forward(x, k, stride, pad, y):
    """One thread per output: the window's mean, padded cells counting as zeros."""
    t = cuda.grid(1)
    if t < y.size:
        img, i, j, ch = _unravel(t, y.shape)
        total = float32(0)
        for a in range(k):
            r = i * stride - pad + a
            for b in range(k):
                s = j * stride - pad + b
                if 0 <= r < x.shape[1] and 0 <= s < x.shape[2]:
                    total += x[img, r, s, ch]
        y[img, i, j, ch] = total / float32(k * k)


@cuda.jit
def _avgpool_backward(dy, k, stride, pad, dx):
    """One thread per input: the sum of dy / k² over the windows that cover it. Window (i, j)
    covers rows i·stride − pad ... i·stride − pad + k − 1, so row r lies in the windows i from
    ⌈(r + pad − k + 1) / stride⌉ to ⌊(r + pad) / stride⌋ (gathered: no two threads write one
    place)."""
    t = cuda.grid(1)
    if t < dx.size:
        img, r, s, ch = _unravel(t, dx.shape)
        total = float32(0)
        # ⌈u / stride⌉ = ⌊(u + stride − 1) / stride⌋, also for negative u
        for i in range(max(0, (r + pad - k + stride) // stride),
                       min(dy.shape[1], (r + pad) // stride + 1)):
            for j in range(max(0, (s + pad - k + stride) // stride),
                           min(dy.shape[2], (s + pad) // stride + 1)):
                total += dy[img, i, j, ch] / float32(k * k)
        dx[img, r, s, ch] = total


def maxpool_forward(x, k, stride, pad, y, arg):
    """y = the window maximum; arg = where it came from (row * W + column), as pool.py; arg None
    (inference) gets scratch space, so that the kernel has one signature.

    Equals `textbook.maxpool_forward` (y and arg); tested in tests/test_textbook_kernels.py."""
    arg = empty(y.shape, np.int32) if arg is None else arg
    _maxpool_forward[_elementwise(y.size)](x, k, stride, pad, y, arg)


def maxpool_backward(dy, arg, dx):
    """Each output's gradient goes back to the one input that won its window.

    Equals `textbook.maxpool_backward`; tested in tests/test_textbook_kernels.py."""
    fill(dx, 0)
    _maxpool_backward[_elementwise(dy.size)](dy, arg, dx)


def avgpool_forward(x, k, stride, pad, y):
    """y = the window mean, padded cells counting as zeros.

    Equals `textbook.avgpool_forward`; tested in tests/test_textbook_kernels.py."""
    _avgpool_forward[_elementwise(y.size)](x, k, stride, pad, y)


def avgpool_backward(dy, k, stride, pad, dx):
    """Each output's gradient is shared equally, dy / k², by the k × k cells of its window.

    Equals `textbook.avgpool_backward`; tested in tests/test_textbook_kernels.py."""
    _avgpool_backward[_elementwise(dx.size)](dy, k, stride, pad, dx)


@cuda.jit
def _channel_means(x, y):
    """One thread per (image, channel): y[n, c] = the mean of x[n, :, :, c] (x NHWC)."""
    t = cuda.grid(1)
    if t < y.size:
        img, ch = t // y.shape[1], t % y.shape[1]
        total = float32(0)
        for r in range(x.shape[1]):
            for s in range(x.shape[2]):
                total += x[img, r, s, ch]
        y[img, ch] = total / float32(x.shape[1] * x.shape[2])


@cuda.jit
def _spread_means(dy, dx):
    """One thread per input: dx[n, r, s, c] = dy[n, c] / (H·W) (dx NHWC)."""
    t = cuda.grid(1)
    if t < dx.size:
        img, r, s, ch = _unravel(t, dx.shape)
        dx[img, r, s, ch] = dy[img, ch] / float32(dx.shape[1] * dx.shape[2])


def global_avgpool_forward(x):
    """(N, C, H, W) → (N, C): each channel's mean."""
    n, c, _, _ = x.shape
    x = contiguous(transpose(x, (0, 2, 3, 1)))  # NHWC
    y = empty((n, c), np.float32)
    _channel_means[_elementwise(y.size)](x, y)
    return y


def global_avgpool_backward(dy, shape):
    """dL/dx (N, C, H, W) = dy / (H·W) at every position, an NCHW view of NHWC memory."""
    n, c, h, w = shape
    dx = empty((n, h, w, c), np.float32)
    _spread_means[_elementwise(dx.size)](contiguous(dy), dx)
    return transpose(dx, (0, 3, 1, 2))


# -- batch normalisation ----------------------------------------------------------------------
@cuda.jit
def _column_partials(a, b, shift, s1, s2):
    """s1[z, j] = Σ a[i, j] and s2[z, j] = Σ (a[i, j] − shift[j]) · b[i, j] over the rows i of
    block z (BLOCK rows), in float64.

    Thread (tx, ty) of the block sums column j = its tile's column tx over every TILE-th row from
    ty; then the TILE lanes of each column are added in order through shared memory.
    """
    lanes1 = cuda.shared.array((TILE, TILE), float64)
    lanes2 = cuda.shared.array((TILE, TILE), float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    j, z = cuda.blockIdx.x * TILE + tx, cuda.blockIdx.y
    t1, t2 = float64(0), float64(0)
    if j < a.shape[1]:
        for i in range(z * BLOCK + ty, min(a.shape[0], (z + 1) * BLOCK), TILE):
            t1 += a[i, j]
            t2 += (a[i, j] - shift[j]) * b[i, j]
    lanes1[ty, tx] = t1
    lanes2[ty, tx] = t2
    cuda.syncthreads()  # every lane written before the first of each column adds them
    if ty == 0 and j < a.shape[1]:
        for lane in range(1, TILE):
            t1 += lanes1[lane, tx]
            t2 += lanes2[lane, tx]
        s1[z, j] = t1
        s2[z, j] = t2


@cuda.jit
def _column_totals(s1, s2, count, out1, out2):
    """out = Σ_z s[z] / count per column, the blocks added in order."""
    j = cuda.grid(1)
    if j < out1.size:
        t1, t2 = float64(0), float64(0)
        for z in range(s1.shape[0]):
            t1 += s1[z, j]
            t2 += s2[z, j]
        out1[j] = t1 / count
        out2[j] = t2 / count


def _column_reduction(a, b, shift, count, dtype):
    """Σ_i a[i] / count and Σ_i (a[i] − shift) · b[i] / count, per column of a (M, C), summed in
    float64 and returned as dtype."""
    m, c = a.shape
    blocks = max(1, _cdiv(m, BLOCK))
    s1 = cuda.device_array((blocks, c), np.float64)
    s2 = cuda.device_array((blocks, c), np.float64)
    _column_partials[(_cdiv(c, TILE), blocks), (TILE, TILE)](a, b, shift, s1, s2)
    out1, out2 = cuda.device_array(c, dtype), cuda.device_array(c, dtype)
    _column_totals[_elementwise(c)](s1, s2, float64(count), out1, out2)
    return out1, out2


def column_sums(a, b, shift):
    """Σ_i a[i] and Σ_i (a[i] − shift) · b[i], per column, in float64.

    Equals `textbook.column_sums`; tested in tests/test_textbook_kernels.py."""
    return _column_reduction(a, b, shift, 1, np.float64)


def sum_rows(a):
    """Σ_i a[i] per column of a (M, C), in a's dtype (summed in float64): bias gradients."""
    return _column_reduction(a, a, zeros(a.shape[1]), 1, a.dtype)[0]


def batch_stats(x):
    """Mean and biased variance of each column of x (M, C), float64, in two passes (no
    cancellation: Σ (x − μ) x = Σ (x − μ)²).

    Equals `textbook.batch_stats`; tested in tests/test_textbook_kernels.py."""
    mean = _column_reduction(x, x, zeros(x.shape[1]), len(x), np.float64)[0]
    return mean, _column_reduction(x, x, mean, len(x), np.float64)[1]


@cuda.jit
def _normalize(x, mean, inv_std, gamma, beta, relu, y):
    k = cuda.grid(1)
    if k < x.size:
        i, j = k // x.shape[1], k % x.shape[1]
        v = (x[i, j] - mean[j]) * inv_std[j] * gamma[j] + beta[j]
        y[i, j] = 0 if relu and v < 0 else v


@cuda.jit
def _normalized(x, mean, inv_std, gamma, beta, dy, relu, xhat, g):
    """x̂ = (x − μ) / σ as _normalize computes it, and g = dy, with relu only where γ x̂ + β > 0
    (where a ReLU after BatchNorm let the output through), else 0."""
    k = cuda.grid(1)
    if k < x.size:
        i, j = k // x.shape[1], k % x.shape[1]
        h = (x[i, j] - mean[j]) * inv_std[j]
        xhat[i, j] = h
        g[i, j] = dy[i, j] if not relu or h * gamma[j] + beta[j] > 0 else 0


@cuda.jit
def _normalize_backward(dy, x, mean, inv_std, mean_dy, mean_dy_xhat, gamma, beta, relu, dx):
    k = cuda.grid(1)
    if k < dy.size:
        i, j = k // dy.shape[1], k % dy.shape[1]
        h = (x[i, j] - mean[j]) * inv_std[j]
        g = dy[i, j] if not relu or h * gamma[j] + beta[j] > 0 else 0
        dx[i, j] = gamma[j] * inv_std[j] * (g - mean_dy[j] - h * mean_dy_xhat[j])


def normalize(x, mean, inv_std, gamma, beta, relu, y):
    """y = γ x̂ + β with x̂ = (x − μ) / σ, then max(y, 0) if relu, one thread per element.

    Equals `textbook.normalize`; tested in tests/test_textbook_kernels.py."""
    _normalize[_elementwise(x.size)](x, mean, inv_std, gamma, beta, relu, y)


def grad_sums(dy, x, mean, inv_std, gamma, beta, relu):
    """Σ_i g[i] and Σ_i g[i] · x̂[i], per column, in float64; x̂ recomputed from x, g = dy where
    γ x̂ + β > 0 with relu, dy without. x̂ and g are a pass of their own here, then column_sums
    (the CPU kernel computes them inside its sums).

    Equals `textbook.grad_sums`; tested in tests/test_textbook_kernels.py."""
    xhat, g = cuda.device_array_like(dy), cuda.device_array_like(dy)
    _normalized[_elementwise(dy.size)](x, mean, inv_std, gamma, beta, dy, relu, xhat, g)
    return column_sums(g, xhat, zeros(dy.shape[1]))


def normalize_backward(dy, x, mean, inv_std, mean_dy, mean_dy_xhat, gamma, beta, relu, dx):
    """dx = γ/σ · (g − mean(g) − x̂ · mean(g x̂)), one thread per element, x̂ and g as in
    grad_sums.

    Equals `textbook.normalize_backward`; tested in tests/test_textbook_kernels.py."""
    _normalize_backward[_elementwise(dy.size)](dy, x, mean, inv_std, mean_dy, mean_dy_xhat, gamma,
                                               beta, relu, dx)


# -- dropout ----------------------------------------------------------------------------------
@cuda.jit
def _dropout_mask(states, p, scale, mask):
    """mask = scale where a uniform draw is ≥ p, else 0. Thread t draws for the elements t,
    t + T, t + 2T, ... (T = the number of generators) from its own generator, states[t]."""
    t = cuda.grid(1)
    if t < states.size:
        for k in range(t, mask.size, states.size):
            mask[k] = scale if xoroshiro128p_uniform_float32(states, t) >= p else float32(0)


def random_states(seed, n):
    """n xoroshiro128+ generators on the device (independent subsequences of one seed), for
    dropout masks; each mask drawn advances them."""
    return create_xoroshiro128p_states(n, seed=seed)


# The device's generators and the shendu generator they were seeded from: a new one (from
# shendu.manual_seed, or a checkpoint's state restored) seeds them again, so seeded runs repeat.
_random = {"seeded_from": None, "states": None}


def dropout_mask(x, p):
    """Inverted dropout's mask for x (in x's memory layout), drawn on the device: 0 with
    probability p, else 1 / (1 − p)."""
    host = generator()
    if _random["seeded_from"] is not host:
        _random.update(seeded_from=host,
                       states=random_states(int(host.integers(2 ** 63)), RANDOM_STATES))
    states = _random["states"]
    mask = empty_like(x)
    scale = np.float32(1) / np.float32(1 - p)  # as NumPy computes keep.astype(float32) / (1 − p)
    _dropout_mask[_elementwise(states.size)](states, np.float32(p), scale, _flat(mask))
    return mask


# -- loss -------------------------------------------------------------------------------------
@cuda.jit
def _cross_entropy(z, t, q_other, q_label, rows, loss, dz):
    """One thread per row n: with log p = z − max z − log Σ exp(z − max z) and the smoothed
    target q (q_label at the label t[n], q_other elsewhere), loss[n] = −Σ_k q_k log p_k and
    dz[n] = (p − q) / N."""
    n = cuda.grid(1)
    if n < z.shape[0]:
        top = z[n, 0]
        for k in range(1, z.shape[1]):
            top = max(top, z[n, k])
        total = float32(0)
        for k in range(z.shape[1]):
            total += math.exp(z[n, k] - top)
        log_total = math.log(total)
        row = float32(0)
        for k in range(z.shape[1]):
            log_p = z[n, k] - top - log_total
            q = q_label if k == t[n] else q_other
            row -= q * log_p
            dz[n, k] = (math.exp(log_p) - q) / rows
        loss[n] = row


def cross_entropy(logits, t, label_smoothing=0.0):
    """Softmax cross-entropy of logits (N, K) against integer labels t (N,) in [0, K) (host or
    device), the target smoothed towards uniform (q = (1 − ε) onehot + ε / K), as
    nn.CrossEntropyLoss: returns the mean loss (a Python float) and dL/dlogits (a device array)."""
    n, k = logits.shape
    t = array(t)
    q_other = np.float32(label_smoothing / k)
    q_label = q_other + np.float32(1 - label_smoothing)
    loss = cuda.device_array(n, np.float32)
    dz = cuda.device_array_like(logits)
    _cross_entropy[_elementwise(n)](logits, t, q_other, q_label, np.float32(n), loss, dz)
    return float(loss.copy_to_host().sum(dtype=np.float64) / n), dz


# -- optimizer updates ------------------------------------------------------------------------
# Hyperparameters arrive as float32, as NumPy turns Python scalars into float32 beside float32
# arrays, and every formula keeps optim.py's order of operations: the same roundings.
@cuda.jit
def _sgd(p, g, v, lr, momentum, nesterov, weight_decay, first):
    """d = g + wd·p; with a velocity: v ← d at the first step, else μ v + d, and
    d ← d + μ v (Nesterov) or v; then p ← p − lr·d."""
    i = cuda.grid(1)
    if i < p.size:
        d = g[i] + weight_decay * p[i] if weight_decay != 0 else g[i]
        if v is not None:  # no momentum, no velocity: this branch is compiled away
            v[i] = d if first else momentum * v[i] + d
            d = d + momentum * v[i] if nesterov else v[i]
        p[i] -= lr * d


@cuda.jit
def _adam(p, g, m, v, decay, l2, b1, one_minus_b1, b2, one_minus_b2, step, bias2, eps):
    """p ← p·decay (AdamW's decoupled decay; 1 for Adam); d = g + l2·p (Adam's L2);
    m ← β₁m + (1 − β₁)d; v ← β₂v + (1 − β₂)d²; p ← p − step·m / (√(v / bias2) + ε), with
    step = lr / (1 − β₁ᵗ) and bias2 = 1 − β₂ᵗ (the bias corrections)."""
    i = cuda.grid(1)
    if i < p.size:
        p[i] *= decay
        d = g[i] + l2 * p[i] if l2 != 0 else g[i]
        m[i] = m[i] * b1 + one_minus_b1 * d
        v[i] = v[i] * b2 + one_minus_b2 * d * d
        p[i] -= step * m[i] / (math.sqrt(v[i] / bias2) + eps)


def sgd_step(p, grad, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """One step of optim.SGD on the device arrays p and grad, in place: v ← μ v + g (v = g at the
    first step), p ← p − lr · (g + μ v if Nesterov else v), with g = grad + weight_decay · p.
    Returns the velocity: None without momentum, created by the first step (velocity None)."""
    first = bool(momentum) and velocity is None
    if first:
        velocity = cuda.device_array_like(p)
    _sgd[_elementwise(p.size)](p.ravel(), grad.ravel(), velocity.ravel() if momentum else None,
                               np.float32(lr), np.float32(momentum), nesterov,
                               np.float32(weight_decay), first)
    return velocity if momentum else None


def adam_step(p, grad, m, v, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              decoupled=False):
    """One step of optim.Adam (optim.AdamW with decoupled) on device arrays, in place: p, its
    gradient, the moments m and v (zeros before the first step) and t, the number of this step
    (1, 2, ...)."""
    b1, b2 = betas
    f = np.float32
    decay, l2 = (1 - lr * weight_decay, 0.0) if decoupled else (1.0, weight_decay)
    _adam[_elementwise(p.size)](p.ravel(), grad.ravel(), m.ravel(), v.ravel(), f(decay), f(l2),
                                f(b1), f(1 - b1), f(b2), f(1 - b2), f(lr / (1 - b1 ** t)),
                                f(1 - b2 ** t), f(eps))
