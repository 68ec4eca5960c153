"""Recipes (each builds its model, optimizer, schedule and augmentation), and the command line
that trains by them: --recipe, --target-accuracy, ensembles and test-time augmentation."""
import json

import numpy as np
import pytest

import shendu
from shendu import augment, cli, datasets, detection, models, optim, recipes
from test_errors import clinet


@pytest.mark.parametrize("name", recipes.names())
def test_every_recipe_builds_what_it_says(name, monkeypatch):
    monkeypatch.delenv("SHENDU_PROFILE", raising=False)
    recipe = recipes.get(name)
    model = recipe.build_model()
    assert model.config["model"] == recipe.model and recipe.about
    assert {key: model.config[key] for key, _ in recipe.model_options} == dict(recipe.model_options)
    trainer = recipe.trainer(model, train_size=1000)
    opt, schedule = trainer.optimizer, trainer.scheduler
    assert isinstance(opt, optim.SGD if recipe.optimizer == "sgd" else optim.Adam)
    assert opt.lr == pytest.approx(recipe.lr / 25 if recipe.one_cycle else recipe.lr)
    assert opt.weight_decay == recipe.weight_decay and trainer.batch_size == recipe.batch_size
    assert (schedule is not None) == recipe.one_cycle
    if schedule is not None:  # sized for the recipe's epochs over 1,000 images
        assert schedule.total_steps == recipe.epochs * -(-1000 // recipe.batch_size)
    assert (trainer.augment is None) == (not recipe.transforms)
    if recipe.task == "detect":
        assert isinstance(trainer.loss_fn, detection.GridLoss)
    else:
        assert trainer.loss_fn.label_smoothing == recipe.label_smoothing
    assert recipe.dataset in datasets.names()
    assert models.task(recipe.model) == {"regions": "classify"}.get(recipe.task, recipe.task)


def test_each_application_recipe_labels_its_scenes(monkeypatch):
    """In the quick profile (few scenes): the labels each task trains on, beside its images."""
    monkeypatch.setenv("SHENDU_PROFILE", "quick")
    for name, shape in (("segment", (64, 64)), ("caption", (5,)), ("detect", (6, 8, 8)),
                        ("regions", ())):
        (x, t), (x_test, t_test) = recipes.get(name).data()
        assert len(x) == len(t) and len(x_test) == len(t_test) and t.shape[1:] == shape
        assert x.dtype == np.uint8 and x.shape[1:] == ((1, 28, 28) if name == "regions"
                                                       else (1, 64, 64))
        if name != "regions":  # the quick profile's 2,000 of the recipe's training scenes
            assert len(x) == 2000 and len(x_test) == 1000


def test_the_book_recipe_is_the_chapters():
    book = recipes.get("book")
    assert (book.model, book.optimizer, book.lr, book.batch_size, book.epochs) == \
        ("deepconvnet", "adam", 1e-3, 100, 20)
    assert not book.one_cycle and not book.transforms and book.weight_decay == 0


def test_unknown_recipe():
    with pytest.raises(shendu.ShenduError, match="unknown recipe 'magic'; choose one of: augment"):
        recipes.get("magic")


@pytest.fixture
def runs(monkeypatch, tmp_path, capsys):
    """Two small runs by the `augment` recipe, with a target accuracy the first epoch reaches
    (in the full profile, whatever the environment says: the schedule's length is checked)."""
    monkeypatch.delenv("SHENDU_PROFILE", raising=False)
    monkeypatch.setitem(models._REGISTRY, "clinet", clinet)
    dirs = []
    for seed in (0, 1):
        run = tmp_path / f"run{seed}"
        assert cli.main(["train", "--recipe", "augment", "--model", "clinet", "--subset", "200",
                         "--batch-size", "20", "--epochs", "3", "--seed", str(seed),
                         "--target-accuracy", "0.15", "--out", str(run)]) == 0
        dirs.append(run)
    return dirs, capsys.readouterr().out


def test_train_by_recipe_stops_at_the_target(runs):
    dirs, out = runs
    assert "recipe augment: SGD lr 0.1 one-cycle, batch 20, 3 epochs or until 15.00%" in out
    assert "reached 15.00% after epoch 1" in out
    rows = (dirs[0] / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[-1] == "elapsed" and len(rows) == 2  # stopped after one epoch
    meta, _ = shendu.io.read_checkpoint(dirs[0])
    assert meta["trainer"]["augment"].startswith("Compose([RandomAffine(degrees=(-10.0, 10.0)")
    assert meta["scheduler"]["total_steps"] == 30  # the recipe's 3 epochs of 10 steps
    assert meta["trainer"]["settings"]["target_accuracy"] == 0.15


def test_evaluate_an_ensemble_with_test_time_augmentation(runs, capsys):
    dirs, _ = runs
    _, (x, t) = datasets.load_mnist()
    members = [shendu.load(d) for d in dirs]
    recipe = recipes.get("augment")
    views = [np.mean([shendu.predict_proba(m, x) for m in members], axis=0)]
    for k in range(2):  # the two views evaluate draws, as predict_proba documents them
        draw = lambda images, start, k=k: recipe.augmentation()(  # noqa: E731
            images, np.random.default_rng([0, k, start]))
        augmented = np.concatenate([draw(x[i:i + 500].astype(np.float32) / 255, i)
                                    for i in range(0, len(x), 500)])
        views.append(np.mean([shendu.predict_proba(m, augmented) for m in members], axis=0))
    expected = np.mean(np.mean(views, axis=0).argmax(axis=1) == t)
    assert cli.main(["evaluate", *map(str, dirs), "--tta", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"] == 2 and report["tta"] == 2 and report["dataset"] == "mnist"
    assert report["accuracy"] == shendu.evaluate(members, x, t, tta=recipe.augmentation(),
                                                 copies=2)
    assert report["accuracy"] == pytest.approx(expected, abs=2e-4)  # float32 sums: a tie or two
    assert cli.main(["evaluate", *map(str, dirs)]) == 0
    assert "(2 models' averaged probabilities)" in capsys.readouterr().out


def test_tta_needs_a_recipe_with_augmentation(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(models._REGISTRY, "clinet", clinet)
    run = tmp_path / "book"
    assert cli.main(["train", "--model", "clinet", "--subset", "20", "--batch-size", "10",
                     "--epochs", "1", "--out", str(run)]) == 0
    assert cli.main(["evaluate", str(run), "--tta", "2"]) == 2
    assert capsys.readouterr().err == ("shendu: error: --tta augments as the run was trained, and "
                                       "recipe book has no augmentation\n")


def test_a_run_that_reached_its_target_is_finished(runs, capsys):
    run = runs[0][0]
    weights = (run / "model.safetensors").read_bytes()
    assert cli.main(["train", "--resume", str(run)]) == 0
    assert "reached 15.00% after epoch 1" in capsys.readouterr().out
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # still one epoch
    assert (run / "model.safetensors").read_bytes() == weights


def test_an_ensemble_needs_one_dataset_and_one_augmentation(runs, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(models._REGISTRY, "clinet", clinet)
    book = tmp_path / "book"
    assert cli.main(["train", "--model", "clinet", "--subset", "20", "--batch-size", "10",
                     "--epochs", "1", "--out", str(book)]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(runs[0][0]), str(book)]) == 0  # both MNIST: fine
    assert cli.main(["evaluate", str(runs[0][0]), str(book), "--tta", "2"]) == 2
    assert capsys.readouterr().err == (
        f"shendu: error: {book} was trained by recipe book, {runs[0][0]} by augment: an "
        "ensemble needs one dataset and, with --tta, one augmentation\n")


def test_target_accuracy_must_be_a_fraction(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--target-accuracy", "99.4"])
    assert e.value.code == 2
    assert "argument --target-accuracy: must be at most 1 (an accuracy), got 99.4" in \
        capsys.readouterr().err


def test_recipe_fit_trains_a_new_model_repeatably(monkeypatch):
    monkeypatch.setitem(models._REGISTRY, "clinet", clinet)
    small = recipes.Recipe("test", model="clinet", epochs=2, batch_size=10, one_cycle=True,
                           transforms=(augment.RandomAffine(degrees=10),))
    (x, t), (x_test, t_test) = datasets.load_mnist()
    data = (x[:40], t[:40]), (x_test[:20], t_test[:20])
    (a, history), (b, _) = small.fit(*data, seed=3), small.fit(*data, seed=3)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.array_equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    c, _ = small.fit(*data, seed=4, epochs=1)
    assert not np.array_equal(a.state_dict()["2.weight"], c.state_dict()["2.weight"])


def test_an_interrupt_stops_recipe_fit_and_the_experiment_around_it(monkeypatch, tmp_path):
    """Ctrl-C between two steps (a callback's KeyboardInterrupt is the same request) stops
    recipe.fit, whose trainer the caller never sees, and so an experiment's loop of runs."""
    from shendu import experiments
    from shendu.train import Trainer
    monkeypatch.setitem(models._REGISTRY, "clinet", clinet)
    small = recipes.Recipe("test", model="clinet", epochs=2, batch_size=10)
    (x, t), (x_test, t_test) = datasets.load_mnist()

    def interrupt(progress):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        small.fit((x[:40], t[:40]), (x_test[:20], t_test[:20]), on_step=interrupt)

    fits, fit = [], Trainer.fit

    def interrupted_fit(self, train, test, epochs=1, **options):
        fits.append(epochs)
        return fit(self, train, test, epochs=epochs, on_step=interrupt)
    monkeypatch.setattr(Trainer, "fit", interrupted_fit)
    monkeypatch.setitem(recipes.RECIPES, "small", small)
    with pytest.raises(KeyboardInterrupt):
        experiments.recipes(only=["small"], seeds=(0, 1), root=tmp_path / "recipes")
    with pytest.raises(KeyboardInterrupt):
        experiments.fashion_zoo(only=["resnet20"], root=tmp_path / "zoo")
    assert len(fits) == 2 and not (tmp_path / "zoo").exists()  # one run each, no model saved
    # The recipes' interrupted run kept its checkpoint; started again, the experiment continues
    # it, to what an uninterrupted experiment gives.
    assert [p.name for p in (tmp_path / "recipes").iterdir()] == ["small-0"]
    monkeypatch.setattr(Trainer, "fit", fit)
    again = experiments.recipes(only=["small"], seeds=(0, 1), root=tmp_path / "recipes")
    whole = experiments.recipes(only=["small"], seeds=(0, 1), root=tmp_path / "whole")

    def accuracies(figures):
        return [run["test_acc_by_epoch"] for run in figures["runs"]["small"]["runs"]]
    assert accuracies(again) == accuracies(whole)
    assert again["runs"]["small"]["ensemble_errors"] == whole["runs"]["small"]["ensemble_errors"]


def test_train_by_recipe_builds_the_recipes_model(tmp_path, monkeypatch, capsys):
    """A recipe of fastnet at width 2: the command line builds the model with the recipe's
    options, and --model replaces the model and its options together."""
    monkeypatch.delenv("SHENDU_PROFILE", raising=False)
    monkeypatch.setitem(recipes.RECIPES, "wide", recipes.Recipe(
        "fastnet at width 2", model="fastnet", model_options=(("width", 2.0),)))
    for extra, parameters in (([], 252_650), (["--model", "fastnet"], 66_426)):
        out = tmp_path / f"run{len(extra)}"
        assert cli.main(["train", "--recipe", "wide", "--subset", "256", "--epochs", "1",
                         "--out", str(out), *extra]) == 0
        model = shendu.load(out)
        assert model.config["model"] == "fastnet" and model.num_parameters() == parameters
    assert "fastnet (252,650 parameters)" in capsys.readouterr().out
