"""Data-parallel training on MPI, through mpi4py (`pip install "shendu[mpi]"`: mpi4py and MPICH).

    mpiexec -n 2 python -m shendu train --recipe book --distributed --out runs/ddp

or in Python, the same script in every rank:

    trainer = shendu.distributed.DistributedTrainer(model, optimizer, run_dir="runs/ddp")
    trainer.fit((x_train, t_train), (x_test, t_test), epochs=20)

Every rank holds the whole model and the whole data set, and draws (from the same seeds) the same
order of the images, the same augmentations and the same dropout masks. Each step cuts the batch
into `shards` pieces, by default one per rank; a rank computes the gradient of its pieces' mean
losses, each weighted by its share of the batch, and one Allreduce sums these across the ranks into
the gradient of the whole batch's loss. The same buffer (Horovod calls it tensor fusion) carries
BatchNorm's running averages, the loss, the right answers and whether a rank was asked to stop
(Ctrl-C under mpiexec reaches every rank, not all in the same step: all stop after the step in
which the first knew). Then every rank takes the same optimizer step, so the copies stay equal.
At the end of an epoch each rank tests a slice of the test set.

- Dropout: each shard keeps its rows of the whole batch's mask (`rng.batch_shard`), so the shards
  together are masked as one process would mask the batch.
- BatchNorm normalises each shard by its own statistics (as PyTorch's DDP does without
  SyncBatchNorm: no communication in the forward pass); the running averages are averaged over the
  shards after each step, which for the running mean is what one process would have.
- `deterministic=True` gathers every shard's buffer (Allgather) and adds them in shard order on
  every rank, where Allreduce's order of additions depends on the number of ranks and on MPI's
  algorithm: with the same `shards`, any number of ranks that divides it (one process included)
  gives the same weights, bit for bit.

At the start of `fit`, rank 0's whole training state (weights, optimizer and schedule, generators,
position, history; read from its checkpoint when resuming) is broadcast to the others. Only rank 0
writes the run directory (atomically, as always) and reports; a run resumes with any number of
ranks, or in one process without MPI. Training runs on the CPU; each rank uses its share of the
machine's cores (`share_cores`).

For the chapter "Speeding up": `ring_allreduce_s` and `speedup` model how far this scales, and
`start_engines` starts MPI engines for a notebook's `%%px` cells.
"""
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numba
import numpy as np
import threadpoolctl

from . import checkpointing, kernels, rng
from .errors import ShenduError
from .interrupts import StopRequest
from .nn import device_of
from .rollback import Rollback
from .train import Trainer, _positive_int, evaluate

__all__ = ["world", "share_cores", "on_root", "DistributedTrainer", "ring_allreduce_s",
           "speedup", "start_engines", "mpiexec"]


def ring_allreduce_s(nbytes, workers, latency_s, bytes_per_s):
    """The seconds of a ring Allreduce of `nbytes` among `workers` (Patarasuk and Yuan, 2009): a
    reduce-scatter then an allgather around the ring, 2(N − 1) steps, each paying the link's
    latency, in which every worker sends 2(N − 1)/N of the buffer at `bytes_per_s`."""
    n = np.asarray(workers, dtype=float)
    return 2 * (n - 1) * latency_s + 2 * (n - 1) / n * nbytes / bytes_per_s


def speedup(step_s, nbytes, workers, latency_s, bytes_per_s):
    """Data-parallel speed-up over one worker, every worker keeping the batch of one (so N
    workers take N times the images per step): N · step / (step + Allreduce), the Allreduce of
    the `nbytes` of gradients coming after the backward pass, as in shendu, not overlapping it."""
    n = np.asarray(workers, dtype=float)
    return n * step_s / (step_s + ring_allreduce_s(nbytes, n, latency_s, bytes_per_s))


def start_engines(n=2):
    """For a notebook: start `n` MPI engines (ipyparallel, through the mpiexec beside this
    Python, else on PATH) and send `%%px` cells to them all. Returns (cluster, client); end them
    with `cluster.stop_cluster_sync()`. Without mpi4py, MPI or ipyparallel, it says what to
    install, makes `%%px` cells say they were skipped, and returns (None, None)."""
    import importlib.util
    missing = [name for name in ("mpi4py", "ipyparallel") if importlib.util.find_spec(name) is None]
    try:
        command = None if missing else mpiexec()
    except ShenduError:
        missing = ["mpiexec"]
    if missing:
        from IPython import get_ipython
        print(f"No MPI engines here ({', '.join(missing)} missing): pip install 'shendu[mpi]' "
              "ipyparallel to run the %%px cells, which are skipped.")
        get_ipython().register_magic_function(
            lambda line, cell: print("skipped: no MPI engines"), "cell", "px")
        return None, None
    import ipyparallel
    cluster = ipyparallel.Cluster(engines="mpi", n=n, log_level=40)  # errors only
    cluster.config.MPIEngineSetLauncher.mpi_cmd = [command]
    return cluster, cluster.start_and_connect_sync(activate=True)


def mpiexec():
    """The path of mpiexec: the one beside this Python (the mpich wheel's), else on PATH."""
    found = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                         f"{os.environ.get('PATH', '')}")
    if found is None:
        raise ShenduError("no mpiexec here: pip install 'shendu[mpi]' installs MPICH's")
    return found


def world():
    """MPI's COMM_WORLD (every process that mpiexec started); ShenduError without mpi4py."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:  # not installed, or no MPI library under it
        raise ShenduError(f"distributed training needs MPI ({e}): pip install 'shendu[mpi]' "
                          "(mpi4py and MPICH), then run under mpiexec -n N") from None
    return MPI.COMM_WORLD


def share_cores(comm):
    """Give each rank an equal share of this machine's cores for Numba's and BLAS's threads (2
    ranks on 2 cores: 1 thread each), unless NUMBA_NUM_THREADS was set. Returns the threads."""
    from mpi4py import MPI
    if "NUMBA_NUM_THREADS" in os.environ:
        return numba.get_num_threads()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count())
    threads = max(1, cores // local.Get_size())
    local.Free()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    threadpoolctl.threadpool_limits(threads)
    return threads


def on_root(comm, action, share=True):
    """Collective: `action()` on rank 0 (in every process when comm is None), its result
    broadcast to all ranks if `share` (plain values: mpi4py pickles them), else returned on rank
    0 alone; a ShenduError it raises is raised on every rank."""
    if comm is None:
        return action()
    result = problem = None
    if comm.Get_rank() == 0:
        try:
            result = action()
        except ShenduError as e:
            problem = str(e)
    problem = comm.bcast(problem, root=0)  # a check made on rank 0 alone ends every rank
    if problem is not None:
        raise ShenduError(problem)
    return comm.bcast(result, root=0) if share else result


class _AgreedStop(StopRequest):
    """A stop request that acts only once every rank knows of it: a signal sets `asked`, and the
    next step's Allreduce turns anyone's into `signum` on all, so all stop after the same step."""

    def __init__(self):
        self.agreed = None
        super().__init__()  # sets `asked`, through the property

    signum = property(lambda self: self.agreed, lambda self, value: setattr(self, "asked", value))


class DistributedTrainer(Trainer):
    """A Trainer whose every step is computed by all ranks of `comm` (default: MPI's world)
    together: see the module's description. `shards` (default: the number of ranks, which must
    divide it) is how many pieces each batch is cut into; `deterministic` fixes the order of the
    sum. The other arguments are the Trainer's; only rank 0 keeps `run_dir` and a progress bar.
    Each rank takes its share of the machine's cores (`share_cores`), `threads` of them."""

    def __init__(self, model, optimizer, loss_fn=None, comm=None, shards=None,
                 deterministic=False, **options):
        self.comm = world() if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.shards = self.size if shards is None else _positive_int("shards", shards)
        if self.shards % self.size:
            raise ShenduError(f"{self.shards} shards cannot be shared equally by {self.size} "
                              "ranks: choose a multiple of the number of ranks")
        if device_of(model) is not kernels.cpu:
            raise ShenduError("distributed training runs on the CPU, in float32 or float64: "
                              "leave the model there, in one of those")
        if options.get("precision") == "mixed":
            raise ShenduError("distributed training runs in the model's own type: mixed "
                              "precision trains in one process")
        self.deterministic = bool(deterministic)
        self.threads = share_cores(self.comm)
        self.communication_s = 0.0  # seconds spent in Allreduce (or Allgather), waits included
        super().__init__(model, optimizer, loss_fn, **options)
        if self.rank:
            self.run_dir, self.progress = None, False

    def fit(self, train, test, epochs=1, on_epoch=None, on_step=None, resume=None,
            target_accuracy=None):
        """`Trainer.fit` on every rank; `resume` is read by rank 0, whose state all ranks take."""
        return super().fit(train, test, epochs, on_epoch, on_step,
                           resume if self.rank == 0 else None, target_accuracy)

    def _begin_fit(self, data, epochs, resume):
        def begin():
            super(DistributedTrainer, self)._begin_fit(data, epochs, resume)
            return checkpointing.state(self)
        meta, arrays = self._broadcast(on_root(self.comm, begin, share=False))
        if self.rank:
            checkpointing.apply(self, meta, arrays)
            self.stopped = None
        self._check_shards(self._data["train_size"])
        return self._fit["start"]

    def _broadcast(self, state):
        """Rank 0's (meta, arrays) on every rank: the plain values by mpi4py's object broadcast,
        the arrays by MPI's own, into arrays allocated from their announced shapes."""
        meta, arrays = state if self.rank == 0 else (None, None)
        shapes = None if self.rank else [(k, a.dtype.str, a.shape) for k, a in arrays.items()]
        meta, shapes = self.comm.bcast((meta, shapes), root=0)
        received = {}
        for name, dtype, shape in shapes:
            a = np.ascontiguousarray(arrays[name]) if self.rank == 0 else np.empty(shape, dtype)
            self.comm.Bcast(a, root=0)
            received[name] = a
        return meta, received

    def _stop_request(self):
        self._stop = _AgreedStop()
        return self._stop

    def _say(self, message):
        if self.rank == 0:
            super()._say(message)

    # -- one step, shared ---------------------------------------------------------------------
    def _check_shards(self, n):
        """Every step must have an image for each shard (else a shard's dropout draws nothing)."""
        least = min(self.batch_size, n % self.batch_size or self.batch_size, n)
        if least < self.shards:
            raise ShenduError(f"a step of {least} image{'s' * (least > 1)} cannot be cut into "
                              f"{self.shards} shards: use fewer ranks or shards, or another "
                              "batch size or subset")

    def _gradient(self, images, t, K):
        from mpi4py import MPI
        n, per_rank = len(images), self.shards // self.size
        bounds = np.linspace(0, n, self.shards + 1).round().astype(int)
        start = rng.get_state()  # every shard draws from here, as the whole batch would
        mine = np.stack([self._shard(images, t, bounds[k], bounds[k + 1], start, K)
                         for k in range(self.rank * per_rank, (self.rank + 1) * per_rank)])
        began = time.perf_counter()
        if self.deterministic:  # every shard's row on every rank, added in shard order
            rows = np.empty((self.shards, mine.shape[1]), mine.dtype)
            self.comm.Allgather(mine, rows)
            total = rows.sum(axis=0)
        else:  # this rank's rows, then the ranks' sums in MPI's order of additions
            total = mine.sum(axis=0)
            self.comm.Allreduce(MPI.IN_PLACE, total)
        self.communication_s += time.perf_counter() - began
        return self._unpack(total)

    def _shard(self, images, t, lo, hi, start, K):
        """One shard's buffer: the gradient of the mean loss of rows lo:hi, the running averages
        after their forward pass and that loss, each times the shard's share of the batch; then
        its right answers, and 1 if this rank was asked to stop."""
        rng.set_state(start)
        rollback = Rollback(self.model, K)  # every shard moves the running averages from here
        with rng.batch_shard(lo, hi, len(images)):
            loss, correct = super()._gradient(images[lo:hi], t[lo:hi], K)
        parts = [p.grad for p in self.model.parameters()]
        parts += [b for _, b in self.model.named_buffers()] + [np.array([loss])]
        dtype = parts[0].dtype
        share = dtype.type((hi - lo) / len(images))
        rollback.undo()
        return np.concatenate([np.ravel(a).astype(dtype, copy=False) * share for a in parts]
                              + [np.array([correct, self._stop.asked is not None], dtype)])

    def _unpack(self, total):
        """Set the gradients and running averages from the summed buffer; returns the batch's
        loss and right answers, and turns any rank's stop request into everyone's."""
        at = 0
        for p in self.model.parameters():
            p.grad = total[at:at + p.size].reshape(p.shape).copy()
            at += p.size
        buffers = {}
        for name, b in self.model.named_buffers():
            buffers[name] = total[at:at + b.size].reshape(b.shape)
            at += b.size
        self.model.load_state_dict(buffers, strict=False)
        loss, correct, asked = total[at:]
        if asked and self._stop.agreed is None:
            self._stop.agreed = self._stop.asked or signal.SIGINT
        return float(loss), int(round(correct))

    def _accuracy(self, x_test, t_test):
        """Each rank tests its slice of the test set; one Allreduce adds the right answers."""
        lo, hi = (len(x_test) * np.array([self.rank, self.rank + 1])) // self.size
        right = np.array([round(evaluate(self.model, x_test[lo:hi], t_test[lo:hi]) * (hi - lo))
                          if hi > lo else 0], np.int64)
        from mpi4py import MPI
        self.comm.Allreduce(MPI.IN_PLACE, right)
        return int(right[0]) / len(x_test)
