"""`python -m shendu bench`: shendu and PyTorch side by side, on the same machine, measured fairly.

Speed is a ratio measured here, never an absolute figure from somewhere else. Both engines train
(forward, backward, optimizer step) and infer each network of the course (DeepConvNet, ResNet-20,
VGG-11 with BatchNorm and GoogLeNet, as the course trains them on 28×28 images) on the same
batches. Each engine runs in fresh processes of its own (bench_worker.py), the engines alternating
over several rounds: one process holding both would share their OpenMP runtimes and settings and
skew both, and a noisy neighbour now slows each alike. The report gives medians and ranges.
"""
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numba import njit, prange

from . import kernels, models, nn, optim
from .bench_worker import INPUT, NETWORKS, PRECISIONS
from .errors import ShenduError


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


@njit(parallel=True, cache=True)
def _triad(a, b, c, scalar):
    for i in prange(a.size):
        a[i] = b[i] + scalar * c[i]


def stream_triad(n=32 * 2 ** 20, repeats=5):
    """The machine's memory bandwidth (GB/s) as STREAM measures it (McCalpin 1995): the triad
    a = b + s·c over float32 arrays far larger than the caches, on every core, best of a few,
    counting 12 bytes an element (b and c read, a written)."""
    a, b, c = np.zeros(n, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)
    _triad(a, b, c, np.float32(3))
    best = min(_seconds(lambda: _triad(a, b, c, np.float32(3))) for _ in range(repeats))
    return 12 * n / best / 1e9


# The processor's instructions for fewer bits, by LLVM's names for them (x86-64's, then Arm's).
NARROW_INSTRUCTIONS = {
    "f16c": "F16C: float16 to float32 and back, no arithmetic",
    "avx512fp16": "AVX-512 FP16: float16 arithmetic",
    "avx512bf16": "AVX-512 BF16: bfloat16 dot products, summed in float32",
    "avx512vnni": "AVX-512 VNNI: int8 dot products, summed in int32",
    "fullfp16": "FP16: float16 arithmetic",
    "bf16": "BF16: bfloat16 dot products, summed in float32",
    "dotprod": "DotProd: int8 dot products, summed in int32",
}


def narrow_instructions():
    """{instructions: whether this processor has them} for those of NARROW_INSTRUCTIONS that LLVM
    knows on this architecture, as LLVM (so Numba) sees the processor; {} where LLVM cannot
    tell."""
    import llvmlite.binding as llvm
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:
        return {}
    return {text: bool(features[name]) for name, text in NARROW_INSTRUCTIONS.items()
            if name in features}


# -- shendu and PyTorch, each in fresh processes of its own ----------------------------------
WORKER = Path(__file__).with_name("bench_worker.py")
IMPORT_FIRST = "shendu, torch imported first"  # shendu's worker, PyTorch imported before shendu


def _worker(engine, model, batch, first="", seconds=1.0, device="cpu", precision="float32"):
    """One fresh process measuring one engine (bench_worker.py run as a script, so that it imports
    nothing but that engine)."""
    spec = json.dumps({"engine": engine, "model": model, "batch": batch, "first": first,
                       "seconds": seconds, "device": device, "precision": precision})
    out = subprocess.run([sys.executable, str(WORKER), spec], capture_output=True, text=True)
    if out.returncode:
        raise ShenduError(f"the benchmark's {engine} worker failed on {model}, batch {batch}:\n"
                          + out.stderr.strip()[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _torch_available(device="cpu"):
    """Whether PyTorch is installed and, for "cuda", has a GPU to run on (asked in a process of
    its own: importing PyTorch here would load its runtime into the benchmark's parent)."""
    if importlib.util.find_spec("torch") is None:
        return False
    if device == "cpu":
        return True
    ask = "import torch; print(torch.cuda.is_available())"
    out = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True)
    return out.stdout.strip() == "True"


def _gpu_name():
    """The name of the GPU that numba.cuda (so shendu) runs on, asked in a process of its own."""
    ask = ("from numba import cuda; n = cuda.get_current_device().name; "
           "print(n.decode() if isinstance(n, bytes) else n)")
    out = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True)
    return out.stdout.strip() or None


def _torch_version():
    """The installed PyTorch's version (None without it), read without importing it."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def engine_name(engine, precision):
    """How the figures name an engine measured in `precision`: "torch", "torch bfloat16"."""
    return engine if precision == "float32" else f"{engine} {precision}"


def fair(networks=tuple(NETWORKS), batches=("small", 256), rounds=3, seconds=1.0, device="cpu",
         precisions=("float32",)):
    """{network: {batch: {engine: {"train": [images/s], "infer": [...], "peak_mib": [...]}}}}, one
    entry per round. Each round starts a fresh process per network, batch, precision and engine,
    the engines alternating, so that whatever else the machine does slows each alike. The
    engines: shendu, PyTorch (channels_last) and, in float32 at the network's own batch size,
    shendu in a process that imported PyTorch first (on the CPU only); in another precision
    each is named with it (`engine_name`; see bench_worker.measure: shendu has no "train" in
    bfloat16). "small" is each network's own batch size (100 or 128)."""
    engines = (["shendu"] + (["torch"] if _torch_available(device) else [])
               + ([IMPORT_FIRST] if device == "cpu" and _torch_available() else []))
    runs = {}
    for _ in range(rounds):
        for model in networks:
            own = NETWORKS[model]["batch"]
            for batch in [own if b == "small" else int(b) for b in batches]:
                for precision in precisions:
                    for engine in engines:
                        if engine == IMPORT_FIRST and (batch != own or precision != "float32"):
                            continue
                        first = "torch" if engine == IMPORT_FIRST else ""
                        result = _worker("shendu" if first else engine, model, batch, first,
                                         seconds, device, precision)
                        name = engine_name(engine, precision)
                        entry = runs.setdefault(model, {}).setdefault(str(batch), {}).setdefault(
                            name, {"peak_mib": []})
                        for key in ("train", "infer"):
                            if key in result:
                                entry.setdefault(key, []).append(float(np.median(result[key])))
                        entry["peak_mib"].append(result["peak_mib"])
    return runs


def _spread(values):
    return {"median": float(np.median(values)), "min": float(min(values)),
            "max": float(max(values))}


# What a fresh process does first: import shendu, then two training steps of DeepConvNet. The
# first compiles every Numba kernel the step calls, or loads it from Numba's cache.
_FIRST_STEPS = """
import json, time
start = time.perf_counter()
from shendu import bench
imported = time.perf_counter()
import numpy as np
from shendu import bench_worker
train_step, _ = bench_worker.shendu_engine("deepconvnet")
rng = np.random.default_rng(0)
x, t = rng.random((100, 1, 28, 28), np.float32), rng.integers(0, 10, 100)
first, second = (bench._seconds(lambda: train_step(x, t)) for _ in range(2))
print(json.dumps({"import_s": imported - start, "first_step_s": first, "next_step_s": second}))
"""


def startup():
    """Seconds a fresh process takes to import shendu, for DeepConvNet's first training step
    and for the next: with an empty Numba cache (every kernel compiles: a notebook's first run
    on a new machine), then with the cache that run filled (its second run)."""
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


# -- where the time goes, by kind of layer ------------------------------------------------------
LAYER_KINDS = {"convolution": (nn.Conv2d,), "fully connected": (nn.Linear,),
               "BatchNorm": (nn.BatchNorm1d, nn.BatchNorm2d),
               "pooling": (nn.MaxPool2d, nn.AvgPool2d, nn.GlobalAvgPool2d),
               "activation": (nn.ReLU, nn.Sigmoid, nn.Tanh), "dropout": (nn.Dropout,)}


def time_shares(model, batch=None, steps=5):
    """Milliseconds per step in each kind of layer of a benchmark network (LAYER_KINDS), for
    {"train": ..., "infer": ...}: a layer's forward and backward passes (in inference, a
    convolution with the BatchNorm folded into it counts as a convolution). "other" is the rest
    of the step: residual sums, concatenations, flattening, the loss and the optimizer."""
    from .bench_worker import shendu_engine, shendu_network
    net = shendu_network(model)
    totals = {}

    def timed(fn, kind):
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            totals[kind] = totals.get(kind, 0.0) + time.perf_counter() - start
            return out
        return run

    for _, layer in net.named_modules():
        kind = next((k for k, types in LAYER_KINDS.items() if isinstance(layer, types)), None)
        for name in ("forward", "backward", "forward_folded"):
            if kind and getattr(layer, name, None):  # ConvReLU2d has no forward_folded
                object.__setattr__(layer, name, timed(getattr(layer, name), kind))
    train_step, infer = shendu_engine(model, net)
    batch = batch or NETWORKS[model]["batch"]
    rng = np.random.default_rng(0)
    x, t = rng.random((batch, *INPUT), np.float32), rng.integers(0, 10, batch)
    shares = {}
    for task, step in (("train", lambda: train_step(x, t)), ("infer", lambda: infer(x))):
        step()  # compiles
        totals.clear()
        total = sum(_seconds(step) for _ in range(steps))
        shares[task] = {kind: 1e3 * s / steps for kind, s in totals.items()}
        shares[task]["other"] = 1e3 * total / steps - sum(shares[task].values())
    return shares


# -- the ladder of convolution kernels --------------------------------------------------------
def conv_layers(model, input_shape, batch):
    """DeepConvNet's (or any Sequential's) convolutions as they meet a batch: [(layer, x)], x the
    layer's input (N, C, H, W) from a forward pass of random images."""
    x = np.random.default_rng(0).random((batch, *input_shape), np.float32)
    layers = []
    with nn.no_grad():
        for layer in model:
            if isinstance(layer, nn.Conv2d):
                layers.append((layer, x))
            x = layer(x)
    return layers


def ladder(batch=32, steps=2, repeats=3, network_batch=100):
    """Each rung of kernels.LADDER on DeepConvNet: images/s of a training step (network_batch
    images) and of inference, and per convolution the best time of its forward and backward
    passes, with its FLOPs (a multiply-add is 2) and the least bytes it must move (float32 input,
    weights and output, once each): the points of a roofline."""
    model = models.DeepConvNet()
    result = {"batch": batch, "rungs": {}}
    for rung in kernels.LADDER:
        with kernels.use(rung):
            layers = []
            for layer, x in conv_layers(model, INPUT, batch):
                xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
                w, s, p = layer.weight.data, layer.stride, layer.padding
                b = None if layer.bias is None else layer.bias.data
                y = kernels.cpu.conv_forward(xh, w, b, s, p)
                dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
                forward = min(_seconds(lambda: kernels.cpu.conv_forward(xh, w, b, s, p))
                              for _ in range(repeats))
                backward = min(_seconds(lambda: kernels.cpu.conv_backward(dy, xh, w, s, p))
                               for _ in range(repeats))
                macs = y.size * w[0].size
                layers.append({"input": list(x.shape), "weight": list(w.shape),
                               "stride": s, "padding": p, "flops": 2 * macs,
                               "bytes": 4 * (xh.size + w.size + y.size),
                               "forward_s": forward, "backward_s": backward})
            train, infer = _whole_network(steps, network_batch)
            result["rungs"][rung] = {"layers": layers, "train_images_per_s": train,
                                     "infer_images_per_s": infer}
    return result


def _whole_network(steps, batch):
    """(training, inference) images/s of DeepConvNet on the rung in use, best of `steps` after
    one step that compiles."""
    from .bench_worker import shendu_engine
    train_step, infer = shendu_engine("deepconvnet")
    rng = np.random.default_rng(0)
    x, t = rng.random((batch, *INPUT), np.float32), rng.integers(0, 10, batch)
    rates = []
    for task in (lambda: train_step(x, t), lambda: infer(x)):
        task()
        rates.append(batch / min(_seconds(task) for _ in range(steps)))
    return tuple(rates)


# -- the report -------------------------------------------------------------------------------
def run(networks=tuple(NETWORKS), batches=("small", 256), rounds=3, start_up=True, seconds=1.0,
        device="cpu", precisions=("float32",)):
    """All the figures, as a dict (what `--json` writes and `experiment bench` records). On
    "cuda", the GPU's name instead of the CPU's GEMM peak, and no start-up times. `precisions`
    beyond float32 add engines named with them (see `fair`)."""
    from .provenance import machine
    results = {"machine": machine(), "device": device, "rounds": rounds,
               "torch_version": _torch_version(), "networks": {}}
    if device == "cuda":
        results["gpu"] = _gpu_name()
    else:
        results["gemm_peak_gflops"] = gemm_peak()
    for model, by_batch in fair(networks, batches, rounds, seconds, device, precisions).items():
        spec = NETWORKS[model]
        train_flops, infer_flops = flops_per_image(
            models.get(model, input_shape=INPUT, **spec["options"]), INPUT)
        results["networks"][model] = {
            "options": spec["options"], "optimizer": spec["optimizer"],
            "train_flops_per_image": train_flops, "infer_flops_per_image": infer_flops,
            "batches": {batch: {engine: {key: _spread(values) for key, values in runs.items()}
                                for engine, runs in engines.items()}
                        for batch, engines in by_batch.items()}}
    if start_up and device == "cpu":
        results["startup_s"] = startup()
    return results


def _engines(results):
    """The engines measured in results, on any network and batch."""
    return {engine for entry in results["networks"].values()
            for engines in entry["batches"].values() for engine in engines}


def ratio(engines, task, engine="shendu", rival="torch"):
    """One engine's median images/s over another's, for a task, from one batch's figures."""
    return engines[engine][task]["median"] / engines[rival][task]["median"]


def report(results):
    """The results as a table: medians over fresh processes, their range, and shendu's ratio to
    PyTorch; then the import-order check, peak memory and start-up."""
    peak = results.get("gemm_peak_gflops")  # the CPU's; no % peak on a GPU
    where = (f"% of the {peak:.0f} GFLOP/s float32 GEMM peak measured here" if peak
             else f"on the GPU {results.get('gpu')}"
             + ("" if "torch" in _engines(results) else "; PyTorch had no GPU to run on"))
    lines = [f"images/s, median (min-max) of {results['rounds']} fresh processes per engine; "
             + where,
             f"{'network':12} {'batch':>5} {'task':5} {'shendu':>21} {'% peak':>6} "
             f"{'PyTorch':>21} {'% peak':>6} {'ratio':>6}"]
    memory, order = [], []
    for model, entry in results["networks"].items():
        flops = {"train": entry["train_flops_per_image"], "infer": entry["infer_flops_per_image"]}
        for batch, engines in entry["batches"].items():
            for task in ("train", "infer"):
                cells = []
                for engine in ("shendu", "torch"):
                    r = engines[engine][task] if engine in engines else None
                    cells += ([f"{r['median']:7.0f} ({r['min']:.0f}-{r['max']:.0f})",
                               f"{100 * r['median'] * flops[task] / 1e9 / peak:5.1f}%"
                               if peak else ""] if r else ["", ""])
                shown = f"{ratio(engines, task):.2f}x" if "torch" in engines else ""
                lines.append(f"{model:12} {batch:>5} {task:5} {cells[0]:>21} {cells[1]:>6} "
                             f"{cells[2]:>21} {cells[3]:>6} {shown:>6}")
                if IMPORT_FIRST in engines:
                    order.append(f"{model} {task} "
                                 f"{ratio(engines, task, IMPORT_FIRST, 'shendu'):.2f}x")
            if "torch" in engines:
                memory.append(f"{model} {batch}: {engines['shendu']['peak_mib']['median']:.0f} vs "
                              f"{engines['torch']['peak_mib']['median']:.0f} MiB")
    if order:
        lines.append("shendu with PyTorch imported first, relative to alone: " + ", ".join(order))
    if memory:
        lines.append("peak memory of a training process, shendu vs PyTorch: " + ", ".join(memory))
    if "startup_s" in results:
        cold, warm = results["startup_s"]["empty_cache"], results["startup_s"]["cached"]
        lines.append(f"a fresh process: import {warm['import_s']:.1f} s; first training step "
                     f"{cold['first_step_s']:.1f} s with an empty Numba cache (compiling), "
                     f"{warm['first_step_s']:.1f} s from the cache; the next step "
                     f"{warm['next_step_s']:.2f} s")
    return "\n".join(lines)


def precision_table(results):
    """`run`'s figures with `precisions` as a table: each engine's images/s (median of its fresh
    processes) in training and inference, in each precision, and their ratio to the same
    engine's float32."""
    def cell(measured, float32, task):
        if task not in measured:
            return "-"
        median = measured[task]["median"]
        return f"{median:7.0f} ({median / float32[task]['median']:.2f}×)"

    lines = [f"images/s, median of {results['rounds']} fresh processes each (× the same engine in "
             "float32)",
             f"{'network':12} {'batch':>5} {'engine':7} {'precision':9} {'training':>16} "
             f"{'inference':>16}"]
    for model, entry in results["networks"].items():
        for batch, engines in entry["batches"].items():
            for engine in ("shendu", "torch"):
                for precision in PRECISIONS:
                    name = engine_name(engine, precision)
                    if name in engines:
                        train, infer = (cell(engines[name], engines[engine], task)
                                        for task in ("train", "infer"))
                        lines.append(f"{model:12} {batch:>5} {engine:7} {precision:9} "
                                     f"{train:>16} {infer:>16}")
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


def require_gpu():
    """ShenduError, saying why, unless a real CUDA GPU is here to time (before any worker)."""
    if not kernels.cuda_available():
        kernels.device("cuda")  # raises, saying why: no numba-cuda, or no GPU
        raise ShenduError("numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) runs kernels in "
                          "Python: no GPU to time")


def main(args):
    if args.profile:
        print(profile_table(layer_profile()))
        return
    if args.device == "cuda":
        require_gpu()
    results = run(networks=args.networks, batches=args.batches, rounds=args.rounds,
                  start_up=not args.no_startup, device=args.device)
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
