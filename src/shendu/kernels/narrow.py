"""The kernels for arrays stored in 16 bits: float16 (IEEE half precision: 5 exponent bits, 10 of
mantissa) and bfloat16 (8 and 7: float32's range, less precision; NumPy's through ml_dtypes), on
the CPU, and float16 on CUDA (numba.cuda has no bfloat16 arrays).

What 16-bit hardware does (a GPU's tensor cores, AVX-512 BF16's dot products) is multiply 16-bit
values and add the products in float32. So does every kernel here: it runs the float32 kernel of
the same name (kernels.cpu's, or kernels.cuda's on the GPU) on float32 copies of its 16-bit
arrays (exact: every 16-bit value is a float32), and rounds what it writes or returns to the
16-bit type. Weights, the activations between layers and the outputs are stored in 16 bits; only
the arithmetic inside a kernel is wider, and each kernel's result is rounded once. NumPy and Numba
have no 16-bit arithmetic on this CPU, so the copies cost a pass over memory each way: here 16
bits halve the memory a model and its activations take, not the time. The copies are made by
`cast`: on the CPU on the numbers' bit patterns, on every core (NumPy's own casts to and from
float16 take 2-3 ns a number here, eight times a copy); on CUDA by a kernel of assignments, which
the GPU converts in one instruction. A GPU whose tensor cores take float16 directly would need
no copies: these kernels keep the float32 ones, so the CUDA path halves memory, not time, too.

`kernels.of(a)` gives `narrow(a.dtype, device)` for a 16-bit array: an object with the device's
kernel names, its storage functions unchanged and its computing ones widened.
"""
import functools

import ml_dtypes
import numpy as np
from numba import njit, prange

from ..errors import ShenduError
from . import cpu

DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
CUDA_DTYPES = {np.dtype(np.float32), DTYPES["float16"]}  # what arrays on CUDA store


def check_cuda_dtype(dtype, advice=""):
    """Refuse, with one line ending in `advice`, a type that arrays on CUDA do not store."""
    if np.dtype(dtype) not in CUDA_DTYPES:
        raise ShenduError(f"on CUDA a model is stored as float32 or float16, not {dtype}{advice}")

# Functions that only hold, move or view arrays: the same for every storage type.
_STORAGE = {"view", "copy", "copy_into", "fill", "synchronize", "on_host", "generator",
            "shard_of_batch", "empty", "empty_like", "zeros", "transpose", "contiguous"}
# Arguments a kernel writes into (by position): rounded back into their 16-bit arrays.
_WRITES = {"add_bias": (0,), "maxpool_forward": (4,), "avgpool_forward": (4,),
           "maxpool_backward": (2,), "avgpool_backward": (4,), "normalize": (6,),
           "normalize_backward": (9,), "lstm_cell": (2, 3, 4), "lstm_cell_backward": (5, 6),
           "sgd_step": (0,), "adam_step": (0, 2, 3)}


@functools.cache
def narrow(dtype, device="cpu"):
    """The kernels for arrays stored as `dtype` (float16 or bfloat16; float16 only on "cuda")."""
    dtype = np.dtype(dtype)
    if device == "cpu":
        return Narrow(dtype, cpu)
    check_cuda_dtype(dtype)
    from . import cuda
    return Narrow(dtype, cuda)


class Narrow:
    def __init__(self, dtype, base):
        self.dtype, self.base, self.DEVICE = dtype, base, base.DEVICE

    def __repr__(self):
        return f"kernels for {self.dtype} on the {self.DEVICE.upper()}"

    def array(self, a):
        """a on this device, in this 16-bit type (a model's input is cast, on the host when it
        is there: half the bytes to send)."""
        if _on_device(a) or (isinstance(a, np.ndarray) and a.dtype == np.float32):
            return self.base.array(cast(a, self.dtype))
        return self.base.array(np.asarray(a).astype(self.dtype, copy=False))

    def __getattr__(self, name):
        value = getattr(self.base, name)
        if name in _STORAGE or not callable(value):
            return value
        wide = functools.partial(_widened, value, self.dtype, _WRITES.get(name, ()))
        setattr(self, name, wide)  # found once
        return wide


def _widened(kernel, dtype, writes, *args, **kwargs):
    """kernel(*args, **kwargs) on float32 copies of the 16-bit arrays; the arguments it writes
    and the arrays it returns rounded to `dtype`."""
    wide = [_float32(a) for a in args]
    result = kernel(*wide, **{k: _float32(v) for k, v in kwargs.items()})
    for i in writes:
        if wide[i] is not args[i]:
            cast(wide[i], dtype, out=args[i])
    return _rounded(result, dtype)


def _on_device(a):
    return getattr(a, "__cuda_ndarray__", False)


def _is_array(a):
    return isinstance(a, np.ndarray) or _on_device(a)


def _float32(a):
    return cast(a, np.float32) if _is_array(a) and a.dtype in _NARROW else a


def _rounded(result, dtype):
    if isinstance(result, tuple):
        return tuple(_rounded(r, dtype) for r in result)
    if _is_array(result) and result.dtype == np.float32:
        return cast(result, dtype)
    return result


_NARROW = set(DTYPES.values())


# -- casts between float32 and 16 bits ---------------------------------------------------------
def cast(a, dtype, out=None):
    """a (float32, float16 or bfloat16) cast to `dtype`, one of the others: into `out` (of a's
    shape) or into a new array laid out like a (a itself if it is of `dtype` already). Exactly
    NumPy's cast (ml_dtypes' for bfloat16): rounding to the nearest, ties to even; subnormals,
    infinities and signed zeros kept; NaN stays NaN (tests/test_precision.py checks every 16-bit
    value and the float32 values at and around each rounding boundary). On CUDA: float32 and
    float16 arrays, by kernels.cuda.cast."""
    dtype = np.dtype(dtype)
    if out is None and a.dtype == dtype:
        return a
    if _on_device(a):
        from . import cuda
        return cuda.cast(a, dtype, out)
    if out is None:
        a = cpu._dense(a)  # a dense copy once, if a is not: read below without another
        out = np.empty_like(a, dtype=dtype)
    order = np.argsort([-s for s in out.strides], kind="stable")
    source, target = a.transpose(order), out.transpose(order)
    if not target.flags.c_contiguous:
        out[...] = a  # a layout these loops do not take: NumPy's cast
        return out
    kernel = _CASTS[a.dtype, dtype]
    source = np.ascontiguousarray(source).reshape(-1)  # a copy only if a is laid out otherwise
    kernel(source.view(_BITS[a.dtype]), target.reshape(-1).view(_BITS[dtype]))
    return out


@njit(parallel=True, cache=True)
def half_to_single(h, f):
    """float16 bit patterns h (sign, 5 exponent bits biased by 15, 10 mantissa bits) to float32
    ones f (sign, 8 bits biased by 127, 23): exact, every float16 is a float32."""
    for i in prange(h.size):
        x = np.int32(h[i])  # integer arithmetic in a signed type: Numba's uint16 ops are slow
        sign, e, m = (x >> 15) << 31, (x >> 10) & 0x1F, x & 0x3FF
        if e == 31:  # infinity, NaN
            f[i] = sign | 0x7F800000 | m << 13
        elif e > 0:  # normal: only the bias changes
            f[i] = sign | (e + 112) << 23 | m << 13
        elif m == 0:
            f[i] = sign
        else:  # subnormal: m · 2⁻²⁴ = 2^(k − 24) · m / 2^k, with k m's highest bit
            k = 9
            while not (m >> k) & 1:
                k -= 1
            f[i] = sign | (k + 103) << 23 | (m ^ (1 << k)) << (23 - k)


@njit(parallel=True, cache=True)
def single_to_half(f, h):
    """float32 bit patterns f to float16 ones h, rounded to the nearest, ties to even."""
    for i in prange(f.size):
        sign, a = (f[i] >> 16) & 0x8000, f[i] & 0x7FFFFFFF
        if a > 0x7F800000:  # NaN
            h[i] = sign | 0x7E00
        elif a >= 0x47800000:  # |x| ≥ 2¹⁶: beyond 65504 and its rounding range
            h[i] = sign | 0x7C00
        elif a >= 0x38800000:  # a normal float16: rebias, drop 13 bits rounding to even
            h[i] = sign | (a - (112 << 23) + 0xFFF + ((a >> 13) & 1)) >> 13
        else:  # |x| < 2⁻¹⁴: the subnormal |x| · 2²⁴ = M · 2^(e − 126), M the 24-bit mantissa
            shift = 126 - (a >> 23)
            if shift > 24 or a < 0x800000:  # below half the smallest subnormal, or 0
                h[i] = sign
            else:
                mantissa = (a & 0x7FFFFF) | 0x800000
                q, r, half = mantissa >> shift, mantissa & ((1 << shift) - 1), 1 << (shift - 1)
                h[i] = sign | (q + (r > half or (r == half and q & 1)))


@njit(parallel=True, cache=True)
def bfloat16_to_single(b, f):
    """bfloat16 is float32's top 16 bits."""
    for i in prange(b.size):
        f[i] = b[i] << 16


@njit(parallel=True, cache=True)
def single_to_bfloat16(f, b):
    """float32's top 16 bits, rounded to the nearest, ties to even (a carry may reach the
    exponent, and infinity, as it should)."""
    for i in prange(f.size):
        if f[i] & 0x7FFFFFFF > 0x7F800000:  # NaN
            b[i] = (f[i] >> 16) | 0x7FC0
        else:
            b[i] = (f[i] + 0x7FFF + ((f[i] >> 16) & 1)) >> 16


_F32, _F16, _BF16 = np.dtype(np.float32), DTYPES["float16"], DTYPES["bfloat16"]
_BITS = {_F32: np.uint32, _F16: np.uint16, _BF16: np.uint16}
_CASTS = {(_F16, _F32): half_to_single, (_F32, _F16): single_to_half,
          (_BF16, _F32): bfloat16_to_single, (_F32, _BF16): single_to_bfloat16}
