"""Data augmentation: random changes to each training batch that keep its labels true.

A transform is a callable `transform(x, rng) -> x` on a float32 batch (N, C, H, W) with a NumPy
generator: it draws its randomness from `rng` only, so the same generator state repeats it
exactly (the Trainer derives one per step from its seed, which is what makes augmented runs
resumable bit for bit). Each acts on the whole batch at once.

    augment = Compose([RandomAffine(degrees=10, translate=0.1, scale=(0.9, 1.1)), RandomErasing()])
    trainer = shendu.Trainer(model, optimizer, augment=augment)

Names and arguments are modelled on torchvision's (but shifts are not rounded to whole pixels,
and erasing clips its box to the image instead of drawing again). Geometric transforms compute,
for every output pixel, where in the input it comes from (the inverse map), and read it there by
bilinear interpolation (`kernels.sample.bilinear`, compiled by Numba, one call per batch).
"""
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import ShenduError
from .kernels.sample import bilinear

__all__ = ["Compose", "RandomAffine", "ElasticDistortion", "RandomCrop", "RandomHorizontalFlip",
           "ColorJitter", "RandomErasing"]


class Compose:
    """A list of transforms applied in order: `Compose([t1, t2])`, as torchvision's."""

    def __init__(self, transforms):
        if not isinstance(transforms, (list, tuple)) or not all(map(callable, transforms)):
            raise ShenduError(f"Compose takes a list of transforms, as torchvision's: "
                              f"Compose([t1, t2]), got {transforms!r}")
        self.transforms = list(transforms)

    def __call__(self, x, rng):
        for transform in self.transforms:
            x = transform(x, rng)
        return x

    def __repr__(self):
        return f"Compose([{', '.join(map(repr, self.transforms))}])"


class RandomCrop:
    """Cut a `size` = h or (h, w) window out at a random place, after padding the image by
    `padding` pixels (torchvision's forms: p on every side, (left/right, top/bottom), or (left,
    top, right, bottom)), filled by `padding_mode` ("constant" with `fill`, "edge", "reflect",
    "symmetric"). `RandomCrop(28, padding=2)` moves each 28×28 image by up to 2 pixels in each
    direction. With `pad_if_needed`, an image smaller than `size` is padded up to it first."""

    _MODES = ("constant", "edge", "reflect", "symmetric")

    def __init__(self, size, padding=None, pad_if_needed=False, fill=0, padding_mode="constant"):
        size = _whole_numbers("size", size, (1, 2), 1, "a whole number ≥ 1 or (h, w)")
        self.size = size * 2 if len(size) == 1 else size
        pads = (0,) if padding is None else _whole_numbers(
            "padding", padding, (1, 2, 4), 0, "a whole number ≥ 0 or a tuple of 2 or 4 of them")
        left, top, right, bottom = pads * (4 // len(pads))  # p; (left/right, top/bottom); all four
        self.pad = ((top, bottom), (left, right))  # (rows, columns), as np.pad takes them
        if isinstance(fill, bool) or not isinstance(fill, (int, float, np.number)):
            raise ShenduError(f"RandomCrop fill must be a number (one value for every channel), "
                              f"got {fill!r}")
        if not isinstance(pad_if_needed, bool):
            raise ShenduError(f"RandomCrop pad_if_needed must be True or False, got "
                              f"{pad_if_needed!r}")
        if padding_mode not in self._MODES:
            raise ShenduError(f"RandomCrop padding_mode must be one of {', '.join(self._MODES)}, "
                              f"got {padding_mode!r}")
        self.padding, self.pad_if_needed = padding, pad_if_needed
        self.fill, self.padding_mode = fill, padding_mode

    def _padded(self, x, pad):
        extra = {"constant_values": self.fill} if self.padding_mode == "constant" else {}
        return np.pad(x, ((0, 0), (0, 0), *pad), mode=self.padding_mode, **extra)

    def __call__(self, x, rng):
        x = self._padded(x, self.pad) if any(map(any, self.pad)) else x
        (th, tw), (h, w) = self.size, x.shape[2:]
        if self.pad_if_needed and (h < th or w < tw):
            grow_h, grow_w = max(th - h, 0), max(tw - w, 0)  # on both sides, as torchvision
            x = self._padded(x, ((grow_h, grow_h), (grow_w, grow_w)))
            h, w = x.shape[2:]
        if h < th or w < tw:
            raise ShenduError(f"RandomCrop: the crop {self.size} is larger than the (padded) "
                              f"images {(h, w)}; pad them, or pass pad_if_needed=True")
        rows, cols = rng.integers(0, [[h - th + 1], [w - tw + 1]], size=(2, len(x)))
        return np.stack([x[i, :, r:r + th, c:c + tw] for i, (r, c) in enumerate(zip(rows, cols))])

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v, default in (
            ("padding", self.padding, None), ("pad_if_needed", self.pad_if_needed, False),
            ("fill", self.fill, 0), ("padding_mode", self.padding_mode, "constant"))
            if v != default)
        return f"RandomCrop(size={self.size}{extra})"


def _whole(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _whole_numbers(name, value, lengths, low, form):
    """RandomCrop's `value` as a tuple of whole numbers ≥ low: one number, or a tuple of one of
    the `lengths`."""
    values = (value,) if _whole(value) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(values) not in lengths or not all(_whole(v) and v >= low for v in values):
        raise ShenduError(f"RandomCrop {name} must be {form}, got {value!r}")
    return values


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


def _range(name, value, centre=0.0, low=-math.inf):
    """A strength as a (low, high) range: a number v means centre ± v."""
    if value is None:
        return (centre, centre)
    lo, hi = (centre - value, centre + value) if np.isscalar(value) else tuple(value)
    if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo <= hi):
        raise ShenduError(f"{name} must be a number ≥ 0 or a range (low, high) with low ≤ high"
                          f"{f' and low ≥ {low}' if low > -math.inf else ''}, got {value!r}")
    return (lo, hi)


def _resample(x, rows, cols):
    out = np.empty(x.shape, np.float32)
    bilinear(np.ascontiguousarray(x, np.float32), rows, cols, out)
    return out


class RandomAffine:
    """Rotate by up to `degrees` (counter-clockwise positive), move by up to `translate` =
    (fx, fy) of the width and height, scale by a factor in `scale` = (low, high) and shear by up
    to `shear` degrees, each image its own draw, about the image's centre. A number d for
    `degrees` or `shear` means the range (−d, d); `degrees=(90, 90)` always turns a quarter."""

    def __init__(self, degrees=0, translate=None, scale=None, shear=None):
        self.degrees = _range("RandomAffine degrees", degrees)
        if translate is not None and np.isscalar(translate):
            translate = (translate, translate)
        if translate is not None and (len(translate) != 2 or not all(0 <= f <= 1 for f in translate)):
            raise ShenduError(f"RandomAffine translate must be fractions in [0, 1], got {translate!r}")
        self.translate = tuple(translate) if translate is not None else (0.0, 0.0)
        self.scale = _range("RandomAffine scale", scale, centre=1.0, low=1e-3) if scale is not None \
            else (1.0, 1.0)
        self.shear = _range("RandomAffine shear", shear)

    def __call__(self, x, rng):
        n, _, h, w = x.shape
        angle, shear = (np.radians(rng.uniform(*r, n)) for r in (self.degrees, self.shear))
        scale = rng.uniform(*self.scale, n)
        tx, ty = (rng.uniform(-f * size, f * size, n) for f, size in zip(self.translate, (w, h)))
        # The forward map about the centre, on (x, y) = (column, row) with rows going down:
        # [[a, b], [c, d]] = scale · rotation · shear. Its inverse finds each output pixel's source.
        cos, sin, tan = np.cos(angle), np.sin(angle), np.tan(shear)
        a, b, c, d = scale * cos, scale * (cos * tan + sin), -scale * sin, scale * (cos - sin * tan)
        det = a * d - b * c
        cy, cx = (h - 1) / 2, (w - 1) / 2
        i, j = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
        u, v = j - tx[:, None, None], i - ty[:, None, None]  # output relative to the moved centre
        cols = (d[:, None, None] * u - b[:, None, None] * v) / det[:, None, None] + cx
        rows = (a[:, None, None] * v - c[:, None, None] * u) / det[:, None, None] + cy
        return _resample(x, rows, cols)

    def __repr__(self):  # only what moves: RandomAffine() is the identity
        idle = {"degrees": (0, 0), "translate": (0, 0), "scale": (1, 1), "shear": (0, 0)}
        return "RandomAffine(" + ", ".join(f"{name}={getattr(self, name)}" for name, rest in
                                           idle.items() if getattr(self, name) != rest) + ")"


def _smooth(field, sigma):
    """A Gaussian blur of (N, H, W) fields along both image axes (edges mirrored)."""
    radius = max(1, int(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        field = sliding_window_view(np.pad(field, pad, mode="reflect"), 2 * radius + 1,
                                    axis=axis) @ kernel
    return field


class ElasticDistortion:
    """Simard et al. (2003): every pixel moves by a random displacement, smoothed by a Gaussian
    of width `sigma` pixels and scaled by `alpha` — like a hand's wobble. MNIST: alpha 34,
    sigma 4 in the paper; smaller alpha is gentler."""

    def __init__(self, alpha=34.0, sigma=4.0):
        if not (alpha >= 0 and sigma > 0):
            raise ShenduError(f"ElasticDistortion needs alpha ≥ 0 and sigma > 0, got {alpha!r}, {sigma!r}")
        self.alpha, self.sigma = alpha, sigma

    def __call__(self, x, rng):
        n, _, h, w = x.shape
        dy, dx = (self.alpha * _smooth(rng.uniform(-1, 1, (n, h, w)), self.sigma) for _ in "yx")
        i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        return _resample(x, i + dy, j + dx)

    def __repr__(self):
        return f"ElasticDistortion(alpha={self.alpha}, sigma={self.sigma})"


class ColorJitter:
    """Multiply each image's brightness by a factor in [1 − brightness, 1 + brightness], then
    scale its contrast (distance from its mean) by one in [1 − contrast, 1 + contrast]; clip to
    [0, 1]."""

    def __init__(self, brightness=0.0, contrast=0.0):
        for name, value in (("brightness", brightness), ("contrast", contrast)):
            if not 0 <= value <= 1:
                raise ShenduError(f"ColorJitter {name} must be in [0, 1], got {value!r}")
        self.brightness, self.contrast = brightness, contrast

    def __call__(self, x, rng):
        n = len(x)
        shape = (n, 1, 1, 1)
        bright = rng.uniform(1 - self.brightness, 1 + self.brightness, n).reshape(shape)
        contrast = rng.uniform(1 - self.contrast, 1 + self.contrast, n).reshape(shape)
        y = x * bright
        mean = y.mean(axis=(1, 2, 3), keepdims=True)
        return np.clip((y - mean) * contrast + mean, 0, 1).astype(np.float32)

    def __repr__(self):
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast})"


class RandomErasing:
    """Zhong et al. (2020): with probability p, blank a rectangle of each image (area a fraction
    in `scale` of the image, aspect ratio in `ratio`, drawn log-uniformly; a side longer than
    the image is cut to it) to `value`, so the model cannot rely on any one part."""

    def __init__(self, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0):
        if not 0 <= p <= 1:
            raise ShenduError(f"RandomErasing p must be in [0, 1], got {p!r}")
        self.p = p
        self.scale = _range("RandomErasing scale", scale, low=0.0)
        self.ratio = _range("RandomErasing ratio", ratio, low=1e-3)
        self.value = value

    def __call__(self, x, rng):
        n, _, h, w = x.shape
        erase = rng.random(n) < self.p
        area = rng.uniform(*self.scale, n) * h * w
        ratio = np.exp(rng.uniform(*np.log(self.ratio), n))
        eh = np.minimum(np.round(np.sqrt(area * ratio)), h).astype(int)
        ew = np.minimum(np.round(np.sqrt(area / ratio)), w).astype(int)
        top, left = (np.floor(rng.random(n) * (size - e + 1)).astype(int)
                     for size, e in ((h, eh), (w, ew)))
        rows = np.arange(h)[None, :, None]
        cols = np.arange(w)[None, None, :]
        box = ((top[:, None, None] <= rows) & (rows < (top + eh)[:, None, None])
               & (left[:, None, None] <= cols) & (cols < (left + ew)[:, None, None]))
        return np.where((box & erase[:, None, None])[:, None], np.float32(self.value), x)

    def __repr__(self):
        return (f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, "
                f"value={self.value})")
