"""A Trainer's checkpoint: what `fit` needs to continue a run exactly, checked before it is
written, and restored all or nothing.

It holds the weights and buffers, the optimizer's and the schedule's state, every random
generator, the counters, the history, the training set's fingerprint and the position in the
epoch under way. That epoch's order is not stored: it is redrawn from the data generator's state
at the epoch's start. The files (checkpoint.json and the arrays it names, replaced atomically)
are written and read by io's `write_checkpoint` and `read_checkpoint`.

The functions here take the Trainer and read or set its attributes, the private ones included:
the unfinished fit, the epoch under way and the training set's fingerprint.
"""
import hashlib

import numpy as np

from . import rng
from .errors import ShenduError
from .io import (CHECKPOINT, CheckpointError, check_json, read_checkpoint, remove_temporaries,
                 write_checkpoint)

# What a checkpoint's JSON holds (see `state`); checked field by field before use.
FIELDS = {
    "format": str, "version": int, "shendu_version": str, "arrays": str, "sha256": str,
    "model": (dict, None), "optimizer": dict, "scheduler": (dict, None),
    "scaler": (None, {"scale": float, "interval": int, "clean": int}),
    "trainer": {"batch_size": int, "checkpoint_every": (int, None), "skip_nonfinite": bool,
                "settings": (dict, None), "augment": (str, None)},
    "data": {"train_size": int, "train_sha256": str},
    "fit": {"start": int, "epochs": int},
    "global_step": int,
    "rng": {"data": dict, "shendu": dict},
    "epoch": (None, {"number": int, "rng_start": dict, "step": int, "loss_sum": float,
                     "correct": int, "labels": int, "used": int, "skipped": int, "lr": float, "time": float}),
    "history": [{"epoch": int, "train_loss": float, "train_acc": float, "test_acc": float,
                 "lr": float, "epoch_time": float, "images_per_s": float, "skipped": int,
                 "elapsed": float}],
}


def fingerprint(x, t):
    """The training set's size and SHA-256 (shapes, dtypes, bytes): resuming on other data would
    silently change the order and the steps, so it is refused."""
    digest = hashlib.sha256()
    for a in (x, t):
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(memoryview(a).cast("B"))
    return {"train_size": len(x), "train_sha256": digest.hexdigest()}


def write(trainer):
    """Write the trainer's checkpoint into its run directory, if it has one."""
    if trainer.run_dir is not None:
        write_checkpoint(trainer.run_dir, *checked_state(trainer))


def checked_state(trainer):
    """The state to save, refused if a weight or moment is not finite (an update can diverge
    before any loss does): a checkpoint on disk is always one worth resuming from."""
    meta, arrays = state(trainer)
    bad = [name for name, a in arrays.items() if not np.isfinite(a).all()]
    if bad:
        raise ShenduError(f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''} became "
                          f"non-finite by step {trainer.global_step}: training diverged, and the "
                          f"last checkpoint in {trainer.run_dir} is unchanged. Lower the learning "
                          "rate")
    return meta, arrays


def state(trainer):
    """(meta, arrays): everything fit needs to continue exactly, as a checkpoint holds it."""
    optimizer = trainer.optimizer.state_dict()
    arrays = {**{f"model.{k}": a for k, a in trainer.model.state_dict().items()},
              **{f"optimizer.{k}": a for k, a in optimizer.pop("buffers").items()}}
    meta = {
        "model": getattr(trainer.model, "config", None),
        "optimizer": optimizer,
        "scheduler": None if trainer.scheduler is None else trainer.scheduler.state_dict(),
        "scaler": None if trainer.scaler is None else trainer.scaler.state_dict(),
        "trainer": {"batch_size": trainer.batch_size,
                    "checkpoint_every": trainer.checkpoint_every,
                    "skip_nonfinite": trainer.skip_nonfinite, "settings": trainer.settings,
                    "augment": _augment_name(trainer)},
        "data": trainer._data,
        "fit": trainer._fit,
        "global_step": trainer.global_step,
        "rng": {"data": trainer.rng.bit_generator.state, "shendu": rng.get_state()},
        "epoch": (None if trainer._epoch is None  # the order is redrawn from rng_start
                  else {k: v for k, v in trainer._epoch.items()
                        if k not in ("order", "augment_seed")}),
        "history": trainer.history,
    }
    return meta, arrays


def restore(trainer, run_dir, data):
    """Load run_dir's checkpoint into the trainer, to continue on the training set whose
    fingerprint is `data`: all of it, or (CheckpointError) none."""
    meta, arrays = read_checkpoint(run_dir)
    meta.setdefault("scaler", None)  # checkpoints from before mixed precision
    if isinstance(meta.get("epoch"), dict):  # from before labels per pixel or word
        meta["epoch"].setdefault("labels", meta["epoch"].get("used"))
    check_json(meta, FIELDS, str(run_dir / CHECKPOINT))
    problem = _mismatch(trainer, meta, data)
    if problem:
        raise CheckpointError(f"cannot resume from {run_dir}: {problem}")
    backup = state(trainer)
    try:
        apply(trainer, meta, arrays)
    except ShenduError as err:
        apply(trainer, *backup)
        raise CheckpointError(f"cannot resume from {run_dir}: {err}") from None
    remove_temporaries(run_dir)


def _mismatch(trainer, meta, data):
    """Why the checkpoint's meta cannot continue in this trainer on this data, or None."""
    saved, fit, e = meta["data"], meta["fit"], meta["epoch"]
    if saved != data:
        return (f"it was trained on {saved['train_size']} images with another digest, not on "
                f"these {data['train_size']}: resume with the same training data")
    if meta["trainer"]["batch_size"] != trainer.batch_size:
        return (f"it was trained with batch size {meta['trainer']['batch_size']}, this trainer "
                f"has {trainer.batch_size}")
    if meta["trainer"]["augment"] != _augment_name(trainer):
        return (f"it was trained with augmentation {meta['trainer']['augment']}, this trainer "
                f"has {trainer.augment!r}")
    if (meta["scheduler"] is None) != (trainer.scheduler is None):
        return ("it was trained " + ("without" if meta["scheduler"] is None else "with")
                + " a learning-rate schedule, this trainer has "
                + ("one" if trainer.scheduler is not None else "none"))
    if (meta["scaler"] is None) != (trainer.scaler is None):
        return ("it was trained " + ("in the model's own type" if meta["scaler"] is None
                                     else "in mixed precision")
                + ", this trainer trains " + ("in mixed precision" if trainer.scaler is not None
                                              else "in the model's own type"))
    if not (0 <= fit["start"] <= len(meta["history"]) and fit["epochs"] >= 1
            and meta["global_step"] >= 0 and (e is None or (
                e["number"] == len(meta["history"]) + 1
                and 0 <= e["step"] <= trainer._epoch_steps(data["train_size"])))):
        return "its counters contradict each other"
    return None


def apply(trainer, meta, arrays):
    """Set the trainer's state from (meta, arrays). A part that does not fit raises ShenduError,
    maybe after others were set: `restore` then puts the old state back."""
    parts = {"model.": {}, "optimizer.": {}}
    for key, a in arrays.items():
        prefix = key[:key.find(".") + 1]
        if prefix not in parts:
            raise ShenduError(f"unexpected array {key!r}")
        parts[prefix][key[len(prefix):]] = a
    trainer.model.load_state_dict(parts["model."])
    trainer.optimizer.load_state_dict({**meta["optimizer"], "buffers": parts["optimizer."]})
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(meta["scheduler"])
    if trainer.scaler is not None:
        trainer.scaler.load_state_dict(meta["scaler"])
    trainer.rng = rng.from_state(meta["rng"]["data"])
    rng.set_state(meta["rng"]["shendu"])
    e = meta["epoch"]
    if e is not None:
        order, augment_seed = trainer._epoch_draws(rng.from_state(e["rng_start"]),
                                                   meta["data"]["train_size"])
        e = {**e, "order": order, "augment_seed": augment_seed}
    trainer._epoch = e
    trainer.history = [dict(row) for row in meta["history"]]
    trainer._fit = None if meta["fit"] is None else dict(meta["fit"])  # None: from a backup
    trainer._data, trainer.global_step = meta["data"], meta["global_step"]


def _augment_name(trainer):
    """The augmentation as checkpoints record it (its repr: the transforms and strengths)."""
    return None if trainer.augment is None else repr(trainer.augment)
