"""shendu 深度: deep learning from scratch, with hand-written gradients and compiled loops."""
from . import models, nn, optim
from .errors import ShenduError
from .rng import manual_seed

__version__ = "0.1.0"
__all__ = ["nn", "optim", "models", "ShenduError", "manual_seed"]
