"""The CPU's kernels for arrays stored in 16 bits: float16 (IEEE half precision: 5 exponent bits,
10 of mantissa) and bfloat16 (8 and 7: float32's range, less precision; NumPy's through ml_dtypes).

What 16-bit hardware does (a GPU's tensor cores, AVX-512 BF16's dot products) is multiply 16-bit
values and add the products in float32. So does every kernel here: it runs the float32 kernel of
kernels.cpu of the same name on float32 copies of its 16-bit arrays (exact: every 16-bit value is
a float32), and rounds what it writes or returns to the 16-bit type. Weights, the activations
between layers and the outputs are stored in 16 bits; only the arithmetic inside a kernel is
wider, and each kernel's result is rounded once. NumPy and Numba have no 16-bit arithmetic on this
CPU, so the copies cost a pass over memory each way: here 16 bits halve the memory a model and its
activations take, not the time.

`kernels.of(a)` gives `narrow(a.dtype)` for a 16-bit NumPy array: an object with kernels.cpu's
names, its storage functions unchanged and its computing ones widened.
"""
import functools

import ml_dtypes
import numpy as np

from . import cpu

DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}

# Functions that only hold, move or view arrays: the same for every storage type.
_STORAGE = {"view", "copy", "copy_into", "fill", "synchronize", "on_host", "generator",
            "shard_of_batch", "empty", "empty_like", "zeros", "transpose", "contiguous"}
# Arguments a kernel writes into (by position): rounded back into their 16-bit arrays.
_WRITES = {"add_bias": (0,), "maxpool_forward": (4,), "avgpool_forward": (4,),
           "maxpool_backward": (2,), "avgpool_backward": (4,), "normalize": (6,),
           "normalize_backward": (9,)}


@functools.cache
def narrow(dtype):
    """The kernels for arrays stored as `dtype` (float16 or bfloat16)."""
    return Narrow(np.dtype(dtype))


class Narrow:
    DEVICE = "cpu"

    def __init__(self, dtype):
        self.dtype = dtype

    def __repr__(self):
        return f"kernels for {self.dtype} on the CPU"

    def array(self, a):
        """a on this device: a NumPy array in this 16-bit type (a model's input is cast)."""
        return np.asarray(a).astype(self.dtype, copy=False)

    def __getattr__(self, name):
        value = getattr(cpu, name)
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
            args[i][...] = wide[i]
    return _rounded(result, dtype)


def _float32(a):
    return a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype in _NARROW else a


def _rounded(result, dtype):
    if isinstance(result, tuple):
        return tuple(_rounded(r, dtype) for r in result)
    if isinstance(result, np.ndarray) and result.dtype == np.float32:
        return result.astype(dtype)
    return result


_NARROW = set(DTYPES.values())
