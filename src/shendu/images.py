"""Your own digit, as MNIST would have it: any PNG or JPEG becomes a 1×28×28 float32 image.

MNIST digits are white on black, scaled to fit a 20×20 box and placed in a 28×28 image with their
centre of mass at the centre. `load_image` does the same to a photo or a drawing:

1. decode (exif rotation applied), composite any transparency onto white, convert to grey
   (16-bit and float images are scaled, not clipped);
2. invert when the background is light (the border's mean above 127), so ink becomes white, and
   stretch the levels so the background (the border's median) is 0 and the brightest ink 1;
3. crop to the ink's bounding box (pixels above 0.2), scale the longer side to 20
   pixels keeping the aspect ratio, and paste it into 28×28 with its centre of mass at the centre.

`load_scene` does steps 1 and 2 to an image with several digits, and fits it into the 64×64
canvas of the scene networks (detection, segmentation, captioning) instead.
"""
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ShenduError

__all__ = ["load_image", "load_scene", "Scene", "MAX_PIXELS", "FORMATS"]

MAX_PIXELS = 50_000_000  # a 50-megapixel photo is plenty; a bigger claim is likely a bomb
# Pixels a file may claim per byte it holds, beyond the first million: deflate packs at most about
# 1032 bytes into one (8256 one-bit pixels), so a bigger claim is a decompression bomb.
PIXELS_PER_BYTE, FREE_PIXELS = 10_000, 1_000_000
# The formats load_image decodes: the common ones, whose parsers are plain Python in Pillow. Not
# EPS (Pillow hands it to Ghostscript: loading it would run a program) nor Pillow's rarer parsers.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "PPM")  # JPEG includes MPO (phone cameras)
_WORK_SIZE = 512  # images are first shrunk to this, which bounds the work for huge photos
_INK = 0.2  # a pixel is ink above this level (the brightest ink is 1)


def load_image(path):
    """A float32 array (1, 28, 28) in [0, 1], white digit on black, centred like MNIST.
    Raises ShenduError for anything that is not a readable image of a sensible size."""
    grey, _ = _read_grey(Path(path))
    return _mnist_box(_levels(grey))[None]


class Scene(NamedTuple):
    """An image file as the scene networks take it (see load_scene)."""
    image: np.ndarray  # float32 (1, size, size) in [0, 1], light ink on black
    scale: float  # canvas pixels per pixel of the file
    height: int  # the file's own size, in pixels
    width: int


def load_scene(path, size=64):
    """An image of any size with digits in it, as the scene networks were trained: the ink
    light on black (inverted and stretched as in `load_image`), scaled down, when it is larger
    than size × size, so that its longer side is `size` (a larger image is scaled, not tiled:
    its digits are assumed to fill it as a scene's fill the canvas), and placed at the top left
    of a black size × size canvas. Raises ShenduError for an unreadable image."""
    grey, (width, height) = _read_grey(Path(path))
    scale = min(1.0, size / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    a = _levels(grey.resize((w, h), Image.Resampling.LANCZOS))
    canvas = np.zeros((1, size, size), np.float32)
    canvas[0, :h, :w] = np.clip(a, 0, 1)
    return Scene(canvas, scale, height, width)


def _levels(grey):
    """A grey image as float32 in [0, 1] with light ink on black: inverted when the border is
    light, then stretched so the background (the border's median) is 0 and the brightest ink 1."""
    a = np.asarray(grey, dtype=np.float32) / 255
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if border.mean() > 127 / 255:
        a, border = 1 - a, 1 - border
    background, brightest = np.median(border), a.max()
    return (np.clip((a - background) / (brightest - background), 0, 1) if brightest > background
            else np.zeros_like(a))


def _read_grey(path):
    """Decode `path` into a mode 'L' image no larger than _WORK_SIZE, and the file's own (width,
    height); or raise ShenduError."""
    if not path.is_file():
        raise ShenduError(f"{path}: no such image file")
    size = path.stat().st_size
    if size == 0:
        raise ShenduError(f"{path}: the file is empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns, then refuses, beyond its own pixel limit: both mean "bomb" here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:  # reads the header only
                pixels = im.width * im.height
                if pixels > MAX_PIXELS:
                    raise ShenduError(f"{path}: {im.width}×{im.height} pixels is more than the "
                                      f"{MAX_PIXELS:,} allowed (a decompression bomb?)")
                if pixels > FREE_PIXELS + PIXELS_PER_BYTE * size:
                    raise ShenduError(f"{path}: {im.width}×{im.height} pixels cannot come from "
                                      f"{size} bytes (a decompression bomb?)")
                im = ImageOps.exif_transpose(im)  # also decodes the pixels (truncation shows here)
                im = _to_grey(im)
                original = im.size
                im.thumbnail((_WORK_SIZE, _WORK_SIZE), Image.Resampling.LANCZOS)
                return im, original
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ShenduError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ShenduError(f"{path}: not an image shendu reads ({', '.join(FORMATS)})") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data, odd modes
        raise ShenduError(f"{path}: cannot decode the image: {e}") from None


def _to_grey(im):
    if "A" in im.getbands() or "transparency" in im.info:  # RGBA, LA, PA, palette with a key
        white = Image.new("RGBA", im.size, "white")
        white.alpha_composite(im.convert("RGBA"))
        im = white
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integers, floats (often in [0, 1]):
        wide = np.asarray(im, dtype=np.float64)     # convert("L") would clip them at 255
        if not np.isfinite(wide).all():
            raise ValueError("some pixels are not numbers (NaN or infinite)")
        wide = np.clip(wide, 0, None)
        top = 65535 if im.mode != "F" and wide.max() <= 65535 else wide.max()
        return Image.fromarray(np.round(wide * 255 / (top or 1)).astype(np.uint8))
    return im.convert("L")


def _mnist_box(a):
    """Fit the ink's bounding box into 20×20 and centre its mass in 28×28, as MNIST was made."""
    ink = a > _INK if a.max() > 0 else np.ones(a.shape, bool)  # blank: keep the whole image
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = 20 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    digit = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS))
    digit = np.clip(digit, 0, 1)  # Lanczos overshoots a little at edges
    out = np.zeros((28, 28), np.float32)
    mass = digit.sum()
    cy, cx = ((np.indices(digit.shape) * digit).sum(axis=(1, 2)) / mass if mass > 0
              else (np.array(digit.shape) - 1) / 2)
    # place the centre of mass at (14, 14), but never push the digit off the canvas
    top = int(np.clip(round(14 - cy), 0, 28 - digit.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - digit.shape[1]))
    out[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return out
