"""The benchmark's arithmetic and report (its figures are measured by `python -m shendu bench`,
never asserted by a timed test)."""
from shendu import bench


def test_throughput_measures_every_task():
    rates = bench.throughput(8, ["shendu"], repeats=2, seconds=0.01)
    assert set(rates) == {"shendu"}
    assert all(len(v) == 2 and min(v) > 0 for v in rates["shendu"].values())


def test_report_compares_with_the_faster_pytorch_layout():
    task = {"median": 0.0, "min": 0.0, "max": 0.0, "percent_of_peak": 0.0}

    def engine(train, infer):
        return {"train": {**task, "median": train}, "infer": {**task, "median": infer}}
    results = {"gemm_peak_gflops": 100.0, "train_flops_per_image": 3e6, "infer_flops_per_image": 1e6,
               "batches": {"100": {"shendu": engine(500, 2000), "torch": engine(1000, 8000),
                                   "torch-cl": engine(2000, 4000)}},
               "peak_memory_mib": {"shendu": 250.0},
               "startup_s": {"empty_cache": {"import_s": 1.0, "first_step_s": 30.0, "next_step_s": 0.1},
                             "cached": {"import_s": 0.8, "first_step_s": 2.0, "next_step_s": 0.12}}}
    assert bench.best_torch(results["batches"]["100"], "train") == "torch-cl"
    assert bench.best_torch(results["batches"]["100"], "infer") == "torch"
    lines = bench.report(results).splitlines()
    shendu_train = next(line for line in lines if "train" in line and "shendu" in line)
    shendu_infer = next(line for line in lines if "infer" in line and "shendu" in line)
    assert shendu_train.endswith("0.25") and shendu_infer.endswith("0.25")  # 500/2000, 2000/8000
    assert "shendu: 250 MiB" in lines[-2]
    assert lines[-1] == ("a fresh process: import 0.8 s; first training step 30.0 s with an empty "
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
