"""Detection: connected components against their reference, proposals on drawn images, the
warp to 28 × 28, the grid detector's labels, loss (numerically differentiated) and decoding."""
import numpy as np
import pytest

import shendu
from gradcheck import numerical_grad, rand, rel_error
from shendu import datasets, detection, metrics, models
from shendu.kernels.regions import components, components_reference


@pytest.mark.parametrize("seed", range(4))
def test_components_match_the_reference(seed):
    ink = np.random.default_rng(seed).random((23, 31)) < 0.3 + 0.1 * seed
    labels, count = components(ink)
    ref, ref_count = components_reference(ink)
    assert count == ref_count and count > 1
    np.testing.assert_array_equal(labels, ref)


def test_components_join_diagonal_neighbours_and_number_in_reading_order():
    ink = np.array([[1, 0, 0, 1],
                    [0, 1, 0, 0],
                    [0, 0, 0, 1],
                    [1, 1, 0, 1]], bool)
    labels, count = components(ink)
    assert count == 4
    np.testing.assert_array_equal(labels, [[1, 0, 0, 2],
                                           [0, 1, 0, 0],
                                           [0, 0, 0, 3],
                                           [4, 4, 0, 3]])


def _image(*boxes, value=255):
    image = np.zeros((32, 32), np.uint8)
    for x0, y0, x1, y1 in boxes:
        image[y0:y1, x0:x1] = value
    return image


def test_proposals_hold_each_blob_and_their_merges():
    # three blobs: two close together on the left, one far on the right
    image = _image((2, 2, 6, 10), (7, 3, 10, 9), (24, 20, 30, 30))
    found = {tuple(b) for b in detection.proposals(image, erosions=(0,))}
    # the components; the two close ones merge first (most similar); then all three
    assert found == {(2, 2, 6, 10), (7, 3, 10, 9), (24, 20, 30, 30), (2, 2, 10, 10),
                     (2, 2, 30, 30)}


def test_erosion_separates_blobs_joined_by_a_thin_bridge():
    image = _image((2, 2, 10, 12), (11, 2, 19, 12), (10, 6, 11, 7))  # a one-pixel bridge
    assert {tuple(b) for b in detection.proposals(image, erosions=(0,))} == {(2, 2, 19, 12)}
    found = {tuple(b) for b in detection.proposals(image)}
    # eroded by 1 and grown back by 1: the two blocks' own boxes
    assert {(2, 2, 10, 12), (11, 2, 19, 12), (2, 2, 19, 12)} <= found


def test_recall_counts_the_true_boxes_some_proposal_finds():
    found = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.zeros((0, 4))]
    truths = [np.array([[1, 1, 10, 10], [20, 20, 40, 40]]), np.array([[0, 0, 5, 5]])]
    # IoU 81/100 (found), 100/400 (missed); the second image has no proposals
    assert detection.recall(found, truths) == pytest.approx(1 / 3)


def test_warp_frames_a_box_as_mnist_frames_a_digit():
    image = _image((8, 4, 18, 24))  # 10 wide, 20 high: the square side is 20 · 28 / 20 = 28
    region = detection.warp(image, [[8, 4, 18, 24]])
    assert region.shape == (1, 1, 28, 28) and region.dtype == np.float32
    # the square is 28 pixels about the box's centre (13, 14), one image pixel per output
    # pixel: output (i, j) reads image (i, j − 1)
    expected = np.zeros((28, 28), np.float32)
    expected[:, 1:] = image[:28, :27] / 255
    np.testing.assert_allclose(region[0, 0], expected)
    twice = detection.warp(np.kron(image, np.ones((2, 2), np.uint8)), [[16, 8, 36, 48]])
    np.testing.assert_allclose(twice, region, atol=1e-6)  # scaled up, framed the same


def test_grid_labels_put_each_box_in_the_cell_of_its_centre():
    t = detection.encode([np.array([[10, 20, 34, 44], [40, 0, 52, 12]])], [np.array([3, 7])], 64)
    assert t.shape == (1, 6, 8, 8)
    assert np.count_nonzero(t[0, 0]) == 2
    # centre (22, 32): cell (4, 2), offsets (22/8 − 2, 32/8 − 4) = (0.75, 0); size 24 = ANCHOR
    np.testing.assert_allclose(t[0, :, 4, 2], [1, 3, 0.75, 0, 0, 0])
    np.testing.assert_allclose(t[0, :, 0, 5], [1, 7, 46 / 8 - 5, 6 / 8, np.log(0.5), np.log(0.5)])
    assert (t[0, 1][t[0, 0] == 0] == -1).all()


def test_decoding_the_labels_as_outputs_gives_the_boxes_back():
    boxes, classes = [np.array([[10, 20, 34, 44], [40, 0, 52, 12]])], [np.array([3, 7])]
    t = detection.encode(boxes, classes, 64)
    out = np.zeros((1, 15, 8, 8))
    out[:, 0] = np.where(t[:, 0] > 0, 20, -20)  # certain of the objects, and of no other
    out[:, 1:5] = t[:, 2:6]
    obj = t[0, 0] > 0
    out[0, 5:, obj] = -20
    out[0, 5 + t[0, 1][obj].astype(int), obj] = 20
    found, = detection.decode(out)
    assert sorted(found.classes.tolist()) == [3, 7] and (found.scores > 0.99).all()
    np.testing.assert_allclose(found.boxes[np.argsort(found.classes)], boxes[0], atol=1e-4)
    mean_ap, _ = metrics.mean_average_precision([found], list(zip(boxes, classes)), 10)
    assert mean_ap == 1


def test_grid_loss_gradient_matches_numerical_differentiation():
    t = detection.encode([np.array([[10, 20, 34, 44]]), np.array([[0, 0, 20, 30], [40, 40, 60,
                                                                                   64]])],
                         [np.array([3]), np.array([1, 9])], 32 * 2)
    z = rand(2, 15, 8, 8, seed=3)
    loss = detection.GridLoss(box_weight=2.0)
    loss(z, t)
    analytic = loss.backward()
    assert rel_error(analytic, numerical_grad(lambda: loss(z, t), z)) < 1e-6
    assert loss.counted(t) == 3


def test_grid_loss_is_the_sum_of_its_terms_worked_by_hand():
    t = detection.encode([np.array([[0, 0, 24, 24]])], [np.array([2])], 16)  # a 2 × 2 grid
    z = np.zeros((1, 15, 2, 2))
    z[0, 1:5, 1, 1] = [0.5, 0.5, 0.1, 0.0]  # the box is centred in cell (1, 1) at (12, 12)...
    # ... offsets (12/8 − 1) = 0.5 each, size 24 = ANCHOR: log 1 = 0. Objectness logits 0:
    # 4 cells × log 2; class logits 0: log 10; box: 5 · 0.1²
    loss = detection.GridLoss()(z, t)
    assert loss == pytest.approx(4 * np.log(2) + np.log(10) + 5 * 0.01)


def test_grid_detector_and_rcnn_run_end_to_end():
    shendu.manual_seed(0)
    scenes = datasets.mnist_scenes("test", 3)
    detector = models.get("griddetector")
    out = detector.eval()(scenes.images.astype(np.float32) / 255)
    assert out.shape == (3, 15, 8, 8)
    assert len(detection.decode(out)) == 3
    rcnn = detection.RCNN(models.get("deepconvnet", num_classes=11))
    found = rcnn.detect(scenes.images[:, 0])
    assert len(found) == 3 and all(f.boxes.shape[1] == 4 for f in found)
    x, t = detection.region_set(scenes)
    assert x.shape[1:] == (1, 28, 28) and x.dtype == np.uint8 and len(x) == len(t)
    counts = np.bincount(t, minlength=11)
    assert counts[1:].sum() >= sum(len(b) for b in scenes.boxes) and counts[0] > 0
