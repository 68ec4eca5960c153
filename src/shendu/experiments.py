"""Long experiments whose figures the book and README quote: `python -m shendu experiment NAME`.

Each writes NAME.json with its figures and how they were made (command, commit, machine, date,
versions), so every quoted number can be traced and regenerated: by default into
notebooks/results of the checkout it is run in, from where the package ships them. The runs it
trains go to runs/ in the current folder, as `shendu train`'s do.
"""
import datetime
import importlib.resources
import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np

from .errors import ShenduError
from .provenance import checkout, commit, machine

_EXPERIMENTS = {}


def experiment(fn):
    _EXPERIMENTS[fn.__name__] = fn
    return fn


def names():
    return sorted(_EXPERIMENTS)


def _commit(out_dir):
    """The commit of the code that ran: the checkout that holds this package (None for an
    installed wheel), its results folder excepted."""
    try:
        return commit(checkout(Path(__file__).parent), unless_changed_in=out_dir)
    except ShenduError:
        return None


def results_dir():
    """Where experiments write by default: notebooks/results of the current checkout."""
    return checkout() / "notebooks" / "results"


def run(name, out_dir=None, only=None):
    """Run one experiment and write its results file into `out_dir` (default: `results_dir()`);
    returns the results.

    An experiment of named runs (one that takes `only`) can rerun some of them: the others are
    kept from the results file (if there is one yet), and every run records the command, commit,
    machine and date that made it.
    """
    if name not in _EXPERIMENTS:
        raise ShenduError(f"unknown experiment {name!r}; choose one of: {', '.join(names())}")
    from . import __version__
    from .train import profile
    fn = _EXPERIMENTS[name]
    out_dir = results_dir() if out_dir is None else Path(out_dir)
    named_runs = "only" in inspect.signature(fn).parameters
    if only and not named_runs:
        raise ShenduError(f"experiment {name!r} cannot rerun part of itself: run it whole")
    # Read before hours of training, not after.
    previous = load(name, out_dir) if only and (out_dir / f"{name}.json").exists() else None
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    figures = fn(only=only) if only else fn()
    command = f"python -m shendu experiment {name}" + (f" --only {','.join(only)}" if only else "")
    made = {"command": command, "commit": _commit(out_dir), "machine": machine(),
            "date": started.isoformat(timespec="seconds")}
    if named_runs:
        for entry in figures["runs"].values():
            entry["made"] = made
    if previous:
        kept = previous["figures"]["runs"]
        for entry in kept.values():  # what a run of an older file does not say, the file says
            known = entry.setdefault("made", {})
            known.update({key: previous[key] for key in made
                          if key not in known and key in previous})
        figures["runs"] = {**kept, **figures["runs"]}  # the file's order, new runs replacing
    record = {
        "experiment": name,
        "figures": figures,
        "command": command,
        "commit": made["commit"],
        "machine": machine(),
        "profile": profile(),
        "date": made["date"],
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "versions": {"shendu": __version__, "python": sys.version.split()[0],
                     "numpy": np.__version__, "numba": numba.__version__},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    return record


def load(name, results_dir=None):
    """The recorded results of an experiment (for notebooks): from `results_dir`, or by default
    from the package's own copy, `shendu.results` (in a checkout installed with `pip install -e`,
    that is notebooks/results itself; in a wheel, the files committed when it was built)."""
    if results_dir is None:
        try:
            folder = importlib.resources.files("shendu.results")
        except ModuleNotFoundError:  # installed before the package shipped its results
            raise ShenduError("this installation of shendu has no results: install it again "
                              "(pip install -e . in a checkout)") from None
    else:
        folder = Path(results_dir)
    path = folder / f"{name}.json"
    if not path.is_file():
        raise ShenduError(f"no results for {name!r}: run `python -m shendu experiment {name}`")
    return json.loads(path.read_text("utf8"))


@experiment
def bench(rounds=5):
    """shendu vs PyTorch on this machine (`python -m shendu bench`, five rounds of fresh
    processes), recorded for the appendix "How fast is it?" and the README."""
    from . import bench as bench_module
    return bench_module.run(rounds=rounds)


@experiment
def bench_cuda(rounds=3):
    """shendu's CUDA kernels against PyTorch's on the same GPU (`bench --device cuda`):
    DeepConvNet and ResNet-20, training and inference at batch 100 and 256, for the chapter
    "Speeding up". Needs a CUDA GPU, and PyTorch with CUDA beside shendu for the ratios."""
    from . import bench as bench_module
    bench_module.require_gpu()
    return bench_module.run(networks=("deepconvnet", "resnet20"), batches=(100, 256),
                            rounds=rounds, start_up=False, device="cuda")


@experiment
def bench_precision(rounds=5):
    """16 bits against 32 on this CPU, shendu beside PyTorch, for the chapter "Fewer bits":
    `bench`'s fresh processes, the engines alternating, on DeepConvNet at batch 100, training in
    mixed precision (float16 in both engines, and PyTorch's autocast to bfloat16) and inferring
    with a copy of the network stored in 16 bits; with the processor's instructions for fewer
    bits."""
    from . import bench as bench_module
    results = bench_module.run(networks=("deepconvnet",), batches=("small",), rounds=rounds,
                               start_up=False, precisions=bench_module.PRECISIONS)
    return {**results, "instructions": bench_module.narrow_instructions()}


@experiment
def fewer_bits(seed=0, calibration=500, batch=100):
    """The chapter "Fewer bits": DeepConvNet trained by the book's recipe (Adam 0.001, batch
    100, 20 epochs, full MNIST), then classifying the 10,000 test digits in float64, float32,
    float16, bfloat16, int8 and with binary weights, and as the book's own float16 experiment
    (quantization.compare); the bytes one inference batch moves, and its time, at 32 and 16 bits
    (quantization.traffic); and the same network trained by the same recipe with binary weights
    from the start (BinaryConnect: quantization.train_binary), then binarized."""
    from . import datasets, quantization, recipes
    from .rng import manual_seed
    from .train import evaluate
    train, (x_test, t_test) = datasets.load_mnist()
    recipe = recipes.get("book")
    model, history = recipe.fit(train, (x_test, t_test), seed=seed)
    model.eval()
    rows = quantization.compare(model, train[0][:calibration], x_test, t_test)
    manual_seed(seed)
    binary = quantization.train_binary(recipe.build_model())
    binary_history = recipe.trainer(binary, len(train[0]), seed=seed, progress=False).fit(
        train, (x_test, t_test), epochs=recipe.epochs)
    trained = quantization.binarize(binary)
    return {"recipe": "book", "seed": seed, "calibration_images": calibration,
            "float32_history": history, "precisions": rows,
            "traffic": {"batch": batch, **quantization.traffic(model, x_test[:batch])},
            "binary_trained": {"accuracy": evaluate(trained, x_test, t_test),
                               "bytes": quantization.model_bytes(trained),
                               "history": binary_history}}


@experiment
def mixed_precision(seeds=(0, 1, 2), root=None, batch=100):
    """The chapter "Fewer bits"' training half: DeepConvNet by the book's recipe (Adam 0.001,
    batch 100, 20 epochs, full MNIST) in float32 and in mixed precision (shendu.mixed), each
    with every seed: test accuracy, time, images per second, steps skipped for overflow and the
    last loss scale. Then how much of each layer's gradient float16 would lose without loss
    scaling (mixed.underflow, on the first `batch` training images) at initialisation and for
    the trained float32 network of the first seed, and with the last loss scale of its mixed
    run; with the histogram of log2 |dL/d output| (integer bins from -48 to 16, the first and
    last holding everything beyond). Each run trains in its run
    directory `root`/PRECISION-SEED (default runs/mixed_precision/): started again, the
    experiment continues where it was stopped, and reads finished runs back."""
    from . import datasets, mixed, recipes
    from .io import read_checkpoint
    from .rng import manual_seed
    root = Path("runs") / "mixed_precision" if root is None else Path(root)
    train, test = datasets.load_mnist()
    recipe = recipes.get("book")
    runs, trained = {"float32": [], "mixed": []}, {}
    for seed in seeds:
        for precision in runs:
            run_dir = root / f"{precision}-{seed}"
            model, history = recipe.fit(train, test, seed=seed, run_dir=run_dir,
                                        precision=precision)
            scaler = read_checkpoint(run_dir)[0]["scaler"]  # None in float32
            runs[precision].append({
                "seed": seed, "test_acc": history[-1]["test_acc"],
                "wall_time_s": round(history[-1]["elapsed"], 1),
                "images_per_s": round(float(np.median([h["images_per_s"] for h in history])), 1),
                "skipped": sum(h["skipped"] for h in history),
                "loss_scale": None if scaler is None else scaler["scale"],
                "test_acc_by_epoch": [h["test_acc"] for h in history]})
            trained.setdefault(precision, model)
            print(f"{precision}, seed {seed}: {history[-1]['test_acc']:.2%}", file=sys.stderr,
                  flush=True)
    x, t = train[0][:batch].astype(np.float32) / 255, train[1][:batch]
    manual_seed(seeds[0])
    fresh = recipe.build_model()
    scale = runs["mixed"][0]["loss_scale"]
    underflow = {}
    for name, model, s in (("initial", fresh, 1.0), ("trained", trained["float32"], 1.0),
                           ("trained_scaled", trained["float32"], scale)):
        found = mixed.underflow(model, x, t, scale=s)
        edges = np.arange(-48, 17)  # values beyond them are counted in the first or last bin
        counts, _ = np.histogram(np.clip(found["log2"], edges[0], edges[-1] - 0.5), bins=edges)
        underflow[name] = {"scale": s, "layers": found["layers"], "log2_bins": edges.tolist(),
                           "log2_counts": counts.tolist()}
    medians = {p: float(np.median([r["test_acc"] for r in rs])) for p, rs in runs.items()}
    return {"recipe": "book", "seeds": list(seeds), "runs": runs, "median_test_acc": medians,
            "difference_points": 100 * (medians["mixed"] - medians["float32"]),
            "underflow": underflow}


@experiment
def ladder(batch=32):
    """The ladder of convolution kernels (shendu.kernels.LADDER) on DeepConvNet, with this
    machine's measured GEMM peak and memory bandwidth: the chapter "Speeding up"'s roofline."""
    from . import bench as bench_module
    return {"gemm_peak_gflops": bench_module.gemm_peak(),
            "stream_triad_gbps": bench_module.stream_triad(), **bench_module.ladder(batch)}


@experiment
def time_shares(steps=10):
    """Where DeepConvNet's and ResNet-20's training and inference steps spend their time, by kind
    of layer (bench.time_shares), at the benchmark's batch sizes: the chapter "Speeding up"'s
    counterpart of the book's AlexNet figures."""
    from . import bench as bench_module
    return {model: bench_module.time_shares(model, steps=steps)
            for model in ("deepconvnet", "resnet20")}


# One side of the scaling experiment, in a fresh Python: DeepConvNet by the book's recipe (Adam
# 0.001, batch 100) on SCALING_IMAGES MNIST images for 3 epochs, the first one warming up; in
# one process, or in every rank of `mpiexec -n 2` (argv[1] == "ranks"), which then also times
# Allreduce alone on buffers of 2^10 to 2^24 bytes.
SCALING_IMAGES = 10000
_SCALING_WORKER = """
import json, statistics, sys, time
import numpy as np
import shendu
from shendu import datasets, distributed, models, optim
ranks, n = sys.argv[1] == "ranks", int(sys.argv[2])
(x, t), (x_test, t_test) = datasets.load_mnist()
shendu.manual_seed(0)
model = models.get("deepconvnet")
trainer = (distributed.DistributedTrainer if ranks else shendu.Trainer)(
    model, optim.Adam(model.parameters(), lr=0.001), batch_size=100, progress=False)
waits = []
trainer.fit((x[:n], t[:n]), (x_test[:1000], t_test[:1000]), epochs=3,
            on_epoch=lambda m: waits.append(getattr(trainer, "communication_s", 0.0)))
steps = n // 100
timed = trainer.history[1:]
result = {"images_per_s": statistics.median(e["images_per_s"] for e in timed),
          "step_s": statistics.median(e["epoch_time"] for e in timed) / steps,
          "threads": getattr(trainer, "threads", None),
          "gradient_bytes": 4 * model.num_parameters()}
if ranks:
    result["allreduce_s"] = (waits[-1] - waits[0]) / (len(timed) * steps)
    comm, sizes = trainer.comm, {}
    for k in range(10, 25, 2):
        buffer = np.ones(2 ** k // 4, np.float32)
        seconds = []
        for _ in range(15):
            comm.Barrier()
            began = time.perf_counter()
            comm.Allreduce(buffer.copy(), buffer)
            seconds.append(time.perf_counter() - began)
        sizes[2 ** k] = statistics.median(seconds)
    result["allreduce_by_bytes"] = sizes
if getattr(trainer, "rank", 0) == 0:
    print(json.dumps(result))
"""


@experiment
def scaling(rounds=5):
    """Data-parallel training on this machine (shendu.distributed): DeepConvNet's images per
    second in one process of 2 threads and in 2 MPI ranks of 1 thread each, each in fresh
    processes, the two alternating round after round; the time per step spent in Allreduce; and
    Allreduce's time against the bytes it sums, for the chapter "Speeding up"'s cost model."""
    from .distributed import mpiexec as find_mpiexec
    mpiexec = find_mpiexec()
    commands = {"1 process x 2 threads": [sys.executable],
                "2 ranks x 1 thread": [mpiexec, "-n", "2", sys.executable]}
    runs = {name: [] for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            side = "ranks" if command[0] == mpiexec else "process"
            out = subprocess.run(command + ["-c", _SCALING_WORKER, side, str(SCALING_IMAGES)],
                                 capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out.splitlines()[-1]))  # after any profile notice
    figures = {"rounds": rounds, "batch": 100, "images": SCALING_IMAGES, "model": "deepconvnet",
               "gradient_bytes": runs["2 ranks x 1 thread"][0]["gradient_bytes"], "configs": {}}
    for name, rows in runs.items():
        entry = figures["configs"][name] = {
            key: {"median": float(np.median([r[key] for r in rows])),
                  "min": min(r[key] for r in rows), "max": max(r[key] for r in rows)}
            for key in ("images_per_s", "step_s") + (("allreduce_s",) if "allreduce_s" in rows[0]
                                                       else ())}
        if "allreduce_by_bytes" in rows[0]:
            entry["allreduce_by_bytes"] = {
                size: float(np.median([r["allreduce_by_bytes"][size] for r in rows]))
                for size in rows[0]["allreduce_by_bytes"]}
    rates = [r["images_per_s"] for r in runs["2 ranks x 1 thread"]]
    alone = [r["images_per_s"] for r in runs["1 process x 2 threads"]]
    figures["ratio_per_round"] = [a / b for a, b in zip(rates, alone)]
    return figures


# One configuration of the process, measured in a fresh Python: what it imports first, then
# the benchmark's DeepConvNet engine (training: forward, backward, Adam; inference) at batch 100.
_TUNING_WORKER = """
import json, sys, time
first, change = sys.argv[1], sys.argv[2]
if first:
    __import__(first)
import shendu
from shendu import bench_worker
from shendu.kernels import cpu
if change == "threaded-blas":
    cpu.matmul = lambda a, b, transpose_a=False, transpose_b=False: (
        (a.T if transpose_a else a) @ (b.T if transpose_b else b))
import numpy as np
train_step, infer = bench_worker.shendu_engine("deepconvnet")
rng = np.random.default_rng(0)
batches = [(rng.random((100, 1, 28, 28), np.float32), rng.integers(0, 10, 100)) for _ in range(8)]
work = {"train": lambda: [train_step(x, t) for x, t in batches],
        "infer": lambda: [infer(x) for x, _ in batches]}
for run in work.values():
    run()  # compiled (or read from Numba's cache) and warm
rates = {}
for name, run in work.items():
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    rates[name] = 8 * 100 / sorted(seconds)[1]
print(json.dumps(rates))
"""

# name: (module imported before shendu, change, environment)
TUNING = {
    "as shendu runs": ("", "", {}),
    "NumPy imported first": ("numpy", "", {}),
    "PyTorch imported first": ("torch", "", {}),
    "freed memory not kept (SHENDU_TUNING=0)": ("", "", {"SHENDU_TUNING": "0"}),
    "BLAS threaded in the layers' products": ("", "threaded-blas", {}),
    "OMP_WAIT_POLICY=passive": ("", "", {"OMP_WAIT_POLICY": "passive"}),
}


@experiment
def tuning(rounds=11):
    """What shendu's process settings are worth (shendu/tuning.py): DeepConvNet's training and
    inference in a fresh process per configuration, the configurations alternating round after
    round so that a noisy machine slows each alike; medians and ranges of images per second."""
    import importlib.util
    configs = {name: c for name, c in TUNING.items()
               if not c[0] or importlib.util.find_spec(c[0]) is not None}  # PyTorch: if there
    runs = {name: [] for name in configs}
    for _ in range(rounds):
        for name, (first, change, env) in configs.items():
            out = subprocess.run([sys.executable, "-c", _TUNING_WORKER, first, change],
                                 env={**os.environ, **env}, capture_output=True, text=True,
                                 check=True).stdout
            runs[name].append(json.loads(out))
    return {"rounds": rounds, "batch": 100, "configs": {
        name: {work: {"median": float(np.median([r[work] for r in rows])),
                      "min": min(r[work] for r in rows), "max": max(r[work] for r in rows)}
               for work in ("train", "infer")}
        for name, rows in runs.items()}}


@experiment
def chapter1():
    """The chapter's run: DeepConvNet, Adam 0.001, batch 100, 20 epochs, full MNIST."""
    from . import datasets, models, optim
    from .rng import manual_seed
    from .train import Trainer
    train, test = datasets.load_mnist()
    manual_seed(0)
    model = models.DeepConvNet()
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.001), batch_size=100, seed=0,
                      run_dir=Path("runs") / "chapter1-experiment")
    history = trainer.fit(train, test, epochs=20)
    best = max(history, key=lambda row: row["test_acc"])
    return {
        "final_test_acc": history[-1]["test_acc"],
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "train_time_s": round(sum(row["epoch_time"] for row in history), 1),
        "images_per_s": round(float(np.median([row["images_per_s"] for row in history])), 1),
        "history": history,
    }


@experiment
def resume_identity(epochs=20, kills=4, checkpoint_every=100, seed=0, root=None):
    """The resume guarantee on a full run: `shendu train` with the chapter's recipe, killed with
    SIGKILL after randomly chosen steps and resumed each time, must end with the bytes of a run
    never stopped. Both runs are subprocesses with the same environment (so the same BLAS
    threads)."""
    import hashlib
    import random
    import shutil
    import signal
    from .io import CHECKPOINT, WEIGHTS, read_checkpoint
    root = Path("runs") / "resume-identity" if root is None else Path(root)
    shutil.rmtree(root, ignore_errors=True)
    train = [sys.executable, "-m", "shendu", "train", "--epochs", str(epochs),
             "--checkpoint-every", str(checkpoint_every)]
    t0 = time.perf_counter()
    subprocess.run(train + ["--out", str(root / "never-stopped")], check=True,
                   stdout=subprocess.DEVNULL)
    uninterrupted_s = time.perf_counter() - t0
    reference = read_checkpoint(root / "never-stopped")[0]
    steps = reference["global_step"]

    def reached(step):  # the last checkpoint's step, once it is at least `step`
        try:
            written = json.loads((root / "killed" / CHECKPOINT).read_text())["global_step"]
        except (OSError, ValueError, KeyError):
            return None  # not written yet
        return written if written >= step else None

    killed = []
    cmd = train + ["--out", str(root / "killed")]
    for target in sorted(random.Random(seed).sample(range(1, steps), kills)):
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        while reached(target) is None:
            if process.poll() is not None:
                raise ShenduError(f"the run ended (status {process.returncode}) before step "
                                  f"{target}, where it was to be killed")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed.append({"after_step": target,
                       "resumed_from_step": read_checkpoint(root / "killed")[0]["global_step"]})
        cmd = train[:4] + ["--resume", str(root / "killed")]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def metrics(run):  # every column but the timings, as written (repr: bitwise)
        header, *rows = (root / run / "metrics.csv").read_text().splitlines()
        keep = [i for i, c in enumerate(header.split(","))
                if c not in ("epoch_time", "images_per_s", "elapsed")]
        return [[row.split(",")[i] for i in keep] for row in rows]

    digests = {run.replace("-", "_"): hashlib.sha256((root / run / WEIGHTS).read_bytes())
               .hexdigest() for run in ("never-stopped", "killed")}
    return {
        "epochs": epochs, "steps": steps, "checkpoint_every": checkpoint_every, "kills": killed,
        "weights_sha256": digests,
        "identical_weights": digests["never_stopped"] == digests["killed"],
        "identical_metrics": metrics("never-stopped") == metrics("killed"),
        "final_test_acc": reference["history"][-1]["test_acc"],
        "uninterrupted_s": round(uninterrupted_s, 1),
    }


def _check_only(only, names, problem):
    """Refuse, before any training, run names in `only` that the experiment does not have."""
    unknown = set(only or ()) - set(names)
    if unknown:
        raise ShenduError(f"{problem} {', '.join(sorted(unknown))}; "
                          f"choose from: {', '.join(names)}")


def _equal_steps(n, batch_size, steps):
    """The epochs of n images in batches of `batch_size` that take about `steps` steps (at least
    one epoch), and the steps they take: how depth_and_data and augmentation train a small set
    as long as a large one."""
    from .train import _steps, planned_steps
    epochs = max(1, round(steps / _steps(n, batch_size)))
    return epochs, planned_steps(n, batch_size, epochs)


# -- "Why deeper" ------------------------------------------------------------------------------
# Does a deep network learn from less data? Two networks of about the same weights and
# multiply-adds (models.DeepNarrow, models.ShallowWide), trained alike on more and more digits.
DEPTH_NETWORKS = ("deepnarrow", "shallowwide")
DEPTH_SIZES = (500, 1000, 5000, 60000)
DEPTH_SEEDS = {500: (0, 1, 2), 1000: (0, 1, 2), 5000: (0, 1, 2), 60000: (0, 1, 2)}
# Every run takes the same number of steps, whatever its data, so that a small set is trained as
# long as the full one (many epochs of it) and no size loses for being under-trained: 1,800
# steps of 100 are 3 epochs of 60,000 digits and 360 epochs of 500.
DEPTH_STEPS = 1800
DEPTH_RECIPE = {"optimizer": "adam", "lr": 0.002, "batch_size": 100, "one_cycle": True}
DEPTH_MATCH = 0.05  # the networks' weights and multiply-adds agree within 5%


@experiment
def depth_and_data(only=None, sizes=DEPTH_SIZES, seeds=DEPTH_SEEDS, steps=DEPTH_STEPS,
                   networks=DEPTH_NETWORKS, recipe=DEPTH_RECIPE, monitor=100):
    """The chapter "Why deeper?"'s second claim, measured: a deep, narrow network and a shallow,
    wide one with about the same weights and multiply-adds, trained by the same recipe (Adam
    with a one-cycle schedule, `recipe`) for the same number of `steps`, on the first 500,
    1,000, 5,000 and all 60,000 MNIST training digits, each with the seeds `seeds` gives for
    its size (a dict) or with every one of `seeds` (a tuple). Accuracy on all 10,000 test
    digits at the end (after each epoch only on the first `monitor`, which the trainer needs).
    The runs are named by their number of images: `only=["500", "1000"]` trains those."""
    from . import datasets, models
    from .nn import Conv2d, Linear
    from .recipes import Recipe
    from .summarize import summary
    from .train import evaluate
    _check_only(only, [str(n) for n in sizes], "depth_and_data has no size")
    (x, t), (x_test, t_test) = datasets.load_mnist()
    about = {}
    for name in networks:
        model = models.get(name)
        table = summary(model)
        about[name] = {"parameters": table.total_parameters, "macs": table.total_macs,
                       "weight_layers": sum(isinstance(m, (Conv2d, Linear))
                                            for m in model.modules()),
                       "about": " ".join(inspect.getdoc(models._REGISTRY[name]).split())}
    for key in ("parameters", "macs"):  # refused before any training: the comparison is unfair
        counts = [entry[key] for entry in about.values()]
        if max(counts) > (1 + DEPTH_MATCH) * min(counts):
            raise ShenduError(f"the networks' {key} differ by more than {DEPTH_MATCH:.0%}: "
                              f"{counts}")
    batch = recipe["batch_size"]
    results = {}
    for n in sizes:
        if only and str(n) not in only:
            continue
        n_used = min(n, len(x))
        epochs, taken = _equal_steps(n_used, batch, steps)
        runs = []
        for name in networks:
            twin = Recipe(f"{name}: {recipe}", model=name, epochs=epochs, **recipe)
            for seed in seeds[n] if isinstance(seeds, dict) else seeds:
                began = time.perf_counter()
                model, history = twin.fit((x[:n], t[:n]), (x_test[:monitor], t_test[:monitor]),
                                          seed=seed)
                runs.append({"network": name, "seed": seed,
                             "test_acc": evaluate(model, x_test, t_test),
                             "train_acc": history[-1]["train_acc"],
                             "train_loss": round(history[-1]["train_loss"], 5),
                             "wall_time_s": round(time.perf_counter() - began, 1)})
                print(f"{n} images, {name}, seed {seed}: {runs[-1]['test_acc']:.2%} in "
                      f"{runs[-1]['wall_time_s']:.0f} s", file=sys.stderr, flush=True)
        results[str(n)] = {
            "train_images": n_used, "epochs": epochs,
            "steps": taken, "runs": runs,
            "median_test_acc": {name: float(np.median([r["test_acc"] for r in runs
                                                       if r["network"] == name]))
                                for name in networks}}
    return {"networks": about, "recipe": dict(recipe), "steps": steps,
            "monitor_images": monitor, "runs": results}


# -- "Representative networks" -----------------------------------------------------------------
def _train(model, train, test, epochs, max_lr, batch_size=128, augment=None, probe=None,
           probe_every=25):
    """The recipe of the chapter's comparisons: SGD with Nesterov momentum 0.9, weight decay
    5e-4 and a one-cycle schedule. Returns the history, every step's loss and, every
    `probe_every` steps, (step, error on the `probe` images) when a probe set is given."""
    from .recipes import Recipe
    from .train import evaluate
    recipe = Recipe("the chapter's comparisons", optimizer="sgd", lr=max_lr,
                    batch_size=batch_size, weight_decay=5e-4, one_cycle=True,
                    transforms=augment.transforms if augment is not None else ())
    trainer = recipe.trainer(model, len(train[0]), epochs=epochs, progress=False)
    losses, probes = [], []

    def on_step(progress):
        losses.append(round(progress["loss"], 5))
        if probe is not None and progress["global_step"] % probe_every == 0:
            probes.append((progress["global_step"], round(1 - evaluate(model, *probe), 5)))

    def on_epoch(metrics):  # a long run shows where it is
        print(f"{type(model).__name__} epoch {metrics['epoch']}/{epochs}: loss "
              f"{metrics['train_loss']:.4f}, test {metrics['test_acc']:.2%}, "
              f"{metrics['images_per_s']:.0f} images/s", file=sys.stderr, flush=True)
    history = trainer.fit(train, test, epochs=epochs, on_step=on_step, on_epoch=on_epoch)
    if trainer.stopped is not None:  # Ctrl-C stops the experiment, not only this run
        raise KeyboardInterrupt
    return history, losses, probes


def _run_figures(model, history, losses, probes=()):
    """What the book shows of one run: size, speed, accuracy and the curves."""
    return {"parameters": model.num_parameters(), "final_test_acc": history[-1]["test_acc"],
            "best_test_acc": max(h["test_acc"] for h in history),
            "train_time_s": round(sum(h["epoch_time"] for h in history), 1),
            "images_per_s": round(float(np.median([h["images_per_s"] for h in history])), 1),
            "history": history, "step_losses": losses, "probe_errors": list(probes)}


@experiment
def plain_vs_residual(depths=(20, 56), epochs=2, subset=10000):
    """The ResNet paper's figure 1 at small scale: plain and residual networks of 20 and 56
    layers, trained alike on part of Fashion-MNIST. With more layers the plain network trains
    worse, the residual one does not."""
    from . import datasets, models
    from .rng import manual_seed
    (x, t), (x_test, t_test) = datasets.load_fashion_mnist()
    runs = {}
    for depth in depths:
        for kind in ("plain", "resnet"):
            manual_seed(0)
            model = models.CifarResNet(depth, input_shape=(1, 28, 28), shortcuts=kind == "resnet")
            history, losses, probes = _train(model, (x[:subset], t[:subset]), (x_test, t_test),
                                             epochs, max_lr=0.1,
                                             probe=(x_test[:1000], t_test[:1000]))
            runs[f"{kind}{depth}"] = _run_figures(model, history, losses, probes)
    return {"dataset": "fashion-mnist", "train_images": min(subset, len(x)), "epochs": epochs,
            "probe": "error on the first 1,000 test images", "runs": runs}


@experiment
def very_deep(depth=152, steps=200, batch_size=32, width=0.5):
    """More than 150 layers: CIFAR-style networks of `depth` weight layers (25 blocks a stage, at
    half the usual width), with and without shortcuts, for a few hundred steps on
    Fashion-MNIST."""
    from . import datasets, models
    from .rng import manual_seed
    (x, t), test = datasets.load_fashion_mnist()
    n = steps * batch_size
    runs = {}
    for shortcuts in (True, False):
        manual_seed(0)
        model = models.CifarResNet(depth, input_shape=(1, 28, 28), shortcuts=shortcuts,
                                   width=width)
        history, losses, _ = _train(model, (x[:n], t[:n]), test, 1, max_lr=0.05,
                                    batch_size=batch_size)
        runs["resnet" if shortcuts else "plain"] = _run_figures(model, history, losses)
    return {"depth": depth, "width": width, "steps": steps, "batch_size": batch_size,
            "runs": runs}


FASHION_ZOO = {  # small-input versions, sized for two cores (ResNet, the slowest, gets most)
    "resnet20": {"epochs": 30},
    "vgg11_bn": {"width": 0.25, "epochs": 10},
    "googlenet": {"width": 0.25, "batch_norm": True, "epochs": 6},
}


@experiment
def fashion_zoo(root=None, only=None):
    """VGG, GoogLeNet and ResNet trained on Fashion-MNIST with the same recipe (random crops of
    2 pixels and horizontal flips; SGD one-cycle): parameters, time and test accuracy. `only`
    names the models to train (default: all). Each trained model is saved in `root`/NAME
    (default runs/fashion-zoo/NAME), to evaluate again later (with test-time augmentation, or
    as an ensemble)."""
    from . import augment, datasets, models
    from .io import save
    from .rng import manual_seed
    _check_only(only, FASHION_ZOO, "fashion_zoo has no model")
    root = Path("runs") / "fashion-zoo" if root is None else Path(root)
    train, test = datasets.load_fashion_mnist()
    flips = augment.Compose([augment.RandomCrop(28, padding=2), augment.RandomHorizontalFlip()])
    runs = {}
    for name in only or FASHION_ZOO:
        settings = dict(FASHION_ZOO[name])
        epochs = settings.pop("epochs")
        manual_seed(0)
        model = models.get(name, **settings)
        history, losses, _ = _train(model, train, test, epochs, max_lr=0.1, augment=flips)
        save(model, root / name)
        runs[name] = {**_run_figures(model, history, losses), "settings": settings,
                      "epochs": epochs}
    return {"dataset": "fashion-mnist", "augment": repr(flips), "runs": runs}


# Scarce data needs steps, not epochs: every run on 1,000 or 5,000 digits takes the same number
# of steps (30 epochs of 5,000 digits: 150 epochs of 1,000), at a peak rate at which no seed
# diverged (at the recipe's 0.1, seed 2 on 5,000 digits did, with and without augmentation).
AUGMENTATION_STEPS, AUGMENTATION_LR = 1500, 0.05
AUGMENTATION_SEEDS = (0, 1, 2)


@experiment
def augmentation(only=None, sizes=(1000, 5000), steps=AUGMENTATION_STEPS, lr=AUGMENTATION_LR,
                 seeds=AUGMENTATION_SEEDS, monitor=1000, root=None):
    """What augmentation is worth when data is scarce: DeepConvNet by the `augment` recipe and by
    the same recipe without its transforms (alike in all else: steps, schedule, seeds), on the
    first 1,000 and 5,000 MNIST training images, each run `steps` steps of the one-cycle
    schedule up to `lr` (as many epochs as that takes), with every one of `seeds`. Accuracy
    after each epoch on the first `monitor` test images; at the end, on all. The runs are named
    by their number of images: `only=["1000"]` trains those. Each run trains in
    `root`/SIZE-TWIN-SEED (default runs/augmentation/), checkpointed every epoch: stopped, the
    experiment continues where it was, and reads finished runs back."""
    import dataclasses
    from . import datasets, recipes
    from .train import evaluate
    _check_only(only, [str(n) for n in sizes], "augmentation has no size")
    root = Path("runs") / "augmentation" if root is None else Path(root)
    (x, t), (x_test, t_test) = datasets.load_mnist()
    recipe = dataclasses.replace(recipes.get("augment"), lr=lr)
    twins = {"plain": dataclasses.replace(recipe, transforms=()), "augment": recipe}
    results = {}
    for n in sizes:
        if only and str(n) not in only:
            continue
        epochs, taken = _equal_steps(min(n, len(x)), recipe.batch_size, steps)
        runs = []
        for name, twin in twins.items():
            for seed in seeds:
                model, history = twin.fit((x[:n], t[:n]), (x_test[:monitor], t_test[:monitor]),
                                          seed=seed, epochs=epochs,
                                          run_dir=root / f"{n}-{name}-{seed}")
                runs.append({"recipe": name, "seed": seed,
                             "test_acc": evaluate(model, x_test, t_test),
                             "train_time_s": round(sum(h["epoch_time"] for h in history), 1),
                             "monitor_acc": [h["test_acc"] for h in history]})
                print(f"{n} images, {name}, seed {seed}: {runs[-1]['test_acc']:.2%}",
                      file=sys.stderr, flush=True)
        results[str(n)] = {
            "train_images": min(n, len(x)), "epochs": epochs,
            "steps": taken, "max_lr": lr,
            "runs": runs,
            "median_test_acc": {name: float(np.median([r["test_acc"] for r in runs
                                                       if r["recipe"] == name]))
                                for name in twins}}
    return {"recipe": recipes.get("augment").about, "monitor_images": monitor, "runs": results}


TARGET = 0.994  # the chapter's accuracy: each run's time to reach it is recorded
TTA_COPIES = 4  # test-time augmentation: each test image and 4 views augmented as in training
# Seeds trained only to join a recipe's ensemble: `best` is measured as an ensemble of five runs
# too, while its median, like every recipe's, is of the runs of `seeds`.
MORE_MEMBERS = {"best": (3, 4)}


@experiment
def recipes(only=None, seeds=(0, 1, 2), more_members=MORE_MEMBERS, root=None):
    """Every recipe of `shendu.recipes` (or those `only` names), each with every seed, on its
    dataset: test accuracy and wall time per run, the time each took to reach TARGET (None if it
    never did), the medians, and the ensemble of the recipe's runs (averaged probabilities):
    its accuracy and the test images it still gets wrong. A recipe named in `more_members` also
    trains those seeds, reported apart ("more_members"); its ensemble has them all, and
    "ensemble_of_runs_test_acc" is that of the runs of `seeds` alone. A recipe that augments its
    training batches is also tested with test-time augmentation (TTA_COPIES views of each test
    image, augmented the same way), each run and the ensemble. Each run trains in its run directory
    `root`/NAME-SEED (default runs/recipes/), checkpointed every epoch: stopped (Ctrl-C,
    SIGTERM), the experiment continues each run where it was when started again, and a finished
    run is read back, not trained again. The models stay there, to evaluate again later
    (`shendu evaluate runs/recipes/NAME-0 ... --tta 4`)."""
    from . import datasets
    from . import recipes as recipe_book
    from .train import evaluate, predict_proba
    root = Path("runs") / "recipes" if root is None else Path(root)
    chosen = {name: recipe_book.get(name) for name in only or recipe_book.names()}  # typos first
    results = {}
    for name, recipe in chosen.items():
        train, (x_test, t_test) = datasets.load(recipe.dataset)
        runs, models, tta = [], [], recipe.augmentation()
        for seed in (*seeds, *more_members.get(name, ())):
            model, history = recipe.fit(train, (x_test, t_test), seed=seed,
                                        run_dir=root / f"{name}-{seed}",
                                        settings=recipe_book.settings(name, seed))
            reached = [h["elapsed"] for h in history if h["test_acc"] >= TARGET]
            runs.append({"seed": seed, "test_acc": history[-1]["test_acc"],
                         "wall_time_s": round(history[-1]["elapsed"], 1),
                         "time_to_target_s": round(reached[0], 1) if reached else None,
                         "images_per_s": round(float(np.median(
                             [h["images_per_s"] for h in history])), 1),
                         "test_acc_by_epoch": [h["test_acc"] for h in history]})
            if tta is not None:
                runs[-1]["tta_test_acc"] = evaluate(model, x_test, t_test, tta=tta,
                                                    copies=TTA_COPIES)
            models.append(model)
            print(f"{name}, seed {seed}: {runs[-1]['test_acc']:.2%} in "
                  f"{runs[-1]['wall_time_s']:.0f} s", file=sys.stderr, flush=True)
        predicted = predict_proba(models, x_test).argmax(axis=1)
        wrong = np.flatnonzero(predicted != t_test)
        runs, more = runs[:len(seeds)], runs[len(seeds):]
        results[name] = {
            "about": recipe.about, "dataset": recipe.dataset, "epochs": recipe.epochs,
            "runs": runs,
            "median_test_acc": float(np.median([r["test_acc"] for r in runs])),
            "median_wall_time_s": float(np.median([r["wall_time_s"] for r in runs])),
            "ensemble_test_acc": float(np.mean(predicted == t_test)),
            "ensemble_errors": [[int(i), int(t_test[i]), int(predicted[i])] for i in wrong]}
        if more:
            results[name]["more_members"] = more
            results[name]["ensemble_of_runs_test_acc"] = evaluate(models[:len(seeds)], x_test,
                                                                  t_test)
        if tta is not None:
            results[name]["median_tta_test_acc"] = float(np.median([r["tta_test_acc"]
                                                                    for r in runs]))
            results[name]["ensemble_tta_test_acc"] = evaluate(models, x_test, t_test, tta=tta,
                                                              copies=TTA_COPIES)
    return {"target": TARGET, "seeds": list(seeds), "runs": results}


def readme_block(record):
    """The README's results paragraph of an experiment, written from its results file (never
    typed by hand)."""
    return _README_BLOCKS[record["experiment"]](record)


def _chapter1_block(record):
    f, m = record["figures"], record["machine"]
    return (f"Chapter 1's full run (`{record['command']}`, commit `{record['commit']}`, "
            f"{record['date'][:10]}): final test accuracy **{f['final_test_acc']:.2%}**, best "
            f"{f['best_test_acc']:.2%} (epoch {f['best_epoch']}), {f['train_time_s'] / 60:.1f} "
            f"minutes of training at {f['images_per_s']:,.0f} images/s on {m['cores']} cores of "
            f"an {m['cpu']}.")


def _bench_block(record):
    from . import bench as bench_module
    f, m = record["figures"], record["machine"]
    names = {"deepconvnet": "DeepConvNet", "resnet20": "ResNet-20", "vgg11_bn": "VGG-11-BN",
             "googlenet": "GoogLeNet"}

    def ratios(task):
        own = [(model, next(iter(entry["batches"].values())))  # the network's own batch first
               for model, entry in f["networks"].items()]
        return ", ".join(f"{names.get(model, model)} {bench_module.ratio(engines, task):.2f}x"
                         for model, engines in own)
    return (f"shendu's speed as a multiple of PyTorch {f['torch_version']}'s on {m['cores']} cores "
            f"of an {m['cpu']} (`{record['command']}`, commit `{record['commit']}`, "
            f"{record['date'][:10]}; medians of {f['rounds']} fresh processes per engine, each "
            f"network at its own batch size): training {ratios('train')}; inference "
            f"{ratios('infer')}.")


_README_BLOCKS = {"chapter1": _chapter1_block, "bench": _bench_block}


def update_readme(record, readme=None):
    """Replace the text between `<!-- results:NAME -->` and `<!-- /results -->` in README.md
    (default: the current checkout's)."""
    readme = checkout() / "README.md" if readme is None else Path(readme)
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- results:{record['experiment']} -->\n).*?(\n<!-- /results -->)", re.S)
    if not pattern.search(text):
        return False
    readme.write_text(pattern.sub(lambda m: m.group(1) + readme_block(record) + m.group(2), text))
    return True


# -- "Applications I": detection, segmentation, captioning -------------------------------------
APPLICATIONS = ("segment", "caption", "detect", "regions")  # recipes, each a run
EXAMPLES = 8  # test scenes whose predictions the results keep, for the chapter's figures


@experiment
def applications(only=None, seed=0, root=None):
    """Chapter 7's networks, each trained by its recipe (`shendu train --recipe NAME`: segment,
    caption, detect, regions) on MNIST scenes, its DeepConvNet backbone included, then measured
    on the 1,000 test scenes: FCN's mean IoU over the 11 classes and per class; the
    captioner's exact captions and BLEU-4, greedy and with a beam of 3, and its first failures;
    the grid detector's and R-CNN's mean average precision (VOC, IoU 0.5) and per class, and
    R-CNN's proposal recall; each with its training time (backbone, data and epochs) and time
    per scene. The first EXAMPLES scenes' predictions are kept for the figures. Each run's
    model is saved in `root`/NAME (default runs/applications/NAME)."""
    from . import applications as apply
    from . import datasets, detection, recipes
    from .io import save
    _check_only(only, APPLICATIONS, "applications has no run")
    root = Path("runs") / "applications" if root is None else Path(root)
    test = datasets.mnist_scenes("test", 1000)
    runs = {}
    for name in only or APPLICATIONS:
        recipe = recipes.get(name)
        began = time.perf_counter()
        model, history = recipe.fit(*recipe.data(), seed=seed)
        trained = time.perf_counter() - began
        save(model, root / name)
        figures, predicted = apply.measure(recipe.task, model, test)
        if name == "segment":
            figures["examples"] = [_mask_text(m) for m in predicted[:EXAMPLES]]
        elif name == "caption":
            figures["examples"] = predicted[:EXAMPLES]
            figures["failures"] = [{"scene": i, "truth": t, "caption": c}
                                   for i, (c, t) in enumerate(zip(predicted, test.captions))
                                   if c != t][:EXAMPLES]
        else:
            figures["examples"] = [_detections_json(f) for f in predicted[:EXAMPLES]]
        if name == "regions":
            boxes = [detection.proposals(image[0]) for image in test.images]
            figures["proposals"] = {
                "per_scene": float(np.mean([len(b) for b in boxes])),
                "recall_iou_0.5": detection.recall(boxes, test.boxes),
                "recall_iou_0.7": detection.recall(boxes, test.boxes, 0.7)}
        runs[name] = {**figures, "recipe": recipe.about, "model": model.config["model"],
                      "parameters": model.num_parameters(), "seed": seed,
                      "train_time_s": round(trained, 1),
                      "epoch_time_s": [round(h["epoch_time"], 1) for h in history],
                      "test_acc": [h["test_acc"] for h in history]}
        scores = ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if isinstance(v, float))
        print(f"{name}: {scores}, trained in {trained:.0f} s", file=sys.stderr, flush=True)
    return {"test_scenes": len(test.images), "examples": EXAMPLES, "runs": runs}


def _mask_text(mask):
    """A label map as rows of characters, 0-9 and a for 10: compact in JSON."""
    return ["".join("0123456789a"[v] for v in row) for row in mask]


def _detections_json(found, min_score=0.5):
    kept = found.scores >= min_score
    return [{"box": [round(float(v), 1) for v in box], "class": int(c),
             "score": round(float(s), 4)}
            for box, c, s in zip(found.boxes[kept], found.classes[kept], found.scores[kept])]


GENERATIVE = ("dcgan", "catch", "cartpole")
GENERATED = 10000  # digits drawn from the generator to measure it
DQN_RUNS = {  # each game's DQN settings (rl.DQN) and Q-network (models "qnet")
    "catch": ({"steps": 5000, "warmup": 200, "target_every": 200},
              {"num_classes": 3, "input_shape": (1, 10, 5)}),
    "cartpole": ({"steps": 50000, "batch_size": 64, "lr": 5e-4, "buffer": 50000,
                  "warmup": 1000, "target_every": 500, "explore": 0.2, "epsilon_end": 0.02},
                 {"num_classes": 2, "input_shape": (4,)}),
}
GAMES = {"catch": "shendu/Catch-v0", "cartpole": "CartPole-v1"}


@experiment
def generative(only=None, seed=0, gan_epochs=4, classifier_epochs=5):
    """Chapter 8's runs. dcgan: DCGAN trained on MNIST's training digits for `gan_epochs`
    (generative.GAN), a grid of the same 64 latent vectors' digits after each epoch and four
    walks through the latent space (PNG, base64), then measured on GENERATED digits by a
    DeepConvNet trained by the book recipe for `classifier_epochs`: the Fréchet distance in its
    penultimate features to the 10,000 test digits, beside the floor (10,000 training digits)
    and a weak baseline (pixels drawn independently from the training digits' per-pixel mean
    and spread), and the classes it sees and how sure it is. catch and cartpole: DQN (rl.DQN,
    settings DQN_RUNS) on Catch and CartPole-v1, each episode's return while learning, then 100
    greedy evaluation episodes."""
    _check_only(only, GENERATIVE, "generative has no run")
    runs = {}
    for name in only or GENERATIVE:
        began = time.perf_counter()
        runs[name] = _dcgan(seed, gan_epochs, classifier_epochs) if name == "dcgan" else \
            _dqn(name, seed)
        runs[name]["wall_time_s"] = round(time.perf_counter() - began, 1)
        print(f"{name}: done in {runs[name]['wall_time_s']:.0f} s", file=sys.stderr, flush=True)
    return {"runs": runs}


def _png(images, cols):
    """Images (N, 1, H, W) in [0, 1] as one PNG grid, base64 text (see plot.png)."""
    import base64
    import io

    from PIL import Image
    n, _, h, w = images.shape
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w), np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = np.round(image[0] * 255)
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _dcgan(seed, epochs, classifier_epochs):
    from . import datasets, generative as gen, metrics, models, recipes
    from .rng import manual_seed
    from .train import predict_proba
    train, test = datasets.load("mnist")
    manual_seed(seed)
    g, d = models.get("generator"), models.get("discriminator")
    latent = g[0].in_channels
    fixed = gen.noise(64, latent, seed=1000)
    grids = []
    began = time.perf_counter()
    history = gen.GAN(epochs=epochs).fit(
        g, d, train[0], seed=seed,
        on_epoch=lambda epoch, entry: grids.append(_png(gen.generate(g, fixed), 8)))
    trained = time.perf_counter() - began
    ends = gen.noise(8, latent, seed=1001)
    walks = np.concatenate([gen.generate(g, gen.walk(a, b, 10)) for a, b in zip(ends[::2],
                                                                                ends[1::2])])
    classifier, _ = recipes.RECIPES["book"].fit(train, test, seed=seed, epochs=classifier_epochs)
    generated = gen.generate(g, gen.noise(GENERATED, latent, seed=2000))
    rng = np.random.default_rng(seed)
    pixels = train[0].astype(np.float64) / 255
    baseline = np.clip(rng.normal(pixels.mean(0), pixels.std(0), (GENERATED, *pixels.shape[1:])),
                       0, 1).astype(np.float32)
    test_features = gen.features(classifier, test[0])

    def distance(images):
        return metrics.frechet_distance(gen.features(classifier, images), test_features)

    def seen(p):  # what the classifier's probabilities p say of a set of images
        return {"classes": np.bincount(p.argmax(axis=1), minlength=10).tolist(),
                "mean_confidence": float(p.max(axis=1).mean()),
                "confident_0.9": float((p.max(axis=1) > 0.9).mean())}
    on_test = predict_proba(classifier, test[0])
    picked = rng.choice(len(train[0]), GENERATED, replace=False)
    return {"epochs": epochs, "history": history, "train_time_s": round(trained, 1),
            "parameters": {"generator": g.num_parameters(), "discriminator": d.num_parameters()},
            "grids": grids, "walks": _png(walks, 10),
            "classifier_test_acc": float(np.mean(on_test.argmax(axis=1) == test[1])),
            "frechet": {"generated": distance(generated),
                        "training_digits": distance(train[0][picked]),
                        "pixel_baseline": distance(baseline)},
            "classifier_on_generated": seen(predict_proba(classifier, generated)),
            "classifier_on_test": seen(on_test)}


def _dqn(name, seed):
    import gymnasium

    from . import models, rl
    from .rng import manual_seed
    settings, network = DQN_RUNS[name]
    env = gymnasium.make(GAMES[name])
    manual_seed(seed)
    q = models.get("qnet", **network)
    began = time.perf_counter()
    returns = rl.DQN(**settings).fit(env, q, seed=seed)
    trained = time.perf_counter() - began
    evaluation = rl.play(env, q, 100, seed=10000)
    figures = {"game": GAMES[name], "settings": settings, "parameters": q.num_parameters(),
               "train_time_s": round(trained, 1), "returns": returns,
               "evaluation_returns": evaluation, "evaluation_mean": float(np.mean(evaluation))}
    if name == "catch":  # a return of +1 is a ball caught
        figures["evaluation_won"] = float(np.mean(np.array(evaluation) > 0))
    return figures


# -- "Representative networks": transfer learning ------------------------------------------------
# The knobs of `transfer`, chosen before any run (none was tuned on the test digits): the book's
# recipe (Adam 0.001, batch 100) pretrains for PRETRAIN_EPOCHS on all of Fashion-MNIST; then every
# way of learning the digits takes TRANSFER_STEPS steps of TRANSFER_BATCH digits (each labelled
# digit seen 250 times with 100 of them, 25 times with 1,000), with its own learning rate.
PRETRAIN_EPOCHS = 4
TRANSFER_STEPS = 500
TRANSFER_BATCH = 50
TRANSFER_SIZES = (100, 1000)
TRANSFER_SEEDS = (0, 1, 2)
TRANSFER_LR = {
    "probe": 1e-3,     # the new last layer only, on the frozen pretrained network
    "finetune": 1e-4,  # a tenth of the book's rate: adjust the pretrained weights, not replace
    "scratch": 1e-3,   # the book's rate, from He initialisation
    "random_probe": 1e-3,  # a control: the probe on a network that was never trained
}


def new_head(model):
    """Replace the model's last Linear layer by a new one of the same shape (drawn from shendu's
    generator) in place; returns the new layer."""
    from . import nn
    name = [key for key, layer in model._modules.items() if isinstance(layer, nn.Linear)][-1]
    old = model._modules[name]
    setattr(model, name, nn.Linear(old.in_features, old.out_features))
    return model._modules[name]


def adapt(way, pretrained, seed, model_name="deepconvnet"):
    """The network and the parameters its optimizer trains, for one way of learning the digits:
    "probe" (the pretrained network with a new last layer, only that layer trained), "finetune"
    (the same network, every layer trained), "scratch" (a new network, every layer trained) or
    "random_probe" (a new network, only its last layer trained). `pretrained` is a state dict;
    shendu.manual_seed(seed) is drawn from first, so "probe" and "finetune" get the same new
    layer."""
    from . import models
    from .rng import manual_seed
    manual_seed(seed)
    if way in ("scratch", "random_probe"):
        model = models.get(model_name)
        head = new_head(model) if way == "random_probe" else None
    else:
        model = models.get(model_name).load_state_dict(pretrained)
        manual_seed(seed)
        head = new_head(model)
    trained = head.parameters() if way in ("probe", "random_probe") else model.parameters()
    return model, trained


@experiment
def transfer(sizes=TRANSFER_SIZES, seeds=TRANSFER_SEEDS, steps=TRANSFER_STEPS,
             batch_size=TRANSFER_BATCH, pretrain_epochs=PRETRAIN_EPOCHS, lrs=TRANSFER_LR):
    """Transfer learning on data we have: DeepConvNet pretrained by the book's recipe on all of
    Fashion-MNIST (seed 0), then taught MNIST from a few labelled digits in each way of `lrs`
    (see `adapt`): with each seed, the first n digits of a random order of the training set
    (the same digits for every way), `steps` steps of Adam at the way's learning rate, batches
    of `batch_size`. Test accuracy on all 10,000 test digits, and accuracy on the labelled
    digits themselves (did the way fit them?)."""
    from . import datasets, optim, recipes
    from .train import Trainer, evaluate
    began = time.perf_counter()
    fashion_train, fashion_test = datasets.load_fashion_mnist()
    pretrained, history = recipes.get("book").fit(fashion_train, fashion_test, seed=0,
                                                  epochs=pretrain_epochs)
    state = pretrained.state_dict()
    pretrain_s = time.perf_counter() - began
    print(f"pretrained on Fashion-MNIST: {history[-1]['test_acc']:.2%} in {pretrain_s:.0f} s",
          file=sys.stderr, flush=True)
    (x, t), (x_test, t_test) = datasets.load_mnist()
    results = {}
    for n in sizes:
        if steps * batch_size % n or n % batch_size:
            raise ShenduError(f"{steps} steps of {batch_size} must be whole epochs of {n} digits")
        runs = []
        for seed in seeds:
            chosen = np.random.default_rng(seed).permutation(len(x))[:n]
            labelled = (x[chosen], t[chosen])
            for way, lr in lrs.items():
                model, trained = adapt(way, state, seed)
                trainer = Trainer(model, optim.Adam(trained, lr=lr), batch_size=batch_size,
                                  seed=seed, progress=False)
                started = time.perf_counter()
                fitted = trainer.fit(labelled, (labelled[0][:batch_size],
                                                labelled[1][:batch_size]),
                                     epochs=steps * batch_size // n)
                runs.append({"way": way, "seed": seed, "lr": lr, "steps": trainer.global_step,
                             "test_acc": evaluate(model, x_test, t_test),
                             "train_acc": evaluate(model, *labelled),
                             "final_train_loss": fitted[-1]["train_loss"],
                             "train_time_s": round(time.perf_counter() - started, 1)})
                print(f"{n} digits, {way}, seed {seed}: {runs[-1]['test_acc']:.2%}",
                      file=sys.stderr, flush=True)
        results[str(n)] = {
            "labelled": n, "runs": runs,
            "median_test_acc": {way: float(np.median([r["test_acc"] for r in runs
                                                      if r["way"] == way])) for way in lrs}}
    return {"model": "deepconvnet", "pretrain": {
                "dataset": "fashion-mnist", "recipe": "book", "epochs": pretrain_epochs,
                "seed": 0, "test_acc": history[-1]["test_acc"],
                "train_time_s": round(pretrain_s, 1), "history": history},
            "steps": steps, "batch_size": batch_size, "lr": dict(lrs), "seeds": list(seeds),
            "test_images": len(x_test), "runs": results}
