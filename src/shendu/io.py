"""Checkpoints: a run directory holds `model.safetensors` (the weights) and `config.json` (how to
rebuild the model), so a model is saved and loaded without pickle, and so without running code.

    shendu.save(model, "runs/deepconvnet-1")
    model = shendu.load("runs/deepconvnet-1")      # rebuilt, weights set, in eval mode

A training run also keeps a full checkpoint to resume from (`write_checkpoint`, `read_checkpoint`):
`checkpoint.json` (counters, settings, generator states, history: plain JSON) names the file
`checkpoint-<digest>.safetensors` holding the arrays (weights, optimizer state) and its SHA-256.

Files are replaced atomically: a save that fails part-way leaves the previous checkpoint as it was.
Loading checks everything before it trusts it; any problem is one `CheckpointError` saying what.
One process at a time writes a run directory (`lock_run_dir`).
"""
import hashlib
import json
import os
import re
import struct
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import filelock
import ml_dtypes
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from . import models, rng
from .datasets import cache_dir
from .errors import ShenduError

__all__ = ["CheckpointError", "save", "load", "lock_run_dir", "write_atomic", "write_checkpoint",
           "read_checkpoint", "remove_temporaries", "check_json"]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CHECKPOINT = "checkpoint.json"
_FORMAT, _VERSION = "shendu-checkpoint", 2  # 2: history has "elapsed"
_JSON_ERRORS = (UnicodeDecodeError, ValueError, RecursionError)  # RecursionError: [[[[...]]]]
_FLOAT_DTYPES = {"F16", "F32", "F64"}  # safetensors' names; weights are always floating point
_FREE_DRAWS = 1_000_000  # weights a config may describe beyond its file's (16 MB at most)


class CheckpointError(ShenduError):
    """A run directory cannot be saved or loaded; the message says which file and why."""


# -- one writer --------------------------------------------------------------------------------
_HELD = {}  # run directory (resolved) -> [its FileLock, how many holders in this process]


@contextmanager
def lock_run_dir(run_dir):
    """Hold `run_dir` for this process while it writes there. Another process that asks for it
    (a second `shendu train --out`, a notebook, an experiment) gets a ShenduError at once, instead
    of two runs mixing their files. Reentrant within a process.

    The lock is the operating system's (flock, or LockFileEx on Windows, through `filelock`), so
    it ends with its process however that ends: a killed run leaves nothing to clean up. Its file
    lies in the cache (`<cache>/locks/`, named by the directory's resolved path; in the temporary
    folder where the cache is read-only), not in the run directory, which holds only the run."""
    key = Path(run_dir).resolve()
    held = _HELD.get(key)
    if held is None:
        lock = filelock.FileLock(_lock_folder() / f"{_digest(str(key))}.lock", timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise ShenduError(f"{run_dir} is in use by another process (a run writing into it): "
                              "wait for it to end, or choose another run directory") from None
        except OSError as e:
            raise CheckpointError(f"could not take the lock of {run_dir}: {e}") from None
        held = _HELD[key] = [lock, 0]
    held[1] += 1
    try:
        yield
    finally:
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            held[0].release()


def _lock_folder():
    """<cache>/locks, or a folder of this user's in the temporary folder where the cache cannot
    be written (a read-only home)."""
    for folder in (cache_dir() / "locks",
                   Path(tempfile.gettempdir()) / f"shendu-locks-{_digest(str(Path.home()))}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        except OSError:
            continue
    raise CheckpointError("no folder to keep run-directory locks in: set SHENDU_CACHE to a "
                          "writable folder")


def _digest(text):
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- saving ------------------------------------------------------------------------------------
def save(model, run_dir):
    """Write `model.safetensors` and `config.json` into `run_dir` (created if needed).

    The model must come from `shendu.models.get` (or a registered builder): its `config` dict is
    what `load` rebuilds it from. Weights stored in bfloat16 are written as float32, which holds
    every bfloat16 value (safetensors' NumPy reader has no bfloat16); `load` builds a float32
    model either way.
    """
    from . import __version__

    run_dir = Path(run_dir)
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"cannot save a {type(model).__name__} without a `config`: build "
                              "models with shendu.models.get so they can be rebuilt on load")
    state = {name: a.astype(np.float32) if a.dtype == BFLOAT16 else a
             for name, a in model.state_dict().items()}
    _floats_only(state)
    try:
        config_text = json.dumps({**config, "shendu_version": __version__}, indent=2) + "\n"
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the model's config cannot be written as JSON: {e}") from None
    weights = _st_save({name: np.ascontiguousarray(a) for name, a in state.items()})
    with lock_run_dir(run_dir):
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic({run_dir / WEIGHTS: weights, run_dir / CONFIG: config_text.encode()})
        except OSError as e:
            raise CheckpointError(f"could not save the model in {run_dir}: {e}") from None


BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _floats_only(arrays):
    not_float = [f"{name} ({a.dtype})" for name, a in arrays.items() if a.dtype.kind != "f"]
    if not_float:
        raise CheckpointError("checkpoints hold floating-point tensors only, not: "
                              + ", ".join(not_float))


def write_atomic(files):
    """Write each `path: bytes` to a temporary file beside it, fsync, then rename over the target.

    A rename within a directory is atomic, so readers see the old file or the new one, never half
    of one; all files are written before any is renamed, which keeps the window in which a crash
    could pair new weights with an old config as short as it can be. The directory is synced last,
    so the renames survive a power cut too. Raises OSError.
    """
    temps = {}
    try:
        for path, data in files.items():
            temps[path] = tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
            # O_EXCL: never follow or clobber something already there; mode 0o666 honours umask.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in temps.items():
            os.replace(tmp, path)
        for folder in {path.parent for path in temps}:
            _fsync_dir(folder)
    finally:
        for tmp in temps.values():
            try:
                os.unlink(tmp)  # gone already after a successful rename
            except FileNotFoundError:
                pass


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory (and needs no directory sync)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(run_dir, meta, arrays):
    """Write a full checkpoint into `run_dir`: `arrays` (name → floating-point array) and `meta`
    (a JSON-safe dict), so that the previous checkpoint stays whole until the new one is.

    The arrays go to a new file named by their digest, then `checkpoint.json` (meta, that name and
    its SHA-256) replaces the old one in a single rename: a crash at any moment leaves the old pair
    or the new pair. Files no longer named are removed afterwards. Raises CheckpointError.
    """
    from . import __version__

    run_dir = Path(run_dir)
    _floats_only(arrays)
    data = _st_save({name: np.ascontiguousarray(a) for name, a in arrays.items()})
    digest = hashlib.sha256(data).hexdigest()
    name = f"checkpoint-{digest[:16]}.safetensors"
    try:
        text = json.dumps({"format": _FORMAT, "version": _VERSION, "shendu_version": __version__,
                           "arrays": name, "sha256": digest, **meta}, indent=1) + "\n"
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the training state cannot be written as JSON: {e}") from None
    with lock_run_dir(run_dir):
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic({run_dir / name: data})
            write_atomic({run_dir / CHECKPOINT: text.encode()})
        except OSError as e:
            raise CheckpointError(f"could not write a checkpoint in {run_dir}: {e}") from None
        for old in run_dir.glob("checkpoint-*.safetensors"):
            if old.name != name:
                try:
                    old.unlink()
                except OSError:  # harmless: nothing names it, and the next checkpoint tries again
                    pass


def read_checkpoint(run_dir):
    """The full checkpoint in `run_dir` as (meta, arrays), checked: the JSON is an object of
    this format and version, the arrays file it names is whole (its SHA-256 matches) and a valid
    safetensors file of floating-point tensors. What the fields mean is the reader's to check."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    meta = _read_json(path, f"{run_dir} holds no checkpoint to resume from ({CHECKPOINT} is "
                            "missing)")
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a shendu checkpoint")
    if meta.get("version") != _VERSION:
        raise CheckpointError(f"{path} has version {meta.get('version')!r}; this shendu reads "
                              f"version {_VERSION}")
    digest, name = meta.get("sha256"), meta.get("arrays")
    if not (isinstance(digest, str) and re.fullmatch("[0-9a-f]{64}", digest)
            and name == f"checkpoint-{digest[:16]}.safetensors"):
        raise CheckpointError(f"{path} does not name a valid arrays file: "
                              f"{str(name)[:100]!r} with SHA-256 {str(digest)[:100]!r}")
    return meta, _read_weights(run_dir / name, sha256=digest)


def remove_temporaries(run_dir):
    """Delete the temporary files that `write_atomic` leaves behind when its process is killed
    mid-write. Only for a run directory no other process writes to (as when resuming it)."""
    for path in Path(run_dir).glob(".*.tmp"):
        if re.fullmatch(r"\..+\.[0-9a-f]{12}\.tmp", path.name):
            try:
                path.unlink()
            except OSError:  # left for next time: a stray temporary file harms nothing
                pass


def check_json(value, kind, what):
    """Check that JSON `value` has the shape `kind`, or raise CheckpointError naming `what` and
    the field. A kind is a type (float: any number; int: a whole number, not a bool), None, a
    tuple of alternatives, a dict of fields (exactly these names) or a one-item list (a list of
    such items)."""
    problem = _mismatch(value, kind, "")
    if problem:
        raise CheckpointError(f"{what}: {problem}")


def _mismatch(value, kind, where):
    """Where and how `value` differs from `kind`, or None."""
    if isinstance(kind, tuple):
        problems = [_mismatch(value, k, where) for k in kind]
        return None if None in problems else min(problems, key=len)
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            return f"{where or 'it'} is not an object"
        names = set(value) ^ set(kind)
        if names:
            return f"{where + '.' if where else ''}{sorted(names)[0]} is missing or unexpected"
        problems = [_mismatch(value[k], k_kind, f"{where}.{k}" if where else k)
                    for k, k_kind in kind.items()]
        return next((p for p in problems if p), None)
    if isinstance(kind, list):
        if not isinstance(value, list):
            return f"{where} is not a list"
        problems = (_mismatch(v, kind[0], f"{where}[{i}]") for i, v in enumerate(value))
        return next((p for p in problems if p), None)
    if kind is None:
        ok = value is None
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if ok:
        return None
    shown = repr(value)[:40] if isinstance(value, (int, float, str)) else _kind_name(type(value))
    return f"{where} is {shown}, not {_kind_name(kind)}"


def _kind_name(kind):
    names = {None: "null", type(None): "null", float: "a number", int: "an integer",
             str: "a string", bool: "true or false", dict: "an object", list: "a list"}
    return names.get(kind, str(kind))


# -- loading -----------------------------------------------------------------------------------
def load(run_dir):
    """Rebuild the model saved in `run_dir`, set its weights (strictly), return it in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run directory"
                              + (" (it is a file)" if run_dir.exists() else " (it does not exist)"))
    if not (run_dir / WEIGHTS).exists() and (run_dir / CHECKPOINT).exists():
        raise CheckpointError(f"{run_dir} holds no trained model yet: its training stopped before "
                              f"the end of its first epoch (continue it with `shendu train "
                              f"--resume {run_dir}` or Trainer.fit(..., resume=...))")
    config = _read_config(run_dir / CONFIG)
    path = run_dir / WEIGHTS
    state = _read_weights(path)
    # Building draws the model's initial weights. A model the weights fit needs no more numbers
    # than the file holds; up to _FREE_DRAWS more lets a mismatch be described by name (weights
    # of another model), and the bound stops a lying config.json from allocating gigabytes.
    with rng.limit(sum(a.size for a in state.values()) + _FREE_DRAWS,
                   f"{CONFIG} describes a model far larger than the weights in {WEIGHTS}"):
        model = _build(config)
    try:
        model.load_state_dict(state, strict=True)
    except ShenduError as e:  # names and shapes listed by load_state_dict
        raise CheckpointError(f"{path} does not hold the weights of the {model.config['model']} "
                              f"described by {CONFIG}: {e}") from None
    return model.eval()


def _read_json(path, missing):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(missing) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    except _JSON_ERRORS as e:
        raise CheckpointError(f"{path} is not valid JSON: {type(e).__name__}: "
                              f"{str(e)[:200]}") from None


def _read_config(path):
    config = _read_json(path, f"{path} is missing: the run directory is incomplete")
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise CheckpointError(f"{path} must be a JSON object with a \"model\" name, "
                              f"got {json.dumps(config)[:200]}")
    return config


def _build(config):
    kwargs = {k: v for k, v in config.items() if k not in ("model", "shendu_version")}
    try:
        return models.get(config["model"], **kwargs)
    except Exception as e:  # noqa: BLE001 -- the arguments come from a file: anything can fail
        raise CheckpointError(f"{CONFIG}: cannot build the model {config['model']!r} it "
                              f"describes: {type(e).__name__}: {e}") from None


def _read_weights(path, sha256=None):
    """Read a safetensors file: an 8-byte little-endian header length, a JSON header, then the
    tensor bytes. The file is read once (nothing is allocated beyond its size); its SHA-256 is
    compared when given; sizes and dtypes are checked against the file before the tensors are
    decoded."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the run directory holds no weights") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    size = len(data)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"{path} is corrupted: its SHA-256 differs from the one recorded in "
                              f"{CHECKPOINT}")
    if size == 0:
        raise CheckpointError(f"{path} is empty")
    if size < 8:
        raise CheckpointError(f"{path} is truncated ({size} bytes): not a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > size:
        raise CheckpointError(f"{path} is truncated or not a safetensors file: its header "
                              f"claims {n} bytes but the file has {size}")
    _check_header(path, data[8:8 + n], size - 8 - n)
    try:
        return _st_load(data)
    except (SafetensorError, ValueError, TypeError) as e:  # inconsistent offsets, shapes, dtypes
        raise CheckpointError(f"{path} is corrupted: {e}") from None


def _check_header(path, header, data_size):
    try:
        tensors = {name: t for name, t in json.loads(header).items() if name != "__metadata__"}
        end = max((int(t["data_offsets"][1]) for t in tensors.values()), default=0)
        dtypes = {name: str(t["dtype"]) for name, t in tensors.items()}
    except (*_JSON_ERRORS, AttributeError, TypeError, KeyError, IndexError, OverflowError) as e:
        raise CheckpointError(f"{path} has a corrupted header: {type(e).__name__}: "
                              f"{str(e)[:200]}") from None
    if end != data_size:
        raise CheckpointError(f"{path} is {'truncated' if end > data_size else 'corrupted'}: its "
                              f"header describes {end} bytes of tensors but the file holds "
                              f"{data_size}")
    bad = [f"{name} ({dtype})" for name, dtype in dtypes.items() if dtype not in _FLOAT_DTYPES]
    if bad:
        raise CheckpointError(f"{path} holds non-floating-point tensors, which are not model "
                              "weights: " + ", ".join(sorted(bad)))
