"""shendu 深度: deep learning from scratch, with hand-written gradients and compiled loops."""
from . import models, nn, optim
from .errors import ShenduError
from .images import load_image
from .io import CheckpointError, load, save
from .rng import manual_seed
from .summarize import summary
from .train import Trainer, evaluate, predict_proba, profile

__version__ = "0.1.0"
__all__ = ["nn", "optim", "models", "ShenduError", "CheckpointError", "manual_seed", "Trainer",
           "evaluate", "predict_proba", "profile", "save", "load", "load_image", "summary"]
