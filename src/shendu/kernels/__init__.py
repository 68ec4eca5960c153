"""The engine's kernels, for two devices: `kernels.cpu` (NumPy arrays; Numba) and `kernels.cuda`
(numba.cuda device arrays), with the same names and semantics. A layer asks `kernels.of(x)` for
the module of its input's device and calls it, so each layer is written once.

kernels.cuda (and numba.cuda with it) is imported only when a device array or "cuda" appears:
numba-cuda is an optional dependency.
"""
import numpy as np

from ..errors import ShenduError
from . import cpu


def of(a):
    """The kernel module for the device where the array a lives."""
    if isinstance(a, np.ndarray) or not getattr(a, "__cuda_ndarray__", False):
        return cpu
    from . import cuda
    return cuda


def device(name):
    """The kernel module of the device called `name` ("cpu" or "cuda"); None for "cuda" where
    numba.cuda cannot run kernels (no GPU, or numba-cuda not installed)."""
    if name == "cpu":
        return cpu
    if name != "cuda":
        raise ShenduError(f"unknown device {name!r}: shendu runs on 'cpu' or 'cuda'")
    try:
        from . import cuda
    except Exception:  # numba-cuda missing or broken: no GPU for shendu, not a crash
        return None
    return cuda if cuda.available() else None


def cuda_available():
    """Whether a CUDA GPU can run shendu's kernels here. False in numba's CUDA simulator
    (NUMBA_ENABLE_CUDASIM=1), which the tests use: far too slow for anything else."""
    gpu = device("cuda")
    return gpu is not None and not gpu.SIMULATED


def to_host(a):
    """a as a NumPy array: itself when it is one, else a copy from the device."""
    return cpu.array(a)


def host_copy(a):
    """A NumPy copy of a, wherever it lives."""
    return a.copy_to_host() if of(a) is not cpu else np.array(a)
