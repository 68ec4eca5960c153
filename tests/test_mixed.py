"""Mixed-precision training (shendu.mixed): float16 arithmetic for real, gradients near float64's,
loss scaling as PyTorch's GradScaler, overflowing steps skipped, exact resumes, the underflow
measure against hand-computed cases, and every mistake one clear error."""
import json

import numpy as np
import pytest

import shendu
from shendu import io, kernels, mixed, models, nn, optim
from shendu.cli import main

from test_resume import stop_at, tinynet

try:
    import torch
except ImportError:
    torch = None


def rand(*shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.fixture(autouse=True)
def full_profile(monkeypatch):
    monkeypatch.delenv("SHENDU_PROFILE", raising=False)


@pytest.fixture
def data():
    """64 training and 40 test 8x8 images, their labels following a simple rule."""
    x = rand(104, 1, 8, 8, seed=1)
    t = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    return (x[:64], t[:64]), (x[64:], t[64:])


def gradients(model, x, t, scaler=None):
    """Every parameter's gradient of the mean cross-entropy (float64 copies), from a plain
    backward pass or from the scaler's mixed-precision one, unscaled; the random state is the
    same for both (dropout draws the same masks)."""
    state = shendu.rng.get_state()
    loss_fn = nn.CrossEntropyLoss()
    if scaler is None:
        loss_fn(model(x), t)
        nn.data_backward(model, loss_fn.backward())
    else:
        scaler.gradient(model, loss_fn, x, t)
        assert scaler.unscale(model.parameters())
    shendu.rng.set_state(state)
    return [kernels.to_host(p.grad).astype(np.float64) for p in model.parameters()]


def test_a_mixed_step_computes_in_float16_and_keeps_float32_weights():
    shendu.manual_seed(0)
    model = tinynet(2)
    seen = []
    model[0].forward = lambda x, f=model[0].forward: seen.append(x.dtype) or f(x)
    scaler = mixed.LossScaler(1024.0)
    loss, logits = scaler.gradient(model, nn.CrossEntropyLoss(), rand(4, 1, 8, 8), np.arange(4) % 2)
    assert seen == [np.float16] and logits.dtype == np.float16 and np.isfinite(loss)
    assert {type(p.grad) for p in model.parameters()} == {np.ndarray}
    assert model[0].weight.grad.dtype == np.float16  # found in 16 bits...
    assert scaler.unscale(model.parameters())
    assert {p.grad.dtype for p in model.parameters()} == {np.dtype(np.float32)}  # ...used in 32
    assert {p.data.dtype for p in model.parameters()} == {np.dtype(np.float32)}
    assert all(m.compute is None for m in model.modules())  # only inside the step


def test_mixed_gradients_are_float64_ones_within_float16_precision():
    x, t = rand(16, 1, 8, 8, seed=2), np.arange(16) % 10
    shendu.manual_seed(0)
    model = tinynet()
    exact = gradients(model.double(), x.astype(np.float64), t)
    found = gradients(model.float(), x, t, mixed.LossScaler(2.0 ** 10))
    grads = dict(zip(dict(model.named_parameters()), zip(exact, found)))
    # The convolution's bias is followed by BatchNorm, which subtracts every channel's mean:
    # its gradient is 0, and rounding leaves it small beside the weights'.
    e, f = grads.pop("0.bias")
    assert np.abs(e).max() < 1e-10 and np.abs(f).max() <= 2e-2 * np.abs(grads["0.weight"][0]).max()
    for name, (e, f) in grads.items():
        # float16 keeps 11 significant bits (relative rounding 2^-11 ≈ 5e-4) at each of the
        # few layers a gradient goes through: errors of a few 1e-3 of the largest value
        assert np.abs(f - e).max() <= 2e-2 * np.abs(e).max(), name


def test_without_loss_scaling_small_gradients_vanish_and_with_it_they_survive():
    """A loss of 1e-6 times the cross-entropy: its gradients lie below float16's smallest
    subnormal (6e-8). Unscaled they round to zero; scaled by 2^16 they come back."""
    shendu.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, t = rand(32, 1, 8, 8), np.arange(32) % 10

    class Tiny(nn.CrossEntropyLoss):
        def forward(self, logits, t):
            return 1e-6 * super().forward(logits, t)

        def backward(self):
            return 1e-6 * super().backward()

    loss_fn = Tiny()
    loss_fn(model(x), t)
    nn.data_backward(model, loss_fn.backward())
    exact = model[1].weight.grad.astype(np.float64)
    for scale, survives in ((1.0, False), (2.0 ** 16, True)):
        scaler = mixed.LossScaler(scale)
        scaler.gradient(model, loss_fn, x, t)
        scaler.unscale(model.parameters())
        found = model[1].weight.grad
        if survives:
            assert np.abs(found - exact).max() <= 1e-2 * np.abs(exact).max()
        else:
            assert np.mean(found == 0) > 0.5 and np.mean(exact == 0) == 0


@pytest.mark.skipif(torch is None, reason="PyTorch is the oracle here")
def test_the_scale_moves_as_pytorchs_gradscaler():
    grads = [1.0, np.inf, 1.0, 1.0, 1.0, np.nan, 1.0, 1.0, 1.0, 1.0, np.inf, 1.0]
    theirs_param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([theirs_param], lr=0.1)
    theirs = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=2)
    ours = mixed.LossScaler(8.0, interval=2)
    p = nn.module.Parameter(np.zeros(3, np.float32))
    for g in grads:
        opt.zero_grad()
        theirs.scale((theirs_param * float(g)).sum()).backward()
        theirs.step(opt)
        theirs.update()
        p.grad = np.full(3, g * ours.scale, np.float16)
        took = ours.unscale([p])
        assert took == np.isfinite(g)
        assert ours.scale == theirs.get_scale()


def test_an_overflowing_step_is_skipped_and_the_scale_halved(data):
    shendu.manual_seed(0)
    model = tinynet(2)
    trainer = shendu.Trainer(model, optim.Adam(model.parameters()), batch_size=64,
                             progress=False, precision="mixed")
    trainer.scaler.scale = 2.0 ** 40  # every scaled gradient overflows float16
    before = model.state_dict()
    history = trainer.fit(*data, epochs=1)
    assert history[0]["skipped"] == 1 and trainer.scaler.scale == 2.0 ** 39
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # BatchNorm's too


def test_mixed_training_learns_as_float32_does(data):
    losses = {}
    for precision in ("float32", "mixed"):
        shendu.manual_seed(0)
        model = tinynet(2)
        trainer = shendu.Trainer(model, optim.Adam(model.parameters(), lr=0.01), batch_size=8,
                                 progress=False, precision=precision)
        losses[precision] = [h["train_loss"] for h in trainer.fit(*data, epochs=10)]
    assert losses["mixed"][-1] < 0.6 * losses["mixed"][0]
    assert abs(losses["mixed"][-1] - losses["float32"][-1]) < 0.2


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(models._REGISTRY, "tinynet", tinynet)


def make(run_dir=None):
    """A trainer whose model can be saved (built by models.get)."""
    shendu.manual_seed(0)
    model = models.get("tinynet", num_classes=2, input_shape=(1, 8, 8))
    return shendu.Trainer(model, optim.Adam(model.parameters(), lr=0.01), batch_size=10,
                          progress=False, run_dir=run_dir, precision="mixed")


def arrays(trainer):
    """The model's and the optimizer's arrays, as bytes: equal only if bitwise equal."""
    buffers = trainer.optimizer.state_dict()["buffers"]
    return {**{k: v.tobytes() for k, v in trainer.model.state_dict().items()},
            **{f"optimizer.{k}": v.tobytes() for k, v in buffers.items()}}


def test_an_interrupted_mixed_run_resumes_to_identical_weights(data, registered, tmp_path,
                                                               capsys):
    reference = make()
    reference.scaler.interval = 3  # the scale moves during the run, and must be restored
    reference.fit(*data, epochs=2)
    interrupted = make(tmp_path / "run")
    interrupted.scaler.interval = 3
    interrupted.fit(*data, epochs=2, on_step=stop_at(9, "KeyboardInterrupt"))
    assert interrupted.stopped is not None
    resumed = make()
    resumed.fit(*data, epochs=2, resume=tmp_path / "run")
    assert resumed.scaler.state_dict() == reference.scaler.state_dict()
    assert reference.scaler.scale != 2.0 ** 16  # it moved
    assert arrays(resumed) == arrays(reference)


def test_a_checkpoint_resumes_only_in_its_own_precision(data, registered, tmp_path):
    make(tmp_path / "run").fit(*data, epochs=1)
    shendu.manual_seed(0)
    model = models.get("tinynet", num_classes=2, input_shape=(1, 8, 8))
    plain = shendu.Trainer(model, optim.Adam(model.parameters(), lr=0.01), batch_size=10,
                           progress=False)
    with pytest.raises(io.CheckpointError, match="trained in mixed precision, this trainer "
                                                 "trains in the model's own type"):
        plain.fit(*data, epochs=2, resume=tmp_path / "run")


@pytest.mark.parametrize("case, message", [
    ("float16", "precision must be one of None, 'float32', 'mixed', got 'float16'"),
    ("double", "trains a float32 model, and this one is float64"),
])
def test_mixed_precision_refuses_what_it_cannot_train(case, message):
    model = tinynet(2)
    if case == "double":
        model.double()
    with pytest.raises(shendu.ShenduError, match=message):
        shendu.Trainer(model, optim.SGD(model.parameters(), lr=0.1),
                       precision="mixed" if case == "double" else case)


def test_a_bad_scaler_state_is_refused():
    with pytest.raises(shendu.ShenduError, match="out of range"):
        mixed.LossScaler().load_state_dict({"scale": 0.0, "interval": 2000, "clean": 0})


def test_lost_counts_what_float16_rounds_to_zero():
    tiny = 2.0 ** -25  # half of float16's smallest subnormal: ties round to even, to 0
    g = np.array([0.0, tiny / 2, -tiny, 1.5 * tiny, 2 * tiny, 1.0], np.float32)
    assert mixed._lost(g, 1.0) == 2 / 5  # of the five nonzero: tiny/2 and the tie -tiny
    assert mixed._lost(g, 4.0) == 0.0
    assert mixed._lost(np.zeros(3, np.float32), 1.0) == 0.0


def test_underflow_measures_each_layer_of_a_hand_computed_network():
    """Linear(4 → 3) then the loss: dL/dlogits = (softmax − onehot) / N, and dL/dW = dL/dlogitsᵀ
    x, computed here in float64 from the definitions."""
    shendu.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x = rand(5, 4) * np.float32([1e-9, 1e-8, 1e-5, 1])  # weight gradients above and below 2^-24
    t = np.array([0, 1, 2, 0, 1])
    z = x.astype(np.float64) @ model[0].weight.data.T.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - np.eye(3)[t]) / 5
    dw = dz.T @ x
    for scale in (1.0, 2.0 ** 10):
        found = mixed.underflow(model, x, t, scale=scale)
        row, = found["layers"]
        lost = lambda g: np.mean((g[g != 0] * scale).astype(np.float16) == 0)  # noqa: E731
        assert row["layer"] == "0 Linear"
        assert row["output"] == pytest.approx(lost(dz)) and row["weight"] == pytest.approx(lost(dw))
        assert np.allclose(np.sort(found["log2"]), np.sort(np.log2(np.abs(dz.ravel()) * scale)),
                           atol=1e-4)
    assert 0 < mixed.underflow(model, x, t)["layers"][0]["weight"] < 1  # the case is not trivial


def test_underflow_needs_a_sequential_model():
    with pytest.raises(shendu.ShenduError, match="Sequential of layers"):
        mixed.underflow(models.get("resnet20"), rand(2, 1, 28, 28), np.zeros(2, int))


# -- the command line ----------------------------------------------------------------------------
def test_train_precision_mixed_keeps_it_in_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--subset", "100", "--epochs", "1", "--batch-size", "50", "--out", str(run)]
    assert main(args + ["--precision", "mixed"]) == 0
    meta, _ = io.read_checkpoint(run)
    assert meta["trainer"]["settings"]["precision"] == "mixed"
    assert meta["scaler"]["scale"] > 0
    assert main(["train", "--resume", str(run), "--precision", "float32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"shendu: error: --precision float32 conflicts with the run in {run} (mixed): "
                   "a resumed run keeps its settings"]
    assert json.loads((run / "config.json").read_text())["model"] == "deepconvnet"


def test_precision_is_one_of_two_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--precision", "float16"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_kernels_of_a_mixed_layer_are_those_of_its_input():
    shendu.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3)
    with mixed.computing(conv):
        y = conv(rand(2, 1, 5, 5).astype(np.float16))
    assert y.dtype == np.float16 and kernels.of(y).dtype == np.float16
    with pytest.raises(shendu.ShenduError, match="computes in float32 but its input is float16"):
        conv(rand(2, 1, 5, 5).astype(np.float16))
