"""The benchmark's workers, rounds and report (its figures are measured by `python -m shendu
bench`, never asserted by a timed test)."""
import platform
import sys

import numpy as np
import pytest

from shendu import bench


def test_each_worker_imports_only_the_engine_it_measures():
    """The fairness the benchmark rests on: PyTorch's process never loads Numba or shendu, and
    shendu's loads PyTorch only when asked to (the import-order check)."""
    assert bench._worker("torch", "deepconvnet", 4, seconds=0.01)["imported"] == ["torch"]
    alone = bench._worker("shendu", "resnet20", 4, seconds=0.01)
    assert alone["imported"] == ["numba", "shendu"]
    after = bench._worker("shendu", "deepconvnet", 4, first="torch", seconds=0.01)
    assert after["imported"] == ["numba", "shendu", "torch"]
    for result in (alone, after):
        assert len(result["train"]) == len(result["infer"]) == 3
        assert min(result["train"] + result["infer"]) > 0 and result["peak_mib"] > 50


def test_fair_alternates_fresh_processes_round_after_round(monkeypatch):
    calls = []

    def worker(engine, model, batch, first="", seconds=1.0, device="cpu", precision="float32"):
        assert device == "cpu" and precision == "float32"
        calls.append((engine, model, batch, first))
        rate = len(calls)  # each process's own figure, to see where it lands
        return {"train": [rate, rate + 2, rate + 1], "infer": [2 * rate], "peak_mib": 100.0 + rate}
    monkeypatch.setattr(bench, "_worker", worker)
    monkeypatch.setattr(bench, "_torch_available", lambda device="cpu": True)
    runs = bench.fair(["vgg11_bn"], ["small", 256], rounds=2)
    one_round = [("shendu", "vgg11_bn", 128, ""), ("torch", "vgg11_bn", 128, ""),
                 ("shendu", "vgg11_bn", 128, "torch"), ("shendu", "vgg11_bn", 256, ""),
                 ("torch", "vgg11_bn", 256, "")]
    assert calls == one_round * 2
    assert runs["vgg11_bn"]["128"]["torch"] == {"train": [3, 8], "infer": [4, 14],
                                                "peak_mib": [102.0, 107.0]}
    assert set(runs["vgg11_bn"]["256"]) == {"shendu", "torch"}


def test_fair_names_each_precision_s_engines_and_keeps_what_they_measured(monkeypatch):
    calls = []

    def worker(engine, model, batch, first="", seconds=1.0, device="cpu", precision="float32"):
        calls.append((engine, first, precision))
        trains = not (engine == "shendu" and precision == "bfloat16")  # shendu's mixed: float16
        return {**({"train": [len(calls)]} if trains else {}), "infer": [10 * len(calls)],
                "peak_mib": 100.0}
    monkeypatch.setattr(bench, "_worker", worker)
    monkeypatch.setattr(bench, "_torch_available", lambda device="cpu": True)
    runs = bench.fair(["deepconvnet"], ["small"], rounds=1, precisions=("float32", "bfloat16"))
    assert calls == [("shendu", "", "float32"), ("torch", "", "float32"),
                     ("shendu", "torch", "float32"),  # the import-order check: float32 only
                     ("shendu", "", "bfloat16"), ("torch", "", "bfloat16")]
    engines = runs["deepconvnet"]["100"]
    assert list(engines) == ["shendu", "torch", bench.IMPORT_FIRST, "shendu bfloat16",
                             "torch bfloat16"]
    assert engines["shendu bfloat16"] == {"infer": [40], "peak_mib": [100.0]}
    assert engines["torch bfloat16"] == {"train": [5], "infer": [50], "peak_mib": [100.0]}


def test_16_bit_workers_train_in_mixed_precision_where_their_engine_can():
    for engine, precision in (("shendu", "float16"), ("torch", "float16"), ("torch", "bfloat16")):
        result = bench._worker(engine, "deepconvnet", 4, seconds=0.01, precision=precision)
        assert len(result["train"]) == len(result["infer"]) == 3
        assert min(result["train"] + result["infer"]) > 0, (engine, precision)
    alone = bench._worker("shendu", "deepconvnet", 4, seconds=0.01, precision="bfloat16")
    assert "train" not in alone and len(alone["infer"]) == 3


def test_shendu_s_16_bit_engine_steps_float32_weights_by_mixed_precision():
    from shendu import bench_worker, manual_seed, models
    manual_seed(0)
    net = models.get("deepconvnet")
    before = [p.data.copy() for p in net.parameters()]
    train_step, infer = bench_worker.shendu_engine("deepconvnet", net, precision="float16")
    rng = np.random.default_rng(0)
    for _ in range(8):  # the first steps overflow float16 and are skipped, as in training
        train_step(rng.random((8, 1, 28, 28), np.float32), rng.integers(0, 10, 8))
    assert all(p.data.dtype == np.float32 for p in net.parameters())  # the master weights
    assert any(not np.array_equal(b, p.data) for b, p in zip(before, net.parameters()))
    infer(rng.random((8, 1, 28, 28), np.float32))
    assert bench_worker.shendu_engine("deepconvnet", precision="bfloat16")[0] is None


def test_precision_table_gives_each_precision_against_its_engine_s_float32():
    def figures(train, infer):
        return {**({"train": {"median": train}} if train else {}), "infer": {"median": infer}}
    results = {"rounds": 5, "networks": {"deepconvnet": {"batches": {"100": {
        "shendu": figures(400, 1000), "torch": figures(300, 800),
        bench.IMPORT_FIRST: figures(390, 990), "shendu float16": figures(200, 250),
        "shendu bfloat16": figures(None, 500), "torch bfloat16": figures(600, 2000)}}}}}
    lines = bench.precision_table(results).splitlines()
    assert "median of 5 fresh processes" in lines[0]
    rows = [line.split()[2:] for line in lines[2:]]
    assert all(line.split()[:2] == ["deepconvnet", "100"] for line in lines[2:])
    assert rows == [["shendu", "float32", "400", "(1.00×)", "1000", "(1.00×)"],
                    ["shendu", "float16", "200", "(0.50×)", "250", "(0.25×)"],
                    ["shendu", "bfloat16", "-", "500", "(0.50×)"],
                    ["torch", "float32", "300", "(1.00×)", "800", "(1.00×)"],
                    ["torch", "bfloat16", "600", "(2.00×)", "2000", "(2.50×)"]]


def test_report_gives_medians_ranges_ratios_import_order_and_memory():
    def figures(train, infer, mib):
        return {"train": {"median": train, "min": train - 10, "max": train + 10},
                "infer": {"median": infer, "min": infer - 10, "max": infer + 10},
                "peak_mib": {"median": mib, "min": mib, "max": mib}}
    results = {"gemm_peak_gflops": 100.0, "rounds": 3, "networks": {"resnet20": {
        "train_flops_per_image": 1e8, "infer_flops_per_image": 4e7,
        "batches": {"128": {"shendu": figures(500, 2000, 300), "torch": figures(1000, 1600, 600),
                            bench.IMPORT_FIRST: figures(450, 2100, 310)}}}},
               "startup_s": {"empty_cache": {"import_s": 1.0, "first_step_s": 30.0, "next_step_s": 0.1},
                             "cached": {"import_s": 0.8, "first_step_s": 2.0, "next_step_s": 0.12}}}
    lines = bench.report(results).splitlines()
    assert lines[2].split() == ["resnet20", "128", "train", "500", "(490-510)", "50.0%", "1000",
                                "(990-1010)", "100.0%", "0.50x"]  # 500 × 1e8 FLOP / 100 GFLOP/s
    assert lines[3].split()[-1] == "1.25x"  # 2000 / 1600
    assert lines[4] == ("shendu with PyTorch imported first, relative to alone: resnet20 train "
                        "0.90x, resnet20 infer 1.05x")
    assert lines[5] == "peak memory of a training process, shendu vs PyTorch: resnet20 128: 300 vs 600 MiB"
    assert lines[6] == ("a fresh process: import 0.8 s; first training step 30.0 s with an empty "
                        "Numba cache (compiling), 2.0 s from the cache; the next step 0.12 s")


def test_profile_table_totals_the_step_and_gives_augmentations_share():
    rows = [("0 Conv2d", 3.0, 5.0), ("loss", 0.5, None), ("data", 0.5, None),
            ("augment", 0.9, None)]
    lines = bench.profile_table(rows).splitlines()
    assert lines[1].split() == ["0", "Conv2d", "3.00", "5.00"]
    assert lines[-2].split() == ["total", "9.90"]
    assert lines[-1] == "augmenting the batch costs 10.0% of the rest of the step"  # 0.9 / 9


def test_layer_profile_times_every_layer_and_the_pipeline():
    rows = bench.layer_profile(steps=2)
    names = [r[0] for r in rows]
    assert names[0] == "0 ConvReLU2d" and names[-4:] == ["loss", "optimizer", "data", "augment"]
    assert all(r[1] > 0 and (r[2] is None or r[2] > 0) for r in rows)


def test_startup_times_a_fresh_process_with_an_empty_then_a_filled_cache():
    figures = bench.startup()
    assert set(figures) == {"empty_cache", "cached"}
    for run in figures.values():
        assert set(run) == {"import_s", "first_step_s", "next_step_s"}
        assert all(seconds > 0 for seconds in run.values())


def test_every_cpu_kernel_is_cached_on_disk():
    """A kernel without cache=True would compile again in every new process (every notebook)."""
    from numba.core.registry import CPUDispatcher
    from shendu.kernels import conv, norm, pointwise, pool, sample
    kernels = [(module.__name__, name, f) for module in (conv, norm, pointwise, pool, sample)
               for name, f in vars(module).items()
               if isinstance(f, CPUDispatcher) and f.py_func.__module__ == module.__name__]
    assert len(kernels) >= 13  # found them: every @njit in src/shendu at the time of writing
    assert [k[:2] for k in kernels if type(k[2]._cache).__name__ != "FunctionCache"] == []


def test_the_triad_is_stream_s_and_the_bandwidth_a_rate():
    a, b, c = np.zeros(5, np.float32), np.arange(5, dtype=np.float32), np.ones(5, np.float32)
    bench._triad(a, b, c, np.float32(3))
    np.testing.assert_array_equal(a, [3, 4, 5, 6, 7])
    assert 0.1 < bench.stream_triad(n=2 ** 20, repeats=2) < 10_000  # GB/s: a plausible rate


LINUX_FLAGS = {"f16c": "f16c", "avx512fp16": "avx512_fp16", "avx512bf16": "avx512_bf16",
               "avx512vnni": "avx512_vnni"}  # LLVM's names, Linux's /proc/cpuinfo's


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"),
                    reason="reads Linux's x86-64 CPU flags")
def test_narrow_instructions_are_the_ones_linux_reports():
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    expected = {bench.NARROW_INSTRUCTIONS[name]: flag in flags
                for name, flag in LINUX_FLAGS.items()}
    assert bench.narrow_instructions() == expected


def test_narrow_instructions_are_none_where_llvm_cannot_tell(monkeypatch):
    import llvmlite.binding as llvm

    def unknown():
        raise RuntimeError("not implemented on this host")
    monkeypatch.setattr(llvm, "get_host_cpu_features", unknown)
    assert bench.narrow_instructions() == {}


def test_the_ladder_measures_every_rung_on_the_same_layers():
    from shendu import kernels
    result = bench.ladder(batch=2, steps=1, repeats=1, network_batch=2)
    assert list(result["rungs"]) == list(kernels.LADDER)
    shapes = [[(l["input"], l["weight"]) for l in r["layers"]] for r in result["rungs"].values()]
    assert all(s == shapes[0] for s in shapes) and len(shapes[0]) == 6  # DeepConvNet's convs
    for layer in result["rungs"]["tiled"]["layers"]:
        (n, c, h, w), (o, _, k, _) = layer["input"], layer["weight"]
        s, p = layer["stride"], layer["padding"]
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        assert layer["flops"] == 2 * n * oh * ow * o * c * k * k
        assert layer["bytes"] == 4 * (n * c * h * w + o * c * k * k + n * oh * ow * o)
        assert layer["forward_s"] > 0 and layer["backward_s"] > 0
    assert kernels.in_use() == "tiled"


@pytest.mark.parametrize("model,kinds", [
    ("deepconvnet", {"convolution", "fully connected", "pooling", "dropout", "activation"}),
    ("resnet20", {"convolution", "fully connected", "BatchNorm", "pooling"})])
def test_time_shares_split_each_step_by_kind_of_layer(model, kinds):
    shares = bench.time_shares(model, batch=4, steps=2)
    assert set(shares) == {"train", "infer"}
    for task, by_kind in shares.items():
        want = kinds - {"BatchNorm"} if task == "infer" else kinds  # folded into the convolutions
        assert want <= set(by_kind) <= set(bench.LAYER_KINDS) | {"other"}, (task, by_kind)
        assert all(ms > 0 for ms in by_kind.values()), (task, by_kind)
    assert "BatchNorm" not in shares["infer"]


@pytest.mark.parametrize("torch_has_a_gpu", [True, False])
def test_on_a_gpu_the_engines_run_there_without_the_import_order_check(monkeypatch,
                                                                        torch_has_a_gpu):
    calls = []

    def worker(engine, model, batch, first="", seconds=1.0, device="cpu", precision="float32"):
        calls.append((engine, batch, first, device))
        return {"train": [1.0], "infer": [2.0], "peak_mib": 100.0}
    monkeypatch.setattr(bench, "_worker", worker)
    monkeypatch.setattr(bench, "_torch_available",
                        lambda device="cpu": device == "cpu" or torch_has_a_gpu)
    monkeypatch.setattr(bench, "_gpu_name", lambda: "Tesla T4")
    results = bench.run(["deepconvnet"], [100, 256], rounds=1, device="cuda")
    engines = ["shendu", "torch"] if torch_has_a_gpu else ["shendu"]
    assert calls == [(e, b, "", "cuda") for b in (100, 256) for e in engines]
    assert results["gpu"] == "Tesla T4" and "gemm_peak_gflops" not in results
    assert "startup_s" not in results
    head = bench.report(results).splitlines()[0]
    assert head.endswith("on the GPU Tesla T4" + ("" if torch_has_a_gpu
                                                  else "; PyTorch had no GPU to run on"))
