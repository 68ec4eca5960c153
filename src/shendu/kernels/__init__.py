"""The engine's kernels, for two devices: `kernels.cpu` (NumPy arrays; Numba) and `kernels.cuda`
(numba.cuda device arrays), with the same names and semantics. A layer asks `kernels.of(x)` for
the module of its input's device and calls it, so each layer is written once.

Read `kernels.textbook` first: the same kernels as the loops of a textbook, each the formula in
its docstring; every fast kernel says which of them it equals, and the tests prove it.

kernels.cuda (and numba.cuda with it) is imported only when a device array or "cuda" appears:
numba-cuda is an optional dependency.
"""
import importlib

import numpy as np

from ..errors import ShenduError
from . import cpu, narrow
from .narrow import CUDA_DTYPES  # noqa: F401  (kernels.CUDA_DTYPES: what CUDA stores)

NARROW = set(narrow.DTYPES.values())  # the 16-bit storage types


def of(a):
    """The kernel module for the device where the array a lives (and, for 16-bit arrays, the
    type it is stored in: kernels.narrow)."""
    dtype = getattr(a, "dtype", None)
    if isinstance(a, np.ndarray) or not getattr(a, "__cuda_ndarray__", False):
        return narrow.narrow(dtype) if dtype in NARROW else cpu
    if dtype in NARROW:
        return narrow.narrow(dtype, "cuda")
    from . import cuda
    return cuda


def device(name):
    """The kernel module of the device called `name` ("cpu" or "cuda"). Like PyTorch, asking
    for "cuda" where numba.cuda cannot run kernels raises, saying why."""
    if name == "cpu":
        return cpu
    if name != "cuda":
        raise ShenduError(f"unknown device {name!r}: shendu runs on 'cpu' or 'cuda'")
    gpu = _cuda()
    if gpu is None:
        raise ShenduError("numba-cuda is not installed or cannot load (pip install 'shendu[cuda]')"
                          ": keep the model on the CPU, or check shendu.cuda_available() first")
    if not gpu.available():
        raise ShenduError("no CUDA GPU is available here: keep the model on the CPU, or check "
                          "shendu.cuda_available() first")
    return gpu


def _cuda():
    """kernels.cuda, or None where numba-cuda is missing or broken."""
    try:
        from . import cuda
    except Exception:  # noqa: BLE001 - any import failure means no GPU for shendu, not a crash
        return None
    return cuda


def cuda_available():
    """Whether a CUDA GPU can run shendu's kernels here. False in numba's CUDA simulator
    (NUMBA_ENABLE_CUDASIM=1), which the tests use: far too slow for anything else."""
    gpu = _cuda()
    return gpu is not None and gpu.available() and not gpu.SIMULATED


def is_float(dtype):
    """Whether arrays of `dtype` hold floating-point numbers (NumPy's, or a 16-bit storage type)."""
    return np.dtype(dtype).kind == "f" or np.dtype(dtype) in NARROW


def to_host(a):
    """a as a NumPy array: itself when it is one, else a copy from the device."""
    return cpu.array(a)


def host_copy(a):
    """A NumPy copy of a, wherever it lives."""
    return a.copy_to_host() if getattr(a, "__cuda_ndarray__", False) else np.array(a)


# -- the ladder of convolution kernels, from the textbook to the machine's peak ------------------
LADDER = {"textbook": "textbook",    # one loop per index of the formula
          "im2col": "im2col",        # the book's way: patch matrix, one BLAS product
          "reordered": "reordered",  # direct loops, the inner one over channels (vectorised)
          "tiled": "conv"}           # direct loops over a register tile: the default


class use:
    """Run the CPU's convolutions on one rung of LADDER, for a whole network: at once, or for a
    `with` block only (the rung before is restored at its end).

        shendu.kernels.use("textbook")      # from now on
        with shendu.kernels.use("im2col"):  # in this block only
            model(x)

    The four compute the same numbers (tests/test_textbook_kernels.py); only the time differs. The
    CUDA kernels are not affected."""

    def __init__(self, name):
        if name not in LADDER:
            raise ShenduError(f"no convolution kernels called {name!r}: choose one of "
                              + ", ".join(LADDER))
        self.before = in_use()
        cpu.convolution = importlib.import_module(f".{LADDER[name]}", __name__)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        use(self.before)


def in_use():
    """The name of the convolution kernels the CPU runs now."""
    return next(name for name, module in LADDER.items()
                if cpu.convolution.__name__ == f"{__name__}.{module}")
