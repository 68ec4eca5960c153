"""`python -m shendu bench`: shendu and PyTorch side by side, in one run, on the same machine.

Speed is a ratio measured here, never an absolute figure from somewhere else: both engines train
(forward, backward, Adam) and infer DeepConvNet on the same batches, in alternating repeats, so
a noisy neighbour slows both alike. Peak memory is measured in a fresh process per engine.
"""
import json
import multiprocessing
import os
import resource
import time
from contextlib import contextmanager

import numpy as np

from . import models, nn, optim

BATCHES = (100, 256)


# -- what the work costs ----------------------------------------------------------------------
def flops_per_image(model, input_shape):
    """(training, inference) FLOPs per image: a multiply-add is 2 FLOPs; training runs each
    layer three times (forward, input gradient, weight gradient) except the first layer's input
    gradient, which nobody needs."""
    from .summarize import summary
    costs = [row["macs"] for row in summary(model, input_shape) if row["macs"]]
    inference = 2 * sum(costs)
    return 3 * inference - 2 * costs[0], inference


def gemm_peak(n=2048, repeats=5):
    """The machine's float32 matrix-product rate (GFLOP/s), best of a few, through NumPy's BLAS."""
    a = np.random.default_rng(0).random((n, n), np.float32)
    a @ a
    best = min(_seconds(lambda: a @ a) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- the engines --------------------------------------------------------------------------------
def _batch(batch, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((batch, 1, 28, 28), np.float32), rng.integers(0, 10, batch)


def shendu_engine():
    """(train_step(x, t), infer(x)) for shendu's DeepConvNet."""
    model = models.DeepConvNet()
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=1e-3)

    def train_step(x, t):
        model.train()
        loss_fn(model(x), t)
        nn.data_backward(model, loss_fn.backward())
        opt.step()

    def infer(x):
        model.eval()
        with nn.no_grad():
            model(x)
    return train_step, infer


def torch_engine(channels_last):
    """(train_step(x, t), infer(x)) for the same network in PyTorch, NCHW or channels_last."""
    import torch
    F = torch.nn
    layers = []
    for c_in, c_out, pad, pool in ((1, 16, 1, False), (16, 16, 1, True), (16, 32, 1, False),
                                   (32, 32, 2, True), (32, 64, 1, False), (64, 64, 1, True)):
        layers += [F.Conv2d(c_in, c_out, 3, padding=pad), F.ReLU()] + ([F.MaxPool2d(2)] if pool else [])
    layers += [F.Flatten(), F.Linear(1024, 50), F.ReLU(), F.Dropout(0.5), F.Linear(50, 10), F.Dropout(0.5)]
    model = F.Sequential(*layers)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def tensor(x):
        return torch.from_numpy(x).contiguous(memory_format=memory_format)

    def train_step(x, t):
        model.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(tensor(x)), torch.from_numpy(t)).backward()
        opt.step()

    def infer(x):
        model.eval()
        with torch.inference_mode():
            model(tensor(x))
    return train_step, infer


ENGINES = {"shendu": shendu_engine, "torch": lambda: torch_engine(False),
           "torch-cl": lambda: torch_engine(True)}


def _torch_available():
    try:
        import torch
    except ImportError:
        return False
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    return True


# -- measuring ------------------------------------------------------------------------------------
def throughput(batch, names, repeats=5, seconds=1.0):
    """images/s per engine and task: {engine: {"train": [per repeat], "infer": [...]}}.
    Each repeat runs every engine in turn for about `seconds`, so drift hits all alike."""
    x, t = _batch(batch)
    tasks = {}
    for name in names:
        train_step, infer = ENGINES[name]()
        tasks[name, "train"] = lambda step=train_step: step(x, t)
        tasks[name, "infer"] = lambda step=infer: step(x)
    steps = {}
    for key, fn in tasks.items():
        fn()  # compile and warm the caches
        steps[key] = max(2, int(seconds / max(_seconds(fn), 1e-4)))
    rates = {name: {"train": [], "infer": []} for name in names}
    for _ in range(repeats):
        for (name, task), fn in tasks.items():
            n = steps[name, task]
            rates[name][task].append(n * batch / _seconds(lambda: [fn() for _ in range(n)]))
    return rates


def _peak_memory_child(name, batch, steps, queue):
    """Train on full MNIST for a few steps in this fresh process; report its peak RSS (MiB)."""
    from . import datasets
    if name != "shendu":
        _torch_available()
    (x, t), _ = datasets.load_mnist()
    train_step, _ = ENGINES[name]()
    for i in range(steps):
        train_step(x[i * batch:(i + 1) * batch].astype(np.float32) / 255, t[i * batch:(i + 1) * batch])
    queue.put(_peak_rss_mib())


def _peak_rss_mib():
    """This process's peak resident memory. Linux's VmHWM belongs to the address space, which
    exec renews; getrusage's ru_maxrss would start from the parent's peak after fork + exec."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(name, batch=100, steps=20):
    ctx = multiprocessing.get_context("spawn")  # a fresh process: nothing inherited
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_memory_child, args=(name, batch, steps, queue))
    proc.start()
    result = queue.get(timeout=600)
    proc.join()
    return result


# What a fresh process does first: import shendu, then two training steps of DeepConvNet. The
# first compiles every Numba kernel the step calls, or loads it from Numba's cache.
_FIRST_STEPS = """
import json, time
start = time.perf_counter()
from shendu import bench
imported = time.perf_counter()
train_step, _ = bench.shendu_engine()
x, t = bench._batch(100)
first, second = (bench._seconds(lambda: train_step(x, t)) for _ in range(2))
print(json.dumps({"import_s": imported - start, "first_step_s": first, "next_step_s": second}))
"""


def startup():
    """Seconds a fresh process takes to import shendu, for DeepConvNet's first training step
    and for the next: with an empty Numba cache (every kernel compiles: a notebook's first run
    on a new machine), then with the cache that run filled (its second run)."""
    import subprocess
    import sys
    import tempfile
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = [json.loads(subprocess.run([sys.executable, "-c", _FIRST_STEPS], env=env,
                                          capture_output=True, text=True, check=True).stdout)
                for _ in range(2)]
    return {"empty_cache": runs[0], "cached": runs[1]}


@contextmanager
def _timer(totals, key):
    start = time.perf_counter()
    yield
    totals[key] = totals.get(key, 0.0) + time.perf_counter() - start


def layer_profile(batch=100, steps=20):
    """Milliseconds per training step in each layer's forward and backward, the optimizer, the
    data pipeline (gathering a shuffled batch of uint8 images and scaling it to float32) and
    the `augment` recipe's augmentation of the batch."""
    from . import datasets, recipes
    (x_all, t_all), _ = datasets.load_mnist()
    order = np.random.default_rng(0).permutation(len(x_all))
    model, loss_fn = models.DeepConvNet(), nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters())
    layers = list(model)
    transform = recipes.get("augment").augmentation()
    totals = {}
    for step in range(steps + 1):
        if step == 1:
            totals.clear()  # the first step compiles
        with _timer(totals, "data"):
            idx = order[step * batch:(step + 1) * batch]
            h, t = x_all[idx].astype(np.float32) / 255, t_all[idx]
        with _timer(totals, "augment"):
            h = transform(h, np.random.default_rng(step))
        for i, layer in enumerate(layers):  # as model(h) runs them
            with _timer(totals, (i, "forward")):
                h = layer(h)
        with _timer(totals, "loss"):
            loss_fn(h, t)
            d = loss_fn.backward()
        for i in reversed(range(len(layers))):
            with _timer(totals, (i, "backward")):
                d = layers[i].backward(d) if i else nn.data_backward(layers[i], d)
        with _timer(totals, "optimizer"):
            opt.step()
    rows = [(f"{i} {type(layer).__name__}", 1e3 * totals[i, "forward"] / steps,
             1e3 * totals[i, "backward"] / steps) for i, layer in enumerate(layers)]
    rows += [(key, 1e3 * totals[key] / steps, None)
             for key in ("loss", "optimizer", "data", "augment")]
    return rows


# -- the report -------------------------------------------------------------------------------
def run(repeats=5, batches=BATCHES, memory=True, start_up=True):
    """All the figures, as a dict (what `--json` writes)."""
    from .provenance import machine
    names = ["shendu"] + (["torch", "torch-cl"] if _torch_available() else [])
    model = models.DeepConvNet()
    train_flops, infer_flops = flops_per_image(model, (1, 28, 28))
    peak = gemm_peak()
    results = {"machine": machine(), "gemm_peak_gflops": peak, "train_flops_per_image": train_flops,
               "infer_flops_per_image": infer_flops, "repeats": repeats, "batches": {}}
    for batch in batches:
        rates = throughput(batch, names, repeats)
        entry = {}
        for name, tasks in rates.items():
            entry[name] = {}
            for task, values in tasks.items():
                flops = train_flops if task == "train" else infer_flops
                median = float(np.median(values))
                entry[name][task] = {"median": median, "min": float(min(values)),
                                     "max": float(max(values)),
                                     "percent_of_peak": 100 * median * flops / 1e9 / peak}
        results["batches"][str(batch)] = entry
    if memory:
        results["peak_memory_mib"] = {name: peak_memory(name) for name in names}
    if start_up:
        results["startup_s"] = startup()
    return results


def best_torch(entry, task):
    """PyTorch's better layout for a task (the issue compares with the best of NCHW and NHWC)."""
    options = [name for name in ("torch", "torch-cl") if name in entry]
    return max(options, key=lambda name: entry[name][task]["median"]) if options else None


def report(results):
    lines = [f"float32 GEMM peak: {results['gemm_peak_gflops']:.0f} GFLOP/s; DeepConvNet costs "
             f"{results['train_flops_per_image'] / 1e6:.1f} MFLOP per training image, "
             f"{results['infer_flops_per_image'] / 1e6:.1f} per inference image",
             f"{'batch':>5} {'task':6} {'engine':9} {'images/s':>9} {'(min-max)':>15} {'% peak':>7} {'ratio':>6}"]
    for batch, entry in results["batches"].items():
        for task in ("train", "infer"):
            rival = best_torch(entry, task)
            for name, tasks in entry.items():
                r = tasks[task]
                ratio = (f"{r['median'] / entry[rival][task]['median']:.2f}" if rival else "")
                lines.append(f"{batch:>5} {task:6} {name:9} {r['median']:9.0f} "
                             f"{r['min']:7.0f}-{r['max']:<7.0f} {r['percent_of_peak']:6.1f}% {ratio:>6}")
    for name, mib in results.get("peak_memory_mib", {}).items():
        lines.append(f"peak memory training at batch 100 on MNIST, {name}: {mib:.0f} MiB")
    if "startup_s" in results:
        cold, warm = results["startup_s"]["empty_cache"], results["startup_s"]["cached"]
        lines.append(f"a fresh process: import {warm['import_s']:.1f} s; first training step "
                     f"{cold['first_step_s']:.1f} s with an empty Numba cache (compiling), "
                     f"{warm['first_step_s']:.1f} s from the cache; the next step "
                     f"{warm['next_step_s']:.2f} s")
    return "\n".join(lines)


def profile_table(rows):
    """`layer_profile`'s rows as a table, with the step's total and augmentation's share of it."""
    lines = [f"{'layer':20} {'forward ms':>10} {'backward ms':>11}"]
    lines += [f"{name:20} {fwd:10.2f} {'' if bwd is None else f'{bwd:11.2f}'}"
              for name, fwd, bwd in rows]
    total = sum(r[1] + (r[2] or 0) for r in rows)
    augment = dict((r[0], r[1]) for r in rows)["augment"]
    lines += [f"{'total':20} {total:10.2f}",
              f"augmenting the batch costs {augment / (total - augment):.1%} of the rest of the step"]
    return "\n".join(lines)


def main(args):
    if args.profile:
        print(profile_table(layer_profile()))
        return
    results = run(repeats=args.repeats, memory=not args.no_memory, start_up=not args.no_startup)
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
