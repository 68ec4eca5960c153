"""shendu 深度: deep learning from scratch, with hand-written gradients and compiled loops."""
import os

# Numba's OpenMP workers spin-wait after each parallel loop; on a 2-core laptop they then steal
# the cores OpenBLAS needs for the next matrix product (measured: training 11× slower). Must be
# set before Numba first starts its threads.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
# OpenBLAS's idle threads spin for 2^28 cycles (about 0.1 s) after every matrix product, taking
# a core from Numba's threads and from any other process training beside this one (measured
# beside a training run: DeepConvNet's training step about 5× faster with this). With 2^4 they
# sleep at once. OpenBLAS reads it when NumPy is first imported, so it applies where shendu is
# imported first: the command line, the experiments, the tests and the notebooks.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _keep_freed_memory():
    """glibc hands freed blocks of more than 128 KiB back to the system, and the next array of
    that size faults its pages in again, each fault a trip through the kernel (measured on a
    2-core VM: about 5,600 page faults per DeepConvNet inference batch of 100, the batch 59.6 ms
    with them, 41.4 ms without). Blocks up to 32 MiB served from the heap, and a heap that is not
    trimmed, are reused instead, as PyTorch's caching allocator reuses its blocks."""
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc's; absent elsewhere
    if mallopt is not None:
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
        mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest allowed
        mallopt(M_TRIM_THRESHOLD, 1 << 30)


_keep_freed_memory()

from . import models, nn, optim  # noqa: E402
from .errors import ShenduError
from .images import load_image
from .io import CheckpointError, load, save
from .kernels import cuda_available
from .rng import manual_seed
from .summarize import summary
from .train import Trainer, evaluate, planned_steps, predict_proba, profile, set_profile

__version__ = "0.1.0"
__all__ = ["nn", "optim", "models", "ShenduError", "CheckpointError", "manual_seed", "Trainer",
           "evaluate", "predict_proba", "profile", "set_profile", "save", "load", "load_image",
           "summary", "cuda_available"]
