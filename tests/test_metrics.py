"""The applications' measures on hand-made cases whose answers are worked out in the comments."""
import math

import numpy as np
import pytest

import shendu
from shendu import metrics


def test_box_iou():
    a = [[0, 0, 2, 2], [0, 0, 1, 1]]
    b = [[1, 1, 3, 3], [0, 0, 2, 2], [1, 0, 2, 1]]
    expected = [[1 / 7, 1, 1 / 4],   # a 1x1 corner of two 2x2 boxes: 1 / (4 + 4 - 1); itself
                [0, 1 / 4, 0]]       # the edge-sharing neighbour shares no area
    np.testing.assert_allclose(metrics.box_iou(a, b), expected)
    assert metrics.box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]]
    scores = [0.8, 0.9, 0.7, 0.6]
    # 1 overlaps 0 by 81 / 119 = 0.68; 3 overlaps 0 by 0.9 and 1 by 72 / 128 = 0.56
    assert metrics.nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert metrics.nms(boxes, scores, 0.7).tolist() == [1, 0, 2]
    assert metrics.nms(boxes, scores, 0.95).tolist() == [1, 0, 2, 3]


def test_average_precision_is_the_area_under_the_interpolated_curve():
    # ranked hit, miss, hit of 2 objects: recall 1/2, 1/2, 1 at precision 1, 1/2, 2/3;
    # interpolated, precision is 1 up to recall 1/2 and 2/3 up to 1
    assert metrics.average_precision([True, False, True], [0.9, 0.8, 0.7], 2) == pytest.approx(
        0.5 + 0.5 * 2 / 3)
    # the same ranking given in another order, and one object never found
    assert metrics.average_precision([True, True, False], [0.7, 0.9, 0.8], 3) == pytest.approx(
        (0.5 + 0.5 * 2 / 3) * 2 / 3)
    assert math.isnan(metrics.average_precision([], [], 0))
    assert metrics.average_precision([False], [0.5], 1) == 0


def test_mean_average_precision_counts_a_second_detection_of_one_object_as_a_miss():
    truths = [([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1]),
              ([[0, 0, 10, 10]], [0])]
    detections = [([[0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 50, 50]], [0, 0, 1], [0.9, 0.8, 0.7]),
                  ([[0, 0, 10, 20]], [0], [0.95])]  # IoU exactly 1/2: a hit
    mean, per_class = metrics.mean_average_precision(detections, truths, classes=3)
    # class 0: hit (0.95), hit (0.9), miss (0.8) of 2 objects: AP 1; class 1: a miss: AP 0;
    # class 2 has no objects: left out of the mean
    assert per_class[:2] == [1.0, 0.0] and math.isnan(per_class[2]) and mean == 0.5
    # at IoU 0.6 the 0.95 detection misses: miss, hit, miss of 2 objects reach recall 1/2 at
    # precision 1/2, and no further
    assert metrics.mean_average_precision(detections, truths, 3, iou=0.6)[1][0] == pytest.approx(
        0.25)
    with pytest.raises(shendu.ShenduError, match="2 images of detections but 1"):
        metrics.mean_average_precision(detections, truths[:1], 3)


def test_segmentation_iou():
    mean, per_class = metrics.segmentation_iou([[0, 0], [1, 1]], [[0, 1], [1, 1]], classes=3)
    # class 0: 1 pixel in both, 2 in either; class 1: 2 in both, 3 in either; class 2: absent
    assert per_class[:2] == pytest.approx([1 / 2, 2 / 3]) and math.isnan(per_class[2])
    assert mean == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_exact():
    assert metrics.exact(["one two", "three", "four five"],
                         ["one two", "three four", "five four"]) == pytest.approx(1 / 3)
    assert metrics.exact(["one  two"], ["one two"]) == 1.0  # words, not spacing
    with pytest.raises(shendu.ShenduError, match="1 candidates but 0"):
        metrics.exact(["one"], [])


def test_bleu():
    assert metrics.bleu(["one two three four"], ["one two three four"]) == 1.0
    # a b c d e against a b c d f: 4/5, 3/4, 2/3, 1/2 of the 1- to 4-grams; equal lengths
    assert metrics.bleu(["a b c d e"], ["a b c d f"]) == pytest.approx(
        (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # every n-gram right but 4 words for 6: the brevity penalty exp(1 - 6/4)
    assert metrics.bleu(["a b c d"], ["a b c d e f"]) == pytest.approx(math.exp(-0.5))
    # clipped counts: "the" appears once in the reference, so only one of four counts
    assert metrics.bleu(["the the the the"], ["the cat"], n=1) == pytest.approx(1 / 4)
    # corpus-level: n-gram counts are summed over sentences before dividing
    assert metrics.bleu(["a b", "c d"], ["a b", "c e"], n=1) == pytest.approx(3 / 4)


def test_frechet_distance_of_gaussians_worked_out_by_hand():
    # same eigenvectors R: Tr (Σa Σb)^½ = Σ √(sa sb), so the distance is
    # ‖μa − μb‖² + Σ (√sa − √sb)²
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    sa, sb = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    cov_a, cov_b = rotation @ np.diag(sa) @ rotation.T, rotation @ np.diag(sb) @ rotation.T
    mean_a, mean_b = np.array([1.0, 0, 0]), np.array([0, 2.0, 0])
    expected = 1 + 4 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert metrics.frechet_gaussians(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected)
    assert metrics.frechet_gaussians(mean_a, cov_a, mean_a, cov_a) == pytest.approx(0, abs=1e-9)
    # one dimension: (μa − μb)² + (σa − σb)²
    assert metrics.frechet_gaussians([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + 1)


def test_frechet_distance_of_samples_approaches_the_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal([0, 0], [1, 2], size=(200000, 2))
    b = rng.normal([1, 0], [2, 2], size=(200000, 2))
    assert metrics.frechet_distance(a, b) == pytest.approx(1 + 1, abs=0.05)
    assert metrics.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    with pytest.raises(shendu.ShenduError, match="feature vectors"):
        metrics.frechet_distance(a, b[:, :1])
