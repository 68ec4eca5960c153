"""Training and inference loops: the Trainer, `evaluate`, `predict_proba` and the run profile.

    shendu.manual_seed(0)                       # weights and dropout: the caller's business
    model = shendu.models.get("deepconvnet")
    trainer = shendu.Trainer(model, shendu.optim.Adam(model.parameters()), run_dir="runs/demo")
    history = trainer.fit((x_train, t_train), (x_test, t_test), epochs=20)
    history[-1]["test_acc"]

Images may be uint8 (0-255, as the datasets keep them: each batch becomes float32 / 255 when it is
used, so the whole set never exists in float) or floating point (used as they are).
"""
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import nn, optim
from .errors import ShenduError
from .io import save, write_atomic

__all__ = ["Trainer", "evaluate", "predict_proba", "profile", "METRICS"]

METRICS = ["epoch", "train_loss", "train_acc", "test_acc", "lr", "epoch_time", "images_per_s"]
QUICK_TRAIN, QUICK_TEST, QUICK_EPOCHS = 2000, 1000, 2  # the `quick` profile's caps


def profile():
    """The run profile from $SHENDU_PROFILE: "full" (default, the real experiment) or "quick"
    (small subsets, so every notebook runs in seconds in tests and CI)."""
    value = os.environ.get("SHENDU_PROFILE", "").strip().lower() or "full"
    if value not in ("full", "quick"):
        raise ShenduError(f"SHENDU_PROFILE must be 'full' or 'quick', got {value!r}")
    return value


# -- inference ---------------------------------------------------------------------------------
def _as_input(x):
    """One batch as the model's input: uint8 pixels → float32 in [0, 1]; floats unchanged."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255
    if x.dtype.kind == "f":
        return x
    raise ShenduError(f"images must be uint8 (0-255) or floating point in [0, 1], got {x.dtype}")


def _check_data(x, t=None):
    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise ShenduError(f"expected a non-empty batch of images (N, ...), got shape {x.shape}")
    if t is not None:
        t = np.asarray(t)
        if t.shape != (len(x),):
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


def _logits(model, x, batch_size):
    x, _ = _check_data(x)
    batch_size = _positive_int("batch_size", batch_size)
    with inference(model):
        return np.concatenate([model(_as_input(x[i:i + batch_size]))
                               for i in range(0, len(x), batch_size)])


def predict_proba(model, x, batch_size=500):
    """Class probabilities (N, classes), float32: the softmax of the outputs in eval mode."""
    return nn.softmax(_logits(model, x, batch_size)).astype(np.float32, copy=False)


def evaluate(model, x, t, batch_size=500):
    """Accuracy in [0, 1] of the model (in eval mode) on images x with integer labels t."""
    x, t = _check_data(x, t)
    return float(np.mean(_logits(model, x, batch_size).argmax(axis=1) == t))


# -- training ----------------------------------------------------------------------------------
class Trainer:
    """Mini-batch training with per-epoch metrics, a progress bar and checkpoints.

    Each epoch visits every training image once, in an order drawn from a NumPy generator seeded
    by `seed` (so the same seed, and the same `shendu.manual_seed` for weights and dropout, repeat
    a run exactly). A scheduler is stepped once per epoch, or once per batch when it is a
    `OneCycleLR` or has `per_batch = True`. With `run_dir`, the model (`shendu.save`) and
    `metrics.csv` are written after every epoch, so an interrupted run keeps its last epoch.
    Optimizer state is not saved: a checkpoint is for inference, not for resuming.
    """

    def __init__(self, model, optimizer, loss_fn=None, batch_size=100, scheduler=None, seed=0,
                 run_dir=None, progress=True):
        self.model, self.optimizer = model, optimizer
        self.loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
        self.batch_size = _positive_int("batch_size", batch_size)
        self.scheduler = scheduler
        self.per_batch = getattr(scheduler, "per_batch", False)
        self.rng = np.random.default_rng(seed)
        self.run_dir = run_dir
        self.progress = progress
        self.history = []  # one dict of METRICS per epoch, across calls to fit

    def fit(self, train, test, epochs=1, on_epoch=None):
        """Train for `epochs` epochs on `train = (x, t)`, measuring accuracy on `test = (x, t)`
        after each. `on_epoch(metrics)` is called after each epoch. Returns the history: a list
        with a dict of METRICS per epoch. In the quick profile, data and epochs are capped."""
        (x, t), (x_test, t_test) = _check_data(*train), _check_data(*test)
        epochs = _positive_int("epochs", epochs)
        if profile() == "quick":
            print(f"SHENDU_PROFILE=quick: {min(len(x), QUICK_TRAIN)} of {len(x)} training images, "
                  f"{min(len(x_test), QUICK_TEST)} of {len(x_test)} test images, "
                  f"{min(epochs, QUICK_EPOCHS)} of {epochs} epochs")
            x, t, epochs = x[:QUICK_TRAIN], t[:QUICK_TRAIN], min(epochs, QUICK_EPOCHS)
            x_test, t_test = x_test[:QUICK_TEST], t_test[:QUICK_TEST]
        last = len(self.history) + epochs
        for _ in range(epochs):
            metrics = self._train_epoch(x, t, last)
            metrics["test_acc"] = evaluate(self.model, x_test, t_test)
            self.history.append(metrics)
            if self.run_dir is not None:
                self._checkpoint()
            if on_epoch is not None:
                on_epoch(metrics)
        return self.history

    def _train_epoch(self, x, t, last):
        epoch = len(self.history) + 1
        lr = self.optimizer.lr  # as the epoch starts (a one-cycle schedule moves it every batch)
        order = self.rng.permutation(len(x))
        loss_sum, correct = 0.0, 0
        self.model.train()
        start = time.perf_counter()
        with tqdm(total=len(x), desc=f"epoch {epoch}/{last}",
                  unit="img", disable=not self.progress, leave=True) as bar:
            for seen in range(0, len(x), self.batch_size):
                batch = order[seen:seen + self.batch_size]
                logits = self.model(_as_input(x[batch]))
                loss = self.loss_fn(logits, t[batch])
                if not math.isfinite(loss):
                    raise ShenduError(f"the loss became {loss} in epoch {epoch}: training diverged"
                                      " (try a lower learning rate)")
                loss_sum += loss * len(batch)
                correct += int(np.count_nonzero(logits.argmax(axis=1) == t[batch]))
                dlogits = self.loss_fn.backward()
                if getattr(self.model, "accepts_input_grad", False):  # no dL/dx for data
                    self.model.backward(dlogits, input_grad=False)
                else:
                    self.model.backward(dlogits)
                self.optimizer.step()
                if self.scheduler is not None and self.per_batch:
                    self.scheduler.step()
                bar.set_postfix(loss=f"{loss_sum / (seen + len(batch)):.4f}", refresh=False)
                bar.update(len(batch))
        seconds = time.perf_counter() - start
        if self.scheduler is not None and not self.per_batch:
            self.scheduler.step()
        return {"epoch": epoch, "train_loss": loss_sum / len(x), "train_acc": correct / len(x),
                "test_acc": None, "lr": lr, "epoch_time": seconds,  # test_acc: fit measures it
                "images_per_s": len(x) / seconds}

    def _checkpoint(self):
        save(self.model, self.run_dir)
        rows = [METRICS] + [[repr(h[k]) for k in METRICS] for h in self.history]
        path = Path(self.run_dir) / "metrics.csv"
        try:  # rewritten whole and atomically: always a complete table, even after a crash
            write_atomic({path: "".join(",".join(row) + "\n" for row in rows).encode()})
        except OSError as e:
            raise ShenduError(f"could not write {path}: {e}") from None
