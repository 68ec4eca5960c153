"""Training and inference loops: the Trainer, `evaluate`, `predict_proba` and the run profile.

    shendu.manual_seed(0)                       # weights and dropout: the caller's business
    model = shendu.models.get("deepconvnet")
    trainer = shendu.Trainer(model, shendu.optim.Adam(model.parameters()), run_dir="runs/demo")
    history = trainer.fit((x_train, t_train), (x_test, t_test), epochs=20)
    history[-1]["test_acc"]

Images may be uint8 (0-255, as the datasets keep them: each batch becomes float32 / 255 when it is
used, so the whole set never exists in float) or floating point (used as they are).

A model moved by `.to("cuda")` trains and predicts on the GPU: the data stays on the host, and
each batch is converted (and augmented) there, then copied to the device; only the logits come
back, for accuracy. A batch is small beside the work done on it, and augmentation draws a new
batch each step anyway, so the set is not copied to the device once.

Interrupted (Ctrl-C, a notebook's interrupt button, SIGTERM)? `fit` stops between two steps,
saves a checkpoint and returns; run the same `fit` again and it continues. From a new session,
`trainer.fit(..., resume="runs/demo")` continues from the run directory's checkpoint, ending with
the weights an uninterrupted run would have had, bit for bit.
"""
import math
import os
import signal
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import checkpointing, kernels, mixed, nn
from .errors import ShenduError
from .interrupts import StopRequest, stop_requests
from .io import CheckpointError, lock_run_dir, save, write_atomic, write_checkpoint
from .nn import device_of
from .rollback import Rollback, diverged

__all__ = ["Trainer", "evaluate", "predict_proba", "profile", "set_profile", "planned_steps",
           "METRICS"]

METRICS = ["epoch", "train_loss", "train_acc", "test_acc", "lr", "epoch_time", "images_per_s",
           "skipped", "elapsed"]
QUICK_TRAIN, QUICK_TEST, QUICK_EPOCHS = 2000, 1000, 2  # the `quick` profile's caps
PRECISIONS = (None, "float32", "mixed")  # a Trainer's: the model's own type, or one of these


_PROFILES = ("full", "quick")
_chosen_profile = None  # set_profile's choice; None: $SHENDU_PROFILE decides


def profile():
    """The run profile: "full" (the real experiment) or "quick" (small subsets, so every notebook
    runs in seconds, as in tests and CI). The one chosen with `set_profile`, else
    $SHENDU_PROFILE, else "full"."""
    if _chosen_profile is not None:
        return _chosen_profile
    value = os.environ.get("SHENDU_PROFILE", "").strip().lower() or "full"
    if value not in _PROFILES:
        raise ShenduError(f"SHENDU_PROFILE must be 'full' or 'quick', got {value!r}")
    return value


def set_profile(name):
    """Choose the run profile for this process ("full" or "quick"); None leaves it to
    $SHENDU_PROFILE (default "full"). Returns the profile now in force: a notebook's first cell
    does `PROFILE = shendu.set_profile(None)`, and a reader writes "quick" there instead."""
    global _chosen_profile
    if name is not None and name not in _PROFILES:
        raise ShenduError(f"the profile must be 'full', 'quick' or None, got {name!r}")
    _chosen_profile = name
    return profile()


def planned_steps(n, batch_size, epochs):
    """The steps `fit` will take for `epochs` epochs on n images, in the current profile (what a
    per-step schedule such as one-cycle must be told)."""
    if profile() == "quick":
        n, epochs = min(n, QUICK_TRAIN), min(epochs, QUICK_EPOCHS)
    return epochs * _steps(n, batch_size)


def _profile_caps(x, t, x_test, t_test, epochs):
    """The data and epochs a fit uses: all of them, or in the quick profile the first
    QUICK_TRAIN training and QUICK_TEST test images and QUICK_EPOCHS epochs, as it says."""
    if profile() != "quick":
        return x, t, x_test, t_test, epochs
    print(f"profile quick: {min(len(x), QUICK_TRAIN)} of {len(x)} training images, "
          f"{min(len(x_test), QUICK_TEST)} of {len(x_test)} test images, "
          f"{min(epochs, QUICK_EPOCHS)} of {epochs} epochs")
    return (x[:QUICK_TRAIN], t[:QUICK_TRAIN], x_test[:QUICK_TEST], t_test[:QUICK_TEST],
            min(epochs, QUICK_EPOCHS))


# -- inference ---------------------------------------------------------------------------------
def _as_input(x):
    """One batch as the model's input: uint8 pixels → float32 in [0, 1]; floats unchanged."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255
    if x.dtype.kind == "f":
        return x
    raise ShenduError(f"images must be uint8 (0-255) or floating point in [0, 1], got {x.dtype}")


def input_batches(x, batch_size):
    """(start, batch) over images x, each batch as a model's input (`_as_input`)."""
    batch_size = _positive_int("batch_size", batch_size)
    for start in range(0, len(x), batch_size):
        yield start, _as_input(np.asarray(x[start:start + batch_size]))


def device_batches(model, x, batch_size):
    """The model's inputs batch by batch (`input_batches`), on its device."""
    K = device_of(model)
    for _, batch in input_batches(x, batch_size):
        yield K.array(batch)


def _check_data(x, t=None):
    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise ShenduError(f"expected a non-empty batch of images (N, ...), got shape {x.shape}")
    if t is not None:
        t = np.asarray(t)
        if t.ndim < 1 or len(t) != len(x):
            raise ShenduError(f"{len(x)} images but labels of shape {t.shape}: they must match")
    return x, t


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ShenduError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@contextmanager
def inference(model):
    """Eval mode (no dropout, BatchNorm's running statistics) and no caches for backward; the
    model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with nn.no_grad():
            yield
    finally:
        model.train(was_training)


def _on_device(model, images, K):
    """A batch of float images as the model takes it: on its device K, in its parameters' type
    (float64, float32, or 16 bits: see Module.astype)."""
    params = model.parameters()
    return K.array(images.astype(params[0].data.dtype, copy=False) if params else images)


def _outputs(model, images, K):
    """The model's outputs (NumPy) on a batch of float images, sent to its device K."""
    return kernels.to_host(model(_on_device(model, images, K)))


def score(model, x, t, loss_fn, batch_size=500):
    """The share of the labels t (counted by `loss_fn.counted`) that the model in eval mode gets
    right on images x (`loss_fn.correct`)."""
    K, right = device_of(model), 0
    with inference(model):
        for i, images in input_batches(x, batch_size):
            right += loss_fn.correct(_outputs(model, images, K), t[i:i + batch_size])
    return right / max(loss_fn.counted(t), 1)


def predict_proba(model, x, batch_size=500, tta=None, copies=4, seed=0):
    """Class probabilities (N, classes), float32: the softmax of the outputs in eval mode.

    `model` may be a list of models: an ensemble, whose members' probabilities are averaged.
    With `tta` (test-time augmentation: a transform from `shendu.augment`), each image's
    probabilities are averaged over the image itself and `copies` transformed views of it,
    drawn from `seed` (the same for every member, so members see the same views)."""
    members = list(model) if isinstance(model, (list, tuple)) else [model]
    if not members:
        raise ShenduError("an ensemble needs at least one model")
    x, _ = _check_data(x)
    copies = _positive_int("copies", copies) if tta is not None else 0
    batches = []
    for start, images in input_batches(x, batch_size):
        views = [images] + [tta(images, np.random.default_rng([seed, k, start]))
                            for k in range(copies)]
        total = None
        for member in members:
            K = device_of(member)
            with inference(member):
                for view in views:
                    p = nn.softmax(_outputs(member, view, K)).astype(np.float64)
                    if total is not None and p.shape != total.shape:
                        raise ShenduError(f"the ensemble's models disagree: one gives {p.shape[1]} "
                                          f"classes, another {total.shape[1]}")
                    total = p if total is None else total + p
        batches.append(total / (len(members) * len(views)))
    return np.concatenate(batches).astype(np.float32)


def evaluate(model, x, t, batch_size=500, tta=None, copies=4, seed=0):
    """Accuracy in [0, 1] on images x with integer labels t, of a model in eval mode, or an
    ensemble or test-time augmentation as in `predict_proba`. Labels may also be one per pixel
    (N, H, W) or per word (N, L) for a model with outputs (N, classes, H, W) or (N, classes, L):
    then it is the accuracy over all the labels, padding (-100) left out."""
    x, t = _check_data(x, t)
    if tta is None and not isinstance(model, (list, tuple)):
        return score(model, x, t, nn.CrossEntropyLoss(), batch_size)
    return float(np.mean(predict_proba(model, x, batch_size, tta, copies, seed).argmax(axis=1)
                         == t))


# -- training ----------------------------------------------------------------------------------
class Trainer:
    """Mini-batch training with per-epoch metrics, a progress bar and checkpoints.

    Each epoch visits every training image once, in an order drawn from a NumPy generator seeded
    by `seed` (so the same seed, and the same `shendu.manual_seed` for weights and dropout, repeat
    a run exactly). A scheduler is stepped once per epoch, or once per batch when it is a
    `OneCycleLR` or has `per_batch = True`.

    With `run_dir`, `fit` keeps the run directory current: after every epoch the model
    (`shendu.save`) and `metrics.csv`; and a full checkpoint (weights, optimizer and schedule
    state, every random generator, counters, history, the position in the epoch) when fit starts,
    every `checkpoint_every` steps, after every epoch and when it is interrupted.

    A non-finite loss stops training with a ShenduError naming the epoch and step, before that
    step changes anything (the last checkpoint stays as it was); with `skip_nonfinite=True` such
    steps are skipped instead (no update, BatchNorm statistics kept) and counted in the metric
    "skipped". `settings`, any JSON-safe dict, is stored in every checkpoint (the command line
    keeps its flags there). `precision="mixed"` trains a float32 model in mixed precision
    (`shendu.mixed`: float16 activations and gradients, float32 weights, dynamic loss scaling;
    a step whose scaled gradients overflow is not taken and counts as skipped); "float32"
    trains a float32 model as it is, and None any model in its own type. `augment` (see
    `shendu.augment`) transforms each training batch, with randomness that follows from `seed`,
    so augmented runs repeat and resume exactly too.

    The labels t may be one per image, or many (a class per pixel, a word per position, boxes
    coded per cell): `loss_fn` (cross-entropy by default) gives the loss and its gradient, and
    says how many labels count (`counted`) and how many the outputs get right (`correct`), for
    the accuracies. A model with `teacher_forced = True` (a captioner) is called as model(x, t).

    The loop is here; around it, each in its module: what a checkpoint holds and how it is
    restored (`shendu.checkpointing`), stop requests by signals (`shendu.interrupts`), and the
    rollback of a step whose loss is not finite (`shendu.rollback`).
    """

    def __init__(self, model, optimizer, loss_fn=None, batch_size=100, scheduler=None, seed=0,
                 run_dir=None, progress=True, checkpoint_every=None, skip_nonfinite=False,
                 settings=None, augment=None, precision=None):
        if augment is not None and not callable(augment):
            raise ShenduError(f"augment must be a transform (see shendu.augment), got {augment!r}")
        self.model, self.optimizer, self.augment = model, optimizer, augment
        self.loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
        self.batch_size = _positive_int("batch_size", batch_size)
        self.scheduler = scheduler
        self.per_batch = getattr(scheduler, "per_batch", False)
        self.rng = np.random.default_rng(seed)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.progress = progress
        self.checkpoint_every = (None if checkpoint_every is None
                                 else _positive_int("checkpoint_every", checkpoint_every))
        if self.checkpoint_every is not None and run_dir is None:
            raise ShenduError("checkpoint_every needs a run_dir to write the checkpoints into")
        self.skip_nonfinite = bool(skip_nonfinite)
        self.scaler = _scaler(model, precision)
        self.settings = settings
        self.history = []  # one dict of METRICS per epoch, across calls to fit
        self.global_step = 0  # steps taken (skipped ones included), across calls to fit
        self.stopped = None  # the signal that interrupted the last fit (signal.SIGINT, SIGTERM)
        self._fit = None  # {"start", "epochs"} of an unfinished fit call: the next one continues it
        self._epoch = None  # the epoch in progress: its order, position and sums so far
        self._data = None  # size and digest of the training set of the unfinished fit

    def fit(self, train, test, epochs=1, on_epoch=None, on_step=None, resume=None,
            target_accuracy=None):
        """Train for `epochs` epochs on `train = (x, t)`, measuring accuracy on `test = (x, t)`
        after each; returns the history, a list with a dict of METRICS per epoch ("elapsed" is
        the seconds of training and testing since the run began). With `target_accuracy`, the
        fit ends after the first epoch whose test accuracy reaches it. `on_epoch` is
        called with each epoch's metrics, `on_step` after each step with a dict of "epoch",
        "step", "steps" (in the epoch), "global_step" and "loss". In the quick profile, data and
        epochs are capped.

        Ctrl-C (SIGINT, a notebook's interrupt) or SIGTERM stops training at the end of the step
        under way, as does a KeyboardInterrupt raised by a callback: fit then writes a checkpoint
        (with a run_dir), prints how to continue, sets `self.stopped` to the signal and returns
        the history so far. The next fit continues the interrupted one: `epochs` counts from the
        epoch where that call began, so repeating the same call finishes it. `resume=RUN_DIR`
        first loads RUN_DIR's checkpoint into this trainer and continues the same way (writing
        checkpoints to this trainer's run_dir, or to RUN_DIR if it has none). Any error abandons
        the fit under way: only an interrupt leaves one to continue.
        """
        (x, t), (x_test, t_test) = _check_data(*train), _check_data(*test)
        epochs = _positive_int("epochs", epochs)
        if target_accuracy is not None and not 0 < target_accuracy <= 1:
            raise ShenduError(f"target_accuracy must be in (0, 1], got {target_accuracy!r}")
        x, t, x_test, t_test, epochs = _profile_caps(x, t, x_test, t_test, epochs)
        data = checkpointing.fingerprint(x, t)
        with ExitStack() as held:  # one writer at a time, in the folder read and the one written
            for folder in sorted({Path(d).resolve() for d in (self.run_dir, resume) if d}):
                held.enter_context(lock_run_dir(folder))
            start = self._begin_fit(data, epochs, resume)
            try:
                with stop_requests(self._stop_request()) as stop:
                    checkpointing.write(self)  # proves the run directory writable before any work
                    while (len(self.history) < start + epochs and stop.signum is None
                           and not _reached(self.history[start:], target_accuracy)):
                        self._train_epoch(x, t, start + epochs, stop, on_step)
                        if stop.signum is None:
                            metrics = self._end_epoch(len(x), x_test, t_test)
                            if on_epoch is not None:
                                stop.call(on_epoch, metrics)
                    if stop.signum is not None:
                        self.stopped = stop.signum
                        checkpointing.write(self)
            except BaseException:
                self._fit = self._epoch = None  # only an interrupt leaves a fit to continue
                raise
            if self.stopped is None:
                self._fit = None
            else:
                self._say(self._stop_message())
            return self.history

    def _stop_request(self):
        """What a stop request sets: a plain StopRequest (a distributed trainer's must agree)."""
        return StopRequest()

    def _say(self, message):
        """Tell the user something (on stderr, as the progress bar)."""
        print(message, file=sys.stderr, flush=True)

    def resume_hint(self):
        """How to continue after an interrupt (the command line says it its own way)."""
        hint = "Call fit again to continue"
        if self.run_dir is not None:
            hint += f", or from a new session with fit(..., resume={str(self.run_dir)!r})"
        return hint + "."

    # -- the loop: epochs, steps, metrics ---------------------------------------------------
    def _train_epoch(self, x, t, last, stop, on_step):
        """The steps left in the epoch under way (or a new one), until its end or a stop."""
        if self._epoch is None:
            self._epoch = self._new_epoch(len(x))
        e, steps = self._epoch, self._epoch_steps(len(x))
        K = device_of(self.model)
        self.model.train()
        with tqdm(total=len(x), initial=min(e["step"] * self.batch_size, len(x)),
                  desc=f"epoch {e['number']}/{last}", unit="img", disable=not self.progress,
                  leave=True) as bar:
            while e["step"] < steps and stop.signum is None:
                loss = self._step(x, t, e, K)
                bar.update(min(e["step"] * self.batch_size, len(x)) - bar.n)
                if e["used"]:
                    bar.set_postfix(loss=f"{e['loss_sum'] / e['used']:.4f}", refresh=False)
                if self.checkpoint_every and self.global_step % self.checkpoint_every == 0:
                    checkpointing.write(self)
                if on_step is not None:
                    stop.call(on_step, {"epoch": e["number"], "step": e["step"], "steps": steps,
                                        "global_step": self.global_step, "loss": loss})

    def _new_epoch(self, n):
        start = self.rng.bit_generator.state  # saved, so a resumed epoch redraws the same order
        order, augment_seed = self._epoch_draws(self.rng, n)
        return {"number": len(self.history) + 1, "rng_start": start, "order": order,
                "augment_seed": augment_seed, "step": 0, "loss_sum": 0.0, "correct": 0,
                "labels": 0, "used": 0, "skipped": 0, "lr": self.optimizer.lr, "time": 0.0}

    def _epoch_draws(self, generator, n):
        """An epoch's order of the images and the seed of its augmentations. Each step augments
        with a generator made from (seed, step), so a resumed epoch repeats its steps exactly;
        without augmentation nothing more is drawn, so such runs keep their data order."""
        order = generator.permutation(n)
        return order, None if self.augment is None else int(generator.integers(2 ** 63))

    def _epoch_steps(self, n):
        """The steps in an epoch on n images (the last batch may be smaller)."""
        return _steps(n, self.batch_size)

    def _step(self, x, t, e, K):
        """One step on the epoch's next batch, the model's device being K; returns its loss."""
        began = time.perf_counter()
        batch = e["order"][e["step"] * self.batch_size:(e["step"] + 1) * self.batch_size]
        rollback = Rollback(self.model, K)  # the forward pass moves BatchNorm's statistics
        images = _as_input(x[batch])
        if self.augment is not None:
            images = self.augment(images, np.random.default_rng([e["augment_seed"], e["step"]]))
        loss, correct = self._gradient(images, t[batch], K)
        labels = self.loss_fn.counted(t[batch])
        finite = math.isfinite(loss)
        if finite and (self.scaler is None or self.scaler.unscale(self.model.parameters())):
            self.optimizer.step()
            e["loss_sum"] += loss * len(batch)
            e["correct"] += correct
            e["labels"] += labels
            e["used"] += len(batch)
        else:  # a non-finite loss, or in mixed precision gradients that overflowed float16
            rollback.undo()  # a step that is not taken must not move them either
            if not finite and not self.skip_nonfinite:
                raise diverged(loss, e["step"] + 1, e["number"], self.run_dir)
            e["skipped"] += 1
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()  # a schedule follows the data, skipped steps included
        e["step"] += 1
        self.global_step += 1
        e["time"] += time.perf_counter() - began
        return loss

    def _gradient(self, images, t, K):
        """The batch's mean loss and number of right answers; afterwards, if the loss is finite,
        every parameter's grad holds its gradient (in mixed precision, the scaled one)."""
        if self.scaler is not None:
            loss, logits = self.scaler.gradient(self.model, self.loss_fn, images, t)
        else:
            logits = (self.model(_on_device(self.model, images, K), t) if self.model.teacher_forced
                      else self.model(_on_device(self.model, images, K)))
            loss = self.loss_fn(logits, t)
            if math.isfinite(loss):
                nn.data_backward(self.model, self.loss_fn.backward())  # no dL/dx for the images
        return loss, self.loss_fn.correct(logits, t)

    def _accuracy(self, x_test, t_test):
        return score(self.model, x_test, t_test, self.loss_fn)

    def _end_epoch(self, n, x_test, t_test):
        e = self._epoch
        began = time.perf_counter()
        test_acc = self._accuracy(x_test, t_test)
        before = self.history[-1]["elapsed"] if self.history else 0.0
        metrics = {"epoch": e["number"],
                   "train_loss": e["loss_sum"] / e["used"] if e["used"] else math.nan,
                   "train_acc": e["correct"] / e["labels"] if e["labels"] else math.nan,
                   "test_acc": test_acc, "lr": e["lr"],
                   "epoch_time": e["time"],  # seconds in steps, across interruptions
                   "images_per_s": n / e["time"] if e["time"] > 0 else math.nan,
                   "skipped": e["skipped"],
                   "elapsed": before + e["time"] + time.perf_counter() - began}
        if self.scheduler is not None and not self.per_batch:
            self.scheduler.step()
        self.history.append(metrics)
        self._epoch = None
        if self.run_dir is not None:
            self._save_epoch()
        return metrics

    # -- around the loop --------------------------------------------------------------------
    def _begin_fit(self, data, epochs, resume):
        """Begin a fit of `epochs` epochs on the training set with fingerprint `data`, or continue
        the interrupted one, loaded first from RUN_DIR `resume` if given; returns the number of
        epochs in the history when the fit began."""
        if resume is not None:
            checkpointing.restore(self, Path(resume), data)
            self.run_dir = self.run_dir or Path(resume)
        elif self._fit is not None and data != self._data:
            raise ShenduError("this trainer's interrupted fit was on other training data: "
                              "continue it with the same data, or make a new Trainer")
        start = len(self.history) if self._fit is None else self._fit["start"]
        reached = len(self.history) + (self._epoch is not None)
        if start + epochs < reached:
            raise ShenduError(f"the fit being continued began after epoch {start} and has "
                              f"reached epoch {reached}: ask for epochs={reached - start} "
                              "or more")
        self._fit, self._data, self.stopped = {"start": start, "epochs": epochs}, data, None
        return start

    def _save_epoch(self):
        """Bring the run directory up to date after an epoch: the model, metrics.csv and, last,
        the checkpoint, so a crash before it redoes this epoch end."""
        state = checkpointing.checked_state(self)  # first: diverged weights replace no file
        save(self.model, self.run_dir)
        rows = [METRICS] + [[repr(h[k]) for k in METRICS] for h in self.history]
        path = self.run_dir / "metrics.csv"
        try:  # rewritten whole and atomically: always a complete table, even after a crash
            write_atomic({path: "".join(",".join(row) + "\n" for row in rows).encode()})
        except OSError as e:
            raise CheckpointError(f"could not write {path}: {e}") from None
        write_checkpoint(self.run_dir, *state)

    def _stop_message(self):
        e, name = self._epoch, signal.Signals(self.stopped).name
        where = (f"in epoch {e['number']} after step {e['step']} of "
                 f"{self._epoch_steps(self._data['train_size'])}" if e is not None
                 else f"after epoch {len(self.history)}")
        saved = f"; checkpoint saved in {self.run_dir}" if self.run_dir is not None else ""
        return f"Training interrupted ({name}) {where}{saved}. {self.resume_hint()}"


def _scaler(model, precision):
    """The loss scaler of a Trainer training `model` in `precision` (None without one)."""
    if precision not in PRECISIONS:
        raise ShenduError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got "
                          f"{precision!r}")
    params = model.parameters()
    if precision is None or not params:
        return None
    if params[0].data.dtype != np.float32:
        raise ShenduError(f"precision {precision!r} trains a float32 model, and this one is "
                          f"{params[0].data.dtype}: call .float() first, or precision=None")
    if precision == "float32":
        return None
    if not isinstance(model, nn.Sequential):
        raise ShenduError(f"mixed precision trains the classifiers (a Sequential of layers), not "
                          f"a {type(model).__name__}")
    return mixed.LossScaler()


def _reached(history, target):
    """Whether the fit with this history (its own epochs) has reached its target accuracy: the
    loop's condition, so a resumed fit that had already reached it trains no further."""
    return target is not None and bool(history) and history[-1]["test_acc"] >= target


def _steps(n, batch_size):
    return -(-n // batch_size)
