"""The experiment entry points, at toy sizes (quick profile): each runs, and its results hold
what the book reads from them."""
import json
from pathlib import Path

import numpy as np
import pytest

from shendu import experiments, provenance
from shendu.errors import ShenduError


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setenv("SHENDU_PROFILE", "quick")


@pytest.fixture
def fewer_test_digits(monkeypatch):
    """Every loader's test split cut to its first 2,000 images: the tests of ensembles and TTA
    below classify the test set many times over, and 2,000 digits check the same arithmetic."""
    from shendu import datasets
    load = datasets._load

    def first(*args, **kwargs):
        train, (x, t) = load(*args, **kwargs)
        return train, (x[:2000], t[:2000])
    monkeypatch.setattr(datasets, "_load", first)


def test_results_file_records_how_it_was_made(tmp_path, monkeypatch):
    monkeypatch.setitem(experiments._EXPERIMENTS, "toy", lambda: {"answer": 42})
    record = experiments.run("toy", out_dir=tmp_path)
    saved = json.loads((tmp_path / "toy.json").read_text())
    assert saved == record and saved["figures"] == {"answer": 42}
    assert saved["command"] == "python -m shendu experiment toy" and saved["profile"] == "quick"
    assert {"commit", "machine", "date", "wall_time_s", "versions"} <= set(saved)
    assert experiments.load("toy", tmp_path) == saved


def test_plain_vs_residual():
    figures = experiments.plain_vs_residual(depths=(8,), epochs=1, subset=300)
    runs = figures["runs"]
    assert list(runs) == ["plain8", "resnet8"]
    assert runs["plain8"]["parameters"] == runs["resnet8"]["parameters"]  # option-A shortcuts
    for run in runs.values():
        assert len(run["step_losses"]) == 3  # 300 images in batches of 128
        assert 0 <= run["final_test_acc"] <= 1 and len(run["history"]) == 1


def test_very_deep():
    figures = experiments.very_deep(depth=14, steps=3, batch_size=8)
    assert set(figures["runs"]) == {"resnet", "plain"}
    assert all(len(run["step_losses"]) == 3 for run in figures["runs"].values())


def test_fashion_zoo(monkeypatch, tmp_path):
    import shendu
    from shendu import datasets
    monkeypatch.setattr(experiments, "FASHION_ZOO", {"resnet20": {"width": 0.25, "epochs": 1}})
    run = experiments.fashion_zoo(root=tmp_path)["runs"]["resnet20"]
    assert run["epochs"] == 1 and run["settings"] == {"width": 0.25}
    assert len(run["step_losses"]) == 16  # the quick profile's 2,000 images in batches of 128
    _, (x_test, t_test) = datasets.load_fashion_mnist()  # the saved model is the one measured
    saved = shendu.load(tmp_path / "resnet20")
    assert shendu.evaluate(saved, x_test[:1000], t_test[:1000]) == run["final_test_acc"]


def test_rerunning_some_runs_keeps_the_others(monkeypatch, tmp_path):
    calls = []

    def toy(only=None):
        calls.append(only)
        return {"runs": {name: {"trained_in_call": len(calls)} for name in only or ("a", "b")}}
    monkeypatch.setitem(experiments._EXPERIMENTS, "toy", toy)
    # With no results file yet, a part starts one (recipes are trained a few at a time).
    assert list(experiments.run("toy", out_dir=tmp_path, only=["b"])["figures"]["runs"]) == ["b"]
    first = experiments.run("toy", out_dir=tmp_path)["figures"]["runs"]
    assert first["a"]["made"]["command"] == "python -m shendu experiment toy"
    experiments.run("toy", out_dir=tmp_path, only=["b"])
    runs = experiments.load("toy", tmp_path)["figures"]["runs"]
    assert calls == [["b"], None, ["b"]] and list(runs) == ["a", "b"]
    assert runs["a"] == first["a"]
    assert runs["b"]["trained_in_call"] == 3
    assert runs["b"]["made"]["command"] == "python -m shendu experiment toy --only b"
    assert runs["b"]["made"]["machine"] == provenance.machine()  # rows may come from two machines


def test_runs_of_a_file_without_their_own_provenance_get_the_files(monkeypatch, tmp_path):
    """Results written before runs recorded their own command, commit, machine and date (and,
    before that, a file without a machine)."""
    monkeypatch.setitem(experiments._EXPERIMENTS, "toy", lambda only=None: {"runs": {"b": {}}})
    old = {"figures": {"runs": {"a": {}, "b": {}}}, "command": "python -m shendu experiment toy",
           "commit": "f4f605d", "date": "2026-11-28T15:53:07+00:00"}
    (tmp_path / "toy.json").write_text(json.dumps(old))
    runs = experiments.run("toy", out_dir=tmp_path, only=["b"])["figures"]["runs"]
    assert runs["a"]["made"] == {key: old[key] for key in ("command", "commit", "date")}
    assert runs["b"]["made"]["commit"] != "f4f605d"
    old["machine"] = {"cpu": "Intel(R) Xeon(R) Processor", "cores": 2}
    (tmp_path / "toy.json").write_text(json.dumps(old))
    runs = experiments.run("toy", out_dir=tmp_path, only=["b"])["figures"]["runs"]
    assert runs["a"]["made"] == {key: old[key] for key in ("command", "commit", "machine", "date")}
    # A run that says how it was made, but not on which machine: the file's machine.
    made = {"command": "python -m shendu experiment toy --only a", "commit": "9aae510",
            "date": "2026-11-29T09:00:29+00:00"}
    old["figures"]["runs"]["a"] = {"made": made}
    (tmp_path / "toy.json").write_text(json.dumps(old))
    runs = experiments.run("toy", out_dir=tmp_path, only=["b"])["figures"]["runs"]
    assert runs["a"]["made"] == {**made, "machine": old["machine"]}


def test_only_is_refused_where_it_means_nothing(monkeypatch, tmp_path):
    with pytest.raises(ShenduError, match="cannot rerun part"):
        experiments.run("chapter1", out_dir=tmp_path, only=["x"])
    with pytest.raises(ShenduError, match="no model alexnet"):
        experiments.fashion_zoo(root=tmp_path, only=["alexnet"])
    with pytest.raises(ShenduError, match="unknown recipe 'magic'"):  # before book trains
        experiments.recipes(only=["book", "magic"], root=tmp_path)
    assert not list(tmp_path.iterdir())


def test_resume_identity(tmp_path):
    """SIGKILLed twice and resumed: the same bytes as the run that was never stopped."""
    figures = experiments.resume_identity(epochs=2, kills=2, checkpoint_every=3, root=tmp_path)
    assert figures["identical_weights"] and figures["identical_metrics"]
    assert len(figures["kills"]) == 2
    steps = [k["resumed_from_step"] for k in figures["kills"]]
    assert 0 <= steps[0] <= steps[1] <= figures["steps"] == 40


def test_augmentation(tmp_path):
    figures = experiments.augmentation(sizes=(100, 200), steps=2, lr=0.02, seeds=(0, 1),
                                       monitor=50, root=tmp_path / "first")
    assert list(figures["runs"]) == ["100", "200"]
    for n, entry in figures["runs"].items():
        runs = entry["runs"]
        assert entry["train_images"] == int(n) and entry["max_lr"] == 0.02
        # equal steps: one batch of 100 a step, so 2 epochs of 100 images, 1 of 200
        assert (entry["epochs"], entry["steps"]) == ({"100": 2, "200": 1}[n], 2)
        assert [(r["recipe"], r["seed"]) for r in runs] == [
            (name, seed) for name in ("plain", "augment") for seed in (0, 1)]
        assert all(len(r["monitor_acc"]) == entry["epochs"] for r in runs)
        for name, median in entry["median_test_acc"].items():
            accs = [r["test_acc"] for r in runs if r["recipe"] == name]
            assert len(accs) == 2 and median == pytest.approx(np.median(accs))
        assert runs[0]["test_acc"] != runs[2]["test_acc"] or \
            runs[0]["monitor_acc"] != runs[2]["monitor_acc"]  # augmentation changed the run
    assert sorted(p.name for p in (tmp_path / "first").iterdir()) == [
        f"{n}-{name}-{seed}" for n in (100, 200) for name in ("augment", "plain") for seed in (0, 1)]
    part = experiments.augmentation(only=["200"], sizes=(100, 200), steps=2, lr=0.02,
                                    seeds=(0,), monitor=50, root=tmp_path / "again")
    assert list(part["runs"]) == ["200"]
    assert [(r["recipe"], r["seed"]) for r in part["runs"]["200"]["runs"]] == [
        ("plain", 0), ("augment", 0)]
    again, first = part["runs"]["200"]["runs"][0], figures["runs"]["200"]["runs"][0]
    assert again.keys() == first.keys()
    for key in first.keys() - {"train_time_s"}:  # repeatable, all but the wall clock
        assert again[key] == first[key], key
    # Started again in the first root, the finished runs are read back, not trained again.
    def written():
        return [p.stat().st_mtime_ns for p in sorted((tmp_path / "first").glob("100-*/*"))
                if p.name in ("model.safetensors", "metrics.csv")]
    before = written()
    read = experiments.augmentation(only=["100"], sizes=(100, 200), steps=2, lr=0.02,
                                    seeds=(0, 1), monitor=50, root=tmp_path / "first")
    assert read["runs"]["100"] == figures["runs"]["100"]
    assert len(before) == 8 and written() == before
    with pytest.raises(ShenduError, match="no size 300"):
        experiments.augmentation(only=["300"], sizes=(100, 200))


def test_the_fashion_recipe_is_the_zoos_resnet_run():
    """notebook 04 reports fashion_zoo's ResNet-20 as the `fashion` recipe's result."""
    from shendu import augment, datasets, manual_seed, models, recipes
    (x, t), (x_test, t_test) = datasets.load_fashion_mnist()
    data = (x[:256], t[:256]), (x_test[:100], t_test[:100])
    recipe = recipes.get("fashion")
    assert experiments.FASHION_ZOO[recipe.model] == {"epochs": recipe.epochs}
    manual_seed(0)
    zoo_model = models.get(recipe.model)
    flips = augment.Compose([augment.RandomCrop(28, padding=2), augment.RandomHorizontalFlip()])
    experiments._train(zoo_model, *data, recipe.epochs, max_lr=0.1, augment=flips)
    model, _ = recipe.fit(*data, seed=0)
    assert repr(recipe.augmentation()) == repr(flips)
    for name, array in model.state_dict().items():
        assert array.tobytes() == zoo_model.state_dict()[name].tobytes(), name


def test_recipes(monkeypatch, tmp_path, fewer_test_digits):
    import shendu
    from shendu import datasets, nn
    monkeypatch.setattr(experiments, "TARGET", 0.2)  # reached at the first epoch, unlike 99.4%
    figures = experiments.recipes(only=["book"], seeds=(0, 1), more_members={"book": (2,)},
                                  root=tmp_path)
    book = figures["runs"]["book"]
    assert [r["seed"] for r in book["runs"]] == [0, 1] and book["epochs"] == 20
    assert [r["seed"] for r in book["more_members"]] == [2]
    assert book["median_test_acc"] == pytest.approx(np.median([r["test_acc"] for r in book["runs"]]))
    for run in book["runs"] + book["more_members"]:
        assert len(run["test_acc_by_epoch"]) == 2  # the quick profile's epochs
        assert run["test_acc"] == run["test_acc_by_epoch"][-1] > 0.2
        assert 0 < run["time_to_target_s"] <= run["wall_time_s"]
    # The ensembles by hand: the saved members' softmax outputs averaged; all three members, and
    # the runs of seeds 0 and 1 alone.
    _, (x_test, t_test) = datasets.load_mnist()

    def ensemble(seeds):
        members = [shendu.load(tmp_path / f"book-{seed}") for seed in seeds]
        return np.concatenate([sum(nn.softmax(m(x_test[i:i + 500].astype(np.float32) / 255))
                                   .astype(np.float64) for m in members) / len(members)
                               for i in range(0, len(x_test), 500)]).argmax(axis=1)
    predicted = ensemble((0, 1, 2))
    wrong = np.flatnonzero(predicted != t_test)
    assert book["ensemble_errors"] == [[int(i), int(t_test[i]), int(predicted[i])] for i in wrong]
    assert book["ensemble_test_acc"] == pytest.approx(1 - len(wrong) / len(t_test))
    assert book["ensemble_of_runs_test_acc"] == pytest.approx(np.mean(ensemble((0, 1)) == t_test))
    # Started again, the finished runs are read back from their run directories, not retrained.
    # (Modification times: a deterministic retrain would write the same bytes.)
    saved = (tmp_path / "book-2" / "model.safetensors").stat().st_mtime_ns
    assert experiments.recipes(only=["book"], seeds=(0, 1), more_members={"book": (2,)},
                               root=tmp_path) == figures
    assert (tmp_path / "book-2" / "model.safetensors").stat().st_mtime_ns == saved
    assert "tta_test_acc" not in book["runs"][0] and "ensemble_tta_test_acc" not in book
    # Without more members, the ensemble is of the runs and says nothing more.
    two = experiments.recipes(only=["book"], seeds=(0, 1), more_members={}, root=tmp_path)
    assert two["runs"]["book"]["ensemble_test_acc"] == book["ensemble_of_runs_test_acc"]
    assert "more_members" not in two["runs"]["book"]


def test_recipes_test_augmented_recipes_with_tta(monkeypatch, tmp_path, capsys,
                                                fewer_test_digits):
    """A recipe that augments is also tested with TTA: here every view is the mirror image, so
    the averaged probabilities are (p(x) + 4 p(mirrored x)) / 5, computed by hand."""
    import dataclasses

    import shendu
    from shendu import augment, datasets, nn, recipes
    mirrored = dataclasses.replace(recipes.get("book"),
                                   transforms=(augment.RandomHorizontalFlip(p=1),))
    monkeypatch.setitem(recipes.RECIPES, "mirrored", mirrored)
    entry = experiments.recipes(only=["mirrored"], seeds=(0, 1), root=tmp_path)["runs"]["mirrored"]
    _, (x_test, t_test) = datasets.load_mnist()
    x = x_test.astype(np.float32) / 255
    members = [shendu.load(tmp_path / f"mirrored-{seed}") for seed in (0, 1)]

    def accuracy(models):
        p = np.concatenate([sum((nn.softmax(m(v[i:i + 500])).astype(np.float64) * k
                                 for m in models for v, k in ((x, 1), (x[:, :, :, ::-1], 4))))
                            for i in range(0, len(x), 500)])
        return float(np.mean(p.argmax(axis=1) == t_test))
    assert experiments.TTA_COPIES == 4
    for run, member in zip(entry["runs"], members):
        assert run["tta_test_acc"] == pytest.approx(accuracy([member]), abs=1e-4)  # rounding
    assert entry["ensemble_tta_test_acc"] == pytest.approx(accuracy(members), abs=1e-4)
    assert entry["median_tta_test_acc"] == pytest.approx(
        np.median([r["tta_test_acc"] for r in entry["runs"]]))
    # The runs are the command line's too: it evaluates them with their recipe's augmentation,
    # and continues them (finished: nothing to do).
    from shendu import cli
    dirs = [str(tmp_path / f"mirrored-{seed}") for seed in (0, 1)]
    capsys.readouterr()
    assert cli.main(["evaluate", *dirs, "--tta", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == entry["ensemble_tta_test_acc"]
    saved = (tmp_path / "mirrored-1" / "model.safetensors").stat().st_mtime_ns
    assert cli.main(["train", "--resume", dirs[1]]) == 0
    assert (tmp_path / "mirrored-1" / "model.safetensors").stat().st_mtime_ns == saved


def test_a_results_file_does_not_mark_the_code_dirty(tmp_path):
    """Provenance: an experiment's commit is HEAD's, "-dirty" when code differs from it, but
    not when only results files do (the previous experiment wrote them)."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], check=True, capture_output=True)
    results = tmp_path / "notebooks" / "results"
    results.mkdir(parents=True)
    (results / "bench.json").write_text("{}")
    (tmp_path / "model.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert provenance.commit(tmp_path, unless_changed_in=results) == head
    (results / "bench.json").write_text('{"new": 1}')
    (tmp_path / "untracked.txt").write_text("scratch")
    assert provenance.commit(tmp_path, unless_changed_in=results) == head
    assert provenance.commit(tmp_path) == head + "-dirty"  # a results file is tracked code too
    (tmp_path / "model.py").write_text("x = 2\n")
    assert provenance.commit(tmp_path, unless_changed_in=results) == head + "-dirty"
    assert provenance.commit(tmp_path / "not-a-repo") is None


ROOT = Path(__file__).resolve().parents[1]
RECORDS = sorted((ROOT / "notebooks" / "results").glob("*.json")) + [
    ROOT / "book" / "_data" / "execution_times.json"]


def _commits(record, where=""):
    """(where, commit) for every commit a record names: its own and those of runs kept with
    provenance of their own (a recipe's "made", a notebook's row)."""
    if isinstance(record, dict):
        for key, value in record.items():
            if key == "commit" and isinstance(value, str):
                yield where or "top", value
            else:
                yield from _commits(value, f"{where}/{key}")
    elif isinstance(record, list):
        for i, value in enumerate(record):
            yield from _commits(value, f"{where}[{i}]")


def test_every_committed_figure_was_made_at_a_clean_commit():
    """The book's figures come from results files written by committed code: no record was made
    with changes that were never committed ("-dirty")."""
    made = {f"{path.name} {where}": commit for path in RECORDS
            for where, commit in _commits(json.loads(path.read_text()))}
    assert len(made) > len(RECORDS)  # every file names at least one commit, most several
    assert [f"{name}: {commit}" for name, commit in made.items() if commit.endswith("-dirty")] == []


def test_every_committed_figure_names_a_commit_of_this_history():
    """...and the code each was made with is in this repository's history, to read and rerun."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if git("rev-parse", "--is-shallow-repository").stdout.strip() != "false":
        pytest.skip("needs a full clone of the repository, with its history")
    commits = {commit for path in RECORDS for _, commit in _commits(json.loads(path.read_text()))}
    missing = [c for c in sorted(commits)
               if git("merge-base", "--is-ancestor", c.removesuffix("-dirty"), "HEAD").returncode]
    assert missing == []


def test_experiments_write_into_the_checkout_they_run_in(tmp_path, monkeypatch):
    """Not where the package's files happen to lie: notebooks/results of the checkout holding
    the current folder (found from a subfolder too), or the folder they are given."""
    checkout = tmp_path / "course"
    (checkout / "notebooks" / "results").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    (checkout / "README.md").write_text("<!-- results:toy -->\nold\n<!-- /results -->\n")
    monkeypatch.setitem(experiments._EXPERIMENTS, "toy", lambda: {"answer": 42})
    monkeypatch.chdir(checkout / "notebooks")
    record = experiments.run("toy")
    assert json.loads((checkout / "notebooks" / "results" / "toy.json").read_text()) == record
    elsewhere = experiments.run("toy", out_dir=tmp_path / "out")
    assert experiments.load("toy", tmp_path / "out") == elsewhere
    monkeypatch.setattr(experiments, "readme_block", lambda record: "new")
    assert experiments.update_readme(record)
    assert "\nnew\n" in (checkout / "README.md").read_text()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ShenduError, match="not inside a checkout of the course"):
        experiments.run("toy")


def test_tuning_measures_every_configuration_in_its_own_process(monkeypatch):
    """Each configuration runs in a fresh process of its own and gives its rates; one that
    imports a module not installed here (PyTorch, on a machine without it) is left out."""
    monkeypatch.setattr(experiments, "TUNING", {
        "as shendu runs": ("", "", {}),
        "NumPy first": ("numpy", "", {}),
        "no tuning": ("", "", {"SHENDU_TUNING": "0"}),
        "threaded": ("", "threaded-blas", {}),
        "missing module first": ("no_such_module_here", "", {}),
    })
    figures = experiments.tuning(rounds=1)
    assert figures["rounds"] == 1 and set(figures["configs"]) == {
        "as shendu runs", "NumPy first", "no tuning", "threaded"}  # a missing module is left out
    for row in figures["configs"].values():
        for work in ("train", "infer"):
            assert 0 < row[work]["min"] <= row[work]["median"] <= row[work]["max"]


def test_results_need_the_package_to_ship_them(monkeypatch):
    """An installation made before shendu.results existed says to reinstall, in one line."""
    def missing(package):
        raise ModuleNotFoundError(package)
    monkeypatch.setattr(experiments.importlib.resources, "files", missing)
    with pytest.raises(ShenduError, match="install it again"):
        experiments.load("bench")


def test_the_readmes_results_are_those_of_the_results_files():
    """Every `<!-- results:NAME -->` block of README.md is what `experiment NAME --readme` writes
    from the committed notebooks/results/NAME.json: no figure typed by hand, none left stale."""
    import re
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"<!-- results:(\w+) -->\n(.*?)\n<!-- /results -->", text, re.S)
    assert {name for name, _ in blocks} == {"chapter1", "bench"}
    for name, block in blocks:
        assert block == experiments.readme_block(experiments.load(name)), name


def test_fewer_bits(monkeypatch):
    from shendu import datasets
    (x, t), (x_test, t_test) = datasets.load_mnist()
    monkeypatch.setattr(datasets, "load_mnist", lambda: ((x[:600], t[:600]),
                                                         (x_test[:300], t_test[:300])))
    figures = experiments.fewer_bits(calibration=100, batch=20)
    rows = figures["precisions"]
    assert list(rows) == ["float64", "float32", "float16", "bfloat16", "int8", "binary",
                          "float16, the book's way"]
    assert rows["float32"]["disagreements"] == 0 and rows["float64"]["disagreements"] <= 1
    sizes = {name: rows[name]["bytes"] for name in ("float64", "float32", "float16", "bfloat16")}
    assert sizes == {"float64": 2 * sizes["float32"], "float32": sizes["float32"],
                     "float16": sizes["float32"] // 2, "bfloat16": sizes["float32"] // 2}
    assert rows["int8"]["bytes"] < 0.3 * sizes["float32"]
    assert rows["binary"]["bytes"] < sizes["float32"] / 16
    assert all(0 <= row["accuracy"] <= 1 and row["seconds"] > 0 for row in rows.values())
    assert figures["traffic"]["float16"]["bytes"] * 2 == figures["traffic"]["float32"]["bytes"]
    assert len(figures["binary_trained"]["history"]) == 2  # the quick profile's epochs
    assert 0 <= figures["binary_trained"]["accuracy"] <= 1


def test_bench_precision_times_deepconvnet_in_every_precision_with_the_instructions(monkeypatch):
    from shendu import bench
    asked = {}

    def run(**options):
        asked.update(options)
        return {"rounds": options["rounds"], "networks": {}}
    monkeypatch.setattr(bench, "run", run)
    figures = experiments.bench_precision(rounds=2)
    assert asked == {"networks": ("deepconvnet",), "batches": ("small",), "rounds": 2,
                     "start_up": False, "precisions": ("float32", "float16", "bfloat16")}
    assert figures == {"rounds": 2, "networks": {}, "instructions": bench.narrow_instructions()}


def test_scaling_times_one_process_against_two_ranks(monkeypatch):
    pytest.importorskip("mpi4py", reason="pip install -e '.[mpi]'")
    monkeypatch.setattr(experiments, "SCALING_IMAGES", 600)
    figures = experiments.scaling(rounds=1)
    ranks, alone = (figures["configs"][name]
                    for name in ("2 ranks x 1 thread", "1 process x 2 threads"))
    assert ranks["images_per_s"]["median"] > 0 and alone["images_per_s"]["median"] > 0
    assert 0 < ranks["allreduce_s"]["median"] < ranks["step_s"]["median"]
    assert list(ranks["allreduce_by_bytes"]) == [str(2 ** k) for k in range(10, 25, 2)]
    assert figures["gradient_bytes"] == 4 * 123552  # DeepConvNet's parameters, float32


def test_generative(monkeypatch):
    """Chapter 8's runs in small: a GAN epoch on 600 digits, DQN for a few hundred steps."""
    import base64
    import io

    from PIL import Image

    from shendu import datasets
    (x, t), (x_test, t_test) = datasets.load("mnist")
    monkeypatch.setattr(datasets, "load", lambda name: ((x[:600], t[:600]),
                                                        (x_test[:300], t_test[:300])))
    monkeypatch.setattr(experiments, "GENERATED", 300)
    monkeypatch.setitem(experiments.DQN_RUNS, "catch", ({"steps": 300, "warmup": 50},
                                                        experiments.DQN_RUNS["catch"][1]))
    monkeypatch.setitem(experiments.DQN_RUNS, "cartpole", ({"steps": 300, "warmup": 50},
                                                           experiments.DQN_RUNS["cartpole"][1]))
    runs = experiments.generative(gan_epochs=2, classifier_epochs=1)["runs"]
    gan = runs["dcgan"]
    assert len(gan["history"]) == 2 and len(gan["grids"]) == 2
    with Image.open(io.BytesIO(base64.b64decode(gan["grids"][0]))) as grid:
        assert grid.size == (8 * 28, 8 * 28)
    with Image.open(io.BytesIO(base64.b64decode(gan["walks"]))) as walks:
        assert walks.size == (10 * 28, 4 * 28)
    for seen in (gan["classifier_on_generated"], gan["classifier_on_test"]):
        assert sum(seen["classes"]) == 300 and 0.1 <= seen["mean_confidence"] <= 1
    distance = gan["frechet"]
    # digits against digits are nearer than independent pixels against digits
    assert 0 <= distance["training_digits"] < distance["pixel_baseline"]
    for game in ("catch", "cartpole"):
        run = runs[game]
        assert len(run["evaluation_returns"]) == 100 and run["returns"]
        assert run["evaluation_mean"] == pytest.approx(np.mean(run["evaluation_returns"]))
    assert set(runs["catch"]["returns"]) <= {-1.0, 1.0}
    assert "evaluation_won" not in runs["cartpole"]


def test_transfer(monkeypatch):
    from shendu import datasets
    mnist, fashion = datasets.load_mnist(), datasets.load_fashion_mnist()

    def tiny(data):  # 400 training and 200 test images
        (x, t), (x_test, t_test) = data
        return lambda: ((x[:400], t[:400]), (x_test[:200], t_test[:200]))
    monkeypatch.setattr(datasets, "load_mnist", tiny(mnist))
    monkeypatch.setattr(datasets, "load_fashion_mnist", tiny(fashion))
    figures = experiments.transfer(sizes=(20, 40), seeds=(0, 1), steps=8, batch_size=10,
                                   pretrain_epochs=1)
    ways = list(experiments.TRANSFER_LR)
    assert figures["pretrain"]["dataset"] == "fashion-mnist" and figures["test_images"] == 200
    assert 0 < figures["pretrain"]["test_acc"] <= 1 and len(figures["pretrain"]["history"]) == 1
    assert list(figures["runs"]) == ["20", "40"]
    for n, entry in figures["runs"].items():
        runs = entry["runs"]
        assert [(r["way"], r["seed"]) for r in runs] == [(w, s) for s in (0, 1) for w in ways]
        steps = {r["steps"] for r in runs}
        assert len(steps) == 1  # the same number of steps for every way
        assert all(0 <= r["test_acc"] <= 1 and 0 <= r["train_acc"] <= 1 for r in runs)
        for way, median in entry["median_test_acc"].items():
            assert median == pytest.approx(np.median([r["test_acc"] for r in runs
                                                      if r["way"] == way]))
    with pytest.raises(ShenduError, match="whole epochs"):
        experiments.transfer(sizes=(30,), seeds=(0,), steps=8, batch_size=20, pretrain_epochs=1)


def test_transfer_probe_freezes_the_pretrained_layers_and_finetuning_moves_them():
    """The linear probe trains only the new last layer: every other weight stays bit for bit
    the pretrained one; fine-tuning changes them all; both start from the same new layer."""
    from shendu import datasets, models, optim
    from shendu.train import Trainer
    pretrained = models.get("deepconvnet").state_dict()
    (x, t), _ = datasets.load_mnist()
    data = (x[:40], t[:40])
    heads, after = {}, {}
    for way in ("probe", "finetune"):
        model, trained = experiments.adapt(way, pretrained, seed=3)
        head = model[-2]
        assert [id(p) for p in trained] == ([id(head.weight), id(head.bias)] if way == "probe"
                                            else [id(p) for p in model.parameters()])
        heads[way] = head.weight.data.copy()
        Trainer(model, optim.Adam(trained, lr=1e-3), batch_size=10, progress=False).fit(
            data, data, epochs=1)
        after[way] = model.state_dict()
    np.testing.assert_array_equal(heads["probe"], heads["finetune"])
    body = [name for name in pretrained if not name.startswith("19.")]
    assert len(body) == len(pretrained) - 2
    for name in body:
        np.testing.assert_array_equal(after["probe"][name], pretrained[name])
        assert not np.array_equal(after["finetune"][name], pretrained[name]), name
    assert not np.array_equal(after["probe"]["19.weight"], heads["probe"])


def test_ilsvrc_table_is_in_year_order_and_every_figure_is_cited():
    """The cited ImageNet figures: years in order, each row's paper in the book's references."""
    import re
    from shendu import models
    keys = set(re.findall(r"^@\w+\{([^,]+),", (Path(__file__).parents[1] / "book" /
                                               "references.bib").read_text(), re.M))
    rows = models.ILSVRC_TOP5
    years = [r["year"] for r in rows]
    assert years == sorted(years) and years[0] == 2010 and years[-1] == 2015
    winners = [r for r in rows if r["place"] == 1]
    assert [r["year"] for r in winners] == list(range(2010, 2016))  # one winner a year
    for row in (*rows, models.ILSVRC_HUMAN_TOP5):
        assert row["cite"] in keys, row
        assert 0 < row["top5_error"] < 100


def deep_narrow_by_hand():
    """deepnarrow's weights and multiply-adds per 28×28 image, layer by layer: five 3×3
    convolutions with biases on maps of 28, 28, 14, 14 and 7 pixels, then 32·3·3 → 10."""
    convs = [(1, 8, 28), (8, 16, 28), (16, 32, 14), (32, 32, 14), (32, 32, 7)]
    weights = sum(c_in * c_out * 9 + c_out for c_in, c_out, _ in convs) + 288 * 10 + 10
    macs = sum(size * size * c_out * c_in * 9 for c_in, c_out, size in convs) + 288 * 10
    return weights, macs


def shallow_wide_by_hand():
    """shallowwide's: one 11×11 convolution of 45 channels on 28×28, then 45·7·7 → 10."""
    return 45 * 121 + 45 + 45 * 49 * 10 + 10, 28 * 28 * 45 * 121 + 45 * 49 * 10


def test_depth_and_data(monkeypatch):
    from shendu import models
    monkeypatch.setenv("SHENDU_PROFILE", "full")  # the quick profile would cap the epochs
    options = {"sizes": (100, 400), "seeds": (0, 1), "steps": 8, "monitor": 50,
               "recipe": {**experiments.DEPTH_RECIPE, "batch_size": 50}}
    figures = experiments.depth_and_data(**options)
    assert figures["steps"] == 8 and figures["recipe"]["batch_size"] == 50
    for name, (weights, macs) in {"deepnarrow": deep_narrow_by_hand(),
                                  "shallowwide": shallow_wide_by_hand()}.items():
        about = figures["networks"][name]
        assert (about["parameters"], about["macs"]) == (weights, macs), name
    assert figures["networks"]["deepnarrow"]["weight_layers"] == 6
    assert figures["networks"]["shallowwide"]["weight_layers"] == 2
    (deep, deep_macs), (shallow, shallow_macs) = deep_narrow_by_hand(), shallow_wide_by_hand()
    assert abs(shallow / deep - 1) <= experiments.DEPTH_MATCH  # matched in weights ...
    assert abs(shallow_macs / deep_macs - 1) <= experiments.DEPTH_MATCH  # ... and in work
    assert list(figures["runs"]) == ["100", "400"]
    for n, entry in figures["runs"].items():
        assert entry["train_images"] == int(n)
        # Every size takes the same steps: 4 epochs of 2 batches, 1 epoch of 8.
        assert entry["steps"] == 8 and entry["epochs"] == {"100": 4, "400": 1}[n]
        runs = entry["runs"]
        assert [(r["network"], r["seed"]) for r in runs] == [
            (name, seed) for name in ("deepnarrow", "shallowwide") for seed in (0, 1)]
        assert all(0 < r["test_acc"] < 1 and 0 <= r["train_acc"] <= 1 for r in runs)
        assert len({r["test_acc"] for r in runs}) > 1  # seeds and networks train differently
        for name, median in entry["median_test_acc"].items():
            accs = [r["test_acc"] for r in runs if r["network"] == name]
            assert len(accs) == 2 and median == pytest.approx(np.median(accs))
    part = experiments.depth_and_data(only=["400"], **{**options, "seeds": {100: (0,), 400: (1,)}})
    assert list(part["runs"]) == ["400"]
    assert part["runs"]["400"]["runs"][0]["test_acc"] == figures["runs"]["400"]["runs"][1][
        "test_acc"]  # seed 1 of deepnarrow again: repeatable
    with pytest.raises(ShenduError, match="depth_and_data has no size 7"):
        experiments.depth_and_data(only=["7"], **options)
    # Networks that are not matched are refused before any training.
    monkeypatch.setattr(models, "SHALLOW_WIDE", (90, 11, 4))
    with pytest.raises(ShenduError, match="parameters differ by more than 5%"):
        experiments.depth_and_data(**options)
