"""The Trainer (learning, metrics, run directory, shuffling, determinism, schedules, the quick
profile), `evaluate` / `predict_proba`, and the figures drawn from them."""
import csv
import time

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

import shendu
from shendu import datasets, models, nn, optim

matplotlib.use("Agg")
KEYS = {"epoch", "train_loss", "train_acc", "test_acc", "lr", "epoch_time", "images_per_s",
        "skipped", "elapsed"}


@pytest.fixture(autouse=True)
def full_profile(monkeypatch):
    """Tests choose the profile themselves, whatever the environment says."""
    monkeypatch.delenv("SHENDU_PROFILE", raising=False)


def mlp(num_classes=10, input_shape=(1, 28, 28), hidden=32):
    """Fast enough to train on MNIST in a test."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(models._REGISTRY, "mlp", mlp)


@pytest.fixture(scope="module")
def mnist():
    (x, t), (x_test, t_test) = datasets.load_mnist()
    return (x[:1000], t[:1000]), (x_test[:500], t_test[:500])


class Recorder(nn.Module):
    """Passes its input through and remembers every batch it saw, and in which mode."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, x.ravel().copy()))
        return x

    def backward(self, dy):
        return dy


def numbered(n, size=1):
    """Images whose every pixel is their index (float: used as is), labels index mod 10."""
    x = np.repeat(np.arange(n, dtype=np.float32), size).reshape(n, 1, 1, size)
    return x, np.arange(n) % 10


def spy(size=1):
    recorder = Recorder()
    return recorder, nn.Sequential(recorder, nn.Flatten(), nn.Linear(size, 10))


def trained_images(recorder):
    return [batch for training, batch in recorder.seen if training]


def test_fit_learns_and_fills_the_run_directory(mnist, registered, tmp_path):
    shendu.manual_seed(0)
    model = models.get("mlp")
    trainer = shendu.Trainer(model, optim.Adam(model.parameters(), lr=1e-3), batch_size=50,
                             run_dir=tmp_path, progress=False)
    rows_written = []  # after each epoch, before the next: the checkpoint and the table so far
    began = time.perf_counter()
    history = trainer.fit(*mnist, epochs=3, on_epoch=lambda m: rows_written.append(
        len((tmp_path / "metrics.csv").read_text().splitlines()) - 1))
    took = time.perf_counter() - began
    assert rows_written == [1, 2, 3]

    assert [h["epoch"] for h in history] == [1, 2, 3] and all(set(h) == KEYS for h in history)
    assert history[2]["train_loss"] < history[1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_acc"] > 0.75 and history[-1]["train_acc"] > 0.75
    assert all(h["lr"] == 1e-3 and h["epoch_time"] > 0 and h["images_per_s"] > 0 for h in history)
    assert all(abs(h["images_per_s"] * h["epoch_time"] - 1000) < 1e-6 for h in history)
    elapsed = [0.0] + [h["elapsed"] for h in history]  # steps and tests, summed from the start
    assert all(elapsed[k + 1] - elapsed[k] >= h["epoch_time"] for k, h in enumerate(history))
    assert elapsed[-1] <= took

    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row, h in zip(rows, history):
        assert {k: float(v) for k, v in row.items()} == pytest.approx(h, rel=1e-12)

    loaded = shendu.load(tmp_path)  # the last epoch's model
    x = mnist[1][0][:20].astype(np.float32) / 255
    np.testing.assert_array_equal(loaded(x), model.eval()(x))


def test_test_accuracy_is_the_eval_mode_accuracy_on_the_whole_test_set(mnist, registered):
    shendu.manual_seed(0)
    model = models.get("mlp")
    history = shendu.Trainer(model, optim.SGD(model.parameters(), lr=0.1),
                             progress=False).fit(*mnist)
    x_test, t_test = mnist[1]
    with nn.no_grad():
        predicted = model.eval()(x_test.astype(np.float32) / 255).argmax(axis=1)
    assert history[0]["test_acc"] == np.mean(predicted == t_test)


def test_every_epoch_visits_every_image_once_in_a_new_order():
    x, t = numbered(53)
    recorder, model = spy()
    trainer = shendu.Trainer(model, optim.SGD(model.parameters(), lr=0.01), batch_size=10,
                             progress=False)
    trainer.fit((x, t), (x[:7], t[:7]), epochs=3)
    batches = trained_images(recorder)
    assert [len(b) for b in batches] == [10, 10, 10, 10, 10, 3] * 3  # last batch kept
    orders = [np.concatenate(batches[i:i + 6]) for i in (0, 6, 12)]
    for order in orders:
        assert sorted(order) == list(range(53))
        assert not np.array_equal(order, np.arange(53))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    evaluated = [batch for training, batch in recorder.seen if not training]
    assert [sorted(b) for b in evaluated] == [list(range(7))] * 3  # the test set, once an epoch


def test_uint8_images_become_float32_in_0_1():
    x = np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1)
    t = np.zeros(256, np.int64)
    recorder, model = spy()
    shendu.Trainer(model, optim.SGD(model.parameters(), lr=0.01), batch_size=64,
                   progress=False).fit((x, t), (x, t))
    seen = np.concatenate(trained_images(recorder))
    assert seen.dtype == np.float32
    np.testing.assert_array_equal(np.sort(seen), np.arange(256, dtype=np.float32) / 255)


def train_twice(mnist, seed):
    shendu.manual_seed(0)
    model = mlp()
    shendu.Trainer(model, optim.Adam(model.parameters()), batch_size=32, seed=seed,
                   progress=False).fit(*mnist, epochs=2)
    return model.state_dict()


def test_same_seeds_give_identical_weights(mnist):
    first, again, other = (train_twice(mnist, s) for s in (0, 0, 1))
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert any(not np.array_equal(first[name], other[name]) for name in first)  # order matters


def test_quick_profile_caps_data_and_epochs(monkeypatch, capsys):
    monkeypatch.setenv("SHENDU_PROFILE", "quick")
    x, t = numbered(2500)
    recorder, model = spy()
    history = shendu.Trainer(model, optim.SGD(model.parameters(), lr=1e-6), batch_size=500,
                             progress=False).fit((x, t), numbered(1200), epochs=5)
    assert len(history) == 2
    trained = trained_images(recorder)
    assert sorted(np.concatenate(trained[:4])) == list(range(2000))  # one epoch: 4 batches
    assert len(np.concatenate(trained)) == 4000
    assert sum(len(b) for training, b in recorder.seen if not training) == 2 * 1000
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "quick" in lines[0] and "2000" in lines[0] and "1000" in lines[0]


@pytest.mark.parametrize("value, expected", [(None, "full"), ("full", "full"), ("quick", "quick"),
                                             (" Quick ", "quick"), ("", "full")])
def test_profile(monkeypatch, value, expected):
    if value is not None:
        monkeypatch.setenv("SHENDU_PROFILE", value)
    assert shendu.profile() == expected


def test_unknown_profile_is_an_error(monkeypatch):
    monkeypatch.setenv("SHENDU_PROFILE", "fast")
    with pytest.raises(shendu.ShenduError, match="SHENDU_PROFILE"):
        shendu.profile()


def test_a_chosen_profile_wins_over_the_environment(monkeypatch):
    """A notebook's first cell chooses the profile; None hands it back to $SHENDU_PROFILE."""
    monkeypatch.setenv("SHENDU_PROFILE", "quick")
    try:
        assert shendu.set_profile("full") == "full" == shendu.profile()
        assert shendu.planned_steps(60000, 100, 20) == 12000
        assert shendu.set_profile(None) == "quick" == shendu.profile()
        monkeypatch.setenv("SHENDU_PROFILE", "full")
        assert shendu.set_profile("quick") == "quick"
        assert shendu.planned_steps(60000, 100, 20) == 2 * 20
        with pytest.raises(shendu.ShenduError, match="'full', 'quick' or None"):
            shendu.set_profile("fast")
        assert shendu.profile() == "quick"  # a refused choice changes nothing
    finally:
        shendu.set_profile(None)


def test_settings_are_checked():
    x, t = numbered(10)
    _, model = spy()
    opt = optim.SGD(model.parameters(), lr=0.1)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(shendu.ShenduError, match="batch_size"):
            shendu.Trainer(model, opt, batch_size=bad)
    trainer = shendu.Trainer(model, opt, progress=False)
    with pytest.raises(shendu.ShenduError, match="epochs"):
        trainer.fit((x, t), (x, t), epochs=0)
    with pytest.raises(shendu.ShenduError, match="10 images but labels"):
        trainer.fit((x, t[:9]), (x, t))
    with pytest.raises(shendu.ShenduError, match="uint8"):
        trainer.fit((x.astype(np.int64), t), (x, t))
    with pytest.raises(shendu.ShenduError, match="non-empty"):
        trainer.fit((x[:0], t[:0]), (x, t))
    with pytest.raises(shendu.ShenduError, match="diverged"):
        trainer.fit((np.full_like(x, np.nan), t), (x, t))


def test_epoch_schedule_steps_once_per_epoch():
    x, t = numbered(30)
    _, model = spy()
    opt = optim.SGD(model.parameters(), lr=0.1)
    history = shendu.Trainer(model, opt, batch_size=7, scheduler=optim.StepLR(opt, 1, gamma=0.5),
                             progress=False).fit((x, t), (x, t), epochs=3)
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.05, 0.025])
    assert opt.lr == pytest.approx(0.0125)


def test_one_cycle_steps_once_per_batch():
    x, t = numbered(30)
    _, model = spy()
    opt = optim.SGD(model.parameters(), lr=0.1)
    schedule = optim.OneCycleLR(opt, max_lr=0.1, total_steps=15)
    shendu.Trainer(model, opt, batch_size=7, scheduler=schedule,
                   progress=False).fit((x, t), (x, t), epochs=3)
    assert schedule.count == 15  # 5 batches (7+7+7+7+2) in each of 3 epochs


def test_progress_bar_runs(capsys):
    x, t = numbered(20)
    _, model = spy()
    shendu.Trainer(model, optim.SGD(model.parameters(), lr=0.1), batch_size=5).fit((x, t), (x, t))
    assert "epoch 1/1" in capsys.readouterr().err


# -- evaluate and predict_proba on a model whose answers are known: the logits are the input --
def identity_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 3))
    model[1].weight.data[...] = np.eye(3)
    model[1].bias.data[...] = 0
    return model


X3 = np.array([[5, 1, 0], [0, 2, 1], [0, 0, 3], [4, 0, 9], [0, 1, 0]], np.float32)
T3 = np.array([0, 1, 2, 0, 1])  # the fourth is wrong: its largest logit is class 2


@pytest.mark.parametrize("batch_size", [1, 2, 500])
def test_evaluate_and_predict_proba(batch_size):
    model = identity_model()
    assert shendu.evaluate(model, X3, T3, batch_size=batch_size) == pytest.approx(4 / 5)
    p = shendu.predict_proba(model, X3, batch_size=batch_size)
    expected = np.exp(X3) / np.exp(X3).sum(axis=1, keepdims=True)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, expected, rtol=1e-6)
    assert model.training  # the caller's mode is restored


def test_fit_stops_at_the_first_epoch_that_reaches_the_target(mnist, registered):
    def run(**kwargs):
        shendu.manual_seed(0)
        model = models.get("mlp")
        trainer = shendu.Trainer(model, optim.Adam(model.parameters()), batch_size=50,
                                 progress=False)
        return [h["test_acc"] for h in trainer.fit(*mnist, epochs=6, **kwargs)]
    full = run()
    target = full[2]
    first = next(k for k, acc in enumerate(full) if acc >= target)
    assert run(target_accuracy=target) == full[:first + 1]
    assert run(target_accuracy=1.0) == full  # never reached: every epoch
    with pytest.raises(shendu.ShenduError, match="target_accuracy"):
        run(target_accuracy=1.5)


def test_ensembles_and_test_time_augmentation_average_probabilities():
    from shendu import augment
    rng = np.random.default_rng(0)
    x = rng.random((7, 1, 2, 3), np.float32)
    members = []
    for seed in (1, 2):
        shendu.manual_seed(seed)
        members.append(nn.Sequential(nn.Flatten(), nn.Linear(6, 4)))
    p = [shendu.predict_proba(m, x) for m in members]
    np.testing.assert_allclose(shendu.predict_proba(members, x), (p[0] + p[1]) / 2, rtol=1e-6)
    flipped = shendu.predict_proba(members[0], x[..., ::-1].copy())
    tta = shendu.predict_proba(members[0], x, tta=augment.RandomHorizontalFlip(p=1), copies=2,
                               batch_size=3)
    np.testing.assert_allclose(tta, (p[0] + 2 * flipped) / 3, rtol=1e-6)
    t = rng.integers(0, 4, 7)
    assert shendu.evaluate(members, x, t) == np.mean(((p[0] + p[1]) / 2).argmax(axis=1) == t)
    with pytest.raises(shendu.ShenduError, match="at least one"):
        shendu.predict_proba([], x)
    other = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    with pytest.raises(shendu.ShenduError, match="one gives 3 classes, another 4"):
        shendu.predict_proba([members[0], other], x)


def test_planned_steps_follow_the_profile(monkeypatch):
    assert shendu.planned_steps(60000, 100, 20) == 12000
    assert shendu.planned_steps(1001, 100, 3) == 33
    monkeypatch.setenv("SHENDU_PROFILE", "quick")
    assert shendu.planned_steps(60000, 100, 20) == 40  # 2,000 images, 2 epochs


def test_evaluate_checks_its_inputs():
    with pytest.raises(shendu.ShenduError, match="labels"):
        shendu.evaluate(identity_model(), X3, T3[:4])
    with pytest.raises(shendu.ShenduError, match="batch_size"):
        shendu.predict_proba(identity_model(), X3, batch_size=0)


# -- figures -----------------------------------------------------------------------------------
def test_training_curves():
    from shendu import plot
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + e / 10,
                "test_acc": 0.6 + e / 20} for e in (1, 2, 3)]
    fig = plot.training_curves(history)
    loss, acc = fig.axes
    np.testing.assert_allclose(loss.lines[0].get_ydata(), [1, 0.5, 1 / 3])
    np.testing.assert_allclose(acc.lines[0].get_ydata(), [60, 70, 80])
    np.testing.assert_allclose(acc.lines[1].get_ydata(), [65, 70, 75])
    assert [line.get_label() for line in acc.lines] == ["train", "test"]
    plt.close(fig)


def test_misclassified_shows_the_errors_with_label_and_prediction():
    from shendu import plot
    x = np.tile(X3[:, None, None, :], (4, 1, 1, 1))  # 20 images (N, 1, 1, 3), 4 wrong ones
    t = np.tile(T3, 4)
    fig, shown = plot.misclassified(identity_model(), x, t, n=3, classes=["a", "b", "c"])
    assert list(shown) == [3, 8, 13]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["a → c"] * 3
    assert "4 of 20" in fig._suptitle.get_text()
    plt.close(fig)
    predicted = t.copy()
    predicted[[7, 15]] = [0, 2]  # label 2 read as 0, label 0 read as 2
    fig, shown = plot.errors(x, t, predicted, classes=["a", "b", "c"])
    assert list(shown) == [7, 15] and "2 of 20" in fig._suptitle.get_text()
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["c → a", "a → c"]
    plt.close(fig)
