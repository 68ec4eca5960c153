"""Finding digits in a scene, two ways (section 8.4.1 of the book):

- R-CNN (Girshick et al. 2014): region proposals by selective search's hierarchical grouping,
  each region warped to 28 × 28 and classified by a CNN with a background class, then
  non-maximum suppression per class;
- a one-stage grid detector (as YOLO, Redmon et al. 2016): one fully convolutional pass gives,
  for each 8 × 8 cell of the image, whether a digit's centre lies in it, where its box is and
  which digit it is.

Boxes are rows [x0, y0, x1, y1] in pixel edges, as in `shendu.metrics`. Images are grayscale
(H, W), light ink on a dark background, uint8 or float in [0, 1].
"""
from typing import NamedTuple

import numpy as np

from . import kernels
from .errors import ShenduError
from .kernels.regions import components
from .kernels.sample import bilinear
from .metrics import box_iou, nms
from .nn import device_of, log_softmax, softmax
from .train import _as_input, inference

CELL = 8  # the grid detector's cell: DeepConvNet's three 2 × 2 poolings
ANCHOR = 24.0  # the grid detector's prior box side, in pixels (scene digits are 16-29 high)
THRESHOLDS = (40, 128, 200, 240)  # the ink levels whose components start the proposals


class Detections(NamedTuple):
    """What a detector found in one image: boxes (k, 4) float32, classes (k,) int64 (the digits),
    scores (k,) float32 in [0, 1], best first."""
    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray


# -- region proposals ------------------------------------------------------------------------
def proposals(image, thresholds=THRESHOLDS, erosions=(0, 1)):
    """Region proposals for one image (H, W) uint8: selective search's hierarchical grouping
    (Uijlings et al. 2013). Its starting regions, a segmentation, are here the 8-connected
    components of the ink: the pixels at or above each level of `thresholds`, each also eroded
    by each radius of `erosions` (their boxes then grown back by it). The variants diversify,
    as selective search's colour spaces do: a stroke may break at a high level, two digits
    touch at a low one, and erosion cuts the thin bridges between touching digits. Then, until
    one region is left, the two most similar merge: similarity = size + fill, with size =
    1 − (pixels of both) / (pixels of the image), which merges small regions first, and
    fill = 1 − (area of the box around both − the areas of their boxes) / (area of the image),
    which merges regions that fill the box around them (all pairs are candidates: components
    never touch, so "neighbours" would be none). Every region's box, from every variant, is a
    proposal. Returns unique boxes (k, 4) int64."""
    image = np.asarray(image)
    found = set()
    for level in thresholds:
        for radius in erosions:
            regions = _components(_eroded(image >= level, radius), radius)
            found.update(box for box, _ in regions)
            while len(regions) > 1:
                a, b = max(((p, q) for i, p in enumerate(regions) for q in regions[i + 1:]),
                           key=lambda pair: _similarity(*pair, image.size))
                merged = (_union(a[0], b[0]), a[1] + b[1])
                regions = [r for r in regions if r is not a and r is not b] + [merged]
                found.add(merged[0])
    return np.array(sorted(found), np.int64).reshape(-1, 4)


def _eroded(ink, radius):
    """The pixels of ink whose (2 radius + 1)² square lies in the ink."""
    h, w = ink.shape
    padded, out = np.pad(ink, radius), ink.copy()
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out &= padded[dy:dy + h, dx:dx + w]
    return out


def _union(a, b):
    """The box around boxes a and b."""
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _components(ink, grow=0):
    """[(box, pixels)] of each connected component of the boolean image ink, each box grown by
    `grow` pixels on every side (within the image)."""
    h, w = ink.shape
    labels, count = components(np.ascontiguousarray(ink))
    ys, xs = np.nonzero(labels)
    k = labels[ys, xs] - 1
    x0, y0 = np.full(count, w), np.full(count, h)
    x1, y1 = np.zeros(count, np.int64), np.zeros(count, np.int64)
    np.minimum.at(x0, k, xs)
    np.minimum.at(y0, k, ys)
    np.maximum.at(x1, k, xs + 1)
    np.maximum.at(y1, k, ys + 1)
    sizes = np.bincount(k, minlength=count)
    return [((max(int(a) - grow, 0), max(int(b) - grow, 0), min(int(c) + grow, w),
              min(int(d) + grow, h)), int(s)) for a, b, c, d, s in zip(x0, y0, x1, y1, sizes)]


def _similarity(a, b, image_area):
    (box_a, size_a), (box_b, size_b) = a, b
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    size = 1 - (size_a + size_b) / image_area
    fill = 1 - (area(_union(box_a, box_b)) - area(box_a) - area(box_b)) / image_area
    return size + fill


def recall(found, truths, iou=0.5):
    """The share of the true boxes that some proposal overlaps with an IoU of at least `iou`:
    found[i] and truths[i] are the boxes of image i."""
    hits = total = 0
    for boxes, true in zip(found, truths):
        overlaps = box_iou(true, boxes)
        hits += int((overlaps.max(axis=1, initial=0) >= iou).sum())
        total += len(true)
    return hits / total if total else float("nan")


# -- R-CNN -----------------------------------------------------------------------------------
def warp(image, boxes, size=28):
    """Each box's region of one image (H, W) as a size × size float32 image (k, 1, size, size),
    in [0, 1], as MNIST frames its digits: a square about the box's centre, its side the box's
    longer side times 28 / 20 (an MNIST digit fits a 20 × 20 box in its 28 × 28 frame), read by
    bilinear interpolation; outside the image is background."""
    image = _as_input(np.asarray(image)).astype(np.float32, copy=False)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * 28 / 20
    steps = (np.arange(size) + 0.5) / size - 0.5  # output pixel centres, in units of the side
    rows = centre_y[:, None, None] + side[:, None, None] * steps[None, :, None] - 0.5
    cols = centre_x[:, None, None] + side[:, None, None] * steps[None, None, :] - 0.5
    rows, cols = (np.ascontiguousarray(np.broadcast_to(a, (len(boxes), size, size)), np.float32)
                  for a in (rows, cols))
    out = np.empty((len(boxes), 1, size, size), np.float32)
    frames = np.ascontiguousarray(np.broadcast_to(image, (len(boxes), 1, *image.shape)))
    bilinear(frames, rows, cols, out)
    return out


def region_set(scenes, positives=3, background=3, seed=0):
    """R-CNN's training regions from scenes, drawn at random from `seed`: every true box, up to
    `positives` per digit of the proposals that overlap a digit with an IoU of at least 0.7
    (each labelled with that digit's class + 1), and up to `background` per digit of those that
    overlap none by 0.4 or more (class 0: among them the parts of digits and the pairs of
    them, which must not score as a digit), each warped to 28 × 28 (see warp). Proposals in
    between are left out. Returns (uint8 images (M, 1, 28, 28), labels (M,))."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for image, true, classes in zip(scenes.images, scenes.boxes, scenes.classes):
        boxes = proposals(image[0])
        overlaps = box_iou(boxes, true)
        best, most = overlaps.argmax(axis=1), overlaps.max(axis=1)
        positive = rng.permutation(np.flatnonzero(most >= 0.7))[:positives * len(true)]
        negative = rng.permutation(np.flatnonzero(most < 0.4))[:background * len(true)]
        chosen = np.concatenate([true, boxes[positive], boxes[negative]])
        labels.append(np.concatenate([classes + 1, classes[best[positive]] + 1,
                                      np.zeros(len(negative), np.int64)]))
        images.append(np.round(warp(image[0], chosen) * 255).astype(np.uint8))
    return np.concatenate(images), np.concatenate(labels)


class RCNN:
    """R-CNN around a classifier of 28 × 28 regions into 11 classes: 0 the background, d + 1
    the digit d. `detect(images)`: each image's proposals are warped and classified; each class
    scores every region by its probability, and per class the boxes scoring at least
    `min_score` go through non-maximum suppression at IoU `overlap` (R-CNN's 0.3)."""

    def __init__(self, classifier, min_score=0.01, overlap=0.3):
        self.classifier, self.min_score, self.overlap = classifier, min_score, overlap

    def detect(self, images):
        """Detections in each image (N, H, W), uint8 or float in [0, 1]."""
        found = []
        for image in images:
            boxes = proposals(_as_uint8(image))
            if not len(boxes):
                found.append(_none())
                continue
            regions = device_of(self.classifier).array(warp(image, boxes))
            with inference(self.classifier):
                p = softmax(kernels.to_host(self.classifier(regions)))
            found.append(_per_class(boxes.astype(np.float32), p[:, 1:], self.min_score,
                                    self.overlap))
        return found


def _per_class(boxes, p, min_score, overlap):
    """Detections from boxes (k, 4) and their class probabilities p (k, classes): per class,
    the boxes scoring at least min_score, after non-maximum suppression; best first."""
    out_boxes, out_classes, out_scores = [], [], []
    for c in range(p.shape[1]):
        mine = np.flatnonzero(p[:, c] >= min_score)
        kept = mine[nms(boxes[mine], p[mine, c], overlap)]
        out_boxes.append(boxes[kept])
        out_classes.append(np.full(len(kept), c, np.int64))
        out_scores.append(p[kept, c])
    scores = np.concatenate(out_scores).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    return Detections(np.concatenate(out_boxes).reshape(-1, 4)[order].astype(np.float32),
                      np.concatenate(out_classes)[order], scores[order])


def _none():
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))


def _as_uint8(image):
    image = np.asarray(image)
    return image if image.dtype == np.uint8 else np.round(np.clip(image, 0, 1) * 255).astype(
        np.uint8)


# -- the grid detector -----------------------------------------------------------------------
# Its output (N, 5 + classes, H / 8, W / 8), per cell: [objectness logit, tx, ty, tw, th,
# class logits]; its labels (N, 6, H / 8, W / 8), per cell: [1 if a digit's centre is in the
# cell else 0, the digit (−1 if none), tx, ty, tw, th] with the box's centre at ((j + tx) · 8,
# (i + ty) · 8) in cell (i, j) and its width and height ANCHOR · exp(tw), ANCHOR · exp(th).

def encode(boxes, classes, size):
    """The grid detector's labels (N, 6, size / 8, size / 8) float32 for the true boxes and
    classes of N images size × size. A cell holding two centres keeps the larger box."""
    g = size // CELL
    t = np.zeros((len(boxes), 6, g, g), np.float32)
    t[:, 1] = -1
    for n, (true, labels) in enumerate(zip(boxes, classes)):
        true = np.asarray(true, np.float64).reshape(-1, 4)
        areas = (true[:, 2] - true[:, 0]) * (true[:, 3] - true[:, 1])
        for k in np.argsort(areas, kind="stable"):  # larger ones last: they win a shared cell
            (x0, y0, x1, y1), c = true[k], labels[k]
            cx, cy = (x0 + x1) / 2 / CELL, (y0 + y1) / 2 / CELL
            i, j = min(int(cy), g - 1), min(int(cx), g - 1)
            t[n, :, i, j] = (1, c, cx - j, cy - i, np.log((x1 - x0) / ANCHOR),
                             np.log((y1 - y0) / ANCHOR))
    return t


class GridLoss:
    """The grid detector's loss, as YOLO's, per image: the binary cross-entropy of the
    objectness of every cell, plus, in the cells that hold a digit's centre, the cross-entropy
    of its class and `box_weight` times the squared error of (tx, ty, tw, th). The mean over
    the images of the batch. `correct` counts the digits whose cell says "object" (logit > 0)
    and names the right class; `counted` the digits."""

    def __init__(self, box_weight=5.0):
        self.box_weight, self.grad = box_weight, None

    def __call__(self, out, t):
        return self.forward(out, t)

    def forward(self, out, t):
        z = kernels.to_host(out).astype(np.float64)
        if z.ndim != 4 or t.shape != (len(z), 6, *z.shape[2:]) or z.shape[1] < 6:
            raise ShenduError(f"GridLoss takes outputs (N, 5 + classes, G, G) and labels "
                              f"(N, 6, G, G) (see encode), got {z.shape} and {t.shape}")
        n, obj = len(z), t[:, 0] > 0
        logit, target = z[:, 0], t[:, 0]
        # binary cross-entropy, stably: log(1 + e^z) − y z
        loss = np.sum(np.logaddexp(0, logit) - target * logit)
        grad = np.zeros_like(z)
        grad[:, 0] = 1 / (1 + np.exp(-logit)) - target
        box = np.moveaxis(z[:, 1:5], 1, -1)[obj] - np.moveaxis(t[:, 2:6], 1, -1)[obj]
        loss += self.box_weight * np.sum(box ** 2)
        g_box = np.zeros((n, *z.shape[2:], 4))
        g_box[obj] = 2 * self.box_weight * box
        grad[:, 1:5] = np.moveaxis(g_box, -1, 1)
        scores = np.moveaxis(z[:, 5:], 1, -1)[obj]
        labels = t[:, 1][obj].astype(np.int64)
        logp = log_softmax(scores)
        loss -= logp[np.arange(len(labels)), labels].sum()
        d = np.exp(logp)
        d[np.arange(len(labels)), labels] -= 1
        g_cls = np.zeros((n, *z.shape[2:], z.shape[1] - 5))
        g_cls[obj] = d
        grad[:, 5:] = np.moveaxis(g_cls, -1, 1)
        self.grad = kernels.of(out).array((grad / n).astype(out.dtype))
        return float(loss / n)

    def backward(self):
        if self.grad is None:
            raise ShenduError("GridLoss.backward needs a forward pass first")
        return self.grad

    def correct(self, out, t):
        z, obj = kernels.to_host(out), t[:, 0] > 0
        said = z[:, 0][obj] > 0
        named = np.moveaxis(z[:, 5:], 1, -1)[obj].argmax(axis=1) == t[:, 1][obj]
        return int(np.count_nonzero(said & named))

    def counted(self, t):
        return int(np.count_nonzero(t[:, 0] > 0))


def decode(out, min_score=0.01, overlap=0.5):
    """Detections from the grid detector's outputs (N, 5 + classes, G, G): each cell's box,
    class (its likeliest) and score (objectness × that class's probability), those scoring at
    least min_score, through non-maximum suppression per class at IoU `overlap`."""
    z = kernels.to_host(out).astype(np.float64)
    g_rows, g_cols = z.shape[2:]
    i, j = np.meshgrid(np.arange(g_rows), np.arange(g_cols), indexing="ij")
    found = []
    for cells in z:
        objectness = 1 / (1 + np.exp(-cells[0]))
        p = softmax(np.moveaxis(cells[5:], 0, -1)) * objectness[..., None]
        cx, cy = (j + cells[1]) * CELL, (i + cells[2]) * CELL
        w, h = ANCHOR * np.exp(np.clip(cells[3], -5, 5)), ANCHOR * np.exp(np.clip(cells[4], -5, 5))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).reshape(-1, 4)
        p = p.reshape(len(boxes), -1)
        best = p.argmax(axis=1)
        top = np.zeros_like(p)
        top[np.arange(len(p)), best] = p[np.arange(len(p)), best]  # a cell names one digit
        found.append(_per_class(boxes.astype(np.float32), top, min_score, overlap))
    return found
