"""One random generator for initialisation and dropout, so `manual_seed` repeats a run."""
import numpy as np

_generator = [np.random.default_rng()]


def manual_seed(seed):
    """Seed shendu's generator (weights, dropout); the Trainer seeds data order separately."""
    _generator[0] = np.random.default_rng(seed)


def generator():
    return _generator[0]
