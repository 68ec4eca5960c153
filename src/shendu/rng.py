"""One random generator for initialisation and dropout, so `manual_seed` repeats a run.

Checkpoints save generator states as `bit_generator.state` dicts (plain ints: JSON-safe), and
restore them with `set_state` / `from_state`, so a resumed run draws the same numbers.
"""
import math
from contextlib import contextmanager

import numpy as np

from .errors import ShenduError

_generator = [np.random.default_rng()]
_limits = []  # numbers left to draw, innermost `limit` last
_shards = []  # (start, stop, size) of `batch_shard`, innermost last


def manual_seed(seed):
    """Seed shendu's generator (weights, dropout); the Trainer seeds data order separately."""
    _generator[0] = np.random.default_rng(seed)


def generator():
    return _Limited(_generator[0], _limits[-1]) if _limits else _generator[0]


@contextmanager
def limit(numbers, what):
    """Within, drawing more than `numbers` random numbers in all (by `standard_normal` and
    `random`, as initialisation and dropout draw) raises ShenduError, before the array is made.

    `shendu.load` builds the model a config.json describes, drawing its weights at random, and the
    weights file beside it says how many weights there are: so a config that lies cannot make
    loading allocate more than the files justify."""
    _limits.append([numbers, what])
    try:
        yield
    finally:
        _limits.pop()


@contextmanager
def batch_shard(start, stop, size):
    """Within, the model sees rows start:stop of a batch of `size` (one rank's shard, in
    data-parallel training), and draws per row (dropout's masks) are those of the whole batch:
    each is drawn for all `size` rows and cut to the shard's, so the shards together are masked
    as the whole batch would be in one process."""
    _shards.append((start, stop, size))
    try:
        yield
    finally:
        _shards.pop()


def shard_of_batch(draw, shape):
    """`draw(shape)` for an array of a batch, or within `batch_shard` this shard's rows of
    `draw` for the whole batch's shape."""
    if not _shards:
        return draw(shape)
    start, stop, size = _shards[-1]
    if shape[0] != stop - start:
        raise ShenduError(f"a shard of rows {start}:{stop} met an array of {shape[0]} rows")
    return draw((size, *shape[1:]))[start:stop]


class _Limited:
    def __init__(self, generator, left):
        self._generator, self._left = generator, left

    def _take(self, size):
        n = math.prod(size) if isinstance(size, (tuple, list)) else (1 if size is None else size)
        if n > self._left[0]:
            raise ShenduError(f"{self._left[1]}: more than {self._left[0]:,} more random numbers "
                              f"asked for ({n:,})")
        self._left[0] -= n

    def standard_normal(self, size=None, *args, **kwargs):
        self._take(size)
        return self._generator.standard_normal(size, *args, **kwargs)

    def random(self, size=None, *args, **kwargs):
        self._take(size)
        return self._generator.random(size, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._generator, name)


def get_state():
    """The state of shendu's generator (a JSON-safe dict)."""
    return _generator[0].bit_generator.state


def set_state(state):
    """Put shendu's generator in a state from `get_state` (ShenduError if it is not one)."""
    _generator[0] = from_state(state)


def from_state(state):
    """A new generator in `state`, a PCG64 `bit_generator.state` (the kind `default_rng` makes);
    anything else, such as a damaged checkpoint's, raises ShenduError."""
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise ShenduError(f"not the state of a PCG64 random generator: {str(state)[:100]}")
    bits = np.random.PCG64(0)
    try:
        bits.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise ShenduError(f"not the state of a PCG64 random generator: {e}") from None
    return np.random.Generator(bits)
