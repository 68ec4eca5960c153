"""shendu 深度: deep learning from scratch, with hand-written gradients and compiled loops."""
from . import tuning

tuning.apply()  # what importing shendu does to the process: see shendu/tuning.py

from . import models, nn, optim  # noqa: E402
from .errors import ShenduError
from .images import load_image
from .io import CheckpointError, load, save
from .kernels import cuda_available
from .quantization import binarize, quantize
from .rng import manual_seed
from .summarize import summary
from .train import Trainer, evaluate, planned_steps, predict_proba, profile, set_profile

__version__ = "0.1.0"
__all__ = ["nn", "optim", "models", "ShenduError", "CheckpointError", "manual_seed", "Trainer",
           "evaluate", "predict_proba", "profile", "set_profile", "planned_steps", "save", "load",
           "load_image", "summary", "cuda_available", "quantize", "binarize"]
