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


def test_crop_moves_a_dot_where_it_should():
    """Offsets (r, c) in the padded image move the content by (padding − r, padding − c)."""
    x = augment.RandomCrop(padding=2)(dot(3), Fixed(integers=[[0, 2, 4], [1, 2, 3]]))
    for i, (r, c) in enumerate([(0, 1), (2, 2), (4, 3)]):
        assert np.argwhere(x[i, 0]).tolist() == [[4 + 2 - r, 4 + 2 - c]]


def test_crop_loses_what_leaves_the_image():
    x = augment.RandomCrop(padding=3)(dot(at=(0, 0)), Fixed(integers=[[6], [0]]))
    assert not x.any() and x.shape == (1, 1, 9, 9)


def test_flip_mirrors_the_chosen_images():
    x = np.random.default_rng(0).random((3, 2, 4, 5), np.float32)
    y = augment.RandomHorizontalFlip(0.5)(x, Fixed(uniform=[0.1, 0.9, 0.4]))
    np.testing.assert_array_equal(y[0], x[0, :, :, ::-1])
    np.testing.assert_array_equal(y[1], x[1])
    np.testing.assert_array_equal(y[2], x[2, :, :, ::-1])


def test_zero_strength_is_the_identity():
    x = np.random.default_rng(0).random((4, 1, 6, 6), np.float32)
    same = augment.Compose(augment.RandomCrop(0), augment.RandomHorizontalFlip(0.0))
    y = same(x, np.random.default_rng(1))
    np.testing.assert_array_equal(y, x)
    assert y.dtype == np.float32


def test_seeding_repeats_exactly():
    x = np.random.default_rng(0).random((8, 1, 6, 6), np.float32)
    t = augment.Compose(augment.RandomCrop(2), augment.RandomHorizontalFlip())
    a, b = t(x, np.random.default_rng(5)), t(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, t(x, np.random.default_rng(6)))


@pytest.mark.parametrize("bad", [lambda: augment.RandomCrop(-1), lambda: augment.RandomCrop(1.5),
                                 lambda: augment.RandomHorizontalFlip(2)])
def test_bad_strengths_are_refused(bad):
    with pytest.raises(shendu.ShenduError):
        bad()


def make(run_dir=None):
    shendu.manual_seed(0)
    model = models.get("deepconvnet", input_shape=(1, 12, 12))
    return shendu.Trainer(model, optim.Adam(model.parameters()), batch_size=8, seed=3,
                          run_dir=run_dir, progress=False,
                          augment=augment.Compose(augment.RandomCrop(2),
                                                  augment.RandomHorizontalFlip()))


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
    other.augment = augment.RandomCrop(1)
    with pytest.raises(shendu.CheckpointError, match="augmentation Compose"):
        other.fit(*data, epochs=2, resume=tmp_path)
    with pytest.raises(shendu.ShenduError, match="augment must be a transform"):
        shendu.Trainer(other.model, other.optimizer, augment="crop")


def test_crop_offsets_stay_in_range():
    x = dot(2000)
    moved = augment.RandomCrop(padding=2)(x, np.random.default_rng(0))
    where = np.argwhere(moved[:, 0])  # (image, row, column) of each surviving dot
    assert len(where) == 2000 and set(where[:, 1]) == set(where[:, 2]) == {2, 3, 4, 5, 6}
