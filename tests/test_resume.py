"""Interrupt, kill and resume: a run that stops anywhere continues to the weights of a run that
never stopped, bit for bit; checkpoints are whole or absent; divergence stops cleanly; optimizer
and schedule state round-trip; a checkpoint that does not fit is refused and changes nothing."""
import errno
import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

import shendu
from shendu import datasets, io, models, nn, optim

STEPS_PER_EPOCH = 7  # 64 images in batches of 10: six of 10 and one of 4
EPOCHS = 3




def tinynet(num_classes=10, input_shape=(1, 8, 8)):
    """Convolution, BatchNorm (buffers), pooling, dropout (shendu's generator): all the state a
    resumed run must restore."""
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * (h // 2) * (w // 2), 16),
                         nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, num_classes))


class Poison(nn.Module):
    """Turns its input into NaN on the chosen training calls (counted from 1)."""

    def __init__(self, calls):
        super().__init__()
        self.calls, self.count = set(calls), 0

    def forward(self, x):
        if self.training:
            self.count += 1
            if self.count in self.calls:
                return np.full_like(x, np.nan)
        return x

    def backward(self, dy):
        return dy


def poisoned(num_classes=10, input_shape=(1, 8, 8), calls=()):
    """tinynet with NaN after BatchNorm on some steps (BatchNorm has already moved its running
    statistics when the loss turns out NaN)."""
    layers = list(tinynet(num_classes, input_shape))
    return nn.Sequential(*layers[:2], Poison(calls), *layers[2:])


@pytest.fixture(scope="module", autouse=True)
def setup():
    """The full profile whatever the environment says, and the test models registered (for the
    module: the reference run is shared)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SHENDU_PROFILE", raising=False)
        patch.setitem(models._REGISTRY, "tinynet", tinynet)
        patch.setitem(models._REGISTRY, "poisoned", poisoned)
        yield


@pytest.fixture(scope="module")
def data():
    """64 training and 40 test images of MNIST, cropped to their central 8×8 pixels."""
    (x, t), (x_test, t_test) = datasets.load_mnist()
    crop = lambda a: np.ascontiguousarray(a[:, :, 10:18, 10:18])  # noqa: E731
    return (crop(x[:64]), t[:64]), (crop(x_test[:40]), t_test[:40])


def make(weights_seed=0, run_dir=None, model="tinynet", calls=None, **kwargs):
    """A trainer as a notebook would build it: seeded weights, Adam, a one-cycle schedule."""
    shendu.manual_seed(weights_seed)
    model = models.get(model, input_shape=(1, 8, 8), **({} if calls is None else {"calls": calls}))
    opt = optim.Adam(model.parameters(), lr=0.01)
    schedule = optim.OneCycleLR(opt, max_lr=0.02, total_steps=EPOCHS * STEPS_PER_EPOCH)
    settings = {"batch_size": 10, "scheduler": schedule, "seed": 0, "progress": False, **kwargs}
    return shendu.Trainer(model, opt, run_dir=run_dir, **settings)


@pytest.fixture(scope="module")
def reference(data):
    """An uninterrupted run: its final state, every array of it, and its history."""
    trainer = make()
    history = trainer.fit(*data, epochs=EPOCHS)
    return state_of(trainer), history


def state_of(trainer):
    opt = trainer.optimizer.state_dict()
    return {**{f"model.{k}": v for k, v in trainer.model.state_dict().items()},
            **{f"optimizer.{k}": v for k, v in opt.pop("buffers").items()},
            "plain": json.dumps([opt, trainer.scheduler.state_dict(), trainer.global_step])}


def assert_identical(state, expected):
    assert state.keys() == expected.keys()
    for name in expected:
        if name == "plain":
            assert state[name] == expected[name]
        else:  # bitwise: same dtype, same bytes
            assert state[name].dtype == expected[name].dtype, name
            assert state[name].tobytes() == expected[name].tobytes(), name


def assert_same_history(history, expected):
    timing = {"epoch_time", "images_per_s", "elapsed"}  # the only things allowed to differ
    assert [{k: v for k, v in h.items() if k not in timing} for h in history] == \
           [{k: v for k, v in h.items() if k not in timing} for h in expected]


def stop_at(global_step, how):
    """An on_step callback that interrupts training once, after the given step."""
    def on_step(progress):
        if progress["global_step"] == global_step:
            if how == "KeyboardInterrupt":
                raise KeyboardInterrupt
            os.kill(os.getpid(), how)  # handled by fit: it stops between this step and the next
    return on_step


def files(run_dir):
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


# -- interrupting and continuing -----------------------------------------------------------
@pytest.mark.parametrize("how", ["KeyboardInterrupt", signal.SIGINT, signal.SIGTERM],
                         ids=["callback", "SIGINT", "SIGTERM"])
def test_interrupted_fit_continues_to_identical_weights(data, reference, tmp_path, capsys, how):
    trainer = make(run_dir=tmp_path)
    history = trainer.fit(*data, epochs=EPOCHS, on_step=stop_at(10, how))
    assert len(history) == 1 and trainer.global_step == 10  # stopped right after step 10
    assert trainer.stopped == (signal.SIGINT if how == "KeyboardInterrupt" else how)
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1
    assert "in epoch 2 after step 3 of 7" in message[0] and str(tmp_path) in message[0]
    assert "Call fit again" in message[0] and f"resume={str(tmp_path)!r}" in message[0]
    meta, _ = io.read_checkpoint(tmp_path)  # the checkpoint is at the step where it stopped
    assert meta["global_step"] == 10 and meta["epoch"]["step"] == 3

    history = trainer.fit(*data, epochs=EPOCHS)  # the same call again: it continues
    assert trainer.stopped is None and trainer.global_step == EPOCHS * STEPS_PER_EPOCH
    assert_identical(state_of(trainer), reference[0])
    assert_same_history(history, reference[1])


def test_interrupted_fit_without_run_dir_continues_in_memory(data, reference, capsys):
    trainer = make()
    assert len(trainer.fit(*data, epochs=EPOCHS, on_step=stop_at(16, "KeyboardInterrupt"))) == 2
    assert "Call fit again to continue." in capsys.readouterr().err
    with pytest.raises(shendu.ShenduError, match="epochs=3 or more"):
        trainer.fit(*data, epochs=2)  # the interrupted call was for 3 epochs and is in the third
    with pytest.raises(shendu.ShenduError, match="other training data"):
        trainer.fit((data[0][0][:50], data[0][1][:50]), data[1], epochs=EPOCHS)
    history = trainer.fit(*data, epochs=EPOCHS)
    assert_identical(state_of(trainer), reference[0])
    assert_same_history(history, reference[1])
    assert len(trainer.fit(*data, epochs=1)) == EPOCHS + 1  # a finished fit: the next is new


def test_resume_in_a_new_session(data, reference, tmp_path):
    """A new trainer, with other initial weights and generators, continues from the checkpoint."""
    make(run_dir=tmp_path).fit(*data, epochs=EPOCHS, on_step=stop_at(5, "KeyboardInterrupt"))
    fresh = make(weights_seed=123)
    shendu.manual_seed(99)  # dropout's generator comes from the checkpoint, too
    history = fresh.fit(*data, epochs=EPOCHS, resume=tmp_path)
    assert fresh.run_dir == tmp_path  # it keeps writing there
    assert_identical(state_of(fresh), reference[0])
    assert_same_history(history, reference[1])
    again = make(weights_seed=7)  # a finished run resumed for as many epochs: nothing to do
    assert_same_history(again.fit(*data, epochs=EPOCHS, resume=tmp_path), reference[1])
    assert_identical(state_of(again), reference[0])


def test_checkpoint_files(data, tmp_path):
    trainer = make(run_dir=tmp_path, checkpoint_every=2)
    trainer.fit(*data, epochs=EPOCHS, on_step=stop_at(9, "KeyboardInterrupt"))
    names = sorted(p.name for p in tmp_path.iterdir())
    arrays = [n for n in names if n.startswith("checkpoint-")]
    assert names == sorted(["checkpoint.json", *arrays, "config.json", "metrics.csv",
                            "model.safetensors"]) and len(arrays) == 1  # no temporaries either
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["arrays"] == arrays[0] and meta["global_step"] == 9
    assert meta["epoch"]["number"] == 2 and meta["epoch"]["step"] == 2
    assert meta["optimizer"]["type"] == "Adam" and meta["optimizer"]["steps"] == 9
    assert meta["scheduler"]["type"] == "OneCycleLR" and meta["scheduler"]["count"] == 9
    assert meta["rng"]["shendu"] == shendu.rng.get_state()
    assert len(meta["history"]) == 1 and meta["data"]["train_size"] == 64
    tensors = load_file(tmp_path / arrays[0])  # plain safetensors, by name
    model = trainer.model.state_dict()
    assert set(tensors) == {f"model.{k}" for k in model} | {
        f"optimizer.{m}.{i}" for m in "mv" for i in range(len(trainer.optimizer.params))}
    np.testing.assert_array_equal(tensors["model.1.running_var"], model["1.running_var"])


# -- the kill test ---------------------------------------------------------------------------
# A real process, killed with SIGKILL (no chance to clean up) at random steps, resumed each time.
CHILD = r"""
import sys
import numpy as np
import shendu
from shendu import datasets, models, optim

run_dir, resume = sys.argv[1], sys.argv[2] == "resume"
(x, t), (x_test, t_test) = datasets.load_mnist()
crop = lambda a: np.ascontiguousarray(a[:, :, 8:20, 8:20])
shendu.manual_seed(0)
model = models.get("deepconvnet", input_shape=(1, 12, 12))  # the chapter's network, small input
trainer = shendu.Trainer(model, optim.Adam(model.parameters()), batch_size=20, seed=0,
                         run_dir=run_dir, progress=False, checkpoint_every=1)
trainer.fit((crop(x[:200]), t[:200]), (crop(x_test[:100]), t_test[:100]), epochs=2,
            on_step=lambda s: print(s["global_step"], flush=True),  # after its checkpoint
            resume=run_dir if resume else None)
"""
KILL_STEPS = 20  # 200 images in batches of 20, two epochs


def child(run_dir, resume):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir),
                             "resume" if resume else "new"], stdout=subprocess.PIPE, text=True)


def test_sigkilled_run_resumes_to_identical_weights(tmp_path):
    reference = child(tmp_path / "reference", resume=False)
    reference.communicate(timeout=120)
    assert reference.returncode == 0
    kills = sorted(random.sample(range(1, KILL_STEPS), 4))
    run, resumed = tmp_path / "killed", False
    for kill in kills:
        proc = child(run, resumed)
        for line in proc.stdout:  # the step just checkpointed; the kill lands during the next
            if int(line) >= kill:
                proc.kill()
                break
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"kills at {kills}"
        resumed = True
    proc = child(run, resume=True)
    proc.communicate(timeout=120)
    assert proc.returncode == 0, f"kills at {kills}"

    expected, got = (load_file(d / "model.safetensors") for d in (tmp_path / "reference", run))
    assert expected.keys() == got.keys()
    for name in expected:
        assert got[name].tobytes() == expected[name].tobytes(), f"{name}, kills at {kills}"
    rows = [[r.split(",")[:4] for r in (d / "metrics.csv").read_text().splitlines()]
            for d in (tmp_path / "reference", run)]
    assert rows[0] == rows[1]  # epoch, loss, accuracies: equal; only the timings differ
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# -- divergence ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # NaN through the layers
def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(data, tmp_path):
    trainer = make(run_dir=tmp_path, model="poisoned", calls=[10], checkpoint_every=1)
    seen = {}

    def remember(progress):  # files and BatchNorm statistics after step 9
        seen.update(files=files(tmp_path), buffers=trainer.model.state_dict())
    with pytest.raises(shendu.ShenduError, match=r"loss became nan at step 3 of epoch 2.*"
                                                 r"last checkpoint in .* is unchanged"):
        trainer.fit(*data, epochs=EPOCHS, on_step=lambda p: remember(p) if p["global_step"] == 9
                    else None)
    assert files(tmp_path) == seen["files"]
    for name, value in trainer.model.state_dict().items():  # the failed step changed nothing
        np.testing.assert_array_equal(value, seen["buffers"][name], err_msg=name)
    assert io.read_checkpoint(tmp_path)[0]["global_step"] == 9


def test_non_finite_weights_are_never_checkpointed(data, tmp_path):
    """An update can overflow while the loss is still finite: that state is not saved."""
    trainer = make(run_dir=tmp_path, checkpoint_every=1)
    seen = {}

    def overflow(progress):
        if progress["global_step"] == 4:
            seen.update(files(tmp_path))
            trainer.optimizer.v[0][...] = np.inf  # Adam's second moment overflowed
    with pytest.raises(shendu.ShenduError, match=r"optimizer.v.0 became non-finite by step 5.*"
                                                 r"last checkpoint in .* is unchanged"):
        trainer.fit(*data, epochs=EPOCHS, on_step=overflow)
    assert files(tmp_path) == seen


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_skip_nonfinite_skips_and_counts(data):
    trainer = make(model="poisoned", calls=[3, 12], skip_nonfinite=True)
    states = {}
    history = trainer.fit(*data, epochs=2, on_step=lambda p: states.update(
        {p["global_step"]: trainer.model.state_dict()}))
    assert [h["skipped"] for h in history] == [1, 1]
    for step in (3, 12):  # parameters and statistics as they were before the skipped step
        for name, value in states[step].items():
            np.testing.assert_array_equal(value, states[step - 1][name], err_msg=name)
    assert all(np.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert all(np.isfinite(h["train_loss"]) for h in history)


# -- failures while saving -------------------------------------------------------------------
@pytest.mark.parametrize("failing_fsync", [1, 3], ids=["arrays file", "checkpoint.json"])
def test_full_disk_keeps_the_previous_checkpoint(data, reference, tmp_path, failing_fsync):
    """The disk fills while the checkpoint after step 5 is written (each checkpoint syncs the
    arrays file, its directory, the JSON, its directory): the one after step 4 stays whole."""
    trainer = make(run_dir=tmp_path, checkpoint_every=1)
    before, real_fsync, calls, patch = {}, os.fsync, [], pytest.MonkeyPatch()

    def fsync(fd):
        calls.append(fd)
        if len(calls) == failing_fsync:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    def arm(progress):
        if progress["global_step"] == 4:
            before.update(files(tmp_path))
            patch.setattr(os, "fsync", fsync)
    try:
        with pytest.raises(shendu.CheckpointError, match="No space left on device"):
            trainer.fit(*data, epochs=EPOCHS, on_step=arm)
    finally:
        patch.undo()
    after = files(tmp_path)
    assert {name: after[name] for name in before} == before  # all there, byte for byte
    assert not [n for n in after if n.endswith(".tmp")]
    assert io.read_checkpoint(tmp_path)[0]["global_step"] == 4
    fresh = make(weights_seed=5)
    fresh.fit(*data, epochs=EPOCHS, resume=tmp_path)
    assert_identical(state_of(fresh), reference[0])


def test_temporary_files_of_a_killed_write_are_removed_on_resume(data, tmp_path):
    make(run_dir=tmp_path).fit(*data, epochs=1, on_step=stop_at(2, "KeyboardInterrupt"))
    stray = tmp_path / ".checkpoint.json.0123456789ab.tmp"
    stray.write_text("half a checkpo")
    mine = tmp_path / "notes.tmp"  # not a name shendu writes: left alone
    mine.write_text("mine")
    make().fit(*data, epochs=1, resume=tmp_path)
    assert not stray.exists() and mine.read_text() == "mine"


# -- checkpoints that do not fit ---------------------------------------------------------------
def other_model(trainer):
    shendu.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return shendu.Trainer(model, optim.Adam(model.parameters()), batch_size=10,
                          scheduler=trainer.scheduler, progress=False)


MISFITS = {
    "no checkpoint": (lambda d, run: (make(), d[0], run / "nowhere"),
                      "holds no checkpoint to resume from"),
    "other data": (lambda d, run: (make(), (d[0][0][:50], d[0][1][:50]), run),
                   "trained on 64 images with another digest, not on these 50"),
    "other batch size": (lambda d, run: (make(batch_size=20), d[0], run), "batch size 10"),
    "other model": (lambda d, run: (other_model(make()), d[0], run),
                    "unexpected: 0.bias, 0.weight, 1.running_mean"),
    "other optimizer": (lambda d, run: (swap_optimizer(make()), d[0], run),
                        "'Adam', not of a SGD"),
    "no schedule": (lambda d, run: (without_schedule(make()), d[0], run),
                    "with a learning-rate schedule, this trainer has none"),
}


def swap_optimizer(trainer):
    trainer.optimizer = optim.SGD(trainer.model.parameters(), lr=0.1)
    trainer.scheduler = optim.OneCycleLR(trainer.optimizer, max_lr=0.2, total_steps=21)
    return trainer


def without_schedule(trainer):
    trainer.scheduler, trainer.per_batch = None, False
    return trainer


@pytest.mark.parametrize("case", MISFITS)
def test_a_checkpoint_that_does_not_fit_changes_nothing(data, tmp_path, case):
    make(run_dir=tmp_path).fit(*data, epochs=EPOCHS, on_step=stop_at(9, "KeyboardInterrupt"))
    before = files(tmp_path)
    build, message = MISFITS[case]
    trainer, train, run = build(data, tmp_path)
    state = trainer.model.state_dict()
    with pytest.raises(shendu.CheckpointError, match=message.replace("(", r"\(")):
        trainer.fit(train, data[1], epochs=EPOCHS, resume=run)
    assert files(tmp_path) == before
    for name, value in trainer.model.state_dict().items():  # the trainer is as it was
        np.testing.assert_array_equal(value, state[name])
    assert trainer.history == [] and trainer.global_step == 0


def test_checkpoint_with_inconsistent_counters_is_refused(data, tmp_path):
    make(run_dir=tmp_path).fit(*data, epochs=EPOCHS, on_step=stop_at(9, "KeyboardInterrupt"))
    path = tmp_path / "checkpoint.json"
    for field, value, message in [("epoch.step", 99, "counters contradict"),
                                  ("fit.start", 5, "counters contradict"),
                                  ("epoch.number", 7, "counters contradict"),
                                  ("global_step", "9", "global_step is '9', not an integer"),
                                  ("rng.shendu", {"bit_generator": "MT19937"}, "PCG64"),
                                  ("optimizer.lr", "fast", "lr: 'fast' cannot replace")]:
        meta = json.loads(path.read_text())
        key, _, sub = field.partition(".")
        if sub:
            meta[key][sub] = value
        else:
            meta[key] = value
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / "checkpoint.json").write_text(json.dumps(meta))
        (tmp_path / "bad" / meta["arrays"]).write_bytes((tmp_path / meta["arrays"]).read_bytes())
        trainer = make()
        state = trainer.model.state_dict()
        with pytest.raises(shendu.CheckpointError, match=message):
            trainer.fit(*data, epochs=EPOCHS, resume=tmp_path / "bad")
        for name, value in trainer.model.state_dict().items():
            np.testing.assert_array_equal(value, state[name])


# -- optimizer and schedule state ------------------------------------------------------------
OPTIMIZERS = [(optim.SGD, {"lr": 0.1}), (optim.SGD, {"lr": 0.05, "momentum": 0.9}),
              (optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
              (optim.Adagrad, {"lr": 0.1}), (optim.RMSprop, {"lr": 0.01, "alpha": 0.9}),
              (optim.Adam, {"lr": 0.01, "betas": (0.8, 0.99)}), (optim.AdamW, {"lr": 0.01})]
SCHEDULES = [(optim.StepLR, {"step_size": 2, "gamma": 0.5}),
             (optim.CosineAnnealingLR, {"T_max": 7}),
             (optim.OneCycleLR, {"max_lr": 0.1, "total_steps": 8})]


def toy(seed):
    rng = np.random.default_rng(seed)
    params = [nn.Parameter(rng.standard_normal((3, 4)).astype(np.float32)),
              nn.Parameter(rng.standard_normal(5).astype(np.float32))]
    return params, [[rng.standard_normal(p.shape).astype(np.float32) for p in params]
                    for _ in range(8)]


def run_steps(opt, schedule, params, grads):
    for g in grads:
        for p, gp in zip(params, g):
            p.grad = gp
        opt.step()
        schedule.step()


@pytest.mark.parametrize("make_schedule, skwargs", SCHEDULES,
                         ids=[s[0].__name__ for s in SCHEDULES])
@pytest.mark.parametrize("make_opt, kwargs", OPTIMIZERS,
                         ids=[f"{o[0].__name__}-{len(o[1])}" for o in OPTIMIZERS])
def test_state_dicts_continue_exactly(make_opt, kwargs, make_schedule, skwargs):
    params, grads = toy(0)
    opt = make_opt(params, **kwargs)
    schedule = make_schedule(opt, **skwargs)
    run_steps(opt, schedule, params, grads[:3])
    saved_opt, saved_schedule = opt.state_dict(), schedule.state_dict()
    arrays = saved_opt.pop("buffers")
    plain = json.loads(json.dumps([saved_opt, saved_schedule]))  # through JSON, as checkpoints

    copies = [nn.Parameter(p.data.copy()) for p in params]
    other = make_opt(copies, **kwargs)
    other_schedule = make_schedule(other, **skwargs)
    other.load_state_dict({**plain[0], "buffers": arrays})
    other_schedule.load_state_dict(plain[1])
    run_steps(opt, schedule, params, grads[3:])
    run_steps(other, other_schedule, copies, grads[3:])
    for p, q in zip(params, copies):
        assert p.data.tobytes() == q.data.tobytes()
    assert other.lr == opt.lr and other.steps == opt.steps == 8


def test_load_state_dict_refuses_what_does_not_fit_and_changes_nothing():
    params, grads = toy(0)
    opt = optim.Adam(params, lr=0.01)
    run_steps(opt, optim.StepLR(opt, 1), params, grads[:2])
    good = opt.state_dict()
    fresh = optim.Adam([nn.Parameter(p.data.copy()) for p in params], lr=0.5)
    before = json.dumps({k: v for k, v in fresh.state_dict().items() if k != "buffers"})
    cases = [({**good, "type": "SGD"}, "of a 'SGD', not of a Adam"),
             ({**good, "lr": "fast"}, "lr: 'fast' cannot replace"),
             ({**good, "betas": [0.9]}, "betas"),
             ({**good, "steps": 2.5}, "steps: 2.5"),
             ({**good, "lr": float("nan")}, "lr: nan"),
             ({**good, "momentum": 0.9}, "unexpected: momentum"),
             ({**good, "buffers": {**good["buffers"], "m.0": np.zeros(3, np.float32)}},
              r"m.0: shape \(3,\), parameter \(3, 4\)"),
             ({**good, "buffers": {k: v for k, v in good["buffers"].items() if k != "v.1"}},
              "missing: v.1")]
    for state, message in cases:
        with pytest.raises(shendu.ShenduError, match=message):
            fresh.load_state_dict(state)
        assert json.dumps({k: v for k, v in fresh.state_dict().items() if k != "buffers"}) == before
        assert all((a == 0).all() for a in fresh.state_dict()["buffers"].values())
