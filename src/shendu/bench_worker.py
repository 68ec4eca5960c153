"""One engine, one network, one batch size, timed in a fresh process: the worker that
`python -m shendu bench` starts again and again, alternating shendu and PyTorch.

Run as a script (`python bench_worker.py '{"engine": "torch", "model": "resnet20", ...}'`), it
imports only the engine it measures: a process holding both would share their OpenMP runtimes
and settings and skew both. It prints one line of JSON: images per second in training (forward,
backward, optimizer step) and inference, each repeat's, and the process's peak memory.

The PyTorch twins of the zoo's networks are written here, in PyTorch, with the parameter names
shendu gives them (tests/test_torch_graph.py loads shendu's weights into each twin and checks that
both compute the same function).
"""
import copy
import functools
import json
import os
import sys
import time
import types

import numpy as np

# The benchmark's networks: the zoo's small-image versions, as the course trains them.
NETWORKS = {"deepconvnet": {"options": {}, "batch": 100, "optimizer": "adam"},
            "resnet20": {"options": {}, "batch": 128, "optimizer": "sgd"},
            "vgg11_bn": {"options": {"width": 0.25}, "batch": 128, "optimizer": "sgd"},
            "googlenet": {"options": {"width": 0.25, "batch_norm": True}, "batch": 128,
                          "optimizer": "sgd"}}
INPUT = (1, 28, 28)
PRECISIONS = ("float32", "float16", "bfloat16")  # what a worker measures in (see `measure`)


# -- PyTorch twins ------------------------------------------------------------------------------
@functools.cache
def torch_blocks():
    """PyTorch modules for what torch.nn lacks of shendu's: the shortcut sum, the parameter-free
    shortcut, global average pooling, and the zoo's convolution [+ BatchNorm] + ReLU and
    Inception block (its branches concatenated)."""
    import torch
    T = torch.nn

    class Residual(T.Module):
        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class Concat(T.Module):
        def __init__(self, *branches):
            super().__init__()
            for i, branch in enumerate(branches):
                self.add_module(str(i), branch)

        def forward(self, x):
            return torch.cat([branch(x) for branch in self.children()], dim=1)

    class PadShortcut(T.Module):  # keep every stride-th pixel, append zero channels
        def __init__(self, stride, extra):
            super().__init__()
            self.stride, self.extra = stride, extra

        def forward(self, x):
            s = self.stride
            return T.functional.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, 0, self.extra))

    class GlobalAvgPool(T.Module):  # (N, C, H, W) → (N, C)
        def forward(self, x):
            return x.mean((2, 3))

    def conv_bn_relu(c_in, c_out, k, stride=1, bn=True, bias=None, padding=None):
        """As models._conv_bn_relu: "same" padding unless given, no bias before BatchNorm."""
        conv = T.Conv2d(c_in, c_out, k, stride, k // 2 if padding is None else padding,
                        bias=not bn if bias is None else bias)
        return [conv, T.BatchNorm2d(c_out), T.ReLU()] if bn else [conv, T.ReLU()]

    def inception(c_in, c1, c3r, c3, c5r, c5, cp, batch_norm=False):
        """As models.inception: four branches, concatenated."""
        def branch(*convs):
            layers, c = [], c_in
            for c_out, k in convs:
                layers += conv_bn_relu(c, c_out, k, bn=batch_norm)
                c = c_out
            return layers
        return Concat(T.Sequential(*branch((c1, 1))), T.Sequential(*branch((c3r, 1), (c3, 3))),
                      T.Sequential(*branch((c5r, 1), (c5, 5))),
                      T.Sequential(T.MaxPool2d(3, 1, 1), *branch((cp, 1))))

    return types.SimpleNamespace(Residual=Residual, PadShortcut=PadShortcut,
                                 GlobalAvgPool=GlobalAvgPool, conv_bn_relu=conv_bn_relu,
                                 inception=inception)


def torch_twin(model, width=1.0, batch_norm=False, num_classes=10):
    """The zoo's network `model` (for 1×28×28 inputs) built in PyTorch, shendu's names."""
    import torch
    T = torch.nn
    blocks = torch_blocks()
    Residual, PadShortcut, GlobalAvgPool, conv_bn_relu = (
        blocks.Residual, blocks.PadShortcut, blocks.GlobalAvgPool, blocks.conv_bn_relu)

    def scale(c):
        return max(1, round(c * width))

    if model == "deepconvnet":
        layers, c = [], INPUT[0]
        for out, pads in ((16, (1, 1)), (32, (1, 2)), (64, (1, 1))):
            for pad in pads:
                layers += conv_bn_relu(c, out, 3, bn=False, bias=True, padding=pad)
                c = out
            layers.append(T.MaxPool2d(2, 2))
        return T.Sequential(*layers, T.Flatten(), T.Linear(64 * 4 * 4, 50), T.ReLU(),
                            T.Dropout(0.5), T.Linear(50, num_classes), T.Dropout(0.5))
    if model == "resnet20":
        layers, c = conv_bn_relu(INPUT[0], 16, 3), 16
        for stage in range(3):
            for i in range(3):
                stride, out = (2 if stage and not i else 1), 16 * 2 ** stage
                body = T.Sequential(*conv_bn_relu(c, out, 3, stride),
                                    T.Conv2d(out, out, 3, padding=1, bias=False),
                                    T.BatchNorm2d(out))
                shortcut = PadShortcut(stride, out - c) if stride > 1 or out != c else None
                layers.append(T.Sequential(Residual(body, shortcut), T.ReLU()))
                c = out
        return T.Sequential(*layers, GlobalAvgPool(), T.Linear(c, num_classes))
    if model == "vgg11_bn":
        layers, c, size = [], INPUT[0], INPUT[1]
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
            if v != "M":
                layers += conv_bn_relu(c, scale(v), 3, bias=True)
                c = scale(v)
            elif size >= 2:  # pooling stops at 1×1
                layers.append(T.MaxPool2d(2))
                size //= 2
        return T.Sequential(*layers, T.Flatten(), T.Linear(c * size * size, num_classes))
    if model == "googlenet":
        layers = [*conv_bn_relu(INPUT[0], scale(192), 3, bn=batch_norm), T.MaxPool2d(3, 2, 1)]
        c = scale(192)
        for block in ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
                      (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),
                      (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
                      (256, 160, 320, 32, 128, 128), "M",
                      (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)):
            if block == "M":
                layers.append(T.MaxPool2d(3, 2, 1))
            else:
                block = [scale(v) for v in block]
                layers.append(blocks.inception(c, *block, batch_norm=batch_norm))
                c = block[0] + block[2] + block[4] + block[5]
        return T.Sequential(*layers, GlobalAvgPool(), T.Dropout(0.4), T.Linear(c, num_classes))
    raise ValueError(f"no PyTorch twin for {model!r}")


# -- the engines: (train_step(x, t), infer(x)) ----------------------------------------------------
def shendu_network(model):
    """The zoo's network `model` as the benchmark runs it."""
    from shendu import models
    return models.get(model, num_classes=10, input_shape=INPUT, **NETWORKS[model]["options"])


def shendu_engine(model, net=None, device="cpu", precision="float32"):
    """shendu's (train_step, infer) for `model`, on `net` if given (else a new network), on the
    device named. Each step returns only once the device has run every kernel it queued (a
    training step waits for the GPU; inference copies its logits to the host). In 16 bits,
    inference runs a copy of the network stored in `precision` (Module.to) and training is mixed
    precision (shendu.mixed), which is float16's only: for bfloat16, train_step is None."""
    from shendu import kernels, mixed, nn, optim
    spec = NETWORKS[model]
    net = (shendu_network(model) if net is None else net).to(device)
    narrow = copy.deepcopy(net).to(dtype=precision) if precision != "float32" else net
    K, N = kernels.device(device), nn.device_of(narrow)
    loss_fn = nn.CrossEntropyLoss()
    opt = (optim.Adam(net.parameters(), lr=1e-3) if spec["optimizer"] == "adam"
           else optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    scaler = mixed.LossScaler() if precision == "float16" else None

    def train_step(x, t):
        net.train()
        if scaler is None:
            loss_fn(net(K.array(x)), t)
            nn.data_backward(net, loss_fn.backward())
            opt.step()
        else:
            scaler.gradient(net, loss_fn, x, t)
            if scaler.unscale(net.parameters()):
                opt.step()
        K.synchronize()

    def infer(x):
        narrow.eval()
        with nn.no_grad():
            kernels.to_host(narrow(N.array(x)))
    return (None if precision == "bfloat16" else train_step), infer


def torch_engine(model, device="cpu", precision="float32"):
    """The twin in channels_last, PyTorch's faster layout on the CPU for these networks (on a GPU
    too, where cuDNN takes it), on the device named; steps end synchronised, as shendu's. In 16
    bits, inference runs a copy of the twin stored in `precision`, as shendu's does, and training
    is PyTorch's mixed precision: autocast to `precision`, with a GradScaler for float16."""
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this PyTorch has no CUDA GPU to run on (a CPU-only build, or no GPU)")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    spec, dtype = NETWORKS[model], getattr(torch, precision)
    net = torch_twin(model, **spec["options"]).to(device, memory_format=torch.channels_last)
    narrow = copy.deepcopy(net).to(dtype) if precision != "float32" else net
    opt = (torch.optim.Adam(net.parameters(), lr=1e-3) if spec["optimizer"] == "adam"
           else torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    scaler = torch.amp.GradScaler(device, enabled=precision == "float16")

    def tensor(x, dtype=torch.float32):
        return torch.from_numpy(x).to(device, dtype).contiguous(memory_format=torch.channels_last)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def train_step(x, t):
        net.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype, enabled=precision != "float32"):
            loss = torch.nn.functional.cross_entropy(net(tensor(x)), torch.from_numpy(t).to(device))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync()

    def infer(x):
        narrow.eval()
        with torch.inference_mode():
            narrow(tensor(x, dtype))
        sync()
    return train_step, infer


# -- measuring ------------------------------------------------------------------------------------
def peak_rss_mib():
    """This process's peak resident memory (Linux's VmHWM; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(engine, model, batch, first="", repeats=3, seconds=1.0, device="cpu",
            precision="float32"):
    """{"train": [images/s per repeat], "infer": [...], "peak_mib": ...} for one engine: each
    repeat runs training then inference for about `seconds` each, on 4 fixed random batches
    (peak_mib is the host process's, on a GPU too). An engine that cannot train in `precision`
    has no "train"."""
    if first:
        __import__(first)  # a library imported before the engine (for the import-order check)
    train_step, infer = (shendu_engine if engine == "shendu" else torch_engine)(
        model, device=device, precision=precision)
    rng = np.random.default_rng(0)
    data = [(rng.random((batch, *INPUT), np.float32), rng.integers(0, 10, batch))
            for _ in range(4)]
    tasks = {"train": lambda x, t: train_step(x, t), "infer": lambda x, t: infer(x)}
    if train_step is None:
        del tasks["train"]
    steps = {}
    for name, task in tasks.items():
        task(*data[0])  # compiles (or loads Numba's cache) and warms the caches
        start = time.perf_counter()
        task(*data[1])
        steps[name] = max(2, round(seconds / (time.perf_counter() - start)))
    rates = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, task in tasks.items():
            start = time.perf_counter()
            for i in range(steps[name]):
                task(*data[i % len(data)])
            rates[name].append(steps[name] * batch / (time.perf_counter() - start))
    imported = sorted(name for name in ("numba", "shendu", "torch") if name in sys.modules)
    return {**rates, "peak_mib": peak_rss_mib(), "imported": imported}


if __name__ == "__main__":
    print(json.dumps(measure(**json.loads(sys.argv[1]))))
