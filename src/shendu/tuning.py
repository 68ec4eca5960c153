"""What importing shendu does to its process, and why: the one place it is written down.

Each choice below was measured by `python -m shendu experiment tuning`: DeepConvNet's training
and inference in fresh processes, one configuration each, alternating over rounds, medians and
spread in notebooks/results/tuning.json (shown by the appendix "How fast is it?").

Done on import (SHENDU_TUNING=0 leaves the process as it is):

- Freed memory is kept for reuse: glibc hands every freed block of more than 128 KiB back to the
  system, and the next array of that size faults its pages in again, a trip through the kernel
  for each page; a training step frees and allocates such arrays (a batch's activations) all the
  time. With blocks up to 32 MiB served from the heap, and a heap that is not trimmed, they are
  reused, as PyTorch's caching allocator reuses its blocks (`mallopt`; Linux only).

Done where it is needed, so that it holds whatever was imported first:

- The fully connected layers' matrix products run NumPy's BLAS in one thread
  (`kernels.cpu.matmul`, through threadpoolctl, for that call only). Threaded, OpenBLAS leaves
  its threads spinning for a while after each product, on the cores Numba's kernels need next. (The OPENBLAS_THREAD_TIMEOUT variable would do it for the whole process, but only if set
  before NumPy is first imported: a notebook would have to import shendu first.)

Left as they are: OMP_WAIT_POLICY (Numba's OpenMP threads spin briefly between parallel loops,
then sleep; "passive" measured no gain) and BLAS's thread count for everything else.
"""
import ctypes
import os
import sys


def apply():
    """What importing shendu does (see above); nothing when SHENDU_TUNING=0."""
    if os.environ.get("SHENDU_TUNING", "1").strip() != "0":
        keep_freed_memory()


def keep_freed_memory():
    """Serve blocks up to 32 MiB from glibc's heap and never trim it (mallopt)."""
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc's; absent elsewhere
    if mallopt is not None:
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
        mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest allowed
        mallopt(M_TRIM_THRESHOLD, 1 << 30)
