"""Checkpoints: a run directory holds `model.safetensors` (the weights) and `config.json` (how to
rebuild the model), so a model is saved and loaded without pickle, and so without running code.

    shendu.save(model, "runs/deepconvnet-1")
    model = shendu.load("runs/deepconvnet-1")      # rebuilt, weights set, in eval mode

Files are replaced atomically: a save that fails part-way leaves the previous checkpoint as it was.
Loading checks everything before it trusts it; any problem is one `CheckpointError` saying what.
"""
import json
import os
import struct
import uuid
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from . import models
from .errors import ShenduError

__all__ = ["CheckpointError", "save", "load", "write_atomic"]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
_FLOAT_DTYPES = {"F16", "F32", "F64"}  # safetensors' names; weights are always floating point


class CheckpointError(ShenduError):
    """A run directory cannot be saved or loaded; the message says which file and why."""


# -- saving ------------------------------------------------------------------------------------
def save(model, run_dir):
    """Write `model.safetensors` and `config.json` into `run_dir` (created if needed).

    The model must come from `shendu.models.get` (or a registered builder): its `config` dict is
    what `load` rebuilds it from.
    """
    from . import __version__

    run_dir = Path(run_dir)
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"cannot save a {type(model).__name__} without a `config`: build "
                              "models with shendu.models.get so they can be rebuilt on load")
    state = model.state_dict()
    not_float = [f"{name} ({a.dtype})" for name, a in state.items() if a.dtype.kind != "f"]
    if not_float:
        raise CheckpointError("checkpoints hold floating-point tensors only, not: "
                              + ", ".join(not_float))
    try:
        config_text = json.dumps({**config, "shendu_version": __version__}, indent=2) + "\n"
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the model's config cannot be written as JSON: {e}") from None
    weights = _st_save({name: np.ascontiguousarray(a) for name, a in state.items()})
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic({run_dir / WEIGHTS: weights, run_dir / CONFIG: config_text.encode()})
    except OSError as e:
        raise CheckpointError(f"could not save the model in {run_dir}: {e}") from None


def write_atomic(files):
    """Write each `path: bytes` to a temporary file beside it, fsync, then rename over the target.

    A rename within a directory is atomic, so readers see the old file or the new one, never half
    of one; all files are written before any is renamed, which keeps the window in which a crash
    could pair new weights with an old config as short as it can be. Raises OSError.
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
    finally:
        for tmp in temps.values():
            try:
                os.unlink(tmp)  # gone already after a successful rename
            except FileNotFoundError:
                pass


# -- loading -----------------------------------------------------------------------------------
def load(run_dir):
    """Rebuild the model saved in `run_dir`, set its weights (strictly), return it in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run directory"
                              + (" (it is a file)" if run_dir.exists() else " (it does not exist)"))
    model = _build(_read_config(run_dir / CONFIG))
    path = run_dir / WEIGHTS
    state = _read_weights(path)
    try:
        model.load_state_dict(state, strict=True)
    except ShenduError as e:  # names and shapes listed by load_state_dict
        raise CheckpointError(f"{path} does not hold the weights of the {model.config['model']} "
                              f"described by {CONFIG}: {e}") from None
    return model.eval()


def _read_config(path):
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the run directory is incomplete") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
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


def _read_weights(path):
    """Read a safetensors file: an 8-byte little-endian header length, a JSON header, then the
    tensor bytes. Sizes and dtypes are checked against the file before the tensors are read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if size == 0:
                raise CheckpointError(f"{path} is empty")
            if len(prefix) < 8:
                raise CheckpointError(f"{path} is truncated ({size} bytes): not a safetensors file")
            (n,) = struct.unpack("<Q", prefix)
            if 8 + n > size:
                raise CheckpointError(f"{path} is truncated or not a safetensors file: its header "
                                      f"claims {n} bytes but the file has {size}")
            header = f.read(n)
            _check_header(path, header, size - 8 - n)
            data = prefix + header + f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the run directory holds no weights") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    try:
        return _st_load(data)
    except (SafetensorError, ValueError, TypeError) as e:  # inconsistent offsets, shapes, dtypes
        raise CheckpointError(f"{path} is corrupted: {e}") from None


def _check_header(path, header, data_size):
    try:
        tensors = {name: t for name, t in json.loads(header).items() if name != "__metadata__"}
        end = max((int(t["data_offsets"][1]) for t in tensors.values()), default=0)
        dtypes = {name: str(t["dtype"]) for name, t in tensors.items()}
    except (UnicodeDecodeError, ValueError, AttributeError, TypeError, KeyError, IndexError) as e:
        raise CheckpointError(f"{path} has a corrupted header: {e!r}") from None
    if end != data_size:
        raise CheckpointError(f"{path} is {'truncated' if end > data_size else 'corrupted'}: its "
                              f"header describes {end} bytes of tensors but the file holds "
                              f"{data_size}")
    bad = [f"{name} ({dtype})" for name, dtype in dtypes.items() if dtype not in _FLOAT_DTYPES]
    if bad:
        raise CheckpointError(f"{path} holds non-floating-point tensors, which are not model "
                              "weights: " + ", ".join(sorted(bad)))
