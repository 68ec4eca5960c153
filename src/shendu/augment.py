"""Data augmentation: random changes to each training batch that keep its labels true.

A transform is a callable `transform(x, rng) -> x` on a float32 batch (N, C, H, W) with a NumPy
generator: it draws its randomness from `rng` only, so the same generator state repeats it
exactly (the Trainer derives one per step from its seed, which is what makes augmented runs
resumable bit for bit). Each acts on the whole batch at once.

    augment = Compose(RandomCrop(padding=2), RandomHorizontalFlip())
    trainer = shendu.Trainer(model, optimizer, augment=augment)
"""
import numpy as np

from .errors import ShenduError

__all__ = ["Compose", "RandomCrop", "RandomHorizontalFlip"]


class Compose:
    """Transforms applied in order."""

    def __init__(self, *transforms):
        self.transforms = transforms

    def __call__(self, x, rng):
        for transform in self.transforms:
            x = transform(x, rng)
        return x

    def __repr__(self):
        return f"Compose({', '.join(map(repr, self.transforms))})"


class RandomCrop:
    """Pad by `padding` zero pixels on every side and cut the original size back out at a random
    place: each image moves by up to `padding` pixels in each direction."""

    def __init__(self, padding):
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ShenduError(f"RandomCrop padding must be a whole number ≥ 0, got {padding!r}")
        self.padding = padding

    def __call__(self, x, rng):
        p = self.padding
        n, _, h, w = x.shape
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        rows, cols = rng.integers(0, 2 * p + 1, size=(2, n))
        return np.stack([padded[i, :, r:r + h, c:c + w] for i, (r, c) in enumerate(zip(rows, cols))])

    def __repr__(self):
        return f"RandomCrop(padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left to right with probability p (for clothes, not for digits)."""

    def __init__(self, p=0.5):
        if not 0 <= p <= 1:
            raise ShenduError(f"RandomHorizontalFlip p must be in [0, 1], got {p!r}")
        self.p = p

    def __call__(self, x, rng):
        flip = rng.random(len(x)) < self.p
        return np.where(flip[:, None, None, None], x[..., ::-1], x)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"
