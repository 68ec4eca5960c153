"""Data-parallel training on MPI (shendu.distributed): N ranks train as one process would.

- one rank, one shard: the plain Trainer, bit for bit;
- N = 2 and 4 ranks (oversubscribed on 2 cores) in the deterministic mode: the same weights as one
  process cutting each batch into the same shards, bit for bit, and the same on every rank;
- N = 2 and 4 in the default mode (Allreduce): the single-process run within float32 rounding,
  with dropout and augmentation, whose draws each shard takes from the whole batch's;
- BatchNorm normalises each shard by its own statistics: checked against a hand-made oracle;
- the command line: a run, a run killed mid-way (the job ends, the last checkpoint stays) and
  resumed on another number of ranks to the same weights; and each user error in one line.

The runs with several ranks go through mpiexec (from the mpich wheel, beside this Python).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import shendu
from shendu import distributed, nn, optim, rng
from shendu.distributed import DistributedTrainer

MPI = pytest.importorskip("mpi4py.MPI", reason="pip install -e '.[mpi]'")
TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import ddp_worker  # noqa: E402  (the script the ranks run, importable for the reference runs)

MPIEXEC = distributed.mpiexec()
ENV = {**os.environ, "SHENDU_PROFILE": "full"}
WEIGHTS = ("same_on_all_ranks", "ranks", "history")  # the worker's other entries


def ranks(n, *args, timeout=300, **options):
    """Run `python *args` in n ranks under mpiexec."""
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=timeout, **options)


def worker(tmp_path, n, **options):
    """The worker's weights after training in n ranks, checked equal on every rank."""
    out = tmp_path / f"ranks{n}.npz"
    result = ranks(n, TESTS / "ddp_worker.py", out, json.dumps(options))
    assert result.returncode == 0, result.stderr
    saved = np.load(out)
    assert saved["ranks"] == n and saved["same_on_all_ranks"]
    return {k: saved[k] for k in saved.files if k not in WEIGHTS}


def in_process(trainer_class=shendu.Trainer, **options):
    """The worker's run in this process: a plain Trainer, or a DistributedTrainer of one rank."""
    extra = {} if trainer_class is shendu.Trainer else {
        "comm": MPI.COMM_SELF, "shards": options.get("shards"),
        "deterministic": options.get("deterministic", False)}
    return ddp_worker.train(options, trainer_class, **extra).model.state_dict()


def largest_difference(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max() / (np.abs(b[k]).max() + 1e-30)) for k in a)


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# -- the arithmetic ----------------------------------------------------------------------------
def test_one_rank_one_shard_is_the_plain_trainer_bit_for_bit():
    options = {"model": "bncnn", "augment": True, "epochs": 2}
    assert same(in_process(DistributedTrainer, **options), in_process(**options))


def test_shards_add_up_to_the_whole_batch_within_rounding():
    options = {"model": "deepconvnet", "augment": True, "shards": 4, "deterministic": True}
    sharded, whole = in_process(DistributedTrainer, **options), in_process(**options)
    assert not same(sharded, whole)  # four partial sums are not one sum...
    assert largest_difference(sharded, whole) < 1e-4  # ...but equal to rounding


def test_any_number_of_ranks_gives_the_same_weights_in_the_deterministic_mode(tmp_path):
    options = {"model": "bncnn", "augment": True, "epochs": 2, "shards": 4, "deterministic": True}
    one = in_process(DistributedTrainer, **options)
    for n in (2, 4):
        assert same(worker(tmp_path, n, **options), one), n


@pytest.mark.parametrize("n", [2, 4])
def test_ranks_train_as_one_process_within_rounding(tmp_path, n):
    # DeepConvNet's dropout and the augmentation: each shard must draw the whole batch's
    options = {"model": "deepconvnet", "augment": True, "epochs": 2}
    assert largest_difference(worker(tmp_path, n, **options), in_process(**options)) < 1e-4


def test_a_shard_gets_its_rows_of_the_whole_batch_dropout_mask():
    x = np.ones((6, 5), np.float32)
    shendu.manual_seed(0)
    whole = nn.Dropout(0.5)(x)
    shendu.manual_seed(0)
    with rng.batch_shard(2, 4, 6):
        part = nn.Dropout(0.5)(x[2:4])
    assert np.array_equal(part, whole[2:4]) and 0 < np.count_nonzero(whole) < whole.size


def tiny_bn():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))


def test_batchnorm_normalises_each_shard_by_its_own_statistics():
    """One SGD step on 8 images cut into 2 shards, against an oracle: two copies of the model,
    each trained on its half alone, their gradients and running averages averaged."""
    images = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    labels = np.arange(8) % 3
    shendu.manual_seed(0)
    model = tiny_bn()
    start = model.state_dict()
    trainer = DistributedTrainer(model, optim.SGD(model.parameters(), lr=0.1), comm=MPI.COMM_SELF,
                                 shards=2, batch_size=8, seed=5, progress=False)
    trainer.fit((images, labels), (images, labels))

    order = np.random.default_rng(5).permutation(8)  # the Trainer's order for seed 5
    halves = []
    for rows in (order[:4], order[4:]):
        copy = tiny_bn()
        copy.load_state_dict(start)
        loss_fn = nn.CrossEntropyLoss()
        loss_fn(copy(images[rows]), labels[rows])
        copy.backward(loss_fn.backward())
        halves.append(copy)
    expected = {name: start[name] - np.float32(0.1) * (a.grad + b.grad) / 2
                for (name, a), (_, b) in zip(*(h.named_parameters() for h in halves))}
    expected.update({name: (a + b) / 2 for (name, a), (_, b)
                     in zip(*(h.named_buffers() for h in halves))})
    got = model.state_dict()
    assert largest_difference(got, expected) < 1e-5

    whole = tiny_bn()  # one batch of 8 would normalise differently: the test can tell
    whole.load_state_dict(start)
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(whole(images[order]), labels[order])
    whole.backward(loss_fn.backward())
    assert not np.allclose(got["1.running_var"], whole.state_dict()["1.running_var"])


# -- the command line ----------------------------------------------------------------------------
def train(n, run, *flags, **options):
    return ranks(n, "-m", "shendu", "train", "--distributed", "--out", run, *flags, **options)


def test_the_command_line_trains_in_two_ranks(tmp_path):
    result = train(2, tmp_path / "run", "--subset", 400, "--epochs", 1)
    assert result.returncode == 0, result.stderr
    assert "2 ranks x 1 thread" in result.stdout
    assert result.stdout.count("epoch   1") == 1  # rank 0 reports, alone
    assert (tmp_path / "run" / "model.safetensors").exists()
    again = train(2, tmp_path / "run", "--subset", 400)  # a run is never overwritten
    assert again.returncode == 2
    assert again.stderr.splitlines() == [f"shendu: error: {tmp_path / 'run'} already holds a run: "
                                         f"choose another --out, or continue it with --resume "
                                         f"{tmp_path / 'run'}"]


def test_a_killed_rank_ends_the_job_and_the_run_resumes_on_other_ranks(tmp_path):
    """Deterministic mode, 4 shards: 2 ranks, one killed mid-way, then 4 ranks from the last
    checkpoint, end with the weights of an uninterrupted run of 2 ranks, bit for bit."""
    flags = ("--subset", 6000, "--epochs", 1, "--shards", 4, "--deterministic")
    run = tmp_path / "killed"
    job = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "shendu", "train",
                            "--distributed", "--out", run, *map(str, flags),
                            "--checkpoint-every", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.json").exists() or json.loads(
                (run / "checkpoint.json").read_text())["global_step"] < 2:
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.05)
        rank_pids = subprocess.run(["pgrep", "-f", f"^{sys.executable} -m shendu train .*{run}"],
                                   capture_output=True, text=True).stdout.split()
        assert len(rank_pids) == 2, rank_pids
        victim = max(map(int, rank_pids))
        os.kill(victim, signal.SIGKILL)
        out, _ = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode != 0
    assert "BAD TERMINATION" in out and "Killed" in out  # MPI's own report of the dead rank
    step = json.loads((run / "checkpoint.json").read_text())["global_step"]
    assert 2 <= step < 60

    resumed = ranks(4, "-m", "shendu", "train", "--distributed", "--resume", run,
                    "--shards", 4, "--deterministic")
    assert resumed.returncode == 0, resumed.stderr
    whole = train(2, tmp_path / "whole", *flags)
    assert whole.returncode == 0, whole.stderr
    assert same(load_file(run / "model.safetensors"),
                load_file(tmp_path / "whole" / "model.safetensors"))


def test_each_mistake_ends_in_one_line(tmp_path):
    no_mpi = tmp_path / "no_mpi"
    (no_mpi / "mpi4py").mkdir(parents=True)
    (no_mpi / "mpi4py" / "__init__.py").write_text("raise ImportError('No module named mpi4py')")
    result = subprocess.run([sys.executable, "-m", "shendu", "train", "--distributed"],
                            capture_output=True, text=True,
                            env={**ENV, "PYTHONPATH": f"{no_mpi}{os.pathsep}"
                                                      f"{os.environ.get('PYTHONPATH', '')}"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "shendu: error: distributed training needs MPI (No module named mpi4py): pip install "
        "'shendu[mpi]' (mpi4py and MPICH), then run under mpiexec -n N"]

    for flags, message in [
            (("--shards", 3), "3 shards cannot be shared equally by 2 ranks"),
            (("--subset", 401), "a step of 1 image cannot be cut into 2 shards")]:
        result = train(2, tmp_path / "run", *flags)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"shendu: error: {message}"), line


# -- the cost model --------------------------------------------------------------------------------
def ring(buffers):
    """A ring Allreduce run step by step: (every worker's result, steps, bytes each sent)."""
    n = len(buffers)
    chunks = [np.array_split(b.astype(np.float64), n) for b in buffers]
    steps, sent = 0, np.zeros(n)
    for phase in ("reduce-scatter", "allgather"):
        for step in range(n - 1):
            # worker r passes one piece to r + 1: in the reduce-scatter the piece it has summed
            # so far (r - step), in the allgather the finished one it holds (r + 1 - step)
            pieces = [(r, (r - step + (phase == "allgather")) % n) for r in range(n)]
            messages = [(r, k, chunks[r][k].copy()) for r, k in pieces]
            for r, k, data in messages:
                if phase == "reduce-scatter":
                    chunks[(r + 1) % n][k] += data
                else:
                    chunks[(r + 1) % n][k] = data
                sent[r] += data.nbytes
            steps += 1
    return [np.concatenate(c) for c in chunks], steps, sent


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_the_ring_model_counts_what_a_ring_sends(n):
    buffers = [np.random.default_rng(k).standard_normal(8 * 3 * 5) for k in range(n)]
    results, steps, sent = ring(buffers)
    for result in results:
        np.testing.assert_allclose(result, np.sum(buffers, axis=0), rtol=1e-12)
    latency, bandwidth = 2e-6, 1e9
    nbytes = buffers[0].nbytes
    assert np.allclose(sent, sent[0])
    assert distributed.ring_allreduce_s(nbytes, n, latency, bandwidth) == pytest.approx(
        steps * latency + sent[0] / bandwidth)


def test_speedup_is_ideal_with_free_communication_and_one_with_one_worker():
    workers = np.array([1, 2, 16, 1024])
    assert np.allclose(distributed.speedup(0.03, 5e5, workers, 0.0, np.inf), workers)
    assert distributed.speedup(0.03, 5e5, 1, 1e-5, 1e9) == 1
    slow = distributed.speedup(0.03, 5e5, workers, 1e-5, 1e8)
    assert np.all(np.diff(slow) > 0) and np.all(slow < workers[-1])
