"""datasets.mnist_scenes: deterministic canvases of MNIST digits whose boxes, label maps and
captions are checked here against the pixels, independently of how they were drawn."""
import numpy as np
import pytest
from PIL import Image

import shendu
from shendu import datasets

WORDS = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def mnist():
    return datasets.load_mnist()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHENDU_CACHE", str(tmp_path))  # MNIST itself comes from $SHENDU_DATA
    return tmp_path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHENDU_CACHE", str(tmp_path_factory.mktemp("cache")))
        return datasets.mnist_scenes("train", 60, seed=3)


def test_every_box_holds_its_digits_ink_and_touches_it_on_every_side(scenes, mnist):
    (_, t_train), _ = mnist
    assert scenes.images.dtype == np.uint8 and scenes.images.shape == (60, 1, 64, 64)
    for image, mask, boxes, classes, sources in zip(scenes.images[:, 0], scenes.masks,
                                                    scenes.boxes, scenes.classes, scenes.sources):
        assert 1 <= len(boxes) <= 4 and np.array_equal(classes, t_train[sources])
        assert set(np.unique(mask)) <= {0, *(classes + 1)}
        covered = np.zeros(mask.shape, bool)
        for (x0, y0, x1, y1), d in zip(boxes, classes):
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            ink = image[y0:y1, x0:x1] >= 64
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
            covered[y0:y1, x0:x1] |= True
        assert not (mask[~covered] > 0).any()  # no labelled pixel outside every box
        assert (image[mask > 0] >= 64).all() and (mask[image >= 64] > 0).all()


def test_digits_overlap_little(scenes):
    for boxes in scenes.boxes:
        for i in range(len(boxes)):
            for j in range(i):
                a, b = boxes[i], boxes[j]
                inter = (max(0, min(a[2], b[2]) - max(a[0], b[0]))
                         * max(0, min(a[3], b[3]) - max(a[1], b[1])))
                area = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
                assert inter <= 0.15 * area
                assert abs((a[0] + a[2]) - (b[0] + b[2])) / 2 >= 4  # left to right is plain


def test_captions_read_the_digits_left_to_right(scenes):
    for caption, boxes, classes in zip(scenes.captions, scenes.boxes, scenes.classes):
        centres = [(x0 + x1) / 2 for x0, _, x1, _ in boxes]
        assert caption == " ".join(WORDS[d] for _, d in sorted(zip(centres, classes),
                                                               key=lambda p: p[0]))


@pytest.mark.parametrize("split", ["train", "test"])
def test_each_split_draws_its_own_digits(split, mnist, cache):
    """A one-digit scene, cut out at its box and brought back to 28x28, matches the MNIST image
    it names in its own split and not the image at that index in the other split."""
    found = datasets.mnist_scenes(split, 20, digits=(1, 1))
    (x_train, _), (x_test, _) = mnist
    own, other = (x_train, x_test) if split == "train" else (x_test, x_train)
    assert all(s.max() < len(own) for s in found.sources)
    ours, theirs = [], []
    for image, (box,), (source,) in zip(found.images[:, 0], found.boxes, found.sources):
        x0, y0, x1, y1 = box
        cut = np.asarray(Image.fromarray(image[y0:y1, x0:x1]).resize((20, 20)), np.float64)

        def similarity(digit):
            rows, cols = np.flatnonzero((digit >= 64).any(1)), np.flatnonzero((digit >= 64).any(0))
            crop = digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            ref = np.asarray(Image.fromarray(crop).resize((20, 20)), np.float64)
            return np.corrcoef(cut.ravel(), ref.ravel())[0, 1]

        ours.append(similarity(own[source, 0]))
        theirs.append(similarity(other[source % len(other), 0]))
    # a stray speck of ink can frame a cut differently: most, not all, match closely
    assert np.median(ours) > 0.9 and np.median(theirs) < 0.5
    assert np.mean(np.array(ours) > np.array(theirs)) >= 0.9


def test_scenes_are_repeatable_and_fewer_are_a_prefix_of_more(cache, monkeypatch):
    more = datasets.mnist_scenes("test", 30, seed=1)
    fewer = datasets.mnist_scenes("test", 10, seed=1)
    assert np.array_equal(fewer.images, more.images[:10]) and fewer.captions == more.captions[:10]
    assert not np.array_equal(datasets.mnist_scenes("test", 10, seed=2).images, fewer.images)
    monkeypatch.setattr(datasets, "_draw_scene", lambda *a: 1 / 0)  # now only the cache can answer
    again = datasets.mnist_scenes("test", 30, seed=1)
    assert np.array_equal(again.masks, more.masks) and all(
        np.array_equal(a, b) for a, b in zip(again.boxes, more.boxes))


def test_a_damaged_cache_file_is_drawn_again(cache):
    first = datasets.mnist_scenes("test", 5)
    (path,) = (cache / "scenes").iterdir()
    path.write_bytes(b"not a zip file")
    assert np.array_equal(datasets.mnist_scenes("test", 5).images, first.images)


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "val"}, "split must be 'train' or 'test'"),
    ({"n": -1}, "n must be a whole number"),
    ({"digits": (0, 2)}, "1 to 6 digits"),
    ({"size": 16}, "32 pixels or more"),
])
def test_bad_arguments_say_what_is_wrong(kwargs, message):
    args = {"split": "train", "n": 2, **kwargs}
    with pytest.raises(shendu.ShenduError, match=message):
        datasets.mnist_scenes(**args)


def test_a_digit_wider_than_the_canvas_is_scaled_to_fit():
    """Some MNIST strokes are far wider than tall: at a quarter of the canvas high, such a
    digit would be wider than the canvas, which once stopped the drawing of 10,000 scenes."""
    bar = np.zeros((1, 1, 28, 28), np.uint8)
    bar[0, 0, 13:15, :] = 255  # 28 wide, 2 high
    canvas, mask = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
    placed = datasets._draw_scene(bar, np.random.default_rng(0), 1, canvas, mask, np.array([7]))
    (x0, y0, x1, y1), _ = placed[0]
    assert 0 <= x0 < x1 <= 64 and x1 - x0 > 32 and 0 <= y0 < y1 <= 64
    assert (mask[y0:y1, x0:x1] == 8).any() and canvas.max() == 255
