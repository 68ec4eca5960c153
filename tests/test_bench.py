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
               "peak_memory_mib": {"shendu": 250.0}}
    assert bench.best_torch(results["batches"]["100"], "train") == "torch-cl"
    assert bench.best_torch(results["batches"]["100"], "infer") == "torch"
    lines = bench.report(results).splitlines()
    shendu_train = next(line for line in lines if "train" in line and "shendu" in line)
    shendu_infer = next(line for line in lines if "infer" in line and "shendu" in line)
    assert shendu_train.endswith("0.25") and shendu_infer.endswith("0.25")  # 500/2000, 2000/8000
    assert "shendu: 250 MiB" in lines[-1]
