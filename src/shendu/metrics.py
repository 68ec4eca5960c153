"""How the applications are measured: boxes (IoU, non-maximum suppression, VOC's mean average
precision), label maps (per-class IoU and its mean) and sentences (BLEU).

Boxes are rows [x0, y0, x1, y1] in pixel edges: x0 ≤ x < x1, y0 ≤ y < y1, so a box's area is
(x1 − x0)(y1 − y0), as in torchvision.
"""
import math
from collections import Counter

import numpy as np

from .errors import ShenduError

__all__ = ["box_iou", "nms", "average_precision", "mean_average_precision", "segmentation_iou",
           "bleu"]


def box_iou(a, b):
    """The (len(a), len(b)) matrix of intersection over union of every box of a with every box
    of b."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes, scores, threshold=0.5):
    """Non-maximum suppression: the indices of the boxes kept, best score first. Going down the
    scores, a box is kept unless it overlaps one already kept with an IoU above `threshold`."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    iou = box_iou(boxes, boxes)
    kept = []
    for i in order:
        if all(iou[i, j] <= threshold for j in kept):
            kept.append(int(i))
    return np.array(kept, np.int64)


def average_precision(matched, scores, positives):
    """The area under the precision-recall curve of detections ranked by `scores`, `matched`
    saying which found an object, `positives` being the number of objects (PASCAL VOC's AP
    since 2010: the precision at each recall is the best precision at that recall or beyond).
    NaN when there are no objects."""
    if positives == 0:
        return math.nan
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = np.asarray(matched, bool)[order]
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    recall = np.concatenate([[0.0], tp / positives])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # best at this recall or beyond
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def mean_average_precision(detections, truths, classes, iou=0.5):
    """VOC-style detection quality. `detections[i]` is (boxes, classes, scores) found in image i,
    `truths[i]` (boxes, classes) of its objects. Per class, detections are taken best score
    first; each is a hit if its best-overlapping object of that class in its image has an IoU of
    at least `iou` and was not already found (a second detection of it is a miss). Returns
    (the mean of the classes' APs over the classes that have objects, [AP of each class])."""
    if len(detections) != len(truths):
        raise ShenduError(f"{len(detections)} images of detections but {len(truths)} of truths")
    per_class = []
    for c in range(classes):
        scores, matched, positives = [], [], 0
        for (boxes, labels, confidence), (true_boxes, true_labels) in zip(detections, truths):
            mine = np.asarray(labels) == c
            objects = np.asarray(true_boxes, np.float64).reshape(-1, 4)
            objects = objects[np.asarray(true_labels) == c]
            positives += len(objects)
            found = np.zeros(len(objects), bool)
            box = np.asarray(boxes, np.float64).reshape(-1, 4)[mine]
            score = np.asarray(confidence, np.float64)[mine]
            overlaps = box_iou(box, objects)
            for k in np.argsort(-score, kind="stable"):
                best = int(np.argmax(overlaps[k])) if len(objects) else -1
                hit = best >= 0 and overlaps[k, best] >= iou and not found[best]
                if hit:
                    found[best] = True
                scores.append(score[k])
                matched.append(hit)
        per_class.append(average_precision(matched, scores, positives))
    present = [ap for ap in per_class if not math.isnan(ap)]
    return (float(np.mean(present)) if present else math.nan), per_class


def segmentation_iou(predicted, truth, classes):
    """Per-class intersection over union of two label maps (any shape, integers in
    [0, classes)), summed over every pixel of the set as one confusion matrix; returns (the mean
    over the classes that occur in either, [IoU of each class, NaN where it occurs in neither])."""
    predicted, truth = np.asarray(predicted).ravel(), np.asarray(truth).ravel()
    if predicted.shape != truth.shape:
        raise ShenduError(f"label maps of {predicted.size} and {truth.size} pixels")
    confusion = np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(
        classes, classes)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    per_class = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return float(np.nanmean(per_class)), per_class.tolist()


def exact(candidates, references):
    """The fraction of candidate sentences equal to their reference, word for word."""
    if len(candidates) != len(references):
        raise ShenduError(f"{len(candidates)} candidates but {len(references)} references")
    return float(np.mean([c.split() == r.split() for c, r in zip(candidates, references)]))


def bleu(candidates, references, n=4):
    """Corpus BLEU (Papineni et al. 2002) of candidate sentences against one reference each,
    both lists of strings split at spaces: the geometric mean of the clipped 1- to n-gram
    precisions, summed over the corpus, times the brevity penalty exp(1 − r/c) when the
    candidates' c words are fewer than the references' r. In [0, 1]."""
    if len(candidates) != len(references):
        raise ShenduError(f"{len(candidates)} candidates but {len(references)} references")
    found, total = np.zeros(n), np.zeros(n)
    c = r = 0
    for candidate, reference in zip(candidates, references):
        cand, ref = candidate.split(), reference.split()
        c, r = c + len(cand), r + len(ref)
        for k in range(1, n + 1):
            grams = Counter(tuple(cand[i:i + k]) for i in range(len(cand) - k + 1))
            allowed = Counter(tuple(ref[i:i + k]) for i in range(len(ref) - k + 1))
            found[k - 1] += sum(min(count, allowed[g]) for g, count in grams.items())
            total[k - 1] += max(len(cand) - k + 1, 0)
    if c == 0 or (found == 0).any():
        return 0.0
    penalty = 1.0 if c > r else math.exp(1 - r / c)
    return float(penalty * math.exp(np.mean(np.log(found / total))))


def frechet_gaussians(mean_a, cov_a, mean_b, cov_b):
    """The Fréchet (2-Wasserstein) distance, squared, between Gaussians N(mean_a, cov_a) and
    N(mean_b, cov_b): ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½). Tr (Σa Σb)^½ is the sum of the
    square roots of the eigenvalues of Σa^½ Σb Σa^½, which is symmetric (NumPy's eigh, no
    SciPy); rounding's tiny negative eigenvalues count as 0."""
    def root(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    root_a = root(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    gap = np.asarray(mean_a, np.float64) - np.asarray(mean_b, np.float64)
    return float(gap @ gap + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def frechet_distance(a, b):
    """The Fréchet distance between Gaussians fitted to two sets of features, a (N, D) and
    b (M, D): their means and covariances (see frechet_gaussians). With the features of
    Inception v3 it is the FID of Heusel et al. (2017); chapter 8 uses a trained DeepConvNet's."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ShenduError(f"two sets of at least 2 feature vectors of one length, got "
                          f"{a.shape} and {b.shape}")
    return frechet_gaussians(a.mean(axis=0), np.cov(a, rowvar=False),
                             b.mean(axis=0), np.cov(b, rowvar=False))
