"""Augmentation on synthetic images with known answers, seeded repetition, and the Trainer's
augmented runs: repeatable and resumable bit for bit."""
import numpy as np
import pytest

import shendu
from shendu import augment, datasets, models, optim


def dot(n=1, size=9, at=(4, 4)):
    x = np.zeros((n, 1, size, size), np.float32)
    x[:, 0, at[0], at[1]] = 1
    return x


class Fixed:
    """A generator stand-in that returns the given integers and uniform numbers."""

    def __init__(self, integers=None, uniform=None):
        self._integers, self._uniform = integers, uniform

    def integers(self, low, high, size):
        return np.asarray(self._integers).reshape(size)

    def random(self, n):
        return np.asarray(self._uniform)


class Scripted:
    """A generator stand-in whose `uniform` calls return the given values, in order."""

    def __init__(self, *uniform):
        self._uniform = list(uniform)

    def uniform(self, low, high, size):
        return np.broadcast_to(np.asarray(self._uniform.pop(0), float), size)


def affine(x, angle=0.0, scale=1.0, shear=0.0, tx=0.0, ty=0.0):
    """RandomAffine with the given draws (its order: angle, shear, scale, tx, ty)."""
    return augment.RandomAffine()(x, Scripted(angle, shear, scale, tx, ty))


@pytest.mark.parametrize("size", [6, 7])
def test_rotation_by_90_degrees_is_rot90(size):
    x = np.random.default_rng(0).random((3, 2, size, size), np.float32)
    np.testing.assert_allclose(affine(x, angle=90), np.rot90(x, axes=(2, 3)), atol=1e-6)
    turned = augment.RandomAffine(degrees=(90, 90))(x, np.random.default_rng(0))
    np.testing.assert_allclose(turned, np.rot90(x, axes=(2, 3)), atol=1e-6)


def test_translation_moves_a_dot_where_it_should():
    y = affine(dot(), tx=2, ty=-3)  # right 2, up 3
    assert np.argwhere(y[0, 0] > 0.999).tolist() == [[1, 6]]
    half = affine(dot(), tx=0.5)  # half a pixel: shared between two columns
    np.testing.assert_allclose(half[0, 0, 4, 4:6], [0.5, 0.5])
    assert half.sum() == pytest.approx(1)


def test_scaling_and_shear_move_a_dot_where_they_should():
    y = affine(dot(at=(4, 5)), scale=2)  # one pixel right of the centre → two
    assert y[0, 0, 4, 6] == pytest.approx(1) and y[0, 0, 4, 5] == pytest.approx(0.5)
    y = affine(dot(at=(2, 4)), shear=45)  # x' = x + y·tan 45°: two rows up → two columns left
    assert np.argwhere(y[0, 0] > 0.999).tolist() == [[2, 2]]


def test_affine_draws_stay_in_their_ranges():
    moved = augment.RandomAffine(translate=(2 / 9, 0))(dot(500), np.random.default_rng(0))
    columns = np.argwhere(moved[:, 0] > 0)[:, 2]
    assert columns.min() == 2 and columns.max() == 6  # within ±2 pixels, both ends reached
    assert np.argwhere(moved[:, 0] > 0)[:, 1].tolist() == [4] * len(columns)


def test_smoothing_is_a_normalised_gaussian():
    field = np.zeros((1, 41, 41))
    field[0, 20, 20] = 1
    blurred = augment._smooth(field, 2.0)
    r = np.arange(41) - 20
    gauss = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 8)
    gauss[np.abs(r) > 6] = 0
    gauss[:, np.abs(r) > 6] = 0
    np.testing.assert_allclose(blurred[0], gauss / gauss.sum(), atol=1e-12)
    np.testing.assert_allclose(augment._smooth(np.ones((2, 9, 9)), 3.0), 1)


def test_elastic_distortion_moves_pixels_a_little_and_keeps_values_in_range():
    (x, _), _ = datasets.load_mnist()
    x = x[:64].astype(np.float32) / 255
    gentle = augment.ElasticDistortion(alpha=8, sigma=4)(x, np.random.default_rng(0))
    strong = augment.ElasticDistortion(alpha=34, sigma=4)(x, np.random.default_rng(0))
    change = lambda y: np.abs(y - x).mean()  # noqa: E731
    assert 0 < change(gentle) < change(strong)
    assert gentle.min() >= 0 and gentle.max() <= 1 + 1e-6
    assert abs(gentle.sum() / x.sum() - 1) < 0.05  # ink is moved, not made


def test_color_jitter_scales_brightness_and_contrast():
    x = np.array([0.2, 0.4, 0.6], np.float32).reshape(1, 1, 1, 3)
    y = augment.ColorJitter(0.5)(x, Scripted(1.5, 1.0))
    np.testing.assert_allclose(y[0, 0, 0], [0.3, 0.6, 0.9], atol=1e-6)
    y = augment.ColorJitter(contrast=1)(x, Scripted(1.0, 0.0))  # no contrast: the mean
    np.testing.assert_allclose(y[0, 0, 0], [0.4] * 3, atol=1e-6)
    y = augment.ColorJitter(1, 1)(x, Scripted(2.0, 2.0))  # clipped to [0, 1]
    np.testing.assert_allclose(y[0, 0, 0], [0.0, 0.8, 1.0], atol=1e-6)


def test_erasing_blanks_one_rectangle_of_the_drawn_size():
    x = np.ones((200, 1, 8, 8), np.float32)
    y = augment.RandomErasing(p=1, scale=(0.25, 0.25), ratio=(1, 1))(x, np.random.default_rng(0))
    corners = set()
    for image in y[:, 0]:
        holes = np.argwhere(image == 0)
        assert len(holes) == 16 and np.ptp(holes, axis=0).tolist() == [3, 3]
        corners.add(tuple(holes.min(axis=0)))
    assert corners == {(r, c) for r in range(5) for c in range(5)}  # every place can be hit
    some = augment.RandomErasing(p=0.5)(x, np.random.default_rng(0))
    assert 70 < (some == 0).any(axis=(1, 2, 3)).sum() < 130


def test_crop_moves_a_dot_where_it_should():
    """Offsets (r, c) in the padded image move the content by (padding − r, padding − c)."""
    x = augment.RandomCrop(9, padding=2)(dot(3), Fixed(integers=[[0, 2, 4], [1, 2, 3]]))
    for i, (r, c) in enumerate([(0, 1), (2, 2), (4, 3)]):
        assert np.argwhere(x[i, 0]).tolist() == [[4 + 2 - r, 4 + 2 - c]]


def test_crop_takes_torchvisions_arguments():
    """RandomCrop(size, padding=...) as torchvision: size is the output; padding p, (left/right,
    top/bottom) or (left, top, right, bottom), filled by padding_mode; pad_if_needed grows small
    images by the missing rows and columns on both sides."""
    x = np.arange(20, dtype=np.float32).reshape(1, 1, 4, 5)
    at = lambda r, c: Fixed(integers=[[r], [c]])  # noqa: E731  the crop's top-left corner
    np.testing.assert_array_equal(augment.RandomCrop(3)(x, at(1, 2)), x[..., 1:4, 2:5])
    np.testing.assert_array_equal(augment.RandomCrop((2, 4))(x, at(2, 0)), x[..., 2:4, 0:4])
    two = augment.RandomCrop((8, 7), padding=(1, 2), fill=-1)(x, at(0, 0))  # 1 left/right, 2 up/down
    assert (two[..., 2:6, 1:6] == x).all() and (two == -1).sum() == 8 * 7 - 20
    four = augment.RandomCrop((7, 8), padding=(1, 0, 2, 3))(x, at(0, 0))  # left, top, right, bottom
    np.testing.assert_array_equal(four[0, 0], np.pad(x[0, 0], ((0, 3), (1, 2))))
    for mode in ("edge", "reflect", "symmetric"):
        y = augment.RandomCrop((6, 7), padding=1, padding_mode=mode)(x, at(0, 0))
        np.testing.assert_array_equal(y[0, 0], np.pad(x[0, 0], 1, mode=mode))
    grown = augment.RandomCrop(6, pad_if_needed=True)(x, at(2, 1))  # 4×5 → 8×7, then 6×6
    np.testing.assert_array_equal(grown[0, 0], np.pad(x[0, 0], ((2, 2), (1, 1)))[2:8, 1:7])
    with pytest.raises(shendu.ShenduError, match="larger than the"):
        augment.RandomCrop(6)(x, at(0, 0))
    assert repr(augment.RandomCrop(28, padding=2)) == "RandomCrop(size=(28, 28), padding=2)"


def test_crop_loses_what_leaves_the_image():
    x = augment.RandomCrop(9, padding=3)(dot(at=(0, 0)), Fixed(integers=[[6], [0]]))
    assert not x.any() and x.shape == (1, 1, 9, 9)


def test_flip_mirrors_the_chosen_images():
    x = np.random.default_rng(0).random((3, 2, 4, 5), np.float32)
    y = augment.RandomHorizontalFlip(0.5)(x, Fixed(uniform=[0.1, 0.9, 0.4]))
    np.testing.assert_array_equal(y[0], x[0, :, :, ::-1])
    np.testing.assert_array_equal(y[1], x[1])
    np.testing.assert_array_equal(y[2], x[2, :, :, ::-1])


def test_zero_strength_is_the_identity():
    x = np.random.default_rng(0).random((4, 1, 6, 6), np.float32)
    same = augment.Compose([augment.RandomCrop(6), augment.RandomHorizontalFlip(0.0),
                            augment.RandomAffine(), augment.ElasticDistortion(alpha=0),
                            augment.ColorJitter(), augment.RandomErasing(p=0)])
    y = same(x, np.random.default_rng(1))
    np.testing.assert_array_equal(y, x)
    assert y.dtype == np.float32


def test_seeding_repeats_exactly():
    x = np.random.default_rng(0).random((8, 1, 6, 6), np.float32)
    t = augment.Compose([augment.RandomCrop(6, padding=2), augment.RandomHorizontalFlip(),
                         augment.RandomAffine(10, (0.1, 0.1), (0.9, 1.1), 5),
                         augment.ElasticDistortion(), augment.ColorJitter(0.2, 0.2),
                         augment.RandomErasing()])
    a, b = t(x, np.random.default_rng(5)), t(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, t(x, np.random.default_rng(6)))


@pytest.mark.parametrize("bad", [lambda: augment.RandomCrop(-1), lambda: augment.RandomCrop(1.5),
                                 lambda: augment.RandomCrop((28, 0)),
                                 lambda: augment.RandomCrop(28, padding=-1),
                                 lambda: augment.RandomCrop(28, padding=(1, 2, 3)),
                                 lambda: augment.RandomCrop(28, padding=1.5),
                                 lambda: augment.RandomCrop(28, fill=(0, 0, 0)),
                                 lambda: augment.RandomCrop(28, pad_if_needed="yes"),
                                 lambda: augment.RandomCrop(28, padding_mode="wrap"),
                                 lambda: augment.Compose(augment.RandomCrop(28)),
                                 lambda: augment.Compose([augment.RandomCrop(28), "flip"]),
                                 lambda: augment.RandomHorizontalFlip(2),
                                 lambda: augment.RandomAffine(degrees=(5, -5)),
                                 lambda: augment.RandomAffine(translate=1.5),
                                 lambda: augment.RandomAffine(scale=(0, 1)),
                                 lambda: augment.RandomAffine(shear=float("nan")),
                                 lambda: augment.ElasticDistortion(sigma=0),
                                 lambda: augment.ColorJitter(brightness=-0.1),
                                 lambda: augment.RandomErasing(p=1.5),
                                 lambda: augment.RandomErasing(ratio=(0, 1))])
def test_bad_strengths_are_refused(bad):
    with pytest.raises(shendu.ShenduError):
        bad()


def make(run_dir=None):
    shendu.manual_seed(0)
    model = models.get("deepconvnet", input_shape=(1, 12, 12))
    return shendu.Trainer(model, optim.Adam(model.parameters()), batch_size=8, seed=3,
                          run_dir=run_dir, progress=False,
                          augment=augment.Compose([augment.RandomCrop(12, padding=2),
                                                   augment.RandomHorizontalFlip()]))


@pytest.fixture(scope="module")
def data():
    (x, t), (x_test, t_test) = datasets.load_mnist()
    crop = lambda a: np.ascontiguousarray(a[:, :, 8:20, 8:20])  # noqa: E731
    return (crop(x[:40]), t[:40]), (crop(x_test[:20]), t_test[:20])


def test_augmented_training_repeats_and_resumes_exactly(data, tmp_path):
    reference = make()
    reference.fit(*data, epochs=2)
    expected = reference.model.state_dict()
    plain = make()
    plain.augment = None
    plain.fit(*data, epochs=2)
    assert not np.array_equal(plain.model.state_dict()["0.weight"], expected["0.weight"])

    def stop(progress):
        if progress["global_step"] == 7:  # in the second epoch
            raise KeyboardInterrupt
    make(run_dir=tmp_path).fit(*data, epochs=2, on_step=stop)
    resumed = make()
    resumed.fit(*data, epochs=2, resume=tmp_path)
    for name, array in resumed.model.state_dict().items():
        assert array.tobytes() == expected[name].tobytes(), name


def test_resuming_with_other_augmentation_is_refused(data, tmp_path):
    def stop(progress):
        if progress["global_step"] == 2:
            raise KeyboardInterrupt
    make(run_dir=tmp_path).fit(*data, epochs=2, on_step=stop)
    other = make()
    other.augment = augment.RandomCrop(12, padding=1)
    with pytest.raises(shendu.CheckpointError, match="augmentation Compose"):
        other.fit(*data, epochs=2, resume=tmp_path)
    with pytest.raises(shendu.ShenduError, match="augment must be a transform"):
        shendu.Trainer(other.model, other.optimizer, augment="crop")


def test_crop_offsets_stay_in_range():
    x = dot(2000)
    moved = augment.RandomCrop(9, padding=2)(x, np.random.default_rng(0))
    where = np.argwhere(moved[:, 0])  # (image, row, column) of each surviving dot
    assert len(where) == 2000 and set(where[:, 1]) == set(where[:, 2]) == {2, 3, 4, 5, 6}
