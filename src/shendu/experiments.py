"""Long experiments whose figures the book and README quote: `python -m shendu experiment NAME`.

Each writes `notebooks/results/NAME.json` with its figures and how they were made (command,
commit, machine, date, versions), so every quoted number can be traced and regenerated.
"""
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np

from .errors import ShenduError

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "notebooks" / "results"
_EXPERIMENTS = {}


def experiment(fn):
    _EXPERIMENTS[fn.__name__] = fn
    return fn


def names():
    return sorted(_EXPERIMENTS)


def machine():
    """What ran it: the CPU model, the cores this process may use, the memory."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": round(memory, 1) if memory else None, "system": platform.platform()}


def _commit():
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run(name, out_dir=RESULTS):
    """Run one experiment and write its results file; returns the results."""
    if name not in _EXPERIMENTS:
        raise ShenduError(f"unknown experiment {name!r}; choose one of: {', '.join(names())}")
    from . import __version__
    from .train import profile
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    figures = _EXPERIMENTS[name]()
    record = {
        "experiment": name,
        "figures": figures,
        "command": f"python -m shendu experiment {name}",
        "commit": _commit(),
        "machine": machine(),
        "profile": profile(),
        "date": started.isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "versions": {"shendu": __version__, "python": sys.version.split()[0],
                     "numpy": np.__version__, "numba": numba.__version__},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    return record


def load(name, results_dir=RESULTS):
    """The recorded results of an experiment (for notebooks)."""
    path = Path(results_dir) / f"{name}.json"
    if not path.exists():
        raise ShenduError(f"no results for {name!r}: run `python -m shendu experiment {name}`")
    return json.loads(path.read_text())


@experiment
def chapter1():
    """The chapter's run: DeepConvNet, Adam 0.001, batch 100, 20 epochs, full MNIST."""
    from . import datasets, manual_seed, models, optim
    from .train import Trainer
    train, test = datasets.load_mnist()
    manual_seed(0)
    model = models.DeepConvNet()
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=0.001), batch_size=100, seed=0,
                      run_dir=REPO / "runs" / "chapter1-experiment")
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
def resume_identity(epochs=20, kills=4, checkpoint_every=100, seed=0):
    """The resume guarantee on a full run: `shendu train` with the chapter's recipe, killed with
    SIGKILL at random moments and resumed each time, must end with the bytes of a run never
    stopped. Both runs are subprocesses with the same environment (so the same BLAS threads)."""
    import hashlib
    import random
    import shutil
    import signal
    from .io import WEIGHTS, read_checkpoint
    root = REPO / "runs" / "resume-identity"
    shutil.rmtree(root, ignore_errors=True)
    train = [sys.executable, "-m", "shendu", "train", "--epochs", str(epochs),
             "--checkpoint-every", str(checkpoint_every)]

    def finish(cmd):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    t0 = time.perf_counter()
    finish(train + ["--out", str(root / "never-stopped")])
    uninterrupted_s = time.perf_counter() - t0
    # Kill moments spread over the run: one in each of `kills` equal slices of its length.
    chance, killed = random.Random(seed), []
    cmd = train + ["--out", str(root / "killed")]
    for k in range(kills):
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        wait = chance.uniform(0.2, 0.9) * uninterrupted_s / kills
        try:
            process.wait(timeout=wait)
            raise ShenduError(f"the run finished before kill {k + 1}: the machine is faster now")
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        meta, _ = read_checkpoint(root / "killed")
        killed.append({"after_s": round(wait, 1), "resumed_from_step": meta["global_step"]})
        cmd = train[:4] + ["--resume", str(root / "killed")]
    finish(cmd)

    def sha256(run):
        return hashlib.sha256((root / run / WEIGHTS).read_bytes()).hexdigest()

    def metrics(run):  # every column but the two timings, as written (repr: bitwise)
        return [row.split(",")[:5] for row in (root / run / "metrics.csv").read_text().splitlines()]

    meta, _ = read_checkpoint(root / "never-stopped")
    return {
        "epochs": epochs, "steps": meta["global_step"], "checkpoint_every": checkpoint_every,
        "kills": killed,
        "weights_sha256": {"never_stopped": sha256("never-stopped"), "killed": sha256("killed")},
        "identical_weights": sha256("never-stopped") == sha256("killed"),
        "identical_metrics": metrics("never-stopped") == metrics("killed"),
        "final_test_acc": meta["history"][-1]["test_acc"],
        "uninterrupted_s": round(uninterrupted_s, 1),
    }


@experiment
def bench():
    """shendu vs PyTorch on this machine (`python -m shendu bench`), for the appendix."""
    from . import bench as bench_module
    return bench_module.run()


def readme_block(record):
    """The README's results paragraph, written from a results file (never typed by hand)."""
    f, m = record["figures"], record["machine"]
    return (f"Chapter 1's full run (`{record['command']}`, commit `{record['commit']}`, "
            f"{record['date'][:10]}): final test accuracy **{f['final_test_acc']:.2%}**, best "
            f"{f['best_test_acc']:.2%} (epoch {f['best_epoch']}), {f['train_time_s'] / 60:.1f} "
            f"minutes of training at {f['images_per_s']:,.0f} images/s on {m['cores']} cores of "
            f"an {m['cpu']}.")


def update_readme(record, readme=REPO / "README.md"):
    """Replace the text between `<!-- results:NAME -->` and `<!-- /results -->` in README.md."""
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- results:{record['experiment']} -->\n).*?(\n<!-- /results -->)", re.S)
    if not pattern.search(text):
        return False
    readme.write_text(pattern.sub(lambda m: m.group(1) + readme_block(record) + m.group(2), text))
    return True
