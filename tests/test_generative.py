"""Chapter 8's DCGAN: the two networks' shapes and gradients, each training step's gradients
against numerical differentiation of its loss, the latent walk, and the classifier features
the Fréchet distance is measured in."""
import numpy as np
import pytest

import shendu
from gradcheck import check_module_gradients, numerical_grad, rand, rel_error
from shendu import generative as gen
from shendu import kernels, models, nn


def small(name):
    shendu.manual_seed(0)
    return models.get(name, width=2).astype(np.float64)


def test_the_generator_makes_images_and_the_discriminator_one_logit_each():
    g, d = models.get("generator"), models.get("discriminator")
    images = g(gen.noise(3, 64, seed=0))
    assert images.shape == (3, 1, 28, 28) and np.abs(images).max() <= 1
    assert d(images).shape == (3, 1)
    with pytest.raises(shendu.ShenduError, match="28 × 28"):
        models.get("generator", input_shape=(1, 32, 32))


@pytest.mark.parametrize("name, shape", [("generator", (3, 64, 1, 1)),
                                         ("discriminator", (3, 1, 28, 28))])
def test_gradients_match_numerical_differentiation(name, shape):
    check_module_gradients(small(name), rand(*shape), samples=12)


class Still:
    """An optimizer that leaves the parameters as they are, to read the gradients."""

    def step(self):
        pass


def test_the_discriminators_gradient_is_that_of_both_batches_losses():
    d, bce, K = small("discriminator"), nn.BCEWithLogitsLoss(), kernels.cpu
    real, fake = rand(4, 1, 28, 28, seed=1), rand(4, 1, 28, 28, seed=2)

    def loss():  # BatchNorm normalises each batch by its own statistics, as in the step
        return (bce(d(real), np.ones((4, 1))) + bce(d(fake), np.zeros((4, 1))))

    seen = gen.GAN._step_d(d, Still(), bce, real, fake, K)
    assert sum(s[0] for s in seen) == pytest.approx(loss())
    for name, p in d.named_parameters():
        entries = np.random.default_rng(3).choice(p.data.size, min(6, p.data.size), False)
        numeric = numerical_grad(loss, p.data, entries=entries).reshape(-1)[entries]
        assert rel_error(p.grad.reshape(-1)[entries], numeric) < 1e-5, name


def test_the_generators_gradient_flows_back_through_the_discriminator():
    g, d, bce = small("generator"), small("discriminator"), nn.BCEWithLogitsLoss()
    z = gen.noise(4, 64, seed=4).astype(np.float64)

    def loss():
        return bce(d(g(z)), np.ones((4, 1)))

    expected = loss()
    fake = g(z)
    assert gen.GAN._step_g(g, d, Still(), bce, fake, kernels.cpu) == pytest.approx(expected)
    for name, p in g.named_parameters():
        entries = np.random.default_rng(5).choice(p.data.size, min(6, p.data.size), False)
        numeric = numerical_grad(loss, p.data, entries=entries).reshape(-1)[entries]
        assert rel_error(p.grad.reshape(-1)[entries], numeric) < 1e-5, name


def test_a_walk_runs_straight_from_one_latent_to_the_other():
    a, b = gen.noise(2, 8, seed=6)
    path = gen.walk(a, b, 5)
    assert path.shape == (5, 8, 1, 1)
    np.testing.assert_allclose(path[0], a)
    np.testing.assert_allclose(path[-1], b)
    np.testing.assert_allclose(path[2], (a + b) / 2, rtol=1e-6)
    np.testing.assert_array_equal(gen.noise(2, 8, seed=6), np.stack([a, b]))


def test_features_are_what_the_classifiers_last_layer_reads():
    shendu.manual_seed(0)
    classifier = models.get("deepconvnet").eval()
    images = (np.random.default_rng(7).random((6, 1, 28, 28)) * 255).astype(np.uint8)
    f = gen.features(classifier, images, batch_size=4)
    assert f.shape == (6, 50) and (f >= 0).all()  # after a ReLU
    assert not classifier.training  # its mode is kept
    last = [layer for layer in classifier if isinstance(layer, nn.Linear)][-1]
    with nn.no_grad():
        logits = classifier(images.astype(np.float32) / 255)
    np.testing.assert_allclose(f @ last.weight.data.T + last.bias.data, logits, rtol=1e-4,
                               atol=1e-5)
