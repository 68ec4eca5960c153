"""Weight initialisation: He (for ReLU networks) and Xavier/Glorot (for sigmoid and tanh)."""
import numpy as np

from ..rng import generator


def he_normal(shape, fan_in, dtype=np.float32):
    """std = sqrt(2 / fan_in): keeps activation variance constant through ReLU layers."""
    return (generator().standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def xavier_normal(shape, fan_in, fan_out, dtype=np.float32):
    """std = sqrt(2 / (fan_in + fan_out)): keeps variance constant through symmetric activations."""
    return (generator().standard_normal(shape) * np.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)
